// The web client (web/) in a real browser: two users, alice and bob, each in their own browser
// context, chat through the page as people would. One line per step that passed; on a failure
// the step, the error and the pages' console errors, and exit status 1.
//
//   WEB_URL=http://127.0.0.1:5003/ node tests/browser/chat.mjs
//
// Environment: WEB_URL (the page), AUTH_URL / CHAT_URL / WS_URL (optional: passed to the page as
// ?auth= &chat= &ws=), TEST_CHROMIUM (default /usr/bin/chromium), SCREENSHOT (optional: a PNG of
// alice's conversation at the end), TEST_BROWSER_DIR (a folder whose node_modules holds
// playwright-core, as ensure_browser in tests/servers.sh installs it).
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import path from 'node:path';

const WAIT_MS = 15_000;   // the longest any single wait may take
const TOTAL_MS = 60_000;  // the whole run
const started = Date.now();

async function loadPlaywright() {
  const dir = process.env.TEST_BROWSER_DIR;
  if (dir) {
    try {
      return createRequire(path.join(path.resolve(dir), 'package.json'))('playwright-core');
    } catch (e) {
      console.error(`note: playwright-core not found under ${dir} (${e.code ?? e.message}); trying a plain import`);
    }
  }
  return import('playwright-core');
}

function pageUrl() {
  const base = process.env.WEB_URL;
  if (!base) throw new Error('WEB_URL is not set (the page, e.g. http://127.0.0.1:5003/)');
  const url = new URL(base);
  for (const [param, name] of [['auth', 'AUTH_URL'], ['chat', 'CHAT_URL'], ['ws', 'WS_URL']]) {
    if (process.env[name]) url.searchParams.set(param, process.env[name]);
  }
  return url.toString();
}

const consoleErrors = [];
const pages = {}; // who -> page, for the failure report
let browser;
let currentStep = 'load playwright-core';

async function step(name, fn) {
  currentStep = name;
  const t0 = Date.now();
  await fn();
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
}

async function fail(error) {
  console.error(`\nFAILED at step "${currentStep}" after ${((Date.now() - started) / 1000).toFixed(1)} s:`);
  console.error(`  ${String(error?.message ?? error).split('\n').join('\n  ')}`);
  for (const [who, page] of Object.entries(pages)) {
    // What the page itself told its user, if anything.
    const shown = await page.locator('[data-testid="error"]:visible').textContent({ timeout: 1000 }).catch(() => null);
    if (shown) console.error(`${who}'s page shows the error: ${shown}`);
  }
  if (consoleErrors.length) {
    console.error('console errors in the pages:');
    for (const line of consoleErrors) console.error(`  ${line}`);
  } else {
    console.error('no console errors in the pages');
  }
  await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 3000))]).catch(() => {});
  process.exit(1);
}

// The whole run has a deadline of its own, whatever hangs.
setTimeout(() => fail(new Error(`the test did not finish within ${TOTAL_MS / 1000} s`)), TOTAL_MS).unref();

const byTestId = (page, id) => page.locator(`[data-testid="${id}"]`);

// Waits until `fn(arg)` is true in the page; `what` says what was expected when it is not.
async function until(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 100 });
  } catch (e) {
    throw new Error(`${what}: not within ${WAIT_MS / 1000} s (${e.message.split('\n')[0]})`);
  }
}

// The page's messages, oldest first, as { id, mine, text, tick, read }.
function messages(page) {
  return page.$$eval('[data-testid="message-list"] [data-testid="message"]', (nodes) => nodes.map((n) => ({
    id: n.dataset.id,
    mine: n.dataset.mine === 'true',
    text: n.querySelector('.content')?.textContent ?? '',
    tick: n.querySelector('[data-testid="tick"]')?.textContent ?? null,
    read: n.querySelector('[data-testid="tick"]')?.dataset.read === 'true',
  })));
}

// A message with this exact text is in the open conversation (mine or not).
function waitForMessage(page, who, text, mine) {
  return until(page, `${who} sees the message "${text}" (mine=${mine})`, ([t, m]) =>
    [...document.querySelectorAll('[data-testid="message-list"] [data-testid="message"]')]
      .some((n) => n.querySelector('.content')?.textContent === t && n.dataset.mine === String(m)), [text, mine]);
}

// Every message of mine with this text carries a ✓✓ read tick.
function waitForReadTick(page, who, text) {
  return until(page, `${who}'s message "${text}" shows the read tick ✓✓`, (t) =>
    [...document.querySelectorAll('[data-testid="message"][data-mine="true"]')]
      .some((n) => n.querySelector('.content')?.textContent === t &&
        n.querySelector('[data-testid="tick"]')?.dataset.read === 'true' &&
        n.querySelector('[data-testid="tick"]')?.textContent === '✓✓'), text);
}

async function send(page, text) {
  const composer = byTestId(page, 'composer');
  await composer.fill(text);
  await composer.press('Enter');
}

async function main() {
  const { chromium } = await loadPlaywright();
  const url = pageUrl();
  const suffix = randomBytes(4).toString('hex');
  const alice = `alice_${suffix}`;
  const bob = `bob_${suffix}`;
  const password = 'correct horse battery';

  const executable = process.env.TEST_CHROMIUM || '/usr/bin/chromium';
  await step(`launch ${executable}`, async () => {
    browser = await chromium.launch({
      executablePath: executable,
      headless: true,
      timeout: WAIT_MS,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  // Each page's WebSockets pass through Playwright, so that a step can drop them and refuse
  // reconnections for a while, as a network that goes away would.
  const network = {};
  const open = async (who) => {
    const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
    context.setDefaultTimeout(WAIT_MS);
    const net = { down: false, sockets: [], refused: 0 };
    network[who] = net;
    await context.routeWebSocket(() => true, (ws) => {
      if (net.down) {
        net.refused++;
        ws.close({ code: 1013, reason: 'test: network down' });
        return;
      }
      const server = ws.connectToServer();
      net.sockets.push({ ws, server });
    });
    const page = await context.newPage();
    pages[who] = page;
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      const where = m.location()?.url; // a failed request's message does not name the URL
      consoleErrors.push(`[${who}] ${m.text()}${where ? ` (${where})` : ''}`);
    });
    page.on('pageerror', (e) => consoleErrors.push(`[${who}] uncaught: ${e.message}`));
    await page.goto(url, { timeout: WAIT_MS });
    return page;
  };
  let a;
  let b;
  await step(`both pages load ${url}`, async () => {
    [a, b] = await Promise.all([open('alice'), open('bob')]);
    await byTestId(a, 'register-username').waitFor();
    await byTestId(b, 'register-username').waitFor();
    // Servers other than the page's own are named before anyone types a password.
    if (process.env.CHAT_URL) {
      const note = await byTestId(a, 'servers-note').textContent();
      if (!note.includes(process.env.CHAT_URL)) throw new Error(`the sign-in page does not name the chat server: "${note}"`);
    }
  });

  const register = async (page, name) => {
    await byTestId(page, 'register-username').fill(name);
    await byTestId(page, 'register-password').fill(password);
    await byTestId(page, 'register-submit').click();
    // Signed in, or an error the page shows: no need to wait out the timeout for that.
    await until(page, `${name} is shown as signed in`, (n) =>
      document.querySelector('[data-testid="whoami"]')?.textContent.includes(n) ||
      document.querySelector('[data-testid="error"]')?.checkVisibility(), name);
    const signedIn = await page.evaluate((n) =>
      document.querySelector('[data-testid="whoami"]')?.textContent.includes(n), name);
    if (!signedIn) {
      const shown = await page.locator('[data-testid="error"]').textContent();
      throw new Error(`registering ${name} failed: the page shows "${shown}"`);
    }
    await until(page, `${name}'s socket is connected`, () =>
      document.querySelector('[data-testid="connection-status"]')?.dataset.state === 'connected');
  };
  await step(`${alice} and ${bob} register, are signed in and connected`, () =>
    Promise.all([register(a, alice), register(b, bob)]));

  // The <chat> would vanish if the page rendered messages as HTML rather than text.
  const first = `Hi ${bob}, are you around? I <3 this <chat> app`;
  await step('alice opens a conversation with bob and sends a message (✓)', async () => {
    await byTestId(a, 'new-peer').fill(bob);
    await byTestId(a, 'new-peer-open').click();
    await byTestId(a, 'composer').waitFor();
    await send(a, first);
    await waitForMessage(a, 'alice', first, true);
    const [mine] = await messages(a);
    if (mine.tick !== '✓' || mine.read) throw new Error(`expected a ✓ tick, not read: ${JSON.stringify(mine)}`);
  });

  await step('bob sees it arrive live, with an unread badge of 1', async () => {
    await until(b, "bob's list shows alice's conversation with unread 1", (peer) => {
      const badge = document.querySelector(`[data-testid="conversation-row"][data-peer="${peer}"] [data-testid="unread-badge"]`);
      return badge && !badge.hidden && badge.textContent.trim() === '1';
    }, alice);
  });

  await step("bob opens it: the badge clears, alice's message turns ✓✓ live", async () => {
    await b.locator(`[data-testid="conversation-row"][data-peer="${alice}"]`).click();
    await waitForMessage(b, 'bob', first, false);
    await until(b, "bob's unread badge is hidden", (peer) => {
      const badge = document.querySelector(`[data-testid="conversation-row"][data-peer="${peer}"] [data-testid="unread-badge"]`);
      return badge && badge.checkVisibility() === false;
    }, alice);
    await waitForReadTick(a, 'alice', first);
  });

  await step('bob types: alice sees the typing indicator', async () => {
    await byTestId(b, 'composer').pressSequentially('Hey ', { delay: 40 });
    await until(a, 'alice sees "bob is typing…"', (peer) => {
      const t = document.querySelector('[data-testid="typing-indicator"]');
      return t && t.checkVisibility() && t.textContent.includes(peer);
    }, bob);
  });

  const reply = 'Hey alice! Typing indicators work.';
  await step('bob replies: alice sees it live and the indicator goes', async () => {
    await send(b, reply);
    await waitForMessage(a, 'alice', reply, false);
    await until(a, 'the typing indicator hides', () =>
      !document.querySelector('[data-testid="typing-indicator"]').checkVisibility());
  });

  const more = [
    [a, b, 'Great. Lunch at noon?'],
    [b, a, 'Sure, the usual place.\nI will book a table.'],
    [a, b, 'Perfect, see you there. À tout à l’heure !'],
  ];
  await step('three more messages go back and forth', async () => {
    for (const [from, to, text] of more) {
      await send(from, text);
      await waitForMessage(to, from === a ? 'bob' : 'alice', text, false);
    }
    await waitForReadTick(a, 'alice', more[2][2]); // bob had it open: he read them all
  });

  const missed = 'Written while your connection was down.';
  await step("alice's socket drops; bob writes meanwhile; alice reconnects with last_id and gets it", async () => {
    const net = network.alice;
    net.down = true;
    for (const { ws, server } of net.sockets.splice(0)) {
      await server.close({ code: 1001, reason: 'test: network down' }).catch(() => {});
      await ws.close({ code: 1012, reason: 'test: network down' }).catch(() => {});
    }
    await until(a, "alice's page shows it is reconnecting", () =>
      document.querySelector('[data-testid="connection-status"]')?.dataset.state === 'reconnecting');
    await send(b, missed);
    await waitForMessage(b, 'bob', missed, true);
    // Down until the page has tried (and failed) to reconnect at least once.
    for (const t0 = Date.now(); net.refused === 0; await new Promise((r) => setTimeout(r, 50))) {
      if (Date.now() - t0 > WAIT_MS) throw new Error('the page never tried to reconnect while the network was down');
    }
    const early = (await messages(a)).some((m) => m.text === missed);
    if (early) throw new Error('alice got the message while her socket was down');
    net.down = false;
    await until(a, "alice's socket is connected again", () =>
      document.querySelector('[data-testid="connection-status"]')?.dataset.state === 'connected');
    await waitForMessage(a, 'alice', missed, false);
  });

  if (process.env.SCREENSHOT) {
    await step(`screenshot of alice's conversation saved to ${process.env.SCREENSHOT}`, async () => {
      await a.mouse.move(0, 0); // no hover highlight in the picture
      await a.screenshot({ path: process.env.SCREENSHOT, timeout: WAIT_MS });
    });
  }

  // More than a page of history: bob's client (the API, as any client would) sends 60 more.
  const burst = Array.from({ length: 60 }, (_, i) => `Message ${i + 1} of a long day`);
  await step('bob sends 60 more through the API: alice sees them live', async () => {
    const page = new URL(pageUrl());
    const authUrl = page.searchParams.get('auth') || page.origin.replace(/:\d+$/, ':5001');
    const chatUrl = page.searchParams.get('chat') || page.origin.replace(/:\d+$/, ':5002');
    const login = await fetch(`${authUrl}/auth/login`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: bob, password }),
    });
    if (login.status !== 200) throw new Error(`bob's login through the API: ${login.status}`);
    const { token } = await login.json();
    for (const content of burst) {
      const sent = await fetch(`${chatUrl}/chat/send`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ recipient: alice, content }),
      });
      if (sent.status !== 201) throw new Error(`a send through the API: ${sent.status}`);
    }
    await waitForMessage(a, 'alice', burst[burst.length - 1], false);
  });

  const expected = [first, reply, ...more.map(([, , text]) => text), missed, ...burst];
  await step('alice reloads: the latest page, then older pages upward, and ✓✓ come back', async () => {
    await a.reload({ timeout: WAIT_MS });
    await until(a, 'alice is still signed in after the reload', (n) =>
      document.querySelector('[data-testid="whoami"]')?.textContent.includes(n), alice);
    await a.locator(`[data-testid="conversation-row"][data-peer="${bob}"]`).click();
    await waitForMessage(a, 'alice', burst[burst.length - 1], false);
    const latest = await messages(a);
    if (latest.length >= expected.length) throw new Error(`the whole history came at once (${latest.length} messages): no paging`);
    // Page upward until the first message is there.
    for (let pages = 0; !(await messages(a)).some((m) => m.text === first); pages++) {
      if (pages > 5) throw new Error('the first message never came back by paging upward');
      const shown = (await messages(a)).length;
      await byTestId(a, 'load-older').click();
      await until(a, 'an older page arrives', (n) =>
        document.querySelectorAll('[data-testid="message-list"] [data-testid="message"]').length > n, shown);
    }
    const got = await messages(a);
    const texts = got.map((m) => m.text);
    if (JSON.stringify(texts) !== JSON.stringify(expected)) {
      throw new Error(`history after the reload:\n${JSON.stringify(texts)}\nexpected:\n${JSON.stringify(expected)}`);
    }
    const unread = got.filter((m) => m.mine && !(m.read && m.tick === '✓✓'));
    if (unread.length) throw new Error(`alice's messages without ✓✓ after the reload (peerReadUpTo): ${JSON.stringify(unread)}`);
    const ids = got.map((m) => m.id);
    if (ids.some((id, i) => i > 0 && id <= ids[i - 1])) throw new Error(`messages out of _id order: ${ids}`);
  });

  const uncaught = consoleErrors.filter((line) => line.includes('uncaught:'));
  if (uncaught.length) throw new Error(`uncaught errors in the pages:\n${uncaught.join('\n')}`);
  await browser.close();
  console.log(`all steps passed in ${((Date.now() - started) / 1000).toFixed(1)} s` +
    (consoleErrors.length ? ` (${consoleErrors.length} console error(s): ${consoleErrors.join(' | ')})` : ''));
}

main().then(() => process.exit(0), fail);
