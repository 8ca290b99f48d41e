//! The RFC 5780 NAT behaviour discovery procedure as a sans-IO state
//! machine: it says which binding request to send from which of its four
//! sockets, takes the responses and `now`, and ends with a [`NatReport`].
//!
//! Sockets: `Mapping` runs the mapping tests (RFC 5780 section 4.3) and the
//! hairpinning test; `Filtering` talks only to the primary address, since
//! any other traffic would open the filter (section 4.4); `Sample1` and
//! `Sample2` each make one more mapping, to see how ports are allocated.

use std::net::SocketAddr;
use std::time::Instant;

use super::NatError;
use super::classify::{NatReport, filtering_behaviour, mapping_behaviour, port_allocation};
use super::message::{self, Binding, BindingRequest};
use super::transaction::{RetransmitPolicy, Step, Transaction};
use crate::signal::protocol::{NatBehaviour, PortAllocation};

/// The procedure's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeSocket {
    /// Mapping and hairpinning tests.
    Mapping,
    /// Filtering tests (talks only to the primary address).
    Filtering,
    /// First port-allocation sample.
    Sample1,
    /// Second port-allocation sample.
    Sample2,
}

impl ProbeSocket {
    /// All four, in the order the driver binds them.
    pub const ALL: [ProbeSocket; 4] =
        [ProbeSocket::Mapping, ProbeSocket::Filtering, ProbeSocket::Sample1, ProbeSocket::Sample2];

    /// Position in [`ProbeSocket::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which test a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    /// Test I: primary address.
    MappingI,
    /// Test II: alternate IP, primary port.
    MappingII,
    /// Test III: alternate IP and port.
    MappingIII,
    /// Filtering socket's first request to the primary address.
    FilteringI,
    /// CHANGE-REQUEST change IP and port.
    FilteringBoth,
    /// CHANGE-REQUEST change port.
    FilteringPort,
    /// Request to the own public address.
    Hairpin,
    /// A sample mapping.
    Sample,
}

#[derive(Debug)]
struct Pending {
    socket: ProbeSocket,
    test: Test,
    transaction: Transaction,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTransmit {
    /// From which socket.
    pub socket: ProbeSocket,
    /// To whom.
    pub to: SocketAddr,
    /// The binding request.
    pub bytes: Vec<u8>,
}

/// The procedure's state.
#[derive(Debug)]
pub struct Procedure {
    server: SocketAddr,
    policy: RetransmitPolicy,
    locals: [SocketAddr; 4],
    pending: Vec<Pending>,
    transmits: Vec<ProbeTransmit>,
    report: NatReport,
    other: Option<SocketAddr>,
    x1: Option<SocketAddr>,
    x2: Option<SocketAddr>,
    x3: Option<SocketAddr>,
    changed_both: bool,
    changed_port: Option<bool>,
    /// `(local port, public port)` of the mapping socket's mappings (tests
    /// I, II, III: new ones unless mapping is endpoint-independent).
    mapping_samples: Vec<(u16, u16)>,
    /// `(local port, public port)` of the other sockets' first mappings, in
    /// the order they were made.
    socket_samples: Vec<(u16, u16)>,
    /// Test I transactions that went unanswered.
    silent_test_i: u32,
    error: Option<NatError>,
    done: bool,
}

/// Unanswered test I transactions that mean UDP is blocked. One more
/// than one: a lossy path (a radio link, the NAT lab's 10 % drop each way)
/// loses a whole five-send transaction now and then (0.19⁵, about one
/// classification in 4,000), and a node that believes UDP blocked relays
/// every connect; two in a row (about one in 16 million) cost a blocked
/// network 1.9 s more.
const SILENT_TEST_I_FOR_BLOCKED: u32 = 2;

impl Procedure {
    /// Starts with test I against `server`; `locals` are the local
    /// addresses of the four sockets, in [`ProbeSocket::ALL`] order.
    pub fn new(server: SocketAddr, locals: [SocketAddr; 4], policy: RetransmitPolicy, now: Instant) -> Self {
        let report = NatReport {
            local: locals[0],
            public: None,
            mapping: NatBehaviour::Unknown,
            filtering: NatBehaviour::Unknown,
            allocation: PortAllocation::Unknown,
            hairpinning: None,
            udp_blocked: false,
            rfc5780: false,
        };
        let mut procedure = Self {
            server,
            policy,
            locals,
            pending: Vec::new(),
            transmits: Vec::new(),
            report,
            other: None,
            x1: None,
            x2: None,
            x3: None,
            changed_both: false,
            changed_port: None,
            mapping_samples: Vec::new(),
            socket_samples: Vec::new(),
            silent_test_i: 0,
            error: None,
            done: false,
        };
        procedure.start(ProbeSocket::Mapping, Test::MappingI, server, BindingRequest::default(), now);
        procedure
    }

    fn start(&mut self, socket: ProbeSocket, test: Test, to: SocketAddr, request: BindingRequest<'_>, now: Instant) {
        let txid = message::random_txid();
        match message::binding_request(txid, &request) {
            Ok(bytes) => {
                let transaction = Transaction::new(txid, to, bytes, self.policy, now);
                self.pending.push(Pending { socket, test, transaction });
            }
            Err(e) => self.error = Some(e.into()),
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<ProbeTransmit> {
        self.transmits.pop()
    }

    /// When [`Procedure::handle_timeout`] must run next; `None` when done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        self.pending.iter().filter_map(|p| p.transaction.next_at()).min()
    }

    /// Sends what is due and gives up on tests that timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        for (i, pending) in self.pending.iter_mut().enumerate() {
            loop {
                match pending.transaction.poll(now) {
                    Step::Send(bytes, to) => {
                        self.transmits.insert(0, ProbeTransmit { socket: pending.socket, to, bytes: bytes.to_vec() })
                    }
                    Step::TimedOut => {
                        timed_out.push(i);
                        break;
                    }
                    Step::WaitUntil(_) | Step::Done => break,
                }
            }
        }
        for i in timed_out.into_iter().rev() {
            let pending = self.pending.remove(i);
            self.on_result(pending.socket, pending.test, None, now);
        }
        self.finish_if_idle();
    }

    /// Feeds a datagram received on `socket` from `from`.
    pub fn handle_datagram(&mut self, socket: ProbeSocket, from: SocketAddr, bytes: &[u8], now: Instant) {
        let Ok(binding) = message::decode(bytes) else { return };
        let Some(txid) = binding.txid() else { return };
        let Some(i) = self.pending.iter_mut().position(|p| p.socket == socket && p.transaction.on_response(&txid))
        else {
            return;
        };
        let pending = self.pending.remove(i);
        self.on_result(pending.socket, pending.test, Some((binding, from)), now);
        self.finish_if_idle();
    }

    fn on_result(&mut self, socket: ProbeSocket, test: Test, reply: Option<(Binding, SocketAddr)>, now: Instant) {
        let mapped = match &reply {
            Some((Binding::Success { mapped, .. }, _)) => *mapped,
            _ => None,
        };
        let plain = BindingRequest::default;
        let local_port = self.locals[socket.index()].port();
        match test {
            Test::MappingI => match reply {
                Some((Binding::Success { mapped: Some(x1), other, .. }, _)) => {
                    self.x1 = Some(x1);
                    self.report.public = Some(x1);
                    self.mapping_samples.push((local_port, x1.port()));
                    // An OTHER-ADDRESS sharing the IP or port is as good as none.
                    self.other = other.filter(|o| o.ip() != self.server.ip() && o.port() != self.server.port());
                    self.report.rfc5780 = self.other.is_some();
                    match self.other {
                        Some(other) => {
                            let to = SocketAddr::new(other.ip(), self.server.port());
                            self.start(ProbeSocket::Mapping, Test::MappingII, to, plain(), now);
                        }
                        None => self.start(ProbeSocket::Mapping, Test::Hairpin, x1, plain(), now),
                    }
                }
                Some((Binding::Error { code, reason, .. }, _)) => {
                    self.error = Some(NatError::Server(format!("binding refused with {code} {reason}")));
                }
                _ => {
                    self.silent_test_i += 1;
                    if self.silent_test_i < SILENT_TEST_I_FOR_BLOCKED {
                        self.start(ProbeSocket::Mapping, Test::MappingI, self.server, plain(), now);
                    } else {
                        self.report.udp_blocked = true;
                    }
                }
            },
            Test::MappingII => {
                self.x2 = mapped;
                self.mapping_samples.extend(mapped.map(|x2| (local_port, x2.port())));
                match (mapped, self.x1, self.other) {
                    (Some(x2), Some(x1), Some(other)) if x2 != x1 => {
                        self.start(ProbeSocket::Mapping, Test::MappingIII, other, plain(), now)
                    }
                    _ => self.start_parallel_tests(now),
                }
            }
            Test::MappingIII => {
                self.x3 = mapped;
                self.mapping_samples.extend(mapped.map(|x3| (local_port, x3.port())));
                self.start_parallel_tests(now);
            }
            Test::FilteringI => {
                if let Some(own) = mapped {
                    self.socket_samples.push((local_port, own.port()));
                    let server = self.server;
                    let both = BindingRequest { change_ip: true, change_port: true, ..plain() };
                    self.start(ProbeSocket::Filtering, Test::FilteringBoth, server, both, now);
                    let port = BindingRequest { change_port: true, ..plain() };
                    self.start(ProbeSocket::Filtering, Test::FilteringPort, server, port, now);
                }
            }
            // Only a response from the changed address counts: a server
            // that ignores CHANGE-REQUEST answers from the primary one.
            Test::FilteringBoth => {
                self.changed_both = reply.as_ref().is_some_and(|(b, from)| {
                    matches!(b, Binding::Success { .. })
                        && from.ip() != self.server.ip()
                        && from.port() != self.server.port()
                });
            }
            Test::FilteringPort => {
                self.changed_port = Some(reply.as_ref().is_some_and(|(b, from)| {
                    matches!(b, Binding::Success { .. })
                        && from.ip() == self.server.ip()
                        && from.port() != self.server.port()
                }));
            }
            Test::Hairpin => {
                self.report.hairpinning = Some(matches!(reply, Some((Binding::Request { .. }, _))));
            }
            Test::Sample => {
                self.socket_samples.extend(mapped.map(|public| (local_port, public.port())));
            }
        }
    }

    /// After the mapping tests: filtering, hairpinning and (for
    /// endpoint-independent mapping) the allocation samples, all at once.
    fn start_parallel_tests(&mut self, now: Instant) {
        let Some(x1) = self.x1 else { return };
        self.report.mapping = mapping_behaviour(x1, self.x2, self.x3);
        let server = self.server;
        self.start(ProbeSocket::Filtering, Test::FilteringI, server, BindingRequest::default(), now);
        self.start(ProbeSocket::Mapping, Test::Hairpin, x1, BindingRequest::default(), now);
        if self.report.mapping == NatBehaviour::EndpointIndependent {
            self.start(ProbeSocket::Sample1, Test::Sample, server, BindingRequest::default(), now);
            self.start(ProbeSocket::Sample2, Test::Sample, server, BindingRequest::default(), now);
        }
    }

    fn finish_if_idle(&mut self) {
        if !self.pending.is_empty() || self.done {
            return;
        }
        self.done = true;
        if self.report.rfc5780 {
            self.report.filtering = match self.changed_port {
                Some(_) => filtering_behaviour(self.changed_both, self.changed_port),
                None => NatBehaviour::Unknown,
            };
        }
        // With endpoint-independent mapping the mapping socket has one
        // mapping and each socket adds one; otherwise each test made one.
        let samples: Vec<(u16, u16)> = if self.report.mapping == NatBehaviour::EndpointIndependent {
            self.mapping_samples.iter().take(1).chain(&self.socket_samples).copied().collect()
        } else {
            self.mapping_samples.clone()
        };
        if self.x1.is_some() {
            self.report.allocation = port_allocation(&samples);
        }
    }

    /// The report once the procedure ended, or its error.
    pub fn result(&mut self) -> Option<Result<NatReport, NatError>> {
        if let Some(error) = self.error.take() {
            self.done = true;
            return Some(Err(error));
        }
        self.done.then(|| Ok(self.report.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    use super::*;
    use crate::nat::server::StunResponder;

    fn a(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    /// A simulated NAT in front of the four sockets and a server.
    struct Lab {
        server: Option<StunResponder>,
        /// Public port per (socket, destination) key.
        mappings: HashMap<(ProbeSocket, Option<SocketAddr>), u16>,
        next_port: u16,
        endpoint_independent: bool,
        /// Filtering: `true` filters by address and port, `false` by
        /// address, `None` does not filter.
        filter_port: Option<bool>,
        sent_to: HashSet<(ProbeSocket, SocketAddr)>,
        preserve: bool,
        /// Requests lost on the way before any gets through.
        lose_first: usize,
    }

    const PUBLIC_IP: &str = "203.0.113.9";

    impl Lab {
        fn public(&mut self, socket: ProbeSocket, to: SocketAddr, locals: &[SocketAddr; 4]) -> SocketAddr {
            let key = (socket, (!self.endpoint_independent).then_some(to));
            let preserve = self.preserve;
            let next = &mut self.next_port;
            let port = *self.mappings.entry(key).or_insert_with(|| {
                if preserve {
                    locals[socket.index()].port()
                } else {
                    *next += 1;
                    *next
                }
            });
            SocketAddr::new(PUBLIC_IP.parse().expect("ip"), port)
        }

        fn passes(&self, socket: ProbeSocket, from: SocketAddr) -> bool {
            match self.filter_port {
                None => true,
                Some(true) => self.sent_to.contains(&(socket, from)),
                Some(false) => self.sent_to.iter().any(|(s, to)| *s == socket && to.ip() == from.ip()),
            }
        }

        /// Runs the procedure to its end; returns the report and the time.
        fn run(&mut self) -> (Result<NatReport, NatError>, Duration) {
            let locals = [a("10.0.0.2:4000"), a("10.0.0.2:4001"), a("10.0.0.2:4002"), a("10.0.0.2:4003")];
            let server = a("198.51.100.1:3478");
            let t0 = Instant::now();
            let mut now = t0;
            let mut p = Procedure::new(server, locals, RetransmitPolicy::DISCOVERY, now);
            loop {
                p.handle_timeout(now);
                while let Some(t) = p.poll_transmit() {
                    if self.lose_first > 0 {
                        self.lose_first -= 1;
                        continue;
                    }
                    let public = self.public(t.socket, t.to, &locals);
                    self.sent_to.insert((t.socket, t.to));
                    if t.to == public {
                        // Hairpinning: this NAT does not.
                        continue;
                    }
                    let Some(server) = &self.server else { continue };
                    let Some(response) = server.respond(t.to, public, &t.bytes) else { continue };
                    if self.passes(t.socket, response.from) {
                        p.handle_datagram(t.socket, response.from, &response.bytes, now);
                    }
                }
                if let Some(result) = p.result() {
                    return (result, now - t0);
                }
                now = p.poll_timeout().expect("pending work");
            }
        }
    }

    fn lab(endpoint_independent: bool, filter_port: Option<bool>, preserve: bool) -> Lab {
        Lab {
            server: Some(StunResponder::new(a("198.51.100.1:3478"), Some(a("198.51.100.2:3479"))).expect("valid")),
            mappings: HashMap::new(),
            next_port: 50000,
            endpoint_independent,
            filter_port,
            sent_to: HashSet::new(),
            preserve,
            lose_first: 0,
        }
    }

    #[test]
    fn port_restricted_cone() {
        let (report, took) = lab(true, Some(true), true).run();
        let report = report.expect("report");
        assert_eq!(report.kind_name(), "port-restricted cone");
        assert_eq!(report.mapping, NatBehaviour::EndpointIndependent);
        assert_eq!(report.filtering, NatBehaviour::AddressAndPortDependent);
        assert_eq!(report.allocation, PortAllocation::Preserving);
        assert_eq!(report.hairpinning, Some(false));
        assert_eq!(report.public, Some(a("203.0.113.9:4000")));
        // The filtering tests and hairpinning wait out one transaction.
        assert_eq!(took, RetransmitPolicy::DISCOVERY.total());
    }

    #[test]
    fn address_restricted_and_full_cone() {
        let report = lab(true, Some(false), true).run().0.expect("report");
        assert_eq!(report.filtering, NatBehaviour::AddressDependent);
        let report = lab(true, None, false).run().0.expect("report");
        assert_eq!(report.kind_name(), "full cone");
        // Mappings of the four sockets came out 50001, 50002, 50003, 50004.
        assert_eq!(report.allocation, PortAllocation::Sequential { delta: 1 });
    }

    #[test]
    fn symmetric_with_sequential_ports() {
        let report = lab(false, Some(true), false).run().0.expect("report");
        assert_eq!(report.mapping, NatBehaviour::AddressAndPortDependent);
        assert_eq!(report.kind_name(), "symmetric");
        assert_eq!(report.allocation, PortAllocation::Sequential { delta: 1 });
    }

    #[test]
    fn silence_means_udp_blocked_after_two_transactions() {
        let mut silent = lab(true, None, true);
        silent.server = None;
        let (report, took) = silent.run();
        let report = report.expect("report");
        assert!(report.udp_blocked);
        assert_eq!(report.public, None);
        assert_eq!(took, RetransmitPolicy::DISCOVERY.total() * SILENT_TEST_I_FOR_BLOCKED);
    }

    #[test]
    fn a_lost_first_transaction_is_not_udp_blocked() {
        let sends = RetransmitPolicy::DISCOVERY.max_sends as usize;
        let mut lossy = lab(true, Some(true), true);
        lossy.lose_first = sends;
        let (report, took) = lossy.run();
        let report = report.expect("report");
        assert!(!report.udp_blocked);
        assert_eq!(report.kind_name(), "port-restricted cone");
        assert_eq!(report.public, Some(a("203.0.113.9:4000")));
        assert!(took > RetransmitPolicy::DISCOVERY.total(), "{took:?}");
        // A whole second transaction lost as well: blocked.
        let mut lossier = lab(true, Some(true), true);
        lossier.lose_first = 2 * sends;
        assert!(lossier.run().0.expect("report").udp_blocked);
    }

    #[test]
    fn a_plain_rfc_5389_server_gives_the_public_address_only() {
        let mut plain = lab(true, Some(true), true);
        plain.server = Some(StunResponder::new(a("198.51.100.1:3478"), None).expect("valid"));
        let report = plain.run().0.expect("report");
        assert!(!report.rfc5780);
        assert_eq!(report.public, Some(a("203.0.113.9:4000")));
        assert_eq!(report.mapping, NatBehaviour::Unknown);
        assert_eq!(report.filtering, NatBehaviour::Unknown);
        assert_eq!(report.hairpinning, Some(false));
    }
}
