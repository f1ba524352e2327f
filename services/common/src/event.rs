//! The events on the fanout exchange and the frames websocket-service pushes, and the message as
//! the HTTP API renders it. Field names of `new_message` are the original system's.
//!
//! Every event is `{"type": ..., "data": {...}}`; replicas route by `type`:
//! - `new_message` (chat-service, one per stored message): to the recipient's and the sender's
//!   sockets, every socket;
//! - `read` (chat-service, `POST /chat/read`): to the reader's and the peer's sockets that asked
//!   for `read` events;
//! - `typing` (websocket-service, from a client's frame; never stored): to the addressee's sockets
//!   that asked for `typing` events.

use serde::{Deserialize, Serialize};

/// Event type of a stored message.
pub const NEW_MESSAGE: &str = "new_message";
/// Event type of a read receipt.
pub const READ: &str = "read";
/// Event type of a typing notice.
pub const TYPING: &str = "typing";

/// `reader` has read their conversation with `peer` up to the message `upTo` (an `_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReceipt {
    pub reader: String,
    pub peer: String,
    #[serde(rename = "upTo")]
    pub up_to: String,
}

/// `from` is typing to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    pub from: String,
    pub to: String,
}

/// Any event on the exchange, routed by its `type` (`{"type": ..., "data": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AnyEvent {
    #[serde(rename = "new_message")]
    NewMessage(MessageView),
    #[serde(rename = "read")]
    Read(ReadReceipt),
    #[serde(rename = "typing")]
    Typing(Typing),
}

impl AnyEvent {
    /// The JSON bytes published to the exchange.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serialises")
    }
}

/// A stored chat message as JSON: `_id` a hex ObjectId, `timestamp` RFC 3339 UTC with
/// milliseconds (`2025-01-31T12:00:00.000Z`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    #[serde(rename = "_id")]
    pub id: String,
    pub sender: String,
    pub recipient: String,
    pub content: String,
    pub timestamp: String,
}

/// `{"type": "new_message", "data": {...}}`, the exchange payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: MessageView,
}

impl Event {
    pub fn new_message(data: MessageView) -> Self {
        Self {
            kind: NEW_MESSAGE.to_owned(),
            data,
        }
    }

    /// The JSON bytes published to the exchange.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serialises")
    }
}

/// The frame pushed to a recipient's sockets: the original's `{sender, content, timestamp}` plus
/// `type`, `_id` and `recipient`.
#[derive(Debug, Clone, Serialize)]
pub struct Frame<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(rename = "_id")]
    pub id: &'a str,
    pub sender: &'a str,
    pub recipient: &'a str,
    pub content: &'a str,
    pub timestamp: &'a str,
}

impl<'a> From<&'a MessageView> for Frame<'a> {
    fn from(m: &'a MessageView) -> Self {
        Self {
            kind: NEW_MESSAGE,
            id: &m.id,
            sender: &m.sender,
            recipient: &m.recipient,
            content: &m.content,
            timestamp: &m.timestamp,
        }
    }
}

/// The frame of a read receipt: `{"type":"read","reader","peer","upTo"}`.
pub fn read_frame(r: &ReadReceipt) -> String {
    #[derive(Serialize)]
    struct ReadFrame<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(flatten)]
        receipt: &'a ReadReceipt,
    }
    serde_json::to_string(&ReadFrame {
        kind: READ,
        receipt: r,
    })
    .expect("a frame always serialises")
}

/// The frame of a typing notice: `{"type":"typing","from"}`.
pub fn typing_frame(t: &Typing) -> String {
    #[derive(Serialize)]
    struct TypingFrame<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        from: &'a str,
    }
    serde_json::to_string(&TypingFrame {
        kind: TYPING,
        from: &t.from,
    })
    .expect("a frame always serialises")
}

/// The frame answering a client frame the service cannot act on: `{"type":"error","message"}`.
pub fn error_frame(message: &str) -> String {
    serde_json::json!({ "type": "error", "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_routed_by_their_type() {
        let read = ReadReceipt {
            reader: "bob".into(),
            peer: "alice".into(),
            up_to: "65b9f0c2a1b2c3d4e5f60718".into(),
        };
        let bytes = AnyEvent::Read(read.clone()).to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "read", "data": {"reader": "bob", "peer": "alice",
                "upTo": "65b9f0c2a1b2c3d4e5f60718"}})
        );
        assert_eq!(
            serde_json::from_slice::<AnyEvent>(&bytes).unwrap(),
            AnyEvent::Read(read.clone())
        );
        let frame: serde_json::Value = serde_json::from_str(&read_frame(&read)).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type": "read", "reader": "bob", "peer": "alice",
                "upTo": "65b9f0c2a1b2c3d4e5f60718"})
        );
        let typing = Typing {
            from: "bob".into(),
            to: "alice".into(),
        };
        assert_eq!(
            serde_json::from_slice::<AnyEvent>(&AnyEvent::Typing(typing.clone()).to_bytes())
                .unwrap(),
            AnyEvent::Typing(typing.clone())
        );
        assert_eq!(typing_frame(&typing), r#"{"type":"typing","from":"bob"}"#);
        assert!(serde_json::from_slice::<AnyEvent>(br#"{"type":"other","data":{}}"#).is_err());
    }

    #[test]
    fn event_wire_shape_matches_the_original() {
        let event = Event::new_message(MessageView {
            id: "65b9f0c2a1b2c3d4e5f60718".into(),
            sender: "alice".into(),
            recipient: "bob".into(),
            content: "hi".into(),
            timestamp: "2025-01-31T12:00:00.000Z".into(),
        });
        let v: serde_json::Value = serde_json::from_slice(&event.to_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "new_message", "data": {
                "_id": "65b9f0c2a1b2c3d4e5f60718", "sender": "alice", "recipient": "bob",
                "content": "hi", "timestamp": "2025-01-31T12:00:00.000Z"}})
        );
        let frame = serde_json::to_value(Frame::from(&event.data)).unwrap();
        assert_eq!(frame["type"], "new_message");
        assert_eq!(frame["sender"], "alice");
        assert_eq!(frame["timestamp"], "2025-01-31T12:00:00.000Z");
    }
}
