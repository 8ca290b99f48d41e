//! Test plugin on the `fogconnect:plugin@0.2.0` contract: records every
//! network and node event it receives, and every close, as a text line
//! stamped with
//! `monotonic-now`. `report` answers with one message: `reporting` and the
//! lines so far, one per line; from then on each new line is also sent to
//! that connection as a message of its own.
//!
//! Requests (one message each): `report`, `watch PEER`, `unwatch PEER`,
//! `subscribe all|none`, `convention`, `path`, `connect-path`; anything
//! else is echoed.

use std::collections::HashMap;

use fogconnect_guest::v0_2::{
    self, ConnectInfo, Connection, NetworkEvent, NodeEvent, NodeEventKinds, PathInfo, PathKind, Service,
};

#[derive(Default)]
struct Recorder {
    /// Every event line so far.
    lines: Vec<String>,
    /// Connections that receive the event lines.
    reporters: Vec<Connection>,
    /// The path each connection had when it was established.
    connect_paths: HashMap<Connection, PathInfo>,
}

fn kind(kind: PathKind) -> &'static str {
    match kind {
        PathKind::Lan => "lan",
        PathKind::Direct => "direct",
        PathKind::Relayed => "relayed",
    }
}

fn path(path: &PathInfo) -> String {
    format!("{} {}", kind(path.kind), path.remote_address)
}

const ALL: NodeEventKinds =
    NodeEventKinds::SIGNALING.union(NodeEventKinds::NAT).union(NodeEventKinds::RELAY).union(NodeEventKinds::ADDRESSES);

impl Recorder {
    fn record(&mut self, line: String) {
        let line = format!("{line} @{}", v0_2::monotonic_now());
        self.reporters.retain(|conn| conn.send(line.as_bytes()).is_ok());
        self.lines.push(line);
    }

    fn answer(&mut self, conn: Connection, request: &str) -> String {
        let (verb, argument) = request.split_once(' ').unwrap_or((request, ""));
        match verb {
            "report" => {
                self.reporters.push(conn);
                std::iter::once("reporting").chain(self.lines.iter().map(String::as_str)).collect::<Vec<_>>().join("\n")
            }
            "watch" => match v0_2::watch_peer(argument) {
                Ok(()) => format!("watching {argument}"),
                Err(e) => format!("watch error: {e:?}"),
            },
            "unwatch" => {
                v0_2::unwatch_peer(argument);
                format!("unwatched {argument}")
            }
            "subscribe" => {
                v0_2::subscribe(if argument == "none" { NodeEventKinds::empty() } else { ALL });
                format!("subscribed {argument}")
            }
            "convention" => match conn.convention() {
                Ok(convention) => convention.to_string(),
                Err(e) => format!("error: {e:?}"),
            },
            "path" => match conn.path() {
                Ok(now) => path(&now),
                Err(e) => format!("error: {e:?}"),
            },
            "connect-path" => self.connect_paths.get(&conn).map_or_else(|| "unknown".to_string(), path),
            _ => request.to_string(),
        }
    }
}

impl Service for Recorder {
    fn init(&mut self) {
        v0_2::subscribe(ALL);
    }

    fn on_connect(&mut self, conn: Connection, info: ConnectInfo) {
        self.connect_paths.insert(conn, info.path);
    }

    fn on_recv(&mut self, conn: Connection, data: Vec<u8>) {
        let request = String::from_utf8_lossy(&data).into_owned();
        let answer = self.answer(conn, &request);
        let _ = conn.send(answer.as_bytes());
    }

    fn on_network_event(&mut self, conn: Connection, event: NetworkEvent) {
        let what = match event {
            NetworkEvent::PathChanged(change) => format!("path {} -> {}", path(&change.from), path(&change.to)),
            NetworkEvent::LinkSilent(ms) => format!("silent {ms}"),
            NetworkEvent::LinkRecovered(ms) => format!("recovered {ms}"),
        };
        self.record(format!("net {} {what}", conn.raw()));
    }

    fn on_node_event(&mut self, event: NodeEvent) {
        let what = match event {
            NodeEvent::SignalUp => "signal-up".to_string(),
            NodeEvent::SignalLost(why) => format!("signal-lost {why}"),
            NodeEvent::NatClassified(nat) => {
                format!("nat {} {} changed={}", nat.nat_type, nat.public_address.as_deref().unwrap_or("-"), nat.changed)
            }
            NodeEvent::RelayAllocated(relay) => format!("relay-allocated {} {}", relay.server, relay.relayed_address),
            NodeEvent::RelayLost(why) => format!("relay-lost {why}"),
            NodeEvent::AddressesChanged(change) => {
                format!("addresses added={} removed={}", change.added.join(","), change.removed.join(","))
            }
            NodeEvent::Presence(presence) => {
                format!("presence {} {}", presence.peer, if presence.online { "online" } else { "offline" })
            }
        };
        self.record(format!("node {what}"));
    }

    fn on_close(&mut self, conn: Connection, reason: v0_2::CloseReason) {
        self.reporters.retain(|c| *c != conn);
        self.connect_paths.remove(&conn);
        self.record(format!("close {} {:?} {}", conn.raw(), reason.kind, reason.message));
    }
}

fogconnect_guest::export_service_0_2!(Recorder);
