//! A signaling server in a NATS cluster: any number of interchangeable
//! servers, each holding the WebSocket sessions of its own clients; an id
//! held on one is reached from every other.
//!
//! - **Directory** (JetStream key-value bucket, written on register and
//!   unregister only, never per keep-alive): `p.<id>` names the server
//!   holding the id (`create` on register, so a second server's `create`
//!   fails; a duplicate login takes the id over by compare-and-swap on the
//!   revision and tells the older server, which closes its session);
//!   `h.<server>.<id>` lists each server's ids, so the survivors find a
//!   dead server's ids; `l.<server>` records every server that ever ran.
//! - **Routing by server**: a message for an id is a request to
//!   `<prefix>.srv.<server>.deliver` of the server the directory names
//!   (one subscription per server, not per peer: see `docs/SCALING.md` for
//!   the memory this saves); "no responders" means that server is gone.
//! - **Presence** is published by the owning server on
//!   `<prefix>.presence`, after the same grace as alone.
//! - **Liveness**: every server publishes `<prefix>.alive` every
//!   [`HEARTBEAT_INTERVAL`]; a server unheard for [`SERVER_DEAD_AFTER`]
//!   (counted from when this server itself last connected) is dead, and
//!   the live server with the lowest name removes its ids from the
//!   directory and reports them offline. Key expiry would not do: NATS
//!   2.9 sends no watch event for it and ignores per-key TTLs.
//! - **Outages**: every NATS call is bounded in time and none is made while
//!   the client is disconnected; a NATS outage degrades to "unreachable"
//!   answers for ids on other servers and never stalls local sessions.
//!   Registrations made meanwhile are written to the directory when NATS
//!   is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::SignalError;
use super::super::protocol::ServerMessage;
use super::subject::{decode, encode};
use super::{Inserted, LocalMiss, LocalPeers, LocalSession, PRESENCE_GRACE, PeerRoutes, Undeliverable};

/// How often a server says it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A server unheard for this long is dead: its ids are reported offline.
pub const SERVER_DEAD_AFTER: Duration = Duration::from_secs(15);
/// Longest wait for one NATS operation made for a client.
const NATS_LIMIT: Duration = Duration::from_secs(2);
/// Longest wait for a directory scan (peer list, a dead server's ids).
const SCAN_LIMIT: Duration = Duration::from_secs(10);
/// The NATS client's ping interval: a dead NATS server is noticed within a
/// few of them (the client's default takes minutes).
const NATS_PING: Duration = Duration::from_secs(2);
/// Messages a subscription buffers before NATS drops them as a slow
/// consumer (the default is small for a server's bursts).
const SUBSCRIPTION_CAPACITY: usize = 65_536;
/// Most ids a `list` answers with in a cluster.
pub const MAX_LISTED: usize = 10_000;
/// Holders of ids messages went to, remembered so that the next message
/// skips the directory lookup (forgotten all at once when full; a wrong
/// entry costs one "absent" answer and a fresh lookup).
const OWNER_CACHE: usize = 65_536;

/// How a signaling server joins a NATS cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://…`); the cluster's
    /// user and password, or token, go in the URL
    /// (`nats://user:password@host:4222`, `nats://token@host:4222`).
    pub urls: Vec<String>,
    /// Prefix of every subject the servers use.
    pub subject_prefix: String,
    /// The directory's key-value bucket.
    pub bucket: String,
    /// Replicas of the directory bucket when this server creates it (make
    /// it at deploy time, with every NATS server up).
    pub replicas: usize,
    /// This server's name in the cluster (unique; default: random).
    pub server_name: Option<String>,
}

impl ClusterConfig {
    /// Defaults for `urls`.
    pub fn new(urls: Vec<String>) -> Self {
        Self { urls, subject_prefix: "fogsig".into(), bucket: "fogsig".into(), replicas: 3, server_name: None }
    }
}

/// Counters of a server's cluster traffic.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Messages delivered to ids on other servers.
    pub delivered_remote: AtomicU64,
    /// Messages for ids on other servers that found them offline.
    pub remote_offline: AtomicU64,
    /// Messages for ids on other servers that could not reach them.
    pub remote_unreachable: AtomicU64,
    /// Messages from other servers delivered here.
    pub received_remote: AtomicU64,
    /// Times the NATS connection was (re)established.
    pub connects: AtomicU64,
    /// Dead servers whose ids this server removed.
    pub servers_reaped: AtomicU64,
}

/// Routing over a NATS cluster.
pub struct NatsRoutes {
    peers: LocalPeers,
    name: String,
    prefix: String,
    client: async_nats::Client,
    kv: kv::Store,
    /// Servers heard (or listed in the directory), with when.
    servers: Mutex<HashMap<String, Instant>>,
    /// When this server's NATS connection last came up.
    connected_since: Mutex<Instant>,
    connected: AtomicBool,
    counters: ClusterCounters,
    /// Which server held an id when a message last went to it.
    owners: Mutex<HashMap<String, String>>,
    /// Done leaving the cluster (after shutdown).
    finished: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for NatsRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRoutes").field("name", &self.name).finish_non_exhaustive()
    }
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> SignalError {
    SignalError::Cluster(format!("{what}: {e}"))
}

/// Bounded NATS call: the error text on failure or timeout.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}

impl NatsRoutes {
    /// Connects to the cluster, opens (or makes) the directory and starts
    /// serving this server's subjects.
    ///
    /// # Errors
    /// [`SignalError::Cluster`] when no NATS server answers, the
    /// credentials are refused, or the directory cannot be opened or made.
    pub(crate) async fn start(config: ClusterConfig, shutdown: CancellationToken) -> Result<Arc<Self>, SignalError> {
        if config.urls.is_empty() {
            return Err(SignalError::Cluster("no NATS URL given".into()));
        }
        let name = config.server_name.clone().unwrap_or_else(|| format!("sig-{:016x}", rand::random::<u64>()));
        let name = encode(&name);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let options = async_nats::ConnectOptions::new()
            .name(format!("fogconnect-signal {name}"))
            .ping_interval(NATS_PING)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(NATS_LIMIT))
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .max_reconnects(None)
            .event_callback(move |event| {
                let events = events_tx.clone();
                async move {
                    let _ = events.send(event);
                }
            });
        let addrs = config
            .urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>().map_err(|e| nats_error(&format!("NATS URL {u:?}"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let client = options.connect(addrs).await.map_err(|e| nats_error("cannot connect to NATS", e))?;
        let js = jetstream::new(client.clone());
        let kv = open_directory(&js, &config).await?;
        let prefix = config.subject_prefix.clone();
        let routes = Arc::new(Self {
            peers: LocalPeers::default(),
            name: name.clone(),
            prefix: prefix.clone(),
            client: client.clone(),
            kv,
            servers: Mutex::new(HashMap::new()),
            connected_since: Mutex::new(Instant::now()),
            connected: AtomicBool::new(true),
            counters: ClusterCounters::default(),
            owners: Mutex::new(HashMap::new()),
            finished: tokio::sync::watch::channel(false).0,
        });
        routes.counters.connects.fetch_add(1, Ordering::Relaxed);
        let requests =
            client.subscribe(format!("{prefix}.srv.{name}.>")).await.map_err(|e| nats_error("cannot subscribe", e))?;
        let presence =
            client.subscribe(format!("{prefix}.presence")).await.map_err(|e| nats_error("cannot subscribe", e))?;
        let alive = client.subscribe(format!("{prefix}.alive")).await.map_err(|e| nats_error("cannot subscribe", e))?;
        within(NATS_LIMIT, "directory", routes.kv.put(format!("l.{name}"), Bytes::new()))
            .await
            .map_err(SignalError::Cluster)?;
        // Servers that ran before this one: a dead one among them is found
        // as any other.
        for (key, _) in routes.scan("l.").await.map_err(SignalError::Cluster)? {
            if key != name {
                routes.servers().entry(key).or_insert_with(Instant::now);
            }
        }
        tokio::spawn(routes.clone().serve_requests(requests, shutdown.clone()));
        tokio::spawn(routes.clone().serve_presence(presence, shutdown.clone()));
        tokio::spawn(routes.clone().serve_alive(alive, shutdown.clone()));
        tokio::spawn(routes.clone().maintain(events_rx, shutdown));
        tracing::info!(server = %name, "signaling joined the NATS cluster");
        Ok(routes)
    }

    /// This server's name in the cluster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the NATS connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The cluster traffic counters.
    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    /// Waits until this server has left the cluster after shutdown (its
    /// ids removed from the directory), at most a few seconds.
    pub async fn finished(&self) {
        let mut done = self.finished.subscribe();
        let _ = tokio::time::timeout(4 * NATS_LIMIT, done.wait_for(|done| *done)).await;
    }

    /// Other servers heard alive within [`SERVER_DEAD_AFTER`].
    pub fn live_servers(&self) -> usize {
        let now = Instant::now();
        self.servers().values().filter(|heard| now.duration_since(**heard) < SERVER_DEAD_AFTER).count()
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subject(&self, server: &str, what: &str) -> String {
        format!("{}.srv.{server}.{what}", self.prefix)
    }

    /// Makes this server the directory's holder of `id`: the revision
    /// written and the server that held it before, if another.
    async fn own(&self, id: &str) -> Result<(u64, Option<String>), String> {
        let key = format!("p.{}", encode(id));
        let mine = Bytes::from(self.name.clone());
        for _ in 0..4 {
            match self.kv.create(&key, mine.clone()).await {
                Ok(revision) => {
                    self.put_home(id).await?;
                    return Ok((revision, None));
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("directory: {e}")),
            }
            let Some(entry) = self.kv.entry(&key).await.map_err(|e| format!("directory: {e}"))? else { continue };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let owner = String::from_utf8_lossy(&entry.value).into_owned();
            match self.kv.update(&key, mine.clone(), entry.revision).await {
                Ok(revision) => {
                    self.put_home(id).await?;
                    return Ok((revision, (owner != self.name).then_some(owner)));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(format!("directory: {e}")),
            }
        }
        Err(format!("directory: {id} changed hands too often to take over"))
    }

    async fn put_home(&self, id: &str) -> Result<(), String> {
        self.kv
            .put(format!("h.{}.{}", self.name, encode(id)), Bytes::new())
            .await
            .map(|_| ())
            .map_err(|e| format!("directory: {e}"))
    }

    /// Writes `id`'s ownership for its session `serial` and tells a server
    /// that held it before to close its session.
    async fn register_in_directory(&self, id: &str, serial: u64) -> Result<Option<String>, String> {
        let (revision, previous) = within(NATS_LIMIT, "directory", self.own(id)).await?;
        self.peers.set_revision(id, serial, Some(revision));
        if let Some(previous) = &previous {
            let subject = self.subject(previous, "replace");
            let _ = within(NATS_LIMIT, "replace", self.client.publish(subject, Bytes::from(id.to_string()))).await;
        }
        Ok(previous)
    }

    async fn announce(&self, id: &str, online: bool) {
        let event = serde_json::json!({ "id": id, "online": online, "server": self.name });
        let subject = format!("{}.presence", self.prefix);
        if let Err(e) = within(NATS_LIMIT, "presence", self.client.publish(subject, event.to_string().into())).await {
            tracing::debug!(id, online, "presence not published: {e}");
        }
    }

    /// The keys under `prefix` in the directory (without it), with their
    /// revisions: the current ones, deleted keys left out.
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, u64)>, String> {
        let filter = format!("{}{prefix}>", self.kv.prefix);
        let scan = async {
            let consumer = self
                .kv
                .stream
                .create_consumer(jetstream::consumer::push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: filter,
                    headers_only: true,
                    replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                    deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("scan: {e}"))?;
            let mut keys = Vec::new();
            if consumer.cached_info().num_pending == 0 {
                return Ok(keys);
            }
            let mut messages = consumer.messages().await.map_err(|e| format!("scan: {e}"))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| format!("scan: {e}"))?;
                let info = message.info().map_err(|e| format!("scan: {e}"))?;
                let (revision, pending) = (info.stream_sequence, info.pending);
                let deleted = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
                if !deleted
                    && let Some(key) = message.subject.strip_prefix(self.kv.prefix.as_str())
                    && let Some(rest) = key.strip_prefix(prefix)
                {
                    keys.push((rest.to_string(), revision));
                }
                if pending == 0 {
                    break;
                }
            }
            Ok(keys)
        };
        match tokio::time::timeout(SCAN_LIMIT, scan).await {
            Ok(result) => result,
            Err(_) => Err(format!("scan of {prefix}: not done within {SCAN_LIMIT:?}")),
        }
    }

    /// Requests from other servers: deliveries and takeovers.
    async fn serve_requests(self: Arc<Self>, mut requests: async_nats::Subscriber, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = requests.next() => match message { Some(m) => m, None => return },
            };
            let what = message.subject.rsplit('.').next().unwrap_or_default();
            match what {
                "deliver" => {
                    let answer = self.deliver_here(&message.payload);
                    if let Some(reply) = message.reply {
                        let _ = within(NATS_LIMIT, "reply", self.client.publish(reply, answer.into())).await;
                    }
                }
                "replace" => {
                    let id = String::from_utf8_lossy(&message.payload).into_owned();
                    if self.peers.replaced_elsewhere(&id) {
                        tracing::debug!(id, "replaced by a session on another server");
                    }
                    let home = format!("h.{}.{}", self.name, encode(&id));
                    let _ = within(NATS_LIMIT, "directory", self.kv.delete(home)).await;
                }
                other => tracing::debug!(subject = %message.subject, "unknown cluster request {other:?}"),
            }
        }
    }

    /// Delivers a message another server forwarded: `ok`, `absent` or
    /// `busy`.
    fn deliver_here(&self, payload: &[u8]) -> &'static str {
        let Ok(text) = std::str::from_utf8(payload) else { return "absent" };
        let Some((to, encoded)) = text.split_once('\n') else { return "absent" };
        let Ok(message) = ServerMessage::decode(encoded) else { return "absent" };
        match self.peers.deliver(to, message) {
            Ok(()) => {
                self.counters.received_remote.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
            Err(LocalMiss::Absent) => "absent",
            Err(LocalMiss::Busy) => "busy",
        }
    }

    async fn serve_presence(self: Arc<Self>, mut events: async_nats::Subscriber, shutdown: CancellationToken) {
        #[derive(serde::Deserialize)]
        struct Event {
            id: String,
            online: bool,
            server: String,
        }
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = events.next() => match message { Some(m) => m, None => return },
            };
            match serde_json::from_slice::<Event>(&message.payload) {
                Ok(event) if event.server != self.name => self.peers.broadcast_presence(&event.id, event.online),
                Ok(_) => {}
                Err(e) => tracing::debug!("bad presence event: {e}"),
            }
        }
    }

    async fn serve_alive(self: Arc<Self>, mut beats: async_nats::Subscriber, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = beats.next() => match message { Some(m) => m, None => return },
            };
            let server = String::from_utf8_lossy(&message.payload).into_owned();
            if server != self.name {
                self.servers().insert(server, Instant::now());
            }
        }
    }

    /// Heartbeats, dead servers, and catching up after NATS comes back.
    async fn maintain(
        self: Arc<Self>,
        mut events: mpsc::UnboundedReceiver<async_nats::Event>,
        shutdown: CancellationToken,
    ) {
        let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when NATS came back and the directory has not caught up yet
        // (JetStream may answer a while after the connection).
        let mut behind = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(async_nats::Event::Connected) => {
                        tracing::info!(server = %self.name, "NATS connection back");
                        self.connected.store(true, Ordering::Relaxed);
                        self.counters.connects.fetch_add(1, Ordering::Relaxed);
                        *self.connected_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                        // Others' heartbeats were missed while away: give
                        // them a full period again.
                        for heard in self.servers().values_mut() {
                            *heard = Instant::now();
                        }
                        behind = !self.catch_up().await;
                    }
                    Some(async_nats::Event::Disconnected) => {
                        tracing::warn!(server = %self.name, "NATS connection lost; ids on other servers are unreachable until it is back");
                        self.connected.store(false, Ordering::Relaxed);
                    }
                    Some(other) => tracing::debug!(server = %self.name, "NATS: {other}"),
                    None => break,
                },
                _ = beat.tick() => {
                    if self.is_connected() && behind {
                        behind = !self.catch_up().await;
                    }
                    if self.is_connected() {
                        let subject = format!("{}.alive", self.prefix);
                        let _ = within(NATS_LIMIT, "heartbeat", self.client.publish(subject, Bytes::from(self.name.clone()))).await;
                        self.find_dead().await;
                    }
                }
            }
        }
        // Leaving on purpose: the others need not wait for the heartbeat
        // to lapse. Sessions close with the server; their ids go with it.
        if self.is_connected() {
            let _ = self.drop_homes(false).await;
            let _ = within(NATS_LIMIT, "directory", self.kv.delete(format!("l.{}", self.name))).await;
            let _ = within(NATS_LIMIT, "flush", self.client.flush()).await;
        }
        self.finished.send_replace(true);
    }

    /// After an outage: writes the ids registered meanwhile, drops
    /// directory entries of sessions that ended meanwhile, says it is
    /// alive. Whether all of it was done.
    async fn catch_up(&self) -> bool {
        let mut done =
            within(NATS_LIMIT, "directory", self.kv.put(format!("l.{}", self.name), Bytes::new())).await.is_ok();
        for (id, serial) in self.peers.held() {
            if self.peers.revision(&id, serial).is_none() {
                match self.register_in_directory(&id, serial).await {
                    Ok(None) => self.announce(&id, true).await,
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::debug!(id, "directory not updated yet: {e}");
                        done = false;
                    }
                }
            }
        }
        done && self.drop_homes(true).await
    }

    /// Removes this server's directory entries (all, or those of sessions
    /// no longer held), reporting their ids offline.
    async fn drop_homes(&self, keep_held: bool) -> bool {
        match self.scan(&format!("h.{}.", self.name)).await {
            Ok(homes) => {
                for (token, _) in homes {
                    let Some(id) = decode(&token) else { continue };
                    if !(keep_held && self.peers.contains(&id)) {
                        let _ = self.forget_if_held_by(&id, &self.name).await;
                        let _ =
                            within(NATS_LIMIT, "directory", self.kv.delete(format!("h.{}.{token}", self.name))).await;
                    }
                }
                true
            }
            Err(e) => {
                tracing::debug!("directory not cleaned yet: {e}");
                false
            }
        }
    }

    /// Removes `p.<id>` if it still names `holder`, and reports the id
    /// offline then; whether it did (an error when the entry cannot be
    /// read).
    async fn forget_if_held_by(&self, id: &str, holder: &str) -> Result<bool, String> {
        let key = format!("p.{}", encode(id));
        let forgotten = match within(NATS_LIMIT, "directory", self.kv.entry(&key)).await? {
            Some(entry) => {
                entry.operation == kv::Operation::Put
                    && entry.value == holder.as_bytes()
                    && within(NATS_LIMIT, "directory", self.kv.delete_expect_revision(&key, Some(entry.revision)))
                        .await
                        .is_ok()
            }
            None => false,
        };
        if forgotten {
            self.peers.broadcast_presence(id, false);
            self.announce(id, false).await;
        }
        Ok(forgotten)
    }

    /// Removes the entry this session wrote; whether it was still there
    /// (no newer holder took the id over).
    async fn release_in_directory(&self, id: &str, revision: u64) -> bool {
        let key = format!("p.{}", encode(id));
        // Only the revision this session wrote: a newer holder's entry stays.
        let removed =
            within(NATS_LIMIT, "directory", self.kv.delete_expect_revision(&key, Some(revision))).await.is_ok();
        if removed {
            let _ = within(NATS_LIMIT, "directory", self.kv.delete(format!("h.{}.{}", self.name, encode(id)))).await;
        }
        removed
    }

    async fn find_dead(&self) {
        let now = Instant::now();
        let since = *self.connected_since.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(since) < SERVER_DEAD_AFTER {
            return;
        }
        let (dead, lowest_live): (Vec<String>, bool) = {
            let servers = self.servers();
            let dead = servers
                .iter()
                .filter(|(_, heard)| now.duration_since(**heard) >= SERVER_DEAD_AFTER)
                .map(|(name, _)| name.clone())
                .collect();
            let lowest_live = servers
                .iter()
                .filter(|(_, heard)| now.duration_since(**heard) < SERVER_DEAD_AFTER)
                .all(|(name, _)| *name > self.name);
            (dead, lowest_live)
        };
        if dead.is_empty() || !lowest_live {
            return;
        }
        for server in dead {
            if server == self.name {
                continue;
            }
            tracing::info!(dead = %server, "signaling server unheard for {SERVER_DEAD_AFTER:?}: its ids go offline");
            match self.reap(&server).await {
                Ok(count) => {
                    tracing::info!(dead = %server, count, "ids of a dead server reported offline");
                    self.servers().remove(&server);
                    self.counters.servers_reaped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(dead = %server, "dead server not cleaned up yet: {e}"),
            }
        }
    }

    /// Removes a dead server's ids (those it still holds) and its record;
    /// how many went offline.
    async fn reap(&self, server: &str) -> Result<usize, String> {
        let mut offline = 0;
        for (token, _) in self.scan(&format!("h.{server}.")).await? {
            if let Some(id) = decode(&token)
                && self.forget_if_held_by(&id, server).await?
            {
                offline += 1;
            }
            within(NATS_LIMIT, "directory", self.kv.delete(format!("h.{server}.{token}"))).await?;
        }
        within(NATS_LIMIT, "directory", self.kv.delete(format!("l.{server}"))).await?;
        Ok(offline)
    }
}

/// Opens the directory bucket, making it when it does not exist yet.
async fn open_directory(js: &jetstream::Context, config: &ClusterConfig) -> Result<kv::Store, SignalError> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    // By hand rather than `create_key_value`: async-nats 0.51 asks for
    // account fields NATS 2.9 does not send. These are the KV settings.
    let stream = jetstream::stream::Config {
        name: format!("KV_{}", config.bucket),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: config.replicas.max(1),
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(stream).await {
        // Another server may have made it meanwhile.
        if let Ok(store) = js.get_key_value(&config.bucket).await {
            return Ok(store);
        }
        return Err(nats_error(
            &format!(
                "cannot make the directory bucket {:?} with {} replicas (make it while every NATS server is up; --nats-replicas sets the count)",
                config.bucket, config.replicas
            ),
            e,
        ));
    }
    js.get_key_value(&config.bucket).await.map_err(|e| nats_error("cannot open the directory bucket", e))
}

#[async_trait]
impl PeerRoutes for NatsRoutes {
    fn local(&self) -> &LocalPeers {
        &self.peers
    }

    async fn claim(self: Arc<Self>, id: &str, session: LocalSession) {
        let serial = session.serial;
        let inserted = self.peers.insert(id, session);
        if !self.is_connected() {
            // Written when NATS is back (`catch_up`).
            if inserted == Inserted::New {
                self.peers.broadcast_presence(id, true);
            }
            return;
        }
        match self.register_in_directory(id, serial).await {
            // Online for the cluster unless another server held it (it was
            // online all along) or it is back within its grace here.
            Ok(None) if inserted == Inserted::New => {
                self.peers.broadcast_presence(id, true);
                self.announce(id, true).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(id, "registered here only, the directory follows when NATS answers: {e}");
                if inserted == Inserted::New {
                    self.peers.broadcast_presence(id, true);
                }
            }
        }
    }

    fn release(self: Arc<Self>, id: String, serial: u64) {
        let Some(revision) = self.peers.remove(&id, serial) else { return };
        tokio::spawn(async move {
            // The directory keeps naming this server through the grace: a
            // server that dies meanwhile leaves the entry for the others
            // to report; a session elsewhere takes it over (and the
            // compare-and-swap below then fails: no offline event).
            tokio::time::sleep(PRESENCE_GRACE).await;
            if !self.peers.grace_over(&id, serial) {
                return;
            }
            let forgotten = match revision {
                Some(revision) if self.is_connected() => self.release_in_directory(&id, revision).await,
                // Never written, or NATS is down (`catch_up` removes it).
                _ => !self.is_connected() || revision.is_none(),
            };
            if forgotten {
                self.peers.broadcast_presence(&id, false);
                if self.is_connected() {
                    self.announce(&id, false).await;
                }
            }
        });
    }

    async fn deliver(&self, to: &str, message: ServerMessage) -> Result<(), Undeliverable> {
        if self.peers.contains(to) {
            return self.peers.deliver(to, message).map_err(|miss| match miss {
                LocalMiss::Absent => Undeliverable::Offline(to.to_string()),
                LocalMiss::Busy => Undeliverable::Busy(to.to_string()),
            });
        }
        let unreachable = |reason: String| {
            self.counters.remote_unreachable.fetch_add(1, Ordering::Relaxed);
            Undeliverable::Unreachable { id: to.to_string(), reason }
        };
        let offline = || {
            self.counters.remote_offline.fetch_add(1, Ordering::Relaxed);
            Undeliverable::Offline(to.to_string())
        };
        if !self.is_connected() {
            return Err(unreachable("the signaling cluster is unavailable (NATS connection lost)".into()));
        }
        let payload = Bytes::from(format!("{to}\n{}", message.encode()));
        let cached = self.owners().get(to).cloned();
        // A remembered holder first; when it no longer holds the id (or is
        // gone), the directory's.
        for owner in [cached.clone(), None] {
            let from_cache = owner.is_some();
            let owner = match owner {
                Some(owner) => owner,
                None => match within(NATS_LIMIT, "directory", self.kv.entry(format!("p.{}", encode(to)))).await {
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                        String::from_utf8_lossy(&entry.value).into_owned()
                    }
                    Ok(_) => return Err(offline()),
                    Err(e) => return Err(unreachable(e)),
                },
            };
            if owner == self.name {
                self.owners().remove(to);
                if from_cache {
                    continue;
                }
                return Err(offline());
            }
            let request = self.client.request(self.subject(&owner, "deliver"), payload.clone());
            let gone = match tokio::time::timeout(NATS_LIMIT, request).await {
                Ok(Ok(reply)) => match &reply.payload[..] {
                    b"ok" => {
                        self.counters.delivered_remote.fetch_add(1, Ordering::Relaxed);
                        if !from_cache {
                            let mut owners = self.owners();
                            if owners.len() >= OWNER_CACHE {
                                owners.clear();
                            }
                            owners.insert(to.to_string(), owner);
                        }
                        return Ok(());
                    }
                    b"busy" => return Err(Undeliverable::Busy(to.to_string())),
                    _ => true,
                },
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => true,
                Ok(Err(e)) => return Err(unreachable(format!("its signaling server did not answer: {e}"))),
                Err(_) => {
                    return Err(unreachable(format!("its signaling server did not answer within {NATS_LIMIT:?}")));
                }
            };
            if gone {
                self.owners().remove(to);
                if !from_cache {
                    return Err(offline());
                }
            }
        }
        Err(offline())
    }

    async fn peers(&self) -> Result<Vec<String>, Undeliverable> {
        let mut ids = self.peers.ids();
        if self.is_connected() {
            match self.scan("p.").await {
                Ok(keys) => ids.extend(keys.into_iter().filter_map(|(token, _)| decode(&token))),
                Err(e) => tracing::debug!("peer list from this server only: {e}"),
            }
        }
        ids.sort();
        ids.dedup();
        ids.truncate(MAX_LISTED);
        Ok(ids)
    }

    fn healthy(&self) -> bool {
        self.is_connected()
    }
}
