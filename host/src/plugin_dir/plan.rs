//! The sans-IO core of the plugin directory: which file names are plugins,
//! and, from one directory listing to the next, which services to load or
//! swap and which to unload. A file is acted on once it has stayed the same
//! for one whole scan, so a plugin still being copied in is not loaded
//! half-written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// A plugin file's name split by the naming convention
/// `<service>-<name>.wasm`, e.g. `3-echo.wasm` for service 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFileName {
    /// The service number (0 to 255).
    pub service: u8,
    /// The plugin's name.
    pub name: String,
}

/// Splits a file name by the naming convention. `None` for files that are
/// not plugins (no `.wasm` extension, e.g. the manifests); `Err` with the
/// reason for `.wasm` files the convention does not fit.
pub fn parse_file_name(file_name: &str) -> Option<Result<PluginFileName, String>> {
    let stem = file_name.strip_suffix(".wasm")?;
    let parsed = stem
        .split_once('-')
        .filter(|(service, name)| {
            !name.is_empty() && !service.is_empty() && service.len() <= 3 && service.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|(service, name)| Some(PluginFileName { service: service.parse().ok()?, name: name.to_string() }));
    Some(parsed.ok_or_else(|| format!("{file_name}: not named <service 0-255>-<name>.wasm")))
}

/// What identifies one version of a plugin file and its manifest without
/// reading them: sizes, modification times and inodes. Any write or
/// replacement changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    /// The wasm file's size, modification time (ns since the epoch) and
    /// inode.
    pub wasm: (u64, u128, u64),
    /// The same of the manifest beside it, when there is one.
    pub manifest: Option<(u64, u128, u64)>,
}

/// One plugin file found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenFile {
    /// Its path.
    pub path: PathBuf,
    /// Its name, split.
    pub file: PluginFileName,
    /// Its current stamp.
    pub stamp: FileStamp,
}

/// What to do after a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryAction {
    /// Load the file for its service, or swap the service's plugin for it.
    Apply(SeenFile),
    /// The service's file is gone: unload the service (if the plugin
    /// serving is still the one the file gave).
    Remove {
        /// The service number.
        service: u8,
        /// The file that was removed.
        path: PathBuf,
    },
}

/// The directory's state between scans.
#[derive(Debug, Default)]
pub struct DirectoryPlan {
    /// The file and stamp last acted on, per service.
    applied: BTreeMap<u8, (PathBuf, FileStamp)>,
    /// Changes seen once, waiting for a second scan that sees them the same.
    pending: BTreeMap<u8, (PathBuf, FileStamp)>,
    /// Services whose file was missing in the last scan.
    missing: BTreeSet<u8>,
}

/// The outcome of one scan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// What to do, in service order.
    pub actions: Vec<DirectoryAction>,
    /// Files that cannot be used, with the reason (reported, otherwise
    /// ignored).
    pub problems: Vec<String>,
}

impl DirectoryPlan {
    /// Takes in one directory listing (the `.wasm` files the convention
    /// fits; see [`parse_file_name`]). With `settled` the files are taken
    /// as complete (the first scan when the node starts); otherwise a
    /// change is acted on when the next scan sees it unchanged.
    pub fn scan(&mut self, files: Vec<SeenFile>, settled: bool) -> ScanOutcome {
        let mut outcome = ScanOutcome::default();
        let mut by_service: BTreeMap<u8, Vec<SeenFile>> = BTreeMap::new();
        for file in files {
            by_service.entry(file.file.service).or_default().push(file);
        }
        let present: BTreeSet<u8> = by_service.keys().copied().collect();
        for (service, mut files) in by_service {
            if files.len() > 1 {
                let mut names: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
                names.sort();
                outcome.problems.push(format!(
                    "service {service} has {} plugin files: {}",
                    names.len(),
                    names.join(", ")
                ));
                self.pending.remove(&service);
                continue;
            }
            let Some(file) = files.pop() else { continue };
            self.missing.remove(&service);
            let current = (file.path.clone(), file.stamp);
            if self.applied.get(&service) == Some(&current) {
                self.pending.remove(&service);
            } else if settled || self.pending.get(&service) == Some(&current) {
                self.pending.remove(&service);
                self.applied.insert(service, current);
                outcome.actions.push(DirectoryAction::Apply(file));
            } else {
                self.pending.insert(service, current);
            }
        }
        self.pending.retain(|service, _| present.contains(service));
        let gone: Vec<u8> = self.applied.keys().copied().filter(|s| !present.contains(s)).collect();
        for service in gone {
            // Gone for two scans in a row: a file replaced by delete and
            // copy is not unloaded in between.
            if settled || !self.missing.insert(service) {
                self.missing.remove(&service);
                if let Some((path, _)) = self.applied.remove(&service) {
                    outcome.actions.push(DirectoryAction::Remove { service, path });
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, len: u64, modified: u128) -> SeenFile {
        let file = parse_file_name(name).and_then(Result::ok).expect("test file names follow the convention");
        SeenFile {
            path: PathBuf::from(format!("/plugins/{name}")),
            file,
            stamp: FileStamp { wasm: (len, modified, 1), manifest: None },
        }
    }

    fn applied(outcome: &ScanOutcome) -> Vec<(u8, u64)> {
        outcome
            .actions
            .iter()
            .filter_map(|a| match a {
                DirectoryAction::Apply(f) => Some((f.file.service, f.stamp.wasm.0)),
                DirectoryAction::Remove { .. } => None,
            })
            .collect()
    }

    fn removed(outcome: &ScanOutcome) -> Vec<u8> {
        outcome
            .actions
            .iter()
            .filter_map(|a| match a {
                DirectoryAction::Remove { service, .. } => Some(*service),
                DirectoryAction::Apply(_) => None,
            })
            .collect()
    }

    #[test]
    fn the_naming_convention() {
        assert_eq!(parse_file_name("3-echo.wasm"), Some(Ok(PluginFileName { service: 3, name: "echo".into() })));
        assert_eq!(
            parse_file_name("255-my-plugin.wasm"),
            Some(Ok(PluginFileName { service: 255, name: "my-plugin".into() }))
        );
        assert_eq!(parse_file_name("3-echo.toml"), None);
        assert_eq!(parse_file_name("README"), None);
        for bad in ["256-echo.wasm", "echo.wasm", "-echo.wasm", "3-.wasm", "x3-echo.wasm", "0003-echo.wasm", ".wasm"] {
            assert!(matches!(parse_file_name(bad), Some(Err(_))), "{bad}");
        }
    }

    #[test]
    fn files_present_at_start_are_loaded_at_once() {
        let mut plan = DirectoryPlan::default();
        let outcome = plan.scan(vec![seen("3-echo.wasm", 10, 1), seen("4-demo.wasm", 20, 1)], true);
        assert_eq!(applied(&outcome), vec![(3, 10), (4, 20)]);
        assert_eq!(
            plan.scan(vec![seen("3-echo.wasm", 10, 1), seen("4-demo.wasm", 20, 1)], false),
            ScanOutcome::default()
        );
    }

    #[test]
    fn a_change_is_applied_once_it_held_still_for_a_scan() {
        let mut plan = DirectoryPlan::default();
        plan.scan(vec![seen("3-echo.wasm", 10, 1)], true);
        // Being written: it changes from one scan to the next.
        assert!(plan.scan(vec![seen("3-echo.wasm", 5, 2)], false).actions.is_empty());
        assert!(plan.scan(vec![seen("3-echo.wasm", 12, 3)], false).actions.is_empty());
        assert_eq!(applied(&plan.scan(vec![seen("3-echo.wasm", 12, 3)], false)), vec![(3, 12)]);
        assert!(plan.scan(vec![seen("3-echo.wasm", 12, 3)], false).actions.is_empty(), "once");
    }

    #[test]
    fn a_new_file_is_loaded_after_one_stable_scan() {
        let mut plan = DirectoryPlan::default();
        plan.scan(vec![], true);
        assert!(plan.scan(vec![seen("7-new.wasm", 1, 1)], false).actions.is_empty());
        assert_eq!(applied(&plan.scan(vec![seen("7-new.wasm", 1, 1)], false)), vec![(7, 1)]);
    }

    #[test]
    fn a_file_gone_for_two_scans_unloads_its_service() {
        let mut plan = DirectoryPlan::default();
        plan.scan(vec![seen("3-echo.wasm", 10, 1)], true);
        assert!(plan.scan(vec![], false).actions.is_empty(), "maybe being replaced");
        assert_eq!(removed(&plan.scan(vec![], false)), vec![3]);
        assert!(plan.scan(vec![], false).actions.is_empty(), "once");
    }

    #[test]
    fn a_file_replaced_by_delete_and_copy_is_swapped_not_unloaded() {
        let mut plan = DirectoryPlan::default();
        plan.scan(vec![seen("3-echo.wasm", 10, 1)], true);
        assert!(plan.scan(vec![], false).actions.is_empty());
        assert!(plan.scan(vec![seen("3-echo.wasm", 11, 2)], false).actions.is_empty());
        let outcome = plan.scan(vec![seen("3-echo.wasm", 11, 2)], false);
        assert_eq!((applied(&outcome), removed(&outcome)), (vec![(3, 11)], vec![]));
    }

    #[test]
    fn a_renamed_file_for_the_same_service_is_applied() {
        let mut plan = DirectoryPlan::default();
        plan.scan(vec![seen("3-echo.wasm", 10, 1)], true);
        plan.scan(vec![seen("3-echo2.wasm", 10, 1)], false);
        let outcome = plan.scan(vec![seen("3-echo2.wasm", 10, 1)], false);
        assert_eq!((applied(&outcome), removed(&outcome)), (vec![(3, 10)], vec![]));
    }

    #[test]
    fn two_files_for_one_service_are_a_problem_and_change_nothing() {
        let mut plan = DirectoryPlan::default();
        plan.scan(vec![seen("3-echo.wasm", 10, 1)], true);
        let outcome = plan.scan(vec![seen("3-echo.wasm", 10, 1), seen("3-other.wasm", 5, 1)], false);
        assert!(outcome.actions.is_empty());
        assert_eq!(outcome.problems, vec!["service 3 has 2 plugin files: /plugins/3-echo.wasm, /plugins/3-other.wasm"]);
        let outcome = plan.scan(vec![seen("3-echo.wasm", 10, 1), seen("3-other.wasm", 5, 1)], false);
        assert!(outcome.actions.is_empty(), "not unloaded either");
    }

    #[test]
    fn a_manifest_change_alone_is_a_change() {
        let mut plan = DirectoryPlan::default();
        plan.scan(vec![seen("3-echo.wasm", 10, 1)], true);
        let mut with_manifest = seen("3-echo.wasm", 10, 1);
        with_manifest.stamp.manifest = Some((20, 5, 2));
        plan.scan(vec![with_manifest.clone()], false);
        assert_eq!(applied(&plan.scan(vec![with_manifest], false)), vec![(3, 10)]);
    }
}
