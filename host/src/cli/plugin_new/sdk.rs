//! The guest SDK a new plugin depends on: a copy written into the crate
//! (from the files embedded in this binary at build time), a checkout's
//! path, or a git repository; and a lock file that pins the SDK's own
//! dependencies to the versions this release was built and tested with.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

include!(concat!(env!("OUT_DIR"), "/guest_sdk.rs"));

/// Where the guest SDK comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A copy in the new crate, `vendor/fogconnect-guest` (and the WIT
    /// files in `vendor/wit`): builds with no other checkout.
    Vendored,
    /// The `sdk-guest` directory of a fogconnect checkout.
    Path(PathBuf),
    /// A fogconnect git repository at a commit.
    Git {
        /// The repository.
        url: String,
        /// The commit (or any reference git resolves).
        rev: String,
    },
}

/// An embedded file of the workspace.
fn embedded(path: &str) -> anyhow::Result<&'static str> {
    GUEST_SDK_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, text)| *text)
        .with_context(|| format!("this build embeds no {path}"))
}

/// The workspace's manifest, parsed.
fn workspace() -> anyhow::Result<toml::Table> {
    embedded("Cargo.toml")?.parse().context("the embedded workspace manifest")
}

/// A string of the workspace manifest's `[workspace.package]` (the version
/// and licence are this crate's too: `CARGO_PKG_*` has them).
pub fn package_field(field: &str) -> anyhow::Result<String> {
    let workspace = workspace()?;
    workspace
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get(field))
        .and_then(toml::Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("no workspace.package.{field} in the embedded manifest"))
}

/// The `fogconnect-guest = ...` line of the new crate's manifest, and how
/// it gets the SDK (for its comment).
pub fn dependency(source: &SdkSource) -> (String, String) {
    match source {
        SdkSource::Vendored => (
            "fogconnect-guest = { path = \"vendor/fogconnect-guest\" }".into(),
            "copied into vendor/ (its WIT contracts in vendor/wit)".into(),
        ),
        SdkSource::Path(dir) => (
            format!("fogconnect-guest = {{ path = {} }}", toml::Value::from(dir.display().to_string())),
            "from a checkout of fogconnect".into(),
        ),
        SdkSource::Git { url, rev } => (
            format!(
                "fogconnect-guest = {{ git = {}, rev = {} }}",
                toml::Value::from(url.as_str()),
                toml::Value::from(rev.as_str())
            ),
            "from fogconnect's git repository".into(),
        ),
    }
}

/// Checks that `dir` holds the guest SDK crate, and returns it absolute.
///
/// # Errors
/// No `Cargo.toml`, or one of another crate.
pub fn checkout(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
    let parsed: toml::Table = text.parse().with_context(|| format!("{} is not TOML", manifest.display()))?;
    let name = parsed.get("package").and_then(|p| p.get("name")).and_then(toml::Value::as_str);
    if name != Some("fogconnect-guest") {
        bail!("{} is not the guest SDK's directory (sdk-guest in a fogconnect checkout)", dir.display());
    }
    std::fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

/// The files of the vendored copy, by path in the new crate.
///
/// # Errors
/// The embedded manifest lacks a field the copy's manifest needs.
pub fn vendored_files() -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for (path, text) in GUEST_SDK_FILES {
        if let Some(source) = path.strip_prefix("sdk-guest/") {
            files.push((format!("vendor/fogconnect-guest/{source}"), (*text).to_string()));
        } else if path.starts_with("wit/") {
            files.push((format!("vendor/{path}"), (*text).to_string()));
        }
    }
    let wit_bindgen = wit_bindgen_dependency()?;
    let manifest = format!(
        "# The fogconnect guest SDK {version} (commit {commit}), copied by `fogconnect plugin new`.\n\
         # Its bindings read the WIT contracts in ../wit.\n\
         [package]\nname = \"fogconnect-guest\"\nversion = \"{version}\"\nedition = \"{edition}\"\n\
         license = \"{license}\"\npublish = false\n\n[dependencies]\nwit-bindgen = {wit_bindgen}\n",
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("FOGCONNECT_BUILD_COMMIT"),
        edition = package_field("edition")?,
        license = env!("CARGO_PKG_LICENSE"),
    );
    files.push(("vendor/fogconnect-guest/Cargo.toml".into(), manifest));
    Ok(files)
}

/// The workspace's `wit-bindgen` dependency, as its manifest writes it.
fn wit_bindgen_dependency() -> anyhow::Result<toml::Value> {
    workspace()?
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(|d| d.get("wit-bindgen"))
        .cloned()
        .context("no wit-bindgen in the embedded workspace manifest")
}

/// The version requirement of the workspace's `wit-bindgen` ("0.61").
fn wit_bindgen_requirement() -> anyhow::Result<String> {
    let dependency = wit_bindgen_dependency()?;
    let requirement = match &dependency {
        toml::Value::String(version) => Some(version.as_str()),
        other => other.get("version").and_then(toml::Value::as_str),
    };
    let requirement = requirement.context("wit-bindgen has no version in the embedded workspace manifest")?;
    Ok(requirement.trim_start_matches(['^', '=']).to_string())
}

/// A version's numbers (`0.61.2` is `[0, 61, 2]`; pre-release text ends it).
fn version_numbers(version: &str) -> Vec<u64> {
    version.split(['.', '-', '+']).map_while(|part| part.parse().ok()).collect()
}

/// Whether `version` meets `requirement` as cargo's default (caret)
/// requirement of the form `MAJOR[.MINOR[.PATCH]]` does: the same numbers
/// up to the first one that is not zero, then not lower.
fn meets(version: &str, requirement: &str) -> bool {
    let (have, want) = (version_numbers(version), version_numbers(requirement));
    if want.is_empty() {
        return false;
    }
    let fixed = want.iter().position(|&n| n != 0).map_or(want.len(), |i| i + 1);
    have.len() >= want.len() && have[..fixed] == want[..fixed] && have[..want.len()] >= want[..]
}

/// A lock file holding the SDK's dependencies (wit-bindgen and all it
/// needs) at the versions of this release's own lock file; cargo adds the
/// new crate and the SDK to it at the first build.
///
/// # Errors
/// The embedded lock file is not as cargo writes it.
pub fn lock_file() -> anyhow::Result<String> {
    let lock: toml::Table = embedded("Cargo.lock")?.parse().context("the embedded lock file")?;
    let packages = lock.get("package").and_then(toml::Value::as_array).context("no packages in the lock file")?;
    let key = |p: &toml::Value| -> Option<(String, String)> {
        Some((p.get("name")?.as_str()?.to_string(), p.get("version")?.as_str()?.to_string()))
    };
    let by_key: BTreeMap<(String, String), &toml::Value> = packages.iter().filter_map(|p| Some((key(p)?, p))).collect();
    // A dependency is written "name", "name version" or "name version (source)".
    let resolve = |dependency: &str| -> Option<(String, String)> {
        let mut words = dependency.split_whitespace();
        let name = words.next()?;
        match words.next() {
            Some(version) => Some((name.to_string(), version.to_string())),
            None => {
                let mut matching = by_key.keys().filter(|(n, _)| n == name);
                let only = matching.next()?.clone();
                matching.next().is_none().then_some(only)
            }
        }
    };
    // The SDK's wit-bindgen: the lock may hold other versions (the host's
    // own dependencies use some).
    let wanted_version = wit_bindgen_requirement()?;
    let root = by_key
        .keys()
        .filter(|(name, version)| name == "wit-bindgen" && meets(version, &wanted_version))
        .max_by_key(|(_, version)| version_numbers(version))
        .cloned()
        .with_context(|| format!("no wit-bindgen {wanted_version} locked"))?;
    let mut wanted = BTreeSet::new();
    let mut queue = VecDeque::from([root]);
    while let Some(next) = queue.pop_front() {
        if !wanted.insert(next.clone()) {
            continue;
        }
        let package = by_key.get(&next).with_context(|| format!("{} {} is not locked", next.0, next.1))?;
        let dependencies = package.get("dependencies").and_then(toml::Value::as_array);
        for dependency in dependencies.into_iter().flatten().filter_map(toml::Value::as_str) {
            queue.push_back(resolve(dependency).with_context(|| format!("cannot resolve {dependency}"))?);
        }
    }
    let mut text = String::from(
        "# Pins the guest SDK's dependencies to the versions fogconnect was built\n\
         # and tested with; cargo adds this crate and keeps the file up to date.\n\
         version = 4\n",
    );
    for key in &wanted {
        let Some(package) = by_key.get(key) else { continue };
        let mut entry = toml::Table::new();
        entry.insert("package".into(), toml::Value::Array(vec![(*package).clone()]));
        text.push('\n');
        text.push_str(&toml::to_string(&entry).context("writing the lock file")?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_has_the_sdk_its_contracts_and_a_manifest() -> anyhow::Result<()> {
        let files = vendored_files()?;
        let paths: BTreeSet<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        for path in [
            "vendor/fogconnect-guest/Cargo.toml",
            "vendor/fogconnect-guest/src/lib.rs",
            "vendor/fogconnect-guest/src/stream.rs",
            "vendor/wit/service.wit",
            "vendor/wit/stream/stream.wit",
        ] {
            assert!(paths.contains(path), "{path} missing from {paths:?}");
        }
        let manifest = &files.iter().find(|(p, _)| p == "vendor/fogconnect-guest/Cargo.toml").context("manifest")?.1;
        let parsed: toml::Table = manifest.parse()?;
        assert_eq!(parsed["package"]["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
        assert!(parsed["dependencies"].get("wit-bindgen").is_some());
        Ok(())
    }

    #[test]
    fn the_lock_file_pins_wit_bindgen_and_all_it_needs() -> anyhow::Result<()> {
        let text = lock_file()?;
        let lock: toml::Table = text.parse()?;
        let packages = lock["package"].as_array().context("packages")?;
        let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
        for name in ["wit-bindgen", "wit-bindgen-rust-macro", "wit-parser", "proc-macro2"] {
            assert!(names.contains(name), "{name} is not pinned");
        }
        let wit_bindgen: Vec<&str> = packages
            .iter()
            .filter(|p| p["name"].as_str() == Some("wit-bindgen"))
            .filter_map(|p| p["version"].as_str())
            .collect();
        assert_eq!(wit_bindgen.len(), 1, "{wit_bindgen:?}");
        assert!(meets(wit_bindgen[0], &wit_bindgen_requirement()?), "{wit_bindgen:?}");
        // Nothing of the host's: the plugin needs no tokio or wasmtime.
        for name in ["tokio", "wasmtime", "fogconnect"] {
            assert!(!names.contains(name), "{name} is pinned");
        }
        Ok(())
    }

    #[test]
    fn versions_meet_caret_requirements() {
        assert!(meets("0.61.0", "0.61") && meets("0.61.3", "0.61") && meets("0.61.3", "0.61.2"));
        assert!(!meets("0.57.1", "0.61") && !meets("0.62.0", "0.61") && !meets("0.61.1", "0.61.2"));
        assert!(meets("1.4.0", "1.2") && !meets("2.0.0", "1.2") && !meets("1.1.9", "1.2"));
        assert!(meets("0.0.3", "0.0.3") && !meets("0.0.4", "0.0.3"));
    }

    #[test]
    fn a_checkout_is_checked_to_be_the_sdk() {
        let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdk-guest");
        assert!(checkout(&sdk).is_ok());
        let host = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        assert!(checkout(&host).is_err_and(|e| e.to_string().contains("is not the guest SDK")));
    }
}
