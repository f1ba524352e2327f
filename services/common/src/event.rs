//! The `new_message` event chat-service publishes to the fanout exchange and websocket-service
//! consumes, and the message as the HTTP API renders it. Field names are the original system's.

use serde::{Deserialize, Serialize};

/// Event type of a stored message.
pub const NEW_MESSAGE: &str = "new_message";

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

#[cfg(test)]
mod tests {
    use super::*;

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
