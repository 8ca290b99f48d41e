//! The NAT lab: a simulated internet in network namespaces.
//!
//! Per lab: `inet` (a bridge on 203.0.113.0/24, TEST-NET-3), `srv` (the
//! STUN server on 203.0.113.10 and .11, the TURN relay on
//! 203.0.113.10:3480, the signaling server handing it out), and per
//! side `nat-a`/`nat-b` (a router whose WAN is 203.0.113.21/.22) with
//! `host-a`/`host-b` behind it: on 10.0.1.0/24 and 10.0.2.0/24 when the
//! router translates, on 198.51.100.0/25 and 198.51.100.128/25 (TEST-NET-2)
//! when it is open. The router's NAT kind is set with nftables (DESIGN.md
//! §7). Everything is torn down on drop, also when a test fails.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); `make test` installs
//! them. `FOGCONNECT_LAB_LOG=FILE` (with e.g. `RUST_LOG=fogconnect=debug`)
//! appends the lab processes' logs to FILE.
#![allow(dead_code)]

pub mod delay;
pub mod impair;
pub mod inprocess;
pub mod link;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

/// The fogconnect binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fogconnect");

/// The secret of the lab's signaling server.
pub const SECRET: &str = "nat lab signaling secret 0123456789";

/// STUN primary and alternate address, signaling address.
pub const STUN: &str = "203.0.113.10:3478";
const STUN_ALT: &str = "203.0.113.11:3479";
pub const SIGNAL: &str = "203.0.113.10:7600";
/// The lab's TURN relay (UDP and TCP on one port).
pub const RELAY: &str = "203.0.113.10:3480";
/// The farther relay of [`Lab::start_fleet`], as clients reach it (the
/// delay stage), and where it listens behind the stage.
pub const FAR_RELAY: &str = "203.0.113.10:3481";
const FAR_RELAY_BEHIND: &str = "203.0.113.10:3482";
/// The delay the stage adds each way.
pub const FAR_DELAY: Duration = Duration::from_millis(40);
/// The secret the signaling server shares with the relay.
pub const RELAY_SECRET: &str = "nat lab relay secret 0123456789";

/// The lab's IPv6 internet ([`Lab::add_ipv6`], documentation prefix
/// 2001:db8::/32): the STUN server's primary and alternate address.
pub const STUN6: &str = "[2001:db8::10]:3478";
const STUN6_ALT: &str = "[2001:db8::11]:3479";
/// The relay's IPv6 address (the same relay as [`RELAY`]).
pub const RELAY6: &str = "[2001:db8::10]:3480";

/// The device side of a rate-limited link lab (see
/// [`Lab::rate_limited_link`]).
pub const LINK_DEVICE: &str = "198.51.100.1";
/// The application side of a rate-limited link lab.
pub const LINK_APP: &str = "198.51.100.2";

/// How a lab router treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No NAT, no filter: the host has a public address.
    Open,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// A new random port per destination; address-and-port filtering.
    Symmetric,
    /// UDP dropped both ways.
    UdpBlocked,
}

impl NatKind {
    /// Every kind, in table order.
    pub const ALL: [NatKind; 6] = [
        NatKind::Open,
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::UdpBlocked,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::FullCone => "full-cone",
            NatKind::AddressRestricted => "addr-restr",
            NatKind::PortRestricted => "port-restr",
            NatKind::Symmetric => "symmetric",
            NatKind::UdpBlocked => "udp-blocked",
        }
    }

    /// Whether a direct path exists between hosts behind `self` and
    /// `other` (the rest need a relay).
    pub fn punchable_with(self, other: NatKind) -> bool {
        !(self == NatKind::UdpBlocked
            || other == NatKind::UdpBlocked
            || (self == NatKind::Symmetric && other == NatKind::Symmetric))
    }

    fn translates(self) -> bool {
        self != NatKind::Open
    }
}

/// One side of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Router 203.0.113.21.
    A,
    /// Router 203.0.113.22.
    B,
}

impl Side {
    fn letter(self) -> char {
        match self {
            Side::A => 'a',
            Side::B => 'b',
        }
    }

    fn wan_ip(self) -> &'static str {
        match self {
            Side::A => "203.0.113.21",
            Side::B => "203.0.113.22",
        }
    }

    /// The router's IPv6 WAN address.
    fn wan_ip6(self) -> &'static str {
        match self {
            Side::A => "2001:db8::21",
            Side::B => "2001:db8::22",
        }
    }

    /// (router LAN address with prefix, host address with prefix, the
    /// LAN's prefix) of the side's IPv6 network.
    fn lan6(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Side::A => ("2001:db8:a::1/64", "2001:db8:a::2/64", "2001:db8:a::/64"),
            Side::B => ("2001:db8:b::1/64", "2001:db8:b::2/64", "2001:db8:b::/64"),
        }
    }

    /// The host's IPv6 address.
    pub fn host_ip6(self) -> &'static str {
        match self {
            Side::A => "2001:db8:a::2",
            Side::B => "2001:db8:b::2",
        }
    }

    /// (router LAN address with prefix, host address with prefix, router
    /// LAN IP) for the side.
    fn lan(self, kind: NatKind) -> (&'static str, &'static str, &'static str) {
        match (self, kind.translates()) {
            (Side::A, true) => ("10.0.1.1/24", "10.0.1.2/24", "10.0.1.1"),
            (Side::B, true) => ("10.0.2.1/24", "10.0.2.2/24", "10.0.2.1"),
            (Side::A, false) => ("198.51.100.1/25", "198.51.100.2/25", "198.51.100.1"),
            (Side::B, false) => ("198.51.100.129/25", "198.51.100.130/25", "198.51.100.129"),
        }
    }
}

/// The nftables ruleset of a router of `kind` with WAN address `wan_ip`.
pub fn ruleset(kind: NatKind, wan_ip: &str) -> String {
    let full_cone_map =
        "map fullcone { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 2m; }";
    let full_cone_post = "oifname \"wan\" meta l4proto udp update @fullcone { udp sport : ip saddr . udp sport }";
    let full_cone_pre = "iifname \"wan\" meta l4proto udp dnat ip to udp dport map @fullcone";
    let established = "iifname \"wan\" ct state established,related accept\n    iifname \"wan\" drop";
    let (sets, pre, post, forward) = match kind {
        NatKind::Open => (String::new(), String::new(), String::new(), String::new()),
        NatKind::FullCone => (
            full_cone_map.to_string(),
            full_cone_pre.to_string(),
            format!("{full_cone_post}\n    oifname \"wan\" snat to {wan_ip}"),
            String::new(),
        ),
        NatKind::AddressRestricted => (
            format!(
                "{full_cone_map}\n  set seen {{ type ipv4_addr . inet_service; flags dynamic,timeout; timeout 2m; }}"
            ),
            full_cone_pre.to_string(),
            format!("{full_cone_post}\n    oifname \"wan\" snat to {wan_ip}"),
            "iifname \"lan\" meta l4proto udp update @seen { ip daddr . udp sport }\n    \
             iifname \"wan\" ct state established,related accept\n    \
             iifname \"wan\" meta l4proto udp ip saddr . udp dport @seen accept\n    \
             iifname \"wan\" drop"
                .to_string(),
        ),
        NatKind::PortRestricted => {
            (String::new(), String::new(), format!("oifname \"wan\" snat to {wan_ip}"), established.to_string())
        }
        NatKind::Symmetric => {
            (String::new(), String::new(), "oifname \"wan\" masquerade random".to_string(), established.to_string())
        }
        NatKind::UdpBlocked => (
            String::new(),
            String::new(),
            format!("oifname \"wan\" snat to {wan_ip}"),
            format!("meta l4proto udp drop\n    {established}"),
        ),
    };
    format!(
        "table ip lab {{\n  {sets}\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    {pre}\n  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    {post}\n  }}\n  \
         chain input {{\n    type filter hook input priority filter; policy accept;\n    iifname \"wan\" drop\n  }}\n  \
         chain forward {{\n    type filter hook forward priority filter; policy accept;\n    {forward}\n  }}\n}}\n"
    )
}

/// The IPv6 ruleset of every lab router: it forwards without translating
/// and filters like a home router's stateful firewall (what arrives from
/// the WAN passes only as an answer to what the LAN sent; ICMPv6 to the
/// router itself passes, neighbour discovery needs it).
pub fn ruleset6() -> String {
    "table ip6 lab6 {\n  \
     chain input {\n    type filter hook input priority filter; policy accept;\n    \
     iifname \"wan\" meta l4proto ipv6-icmp accept\n    iifname \"wan\" ct state established,related accept\n    \
     iifname \"wan\" drop\n  }\n  \
     chain forward {\n    type filter hook forward priority filter; policy accept;\n    \
     iifname \"wan\" ct state established,related accept\n    iifname \"wan\" drop\n  }\n}\n"
        .to_string()
}

/// Loads the nftables `rules` in namespace `ns`.
fn nft(ns: &str, rules: &str) -> anyhow::Result<()> {
    let mut nft = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (install nftables)")?;
    use std::io::Write;
    nft.stdin.take().context("nft stdin")?.write_all(rules.as_bytes())?;
    let out = nft.wait_with_output()?;
    ensure!(out.status.success(), "nft failed: {}\n{rules}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A running lab; dropping it kills its processes and deletes its
/// namespaces.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    kinds: (NatKind, NatKind),
    stun_started: bool,
    relay_pid: Option<u32>,
    /// Delay stages in the lab's namespaces (stopped before they go).
    forwarders: Vec<delay::DelayForwarder>,
    /// The impairment stage of [`Lab::impaired_link`] (stopped before the
    /// namespaces go, so its TAP devices go with it).
    stage: Option<impair::ImpairedWire>,
}

/// A line-reading child process.
pub struct Proc {
    /// Its process id.
    pub pid: u32,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    errors: mpsc::Receiver<String>,
    seen_errors: Vec<String>,
}

impl Proc {
    /// Collects stdout lines until the process closes its stdout (exits),
    /// at most `limit`; returns every line seen, also earlier ones.
    pub fn rest(&mut self, limit: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(self.seen.clone()),
                Err(mpsc::RecvTimeoutError::Timeout) => bail!("still running after {limit:?}; got {:?}", self.seen),
            }
        }
    }

    /// Waits for the `nth` (from 1) stderr line containing `needle`, at
    /// most `limit`.
    pub fn wait_error_line(&mut self, needle: &str, nth: usize, limit: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(line) = self.seen_errors.iter().filter(|l| l.contains(needle)).nth(nth.saturating_sub(1)) {
                return Ok(line.clone());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.errors.recv_timeout(left) {
                Ok(line) => self.seen_errors.push(line),
                Err(_) => bail!("no stderr line #{nth} with {needle:?} within {limit:?}"),
            }
        }
    }

    /// The stderr lines received so far.
    pub fn error_lines(&mut self) -> Vec<String> {
        while let Ok(line) = self.errors.try_recv() {
            self.seen_errors.push(line);
        }
        self.seen_errors.clone()
    }

    /// The next stdout line not yet returned by this method or seen by
    /// another, waiting at most `limit`; `None` at the end of output or
    /// after the limit.
    pub fn next_line(&mut self, limit: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(limit).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits for a line starting with `prefix`, at most `limit`.
    pub fn wait_line(&mut self, prefix: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + limit;
        if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return Ok(line.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!("no line starting with {prefix:?} within {limit:?}; got {:?}", self.seen),
            }
        }
    }
}

impl Lab {
    /// A lab with nothing in it yet, under a prefix of its own.
    fn empty(kinds: (NatKind, NatKind)) -> Self {
        Lab {
            prefix: format!("fcl{}x{}", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::Relaxed)),
            namespaces: Vec::new(),
            children: Vec::new(),
            kinds,
            stun_started: false,
            relay_pid: None,
            forwarders: Vec::new(),
            stage: None,
        }
    }

    /// Builds the namespaces, links and routers for a side A behind `a` and
    /// a side B behind `b`.
    pub fn new(a: NatKind, b: NatKind) -> anyhow::Result<Self> {
        let mut lab = Lab::empty((a, b));
        lab.build().with_context(|| format!("building the NAT lab {} × {}", a.name(), b.name()))?;
        Ok(lab)
    }

    /// A lab of two namespaces, `dev` and `app`, joined by one veth link
    /// on 198.51.100.0/24 (TEST-NET-2, [`LINK_DEVICE`] and [`LINK_APP`]),
    /// no NAT; the device side sends at most `rate` (a `tc` rate such as
    /// `4mbit`, token bucket with a 50 ms queue: this kernel has no netem).
    pub fn rate_limited_link(rate: &str) -> anyhow::Result<Self> {
        Self::with_link(Some(rate))
    }

    /// Two namespaces, `dev` and `app`, joined by one plain veth link (MTU
    /// 1500, no rate limit) on 198.51.100.0/24: the wire for throughput.
    pub fn plain_link() -> anyhow::Result<Self> {
        Self::with_link(None)
    }

    fn with_link(rate: Option<&str>) -> anyhow::Result<Self> {
        let mut lab = Lab::empty((NatKind::Open, NatKind::Open));
        lab.build_link(rate).with_context(|| format!("building a {} link", rate.unwrap_or("plain")))?;
        Ok(lab)
    }

    /// Two namespaces, `dev` and `app`, joined on 198.51.100.0/24 by a wire
    /// through the impairment stage ([`impair::ImpairedWire`], MTU 1500),
    /// which delays, jitters and drops frames each way as `impairment`
    /// says ([`Lab::stage`] changes it).
    pub fn impaired_link(impairment: impair::Impairment) -> anyhow::Result<Self> {
        let mut lab = Lab::empty((NatKind::Open, NatKind::Open));
        let (dev, app) = (lab.add_ns("dev")?, lab.add_ns("app")?);
        let stage = impair::ImpairedWire::start((&dev, "va"), (&app, "vb"), impairment).context("impairment stage")?;
        lab.stage = Some(stage);
        for (ns, dev, addr) in [(&dev, "va", LINK_DEVICE), (&app, "vb", LINK_APP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(lab)
    }

    /// The impairment stage of a lab made by [`Lab::impaired_link`].
    pub fn stage(&self) -> anyhow::Result<&impair::ImpairedWire> {
        self.stage.as_ref().context("this lab has no impairment stage")
    }

    fn build_link(&mut self, rate: Option<&str>) -> anyhow::Result<()> {
        let dev = self.add_ns("dev")?;
        let app = self.add_ns("app")?;
        ip(&["-n", &dev, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &app])?;
        ip(&["-n", &dev, "addr", "add", &format!("{LINK_DEVICE}/24"), "dev", "va"])?;
        ip(&["-n", &app, "addr", "add", &format!("{LINK_APP}/24"), "dev", "vb"])?;
        ip(&["-n", &dev, "link", "set", "va", "up"])?;
        ip(&["-n", &app, "link", "set", "vb", "up"])?;
        if let Some(rate) = rate {
            let tbf = [
                "-n", &dev, "qdisc", "add", "dev", "va", "root", "tbf", "rate", rate, "burst", "32kbit", "latency",
                "50ms",
            ];
            run(Command::new("tc").args(tbf)).context("the link lab needs tc: apt-get install iproute2")?;
        }
        Ok(())
    }

    /// The namespace called `name` in this lab.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn add_ns(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = self.ns(name);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-q", "-w", &format!("{key}={value}")])).map(|_| ())
    }

    /// A veth from `ns` (named `name`) to the bridge in `inet`.
    fn wire_to_inet(&self, inet: &str, ns: &str, name: &str, peer: &str) -> anyhow::Result<()> {
        ip(&["-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", inet])?;
        ip(&["-n", inet, "link", "set", peer, "master", "br0", "up"])?;
        ip(&["-n", ns, "link", "set", name, "up"])
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let inet = self.add_ns("inet")?;
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &inet, "link", "set", "br0", "up"])?;
        let srv = self.add_ns("srv")?;
        self.wire_to_inet(&inet, &srv, "eth0", "srv")?;
        ip(&["-n", &srv, "addr", "add", "203.0.113.10/24", "dev", "eth0"])?;
        ip(&["-n", &srv, "addr", "add", "203.0.113.11/24", "dev", "eth0"])?;
        let (ka, kb) = self.kinds;
        for (side, kind) in [(Side::A, ka), (Side::B, kb)] {
            let nat = self.add_ns(&format!("nat-{}", side.letter()))?;
            self.add_ns(&format!("host-{}", side.letter()))?;
            self.wire_to_inet(&inet, &nat, "wan", &format!("nat{}", side.letter()))?;
            ip(&["-n", &nat, "addr", "add", &format!("{}/24", side.wan_ip()), "dev", "wan"])?;
            // The LAN is a bridge, so more hosts can join it.
            ip(&["-n", &nat, "link", "add", "lan", "type", "bridge"])?;
            ip(&["-n", &nat, "link", "set", "lan", "up"])?;
            let (router_lan, host_addr, gateway) = side.lan(kind);
            ip(&["-n", &nat, "addr", "add", router_lan, "dev", "lan"])?;
            self.join_lan(side, &format!("host-{}", side.letter()), host_addr, gateway)?;
            Self::sysctl(&nat, "net.ipv4.ip_forward", "1")?;
            nft(&nat, &ruleset(kind, side.wan_ip()))?;
        }
        // Routes to the open sides' public host networks.
        let routes = [("198.51.100.0/25", Side::A.wan_ip()), ("198.51.100.128/25", Side::B.wan_ip())];
        for ns in [self.ns("srv"), self.ns("nat-a"), self.ns("nat-b")] {
            for (net, via) in routes {
                if ns.ends_with(&format!("nat-{}", if via == Side::A.wan_ip() { 'a' } else { 'b' })) {
                    continue;
                }
                ip(&["-n", &ns, "route", "add", net, "via", via])?;
            }
        }
        Ok(())
    }

    /// Gives the lab an IPv6 internet beside the IPv4 one, on the same
    /// links: `srv` on 2001:db8::10 and ::11, the routers' WANs on
    /// 2001:db8::21 and ::22 and their LANs on 2001:db8:a::/64 and
    /// 2001:db8:b::/64, forwarding without NAT behind a stateful firewall
    /// ([`ruleset6`]); the hosts of `hosts` get ::2 of their LAN.
    pub fn add_ipv6(&mut self, hosts: &[Side]) -> anyhow::Result<()> {
        let srv = self.ns("srv");
        ip(&["-n", &srv, "addr", "add", "2001:db8::10/64", "dev", "eth0", "nodad"])?;
        // The STUN server's alternate address never answers from the
        // servers listening on [::] (deprecated: not picked as a source).
        ip(&["-n", &srv, "addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad", "preferred_lft", "0"])?;
        for side in [Side::A, Side::B] {
            let nat = self.ns(&format!("nat-{}", side.letter()));
            let (router_lan, host_addr, _) = side.lan6();
            Self::sysctl(&nat, "net.ipv6.conf.all.forwarding", "1")?;
            ip(&["-n", &nat, "addr", "add", &format!("{}/64", side.wan_ip6()), "dev", "wan", "nodad"])?;
            ip(&["-n", &nat, "addr", "add", router_lan, "dev", "lan", "nodad"])?;
            nft(&nat, &ruleset6())?;
            if hosts.contains(&side) {
                let host = self.ns(&format!("host-{}", side.letter()));
                ip(&["-n", &host, "addr", "add", host_addr, "dev", "eth0", "nodad"])?;
                let gateway = router_lan.trim_end_matches("/64");
                ip(&["-n", &host, "-6", "route", "add", "default", "via", gateway])?;
            }
        }
        for side in [Side::A, Side::B] {
            let other = self.ns(&format!("nat-{}", if side == Side::A { 'b' } else { 'a' }));
            for ns in [&srv, &other] {
                ip(&["-n", ns, "-6", "route", "add", side.lan6().2, "via", side.wan_ip6()])?;
            }
        }
        Ok(())
    }

    /// Takes IPv4 away from `side`'s host (its address and default route):
    /// an IPv6-only host.
    pub fn remove_ipv4(&self, side: Side) -> anyhow::Result<()> {
        ip(&["-n", &self.ns(&format!("host-{}", side.letter())), "-4", "addr", "flush", "dev", "eth0"])
    }

    /// Starts the servers for both families ([`Lab::add_ipv6`] first): a
    /// STUN server on each family's addresses, one relay on both
    /// (relaying on 203.0.113.10 and 2001:db8::10), one signaling server on
    /// both, which hands out the relay at both addresses. Returns the
    /// signaling URL over IPv4 and over IPv6.
    pub fn start_servers_dual(&mut self) -> anyhow::Result<(String, String)> {
        self.start_stun()?;
        let mut stun6 = self.spawn("srv", &["stun", "--listen", STUN6, "--alt-addr", STUN6_ALT], &[])?;
        stun6.wait_line("RFC 5780", Duration::from_secs(10))?;
        let relay_args = ["relay", "--listen", "[::]:3480", "--relay-ip", "203.0.113.10", "--relay-ip", "2001:db8::10"];
        let mut relay = self.spawn("srv", &relay_args, &[("FOGCONNECT_TURN_SECRET", RELAY_SECRET)])?;
        relay.wait_line("relay listening", Duration::from_secs(10))?;
        self.relay_pid = Some(relay.pid);
        let (relay4, relay6) = (format!("turn:{RELAY}"), format!("turn:{RELAY6}"));
        let args = ["signal", "--listen", "[::]:7600", "--relay", &relay4, "--relay", &relay6];
        let env = [("FOGCONNECT_SIGNAL_SECRET", SECRET), ("FOGCONNECT_TURN_SECRET", RELAY_SECRET)];
        let mut signal = self.spawn("srv", &args, &env)?;
        signal.wait_line("signaling on ", Duration::from_secs(10))?;
        Ok(("ws://203.0.113.10:7600/ws".to_string(), "ws://[2001:db8::10]:7600/ws".to_string()))
    }

    /// Adds the host namespace `name` to `side`'s LAN with `addr` (with
    /// prefix) and the router as default gateway `gateway`.
    pub fn join_lan(&mut self, side: Side, name: &str, addr: &str, gateway: &str) -> anyhow::Result<()> {
        let nat = self.ns(&format!("nat-{}", side.letter()));
        let host = if self.namespaces.contains(&self.ns(name)) { self.ns(name) } else { self.add_ns(name)? };
        let port = format!("p-{name}");
        ip(&["-n", &nat, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host])?;
        ip(&["-n", &nat, "link", "set", &port, "master", "lan", "up"])?;
        ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        ip(&["-n", &host, "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", &host, "route", "add", "default", "via", gateway])
    }

    /// Starts a process in namespace `ns` (a name like `host-a`), its
    /// stdout read line by line.
    pub fn spawn(&mut self, ns: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        self.spawn_program(ns, BIN, args, env)
    }

    /// Starts `program` in namespace `ns`, its stdout read line by line.
    pub fn spawn_program(
        &mut self,
        ns: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), program])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {program} {args:?} in {ns}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let pid = child.id();
        self.children.push(child);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Keep draining after the receiver is gone: the child must
                // never block on, or fail writing to, its stdout.
                let _ = tx.send(line);
            }
        });
        // Debugging aid: children's logs also appended to this file.
        let mut log = match std::env::var_os("FOGCONNECT_LAB_LOG") {
            Some(path) => Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
            None => None,
        };
        let (tx, errors) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(log) = &mut log {
                    use std::io::Write;
                    let _ = writeln!(log, "{line}");
                }
                // Keep draining after the receiver is gone: the child must
                // never block on a full pipe.
                let _ = tx.send(line);
            }
        });
        Ok(Proc { pid, lines, seen: Vec::new(), errors, seen_errors: Vec::new() })
    }

    /// Kills the lab process `pid` and reaps it.
    pub fn kill(&mut self, pid: u32) -> anyhow::Result<()> {
        let index = self.children.iter().position(|c| c.id() == pid).context("no such lab process")?;
        let mut child = self.children.remove(index);
        let killed = child.kill();
        child.wait()?;
        Ok(killed?)
    }

    /// The exit status of the lab process `pid`, which has closed its
    /// stdout (see [`Proc::rest`]).
    pub fn exit_status(&mut self, pid: u32) -> anyhow::Result<std::process::ExitStatus> {
        let index = self.children.iter().position(|c| c.id() == pid).context("no such lab process")?;
        let mut child = self.children.remove(index);
        Ok(child.wait()?)
    }

    /// Drops UDP between the two NAT routers (a firewall on A's router):
    /// no direct path, STUN and the relay still reachable.
    pub fn block_direct_path(&self) -> anyhow::Result<()> {
        let b = Side::B.wan_ip();
        let rules = format!(
            "table ip block {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n    \
             ip daddr {b} meta l4proto udp drop\n    ip saddr {b} meta l4proto udp drop\n  }}\n}}\n"
        );
        nft(&self.ns("nat-a"), &rules)
    }

    /// Rebinds `side`'s NAT as a home router does when its UDP mappings
    /// expire or it restarts: every UDP mapping is dropped (conntrack), and
    /// the next packet of each flow leaves from a new public port (the
    /// router translates to port `port` from now on). TCP flows (the
    /// signaling session) keep their mappings, as they outlive UDP ones on
    /// real routers. Only for routers that translate with one public
    /// address (full cone, restricted, port-restricted).
    pub fn rebind(&self, side: Side, port: u16) -> anyhow::Result<()> {
        let nat = self.ns(&format!("nat-{}", side.letter()));
        let wan = side.wan_ip();
        let rules = format!(
            "flush chain ip lab postrouting\n\
             add rule ip lab postrouting oifname \"wan\" meta l4proto udp snat to {wan}:{port}\n\
             add rule ip lab postrouting oifname \"wan\" snat to {wan}\n"
        );
        nft(&nat, &rules)?;
        forget_udp_mappings(&nat)
    }

    /// Gives `side`'s router the public address `ip` instead of its own
    /// (as an ISP renumbering a home router): it translates to `ip` from
    /// now on and forgets its mappings; the host behind it sees nothing
    /// change locally.
    pub fn renumber_wan(&self, side: Side, ip: &str) -> anyhow::Result<()> {
        let nat = self.ns(&format!("nat-{}", side.letter()));
        self::ip(&["-n", &nat, "addr", "add", &format!("{ip}/24"), "dev", "wan"])?;
        nft(
            &nat,
            &format!("flush chain ip lab postrouting\nadd rule ip lab postrouting oifname \"wan\" snat to {ip}\n"),
        )?;
        forget_udp_mappings(&nat)
    }

    /// Points `side`'s host at another gateway on its LAN, `gateway` (with
    /// prefix), which the router answers too: the default route changes,
    /// the host's addresses do not.
    pub fn change_gateway(&self, side: Side, gateway: &str) -> anyhow::Result<()> {
        let (nat, host) = (self.ns(&format!("nat-{}", side.letter())), self.ns(&format!("host-{}", side.letter())));
        ip(&["-n", &nat, "addr", "add", gateway, "dev", "lan"])?;
        let via = gateway.split('/').next().unwrap_or(gateway);
        ip(&["-n", &host, "route", "replace", "default", "via", via])
    }

    /// Turns `side`'s router into a router of `kind` (its mappings of
    /// established flows stay until they expire, as on a real router that
    /// is reconfigured).
    pub fn set_nat(&self, side: Side, kind: NatKind) -> anyhow::Result<()> {
        let nat = self.ns(&format!("nat-{}", side.letter()));
        nft(&nat, &format!("delete table ip lab\n{}", ruleset(kind, side.wan_ip())))
    }

    /// Moves the host `host-<side>` from address `from` to `to` on its LAN
    /// (both with prefix, e.g. `10.0.2.7/24`): the new address is added,
    /// the old one removed, the default route kept, as when a device gets
    /// a new lease or joins another network.
    pub fn move_host(&self, side: Side, from: &str, to: &str, gateway: &str) -> anyhow::Result<()> {
        let host = self.ns(&format!("host-{}", side.letter()));
        Self::sysctl(&host, "net.ipv4.conf.eth0.promote_secondaries", "1")?;
        ip(&["-n", &host, "addr", "add", to, "dev", "eth0"])?;
        ip(&["-n", &host, "addr", "del", from, "dev", "eth0"])?;
        ip(&["-n", &host, "route", "replace", "default", "via", gateway])
    }

    /// Drops `percent` % of the packets each NAT router forwards, at random
    /// (nftables `numgen`; this kernel has no netem), both ways.
    pub fn drop_randomly(&self, percent: u32) -> anyhow::Result<()> {
        let rules = format!(
            "table ip loss {{\n  chain forward {{\n    type filter hook forward priority -5; policy accept;\n    \
             numgen random mod 100 < {percent} drop\n  }}\n}}\n"
        );
        for side in [Side::A, Side::B] {
            nft(&self.ns(&format!("nat-{}", side.letter())), &rules)?;
        }
        Ok(())
    }

    /// Removes the rule of [`Lab::block_direct_path`].
    pub fn unblock_direct_path(&self) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "exec", &self.ns("nat-a"), "nft", "delete", "table", "ip", "block"]))?;
        Ok(())
    }

    /// Runs a command to completion in namespace `ns`.
    pub fn output(&self, ns: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
        self.output_program(ns, BIN, args, env)
    }

    /// Runs `program` to completion in namespace `ns`.
    pub fn output_program(
        &self,
        ns: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), program])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .with_context(|| format!("cannot run {program} {args:?} in {ns}"))
    }

    /// Starts the RFC 5780 STUN server in `srv`.
    pub fn start_stun(&mut self) -> anyhow::Result<()> {
        let mut stun = self.spawn("srv", &["stun", "--listen", STUN, "--alt-addr", STUN_ALT], &[])?;
        stun.wait_line("RFC 5780", Duration::from_secs(10))?;
        self.stun_started = true;
        Ok(())
    }

    /// Starts the lab's TURN relay in `srv`.
    pub fn start_relay(&mut self) -> anyhow::Result<Proc> {
        let mut relay =
            self.spawn("srv", &["relay", "--listen", RELAY], &[("FOGCONNECT_TURN_SECRET", RELAY_SECRET)])?;
        relay.wait_line("relay listening", Duration::from_secs(10))?;
        self.relay_pid = Some(relay.pid);
        Ok(relay)
    }

    /// Kills the lab's TURN relay and starts a new one on its address: all
    /// allocations are lost.
    pub fn restart_relay(&mut self) -> anyhow::Result<Proc> {
        let pid = self.relay_pid.take().context("no relay running")?;
        self.kill(pid)?;
        self.start_relay()
    }

    /// Starts the STUN, relay and signaling servers in `srv` (signaling
    /// hands out the relay over UDP, then over TCP); returns the signaling
    /// URL.
    pub fn start_servers(&mut self) -> anyhow::Result<String> {
        self.start_stun()?;
        self.start_relay()?;
        let (udp, tcp) = (format!("turn:{RELAY}"), format!("turn:{RELAY}?transport=tcp"));
        let stun_url = format!("stun:{STUN}");
        let args = ["signal", "--listen", SIGNAL, "--relay", &udp, "--relay", &tcp, "--stun-url", &stun_url];
        let env = [("FOGCONNECT_SIGNAL_SECRET", SECRET), ("FOGCONNECT_TURN_SECRET", RELAY_SECRET)];
        let mut signal = self.spawn("srv", &args, &env)?;
        let line = signal.wait_line("signaling on ", Duration::from_secs(10))?;
        Ok(line.trim_start_matches("signaling on ").to_string())
    }

    /// Starts the STUN server, two relays and signaling handing out both,
    /// the farther first: the lab's relay ([`RELAY`]) and one on
    /// [`FAR_RELAY`] reached through a stage that delays every datagram by
    /// [`FAR_DELAY`] each way (UDP only); returns the signaling URL.
    pub fn start_fleet(&mut self) -> anyhow::Result<String> {
        self.start_stun()?;
        self.start_relay()?;
        let mut far =
            self.spawn("srv", &["relay", "--listen", FAR_RELAY_BEHIND], &[("FOGCONNECT_TURN_SECRET", RELAY_SECRET)])?;
        far.wait_line("relay listening", Duration::from_secs(10))?;
        let forwarder =
            delay::DelayForwarder::start(&self.ns("srv"), FAR_RELAY.parse()?, FAR_RELAY_BEHIND.parse()?, FAR_DELAY)?;
        self.forwarders.push(forwarder);
        let (far, near) = (format!("turn:{FAR_RELAY}"), format!("turn:{RELAY}"));
        let args = ["signal", "--listen", SIGNAL, "--relay", &far, "--relay", &near];
        let env = [("FOGCONNECT_SIGNAL_SECRET", SECRET), ("FOGCONNECT_TURN_SECRET", RELAY_SECRET)];
        let mut signal = self.spawn("srv", &args, &env)?;
        let line = signal.wait_line("signaling on ", Duration::from_secs(10))?;
        Ok(line.trim_start_matches("signaling on ").to_string())
    }

    /// Kills the lab's relay ([`RELAY`]) for good.
    pub fn kill_relay(&mut self) -> anyhow::Result<()> {
        let pid = self.relay_pid.take().context("no relay running")?;
        self.kill(pid)
    }

    /// A registration token for `id`.
    pub fn token(&self, id: &str) -> anyhow::Result<String> {
        let out = run(Command::new(BIN).args(["signal", "token", "--id", id]).env("FOGCONNECT_SIGNAL_SECRET", SECRET))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.forwarders.clear();
        self.stage = None;
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// Deletes the UDP mappings of the router in namespace `nat`: its next
/// packets get new ones, under the rules loaded now.
fn forget_udp_mappings(nat: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", nat, "conntrack", "-D", "-p", "udp"])
        .output()
        .context("the NAT lab needs conntrack: apt-get install conntrack")?;
    // conntrack exits 1 when there was nothing to delete.
    ensure!(out.status.code().is_some_and(|c| c <= 1), "conntrack -D failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Whether this process may build labs (root with `ip` and `nft`).
pub fn lab_available() -> anyhow::Result<()> {
    let uid = run(Command::new("id").arg("-u"))?;
    ensure!(String::from_utf8_lossy(&uid.stdout).trim() == "0", "the NAT lab needs root");
    run(Command::new("nft").arg("--version")).context("the NAT lab needs nft: apt-get install nftables")?;
    run(Command::new("ip").arg("-V")).context("the NAT lab needs ip: apt-get install iproute2")?;
    remove_stale_labs();
    Ok(())
}

/// Deletes the namespaces of labs whose test process died without
/// cleaning up (killed by a signal): `fcl<pid>x...` with no such process.
fn remove_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("fcl").and_then(|rest| rest.split('x').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// What one connect from A to B in the lab gave.
#[derive(Debug, Clone)]
pub struct PairRun {
    /// Side A's NAT.
    pub a: NatKind,
    /// Side B's NAT.
    pub b: NatKind,
    /// The `--info` line on success.
    pub info: Option<String>,
    /// The reply of B's echo plugin.
    pub reply: Option<String>,
    /// The error line on failure.
    pub error: Option<String>,
    /// Milliseconds from the start of the connect to the connection, as
    /// `send --info` measured it.
    pub connect_ms: Option<f64>,
    /// Spray probes used by A, from the `--info` line.
    pub probes: Option<u32>,
}

impl PairRun {
    /// Whether A got B's reply over a direct path.
    pub fn direct(&self) -> bool {
        self.reply.is_some() && self.info.as_deref().is_some_and(|i| i.contains("path direct WAN"))
    }

    /// Whether A got B's reply through the relay.
    pub fn relayed(&self) -> bool {
        self.reply.is_some() && self.info.as_deref().is_some_and(|i| i.contains("path relayed"))
    }
}

fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Builds a lab for `a` × `b`, runs a node with the echo plugin behind B
/// and connects to it by id from behind A; `extra` goes to both sides.
pub fn connect_pair(a: NatKind, b: NatKind, extra: &[&str]) -> anyhow::Result<PairRun> {
    let mut lab = Lab::new(a, b)?;
    lab.connect("host-a", "host-b", extra)
}

impl Lab {
    /// Starts the servers, a node with the echo plugin in `to_ns`, and
    /// connects to it by id from `from_ns` with `fogconnect send --info`.
    pub fn connect(&mut self, from_ns: &str, to_ns: &str, extra: &[&str]) -> anyhow::Result<PairRun> {
        let url = self.start_servers()?;
        self.start_echo_node(to_ns, &url, extra)?;
        let args = self.send_args(&url, extra, &["hello through the NATs"])?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.output(from_ns, &args, &[])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let info = lines.next().filter(|l| l.starts_with("connected to")).map(str::to_string);
        let reply = lines.next().map(str::to_string);
        let error = (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        let connect_ms = info.as_deref().and_then(|i| field(i, "connect "));
        let probes = info.as_deref().and_then(|i| field(i, "probes "));
        let (a, b) = self.kinds;
        Ok(PairRun { a, b, info, reply, error, connect_ms, probes })
    }

    /// Starts node `dev-b` with the echo plugin on service 0 in `ns`,
    /// registered at `url`, and waits until it is classified and has its
    /// relay allocation; `extra` goes to its command line.
    pub fn start_echo_node(&mut self, ns: &str, url: &str, extra: &[&str]) -> anyhow::Result<Proc> {
        self.start_echo_node_on(ns, "0.0.0.0:7700", STUN, url, extra)
    }

    /// Like [`Lab::start_echo_node`], listening on `listen` and using the
    /// STUN servers `stun`.
    pub fn start_echo_node_on(
        &mut self,
        ns: &str,
        listen: &str,
        stun: &str,
        url: &str,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let token = self.token("dev-b")?;
        let echo = format!("0={}", crate::common::plugin("echo").display());
        let mut args = vec!["node", "--listen", listen, "--no-cache", "--id", "dev-b", "--signal", url];
        args.extend(["--token", &token, "--stun", stun, "--plugin", &echo]);
        args.extend(extra);
        let mut node = self.spawn(ns, &args, &[])?;
        node.wait_line("registered with", Duration::from_secs(15))?;
        node.wait_line("nat:", Duration::from_secs(20))?;
        // The first word on the relay may be that the allocation is still
        // being retried (over TCP for a side without UDP): wait for it, so
        // a connect that needs it does not race it.
        if !node.wait_line("relay:", Duration::from_secs(20))?.starts_with("relay: allocated") {
            node.wait_line("event: relay: allocated", Duration::from_secs(20))?;
        }
        Ok(node)
    }

    /// Runs `fogconnect send --info` from `dev-a` in `host-a` to `dev-b`
    /// through signaling at `url` with `extra` options and one `message`;
    /// returns its output, or its error.
    pub fn send_once(&self, url: &str, extra: &[&str], message: &str) -> anyhow::Result<String> {
        let args = self.send_args(url, extra, &[message])?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.output("host-a", &args, &[])?;
        ensure!(out.status.success(), "send failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The command line of `fogconnect send --info` from `dev-a` to `dev-b`
    /// through signaling at `url`, with `extra` options and `messages`.
    pub fn send_args(&self, url: &str, extra: &[&str], messages: &[&str]) -> anyhow::Result<Vec<String>> {
        self.send_args_with(STUN, url, extra, messages)
    }

    /// Like [`Lab::send_args`], with the STUN servers `stun`.
    pub fn send_args_with(
        &self,
        stun: &str,
        url: &str,
        extra: &[&str],
        messages: &[&str],
    ) -> anyhow::Result<Vec<String>> {
        let token = self.token("dev-a")?;
        let mut args = vec!["send", "--peer", "dev-b", "--signal", url, "--id", "dev-a", "--token", &token];
        args.extend(["--stun", stun, "--info"]);
        if !extra.contains(&"--reply-timeout-ms") {
            args.extend(["--reply-timeout-ms", "5000"]);
        }
        args.extend(extra);
        args.extend(messages);
        Ok(args.into_iter().map(String::from).collect())
    }
}
