//! Per-source-address limits, sans-IO (time is passed in).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::signal::rate::TokenBucket;

/// Token buckets per source IP.
pub type PerIpRate = RateTable<IpAddr>;

/// Token buckets per key (a source address, an id), at most `capacity` of
/// them.
///
/// When the table is full, the key seen least recently makes room for a
/// new one. An attacker who sprays from many (spoofed) sources therefore
/// evicts only addresses that have gone quiet: an address being flooded
/// now (a victim whose budget is spent, or the flooding source itself)
/// stays tracked and keeps its empty bucket, where clearing the table
/// would refill it.
#[derive(Debug)]
pub struct RateTable<K> {
    rate: u32,
    burst: u32,
    capacity: usize,
    /// Bucket and the sequence number of its last use, per key.
    buckets: HashMap<K, (TokenBucket, u64)>,
    /// Keys by the sequence number of their last use, oldest first.
    by_use: BTreeMap<u64, K>,
    next_use: u64,
}

impl<K: Hash + Eq + Clone> RateTable<K> {
    /// `rate` events per second per key, bursts of `burst`, at most
    /// `capacity` keys tracked (at least 1).
    pub fn new(rate: u32, burst: u32, capacity: usize) -> Self {
        Self { rate, burst, capacity: capacity.max(1), buckets: HashMap::new(), by_use: BTreeMap::new(), next_use: 0 }
    }

    /// Takes `cost` tokens (e.g. 1 per answer, or the bytes of a datagram)
    /// from `key`'s bucket at `now`; false when the bucket has fewer.
    pub fn allow(&mut self, key: &K, cost: u32, now: Instant) -> bool {
        let seq = self.next_use;
        self.next_use += 1;
        if let Some((bucket, last)) = self.buckets.get_mut(key) {
            self.by_use.remove(last);
            *last = seq;
            self.by_use.insert(seq, key.clone());
            return bucket.take_n(cost, now);
        }
        if self.buckets.len() >= self.capacity
            && let Some((_, oldest)) = self.by_use.pop_first()
        {
            self.buckets.remove(&oldest);
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let allowed = bucket.take_n(cost, now);
        self.buckets.insert(key.clone(), (bucket, seq));
        self.by_use.insert(seq, key.clone());
        allowed
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Open connections per source IP and in total, with caps on both.
///
/// [`PerIpConnections::admit`] hands out a [`ConnectionSlot`] that gives
/// its place back when dropped, so a connection task that ends by any path
/// (error, timeout, panic) frees its count.
#[derive(Debug, Clone)]
pub struct PerIpConnections {
    inner: Arc<Counts>,
}

#[derive(Debug)]
struct Counts {
    per_ip_cap: usize,
    total_cap: usize,
    state: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source address holds its share already.
    PerIp(usize),
    /// The server holds as many connections as it may.
    Total(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerIp(cap) => write!(f, "{cap} connections from this address already"),
            Refusal::Total(cap) => write!(f, "{cap} connections in total already"),
        }
    }
}

/// One admitted connection; its count is given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl PerIpConnections {
    /// At most `per_ip_cap` connections from one address and `total_cap`
    /// in all (each at least 1).
    pub fn new(per_ip_cap: usize, total_cap: usize) -> Self {
        Self {
            inner: Arc::new(Counts {
                per_ip_cap: per_ip_cap.max(1),
                total_cap: total_cap.max(1),
                state: Mutex::new((HashMap::new(), 0)),
            }),
        }
    }

    /// Counts a new connection from `ip`, or says which cap it hits.
    ///
    /// # Errors
    /// [`Refusal`] when `ip` or the server is at its cap.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let (per_ip, total) = &mut *state;
        if *total >= self.inner.total_cap {
            return Err(Refusal::Total(self.inner.total_cap));
        }
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.inner.per_ip_cap {
            return Err(Refusal::PerIp(self.inner.per_ip_cap));
        }
        *count += 1;
        *total += 1;
        Ok(ConnectionSlot { counts: self.inner.clone(), ip })
    }

    /// Connections open now, in total.
    pub fn total(&self) -> usize {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut state = self.counts.state.lock().unwrap_or_else(|p| p.into_inner());
        let (per_ip, total) = &mut *state;
        *total = total.saturating_sub(1);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn a_flooded_address_keeps_its_empty_bucket_while_others_come_and_go() {
        let t0 = Instant::now();
        let mut rate = PerIpRate::new(10, 5, 100);
        let victim = ip(0);
        assert_eq!((0..10).filter(|_| rate.allow(&victim, 1, t0)).count(), 5);
        // A spray from 10,000 other sources, the victim asked about between
        // them (as a reflection attack does).
        for n in 1..10_000 {
            rate.allow(&ip(n), 1, t0);
            if n % 50 == 0 {
                assert!(!rate.allow(&victim, 1, t0), "the victim's budget was refilled after {n} sources");
            }
        }
        assert_eq!(rate.tracked(), 100);
        // Refill comes only with time.
        assert!(rate.allow(&victim, 1, t0 + Duration::from_millis(150)));
    }

    #[test]
    fn the_least_recently_seen_address_is_the_one_forgotten() {
        let t0 = Instant::now();
        let mut rate = PerIpRate::new(1, 1, 2);
        assert!(rate.allow(&ip(1), 1, t0));
        assert!(rate.allow(&ip(2), 1, t0));
        assert!(!rate.allow(&ip(1), 1, t0), "ip 1 used again: now the most recent");
        assert!(rate.allow(&ip(3), 1, t0), "evicts ip 2");
        assert!(!rate.allow(&ip(1), 1, t0), "ip 1 still tracked with its empty bucket");
        assert!(rate.allow(&ip(2), 1, t0), "ip 2 was forgotten: a fresh bucket");
    }

    #[test]
    fn connection_caps_per_address_and_in_total_and_slots_give_back() {
        let counts = PerIpConnections::new(2, 3);
        let a1 = counts.admit(ip(1)).expect("first");
        let _a2 = counts.admit(ip(1)).expect("second");
        assert_eq!(counts.admit(ip(1)).err(), Some(Refusal::PerIp(2)));
        let _b1 = counts.admit(ip(2)).expect("other address");
        assert_eq!(counts.admit(ip(3)).err(), Some(Refusal::Total(3)));
        drop(a1);
        assert_eq!(counts.total(), 2);
        let _a3 = counts.admit(ip(1)).expect("room again after a drop");
    }
}
