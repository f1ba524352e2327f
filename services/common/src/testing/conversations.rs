//! The conversation API's scenario, run by chat-service's own tests on the embedded store and
//! by the end-to-end tests on MongoDB.

use super::{read_json, register_and_login};

/// A user's calls to chat-service in [`conversations_scenario`].
struct ConversationApi<'a> {
    http: &'a reqwest::Client,
    chat: std::net::SocketAddr,
    tokens: std::collections::HashMap<&'static str, String>,
}

impl ConversationApi<'_> {
    /// `POST /chat/send`; the message's `_id`.
    async fn send(&self, from: &str, to: &str, content: &str) -> String {
        let response = self
            .http
            .post(format!("http://{}/chat/send", self.chat))
            .bearer_auth(&self.tokens[from])
            .json(&serde_json::json!({ "recipient": to, "content": content }))
            .send()
            .await
            .expect("send");
        let (status, body) = read_json(response).await;
        assert_eq!(status, 201, "{body}");
        body["data"]["_id"].as_str().expect("an _id").to_owned()
    }

    /// `GET /chat/conversations{query}`.
    async fn list(&self, who: &str, query: &str) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .get(format!("http://{}/chat/conversations{query}", self.chat));
        if let Some(token) = self.tokens.get(who) {
            request = request.bearer_auth(token);
        }
        read_json(request.send().await.expect("conversations")).await
    }

    /// `(peer, last message's content, unread)` of each conversation of `who`'s page.
    async fn rows(&self, who: &str, query: &str) -> Vec<(String, String, u64)> {
        let (status, page) = self.list(who, query).await;
        assert_eq!(status, 200, "{page}");
        rows(&page)
    }

    /// `POST /chat/read` with `body`; the status (and the error, if any).
    async fn read(&self, who: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .post(format!("http://{}/chat/read", self.chat))
            .json(body);
        if let Some(token) = self.tokens.get(who) {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("read");
        if response.status() == 204 {
            return (204, serde_json::Value::Null);
        }
        read_json(response).await
    }
}

fn rows(page: &serde_json::Value) -> Vec<(String, String, u64)> {
    page["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["peer"].as_str().expect("peer").to_owned(),
                c["lastMessage"]["content"]
                    .as_str()
                    .expect("content")
                    .to_owned(),
                c["unread"].as_u64().expect("unread"),
            )
        })
        .collect()
}

fn row(peer: &str, last: &str, unread: u64) -> (String, String, u64) {
    (peer.to_owned(), last.to_owned(), unread)
}

/// The conversation list and read positions over HTTP, the same on every store: chat-service at
/// `chat`, auth-service at `auth`, with no users yet.
pub async fn conversations_scenario(
    http: &reqwest::Client,
    auth: std::net::SocketAddr,
    chat: std::net::SocketAddr,
) {
    use serde_json::{Value, json};

    let mut api = ConversationApi {
        http,
        chat,
        tokens: std::collections::HashMap::new(),
    };
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        let token = register_and_login(http, auth, name).await.1;
        api.tokens.insert(name, token);
    }
    api.send("alice", "bob", "a1").await;
    let b1 = api.send("bob", "alice", "b1").await;
    let c1 = api.send("alice", "carol", "c1").await;
    let d1 = api.send("dave", "alice", "d1").await;
    let d2 = api.send("dave", "alice", "d2").await;
    api.send("alice", "alice", "note").await;

    // The most recent first; unread counts what the peer sent.
    let (_, page) = api.list("alice", "").await;
    assert_eq!(
        rows(&page),
        [
            row("alice", "note", 0),
            row("dave", "d2", 2),
            row("carol", "c1", 0),
            row("bob", "b1", 1),
        ]
    );
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["data"][1]["lastMessage"]["_id"], json!(d2));
    assert_eq!(page["data"][1]["peerReadUpTo"], Value::Null);
    assert_eq!(api.rows("bob", "").await, [row("alice", "b1", 1)]);
    let (_, page) = api.list("erin", "").await;
    assert_eq!(page, json!({ "data": [], "next": null }));

    // Pages by cursor.
    let (_, first) = api.list("alice", "?limit=2").await;
    assert_eq!(
        rows(&first),
        [row("alice", "note", 0), row("dave", "d2", 2)]
    );
    let cursor = first["next"].as_str().expect("a cursor").to_owned();
    let (_, second) = api
        .list("alice", &format!("?limit=2&before={cursor}"))
        .await;
    assert_eq!(rows(&second), [row("carol", "c1", 0), row("bob", "b1", 1)]);
    assert_eq!(second["next"], Value::Null);

    // Reading moves forward only; unread follows; the peer sees how far.
    let read_to = |peer: &str, id: &str| json!({ "peer": peer, "upTo": id });
    assert_eq!(api.read("alice", &read_to("dave", &d1)).await.0, 204);
    assert_eq!(api.rows("alice", "?limit=2").await[1], row("dave", "d2", 1));
    assert_eq!(api.read("alice", &read_to("dave", &d2)).await.0, 204);
    assert_eq!(api.read("alice", &read_to("dave", &d1)).await.0, 204);
    assert_eq!(api.rows("alice", "?limit=2").await[1], row("dave", "d2", 0));
    let (_, daves) = api.list("dave", "").await;
    assert_eq!(daves["data"][0]["peerReadUpTo"], json!(d2));
    // Reading up to one's own message reads everything before it.
    assert_eq!(api.read("bob", &read_to("alice", &b1)).await.0, 204);
    assert_eq!(api.rows("bob", "").await, [row("alice", "b1", 0)]);
    // A new message is unread again.
    api.send("dave", "alice", "d3").await;
    assert_eq!(api.rows("alice", "?limit=1").await, [row("dave", "d3", 1)]);

    // Participants only; ids and bodies checked; a token needed.
    for (who, body, status) in [
        ("carol", read_to("dave", &d1), 404),
        ("alice", read_to("dave", &c1), 404),
        ("alice", read_to("dave", "65b9f0c2a1b2c3d4e5f60718"), 404),
        ("alice", read_to("dave", "nope"), 400),
        ("alice", json!({ "peer": "dave" }), 400),
        ("alice", json!({ "upTo": d1 }), 400),
        ("alice", json!({ "peer": ["dave"], "upTo": d1 }), 400),
        ("nobody", read_to("dave", &d1), 401),
    ] {
        let (got, answer) = api.read(who, &body).await;
        assert_eq!(got, status, "{who} {body}: {answer}");
    }
    for (who, query, status) in [
        ("alice", "?limit=0", 400),
        ("alice", "?limit=101", 400),
        ("alice", "?limit=x", 400),
        ("alice", "?before=nope", 400),
        ("nobody", "", 401),
    ] {
        let (got, answer) = api.list(who, query).await;
        assert_eq!(got, status, "{who} {query}: {answer}");
    }
}
