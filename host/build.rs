//! Names the build for `fogconnect --version`: the commit it was built
//! from (`FOGCONNECT_BUILD_COMMIT` when set, as a package build from a
//! source tarball sets it; else git's, when the source is a checkout; else
//! "unknown"), the cargo profile and the optional features compiled in.

use std::path::Path;
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
}

/// The short hash of the checkout's HEAD, if this is a git checkout.
fn git_commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
    let hash = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !hash.trim().is_empty()).then(|| hash.trim().to_string())
}
