//! The login throttle: failed logins per address, after which that address is refused unchecked
//! for a while. Time is passed in.

use std::net::IpAddr;
use std::time::Instant;

use crate::listen::AddressKey;

/// Failed logins from one address, across connections and protocols, after which its attempts are
/// refused unchecked for the rest of the window: guessing passwords costs a minute per few tries.
pub const MAX_FAILED_LOGINS: u32 = 10;
pub const FAILED_LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Addresses remembered at most; beyond, expired entries are forgotten first.
const MAX_REMEMBERED_ADDRESSES: usize = 10_000;

/// Counts failed logins per address (an IPv6 client by its /64, which it can fill with addresses
/// at will). Time is passed in.
///
/// Bounded and cheap under attack: at [`MAX_REMEMBERED_ADDRESSES`] the address whose window
/// started longest ago is forgotten, one per new address, found through a queue in window order
/// (O(1) amortized, never a scan of the table).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: std::collections::HashMap<AddressKey, (u32, Instant)>,
    /// Addresses by when their window started, oldest first; an entry whose window restarted
    /// since is stale and skipped.
    order: std::collections::VecDeque<(AddressKey, Instant)>,
}

impl LoginThrottle {
    /// Whether `ip` is refused now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.failures
            .get(&AddressKey::of(ip))
            .is_some_and(|(count, since)| {
                *count >= MAX_FAILED_LOGINS && now.duration_since(*since) < FAILED_LOGIN_WINDOW
            })
    }

    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let key = AddressKey::of(ip);
        if !self.failures.contains_key(&key) {
            while self.failures.len() >= MAX_REMEMBERED_ADDRESSES {
                let Some((oldest, since)) = self.order.pop_front() else {
                    break;
                };
                if self.failures.get(&oldest).is_some_and(|e| e.1 == since) {
                    self.failures.remove(&oldest);
                }
            }
        }
        let entry = self.failures.entry(key).or_insert((0, now));
        if entry.0 == 0 || now.duration_since(entry.1) >= FAILED_LOGIN_WINDOW {
            *entry = (0, now);
            self.order.push_back((key, now));
        }
        entry.0 += 1;
        // Stale queue entries (windows that restarted) are dropped once they are the bulk of it.
        if self.order.len() > 2 * MAX_REMEMBERED_ADDRESSES {
            let failures = &self.failures;
            self.order
                .retain(|(key, since)| failures.get(key).is_some_and(|e| e.1 == *since));
        }
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        self.failures.remove(&AddressKey::of(ip));
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_repeated_failures_for_a_while() {
        let mut throttle = LoginThrottle::default();
        let (ip, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(!throttle.blocked(ip, t0));
            throttle.failed(ip, t0);
        }
        assert!(throttle.blocked(ip, t0));
        assert!(!throttle.blocked(other, t0));
        assert!(!throttle.blocked(ip, t0 + FAILED_LOGIN_WINDOW));
        throttle.succeeded(ip);
        assert!(!throttle.blocked(ip, t0));
    }

    #[test]
    fn the_failed_login_table_stays_bounded_under_a_flood_of_addresses() {
        let mut throttle = LoginThrottle::default();
        let t0 = Instant::now();
        let attacker: IpAddr = "10.9.9.9".parse().unwrap();
        for _ in 0..MAX_FAILED_LOGINS {
            throttle.failed(attacker, t0);
        }
        for i in 0..(3 * MAX_REMEMBERED_ADDRESSES as u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            throttle.failed(ip, t0 + std::time::Duration::from_millis(1));
        }
        assert!(throttle.remembered() <= MAX_REMEMBERED_ADDRESSES);
        // Every address of one IPv6 /64 is one entry.
        for i in 0..20u128 {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | i));
            throttle.failed(ip, t0);
        }
        assert!(throttle.blocked("2001:db8::ffff".parse().unwrap(), t0));
    }
}
