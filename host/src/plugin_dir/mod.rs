//! A plugin directory: the node loads every plugin file in it, swaps a
//! service's plugin when its file changes, and unloads the service when its
//! file is removed.
//!
//! Naming convention: `<service>-<name>.wasm` (service 0 to 255, e.g.
//! `3-echo.wasm` serves service 3 as plugin "echo"), with an optional
//! manifest `<service>-<name>.toml` beside it (see
//! [`fogconnect_proto::manifest`]). Other files are ignored; a `.wasm` file
//! that does not follow the convention, and a second file for the same
//! service, are reported and left alone.
//!
//! The directory is scanned every interval (1 s by default). A change is
//! acted on once the next scan sees it unchanged, so a file being copied in
//! is not loaded half-written (writing to a temporary name and renaming it
//! into place is still the cleanest way to publish a build). A build that
//! does not load or swap leaves the service as it was; it is retried when
//! its file changes again. A file whose content and manifest are those of
//! the plugin serving is not swapped again (touching it does nothing).
//! Removing a file unloads its service only when the plugin serving is the
//! one the file gave, not one loaded or swapped since by other means.
//!
//! Why polling and not file-system notifications: the stability check
//! needs a second look after an interval anyway, a scan of a directory of a
//! few plugins costs microseconds, and polling works the same on every file
//! system (network and container mounts included).

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::node::{Node, PluginBuild, manifest_path};
use crate::runtime::engine::hex_sha256;
use plan::{DirectoryAction, DirectoryPlan, FileStamp, SeenFile, parse_file_name};

/// Default time between two scans.
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of starting a plugin directory.
#[derive(Debug, thiserror::Error)]
pub enum PluginDirError {
    /// The directory cannot be listed.
    #[error("cannot read the plugin directory {path}: {message}")]
    Read {
        /// The directory.
        path: String,
        /// The I/O error.
        message: String,
    },
}

/// What the directory did to a service, or why it could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEvent {
    /// The service number (`None` for a problem with a file of no service).
    pub service: Option<u8>,
    /// The file concerned (empty for a problem its reason describes).
    pub file: String,
    /// What happened.
    pub outcome: DirectoryOutcome,
}

/// What happened to a service because of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryOutcome {
    /// The file's plugin was loaded on the (free) service.
    Loaded,
    /// The service's plugin was swapped for the file's; the new generation.
    Swapped {
        /// The new generation's number.
        generation: u64,
    },
    /// The file is the plugin already serving (same content and manifest).
    Unchanged,
    /// The file was removed and its service unloaded.
    Unloaded,
    /// The file was removed, but the service serves another plugin now:
    /// left as it is.
    Kept,
    /// The file could not be used; the service is as it was.
    Failed {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for DirectoryEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(service) = self.service {
            write!(f, "service {service}: ")?;
        }
        match &self.outcome {
            DirectoryOutcome::Loaded => write!(f, "loaded {}", self.file),
            DirectoryOutcome::Swapped { generation } => write!(f, "swapped to {} (generation {generation})", self.file),
            DirectoryOutcome::Unchanged => write!(f, "{} unchanged", self.file),
            DirectoryOutcome::Unloaded => write!(f, "{} removed, unloaded", self.file),
            DirectoryOutcome::Kept => write!(f, "{} removed, another plugin serves: kept", self.file),
            DirectoryOutcome::Failed { reason } if self.file.is_empty() => f.write_str(reason),
            DirectoryOutcome::Failed { reason } => write!(f, "{}: {reason}", self.file),
        }
    }
}

/// A watched plugin directory; the watching stops when this is dropped.
#[derive(Debug)]
pub struct PluginDirectory {
    events: broadcast::Sender<DirectoryEvent>,
    stop: CancellationToken,
}

impl PluginDirectory {
    /// Loads every plugin file in `dir` on `node` (the outcomes are
    /// returned), then scans it every `interval` in the background.
    ///
    /// # Errors
    /// [`PluginDirError::Read`] when the directory cannot be listed.
    pub async fn start(
        node: Node,
        dir: &Path,
        interval: Duration,
    ) -> Result<(Self, Vec<DirectoryEvent>), PluginDirError> {
        let mut watcher = Watcher {
            node,
            dir: dir.to_path_buf(),
            plan: DirectoryPlan::default(),
            applied: BTreeMap::new(),
            problems: BTreeSet::new(),
        };
        let files = watcher.list().await?;
        let initial = watcher.apply(files, true).await;
        let (events, _) = broadcast::channel(256);
        let stop = CancellationToken::new();
        let (sender, stopped) = (events.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let outcome = match watcher.list().await {
                    Ok((files, problems)) => watcher.apply((files, problems), false).await,
                    Err(e) => vec![DirectoryEvent {
                        service: None,
                        file: watcher.dir.display().to_string(),
                        outcome: DirectoryOutcome::Failed { reason: e.to_string() },
                    }],
                };
                for event in outcome {
                    let _ = sender.send(event);
                }
            }
        });
        Ok((Self { events, stop }, initial))
    }

    /// Subscribes to what the directory does from now on.
    pub fn events(&self) -> broadcast::Receiver<DirectoryEvent> {
        self.events.subscribe()
    }

    /// Stops watching (the plugins stay loaded).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for PluginDirectory {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A build the directory put in place: what tells whether a file still
/// holds the plugin serving.
#[derive(Debug, PartialEq, Eq)]
struct AppliedBuild {
    /// Hex SHA-256 of the wasm, as the node lists it.
    hash: String,
    /// The manifest it was loaded with.
    manifest: fogconnect_proto::manifest::PluginManifest,
}

/// The watching task's state.
struct Watcher {
    node: Node,
    dir: PathBuf,
    plan: DirectoryPlan,
    /// Per service, the build the directory last put in place.
    applied: BTreeMap<u8, AppliedBuild>,
    /// The problems reported, until they go away.
    problems: BTreeSet<String>,
}

/// Size, modification time and inode of a file.
fn stamp_of(meta: &std::fs::Metadata) -> (u64, u128, u64) {
    let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0;
    (meta.len(), modified, inode)
}

impl Watcher {
    /// The plugin files of the directory, and the files that break the
    /// naming convention.
    async fn list(&self) -> Result<(Vec<SeenFile>, Vec<String>), PluginDirError> {
        let read_error =
            |e: std::io::Error| PluginDirError::Read { path: self.dir.display().to_string(), message: e.to_string() };
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(read_error)?;
        let mut files = Vec::new();
        let mut problems = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(read_error)? {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let file = match parse_file_name(&file_name) {
                None => continue,
                Some(Err(problem)) => {
                    problems.push(problem);
                    continue;
                }
                Some(Ok(file)) => file,
            };
            let path = entry.path();
            // Vanished between listing and looking: the next scan sees it.
            let Ok(meta) = tokio::fs::metadata(&path).await else { continue };
            if !meta.is_file() {
                continue;
            }
            let manifest = tokio::fs::metadata(manifest_path(&path)).await.ok().map(|m| stamp_of(&m));
            files.push(SeenFile { path, file, stamp: FileStamp { wasm: stamp_of(&meta), manifest } });
        }
        problems.sort();
        Ok((files, problems))
    }

    /// Runs one scan's actions.
    async fn apply(&mut self, (files, problems): (Vec<SeenFile>, Vec<String>), settled: bool) -> Vec<DirectoryEvent> {
        let outcome = self.plan.scan(files, settled);
        let problem = |reason: String| DirectoryEvent {
            service: None,
            file: String::new(),
            outcome: DirectoryOutcome::Failed { reason },
        };
        // A problem is reported when it first shows, not every scan.
        let current: BTreeSet<String> = problems.into_iter().chain(outcome.problems).collect();
        let mut events: Vec<DirectoryEvent> = Vec::new();
        for reason in current.difference(&self.problems) {
            tracing::warn!("plugin directory: {reason}");
            events.push(problem(reason.clone()));
        }
        self.problems = current;
        for action in outcome.actions {
            let event = match action {
                DirectoryAction::Apply(file) => self.put_in_place(file).await,
                DirectoryAction::Remove { service, path } => self.remove(service, &path).await,
            };
            match &event.outcome {
                DirectoryOutcome::Failed { reason } => {
                    tracing::warn!(service = event.service, file = %event.file, "plugin directory: {reason}")
                }
                _ => tracing::info!("plugin directory: {event}"),
            }
            events.push(event);
        }
        events
    }

    /// Loads or swaps in the file's plugin.
    async fn put_in_place(&mut self, file: SeenFile) -> DirectoryEvent {
        let service = file.file.service;
        let shown = file.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let event = |outcome| DirectoryEvent { service: Some(service), file: shown.clone(), outcome };
        let build = match PluginBuild::read(&file.path).await {
            Ok(build) => PluginBuild { name: file.file.name.clone(), ..build },
            Err(e) => return event(DirectoryOutcome::Failed { reason: e.to_string() }),
        };
        let applied = AppliedBuild { hash: hex_sha256(&build.wasm), manifest: build.manifest.clone() };
        let serving = self.node.services().into_iter().find(|s| s.service == service);
        let outcome = match serving {
            Some(info) if self.applied.get(&service) == Some(&applied) && info.hash == applied.hash => {
                DirectoryOutcome::Unchanged
            }
            Some(_) => match self.node.swap_plugin_build(service, build).await {
                Ok(report) => DirectoryOutcome::Swapped { generation: report.generation },
                Err(e) => DirectoryOutcome::Failed { reason: e.to_string() },
            },
            None => match self.node.load_plugin_build(service, build).await {
                Ok(()) => DirectoryOutcome::Loaded,
                Err(e) => DirectoryOutcome::Failed { reason: e.to_string() },
            },
        };
        if matches!(outcome, DirectoryOutcome::Loaded | DirectoryOutcome::Swapped { .. }) {
            self.applied.insert(service, applied);
        }
        event(outcome)
    }

    /// Unloads the service of a removed file, if its plugin is still the
    /// one the file gave.
    async fn remove(&mut self, service: u8, path: &Path) -> DirectoryEvent {
        let shown = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let ours = self.applied.remove(&service);
        let serving = self.node.services().into_iter().find(|s| s.service == service);
        let outcome = match (ours, serving) {
            (Some(ours), Some(info)) if ours.hash == info.hash => match self.node.unload_plugin(service).await {
                Ok(()) => DirectoryOutcome::Unloaded,
                Err(e) => DirectoryOutcome::Failed { reason: e.to_string() },
            },
            _ => DirectoryOutcome::Kept,
        };
        DirectoryEvent { service: Some(service), file: shown, outcome }
    }
}
