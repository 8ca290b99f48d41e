//! The WebRTC peer of one browser connection, sans-IO.
//!
//! [`RtcAgent`] answers a browser's DataChannel-only offer and then runs
//! ICE (full, controlled: the node is usually behind a NAT itself), DTLS
//! and SCTP with str0m. It owns no socket and reads no clock: datagrams and
//! `now` go in, [`AgentOutput`]s (datagrams to send, the channel opening,
//! messages, the ending) and the next wake-up time come out.
//!
//! On the channel, binary messages are the connection's messages; text
//! messages are control messages of the browser module (see
//! [`ControlMessage`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, CandidateKind, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};

/// The largest message on a browser connection: what browsers accept on a
/// DataChannel (Chromium and Firefox announce 256 KiB).
pub const MAX_RTC_MESSAGE: usize = 256 * 1024;

/// Most bytes the channel holds for sending, sent or not, until the
/// browser acknowledges them (str0m's own cap; see
/// [`RtcAgent::send_window`] for the one the node applies).
pub const MAX_IN_FLIGHT: usize = 1024 * 1024;

/// The least data in flight the node allows: SCTP does not pace, so what
/// is in flight leaves in one burst, and more than ~64 KiB at once
/// overflows a browser's socket buffer (~90 datagrams at Linux's
/// default) on fast paths; the losses then collapse SCTP's window
/// (device → browser on loopback: 6.6 MB/s at str0m's default of 128 KiB,
/// 24.8 MB/s at 64 KiB).
pub const MIN_IN_FLIGHT: usize = 64 * 1024;

/// The rate the in-flight window is sized for: the window is this rate ×
/// the round trip (the bandwidth-delay product), within
/// [`MIN_IN_FLIGHT`]..[`MAX_IN_FLIGHT`]; 100 Mbit/s.
pub const TARGET_RATE: f64 = 12.5e6;

/// How often the agent samples its statistics (round-trip time, selected
/// pair).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the WebRTC agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcAgentError {
    /// The offer is not valid SDP.
    #[error("malformed SDP offer: {0}")]
    MalformedOffer(String),
    /// The offer asks for something a node does not serve.
    #[error("unsupported offer: {0}")]
    UnsupportedOffer(String),
    /// A trickled candidate could not be parsed.
    #[error("malformed ICE candidate {candidate:?}: {reason}")]
    MalformedCandidate {
        /// The candidate line.
        candidate: String,
        /// What is wrong with it.
        reason: String,
    },
    /// str0m refused an operation.
    #[error("WebRTC: {0}")]
    Rtc(String),
}

/// The node-wide WebRTC identity: one DTLS certificate (making one costs
/// 100–200 ms, far too much per connection) and the crypto backend.
#[derive(Clone)]
pub struct RtcIdentity {
    crypto: Arc<CryptoProvider>,
    cert: DtlsCert,
}

impl std::fmt::Debug for RtcIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcIdentity").finish_non_exhaustive()
    }
}

impl RtcIdentity {
    /// Makes the node's DTLS certificate.
    ///
    /// # Errors
    /// [`RtcAgentError::Rtc`] when the crypto backend cannot make one.
    pub fn generate() -> Result<Self, RtcAgentError> {
        let crypto = str0m::crypto::from_feature_flags();
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| RtcAgentError::Rtc("the crypto backend made no DTLS certificate".into()))?;
        Ok(Self { crypto: Arc::new(crypto), cert })
    }
}

/// A local candidate the agent offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCandidate {
    /// An address of the node's socket on an interface.
    Host(SocketAddr),
    /// The node socket's public address (`base` is the host address it
    /// maps).
    ServerReflexive {
        /// The public address.
        addr: SocketAddr,
        /// The local address behind it.
        base: SocketAddr,
    },
    /// The node's TURN allocation (datagrams from it leave through the
    /// node's TURN client).
    Relayed {
        /// The relayed address.
        addr: SocketAddr,
        /// The node's address the allocation was made from.
        local: SocketAddr,
    },
}

impl LocalCandidate {
    fn to_str0m(self) -> Result<Candidate, RtcAgentError> {
        let made = match self {
            LocalCandidate::Host(addr) => Candidate::host(addr, "udp"),
            LocalCandidate::ServerReflexive { addr, base } => Candidate::server_reflexive(addr, base, "udp"),
            LocalCandidate::Relayed { addr, local } => Candidate::relayed(addr, local, "udp"),
        };
        made.map_err(|e| RtcAgentError::Rtc(format!("local candidate {self:?}: {e}")))
    }
}

/// A control message of the browser module, sent as a text message on the
/// channel (data always travels as binary messages).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ControlMessage {
    /// The sender ends the connection; `error` tells a failure from an
    /// orderly close. Nothing follows it.
    Close {
        /// True for a failure.
        #[serde(default)]
        error: bool,
        /// The reason, for the other side's close event.
        #[serde(default)]
        message: String,
    },
}

impl ControlMessage {
    /// The message as channel text.
    pub fn encode(&self) -> String {
        // Plain data: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes channel text.
    ///
    /// # Errors
    /// A description of what is wrong with it.
    pub fn decode(text: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(text).map_err(|e| format!("bad control message: {e}"))
    }
}

/// A candidate the browser trickled, as the agent took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteCandidate {
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it is on the browser's TURN server.
    pub relayed: bool,
}

/// What the agent asks its driver to do, or tells it.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentOutput {
    /// Send `data` from the local candidate `source` to `destination`.
    Transmit {
        /// The local candidate's address (the relayed address for a
        /// relayed candidate).
        source: SocketAddr,
        /// Where to.
        destination: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// The DataChannel opened: the connection is established.
    Open,
    /// A message arrived.
    Message(Vec<u8>),
    /// The browser closed the connection with a reason.
    CloseRequested {
        /// True for a failure.
        error: bool,
        /// The browser's reason.
        message: String,
    },
    /// The channel's send buffer drained below the low mark: more may be
    /// written.
    Writable,
    /// The connection ended (ICE failed, the browser went away, the
    /// channel closed, a protocol error); nothing follows.
    Closed(String),
}

/// Which way a browser connection's packets travel, and how long a round
/// trip takes, as the agent last measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentPath {
    /// The local candidate of the selected pair.
    pub local: Option<SocketAddr>,
    /// The remote candidate of the selected pair.
    pub remote: Option<SocketAddr>,
    /// Round-trip time, when measured.
    pub rtt: Option<Duration>,
}

/// The WebRTC peer of one browser connection.
pub struct RtcAgent {
    rtc: Rtc,
    local_ufrag: String,
    channel: Option<ChannelId>,
    open: bool,
    ended: bool,
    path: AgentPath,
    /// Where the agent sends non-STUN datagrams now (the nominated pair).
    sending_to: Option<SocketAddr>,
    /// The latest time given.
    now: Instant,
    /// Closing: the close message is on its way; DTLS and SCTP shut down
    /// once it is acknowledged or at this time.
    closing: Option<Instant>,
}

impl std::fmt::Debug for RtcAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcAgent")
            .field("local_ufrag", &self.local_ufrag)
            .field("open", &self.open)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Checks that an offer asks only for data channels: one `m=application`
/// section with the DataChannel protocol, no audio or video.
///
/// # Errors
/// [`RtcAgentError::UnsupportedOffer`] naming what else it asks for.
pub fn check_offer(sdp: &str) -> Result<(), RtcAgentError> {
    let mut data_sections = 0;
    for line in sdp.lines().map(str::trim).filter(|l| l.starts_with("m=")) {
        if line.starts_with("m=application") && line.contains("webrtc-datachannel") {
            data_sections += 1;
        } else {
            let media = line.trim_start_matches("m=").split_whitespace().next().unwrap_or("");
            return Err(RtcAgentError::UnsupportedOffer(format!(
                "media section {media:?}: a node serves data channels only"
            )));
        }
    }
    match data_sections {
        0 => Err(RtcAgentError::UnsupportedOffer("no data channel section".into())),
        1 => Ok(()),
        n => Err(RtcAgentError::UnsupportedOffer(format!("{n} data channel sections (one is served)"))),
    }
}

/// A random ICE token of `len` characters from the ICE alphabet.
fn ice_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

impl RtcAgent {
    /// Answers a browser's offer. Returns the agent and the SDP answer.
    ///
    /// # Errors
    /// [`RtcAgentError`] for a malformed offer, one asking for media, or a
    /// candidate str0m refuses.
    pub fn answer(
        identity: &RtcIdentity,
        offer_sdp: &str,
        candidates: &[LocalCandidate],
        now: Instant,
    ) -> Result<(Self, String), RtcAgentError> {
        check_offer(offer_sdp)?;
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| RtcAgentError::MalformedOffer(e.to_string()))?;
        let local_ufrag = ice_token(8);
        let rtc = RtcConfig::new()
            .set_crypto_provider(identity.crypto.clone())
            .set_dtls_cert(identity.cert.clone())
            .set_local_ice_credentials(IceCreds { ufrag: local_ufrag.clone(), pass: ice_token(24) })
            .set_stats_interval(Some(STATS_INTERVAL))
            .set_sctp_max_buffered_amount(MAX_IN_FLIGHT)
            .build(now);
        let mut agent = Self {
            rtc,
            local_ufrag,
            channel: None,
            open: false,
            ended: false,
            path: AgentPath::default(),
            sending_to: None,
            now,
            closing: None,
        };
        for candidate in candidates {
            agent.rtc.add_local_candidate(candidate.to_str0m()?);
        }
        let answer =
            agent.rtc.sdp_api().accept_offer(offer).map_err(|e| RtcAgentError::MalformedOffer(e.to_string()))?;
        Ok((agent, answer.to_sdp_string()))
    }

    /// The ICE user fragment of this side: STUN requests from the browser
    /// carry it first in their USERNAME.
    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// Adds a candidate the browser trickled (`candidate:…`, with or
    /// without `a=`) and returns it. `None` for a candidate that cannot be
    /// used and is skipped: a hostname (mDNS `.local`) candidate, or one
    /// over TCP; the browser's address is then learned from its checks.
    ///
    /// # Errors
    /// [`RtcAgentError::MalformedCandidate`] for a line that is not a
    /// candidate.
    pub fn add_remote_candidate(&mut self, line: &str) -> Result<Option<RemoteCandidate>, RtcAgentError> {
        let line = line.trim().trim_start_matches("a=");
        let fields: Vec<&str> = line.split_whitespace().collect();
        let malformed =
            |reason: &str| RtcAgentError::MalformedCandidate { candidate: line.into(), reason: reason.into() };
        if !line.starts_with("candidate:") || fields.len() < 8 {
            return Err(malformed(
                "expected candidate:<foundation> <component> <protocol> <priority> <address> <port> typ <type>",
            ));
        }
        if fields[4].ends_with(".local") || !fields[2].eq_ignore_ascii_case("udp") {
            return Ok(None);
        }
        let candidate = Candidate::from_sdp_string(line).map_err(|e| malformed(&e.to_string()))?;
        let added = RemoteCandidate { addr: candidate.addr(), relayed: candidate.kind() == CandidateKind::Relayed };
        self.rtc.add_remote_candidate(candidate);
        Ok(Some(added))
    }

    /// Feeds a received datagram.
    pub fn receive(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        self.now = self.now.max(now);
        let Ok(receive) = Receive::new(Protocol::Udp, source, destination, data) else { return };
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, receive)) {
            self.fail(format!("WebRTC: {e}"));
        }
    }

    /// Advances time to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            self.fail(format!("WebRTC: {e}"));
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::debug!(ufrag = %self.local_ufrag, "browser connection failed: {reason}");
        self.rtc.disconnect();
        self.ended = true;
    }

    /// Whether the agent has ended (after [`AgentOutput::Closed`]).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether the channel is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The selected pair and round-trip time, as last measured.
    pub fn path(&self) -> AgentPath {
        let mut path = self.path;
        if path.remote.is_none() {
            path.remote = self.sending_to;
        }
        path
    }

    /// The next output; else the time the agent wants to be woken (call
    /// [`RtcAgent::handle_timeout`] then), or that it has ended.
    pub fn poll(&mut self) -> AgentPoll {
        loop {
            if self.ended {
                return AgentPoll::Ended;
            }
            if let Some(deadline) = self.closing
                && (self.now >= deadline || self.buffered() == 0)
            {
                self.closing = None;
                if self.rtc.close().is_err() {
                    self.rtc.disconnect();
                }
            }
            let output = match self.rtc.poll_output() {
                Ok(output) => output,
                Err(e) => {
                    self.fail(format!("WebRTC: {e}"));
                    return AgentPoll::Output(AgentOutput::Closed(format!("WebRTC: {e}")));
                }
            };
            match output {
                Output::Timeout(at) => {
                    if !self.rtc.is_alive() {
                        self.ended = true;
                        return AgentPoll::Output(AgentOutput::Closed("the connection closed".into()));
                    }
                    return AgentPoll::WakeAt(self.closing.map_or(at, |deadline| at.min(deadline)));
                }
                Output::Transmit(transmit) => {
                    if transmit.contents.first().is_some_and(|b| (20..64).contains(b)) {
                        self.sending_to = Some(transmit.destination);
                    }
                    return AgentPoll::Output(AgentOutput::Transmit {
                        source: transmit.source,
                        destination: transmit.destination,
                        data: transmit.contents.to_vec(),
                    });
                }
                Output::Event(event) => {
                    if let Some(output) = self.on_event(event) {
                        return AgentPoll::Output(output);
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Option<AgentOutput> {
        match event {
            Event::ChannelOpen(id, label) => {
                if self.channel.is_some() {
                    // One channel per connection: a second one is closed.
                    tracing::debug!(%label, "second data channel refused");
                    self.rtc.direct_api().close_data_channel(id);
                    return None;
                }
                self.channel = Some(id);
                self.open = true;
                if let Some(mut channel) = self.rtc.channel(id) {
                    channel.set_buffered_amount_low_threshold(WRITABLE_MARK);
                }
                Some(AgentOutput::Open)
            }
            Event::ChannelData(data) if Some(data.id) == self.channel => {
                if data.binary {
                    return Some(AgentOutput::Message(data.data));
                }
                match ControlMessage::decode(&data.data) {
                    Ok(ControlMessage::Close { error, message }) => {
                        Some(AgentOutput::CloseRequested { error, message })
                    }
                    Err(problem) => {
                        self.fail(problem.clone());
                        Some(AgentOutput::Closed(format!("protocol: {problem}")))
                    }
                }
            }
            Event::ChannelBufferedAmountLow(id) if Some(id) == self.channel => Some(AgentOutput::Writable),
            Event::ChannelClose(id) if Some(id) == self.channel => {
                self.fail("channel closed".into());
                Some(AgentOutput::Closed("the browser closed the channel".into()))
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail("ICE disconnected".into());
                Some(AgentOutput::Closed("the browser stopped answering (ICE disconnected)".into()))
            }
            Event::Closed => {
                self.ended = true;
                Some(AgentOutput::Closed("the browser closed the connection".into()))
            }
            Event::PeerStats(stats) => {
                self.path.rtt = stats.rtt.or(self.path.rtt);
                if let Some(pair) = stats.selected_candidate_pair {
                    self.path.local = Some(pair.local.addr);
                    self.path.remote = Some(pair.remote.addr);
                }
                None
            }
            _ => None,
        }
    }

    /// Writes one message on the channel (`binary` false for a control
    /// message). Returns false when the send buffer has no room for it now
    /// (try again after [`AgentOutput::Writable`]).
    ///
    /// # Errors
    /// [`RtcAgentError::Rtc`] when the channel is not open or broke.
    pub fn write(&mut self, data: &[u8], binary: bool) -> Result<bool, RtcAgentError> {
        let id = self
            .channel
            .filter(|_| self.open || self.closing.is_some())
            .ok_or_else(|| RtcAgentError::Rtc("channel not open".into()))?;
        let mut channel = self.rtc.channel(id).ok_or_else(|| RtcAgentError::Rtc("channel gone".into()))?;
        channel.write(binary, data).map_err(|e| RtcAgentError::Rtc(e.to_string()))
    }

    /// How much may be in flight now: the bandwidth-delay product of
    /// [`TARGET_RATE`] at the measured round trip, within
    /// [`MIN_IN_FLIGHT`]..[`MAX_IN_FLIGHT`] (the least until a round trip
    /// is measured). Long paths get room for their round trip; short ones
    /// get small bursts.
    pub fn send_window(&self) -> usize {
        let product = self.path.rtt.map_or(0.0, |rtt| TARGET_RATE * rtt.as_secs_f64());
        (product as usize).clamp(MIN_IN_FLIGHT, MAX_IN_FLIGHT)
    }

    /// Bytes written to the channel and not yet acknowledged by the
    /// browser.
    pub fn buffered(&mut self) -> usize {
        let Some(id) = self.channel else { return 0 };
        self.rtc.channel(id).map_or(0, |mut c| c.buffered_amount())
    }

    /// Ends the connection: tells the browser why (when the channel is
    /// open), then shuts DTLS and SCTP down once the browser acknowledged
    /// everything sent, at most [`CLOSE_GRACE`] later.
    pub fn close(&mut self, error: bool, message: &str) {
        if self.ended || self.closing.is_some() {
            return;
        }
        if self.open {
            let control = ControlMessage::Close { error, message: message.to_string() }.encode();
            let _ = self.write(control.as_bytes(), false);
        }
        self.open = false;
        self.closing = Some(self.now + CLOSE_GRACE);
    }
}

/// How long a closing agent waits for the browser to acknowledge what was
/// sent before it shuts the connection down.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The channel's buffered amount below which the agent reports
/// [`AgentOutput::Writable`].
pub const WRITABLE_MARK: usize = 64 * 1024;

/// What [`RtcAgent::poll`] gives.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentPoll {
    /// Something to do or know.
    Output(AgentOutput),
    /// Nothing until this time (or the next input).
    WakeAt(Instant),
    /// The agent has ended; drop it.
    Ended,
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::change::SdpAnswer;
    use str0m::channel::ChannelData;

    const BROWSER: &str = "192.0.2.10:50000";
    const NODE: &str = "192.0.2.20:7700";

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    /// A browser stand-in (a str0m offerer with one data channel) and the
    /// agent that answered it, joined by a lossless in-memory network on
    /// a virtual clock.
    struct Pair {
        browser: Rtc,
        channel: ChannelId,
        agent: RtcAgent,
        now: Instant,
        /// What the browser received on the channel: (binary, data).
        browser_got: Vec<(bool, Vec<u8>)>,
        browser_open: bool,
        agent_got: Vec<AgentOutput>,
    }

    impl Pair {
        fn new() -> Pair {
            let identity = RtcIdentity::generate().expect("certificate");
            let now = Instant::now();
            let mut browser = RtcConfig::new().set_crypto_provider(identity.crypto.clone()).build(now);
            browser.add_local_candidate(Candidate::host(addr(BROWSER), "udp").expect("candidate"));
            let mut api = browser.sdp_api();
            let channel = api.add_channel("fogconnect".into());
            let (offer, pending) = api.apply().expect("offer");
            let (agent, answer) =
                RtcAgent::answer(&identity, &offer.to_sdp_string(), &[LocalCandidate::Host(addr(NODE))], now)
                    .expect("answer");
            let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
            browser.sdp_api().accept_answer(pending, answer).expect("answer accepted");
            Pair { browser, channel, agent, now, browser_got: Vec::new(), browser_open: false, agent_got: Vec::new() }
        }

        /// Moves datagrams and time until `done` or 60 virtual seconds.
        fn run_until(&mut self, done: impl Fn(&Pair) -> bool) {
            let limit = self.now + Duration::from_secs(60);
            while !done(self) {
                assert!(self.now < limit, "not done within 60 virtual seconds");
                let mut wake = limit;
                loop {
                    match self.browser.poll_output().expect("browser output") {
                        Output::Timeout(at) => {
                            wake = wake.min(at);
                            break;
                        }
                        Output::Transmit(t) => {
                            assert_eq!(t.destination, addr(NODE));
                            self.agent.receive(self.now, t.source, t.destination, &t.contents);
                        }
                        Output::Event(Event::ChannelOpen(..)) => self.browser_open = true,
                        Output::Event(Event::ChannelData(ChannelData { binary, data, .. })) => {
                            self.browser_got.push((binary, data));
                        }
                        Output::Event(_) => {}
                    }
                }
                loop {
                    match self.agent.poll() {
                        AgentPoll::WakeAt(at) => {
                            wake = wake.min(at);
                            break;
                        }
                        AgentPoll::Ended => break,
                        AgentPoll::Output(AgentOutput::Transmit { source, destination, data }) => {
                            assert_eq!((source, destination), (addr(NODE), addr(BROWSER)));
                            let receive = Receive::new(Protocol::Udp, source, destination, &data).expect("datagram");
                            self.browser.handle_input(Input::Receive(self.now, receive)).expect("browser input");
                            wake = self.now;
                        }
                        AgentPoll::Output(other) => self.agent_got.push(other),
                    }
                }
                if done(self) {
                    return;
                }
                self.now = wake.max(self.now + Duration::from_millis(1));
                self.browser.handle_input(Input::Timeout(self.now)).expect("browser timeout");
                self.agent.handle_timeout(self.now);
            }
        }

        fn browser_write(&mut self, binary: bool, data: &[u8]) {
            let mut channel = self.browser.channel(self.channel).expect("browser channel");
            assert!(channel.write(binary, data).expect("write"));
        }
    }

    #[test]
    fn a_data_channel_offer_is_answered_and_messages_flow_both_ways() {
        let mut pair = Pair::new();
        pair.run_until(|p| p.browser_open && p.agent.is_open());
        assert_eq!(pair.agent_got, vec![AgentOutput::Open]);
        assert_eq!(pair.agent.path().remote, Some(addr(BROWSER)));

        pair.browser_write(true, b"I am fog data!");
        pair.run_until(|p| p.agent_got.len() == 2);
        assert_eq!(pair.agent_got[1], AgentOutput::Message(b"I am fog data!".to_vec()));

        assert!(pair.agent.write(b"I know!", true).expect("write"));
        pair.run_until(|p| !p.browser_got.is_empty());
        assert_eq!(pair.browser_got[0], (true, b"I know!".to_vec()));
    }

    #[test]
    fn the_send_window_follows_the_round_trip_within_its_bounds() {
        let mut pair = Pair::new();
        assert_eq!(pair.agent.send_window(), MIN_IN_FLIGHT);
        pair.agent.path.rtt = Some(Duration::from_millis(1));
        assert_eq!(pair.agent.send_window(), MIN_IN_FLIGHT);
        pair.agent.path.rtt = Some(Duration::from_millis(40));
        assert_eq!(pair.agent.send_window(), 500_000);
        pair.agent.path.rtt = Some(Duration::from_millis(400));
        assert_eq!(pair.agent.send_window(), MAX_IN_FLIGHT);
    }

    #[test]
    fn closing_tells_the_browser_why_and_a_browser_close_is_reported() {
        let mut pair = Pair::new();
        pair.run_until(|p| p.agent.is_open());
        pair.agent.close(true, "service unloaded");
        pair.run_until(|p| !p.browser_got.is_empty() && p.agent.is_ended());
        let (binary, text) = &pair.browser_got[0];
        assert!(!binary);
        assert_eq!(
            ControlMessage::decode(text),
            Ok(ControlMessage::Close { error: true, message: "service unloaded".into() })
        );

        let mut pair = Pair::new();
        pair.run_until(|p| p.browser_open && p.agent.is_open());
        let close = ControlMessage::Close { error: false, message: "page closed".into() }.encode();
        pair.browser_write(false, close.as_bytes());
        pair.run_until(|p| p.agent_got.len() == 2);
        assert_eq!(pair.agent_got[1], AgentOutput::CloseRequested { error: false, message: "page closed".into() });
    }

    #[test]
    fn a_text_message_that_is_no_control_message_ends_the_connection() {
        let mut pair = Pair::new();
        pair.run_until(|p| p.browser_open && p.agent.is_open());
        pair.browser_write(false, b"hello");
        pair.run_until(|p| p.agent.is_ended());
        assert!(
            matches!(&pair.agent_got[1], AgentOutput::Closed(reason) if reason.starts_with("protocol: bad control message"))
        );
    }

    /// A data channel offer as Chromium 156 makes it (captured).
    const CHROMIUM_OFFER: &str = include_str!("chromium_offer.sdp");

    #[test]
    fn a_chromium_offer_is_answered_with_the_nodes_candidates_and_fingerprint() {
        let identity = RtcIdentity::generate().expect("certificate");
        let (agent, answer) =
            RtcAgent::answer(&identity, CHROMIUM_OFFER, &[LocalCandidate::Host(addr(NODE))], Instant::now())
                .expect("answered");
        assert!(answer.contains("m=application 9 UDP/DTLS/SCTP webrtc-datachannel"), "{answer}");
        assert!(answer.contains("a=candidate:") && answer.contains("192.0.2.20 7700 typ host"), "{answer}");
        assert!(answer.contains("a=fingerprint:sha-256 "), "{answer}");
        assert!(answer.contains(&format!("a=ice-ufrag:{}", agent.local_ufrag())), "{answer}");
        // The browser offered actpass: the node takes a DTLS role.
        assert!(answer.contains("a=setup:active") || answer.contains("a=setup:passive"), "{answer}");
    }

    #[test]
    fn offers_with_media_or_without_a_data_channel_are_refused() {
        let data = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(check_offer(data), Ok(()));
        let audio = format!("{data}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
        assert!(matches!(check_offer(&audio), Err(RtcAgentError::UnsupportedOffer(m)) if m.contains("\"audio\"")));
        assert!(matches!(check_offer("v=0\r\n"), Err(RtcAgentError::UnsupportedOffer(_))));
        let identity = RtcIdentity::generate().expect("certificate");
        let refused = RtcAgent::answer(&identity, &format!("{data}garbage"), &[], Instant::now());
        assert!(matches!(refused, Err(RtcAgentError::MalformedOffer(_))), "{refused:?}");
    }

    #[test]
    fn trickled_candidates_are_parsed_or_skipped() {
        let mut pair = Pair::new();
        let host = "candidate:1 1 udp 2122260223 192.0.2.11 50001 typ host generation 0";
        let taken = Some(RemoteCandidate { addr: addr("192.0.2.11:50001"), relayed: false });
        assert_eq!(pair.agent.add_remote_candidate(host), Ok(taken));
        assert_eq!(pair.agent.add_remote_candidate(&format!("a={host}")), Ok(taken));
        let relay = "candidate:3 1 udp 41885439 203.0.113.10 50999 typ relay raddr 10.0.1.2 rport 5000";
        let relayed = Some(RemoteCandidate { addr: addr("203.0.113.10:50999"), relayed: true });
        assert_eq!(pair.agent.add_remote_candidate(relay), Ok(relayed));
        let mdns = "candidate:2 1 udp 2122260223 3f1c-aa.local 50001 typ host";
        assert_eq!(pair.agent.add_remote_candidate(mdns), Ok(None));
        let tcp = "candidate:3 1 tcp 1518280447 192.0.2.11 9 typ host tcptype active";
        assert_eq!(pair.agent.add_remote_candidate(tcp), Ok(None));
        for junk in ["", "candidate:", "hello world", "candidate:1 1 udp x 192.0.2.11 1 typ host"] {
            assert!(
                matches!(pair.agent.add_remote_candidate(junk), Err(RtcAgentError::MalformedCandidate { .. })),
                "{junk:?}"
            );
        }
    }
}
