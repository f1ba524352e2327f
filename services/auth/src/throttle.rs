//! Fair throttles on the unauthenticated endpoints, in fixed memory ([`Limiter`]).
//!
//! - **Login failures** are counted per (account, client address) and per client address. A
//!   stranger's wrong passwords lock *their* pair and, past a higher bar, their address: never
//!   the account itself, so its owner still logs in from elsewhere. Each attempt is charged
//!   before its password is checked (parallel attempts cannot slip past the limit); a success
//!   gives the charges back, and an attempt that could not be checked (server busy) is refunded.
//! - **Registrations** are counted per client address.
//!
//! Every hash computed for an unauthenticated caller is thus charged to its address first: a
//! flood from one address is turned away (429) before it reaches the hashing pool.

use std::{net::IpAddr, time::Duration};

use chat_common::limiter::Limiter;

/// Throttle settings (see the README's configuration table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// `LOGIN_MAX_FAILURES` per (account, address) within `LOGIN_FAILURE_WINDOW` (default 10 per
    /// 60 s; 0 disables login throttling).
    pub login_max_failures: u32,
    pub login_failure_window: Duration,
    /// `LOGIN_MAX_FAILURES_PER_ADDRESS` within the same window, whatever the accounts (default 100).
    pub login_max_failures_per_address: u32,
    /// `REGISTER_MAX_PER_ADDRESS` within `REGISTER_WINDOW` (default 20 per hour; 0 disables).
    pub register_max_per_address: u32,
    pub register_window: Duration,
    /// `THROTTLE_SLOTS` (default 65,536): keys each throttle remembers, 16 bytes each.
    pub slots: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            login_max_failures: 10,
            login_failure_window: Duration::from_secs(60),
            login_max_failures_per_address: 100,
            register_max_per_address: 20,
            register_window: Duration::from_secs(3600),
            slots: 65_536,
        }
    }
}

#[derive(Debug)]
pub struct Throttle {
    pair: Option<Limiter>,
    address: Option<Limiter>,
    register: Option<Limiter>,
}

impl Throttle {
    pub fn new(c: &ThrottleConfig) -> Self {
        let login = c.login_max_failures > 0;
        Self {
            pair: login.then(|| {
                Limiter::per_window(c.login_max_failures, c.login_failure_window, c.slots)
            }),
            address: (login && c.login_max_failures_per_address > 0).then(|| {
                Limiter::per_window(
                    c.login_max_failures_per_address,
                    c.login_failure_window,
                    c.slots,
                )
            }),
            register: (c.register_max_per_address > 0).then(|| {
                Limiter::per_window(c.register_max_per_address, c.register_window, c.slots)
            }),
        }
    }

    /// Bytes the three throttles hold, whatever the traffic.
    pub fn memory_bytes(&self) -> usize {
        [&self.pair, &self.address, &self.register]
            .into_iter()
            .flatten()
            .map(Limiter::memory_bytes)
            .sum()
    }

    /// Charges a login attempt for `username` from `client`; `Err(wait)` when refused.
    pub fn begin_login(&self, username: &str, client: IpAddr) -> Result<(), Duration> {
        if let Some(address) = &self.address {
            address.peek(&client)?;
        }
        if let Some(pair) = &self.pair {
            pair.check(&(username, client))?;
        }
        if let Some(address) = &self.address
            && let Err(wait) = address.check(&client)
        {
            if let Some(pair) = &self.pair {
                pair.refund(&(username, client));
            }
            return Err(wait);
        }
        Ok(())
    }

    /// The attempt succeeded: the pair starts afresh and the address gets its charge back.
    pub fn login_succeeded(&self, username: &str, client: IpAddr) {
        if let Some(pair) = &self.pair {
            pair.reset(&(username, client));
        }
        if let Some(address) = &self.address {
            address.refund(&client);
        }
    }

    /// The attempt could not be checked (server busy): nothing is held against anyone.
    pub fn login_refund(&self, username: &str, client: IpAddr) {
        if let Some(pair) = &self.pair {
            pair.refund(&(username, client));
        }
        if let Some(address) = &self.address {
            address.refund(&client);
        }
    }

    /// Charges a registration from `client`; `Err(wait)` when refused.
    pub fn begin_register(&self, client: IpAddr) -> Result<(), Duration> {
        self.register.as_ref().map_or(Ok(()), |r| r.check(&client))
    }

    /// The registration was refused before any work (bad input, taken name): not charged.
    pub fn register_refund(&self, client: IpAddr) {
        if let Some(r) = &self.register {
            r.refund(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            login_max_failures: 3,
            login_failure_window: Duration::from_secs(60),
            login_max_failures_per_address: 5,
            register_max_per_address: 2,
            register_window: Duration::from_secs(60),
            slots: 1024,
        }
    }

    #[test]
    fn a_strangers_failures_never_lock_the_owner_out_from_elsewhere() {
        let t = Throttle::new(&config());
        let (stranger, owner) = (ip("203.0.113.9"), ip("198.51.100.4"));
        for _ in 0..3 {
            t.begin_login("alice", stranger).unwrap();
        }
        assert!(
            t.begin_login("alice", stranger).is_err(),
            "the pair is locked"
        );
        assert!(t.begin_login("alice", owner).is_ok(), "the owner is not");
        t.login_succeeded("alice", owner);
    }

    #[test]
    fn an_address_trying_many_accounts_is_stopped() {
        let t = Throttle::new(&config());
        let stranger = ip("203.0.113.9");
        for user in ["a", "b", "c", "d", "e"] {
            t.begin_login(user, stranger).unwrap();
        }
        assert!(
            t.begin_login("f", stranger).is_err(),
            "the address is locked"
        );
        assert!(t.begin_login("f", ip("203.0.113.10")).is_ok());
        // The refused attempt held nothing against the pair.
        t.login_succeeded("a", stranger);
        assert!(t.begin_login("f", stranger).is_ok());
    }

    #[test]
    fn success_and_refund_give_back() {
        let t = Throttle::new(&config());
        let me = ip("192.0.2.1");
        for _ in 0..10 {
            t.begin_login("bob", me).unwrap();
            t.login_succeeded("bob", me);
        }
        for _ in 0..10 {
            t.begin_login("bob", me).unwrap();
            t.login_refund("bob", me);
        }
    }

    #[test]
    fn registrations_per_address() {
        let t = Throttle::new(&config());
        let me = ip("192.0.2.1");
        t.begin_register(me).unwrap();
        t.begin_register(me).unwrap();
        assert!(t.begin_register(me).is_err());
        t.register_refund(me);
        assert!(t.begin_register(me).is_ok());
        assert!(t.begin_register(ip("192.0.2.2")).is_ok());
        let off = Throttle::new(&ThrottleConfig {
            login_max_failures: 0,
            register_max_per_address: 0,
            ..config()
        });
        for _ in 0..100 {
            off.begin_register(me).unwrap();
            off.begin_login("x", me).unwrap();
        }
    }
}
