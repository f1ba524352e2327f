//! A socket's own rate limits (the frames it sends, its typing notices): a token bucket held by
//! the socket's task, with no lock and no table (the keyed limiter of `chat_common::limiter`
//! serves many callers at once; a socket's task is its bucket's only user).

use std::time::Instant;

/// `burst` tokens, refilled at `per_sec`; full until first used.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec,
            burst,
            tokens: burst,
            at: None,
        }
    }

    /// Takes a token at `now`; `false` when there is none left.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let refill = now.duration_since(at).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.at = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}
