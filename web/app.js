// The chat web client: plain DOM, no framework, no build step. websocket-service serves this
// file next to index.html and style.css under a CSP that forbids inline scripts and styles, so
// everything here works through classes, the `hidden` attribute and textContent. User content
// never goes through innerHTML.

// ---------------------------------------------------------------------------------------------
// Configuration: where the three services are.
// ---------------------------------------------------------------------------------------------

// Defaults: served by websocket-service on its port 5003 (`chat-stack`, compose, a service run
// by hand), the page finds auth and chat on 5001 and 5002 of the same host; served on any other
// port (behind an ingress that routes /auth, /chat and / to the services, as the operator's
// does), everything is at its own origin. `?auth=&chat=&ws=` override them for this page only:
// they stay in the address bar (a reload keeps them), are never stored, and the sign-in forms
// name the servers they point to. A session (its token) belongs to its three servers: a link
// naming other servers starts signed out, so it can never send a token to a server the user
// did not sign in to.
function resolveConfig() {
  const params = new URLSearchParams(location.search);
  const host = location.hostname.includes(':') && !location.hostname.startsWith('[')
    ? `[${location.hostname}]` : location.hostname;
  const wsScheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const defaults = location.port === '5003' ? {
    auth: `${location.protocol}//${host}:5001`,
    chat: `${location.protocol}//${host}:5002`,
    ws: `${wsScheme}://${host}:5003`,
  } : {
    auth: location.origin,
    chat: location.origin,
    ws: `${wsScheme}://${location.host}`,
  };
  const config = { overridden: false };
  for (const key of Object.keys(defaults)) {
    const value = params.get(key)?.trim();
    config[key] = (value || defaults[key]).replace(/\/+$/, '');
    if (config[key] !== defaults[key]) config.overridden = true;
  }
  return config;
}

const config = resolveConfig();
const PAGE_SIZE = 50;          // messages per history page
const TYPING_SHOW_MS = 4000;   // how long "is typing…" stays after the last typing frame
const TYPING_SEND_MS = 2000;   // at most one typing frame per this interval
// The session of these three servers (see resolveConfig).
const TOKEN_KEY = `chat.session ${config.auth} ${config.chat} ${config.ws}`;

// ---------------------------------------------------------------------------------------------
// State. One object, so what the page knows is in one place.
// ---------------------------------------------------------------------------------------------

const state = {
  token: null,
  me: null,
  expiryTimer: null,
  conversations: new Map(), // peer -> { peer, lastMessage, unread, peerReadUpTo }
  nextCursor: null,         // the conversation list's next page, null when there is none
  seen: new Set(),          // every message _id this page has handled (for de-duplication)
  newestId: '',             // newest _id seen: `last_id` when the socket reconnects
  open: null,               // the open conversation, see openConversation
  typingUntil: new Map(),   // peer -> time their typing indicator expires
  typingTimers: new Map(),
  drafts: new Map(),        // peer -> unsent text in their composer
  lastTypingSent: 0,
  ws: null,
  wsAttempt: 0,
  wsTimer: null,
};

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
const el = {
  banner: document.getElementById('banner'),
  error: $('error'),
  status: $('connection-status'),
  whoami: $('whoami'),
  signOut: $('sign-out'),
  authView: document.getElementById('auth-view'),
  chatView: document.getElementById('chat-view'),
  loginForm: document.getElementById('login-form'),
  registerForm: document.getElementById('register-form'),
  newPeerForm: document.getElementById('new-peer-form'),
  newPeer: $('new-peer'),
  list: $('conversation-list'),
  noConversations: document.getElementById('no-conversations'),
  loadMore: $('load-more'),
  placeholder: document.getElementById('placeholder'),
  head: document.getElementById('conversation-head'),
  peerAvatar: document.getElementById('peer-avatar'),
  peerName: document.getElementById('peer-name'),
  typing: $('typing-indicator'),
  messagesBox: document.getElementById('messages'),
  loadOlder: $('load-older'),
  messageList: $('message-list'),
  composerForm: document.getElementById('composer-form'),
  composer: $('composer'),
};

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const maxId = (a, b) => (!a ? b : !b ? a : a > b ? a : b); // ObjectId hex compares by time

function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  el.error.textContent = message;
  el.banner.hidden = false;
}
function clearError() {
  el.banner.hidden = true;
  el.error.textContent = '';
}
el.banner.querySelector('.banner-close').addEventListener('click', clearError);

// crypto.randomUUID exists only in secure contexts (https, localhost); a page served over plain
// http from another host still needs idempotency keys.
function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// Today's times as 14:05; older ones by date (the list) or date and time (a message).
function formatTime(timestamp, withTime) {
  const date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) return '';
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (date.toDateString() === new Date().toDateString()) return time;
  const day = date.toLocaleDateString([], { month: 'short', day: 'numeric' });
  return withTime ? `${day}, ${time}` : day;
}

// A stable colour per name, as one of a few CSS classes (the CSP forbids inline styles).
function avatar(node, name) {
  let hash = 0;
  for (const c of name) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
  node.className = `avatar hue-${hash % 8}`;
  node.textContent = name.slice(0, 1).toUpperCase();
  return node;
}

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;       // 0 when the server could not be reached
    this.retryAfter = retryAfter;
  }
}

// Every error body is `{"message": ...}`: show that, not a status line.
async function api(base, path, { method = 'GET', body, headers = {}, auth = true } = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (auth) init.headers.Authorization = `Bearer ${state.token}`;
  let response;
  try {
    response = await fetch(base + path, init);
  } catch (e) {
    throw new ApiError(0, `Cannot reach ${base} (${e.message})`);
  }
  const text = response.status === 204 ? '' : await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: use the status line */ }
  if (!response.ok) {
    // Retry-After is only readable cross-origin if the server exposes it; null otherwise.
    const retryAfter = Number.parseFloat(response.headers.get('Retry-After'));
    const error = new ApiError(response.status, data?.message || `${response.status} ${response.statusText}`,
      Number.isFinite(retryAfter) ? retryAfter : null);
    if (response.status === 401 && auth && state.token) signOut('Your session has ended: sign in again.');
    throw error;
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Session: the JWT and who it names, kept in localStorage until it expires.
// ---------------------------------------------------------------------------------------------

function jwtPayload(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function startSession(token, fallbackName) {
  const payload = jwtPayload(token);
  const expiresMs = payload?.exp ? payload.exp * 1000 : 0;
  if (!payload || expiresMs <= Date.now()) return false;
  state.token = token;
  state.me = payload.username || fallbackName;
  localStorage.setItem(TOKEN_KEY, JSON.stringify({ token, username: state.me }));
  // Sign out when the token expires even if nothing else notices (setTimeout caps at ~24 days).
  clearTimeout(state.expiryTimer);
  state.expiryTimer = setTimeout(() => signOut('Your session has expired: sign in again.'),
    Math.min(expiresMs - Date.now(), 2 ** 31 - 1));
  el.whoami.textContent = `Signed in as ${state.me}`;
  showView(true);
  loadConversations().finally(connectSocket);
  return true;
}

function signOut(reason) {
  localStorage.removeItem(TOKEN_KEY);
  clearTimeout(state.expiryTimer);
  clearTimeout(state.wsTimer);
  const ws = state.ws;
  state.ws = null; // first, so its close handler knows it was meant
  ws?.close(1000, 'Signed out');
  Object.assign(state, { token: null, me: null, nextCursor: null, open: null, newestId: '', wsAttempt: 0 });
  state.conversations.clear();
  state.seen.clear();
  state.typingUntil.clear();
  for (const timer of state.typingTimers.values()) clearTimeout(timer);
  state.typingTimers.clear();
  state.drafts.clear();
  el.composer.value = '';
  el.list.replaceChildren();
  closeConversationView();
  setStatus('signed-out');
  showView(false);
  if (reason) showError(reason);
}

function showView(signedIn) {
  el.authView.hidden = signedIn;
  el.chatView.hidden = !signedIn;
  el.whoami.hidden = !signedIn;
  el.signOut.hidden = !signedIn;
  el.status.hidden = !signedIn;
}

async function submitCredentials(form, register) {
  clearError();
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  const buttons = form.querySelectorAll('button');
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const credentials = { username, password };
    if (register) await api(config.auth, '/auth/register', { method: 'POST', body: credentials, auth: false });
    const { token } = await api(config.auth, '/auth/login', { method: 'POST', body: credentials, auth: false });
    form.reset();
    if (!startSession(token, username)) showError('The server sent an unusable token.');
  } catch (e) {
    showError(e.message);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

el.loginForm.addEventListener('submit', (e) => { e.preventDefault(); submitCredentials(el.loginForm, false); });
el.registerForm.addEventListener('submit', (e) => { e.preventDefault(); submitCredentials(el.registerForm, true); });
el.signOut.addEventListener('click', () => signOut());

// ---------------------------------------------------------------------------------------------
// Conversation list
// ---------------------------------------------------------------------------------------------

async function loadConversations() {
  const query = `limit=20${state.nextCursor ? `&before=${encodeURIComponent(state.nextCursor)}` : ''}`;
  el.loadMore.disabled = true;
  try {
    const { data, next } = await api(config.chat, `/chat/conversations?${query}`);
    for (const row of data) {
      const known = state.conversations.get(row.peer);
      // Live messages may have beaten this answer: keep whichever is newer.
      if (!known || !known.lastMessage || (row.lastMessage && row.lastMessage._id >= known.lastMessage._id)) {
        state.conversations.set(row.peer, { ...row });
      }
      if (row.lastMessage) {
        state.seen.add(row.lastMessage._id);
        state.newestId = maxId(state.newestId, row.lastMessage._id);
      }
      if (state.open?.peer === row.peer) {
        if (document.visibilityState === 'visible') state.conversations.get(row.peer).unread = 0;
        refreshTicks();
      }
    }
    state.nextCursor = next ?? null;
  } catch (e) {
    // The list is a convenience: chatting by name and live messages still work without it.
    if (state.token) showError(`Could not load conversations: ${e.message}`);
  } finally {
    el.loadMore.disabled = false;
    renderConversations();
  }
}

el.loadMore.addEventListener('click', loadConversations);

function renderConversations() {
  const newest = (c) => c.lastMessage?._id ?? '';
  const rows = [...state.conversations.values()]
    .filter((c) => c.lastMessage) // an opened but still empty conversation has no row yet
    .sort((a, b) => (newest(b) > newest(a)) - (newest(b) < newest(a)));
  el.list.replaceChildren(...rows.map(renderRow));
  el.noConversations.hidden = rows.length > 0;
  el.loadMore.hidden = !state.nextCursor;
}

function renderRow(c) {
  const li = h('li', 'conversation-row');
  li.dataset.testid = 'conversation-row';
  li.dataset.peer = c.peer;
  if (state.open?.peer === c.peer) li.classList.add('active');
  if (c.unread) li.classList.add('unread');
  const button = h('button', 'row-button');
  button.type = 'button';
  button.addEventListener('click', () => openConversation(c.peer));

  const body = h('span', 'row-body');
  const top = h('span', 'row-top');
  top.append(h('span', 'row-peer', c.peer), h('span', 'row-time', formatTime(c.lastMessage.timestamp, false)));
  const bottom = h('span', 'row-bottom');
  const typing = (state.typingUntil.get(c.peer) ?? 0) > Date.now();
  const preview = typing ? 'typing…' : `${c.lastMessage.sender === state.me ? 'You: ' : ''}${c.lastMessage.content}`;
  const badge = h('span', 'badge', String(c.unread || 0));
  badge.dataset.testid = 'unread-badge';
  badge.hidden = !c.unread;
  bottom.append(h('span', typing ? 'row-preview typing' : 'row-preview', preview), badge);
  body.append(top, bottom);
  button.append(avatar(h('span'), c.peer), body);
  li.append(button);
  return li;
}

function conversationFor(peer) {
  let c = state.conversations.get(peer);
  if (!c) {
    c = { peer, lastMessage: null, unread: 0, peerReadUpTo: null };
    state.conversations.set(peer, c);
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Messages: every message, from history, a send or the socket, comes through here once.
// ---------------------------------------------------------------------------------------------

// `live`: it just arrived (socket or send), as opposed to a page of history.
function handleMessage(message, { live }) {
  const { _id: id } = message;
  const fresh = !state.seen.has(id);
  state.seen.add(id);
  state.newestId = maxId(state.newestId, id);
  const mine = message.sender === state.me;
  const peer = mine ? message.recipient : message.sender;
  const c = conversationFor(peer);
  const newest = !c.lastMessage || id > c.lastMessage._id;
  if (newest) c.lastMessage = message;
  const viewing = state.open?.peer === peer && document.visibilityState === 'visible';
  // Only a message newer than the list's last one is not yet counted in the server's `unread`.
  if (live && fresh && newest && !mine && !viewing) c.unread = (c.unread || 0) + 1;
  if (state.open?.peer === peer) insertMessage(message, live);
  if (!live) return; // the caller renders once for the whole page
  if (!mine) stopTyping(peer); // their message is what they were typing
  if (state.open?.peer === peer && !mine) markRead();
  renderConversations();
}

function openConversation(peer) {
  clearError();
  if (state.open?.peer === peer) return;
  // What was typed stays with its conversation, so it is never sent to the next one by mistake.
  if (state.open) state.drafts.set(state.open.peer, el.composer.value);
  el.composer.value = state.drafts.get(peer) ?? '';
  state.open = { peer, messages: [], hasOlder: false, loadingOlder: false, readSent: '' };
  const c = state.conversations.get(peer);
  if (c) c.unread = 0;
  el.placeholder.hidden = true;
  el.head.hidden = false;
  el.messagesBox.hidden = false;
  el.composerForm.hidden = false;
  el.peerName.textContent = peer;
  avatar(el.peerAvatar, peer);
  el.messageList.replaceChildren();
  el.loadOlder.hidden = true;
  renderTyping();
  renderConversations();
  el.composer.focus();
  loadHistory(peer, null);
}

function closeConversationView() {
  el.placeholder.hidden = false;
  el.head.hidden = true;
  el.messagesBox.hidden = true;
  el.composerForm.hidden = true;
  el.messageList.replaceChildren();
}

// One page of history: the newest page when `before` is null, else the page older than it.
async function loadHistory(peer, before) {
  const open = state.open;
  if (open.loadingOlder) return;
  open.loadingOlder = true;
  el.loadOlder.disabled = true;
  const query = new URLSearchParams({ user1: state.me, user2: peer, limit: String(PAGE_SIZE) });
  if (before) query.set('before', before);
  try {
    const { data } = await api(config.chat, `/chat/history?${query}`);
    if (state.open !== open) return; // another conversation was opened meanwhile
    const box = el.messagesBox;
    const fromBottom = box.scrollHeight - box.scrollTop;
    for (const message of data) handleMessage(message, { live: false });
    renderConversations();
    open.hasOlder = data.length >= PAGE_SIZE;
    el.loadOlder.hidden = !open.hasOlder;
    if (before) box.scrollTop = box.scrollHeight - fromBottom; // keep what the reader was looking at
    else scrollToBottom();
    if (!before) markRead();
  } catch (e) {
    if (state.open === open) showError(`Could not load messages: ${e.message}`);
  } finally {
    open.loadingOlder = false;
    el.loadOlder.disabled = false;
  }
}

el.loadOlder.addEventListener('click', () => {
  if (state.open?.messages.length) loadHistory(state.open.peer, state.open.messages[0]._id);
});
el.messagesBox.addEventListener('scroll', () => {
  const open = state.open;
  if (open?.hasOlder && !open.loadingOlder && el.messagesBox.scrollTop < 40 && open.messages.length) {
    loadHistory(open.peer, open.messages[0]._id);
  }
});

// Places a message in the open conversation by _id (oldest first); ignores duplicates.
function insertMessage(message, live) {
  const list = state.open.messages;
  let index = list.length;
  while (index > 0 && list[index - 1]._id > message._id) index--;
  if (index > 0 && list[index - 1]._id === message._id) return;
  const nearBottom = el.messagesBox.scrollHeight - el.messagesBox.scrollTop - el.messagesBox.clientHeight < 80;
  list.splice(index, 0, message);
  el.messageList.insertBefore(renderMessage(message), el.messageList.children[index] ?? null);
  if (live && (nearBottom || message.sender === state.me)) scrollToBottom();
}

function renderMessage(message) {
  const mine = message.sender === state.me;
  const li = h('li', mine ? 'message mine' : 'message theirs');
  li.dataset.testid = 'message';
  li.dataset.id = message._id;
  li.dataset.mine = String(mine);
  const meta = h('span', 'meta');
  const time = h('time', null, formatTime(message.timestamp, true));
  time.dateTime = message.timestamp;
  time.title = new Date(message.timestamp).toLocaleString();
  meta.append(time);
  if (mine) {
    const tick = h('span', 'tick');
    tick.dataset.testid = 'tick';
    meta.append(tick);
    setTick(tick, message._id);
  }
  li.append(h('div', 'content', message.content), meta);
  return li;
}

function setTick(tick, id) {
  const upTo = state.conversations.get(state.open?.peer)?.peerReadUpTo;
  const read = Boolean(upTo && id <= upTo);
  tick.textContent = read ? '✓✓' : '✓';
  tick.dataset.read = String(read);
  tick.title = read ? 'Read' : 'Sent';
}

function refreshTicks() {
  for (const tick of el.messageList.querySelectorAll('[data-testid="tick"]')) {
    setTick(tick, tick.closest('[data-id]').dataset.id);
  }
}

function scrollToBottom() {
  el.messagesBox.scrollTop = el.messagesBox.scrollHeight;
}

// Tells the server how far this user has read the open conversation (its newest message), when
// someone can actually see it. The server never moves a read mark backwards.
function markRead() {
  const open = state.open;
  if (!open || document.visibilityState !== 'visible' || !open.messages.length) return;
  const c = state.conversations.get(open.peer);
  if (c?.unread) { c.unread = 0; renderConversations(); }
  const upTo = open.messages[open.messages.length - 1]._id;
  if (upTo <= open.readSent) return;
  open.readSent = upTo;
  api(config.chat, '/chat/read', { method: 'POST', body: { peer: open.peer, upTo } })
    .catch((e) => console.warn(`chat: could not mark ${open.peer} read: ${e.message}`));
}

document.addEventListener('visibilitychange', markRead);

// ---------------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------------

// Sends with one idempotency key for every attempt, so a retry after a lost answer or a 503 is
// not stored twice. 429 waits as long as the server asks (Retry-After) when it is readable.
async function postMessage(recipient, content) {
  const key = uuid();
  for (let attempt = 0; ; attempt++) {
    try {
      const { data } = await api(config.chat, '/chat/send', {
        method: 'POST', body: { recipient, content }, headers: { 'Idempotency-Key': key },
      });
      return data;
    } catch (e) {
      const retryable = e.status === 0 || e.status === 503 || e.status === 429;
      if (!retryable || attempt >= 4) throw e;
      await sleep(Math.min(10_000, e.retryAfter != null ? e.retryAfter * 1000 : 500 * 2 ** attempt));
    }
  }
}

async function sendFromComposer() {
  const open = state.open;
  const content = el.composer.value.trim();
  if (!open || !content) return;
  clearError();
  el.composer.value = '';
  // Shown at once, greyed out, until the server answers with the message's _id.
  const pending = h('li', 'message mine pending');
  pending.dataset.testid = 'message-pending';
  pending.append(h('div', 'content', content), h('span', 'meta', 'sending…'));
  el.messageList.append(pending);
  scrollToBottom();
  try {
    const message = await postMessage(open.peer, content);
    pending.remove();
    handleMessage(message, { live: true });
  } catch (e) {
    pending.remove();
    showError(e.status === 404 ? `No such user: ${open.peer}` : `Not sent: ${e.message}`);
    if (state.open === open && !el.composer.value) el.composer.value = content; // nothing typed is lost
  }
}

el.composerForm.addEventListener('submit', (e) => { e.preventDefault(); sendFromComposer(); });
el.composer.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendFromComposer();
  }
});
el.composer.addEventListener('input', () => {
  const peer = state.open?.peer;
  if (!peer || !el.composer.value || state.ws?.readyState !== WebSocket.OPEN) return;
  if (Date.now() - state.lastTypingSent < TYPING_SEND_MS) return;
  state.lastTypingSent = Date.now();
  state.ws.send(JSON.stringify({ type: 'typing', to: peer }));
});

el.newPeerForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const peer = el.newPeer.value.trim();
  if (!peer) return;
  if (peer === state.me) { showError('That is you: pick someone else.'); return; }
  el.newPeer.value = '';
  openConversation(peer); // the first message sent creates the conversation
});

// ---------------------------------------------------------------------------------------------
// Typing indicator
// ---------------------------------------------------------------------------------------------

function startTyping(peer) {
  state.typingUntil.set(peer, Date.now() + TYPING_SHOW_MS);
  clearTimeout(state.typingTimers.get(peer));
  state.typingTimers.set(peer, setTimeout(() => stopTyping(peer), TYPING_SHOW_MS));
  renderTyping();
  renderConversations();
}

function stopTyping(peer) {
  if (!state.typingUntil.delete(peer)) return;
  clearTimeout(state.typingTimers.get(peer));
  renderTyping();
  renderConversations();
}

function renderTyping() {
  const peer = state.open?.peer;
  const typing = Boolean(peer) && (state.typingUntil.get(peer) ?? 0) > Date.now();
  el.typing.textContent = typing ? `${peer} is typing…` : '';
  el.typing.hidden = !typing;
}

// ---------------------------------------------------------------------------------------------
// WebSocket: live messages, read marks and typing, reconnecting with backoff.
// ---------------------------------------------------------------------------------------------

function setStatus(stateName) {
  const labels = { connecting: 'Connecting…', connected: 'Connected', reconnecting: 'Reconnecting…',
    disconnected: 'Disconnected', 'signed-out': '' };
  el.status.dataset.state = stateName;
  el.status.querySelector('.status-text').textContent = labels[stateName];
}

function connectSocket() {
  if (!state.token || state.ws) return;
  clearTimeout(state.wsTimer);
  setStatus(state.wsAttempt ? 'reconnecting' : 'connecting');
  // last_id asks the server to replay what this page missed while it was not connected. The
  // token goes as a sub-protocol next to `bearer` (the server answers `bearer`), not in the URL,
  // which proxies and browser tools log.
  let url = `${config.ws}/?events=read,typing`;
  if (state.newestId) url += `&last_id=${encodeURIComponent(state.newestId)}`;
  const ws = new WebSocket(url, ['bearer', state.token]);
  state.ws = ws;
  let openedAt = 0;
  ws.addEventListener('open', () => {
    if (state.ws !== ws) return;
    openedAt = Date.now();
    setStatus('connected');
  });
  ws.addEventListener('message', (event) => {
    if (state.ws !== ws) return;
    let frame;
    try { frame = JSON.parse(event.data); } catch { console.warn('chat: a frame that is not JSON'); return; }
    handleFrame(frame);
  });
  ws.addEventListener('close', (event) => {
    if (state.ws !== ws) return; // signed out or replaced: nothing to do
    state.ws = null;
    if (event.code === 4001) { signOut('Your session has ended: sign in again.'); return; }
    if (event.code === 4008) {
      setStatus('disconnected');
      showError('Disconnected: too many chat tabs or devices are open for this account. Reload to reconnect here.');
      return;
    }
    // A socket that stayed up a while starts the backoff over; one that keeps dropping at once
    // (a server refusing, a proxy timing out) backs off further each time.
    if (openedAt && Date.now() - openedAt > 10_000) state.wsAttempt = 0;
    const base = Math.min(10_000, 500 * 2 ** state.wsAttempt);
    state.wsAttempt++;
    setStatus('reconnecting');
    state.wsTimer = setTimeout(connectSocket, base / 2 + Math.random() * base / 2);
  });
}

// Back online: no need to wait out the backoff.
window.addEventListener('online', () => { if (state.token && !state.ws) connectSocket(); });

function handleFrame(frame) {
  switch (frame.type) {
    case 'new_message': {
      const { type, ...message } = frame;
      handleMessage(message, { live: true });
      break;
    }
    case 'read': {
      if (frame.peer === state.me && frame.reader !== state.me) {
        // The peer read my messages: ticks turn to ✓✓ up to there.
        const c = conversationFor(frame.reader);
        c.peerReadUpTo = maxId(c.peerReadUpTo, frame.upTo);
        if (state.open?.peer === frame.reader) refreshTicks();
      } else if (frame.reader === state.me) {
        // Another device of mine read it: its unread count is gone, as far as that read goes.
        const c = state.conversations.get(frame.peer);
        if (c && (!c.lastMessage || c.lastMessage._id <= frame.upTo)) c.unread = 0;
        renderConversations();
      }
      break;
    }
    case 'typing':
      if (frame.from && frame.from !== state.me) startTyping(frame.from);
      break;
    case 'error':
      console.error(`chat: the server says: ${frame.message}`);
      break;
    default:
      break; // frames added later are ignored, not fatal
  }
}

// ---------------------------------------------------------------------------------------------
// Start: reuse a stored session that has not expired, else show the sign-in forms.
// ---------------------------------------------------------------------------------------------

function restoreSession() {
  try {
    const saved = JSON.parse(localStorage.getItem(TOKEN_KEY) || 'null');
    if (saved?.token && startSession(saved.token, saved.username)) return;
  } catch { /* unreadable: start signed out */ }
  localStorage.removeItem(TOKEN_KEY);
  showView(false);
}

// Servers other than the page's own are named where credentials are typed.
if (config.overridden) {
  const note = document.getElementById('servers-note');
  note.textContent = `This page talks to other servers: auth ${config.auth}, chat ${config.chat}, ` +
    `WebSocket ${config.ws}. Sign in only if you trust them.`;
  note.hidden = false;
}

restoreSession();
