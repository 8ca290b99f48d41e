//! Test stream plugin on the `fogconnect:streaming@0.2.0` contract: every
//! stream first sends its connection's path (`path KIND ADDRESS`), then one
//! chunk per network or node event the plugin received (`net CONN ...`,
//! `node ...`), those before the stream began first; empty chunks in
//! between. It subscribes to signaling events at `init`.

use std::collections::BTreeMap;

use fogconnect_guest::v0_2::stream::{self, Pull, Stream, StreamConnection, StreamPlugin};
use fogconnect_guest::v0_2::{NetworkEvent, NodeEvent, NodeEventKinds, PathKind};

#[derive(Default)]
struct Recorder {
    last_handle: u64,
    /// Every event line so far.
    history: Vec<String>,
    /// Lines not yet sent, per stream.
    pending: BTreeMap<u64, Vec<String>>,
}

fn kind(kind: PathKind) -> &'static str {
    match kind {
        PathKind::Lan => "lan",
        PathKind::Direct => "direct",
        PathKind::Relayed => "relayed",
    }
}

impl Recorder {
    fn record(&mut self, line: String) {
        for lines in self.pending.values_mut() {
            lines.push(line.clone());
        }
        self.history.push(line);
    }
}

impl StreamPlugin for Recorder {
    fn init(&mut self) {
        stream::subscribe(NodeEventKinds::SIGNALING);
    }

    fn send_init(&mut self, conn: StreamConnection, _params: String) -> Result<Stream, String> {
        let path = conn.path().ok_or("the connection has no path")?;
        self.last_handle += 1;
        let mut lines = vec![format!("path {} {}", kind(path.kind), path.remote_address)];
        lines.extend(self.history.iter().cloned());
        self.pending.insert(self.last_handle, lines);
        Ok(Stream::from_raw(self.last_handle))
    }

    fn send_get(&mut self, stream: Stream) -> Pull {
        match self.pending.get_mut(&stream.raw()) {
            Some(lines) if !lines.is_empty() => Pull::Data(lines.remove(0).into_bytes()),
            Some(_) => Pull::Data(Vec::new()),
            None => Pull::End,
        }
    }

    fn send_stop(&mut self, stream: Stream) {
        self.pending.remove(&stream.raw());
    }

    fn on_network_event(&mut self, conn: StreamConnection, event: NetworkEvent) {
        let what = match event {
            NetworkEvent::PathChanged(change) => format!("path {} {}", kind(change.to.kind), change.to.remote_address),
            NetworkEvent::LinkSilent(ms) => format!("silent {ms}"),
            NetworkEvent::LinkRecovered(ms) => format!("recovered {ms}"),
        };
        self.record(format!("net {} {what}", conn.raw()));
    }

    fn on_node_event(&mut self, event: NodeEvent) {
        let what = match event {
            NodeEvent::SignalUp => "signal-up".to_string(),
            NodeEvent::SignalLost(why) => format!("signal-lost {why}"),
            other => format!("{other:?}"),
        };
        self.record(format!("node {what}"));
    }
}

fogconnect_guest::export_stream_0_2!(Recorder);
