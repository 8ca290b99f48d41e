//! ICE-style connectivity checks, sans-IO.
//!
//! Both sides send STUN binding requests with short-term credentials
//! (USERNAME `<remote ufrag>:<local ufrag>`, MESSAGE-INTEGRITY keyed with
//! the remote password) on every candidate pair, answer the other side's
//! requests, learn peer-reflexive candidates from them, and follow the
//! [`Plan`] for hard NATs (port spraying, many listening sockets). The
//! controlling side (the one that connects) picks the best working pair,
//! LAN first, then IPv6, then lowest round-trip time, and nominates it with
//! USE-CANDIDATE; the controlled side ends when it sees the nomination.
//!
//! Written by hand because no maintained Rust ICE crate supports our
//! needs: one socket shared with QUIC, port prediction and birthday
//! probing.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::consent::Consent;
use super::message::{self, Binding, BindingRequest, SuccessResponse, TxId};
use super::strategy::{Plan, SprayKind};
use crate::signal::protocol::{Candidate, CandidateKind, CheckCredentials};

/// Which local socket a datagram uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketRef {
    /// The node's socket (shared with QUIC).
    Main,
    /// An extra socket opened for birthday listening, by index.
    Aux(u16),
}

/// Limits and pacing of the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckConfig {
    /// Longest the checks may take before giving up.
    pub budget: Duration,
    /// Budget when only LAN candidates are worth checking (relay required).
    pub lan_budget: Duration,
    /// First interval between checks of one pair; doubles up to
    /// `max_check_interval`.
    pub check_interval: Duration,
    /// Largest interval between checks of one pair.
    pub max_check_interval: Duration,
    /// After the first working pair, the longest wait for a better one (LAN
    /// or lower RTT) before nominating. The wait is the first pair's RTT
    /// (at least [`MIN_NOMINATION_WAIT`]): checks go out to every pair at
    /// once, so a better pair has usually answered by then.
    pub nomination_wait: Duration,
    /// Extra sockets opened by the listening side of birthday probing.
    pub birthday_sockets: u16,
    /// Probes per second of a spraying side.
    pub spray_rate: u32,
    /// Most probes a spraying side sends.
    pub max_spray_probes: u32,
    /// Ports tried around the predicted one with port prediction.
    pub prediction_span: u16,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            budget: Duration::from_secs(8),
            lan_budget: Duration::from_secs(1),
            check_interval: Duration::from_millis(50),
            max_check_interval: Duration::from_millis(500),
            nomination_wait: Duration::from_millis(60),
            birthday_sockets: 256,
            spray_rate: 1000,
            max_spray_probes: 5000,
            prediction_span: 64,
        }
    }
}

/// Shortest wait for a better pair after the first working one.
pub const MIN_NOMINATION_WAIT: Duration = Duration::from_millis(5);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// From which local socket.
    pub socket: SocketRef,
    /// To whom.
    pub to: SocketAddr,
    /// The STUN message.
    pub bytes: Vec<u8>,
}

/// The pair the checks settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// Local socket of the pair.
    pub socket: SocketRef,
    /// Remote address of the pair.
    pub remote: SocketAddr,
    /// Round-trip time of the check that validated it, when measured.
    pub rtt: Option<Duration>,
    /// Both ends are host candidates: the peers share a network.
    pub lan: bool,
}

/// How the checks ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A pair works (and, on the controlling side, was nominated).
    Selected(Selected),
    /// No pair works; the reason says why.
    Failed(String),
}

/// Counters for reports and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Binding requests sent on candidate pairs.
    pub checks_sent: u32,
    /// Spray probes sent (port prediction or birthday).
    pub probes_sent: u32,
    /// Requests received from the peer with valid credentials.
    pub requests_received: u32,
    /// Datagrams dropped: bad credentials, garbage, unknown transactions.
    pub dropped: u32,
    /// Checks not sent: their address was not proven and the budget for
    /// such addresses was spent (see [`super::consent`]).
    pub withheld: u32,
    /// Bytes sent to addresses the peer had not proven.
    pub unproven_bytes: u64,
}

#[derive(Debug)]
struct Pair {
    socket: SocketRef,
    remote: SocketAddr,
    lan: bool,
    next_check: Instant,
    interval: Duration,
    valid: Option<Option<Duration>>,
}

#[derive(Debug)]
struct Spray {
    ip: IpAddr,
    ports: Vec<u16>,
    next: usize,
    next_at: Instant,
    /// Whether probing began (it waits until the peer's IP is proven).
    started: bool,
}

/// The connectivity check agent of one connection attempt.
#[derive(Debug)]
pub struct CheckAgent {
    config: CheckConfig,
    controlling: bool,
    local: CheckCredentials,
    remote: CheckCredentials,
    pairs: Vec<Pair>,
    in_flight: HashMap<TxId, (SocketRef, SocketAddr, Instant)>,
    spray: Option<Spray>,
    deadline: Instant,
    /// When to nominate at the latest, once a pair worked.
    nominate_at: Option<Instant>,
    outcome: Option<Outcome>,
    failure_reason: String,
    transmits: VecDeque<Transmit>,
    stats: CheckStats,
    plan: Plan,
    consent: Consent,
}

/// Whether an address is only reachable on a local network.
fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unique_local(),
    }
}

impl CheckAgent {
    /// Starts the checks at `now`.
    ///
    /// `remote_candidates` are the peer's candidates from signaling; `plan`
    /// comes from [`strategy::plan`](super::strategy::plan); `aux_sockets`
    /// is how many extra sockets the caller opened for
    /// [`Plan::Listen`]; `seed` drives the random probe order; `consent`
    /// bounds what goes to addresses the peer has not proven (port
    /// spraying waits until the peer's public IP is proven).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: CheckConfig,
        controlling: bool,
        local: CheckCredentials,
        remote: CheckCredentials,
        remote_candidates: &[Candidate],
        plan: Plan,
        aux_sockets: u16,
        seed: u64,
        consent: Consent,
        now: Instant,
    ) -> Self {
        let lan_only = matches!(plan, Plan::RelayRequired(_));
        let budget = if lan_only { config.lan_budget.min(config.budget) } else { config.budget };
        let mut agent = Self {
            config,
            controlling,
            local,
            remote,
            pairs: Vec::new(),
            in_flight: HashMap::new(),
            spray: None,
            deadline: now + budget,
            nominate_at: None,
            outcome: None,
            failure_reason: String::new(),
            transmits: VecDeque::new(),
            stats: CheckStats::default(),
            plan: plan.clone(),
            consent,
        };
        for candidate in remote_candidates {
            let lan = candidate.kind == CandidateKind::Host && is_local_ip(candidate.addr.ip());
            // IPv6 has no NAT to defeat: its pairs are checked whatever
            // the IPv4 NATs require.
            if lan_only && !lan && !candidate.addr.is_ipv6() {
                continue;
            }
            agent.add_pair(SocketRef::Main, candidate.addr, lan, now);
        }
        let public = remote_candidates.iter().find(|c| c.kind == CandidateKind::ServerReflexive).map(|c| c.addr);
        match (&plan, public) {
            (Plan::Listen { .. }, Some(public)) => {
                for i in 0..aux_sockets {
                    agent.add_pair(SocketRef::Aux(i), public, false, now);
                }
            }
            (Plan::Spray(kind), Some(public)) => {
                let mut rng = StdRng::seed_from_u64(seed);
                let ports = match kind {
                    SprayKind::Birthday => {
                        let mut ports: Vec<u16> = (1024..=u16::MAX).filter(|&p| p != public.port()).collect();
                        // Fisher-Yates on the prefix we may use.
                        let take = (config.max_spray_probes as usize).min(ports.len());
                        for i in 0..take {
                            let j = rng.random_range(i..ports.len());
                            ports.swap(i, j);
                        }
                        ports.truncate(take);
                        ports
                    }
                    SprayKind::Predict { delta } => predicted_ports(public.port(), *delta, config.prediction_span),
                };
                agent.spray = Some(Spray { ip: public.ip(), ports, next: 0, next_at: now, started: false });
            }
            _ => {}
        }
        agent.failure_reason = match &plan {
            Plan::RelayRequired(reason) => format!("relay required: {reason}"),
            _ if remote_candidates.is_empty() => "the peer offered no candidates".into(),
            other => format!("no direct path found within {budget:?} ({other})"),
        };
        if agent.pairs.is_empty() && agent.spray.is_none() {
            agent.outcome = Some(Outcome::Failed(agent.failure_reason.clone()));
        }
        agent
    }

    /// Counters so far.
    pub fn stats(&self) -> CheckStats {
        CheckStats { withheld: self.consent.withheld(), unproven_bytes: self.consent.unproven_sent(), ..self.stats }
    }

    /// How the checks ended, once they did.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    fn add_pair(&mut self, socket: SocketRef, remote: SocketAddr, lan: bool, now: Instant) -> usize {
        if let Some(i) = self.pairs.iter().position(|p| p.socket == socket && p.remote == remote) {
            return i;
        }
        // Extra sockets only open mappings: one check at once, then slowly.
        let interval = match socket {
            SocketRef::Main => self.config.check_interval,
            SocketRef::Aux(_) => self.config.max_check_interval,
        };
        self.pairs.push(Pair { socket, remote, lan, next_check: now, interval, valid: None });
        self.pairs.len() - 1
    }

    fn request(&mut self, socket: SocketRef, to: SocketAddr, nominate: bool, now: Instant) {
        let txid = message::random_txid();
        let username = format!("{}:{}", self.remote.ufrag, self.local.ufrag);
        let request = BindingRequest {
            auth: Some((&username, &self.remote.pwd)),
            use_candidate: nominate,
            ..BindingRequest::default()
        };
        match message::binding_request(txid, &request) {
            Ok(bytes) if self.consent.may_send(to, bytes.len()) => {
                self.in_flight.insert(txid, (socket, to, now));
                self.transmits.push_back(Transmit { socket, to, bytes });
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("cannot encode a check: {e}"),
        }
    }

    /// Runs timers due at `now`: checks, spray probes, nomination, budget.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        if now >= self.deadline {
            let mut reason = self.failure_reason.clone();
            if self.spray.as_ref().is_some_and(|spray| !spray.started) {
                reason.push_str("; no port probing: the peer never proved its public IP");
            }
            self.outcome = Some(Outcome::Failed(reason));
            return;
        }
        for i in 0..self.pairs.len() {
            let pair = &self.pairs[i];
            if pair.valid.is_some() || now < pair.next_check {
                continue;
            }
            let (socket, remote) = (pair.socket, pair.remote);
            let interval = pair.interval;
            let pair = &mut self.pairs[i];
            pair.next_check = now + interval;
            pair.interval = (interval * 2).min(self.config.max_check_interval);
            self.stats.checks_sent += 1;
            self.request(socket, remote, false, now);
        }
        if let Some(spray) = &mut self.spray
            && self.consent.is_proven(spray.ip)
        {
            if !spray.started {
                // Probing starts now, at its pace, not with the probes due
                // since the checks began.
                spray.started = true;
                spray.next_at = now;
            }
            let step = Duration::from_secs(1) / self.config.spray_rate.max(1);
            let mut due = Vec::new();
            while spray.next < spray.ports.len() && spray.next_at <= now {
                due.push(SocketAddr::new(spray.ip, spray.ports[spray.next]));
                spray.next += 1;
                spray.next_at += step;
            }
            for to in due {
                self.stats.probes_sent += 1;
                self.request(SocketRef::Main, to, false, now);
            }
        }
        if self.controlling
            && let Some(nominate_at) = self.nominate_at
        {
            let lan_valid = self.pairs.iter().any(|p| p.lan && p.valid.is_some());
            if lan_valid || now >= nominate_at {
                self.nominate(now);
            }
        }
        // Forget checks that can no longer be answered in time.
        if self.in_flight.len() > 4 * self.config.max_spray_probes as usize {
            let horizon = now.checked_sub(Duration::from_secs(2)).unwrap_or(now);
            self.in_flight.retain(|_, (_, _, sent)| *sent >= horizon);
        }
    }

    fn nominate(&mut self, now: Instant) {
        let best = self
            .pairs
            .iter()
            .filter_map(|p| p.valid.map(|rtt| (p, rtt)))
            // LAN first, then IPv6 (no NAT whose mapping can expire or
            // rebind), then the quickest.
            .min_by_key(|(p, rtt)| (!p.lan, !p.remote.is_ipv6(), rtt.unwrap_or(Duration::MAX)));
        let Some((pair, rtt)) = best else { return };
        let selected = Selected { socket: pair.socket, remote: pair.remote, rtt, lan: pair.lan };
        // Sent twice: the peer stops its checks when one arrives, and
        // otherwise only runs until its budget ends.
        self.request(selected.socket, selected.remote, true, now);
        self.request(selected.socket, selected.remote, true, now);
        self.outcome = Some(Outcome::Selected(selected));
    }

    /// Feeds a STUN datagram received on `socket` from `from`.
    pub fn handle_datagram(&mut self, socket: SocketRef, from: SocketAddr, bytes: &[u8], now: Instant) {
        let Ok(binding) = message::decode(bytes) else {
            self.stats.dropped += 1;
            return;
        };
        match binding {
            Binding::Request { txid, username, use_candidate, .. } => {
                let expected = format!("{}:{}", self.local.ufrag, self.remote.ufrag);
                if username.as_deref() != Some(expected.as_str()) || !message::integrity_ok(bytes, &self.local.pwd) {
                    self.stats.dropped += 1;
                    return;
                }
                self.stats.requests_received += 1;
                self.consent.authenticated(from, bytes.len());
                let response = SuccessResponse { mapped: Some(from), pwd: Some(&self.local.pwd), ..Default::default() };
                if let Ok(bytes) = message::binding_success(txid, &response) {
                    self.transmits.push_back(Transmit { socket, to: from, bytes });
                }
                if self.outcome.is_some() {
                    return;
                }
                // Peer-reflexive or known: a triggered check right away.
                let lan = is_local_ip(from.ip()) && !matches!(self.plan, Plan::Listen { .. } | Plan::Spray(_));
                let i = self.add_pair(socket, from, lan, now);
                if self.pairs[i].valid.is_none() {
                    self.pairs[i].next_check = now;
                    self.pairs[i].interval = self.config.check_interval;
                }
                if use_candidate && !self.controlling {
                    let pair = &self.pairs[i];
                    self.outcome = Some(Outcome::Selected(Selected {
                        socket,
                        remote: from,
                        rtt: pair.valid.flatten(),
                        lan: pair.lan,
                    }));
                    return;
                }
                self.handle_timeout(now);
            }
            Binding::Success { txid, .. } => {
                let Some(&(sent_on, sent_to, sent_at)) = self.in_flight.get(&txid) else {
                    self.stats.dropped += 1;
                    return;
                };
                if !message::integrity_ok(bytes, &self.remote.pwd) {
                    self.stats.dropped += 1;
                    return;
                }
                self.in_flight.remove(&txid);
                self.consent.authenticated(from, bytes.len());
                // The response must come back the way the request went.
                if sent_on != socket || sent_to != from {
                    self.stats.dropped += 1;
                    return;
                }
                if self.outcome.is_some() {
                    return;
                }
                let lan = self.pairs.iter().find(|p| p.socket == socket && p.remote == from).is_some_and(|p| p.lan);
                let i = self.add_pair(socket, from, lan, now);
                if self.pairs[i].valid.is_none() {
                    self.pairs[i].valid = Some(Some(now.saturating_duration_since(sent_at)));
                }
                if self.nominate_at.is_none() {
                    let rtt = now.saturating_duration_since(sent_at);
                    let longest = self.config.nomination_wait.max(MIN_NOMINATION_WAIT);
                    self.nominate_at = Some(now + rtt.clamp(MIN_NOMINATION_WAIT, longest));
                }
                if self.controlling {
                    self.handle_timeout(now);
                }
            }
            Binding::Error { txid, .. } => {
                self.in_flight.remove(&txid);
                self.stats.dropped += 1;
            }
            Binding::Indication => {}
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`CheckAgent::handle_timeout`] must run next; `None` once the
    /// checks ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            return None;
        }
        let mut next = self.deadline;
        for pair in self.pairs.iter().filter(|p| p.valid.is_none()) {
            next = next.min(pair.next_check);
        }
        if let Some(spray) = &self.spray
            && spray.next < spray.ports.len()
            && self.consent.is_proven(spray.ip)
        {
            next = next.min(spray.next_at);
        }
        if self.controlling
            && let Some(nominate_at) = self.nominate_at
        {
            next = next.min(nominate_at);
        }
        Some(next)
    }
}

/// Ports to try for a sequential allocator: the next `span` allocations
/// after `last` with step `delta` (both sides of `last` for delta 0).
pub fn predicted_ports(last: u16, delta: i32, span: u16) -> Vec<u16> {
    let mut ports = Vec::with_capacity(usize::from(span));
    let step = if delta == 0 { 1 } else { delta };
    for k in 1..=i32::from(span) {
        let offsets: &[i32] = if delta == 0 { &[k, -k] } else { &[k] };
        for &offset in offsets {
            let port = i32::from(last) + step * offset;
            if (1024..=i32::from(u16::MAX)).contains(&port) {
                ports.push(port as u16);
            }
        }
    }
    if delta == 0 {
        ports.insert(0, last);
    }
    ports.truncate(usize::from(span).max(1));
    ports
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn creds(ufrag: &str) -> CheckCredentials {
        CheckCredentials { ufrag: ufrag.into(), pwd: format!("{ufrag}-password-0123456789") }
    }

    /// An agent: the controlling side is "aaaa", the controlled "bbbb".
    fn agent(
        cfg: CheckConfig,
        controlling: bool,
        candidates: &[Candidate],
        plan: Plan,
        aux: u16,
        seed: u64,
        t0: Instant,
    ) -> CheckAgent {
        // Signaling vouches for the peer's public IP, as ours does.
        let vouched = candidates.iter().find(|c| c.kind == CandidateKind::ServerReflexive).map(|c| c.addr.ip());
        agent_with_consent(cfg, controlling, candidates, plan, aux, seed, Consent::new(400, vouched), t0)
    }

    #[allow(clippy::too_many_arguments)]
    fn agent_with_consent(
        cfg: CheckConfig,
        controlling: bool,
        candidates: &[Candidate],
        plan: Plan,
        aux: u16,
        seed: u64,
        consent: Consent,
        t0: Instant,
    ) -> CheckAgent {
        let (local, remote) = if controlling { ("aaaa", "bbbb") } else { ("bbbb", "aaaa") };
        CheckAgent::new(cfg, controlling, creds(local), creds(remote), candidates, plan, aux, seed, consent, t0)
    }

    fn cand(kind: CandidateKind, addr: &str) -> Candidate {
        Candidate { kind, addr: addr.parse().expect("addr") }
    }

    /// Two agents wired through a simulated network: `deliver` decides
    /// whether a datagram from (side, socket) to an address arrives and as
    /// which source address.
    struct Net<F: FnMut(bool, SocketRef, SocketAddr) -> Option<(SocketRef, SocketAddr)>> {
        a: CheckAgent,
        b: CheckAgent,
        deliver: F,
    }

    impl<F: FnMut(bool, SocketRef, SocketAddr) -> Option<(SocketRef, SocketAddr)>> Net<F> {
        /// Runs until both ended or `limit`; returns the time taken.
        fn run(&mut self, start: Instant, limit: Duration) -> Duration {
            let mut now = start;
            let latency = Duration::from_millis(5);
            let mut in_flight: Vec<(Instant, bool, SocketRef, SocketAddr, Vec<u8>)> = Vec::new();
            while now < start + limit {
                self.a.handle_timeout(now);
                self.b.handle_timeout(now);
                for (to_b, agent) in [(true, &mut self.a), (false, &mut self.b)] {
                    while let Some(t) = agent.poll_transmit() {
                        if let Some((socket, from)) = (self.deliver)(to_b, t.socket, t.to) {
                            in_flight.push((now + latency, to_b, socket, from, t.bytes));
                        }
                    }
                }
                let (due, rest): (Vec<_>, Vec<_>) = in_flight.into_iter().partition(|d| d.0 <= now);
                in_flight = rest;
                for (_, to_b, socket, from, bytes) in due {
                    let agent = if to_b { &mut self.b } else { &mut self.a };
                    agent.handle_datagram(socket, from, &bytes, now);
                }
                if self.a.outcome().is_some() && self.b.outcome().is_some() && in_flight.is_empty() {
                    break;
                }
                now += Duration::from_millis(1);
            }
            now - start
        }
    }

    #[test]
    fn open_pair_connects_and_both_sides_agree() {
        let t0 = Instant::now();
        let a_addr: SocketAddr = "203.0.113.1:4000".parse().expect("addr");
        let b_addr: SocketAddr = "203.0.113.2:5000".parse().expect("addr");
        let cfg = CheckConfig::default();
        let a =
            agent(cfg, true, &[cand(CandidateKind::ServerReflexive, "203.0.113.2:5000")], Plan::Simultaneous, 0, 1, t0);
        let b = agent(
            cfg,
            false,
            &[cand(CandidateKind::ServerReflexive, "203.0.113.1:4000")],
            Plan::Simultaneous,
            0,
            2,
            t0,
        );
        let mut net = Net {
            a,
            b,
            deliver: |to_b, socket, to| {
                assert_eq!(socket, SocketRef::Main);
                if to_b {
                    (to == b_addr).then_some((SocketRef::Main, a_addr))
                } else {
                    (to == a_addr).then_some((SocketRef::Main, b_addr))
                }
            },
        };
        let took = net.run(t0, Duration::from_secs(10));
        assert!(took < Duration::from_millis(200), "took {took:?}");
        let Some(Outcome::Selected(sa)) = net.a.outcome() else { panic!("{:?}", net.a.outcome()) };
        let Some(Outcome::Selected(sb)) = net.b.outcome() else { panic!("{:?}", net.b.outcome()) };
        assert_eq!(sa.remote, b_addr);
        assert_eq!(sb.remote, a_addr);
        assert!(
            sa.rtt.is_some_and(|rtt| rtt >= Duration::from_millis(10) && rtt <= Duration::from_millis(12)),
            "{:?}",
            sa.rtt
        );
    }

    #[test]
    fn lan_pair_wins_over_a_faster_wan_pair() {
        let t0 = Instant::now();
        let cfg = CheckConfig::default();
        let candidates =
            [cand(CandidateKind::ServerReflexive, "203.0.113.2:5000"), cand(CandidateKind::Host, "10.0.0.2:5000")];
        let mut a = agent(cfg, true, &candidates, Plan::Simultaneous, 0, 1, t0);
        let mut sent = Vec::new();
        a.handle_timeout(t0);
        while let Some(t) = a.poll_transmit() {
            sent.push(t);
        }
        assert_eq!(sent.len(), 2);
        let answer = |t: &Transmit, agent: &mut CheckAgent, at: Instant| {
            let Ok(Binding::Request { txid, .. }) = message::decode(&t.bytes) else { panic!() };
            let response = message::binding_success(
                txid,
                &SuccessResponse {
                    mapped: Some("1.1.1.1:1".parse().expect("a")),
                    pwd: Some(&creds("bbbb").pwd),
                    ..Default::default()
                },
            )
            .expect("encode");
            agent.handle_datagram(t.socket, t.to, &response, at);
        };
        // The WAN pair answers first, the LAN pair 2 ms later (within the
        // nomination wait: the first pair's RTT, at least 5 ms).
        answer(&sent[0], &mut a, t0 + Duration::from_millis(2));
        assert!(a.outcome().is_none(), "waits for a better pair");
        a.handle_timeout(t0 + Duration::from_millis(3));
        assert!(a.outcome().is_none(), "still within the wait");
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_millis(7)));
        answer(&sent[1], &mut a, t0 + Duration::from_millis(4));
        let Some(Outcome::Selected(selected)) = a.outcome() else { panic!("{:?}", a.outcome()) };
        assert!(selected.lan);
        assert_eq!(selected.remote, "10.0.0.2:5000".parse::<SocketAddr>().expect("a"));
        // The nomination carries USE-CANDIDATE.
        let nomination = a.poll_transmit().expect("nomination");
        assert!(matches!(message::decode(&nomination.bytes), Ok(Binding::Request { use_candidate: true, .. })));
    }

    #[test]
    fn an_ipv6_pair_wins_over_a_faster_ipv4_pair_and_is_checked_when_ipv4_needs_a_relay() {
        let t0 = Instant::now();
        let cfg = CheckConfig::default();
        let v6: SocketAddr = "[2001:db8:b::2]:5000".parse().expect("a");
        let candidates =
            [cand(CandidateKind::ServerReflexive, "203.0.113.2:5000"), cand(CandidateKind::Host, &v6.to_string())];
        let mut a = agent(cfg, true, &candidates, Plan::Simultaneous, 0, 1, t0);
        a.handle_timeout(t0);
        let sent: Vec<Transmit> = std::iter::from_fn(|| a.poll_transmit()).collect();
        assert_eq!(sent.len(), 2);
        let answer = |t: &Transmit, agent: &mut CheckAgent, at: Instant| {
            let Ok(Binding::Request { txid, .. }) = message::decode(&t.bytes) else { panic!() };
            let response = message::binding_success(
                txid,
                &SuccessResponse { mapped: Some(t.to), pwd: Some(&creds("bbbb").pwd), ..Default::default() },
            )
            .expect("encode");
            agent.handle_datagram(t.socket, t.to, &response, at);
        };
        // IPv4 answers in 2 ms, IPv6 in 4 ms: IPv6 is nominated.
        answer(&sent[0], &mut a, t0 + Duration::from_millis(2));
        answer(&sent[1], &mut a, t0 + Duration::from_millis(4));
        a.handle_timeout(t0 + Duration::from_millis(20));
        let Some(Outcome::Selected(selected)) = a.outcome() else { panic!("{:?}", a.outcome()) };
        assert_eq!(selected.remote, v6);

        // Symmetric × symmetric IPv4 NATs need the relay, yet the IPv6
        // address is checked (no NAT there).
        let plan = Plan::RelayRequired("symmetric × symmetric NATs with random ports".into());
        let mut a = agent(cfg, true, &candidates, plan, 0, 1, t0);
        a.handle_timeout(t0);
        let sent: Vec<SocketAddr> = std::iter::from_fn(|| a.poll_transmit()).map(|t| t.to).collect();
        assert_eq!(sent, [v6]);
    }

    #[test]
    fn requests_with_bad_credentials_or_garbage_are_dropped() {
        let t0 = Instant::now();
        let mut b = agent(
            CheckConfig::default(),
            false,
            &[cand(CandidateKind::Host, "10.0.0.1:1")],
            Plan::Simultaneous,
            0,
            1,
            t0,
        );
        b.handle_timeout(t0);
        while b.poll_transmit().is_some() {}
        let from: SocketAddr = "198.51.100.9:9".parse().expect("a");
        let wrong_pwd = message::binding_request(
            [1; 12],
            &BindingRequest { auth: Some(("bbbb:aaaa", "not the password at all")), ..Default::default() },
        )
        .expect("enc");
        let wrong_user = message::binding_request(
            [2; 12],
            &BindingRequest { auth: Some(("bbbb:zzzz", &creds("bbbb").pwd)), ..Default::default() },
        )
        .expect("enc");
        let unsolicited = message::binding_success([3; 12], &SuccessResponse::default()).expect("enc");
        for bytes in [&wrong_pwd[..], &wrong_user, &unsolicited, b"garbage", &wrong_pwd[..30]] {
            b.handle_datagram(SocketRef::Main, from, bytes, t0);
        }
        assert_eq!(b.poll_transmit(), None, "nothing answered");
        assert_eq!(b.stats().dropped, 5);
        assert_eq!(b.stats().requests_received, 0);
    }

    #[test]
    fn budget_expiry_fails_with_the_reason() {
        let t0 = Instant::now();
        let cfg = CheckConfig { budget: Duration::from_millis(300), ..CheckConfig::default() };
        let mut a =
            agent(cfg, true, &[cand(CandidateKind::ServerReflexive, "203.0.113.2:5000")], Plan::Simultaneous, 0, 1, t0);
        let mut now = t0;
        let mut sends = 0;
        while a.outcome().is_none() {
            a.handle_timeout(now);
            while a.poll_transmit().is_some() {
                sends += 1;
            }
            now = a.poll_timeout().unwrap_or(now);
        }
        assert_eq!(now - t0, Duration::from_millis(300));
        // 0, 50, 150 ms (then 350 is past the budget).
        assert_eq!(sends, 3);
        let Some(Outcome::Failed(reason)) = a.outcome() else { panic!() };
        assert!(reason.contains("no direct path"), "{reason}");
    }

    #[test]
    fn relay_required_checks_lan_candidates_only_and_fails_fast() {
        let t0 = Instant::now();
        let plan = Plan::RelayRequired("symmetric × symmetric NATs with random ports".into());
        let mut a = agent(
            CheckConfig::default(),
            true,
            &[cand(CandidateKind::ServerReflexive, "203.0.113.2:5000"), cand(CandidateKind::Host, "10.0.0.2:1")],
            plan.clone(),
            0,
            1,
            t0,
        );
        a.handle_timeout(t0);
        let t = a.poll_transmit().expect("one LAN check");
        assert_eq!(t.to, "10.0.0.2:1".parse::<SocketAddr>().expect("a"));
        assert_eq!(a.poll_transmit(), None);
        a.handle_timeout(t0 + Duration::from_secs(1));
        let Some(Outcome::Failed(reason)) = a.outcome() else { panic!() };
        assert_eq!(reason, "relay required: symmetric × symmetric NATs with random ports");
        let a = agent(
            CheckConfig::default(),
            true,
            &[cand(CandidateKind::ServerReflexive, "203.0.113.2:5000")],
            plan,
            0,
            1,
            t0,
        );
        assert!(matches!(a.outcome(), Some(Outcome::Failed(_))), "nothing to check: fails at once");
    }

    /// Port-restricted cone A (EIM, public 203.0.113.1:4000) sprays random
    /// ports at symmetric B (public IP 203.0.113.2, each of B's 256 sockets
    /// mapped to a random port toward A). Deterministic seeds.
    #[test]
    fn birthday_probing_finds_one_of_the_listening_sockets() {
        let cfg = CheckConfig::default();
        let mut probes = Vec::new();
        for seed in 0..20u64 {
            let t0 = Instant::now();
            let a_public: SocketAddr = "203.0.113.1:4000".parse().expect("a");
            let b_ip: IpAddr = "203.0.113.2".parse().expect("ip");
            let mut rng = StdRng::seed_from_u64(seed + 1000);
            // B's mapping per socket toward A (main socket: index 256).
            let mut mapped: HashMap<SocketRef, u16> = HashMap::new();
            for i in 0..256u16 {
                mapped.insert(SocketRef::Aux(i), rng.random_range(1024..=u16::MAX));
            }
            mapped.insert(SocketRef::Main, rng.random_range(1024..=u16::MAX));
            let by_port: HashMap<u16, SocketRef> = mapped.iter().map(|(s, p)| (*p, *s)).collect();
            let a = agent(
                cfg,
                true,
                &[cand(CandidateKind::ServerReflexive, "203.0.113.2:7000")],
                Plan::Spray(SprayKind::Birthday),
                0,
                seed,
                t0,
            );
            let b = agent(
                cfg,
                false,
                &[cand(CandidateKind::ServerReflexive, "203.0.113.1:4000")],
                Plan::Listen { sockets: 256 },
                256,
                seed,
                t0,
            );
            // A's NAT lets in only sources A sent to; B's only A on the port
            // mapped for that socket.
            let mut a_sent_to: HashSet<SocketAddr> = HashSet::new();
            let mut net = Net {
                a,
                b,
                deliver: move |to_b, socket, to| {
                    if to_b {
                        a_sent_to.insert(to);
                        (to.ip() == b_ip).then(|| by_port.get(&to.port()).map(|s| (*s, a_public))).flatten()
                    } else {
                        let from = SocketAddr::new(b_ip, mapped[&socket]);
                        (to == a_public && a_sent_to.contains(&from)).then_some((SocketRef::Main, from))
                    }
                },
            };
            net.run(t0, Duration::from_secs(10));
            let Some(Outcome::Selected(sa)) = net.a.outcome() else { panic!("seed {seed}: {:?}", net.a.outcome()) };
            let Some(Outcome::Selected(sb)) = net.b.outcome() else { panic!("seed {seed}: {:?}", net.b.outcome()) };
            assert!(matches!(sb.socket, SocketRef::Aux(_)));
            assert_eq!(sa.remote.ip(), b_ip);
            probes.push(net.a.stats().probes_sent);
        }
        probes.sort_unstable();
        println!("probes per run: {probes:?}");
        assert!(probes[19] <= cfg.max_spray_probes);
        assert!(probes[10] < 1000, "median probes {probes:?}");
    }

    /// Runs `agent` alone (nobody answers) until it ends; returns the
    /// transmits.
    fn run_alone(agent: &mut CheckAgent, t0: Instant) -> Vec<Transmit> {
        let mut now = t0;
        let mut sent = Vec::new();
        while agent.outcome().is_none() {
            agent.handle_timeout(now);
            while let Some(t) = agent.poll_transmit() {
                sent.push(t);
            }
            now = agent.poll_timeout().unwrap_or(now).max(now + Duration::from_millis(1));
        }
        sent
    }

    /// A forged offer: the "peer" names a victim as its public address and
    /// claims a symmetric NAT, so the plan is to spray the victim's ports
    /// (or to listen toward it); signaling saw the peer elsewhere.
    #[test]
    fn a_forged_offer_cannot_aim_probes_at_a_third_party() {
        let offer_bytes = 426;
        let victim = cand(CandidateKind::ServerReflexive, "192.0.2.50:5000");
        let attacker: IpAddr = "198.51.100.66".parse().expect("ip");
        for (plan, aux) in [(Plan::Spray(SprayKind::Birthday), 0), (Plan::Listen { sockets: 256 }, 256)] {
            let t0 = Instant::now();
            let consent = Consent::new(offer_bytes, Some(attacker));
            let mut b = agent_with_consent(
                CheckConfig::default(),
                false,
                std::slice::from_ref(&victim),
                plan.clone(),
                aux,
                7,
                consent,
                t0,
            );
            let sent = run_alone(&mut b, t0);
            let bytes: usize = sent.iter().map(|t| t.bytes.len()).sum();
            assert!(sent.iter().all(|t| t.to.ip() == victim.addr.ip()));
            assert!(
                bytes as u64 <= super::super::consent::AMPLIFICATION * offer_bytes as u64,
                "{plan}: {bytes} bytes to the victim for a {offer_bytes}-byte offer"
            );
            assert!(!sent.is_empty(), "{plan}: a few checks still go out (the peer might be there)");
            assert_eq!(b.stats().probes_sent, 0, "{plan}: no spraying");
            assert!(b.stats().withheld > 0);
            let Some(Outcome::Failed(reason)) = b.outcome() else { panic!("{:?}", b.outcome()) };
            if plan == Plan::Spray(SprayKind::Birthday) {
                assert!(reason.contains("never proved its public IP"), "{reason}");
            }
        }
    }

    /// Spraying starts, at its pace, once an authenticated check arrives
    /// from the peer's IP (any port), even without signaling's word.
    #[test]
    fn probing_starts_when_the_peer_proves_its_ip() {
        let t0 = Instant::now();
        let public = cand(CandidateKind::ServerReflexive, "203.0.113.2:7000");
        let mut a = agent_with_consent(
            CheckConfig::default(),
            true,
            std::slice::from_ref(&public),
            Plan::Spray(SprayKind::Birthday),
            0,
            3,
            Consent::new(400, None),
            t0,
        );
        a.handle_timeout(t0);
        let mut sent = 0;
        while a.poll_transmit().is_some() {
            sent += 1;
        }
        assert_eq!((sent, a.stats().probes_sent), (1, 0), "one check, no probe");
        let later = t0 + Duration::from_millis(300);
        a.handle_timeout(later);
        while a.poll_transmit().is_some() {}
        assert_eq!(a.stats().probes_sent, 0);
        // The peer's check from another port of its IP (its symmetric NAT).
        let request = message::binding_request(
            [9; 12],
            &BindingRequest { auth: Some(("aaaa:bbbb", &creds("aaaa").pwd)), ..Default::default() },
        )
        .expect("encode");
        a.handle_datagram(SocketRef::Main, "203.0.113.2:40001".parse().expect("a"), &request, later);
        while a.poll_transmit().is_some() {}
        let probes_then = a.stats().probes_sent;
        assert!(probes_then <= 1, "no burst of the probes due since t0: {probes_then}");
        a.handle_timeout(later + Duration::from_millis(100));
        let probes = a.stats().probes_sent;
        assert!((100..=102).contains(&probes), "1,000 probes/s for 100 ms: {probes}");
    }

    #[test]
    fn predicted_ports_follow_the_allocator() {
        assert_eq!(predicted_ports(5000, 2, 3), vec![5002, 5004, 5006]);
        assert_eq!(predicted_ports(5000, -1, 2), vec![4999, 4998]);
        assert_eq!(predicted_ports(5000, 0, 5), vec![5000, 5001, 4999, 5002, 4998]);
        assert_eq!(predicted_ports(65535, 1, 3), Vec::<u16>::new());
    }
}
