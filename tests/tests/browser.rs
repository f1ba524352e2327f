//! The web client (`web/`) in a real browser: the standalone stack serves it, and
//! `tests/browser/chat.mjs` drives Debian's Chromium through Playwright as two people would (two
//! browser contexts register, find each other, chat live, see typing and read ticks, and one
//! reloads and finds the history). `bash tests/run.sh` installs Chromium and playwright-core
//! (`ensure_browser`) and sets `TEST_BROWSER_DIR`; without them this test fails and says so.

use std::{path::PathBuf, time::Duration};

use e2e_tests::Standalone;

/// The whole browser run is bounded by the script (60 s); this is the backstop.
const WITHIN: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_through_the_web_client_in_chromium() {
    let playwright = std::env::var("TEST_BROWSER_DIR").unwrap_or_else(|_| {
        panic!(
            "TEST_BROWSER_DIR is not set: it names a folder whose node_modules holds \
             playwright-core; `bash tests/run.sh` installs it (and Debian's chromium) and sets it"
        )
    });
    let chromium = std::env::var("TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no browser at {chromium}: `apt-get install chromium` (tests/run.sh does)"
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = tempfile::tempdir().unwrap();
    // The script sends 60 messages in a burst through the API (more than a page of history):
    // beyond the default per-user send rate.
    let stack = Standalone::start(data.path(), chat_common::testing::LOAD_TEST_LIMITS).await;
    let a = stack.addrs;
    // The page at the stack's websocket port, told where auth and chat are (ephemeral ports).
    let screenshot = std::env::var("SCREENSHOT")
        .unwrap_or_else(|_| data.path().join("conversation.png").display().to_string());
    // The script reads TEST_BROWSER_DIR and TEST_CHROMIUM as this test does.
    let run = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/chat.mjs"))
        .env("WEB_URL", format!("http://{}/", a.websocket))
        .env("AUTH_URL", format!("http://{}", a.auth))
        .env("CHAT_URL", format!("http://{}", a.chat))
        .env("WS_URL", format!("ws://{}", a.websocket))
        .env("TEST_BROWSER_DIR", &playwright)
        .env("TEST_CHROMIUM", &chromium)
        .env("SCREENSHOT", &screenshot)
        // Past the backstop, node and its Chromium go with the test.
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WITHIN, run)
        .await
        .expect("the browser run ends within its bound")
        .expect("node runs (Node.js is needed for the browser test)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "a screenshot of the conversation at {screenshot}"
    );
    stack.stop().await;
}
