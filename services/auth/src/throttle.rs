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

    /// `Err(wait)` when the account is locked out for `wait` more.
    pub fn check(&self, username: &str) -> Result<(), Duration> {
        if self.max_failures == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let accounts = self.lock();
        match accounts.get(username) {
            Some(w) if w.failures >= self.max_failures => {
                match self.window.checked_sub(now.duration_since(w.started)) {
                    Some(wait) if !wait.is_zero() => Err(wait),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, username: &str) {
        if self.max_failures == 0 {
            return;
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
        entry.failures += 1;
    }

    pub fn record_success(&self, username: &str) {
        self.lock().remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_and_unlocks_after_window() {
        let t = LoginThrottle::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert!(t.check("alice").is_ok());
            t.record_failure("alice");
        }
        let wait = t.check("alice").unwrap_err();
        assert!(wait <= Duration::from_millis(200));
        assert!(t.check("bob").is_ok(), "other accounts are not affected");
        std::thread::sleep(Duration::from_millis(220));
        assert!(t.check("alice").is_ok());
        t.record_failure("alice");
        assert!(t.check("alice").is_ok(), "a new window starts from zero");
    }

    #[test]
    fn success_clears_failures() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        t.record_failure("alice");
        t.record_success("alice");
        t.record_failure("alice");
        assert!(t.check("alice").is_ok());
    }
}
