//! chat-service's API over real HTTP: authorization, validation and pagination.

use e2e_tests::{SECRET, Stack, forge_token, metric, page_field};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_is_the_token_user() {
    let stack = Stack::start(0).await;
    let (id, ta) = stack.user("alice").await;
    stack.user("bob").await;
    let send = |token: Option<String>, body: serde_json::Value| {
        let stack = &stack;
        async move {
            stack
                .post(stack.chat.addr, "/chat/send", token.as_deref(), &body)
                .await
        }
    };
    let spoof = json!({ "sender": "bob", "recipient": "alice", "content": "it's me, bob" });
    let (status, body) = send(Some(ta.clone()), spoof).await;
    assert_eq!(status, 403, "{body}");
    let ok = json!({ "recipient": "bob", "content": "hi" });
    assert_eq!(send(None, ok.clone()).await.0, 401, "no token");
    assert_eq!(send(Some("garbage".into()), ok.clone()).await.0, 401);
    assert_eq!(
        send(
            Some(forge_token(&id, "alice", -3600, SECRET.as_bytes())),
            ok.clone()
        )
        .await
        .0,
        401,
        "expired"
    );
    assert_eq!(
        send(
            Some(forge_token(
                &id,
                "alice",
                600,
                b"another-key-another-key-another-key"
            )),
            ok.clone()
        )
        .await
        .0,
        401
    );
    let (status, body) = send(Some(ta.clone()), ok).await;
    assert_eq!(
        (status, body["data"]["sender"].as_str()),
        (201, Some("alice"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sends_are_clear_4xx() {
    let stack = Stack::start(0).await;
    let (_, ta) = stack.user("alice").await;
    stack.user("bob").await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "empty content",
            br#"{"recipient":"bob","content":""}"#.to_vec(),
            400,
        ),
        (
            "blank content",
            br#"{"recipient":"bob","content":"  \n\t "}"#.to_vec(),
            400,
        ),
        (
            "too long",
            format!(r#"{{"recipient":"bob","content":"{}"}}"#, "é".repeat(4001)).into_bytes(),
            400,
        ),
        ("missing recipient", br#"{"content":"hi"}"#.to_vec(), 400),
        ("missing content", br#"{"recipient":"bob"}"#.to_vec(), 400),
        (
            "empty recipient",
            br#"{"recipient":"","content":"hi"}"#.to_vec(),
            400,
        ),
        (
            "operator",
            br#"{"recipient":{"$ne":null},"content":"hi"}"#.to_vec(),
            400,
        ),
        (
            "number",
            br#"{"recipient":"bob","content":42}"#.to_vec(),
            400,
        ),
        ("malformed", br#"{"recipient":"bob","#.to_vec(), 400),
        (
            "unknown recipient",
            br#"{"recipient":"nobody","content":"hi"}"#.to_vec(),
            404,
        ),
        (
            "too large",
            format!(
                r#"{{"recipient":"bob","content":"{}"}}"#,
                "x".repeat(70_000)
            )
            .into_bytes(),
            413,
        ),
    ];
    for (name, body, expected) in cases {
        let (status, resp) = stack.post_raw("/chat/send", &ta, body).await;
        assert_eq!(status, expected, "{name}: {resp}");
    }
    // Exactly 4000 characters is fine.
    assert_eq!(stack.send(&ta, "bob", &"é".repeat(4000)).await.0, 201);
    let text = stack.metrics(stack.chat.addr).await;
    assert_eq!(metric(&text, "chat_messages_stored_total"), 1);
    assert!(
        text.contains(r#"chat_events_published_total{result="ok",service="chat"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_participants_read_a_conversation() {
    let stack = Stack::start(0).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let (_, te) = stack.user("eve").await;
    stack.send(&ta, "bob", "secret").await;
    let (status, body) = stack.history(&te, "user1=alice&user2=bob").await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = stack
        .get(stack.chat.addr, "/chat/history?user1=alice&user2=bob", None)
        .await;
    assert_eq!(status, 401);
    for q in ["user1=alice", "user2=bob", "", "user1=&user2=bob"] {
        assert_eq!(stack.history(&ta, q).await.0, 400, "{q}");
    }
    // Either participant, in either order of the parameters.
    for (t, q) in [
        (&ta, "user1=alice&user2=bob"),
        (&tb, "user1=alice&user2=bob"),
        (&tb, "user1=bob&user2=alice"),
    ] {
        let (status, body) = stack.history(t, q).await;
        assert_eq!(
            (status, body["data"][0]["content"].as_str()),
            (200, Some("secret"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_both_directions_oldest_first() {
    let stack = Stack::start(0).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let (_, tc) = stack.user("carol").await;
    let mut ids = Vec::new();
    for i in 0..120 {
        let (t, to) = if i % 3 == 0 {
            (&tb, "alice")
        } else {
            (&ta, "bob")
        };
        let (status, body) = stack.send(t, to, &format!("m{i}")).await;
        assert_eq!(status, 201);
        ids.push(body["data"]["_id"].as_str().unwrap().to_owned());
        if i % 10 == 0 {
            stack.send(&tc, "alice", "other conversation").await; // must never show up
        }
    }
    let contents = |body: &serde_json::Value| page_field(body, "content");
    let expect = |r: std::ops::Range<usize>| r.map(|i| format!("m{i}")).collect::<Vec<_>>();

    let (_, latest) = stack.history(&ta, "user1=alice&user2=bob").await;
    assert_eq!(
        contents(&latest),
        expect(70..120),
        "default page: the latest 50, oldest first"
    );
    let (_, page) = stack
        .history(
            &ta,
            &format!("user1=alice&user2=bob&limit=30&before={}", ids[70]),
        )
        .await;
    assert_eq!(contents(&page), expect(40..70));
    let (_, page) = stack
        .history(
            &ta,
            &format!("user1=alice&user2=bob&limit=200&before={}", ids[40]),
        )
        .await;
    assert_eq!(contents(&page), expect(0..40));
    let (_, page) = stack
        .history(&tb, &format!("user1=bob&user2=alice&after={}", ids[100]))
        .await;
    assert_eq!(
        contents(&page),
        expect(101..120),
        "catch-up after a message"
    );
    let (_, page) = stack
        .history(
            &tb,
            &format!("user1=bob&user2=alice&limit=5&after={}", ids[10]),
        )
        .await;
    assert_eq!(contents(&page), expect(11..16));
    let (_, page) = stack
        .history(&tb, &format!("user1=bob&user2=alice&after={}", ids[119]))
        .await;
    assert_eq!(contents(&page), Vec::<String>::new());

    for q in [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=ten",
        "before=xyz",
        "after=123",
        "before=65b9f0c2a1b2c3d4e5f60718&after=65b9f0c2a1b2c3d4e5f60718",
    ] {
        let (status, body) = stack
            .history(&ta, &format!("user1=alice&user2=bob&{q}"))
            .await;
        assert_eq!(status, 400, "{q}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_succeed_while_the_broker_is_unreachable() {
    let stack = Stack::start(0).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let (chat_db, _) = chat_common::testing::mongodb_url_with_fresh_database("e2e_chat_nobroker");
    // Nothing listens on port 1: the publisher can never connect.
    let chat = e2e_tests::spawn_chat_with_broker(
        &chat_db,
        stack.auth.addr,
        &stack.exchange,
        "amqp://127.0.0.1:1/%2f",
    )
    .await;
    let send = |content: &'static str| {
        let stack = &stack;
        let ta = ta.clone();
        async move {
            stack
                .post(
                    chat.addr,
                    "/chat/send",
                    Some(&ta),
                    &json!({ "recipient": "bob", "content": content }),
                )
                .await
        }
    };
    for content in ["one", "two", "three"] {
        let (status, body) = send(content).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = stack.get(chat.addr, "/readyz", None).await;
    assert_eq!(
        (status, body["checks"]["broker"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    let text = stack.metrics(chat.addr).await;
    assert!(
        text.contains(r#"chat_events_published_total{result="failed",service="chat"} 3"#),
        "{text}"
    );
    let (status, history) = stack
        .get(chat.addr, "/chat/history?user1=alice&user2=bob", Some(&tb))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        history["data"].as_array().unwrap().len(),
        3,
        "acknowledged messages are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_are_all_confirmed_and_delivered() {
    let stack = Stack::start(1).await;
    let (_, ta) = stack.user("alice").await;
    let (_, tb) = stack.user("bob").await;
    let mut bob = stack.connect(0, &tb).await;
    let sends = (0..50).map(|i| {
        let (stack, ta) = (&stack, &ta);
        async move { stack.send(ta, "bob", &format!("concurrent {i}")).await.0 }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 50 {
        let frame = bob
            .next_json(std::time::Duration::from_secs(5))
            .await
            .expect("all 50 delivered");
        seen.insert(frame["content"].as_str().unwrap().to_owned());
    }
    let text = stack.metrics(stack.chat.addr).await;
    assert!(
        text.contains(r#"chat_events_published_total{result="ok",service="chat"} 50"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_written_by_the_original_reads_and_pages_across_months() {
    use mongodb::bson::{DateTime, doc, oid::ObjectId};
    let stack = Stack::start(0).await;
    let (_, ta) = stack.user("alice").await;
    stack.user("bob").await;
    // Documents as the original's Mongoose model wrote them, spread over 90 days.
    let messages = stack.messages().await;
    let now = chat_common::time::now_secs();
    let ages = [90 * 86_400, 40 * 86_400, 2 * 86_400, 5 * 3600, 600, 30, 1];
    let mut planted = Vec::new();
    for (i, age) in ages.iter().enumerate() {
        let secs = now - age;
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&u32::try_from(secs).unwrap().to_be_bytes());
        bytes[11] = u8::try_from(i).unwrap() + 1;
        let id = ObjectId::from_bytes(bytes);
        let (sender, recipient) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        messages
            .insert_one(doc! { "_id": id, "sender": sender, "recipient": recipient,
                "content": format!("old {i}"), "timestamp": DateTime::from_millis(i64::try_from(secs).unwrap() * 1000), "__v": 0 })
            .await
            .unwrap();
        planted.push(id.to_hex());
    }
    let contents = |body: &serde_json::Value| page_field(body, "content");
    let (status, all) = stack.history(&ta, "user1=alice&user2=bob").await;
    assert_eq!(status, 200);
    assert_eq!(
        contents(&all),
        (0..7).map(|i| format!("old {i}")).collect::<Vec<_>>()
    );
    assert_eq!(all["data"][0]["_id"], planted[0]);
    assert!(all["data"][0]["timestamp"].as_str().unwrap().ends_with('Z'));
    let (_, latest) = stack.history(&ta, "user1=alice&user2=bob&limit=3").await;
    assert_eq!(contents(&latest), ["old 4", "old 5", "old 6"]);
    let (_, older) = stack
        .history(
            &ta,
            &format!("user1=alice&user2=bob&limit=3&before={}", planted[4]),
        )
        .await;
    assert_eq!(contents(&older), ["old 1", "old 2", "old 3"]);
    let (_, newer) = stack
        .history(
            &ta,
            &format!("user1=alice&user2=bob&limit=2&after={}", planted[0]),
        )
        .await;
    assert_eq!(contents(&newer), ["old 1", "old 2"]);
    let (_, newest) = stack
        .history(&ta, &format!("user1=alice&user2=bob&after={}", planted[3]))
        .await;
    assert_eq!(contents(&newest), ["old 4", "old 5", "old 6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_exact_where_writers_interleave_across_a_second() {
    use mongodb::bson::{DateTime, doc, oid::ObjectId};
    let stack = Stack::start(0).await;
    let (_, ta) = stack.user("alice").await;
    stack.user("bob").await;
    let messages = stack.messages().await;
    // Writers (process part, first counter, count, how many fall in the first second) whose
    // counters run on from one second into the next, one counter wrapping.
    let plant = |second: u64, writers: &'static [(u8, u32, u32, u32)]| {
        let messages = messages.clone();
        async move {
            let second = u32::try_from(second).unwrap();
            let mut ids = Vec::new();
            for &(process, first_counter, count, in_first) in writers {
                for n in 0..count {
                    let counter = first_counter.wrapping_add(n) & 0x00ff_ffff;
                    let secs = second + u32::from(n >= in_first);
                    let mut bytes = [0u8; 12];
                    bytes[..4].copy_from_slice(&secs.to_be_bytes());
                    bytes[4..9].copy_from_slice(&[process; 5]);
                    bytes[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
                    ids.push(ObjectId::from_bytes(bytes));
                }
            }
            for (i, id) in ids.iter().enumerate() {
                let (sender, recipient) = if i % 3 == 0 {
                    ("bob", "alice")
                } else {
                    ("alice", "bob")
                };
                messages
                    .insert_one(doc! { "_id": id, "sender": sender, "recipient": recipient,
                    "content": id.to_hex(), "timestamp": DateTime::now() })
                    .await
                    .unwrap();
            }
            ids
        }
    };
    let now = chat_common::time::now_secs();
    let writers: &'static [(u8, u32, u32, u32)] =
        &[(1, 0x00ff_fff0, 40, 12), (2, 5, 9, 4), (3, 900, 3, 3)];
    // An hour old and half a minute old.
    let mut ids = plant(now - 3600, writers).await;
    ids.extend(plant(now - 30, writers).await);
    let page = |body: &serde_json::Value| page_field(body, "_id");
    let check = |hex: Vec<String>, anchors: Vec<usize>| {
        let (stack, ta) = (&stack, &ta);
        async move {
            for limit in [1, 5, 20, 31, 50] {
                let (status, latest) = stack
                    .history(ta, &format!("user1=alice&user2=bob&limit={limit}"))
                    .await;
                assert_eq!(status, 200);
                let start = hex.len().saturating_sub(limit);
                assert_eq!(page(&latest), hex[start..], "latest {limit}");
                for &anchor in &anchors {
                    let (_, before) = stack
                        .history(
                            ta,
                            &format!("user1=alice&user2=bob&limit={limit}&before={}", hex[anchor]),
                        )
                        .await;
                    assert_eq!(
                        page(&before),
                        hex[anchor.saturating_sub(limit)..anchor],
                        "before {anchor}, limit {limit}"
                    );
                    let (_, after) = stack
                        .history(
                            ta,
                            &format!("user1=alice&user2=bob&limit={limit}&after={}", hex[anchor]),
                        )
                        .await;
                    let end = (anchor + 1 + limit).min(hex.len());
                    assert_eq!(
                        page(&after),
                        hex[anchor + 1..end],
                        "after {anchor}, limit {limit}"
                    );
                }
            }
        }
    };
    let sorted = |ids: &mut Vec<ObjectId>| -> Vec<String> {
        ids.sort();
        ids.iter().map(|id| id.to_hex()).collect()
    };
    let hex = sorted(&mut ids);
    check(hex, vec![3, 11, 12, 20, 35, 49, 51, 63, 70, 90, 103]).await;
    // Newer messages from a writer with a lower process part: ids order by second first.
    ids.extend(plant(now - 10, &[(0, 7, 6, 3)]).await);
    let hex = sorted(&mut ids);
    check(hex, vec![100, 104, 105, 109]).await;
}

/// A message with a fresh id, for the store's own tests.
fn message(sender: &str, recipient: &str, content: &str) -> chat_service::store::Message {
    chat_service::store::Message {
        id: mongodb::bson::oid::ObjectId::new(),
        sender: sender.to_owned(),
        recipient: recipient.to_owned(),
        content: content.to_owned(),
        timestamp_ms: 0,
        idempotency_key: None,
    }
}

type Seeded = Vec<(&'static str, &'static str, mongodb::bson::oid::ObjectId)>;

/// A long two-sided conversation, a one-sided one, and notes to self: 300 messages.
async fn seed_conversations(store: &chat_service::store::MongoMessageStore) -> Seeded {
    use chat_service::store::MessageStore;

    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for i in 0..300 {
        let (sender, recipient) = match i % 5 {
            0 | 1 => ("alice", "bob"),
            2 => ("bob", "alice"),
            3 => ("alice", "carol"),
            _ => ("alice", "alice"),
        };
        let m = message(sender, recipient, &format!("m{i}"));
        ids.push((sender, recipient, m.id));
        batch.push(m);
    }
    store.insert_many(&batch, 0).await.unwrap();
    ids
}

/// A user's catch-up over all their conversations: two queries too (one per index), exact, and
/// a note to oneself once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_catch_up_is_two_queries() {
    use std::sync::atomic::Ordering;

    use chat_service::store::MessageStore;
    use mongodb::bson::oid::ObjectId;

    let (store, commands) = counted_store().await;
    let ids = seed_conversations(&store).await;
    let middle = ids[150].2;
    let mine: Vec<ObjectId> = ids
        .iter()
        .filter(|(s, r, _)| *s == "bob" || *r == "bob")
        .map(|(_, _, id)| *id)
        .collect();
    let alices: Vec<ObjectId> = ids
        .iter()
        .filter(|(s, r, _)| *s == "alice" || *r == "alice")
        .map(|(_, _, id)| *id)
        .collect();
    for (user, all) in [("bob", &mine), ("alice", &alices)] {
        for (after, limit) in [(None, 1000), (Some(middle), 20), (Some(middle), 1000)] {
            let before = commands.load(Ordering::SeqCst);
            let found: Vec<ObjectId> = store
                .for_user(user, after, limit)
                .await
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect();
            assert_eq!(
                commands.load(Ordering::SeqCst) - before,
                2,
                "{user} {after:?}"
            );
            let expected: Vec<ObjectId> = all
                .iter()
                .copied()
                .filter(|id| after.is_none_or(|a| *id > a))
                .take(limit)
                .collect();
            assert_eq!(found, expected, "{user} after {after:?} limit {limit}");
        }
    }
}

/// A message store over its own database whose client counts every command but the inserts
/// (the driver's command monitoring).
async fn counted_store() -> (
    chat_service::store::MongoMessageStore,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::{Arc, atomic::AtomicUsize};

    use chat_common::testing;
    use mongodb::{
        event::{EventHandler, command::CommandEvent},
        options::ClientOptions,
    };

    let commands = Arc::new(AtomicUsize::new(0));
    let mut options = ClientOptions::parse(testing::mongodb_url()).await.unwrap();
    let counter = commands.clone();
    options.command_event_handler = Some(EventHandler::callback(move |event| {
        if let CommandEvent::Started(started) = event
            && started.command_name != "insert"
        {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }));
    let client = mongodb::Client::with_options(options).unwrap();
    let db = client.database(&testing::unique_name("e2e_queries"));
    let store = chat_service::store::MongoMessageStore::with_database(
        db,
        std::time::Duration::from_secs(5),
    );
    store.ensure_indexes().await.unwrap();
    (store, commands)
}

/// A page of history is at most two queries, one per direction (one for a conversation with
/// oneself), whatever the conversation, each answered in one round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_page_is_at_most_two_queries() {
    use std::sync::atomic::Ordering;

    use chat_service::store::{MessageStore, Page};
    use mongodb::bson::oid::ObjectId;

    let (store, commands) = counted_store().await;
    let ids = seed_conversations(&store).await;

    let middle = ids[150].2;
    for (a, b, expected) in [
        ("alice", "bob", 2),
        ("alice", "carol", 2),
        ("alice", "dave", 2),
        ("alice", "alice", 1),
    ] {
        for page in [
            Page::Latest { limit: 50 },
            Page::Latest { limit: 1000 },
            Page::Before {
                id: middle,
                limit: 20,
            },
            Page::After {
                id: middle,
                limit: 20,
            },
            Page::After {
                id: ObjectId::from_bytes([0; 12]),
                limit: 100,
            },
        ] {
            let before = commands.load(Ordering::SeqCst);
            let found = store.conversation(a, b, page).await.unwrap().len();
            let count = commands.load(Ordering::SeqCst) - before;
            assert_eq!(
                count, expected,
                "{a}/{b} {page:?}: {found} messages in {count} queries"
            );
        }
    }
    // And the pages are exact.
    let pair: Vec<ObjectId> = ids
        .iter()
        .filter(|(s, r, _)| matches!((*s, *r), ("alice", "bob") | ("bob", "alice")))
        .map(|(_, _, id)| *id)
        .collect();
    let page = store
        .conversation("bob", "alice", Page::Latest { limit: 7 })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        pair[pair.len() - 7..]
    );
    let at = pair.iter().position(|id| *id > middle).unwrap();
    let page = store
        .conversation(
            "alice",
            "bob",
            Page::After {
                id: middle,
                limit: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        pair[at..at + 5]
    );
}

fn stored(sender: &str, key: Option<&str>, content: &str) -> chat_service::store::Message {
    chat_service::store::Message {
        timestamp_ms: chat_common::time::now_millis(),
        idempotency_key: key.map(str::to_owned),
        ..message(sender, "bob", content)
    }
}

/// On the MongoDB wire: one batch holding a key twice, and a key already stored, store each key
/// once and say which messages were refused; the others are written.
#[tokio::test]
async fn idempotency_keys_are_unique_per_sender_within_and_across_batches() {
    use chat_service::store::{Inserted, MessageStore};

    let (store, _) = counted_store().await;
    let first = [stored("alice", Some("k1"), "one")];
    assert_eq!(
        store.insert_many(&first, 0).await.unwrap(),
        [Inserted::Stored]
    );
    let batch = [
        stored("alice", Some("k1"), "again"),
        stored("alice", Some("k2"), "two"),
        stored("alice", Some("k2"), "two, again"),
        stored("carol", Some("k1"), "carol's own k1"),
        stored("alice", None, "no key"),
        stored("alice", None, "no key either"),
    ];
    assert_eq!(
        store.insert_many(&batch, 0).await.unwrap(),
        [
            Inserted::DuplicateKey,
            Inserted::Stored,
            Inserted::DuplicateKey,
            Inserted::Stored,
            Inserted::Stored,
            Inserted::Stored,
        ]
    );
    let single = [stored("alice", Some("k2"), "single")];
    assert_eq!(
        store.insert_many(&single, 0).await.unwrap(),
        [Inserted::DuplicateKey]
    );
    let found = store
        .by_idempotency_key("alice", "k2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.content, "two");
    assert_eq!(found.idempotency_key.as_deref(), Some("k2"));
    assert!(
        store
            .by_idempotency_key("bob", "k1")
            .await
            .unwrap()
            .is_none()
    );
}

/// Replicas sweeping the outbox together: every unpublished message is claimed by exactly one,
/// and a lease still held is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sweeping_together_claim_each_message_once() {
    use std::collections::BTreeSet;

    use chat_common::time::now_millis;
    use chat_service::store::MessageStore;

    let (one, _) = counted_store().await;
    let two = std::sync::Arc::new(one.same_database());
    let one = std::sync::Arc::new(one);
    let left: Vec<_> = (0..120)
        .map(|i| stored("alice", None, &format!("m{i}")))
        .collect();
    one.insert_many(&left, now_millis() - 1).await.unwrap();
    let held = [stored("alice", None, "in flight")];
    let held_until = now_millis() + 60_000;
    one.insert_many(&held, held_until).await.unwrap();

    let sweep = |store: std::sync::Arc<chat_service::store::MongoMessageStore>| async move {
        let mut mine = Vec::new();
        loop {
            let now = now_millis();
            let claimed = store
                .claim_unpublished(now, now + 60_000, 16)
                .await
                .unwrap();
            if claimed.is_empty() {
                return mine;
            }
            mine.extend(claimed.into_iter().map(|m| m.id));
        }
    };
    let (a, b) = tokio::join!(sweep(one.clone()), sweep(two.clone()));
    let a_set: BTreeSet<_> = a.iter().collect();
    let b_set: BTreeSet<_> = b.iter().collect();
    assert!(a_set.is_disjoint(&b_set), "a message claimed twice");
    assert_eq!(a.len() + b.len(), left.len(), "every message claimed");
    assert!(!a.contains(&held[0].id) && !b.contains(&held[0].id));
    // Once its lease runs out, it is due.
    let after = held_until + 1;
    let late = one
        .claim_unpublished(after, after + 60_000, 16)
        .await
        .unwrap();
    assert_eq!(late.iter().map(|m| m.id).collect::<Vec<_>>(), [held[0].id]);

    // Cleared, a message is never claimed again.
    let all: Vec<_> = left.iter().chain(&held).map(|m| m.id).collect();
    one.mark_published(&all).await.unwrap();
    let far = now_millis() + 3_600_000;
    assert!(
        one.claim_unpublished(far, far, 1000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The conversation list and read positions on MongoDB (the same scenario as chat-service's
/// own test on the embedded store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_list_the_most_recent_first_with_unread_counts_that_reads_move() {
    let stack = Stack::start(0).await;
    chat_common::testing::conversations_scenario(&stack.http, stack.auth.addr, stack.chat.addr)
        .await;
}

/// Alice and `peers` others: each peer sends her three messages, she answers once, in turns.
async fn seed_peers(store: &chat_service::store::MongoMessageStore, peers: usize) -> Vec<String> {
    use chat_service::store::MessageStore;

    let names: Vec<String> = (0..peers).map(|i| format!("peer{i:03}")).collect();
    let mut batch = Vec::new();
    for round in 0..4 {
        for name in &names {
            let (sender, recipient) = if round == 3 {
                ("alice", name.as_str())
            } else {
                (name.as_str(), "alice")
            };
            batch.push(message(sender, recipient, &format!("{round}")));
        }
    }
    store.insert_many(&batch, 0).await.unwrap();
    names
}

/// A page of a user's conversations is three queries sent together once its unread counts are
/// known (the summaries, their last messages, the peers' read positions), whatever the
/// history; a conversation whose unread count changed is counted once (a count and a write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_page_is_three_queries_once_counted() {
    use std::sync::atomic::Ordering;

    use chat_service::store::{MessageStore, ReadMark};

    let (store, commands) = counted_store().await;
    let names = seed_peers(&store, 30).await;
    let page = |before| {
        let store = &store;
        let commands = &commands;
        async move {
            let at = commands.load(Ordering::SeqCst);
            let page = store.conversations("alice", before, 10).await.unwrap();
            (page, commands.load(Ordering::SeqCst) - at)
        }
    };
    let (first, queries) = page(None).await;
    // The peers answered last in the order they were written: the newest first.
    let expected: Vec<&String> = names.iter().rev().take(10).collect();
    assert_eq!(
        first.page.iter().map(|c| &c.peer).collect::<Vec<_>>(),
        expected
    );
    assert!(
        first
            .page
            .iter()
            .all(|c| c.unread == 3 && c.last.sender == "alice")
    );
    assert_eq!(
        queries,
        3 + 2 * 10,
        "first look: every count computed and kept"
    );
    let (again, queries) = page(None).await;
    assert_eq!(again, first);
    assert_eq!(queries, 3, "counts kept");
    let (second, _) = page(first.next).await;
    assert_eq!(second.page[0].peer, names[names.len() - 11]);

    // Read: no count needed (nothing unread); a new message: one count.
    let peer = &first.page[0].peer;
    let up_to = first.page[0].last.id;
    assert_eq!(
        store.mark_read("alice", peer, up_to).await.unwrap(),
        ReadMark::Moved
    );
    assert_eq!(
        store.mark_read("alice", peer, up_to).await.unwrap(),
        ReadMark::Unchanged
    );
    let (read, queries) = page(None).await;
    assert_eq!((read.page[0].unread, queries), (0, 3));
    let other = &first.page[1].peer;
    store
        .insert_many(&[message(other, "alice", "again")], 0)
        .await
        .unwrap();
    let (after, queries) = page(None).await;
    assert_eq!((&after.page[0].peer, after.page[0].unread), (other, 4));
    assert_eq!(queries, 3 + 2);
    // A message whose id is older than the newest (ids are assigned when a send arrives, and
    // batches commit concurrently) still counts.
    let late = chat_service::store::Message {
        id: mongodb::bson::oid::ObjectId::from_bytes([0; 12]),
        ..message(other, "alice", "late")
    };
    store.insert_many(&[late], 0).await.unwrap();
    let (after, queries) = page(None).await;
    assert_eq!((&after.page[0].peer, after.page[0].unread), (other, 5));
    assert_eq!(queries, 3 + 2);
}

/// A database the original system wrote (no summaries) gets its conversations from the
/// backfill: what was stored before this version first served it counts as read, a message sent
/// since does not; a second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_lists_conversations_the_original_system_stored() {
    use chat_common::testing;
    use chat_service::store::{Inserted, MessageStore};
    use mongodb::bson::{DateTime, doc, oid::ObjectId};

    let client = mongodb::Client::with_uri_str(testing::mongodb_url())
        .await
        .unwrap();
    let db = client.database(&testing::unique_name("e2e_backfill"));
    let store = chat_service::store::MongoMessageStore::with_database(
        db.clone(),
        std::time::Duration::from_secs(5),
    );
    let plant = [
        ("alice", "bob"),
        ("bob", "alice"),
        ("alice", "bob"),
        ("carol", "alice"),
        ("alice", "alice"),
    ];
    let mut ids = Vec::new();
    for (sender, recipient) in plant {
        let id = ObjectId::new();
        ids.push(id);
        db.collection::<mongodb::bson::Document>("messages")
            .insert_one(doc! { "_id": id, "sender": sender, "recipient": recipient,
            "content": "old", "timestamp": DateTime::now() })
            .await
            .unwrap();
    }
    let new = |content: &str| message("carol", "alice", content);
    // A send before the indexes are made creates the summaries' unique index itself.
    let early = new("before the indexes");
    assert_eq!(
        store
            .insert_many(std::slice::from_ref(&early), 0)
            .await
            .unwrap(),
        [Inserted::Stored]
    );
    // This version starts serving: a message from now on is unread.
    store.ensure_indexes().await.unwrap();
    let late = new("since this version");
    assert_eq!(
        store
            .insert_many(std::slice::from_ref(&late), 0)
            .await
            .unwrap(),
        [Inserted::Stored]
    );
    assert_eq!(
        store
            .conversations("alice", None, 20)
            .await
            .unwrap()
            .page
            .len(),
        1
    );
    let report = store.backfill_conversations().await.unwrap();
    assert_eq!((report.messages, report.summaries), (7, 5));
    let list = |user: &'static str| {
        let store = &store;
        async move {
            store
                .conversations(user, None, 20)
                .await
                .unwrap()
                .page
                .into_iter()
                .map(|c| (c.peer, c.last.id, c.unread))
                .collect::<Vec<_>>()
        }
    };
    // `early` was stored by this code before it first served: as the original's, it is read.
    let alices = vec![
        ("carol".to_owned(), late.id, 1),
        ("alice".to_owned(), ids[4], 0),
        ("bob".to_owned(), ids[2], 0),
    ];
    assert_eq!(list("alice").await, alices);
    assert_eq!(list("bob").await, [("alice".to_owned(), ids[2], 0)]);
    assert_eq!(store.backfill_conversations().await.unwrap(), report);
    assert_eq!(list("alice").await, alices);
}
