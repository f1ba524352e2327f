//! Failed-login throttling per account: after `max_failures` failures within `window`, further
//! attempts are refused (429 with `Retry-After`) until the window that started with the first
//! failure has passed. State is per replica and bounded in size.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Above this many tracked accounts, expired windows are swept on the next failure.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    accounts: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        self.accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a login attempt for `username` before its password is checked (so parallel
    /// attempts cannot slip past the limit); `Err(wait)` when the account is locked out for
    /// `wait` more. A successful login then clears the count ([`Self::succeeded`]); an attempt
    /// that could not be checked (server busy) is given back ([`Self::refund`]).
    pub fn begin(&self, username: &str) -> Result<(), Duration> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut accounts = self.lock();
        if accounts.len() > SWEEP_ABOVE {
            let window = self.window;
            accounts.retain(|_, w| now.duration_since(w.started) < window);
        }
        let entry = accounts.entry(username.to_owned()).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(entry.started) >= self.window {
            *entry = Window {
                started: now,
                failures: 0,
            };
        }
        if entry.failures >= self.max_failures {
            let wait = self
                .window
                .saturating_sub(now.duration_since(entry.started))
                .max(Duration::from_millis(1));
            return Err(wait);
        }
        entry.failures += 1;
        Ok(())
    }

    pub fn succeeded(&self, username: &str) {
        self.lock().remove(username);
    }

    pub fn refund(&self, username: &str) {
        if let Some(w) = self.lock().get_mut(username) {
            w.failures = w.failures.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_attempts_and_unlocks_after_window() {
        let t = LoginThrottle::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert!(t.begin("alice").is_ok());
        }
        let wait = t.begin("alice").unwrap_err();
        assert!(wait <= Duration::from_millis(200));
        assert!(t.begin("bob").is_ok(), "other accounts are not affected");
        std::thread::sleep(Duration::from_millis(220));
        assert!(t.begin("alice").is_ok(), "a new window starts from zero");
    }

    #[test]
    fn success_clears_and_refund_gives_back() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        assert!(t.begin("alice").is_ok());
        t.succeeded("alice");
        assert!(t.begin("alice").is_ok());
        t.refund("alice");
        assert!(t.begin("alice").is_ok());
        assert!(t.begin("alice").is_ok());
        assert!(t.begin("alice").is_err());
    }
}
