//! Names the build for `fogconnect --version`: the commit it was built
//! from (`FOGCONNECT_BUILD_COMMIT` when set, as a package build from a
//! source tarball sets it; else git's, when the source is a checkout; else
//! "unknown"), the cargo profile and the optional features compiled in.
//!
//! Also lists the guest SDK's files for `fogconnect plugin new`, which
//! writes a copy of the SDK into a new plugin crate: `$OUT_DIR/guest_sdk.rs`
//! embeds each (the SDK's sources, the WIT contracts, the workspace's
//! manifest and lock file, for the versions the copy must name).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FOGCONNECT_BUILD_COMMIT");
    for path in ["../.git/HEAD", "../.git/refs", "../.git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("FOGCONNECT_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FOGCONNECT_BUILD_COMMIT={}", commit.trim());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=FOGCONNECT_BUILD_PROFILE={profile}");
    let features: Vec<&str> = [("plugins", "CARGO_FEATURE_PLUGINS"), ("browsers", "CARGO_FEATURE_BROWSERS")]
        .into_iter()
        .filter(|(_, var)| std::env::var_os(var).is_some())
        .map(|(name, _)| name)
        .collect();
    let features = if features.is_empty() { "none".to_string() } else { features.join(", ") };
    println!("cargo:rustc-env=FOGCONNECT_BUILD_FEATURES={features}");
    embed_guest_sdk();
}

/// Writes `$OUT_DIR/guest_sdk.rs`: `GUEST_SDK_FILES`, each embedded file's
/// path relative to the repository and its text.
fn embed_guest_sdk() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir.join("..");
    let mut files = Vec::new();
    for dir in ["sdk-guest/src", "wit"] {
        println!("cargo:rerun-if-changed=../{dir}");
        collect(&root, Path::new(dir), &mut files);
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed=../{file}");
        files.push(PathBuf::from(file));
    }
    files.sort();
    let mut code = String::from("/// The guest SDK's files, by path in the repository, and their text.\n");
    code.push_str("pub const GUEST_SDK_FILES: &[(&str, &str)] = &[\n");
    for file in &files {
        let relative = file.to_string_lossy().replace('\\', "/");
        let absolute = root.join(file);
        code.push_str(&format!("    ({relative:?}, include_str!({:?})),\n", absolute.to_string_lossy()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("guest_sdk.rs");
    if let Err(e) = std::fs::write(&out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
}

/// Every file under `root/dir`, as paths relative to `root`.
fn collect(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        panic!("cannot read {}", root.join(dir).display());
    };
    for entry in entries.flatten() {
        let relative = dir.join(entry.file_name());
        // Followed through links: a WIT package's deps/ links to the
        // packages it imports, and the copy holds them as files.
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            collect(root, &relative, files);
        } else {
            files.push(relative);
        }
    }
}

/// The short hash of the checkout's HEAD, if this is a git checkout.
fn git_commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
    let hash = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !hash.trim().is_empty()).then(|| hash.trim().to_string())
}
