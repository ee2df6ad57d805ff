//! Shares per client address: how many of a listener's connections, or of
//! its request slots, one address may hold at once.
//!
//! Why it exists: the listener-wide limits (`server.max_connections`,
//! `server.max_concurrent_requests`) protect the process, but one client
//! alone could take all of them (slow bodies, idle or never-read
//! connections) and lock every other sender out. A share per address keeps
//! room for the rest. IPv6 addresses count by their /64 network: one client
//! usually has a whole one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Up to `max` holds per client address.
pub struct ClientSlots {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One hold of a client address's share, given back when dropped.
pub struct ClientSlot {
    slots: Arc<ClientSlots>,
    key: IpAddr,
}

/// The address a client is counted by: itself, or its /64 for IPv6. An
/// IPv4 client of a dual-stack (`[::]`) listener arrives as an IPv4-mapped
/// IPv6 address (`::ffff:a.b.c.d`) and counts as its IPv4 address, not as
/// part of the one /64 all of them share.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

impl ClientSlots {
    /// At most `max` holds at once per client address.
    pub fn new(max: usize) -> Arc<ClientSlots> {
        Arc::new(ClientSlots {
            max: max.max(1),
            held: Mutex::default(),
        })
    }

    /// The limit per address.
    pub fn max(&self) -> usize {
        self.max
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A hold for `ip`, unless its address already has all of its share.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = client_key(ip);
        let mut held = self.lock();
        let n = held.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_bounded_per_address_and_given_back() {
        let slots = ClientSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert!(slots.take(a).is_none());
        // Another address has its own share.
        let _other = slots.take(b).unwrap();
        drop(first);
        assert!(slots.take(a).is_some());
        // One IPv6 /64 is one client.
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let z: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let (_x, _y) = (slots.take(x).unwrap(), slots.take(y).unwrap());
        assert!(slots.take(x).is_none());
        assert!(slots.take(z).is_some());
        // IPv4 clients of a dual-stack listener are told apart.
        let m1: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        let m2: IpAddr = "::ffff:10.0.0.8".parse().unwrap();
        let (_m1, _m1b) = (slots.take(m1).unwrap(), slots.take(m1).unwrap());
        assert!(slots.take(m2).is_some());
        assert!(slots.take(m1).is_none());
        assert_eq!(client_key(m1), "10.0.0.7".parse::<IpAddr>().unwrap());
        // Addresses with nothing held are forgotten.
        drop((_x, _y));
        assert!(!slots.lock().contains_key(&client_key(x)));
    }
}
