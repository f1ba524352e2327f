//! Catching a socket up from the store: what a client missed while it was away (it reconnects
//! with `?last_id=`) or while this replica's event queue was gone.
//!
//! Message ids (ObjectIds) are assigned when a send arrives, not when it is stored or
//! published: with group commit and several chat-service replicas, a message can become visible
//! after one with a higher id. So a catch-up reads from a margin (`RESUME_MARGIN`, default 5 s)
//! before its starting id, through chat-service's `GET /chat/messages?after=` with the user's own
//! token, 100 messages a page, oldest first; the socket drops the ids it already sent
//! ([`RecentIds`]) and the one the client named.

use std::{collections::VecDeque, time::Duration};

use chat_common::event::MessageView;
use serde::Deserialize;

/// A message's `_id`: the 12 bytes of its ObjectId (the first 4 are its creation time in
/// seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[must_use]
pub struct MessageId([u8; 12]);

impl MessageId {
    pub fn from_bytes(bytes: [u8; 12]) -> Self {
        Self(bytes)
    }

    /// From its 24 hex digits.
    pub fn parse(hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != 24 {
            return None;
        }
        let digit = |c: u8| {
            char::from(c)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        };
        let mut bytes = [0u8; 12];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = digit(hex[2 * i])? << 4 | digit(hex[2 * i + 1])?;
        }
        Some(Self(bytes))
    }

    /// The smallest id created at `secs` (seconds since the epoch).
    pub fn at_secs(secs: u64) -> Self {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&u32::try_from(secs).unwrap_or(u32::MAX).to_be_bytes());
        Self(bytes)
    }

    pub fn secs(self) -> u64 {
        u64::from(u32::from_be_bytes([
            self.0[0], self.0[1], self.0[2], self.0[3],
        ]))
    }

    /// Where a catch-up from this id starts: `margin` earlier.
    pub fn minus(self, margin: Duration) -> Self {
        Self::at_secs(self.secs().saturating_sub(margin.as_secs().max(1)))
    }

    pub fn to_hex(self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(24), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
    }
}

/// The ids a socket sent last, so that a message reaching it twice (live and by catch-up, or
/// republished) is written once. Empty and unallocated until the first frame: idle sockets,
/// the many, pay nothing for it.
#[derive(Debug, Default)]
pub struct RecentIds {
    ids: VecDeque<MessageId>,
}

impl RecentIds {
    /// 512 ids, 6 KiB once full (a busy socket only): a repeat comes seconds after the first
    /// frame (a republish after its lease, a resume's margin), and a socket getting 20 messages
    /// a second still remembers the last 25 s.
    pub const CAPACITY: usize = 512;

    pub fn contains(&self, id: MessageId) -> bool {
        self.ids.contains(&id)
    }

    /// Remembers `id`; `false` if it was already there (do not send it again).
    pub fn insert(&mut self, id: MessageId) -> bool {
        if self.contains(id) {
            return false;
        }
        if self.ids.len() == Self::CAPACITY {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
        true
    }
}

/// Messages per catch-up request.
pub const PAGE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("chat-service unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("chat-service answered {0}")]
    Status(reqwest::StatusCode),
}

/// chat-service's catch-up read, called with each user's own token. Every socket's task holds
/// a clone: the URLs are shared, not copied.
#[derive(Clone, Debug)]
pub struct ChatClient {
    http: reqwest::Client,
    urls: std::sync::Arc<Urls>,
}

#[derive(Debug)]
struct Urls {
    messages: String,
    history: String,
}

#[derive(Deserialize)]
struct Page {
    data: Vec<MessageView>,
}

impl ChatClient {
    /// `base`: chat-service's URL (`CHAT_SERVICE_URL`); each call is bounded by `timeout`.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()?,
            urls: std::sync::Arc::new(Urls {
                messages: format!("{base}/chat/messages"),
                history: format!("{base}/chat/history"),
            }),
        })
    }

    /// The user's oldest [`PAGE`] messages newer than `after`, oldest first.
    pub async fn messages_after(
        &self,
        token: &str,
        after: MessageId,
    ) -> Result<Vec<MessageView>, CatchUpError> {
        Self::page(
            self.http
                .get(&self.urls.messages)
                .bearer_auth(token)
                .query(&[("after", after.to_hex()), ("limit", PAGE.to_string())]),
        )
        .await
    }

    /// Whether `me` and `peer` have exchanged a message: the newest message of their
    /// conversation, read with `me`'s token, within `timeout`. A refusal (4xx: the token expired,
    /// a bad username) is a no; chat-service failing is an error.
    pub async fn shares_conversation(
        &self,
        token: &str,
        me: &str,
        peer: &str,
        timeout: Duration,
    ) -> Result<bool, CatchUpError> {
        let newest = Self::page(
            self.http
                .get(&self.urls.history)
                .bearer_auth(token)
                .query(&[("user1", me), ("user2", peer), ("limit", "1")])
                .timeout(timeout),
        )
        .await;
        match newest {
            Ok(page) => Ok(!page.is_empty()),
            Err(CatchUpError::Status(status)) if status.is_client_error() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The messages of the page `request` asks chat-service for.
    async fn page(request: reqwest::RequestBuilder) -> Result<Vec<MessageView>, CatchUpError> {
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(CatchUpError::Status(response.status()));
        }
        Ok(response.json::<Page>().await?.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_order_and_step_back_by_their_time() {
        let id = MessageId::parse("65b9f0c2a1b2c3d4e5f60718").unwrap();
        assert_eq!(id.to_hex(), "65b9f0c2a1b2c3d4e5f60718");
        assert_eq!(id.secs(), 0x65b9_f0c2);
        let back = id.minus(Duration::from_secs(5));
        assert_eq!(back.to_hex(), "65b9f0bd0000000000000000");
        assert!(back < id);
        for bad in [
            "",
            "65b9f0c2a1b2c3d4e5f6071",
            "65b9f0c2a1b2c3d4e5f6071g",
            "é5b9f0c2a1b2c3d4e5f6071",
        ] {
            assert!(MessageId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn recent_ids_refuse_a_repeat_and_forget_the_oldest() {
        let mut recent = RecentIds::default();
        let id = |n: usize| MessageId::at_secs(n as u64);
        assert!(recent.insert(id(0)));
        assert!(!recent.insert(id(0)));
        for n in 1..=RecentIds::CAPACITY {
            assert!(recent.insert(id(n)));
        }
        assert!(!recent.contains(id(0)), "the oldest is forgotten");
        assert!(recent.contains(id(RecentIds::CAPACITY)));
    }
}
