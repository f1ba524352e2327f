//! The published contract: auth-service's and chat-service's OpenAPI documents are generated
//! from the code, committed under `openapi/` (this test keeps them equal: regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p e2e-tests --test contract`), served at `/openapi.json`, and
//! Schemathesis, run against the live services with a token and a fixed example budget, finds
//! no server error and no response that strays from them.

use std::path::PathBuf;

use e2e_tests::{spawn_auth, spawn_chat};

fn committed(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../openapi")
        .join(format!("{name}.json"))
}

fn documents() -> [(&'static str, String); 2] {
    [
        ("auth-service", auth_service::openapi::document()),
        ("chat-service", chat_service::openapi::document()),
    ]
}

#[test]
fn the_committed_openapi_documents_are_the_codes() {
    for (name, generated) in documents() {
        let path = committed(name);
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("{generated}\n")).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk.trim_end() == generated,
            "{} differs from {name}'s code: run `UPDATE_OPENAPI=1 cargo test -p e2e-tests \
             --test contract` and commit the result",
            path.display()
        );
        let document: serde_json::Value = serde_json::from_str(&generated).unwrap();
        assert_eq!(document["openapi"], "3.1.0", "{name}");
    }
}

/// Runs Schemathesis against the service at `addr`; panics with its report on any failure.
async fn schemathesis(st: &str, name: &str, addr: std::net::SocketAddr, token: &str) {
    let report = std::env::temp_dir().join(chat_common::testing::unique_name("schemathesis"));
    std::fs::create_dir_all(&report).expect("a report folder");
    let output = tokio::process::Command::new(st)
        // Schemathesis keeps a cache (`.schemathesis/`) in its working folder: not the checkout.
        .current_dir(&report)
        .arg("run")
        .arg(format!("http://{addr}/openapi.json"))
        .args([
            // What the contract promises: no 5xx, and every status, content type, header and
            // body as documented.
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--max-examples",
            "40",
            "--seed",
            "20261203",
            // One worker: hypothesis' lambda descriptions are not thread-safe on Python 3.11
            // ("AST constructor recursion depth mismatch" with two).
            "--workers",
            "1",
            "--request-timeout",
            "15",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&report)
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .output()
        .await
        .expect("running schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&report);
    assert!(
        output.status.success(),
        "schemathesis found failures in {name}:\n{text}"
    );
    println!("{name}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_auth_or_chat() {
    let st = std::env::var("TEST_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!(
            "TEST_SCHEMATHESIS is not set: it names Schemathesis' `st` (PyPI schemathesis); \
             `bash tests/run.sh` installs it into ~/.cache/chat-backend and sets it"
        )
    });
    let (auth_db, _) = chat_common::testing::mongodb_url_with_fresh_database("contract_auth");
    let (chat_db, _) = chat_common::testing::mongodb_url_with_fresh_database("contract_chat");
    let exchange = chat_common::testing::unique_name("contract_exchange");
    let auth = spawn_auth(&auth_db).await;
    let chat = spawn_chat(&chat_db, auth.addr, &exchange).await;
    let http = reqwest::Client::new();
    let (_, token) =
        chat_common::testing::register_and_login(&http, auth.addr, "contract-user").await;
    // Someone to send to: a fuzzed recipient is most often nobody (404).
    chat_common::testing::register_and_login(&http, auth.addr, "contract-peer").await;
    for ((name, generated), addr) in documents().into_iter().zip([auth.addr, chat.addr]) {
        let served = http
            .get(format!("http://{addr}/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200);
        assert_eq!(
            served.text().await.unwrap(),
            generated,
            "{name} serves its document"
        );
        schemathesis(&st, name, addr, &token).await;
    }
}
