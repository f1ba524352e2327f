//! Signals: the `read` and `typing` frames, which a socket receives only if it asked for them at
//! connect (`&events=read,typing`), and the one frame a client sends, `{"type":"typing","to"}`.
//!
//! A typing frame is checked (rate, a shared conversation), then published on the same exchange
//! as messages, as a `typing` event, so that the addressee's sockets on every replica get it. It
//! is never stored: a typing notice that finds no open socket is meant to be lost.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chat_common::{
    bus::LocalBus,
    event::{AnyEvent, TYPING, Typing},
};
use serde::Deserialize;

use crate::{bucket::TokenBucket, catchup::ChatClient};

/// The signals a socket asked for. Message frames go to every socket, whatever it asked: a client
/// written for the original system, which asks for nothing, sees only those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events(u8);

impl Events {
    pub const NONE: Self = Self(0);
    pub const READ: Self = Self(1);
    pub const TYPING: Self = Self(2);

    /// `read`, `typing`, or both, comma-separated (the `events` query parameter).
    pub fn parse(list: &str) -> Result<Self, &'static str> {
        let mut events = Self::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            events.0 |= match name {
                "read" => Self::READ.0,
                "typing" => Self::TYPING.0,
                _ => return Err("events must list read and/or typing, comma-separated"),
            };
        }
        Ok(events)
    }

    pub fn wants(self, signal: Self) -> bool {
        self.0 & signal.0 != 0
    }
}

/// Where typing events are published: the exchange the replica consumes, or the in-process bus.
#[derive(Clone)]
pub struct SignalBus(Arc<Target>);

enum Target {
    Local(LocalBus),
    #[cfg(feature = "amqp")]
    Amqp {
        exchange: String,
        /// A channel on the consumer's connection, while it is up.
        channel: std::sync::Mutex<Option<lapin::Channel>>,
    },
}

impl SignalBus {
    pub fn local(bus: LocalBus) -> Self {
        Self(Arc::new(Target::Local(bus)))
    }

    #[cfg(feature = "amqp")]
    pub fn amqp(exchange: &str) -> Self {
        Self(Arc::new(Target::Amqp {
            exchange: exchange.to_owned(),
            channel: std::sync::Mutex::new(None),
        }))
    }

    /// The channel publishes go to (set by the consumer once connected, `None` once it is lost).
    #[cfg(feature = "amqp")]
    pub fn set_channel(&self, new: Option<lapin::Channel>) {
        if let Target::Amqp { channel, .. } = &*self.0 {
            *channel
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        }
    }

    /// Publishes `payload` without waiting: a signal is worth nothing late, and is not retried.
    /// Returns `false` when there is nowhere to publish (the broker is unreachable).
    pub fn publish(&self, payload: Vec<u8>) -> bool {
        match &*self.0 {
            Target::Local(bus) => {
                let bus = bus.clone();
                tokio::spawn(async move { bus.publish(payload.into()).await });
                true
            }
            #[cfg(feature = "amqp")]
            Target::Amqp { exchange, channel } => {
                let Some(channel) = channel
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                else {
                    return false;
                };
                let exchange = exchange.clone();
                tokio::spawn(async move {
                    let sent =
                        chat_common::amqp::publish_event(&channel, &exchange, &payload).await;
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "a typing event was not published");
                    }
                });
                true
            }
        }
    }
}

/// A frame from a client that the service acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Typing { to: String },
}

/// Parses a client's text frame; the error is the message of the `error` frame that answers it
/// (never an echo of what the client sent).
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, &'static str> {
    #[derive(Deserialize)]
    struct Incoming {
        #[serde(rename = "type")]
        kind: Option<String>,
        to: Option<serde_json::Value>,
    }
    let incoming: Incoming = serde_json::from_str(text).map_err(
        |_| r#"Frames must be JSON objects, such as {"type":"typing","to":"<username>"}"#,
    )?;
    match incoming.kind.as_deref() {
        None => Err("A frame needs a type"),
        Some(TYPING) => match incoming.to {
            // Any name chat-service accepts (the original's users may have long ones).
            Some(serde_json::Value::String(to))
                if (1..=chat_common::http::MAX_NAME_BYTES).contains(&to.len()) =>
            {
                Ok(ClientFrame::Typing { to })
            }
            _ => Err(r#"A typing frame needs "to": a username"#),
        },
        Some(_) => Err("Unknown frame type: clients send only typing"),
    }
}

/// What became of a client's typing frame (`ws_typing_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingOutcome {
    Forwarded,
    /// Beyond the socket's rate (one a second, bursts of three).
    RateLimited,
    /// The two users share no conversation (or it is the sender themself).
    NoConversation,
    /// Whether they share one could not be read, or the broker is unreachable.
    Unavailable,
}

impl TypingOutcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::RateLimited => "rate_limited",
            Self::NoConversation => "no_conversation",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A socket's typing state: its rate, and the peers it was checked against (the socket makes it
/// at its first typing frame: most sockets never send one).
pub struct TypingGate {
    rate: TokenBucket,
    /// Peer, whether they share a conversation with the user, and until when that holds.
    peers: Vec<(Box<str>, bool, Instant)>,
}

impl Default for TypingGate {
    fn default() -> Self {
        Self {
            rate: TokenBucket::new(TYPING_PER_SEC, TYPING_BURST),
            peers: Vec::new(),
        }
    }
}

/// Typing frames forwarded per second per socket, and the burst allowed: a client sends one
/// every two or three seconds while its user types (the web client: one per 2 s).
const TYPING_PER_SEC: f64 = 1.0;
const TYPING_BURST: f64 = 3.0;
/// How long a check's answer is kept: a shared conversation never ends, so a yes is kept long;
/// a no is kept briefly (the first message makes it a yes).
const SHARED_FOR: Duration = Duration::from_secs(600);
const NOT_SHARED_FOR: Duration = Duration::from_secs(10);
/// Peers remembered per socket.
const PEERS: usize = 16;
/// The longest a check may hold the socket's task (its frames wait meanwhile).
const CHECK_WITHIN: Duration = Duration::from_secs(1);

impl TypingGate {
    fn take(&mut self, now: Instant) -> bool {
        self.rate.take(now)
    }

    /// Whether `me` and `to` share a conversation: remembered, or asked of chat-service with
    /// `token` (the user's own: chat-service answers only for its participants).
    async fn shared(
        &mut self,
        chat: &ChatClient,
        token: &str,
        me: &str,
        to: &str,
        now: Instant,
    ) -> Option<bool> {
        self.peers.retain(|(_, _, until)| *until > now);
        if let Some((_, shared, _)) = self.peers.iter().find(|(p, _, _)| &**p == to) {
            return Some(*shared);
        }
        let shared = chat.shares_conversation(token, me, to, CHECK_WITHIN).await;
        match shared {
            Ok(shared) => {
                if self.peers.len() == PEERS {
                    self.peers.remove(0);
                }
                let keep = if shared { SHARED_FOR } else { NOT_SHARED_FOR };
                self.peers.push((to.into(), shared, now + keep));
                Some(shared)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot check a typing frame's conversation");
                None
            }
        }
    }

    /// Checks `me`'s typing frame to `to` and publishes it if it passes.
    pub async fn typing(
        &mut self,
        chat: &ChatClient,
        bus: &SignalBus,
        token: &str,
        me: &str,
        to: &str,
    ) -> TypingOutcome {
        let now = Instant::now();
        if to == me {
            return TypingOutcome::NoConversation;
        }
        if !self.take(now) {
            return TypingOutcome::RateLimited;
        }
        match self.shared(chat, token, me, to, now).await {
            None => return TypingOutcome::Unavailable,
            Some(false) => return TypingOutcome::NoConversation,
            Some(true) => {}
        }
        let event = AnyEvent::Typing(Typing {
            from: me.to_owned(),
            to: to.to_owned(),
        });
        if bus.publish(event.to_bytes()) {
            TypingOutcome::Forwarded
        } else {
            TypingOutcome::Unavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_either_or_both_and_refuse_the_rest() {
        assert_eq!(Events::parse(""), Ok(Events::NONE));
        let both = Events::parse("read,typing").unwrap();
        assert!(both.wants(Events::READ) && both.wants(Events::TYPING));
        let read = Events::parse("read").unwrap();
        assert!(read.wants(Events::READ) && !read.wants(Events::TYPING));
        assert!(Events::parse(" typing , ").unwrap().wants(Events::TYPING));
        assert!(Events::parse("read,new_message").is_err());
    }

    #[test]
    fn client_frames_are_typing_or_an_error_message() {
        assert_eq!(
            parse_client_frame(r#"{"type":"typing","to":"bob"}"#),
            Ok(ClientFrame::Typing { to: "bob".into() })
        );
        // Any name chat-service takes, however long, and none longer.
        let longest = "b".repeat(chat_common::http::MAX_NAME_BYTES);
        assert_eq!(
            parse_client_frame(&format!(r#"{{"type":"typing","to":"{longest}"}}"#)),
            Ok(ClientFrame::Typing { to: longest })
        );
        let too_long = format!(
            r#"{{"type":"typing","to":"{}"}}"#,
            "b".repeat(chat_common::http::MAX_NAME_BYTES + 1)
        );
        assert!(parse_client_frame(&too_long).is_err());
        for (frame, error) in [
            ("hello", "Frames must be JSON objects"),
            ("[1]", "Frames must be JSON objects"),
            (r#"{"to":"bob"}"#, "A frame needs a type"),
            (r#"{"type":"send","to":"bob"}"#, "Unknown frame type"),
            (r#"{"type":"typing"}"#, "A typing frame needs"),
            (r#"{"type":"typing","to":7}"#, "A typing frame needs"),
            (r#"{"type":"typing","to":""}"#, "A typing frame needs"),
        ] {
            let got = parse_client_frame(frame).unwrap_err();
            assert!(got.starts_with(error), "{frame}: {got}");
        }
    }

    #[test]
    fn typing_is_limited_to_a_burst_of_three_then_one_a_second() {
        let mut gate = TypingGate::default();
        let t0 = Instant::now();
        assert!((0..3).all(|_| gate.take(t0)));
        assert!(!gate.take(t0));
        assert!(!gate.take(t0 + Duration::from_millis(500)));
        assert!(gate.take(t0 + Duration::from_millis(1100)));
        assert!(!gate.take(t0 + Duration::from_millis(1200)));
    }
}
