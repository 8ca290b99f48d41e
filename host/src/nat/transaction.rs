//! A STUN client transaction over UDP (RFC 5389 section 7.2.1), sans-IO:
//! the caller passes `now`, sends what [`Transaction::poll`] returns and
//! feeds the response in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::TxId;

/// Retransmission schedule of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitPolicy {
    /// Initial retransmission timeout (RTO); doubles after every send.
    pub rto: Duration,
    /// Total number of sends, the first included (RFC 5389 `Rc`).
    pub max_sends: u32,
    /// After the last send, wait `last_wait × rto` for the response (RFC
    /// 5389 `Rm`).
    pub last_wait: u32,
}

impl RetransmitPolicy {
    /// RFC 5389's defaults: RTO 500 ms, Rc 7, Rm 16 (39.5 s in all). Meant
    /// for paths of unknown RTT; too slow to wait for a test that expects
    /// silence.
    pub const RFC_5389: Self = Self { rto: Duration::from_millis(500), max_sends: 7, last_wait: 16 };

    /// NAT discovery's default: RTO 100 ms, 5 sends, 4 RTO after the last:
    /// gives up after 1.9 s, and tolerates loss of four datagrams in a row.
    pub const DISCOVERY: Self = Self { rto: Duration::from_millis(100), max_sends: 5, last_wait: 4 };

    /// When the transaction gives up, counted from the first send.
    pub fn total(&self) -> Duration {
        let sends = self.max_sends.max(1);
        let mut total = Duration::ZERO;
        for i in 0..sends - 1 {
            total += self.rto * 2u32.saturating_pow(i);
        }
        total + self.rto * self.last_wait
    }
}

impl Default for RetransmitPolicy {
    fn default() -> Self {
        Self::DISCOVERY
    }
}

/// What to do next for a transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Send this datagram to this address now.
    Send(&'a [u8], SocketAddr),
    /// Nothing to do until this instant.
    WaitUntil(Instant),
    /// No response after the last retransmission.
    TimedOut,
    /// A response was accepted.
    Done,
}

/// One request awaiting its response.
#[derive(Debug, Clone)]
pub struct Transaction {
    txid: TxId,
    destination: SocketAddr,
    request: Vec<u8>,
    policy: RetransmitPolicy,
    sends: u32,
    next: Instant,
    done: bool,
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
}

impl Transaction {
    /// A transaction whose first send is due at `now`.
    pub fn new(txid: TxId, destination: SocketAddr, request: Vec<u8>, policy: RetransmitPolicy, now: Instant) -> Self {
        Self { txid, destination, request, policy, sends: 0, next: now, done: false, first_sent: None, last_sent: None }
    }

    /// The transaction id.
    pub fn txid(&self) -> TxId {
        self.txid
    }

    /// Where the request goes.
    pub fn destination(&self) -> SocketAddr {
        self.destination
    }

    /// How many times the request was sent.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// Advances the schedule to `now`.
    pub fn poll(&mut self, now: Instant) -> Step<'_> {
        if self.done {
            return Step::Done;
        }
        if now < self.next {
            return Step::WaitUntil(self.next);
        }
        let max_sends = self.policy.max_sends.max(1);
        if self.sends >= max_sends {
            return Step::TimedOut;
        }
        self.sends += 1;
        self.first_sent.get_or_insert(now);
        self.last_sent = Some(now);
        self.next = if self.sends == max_sends {
            now + self.policy.rto * self.policy.last_wait
        } else {
            now + self.policy.rto * 2u32.saturating_pow(self.sends - 1)
        };
        Step::Send(&self.request, self.destination)
    }

    /// When [`Transaction::poll`] has something to do next (a send or the
    /// timeout); `None` once a response was accepted.
    pub fn next_at(&self) -> Option<Instant> {
        (!self.done).then_some(self.next)
    }

    /// Accepts a response with `txid` if it is this transaction's; returns
    /// whether it was. Later duplicates are not accepted again.
    pub fn on_response(&mut self, txid: &TxId) -> bool {
        if self.done || *txid != self.txid || self.sends == 0 {
            return false;
        }
        self.done = true;
        true
    }

    /// Round-trip time estimate at `now` for an accepted response: from the
    /// last send when the request was sent once, else unknown (Karn).
    pub fn rtt(&self, now: Instant) -> Option<Duration> {
        match (self.sends, self.last_sent) {
            (1, Some(sent)) => Some(now.saturating_duration_since(sent)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "192.0.2.1:3478".parse().expect("addr")
    }

    #[test]
    fn rfc_5389_schedule_sends_at_0_500_1500_3500_7500_15500_31500_and_gives_up_at_39500() {
        let t0 = Instant::now();
        let mut tx = Transaction::new([1; 12], addr(), vec![0; 20], RetransmitPolicy::RFC_5389, t0);
        let mut sends = Vec::new();
        let mut now = t0;
        loop {
            match tx.poll(now) {
                Step::Send(_, to) => {
                    assert_eq!(to, addr());
                    sends.push(now.duration_since(t0).as_millis());
                }
                Step::WaitUntil(at) => now = at,
                Step::TimedOut => break,
                Step::Done => panic!("no response was given"),
            }
        }
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(now.duration_since(t0).as_millis(), 39500);
        assert_eq!(RetransmitPolicy::RFC_5389.total(), Duration::from_millis(39500));
    }

    #[test]
    fn response_ends_the_transaction_and_duplicates_are_ignored() {
        let t0 = Instant::now();
        let mut tx = Transaction::new([2; 12], addr(), vec![1], RetransmitPolicy::DISCOVERY, t0);
        assert!(!tx.on_response(&[2; 12]), "nothing was sent yet");
        assert!(matches!(tx.poll(t0), Step::Send(..)));
        assert!(!tx.on_response(&[3; 12]), "another transaction's response");
        let later = t0 + Duration::from_millis(30);
        assert!(tx.on_response(&[2; 12]));
        assert_eq!(tx.rtt(later), Some(Duration::from_millis(30)));
        assert!(!tx.on_response(&[2; 12]));
        assert_eq!(tx.poll(later), Step::Done);
    }

    #[test]
    fn rtt_is_unknown_after_a_retransmission() {
        let t0 = Instant::now();
        let mut tx = Transaction::new([2; 12], addr(), vec![1], RetransmitPolicy::DISCOVERY, t0);
        assert!(matches!(tx.poll(t0), Step::Send(..)));
        let t1 = t0 + Duration::from_millis(100);
        assert!(matches!(tx.poll(t1), Step::Send(..)));
        assert!(tx.on_response(&[2; 12]));
        assert_eq!(tx.rtt(t1), None);
    }

    #[test]
    fn discovery_policy_gives_up_after_1900_ms() {
        assert_eq!(RetransmitPolicy::DISCOVERY.total(), Duration::from_millis(1900));
        let t0 = Instant::now();
        let mut tx = Transaction::new([2; 12], addr(), vec![1], RetransmitPolicy::DISCOVERY, t0);
        let mut now = t0;
        let mut sends = 0;
        loop {
            match tx.poll(now) {
                Step::Send(..) => sends += 1,
                Step::WaitUntil(at) => now = at,
                Step::TimedOut => break,
                Step::Done => unreachable!(),
            }
        }
        assert_eq!(sends, 5);
        assert_eq!(now - t0, Duration::from_millis(1900));
    }
}
