//! `fogconnect plugin new`: the crate it makes builds outside our
//! workspace with `cargo build --release`, loads on a node as it is,
//! answers (a service) or streams (a stream plugin), and swaps live to a
//! second build of itself, with or without its state.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, ensure};

const BIN: &str = env!("CARGO_BIN_EXE_fogconnect");
const ADMIN_TOKEN: &str = "plugin-new-admin-token-0123";
const SERVICE: &str = "10";

/// `fogconnect plugin new ARGS` in `dir`: the crate's directory.
fn plugin_new(dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let out = Command::new(BIN).args(["plugin", "new", name]).args(args).current_dir(dir).output()?;
    ensure!(out.status.success(), "plugin new: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(said.contains("cargo build --release"), "{said}");
    Ok(dir.join(name))
}

/// The one documented command, `cargo build --release`, in the crate:
/// the component it makes. The crates of a test run share a target
/// directory, so the SDK's dependencies are compiled once.
fn build(crate_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let target = common::target_dir().join("plugin-new");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release"])
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .context("cargo")?;
    ensure!(
        out.status.success(),
        "cargo build --release in {}:\n{}",
        crate_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
    ensure!(wasm.exists(), "no {}", wasm.display());
    Ok(wasm)
}

/// Changes the greeting in the crate's source to `greeting`: a second
/// build that answers differently.
fn set_greeting(crate_dir: &Path, name: &str, greeting: &str) -> anyhow::Result<()> {
    let source = crate_dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&source)?;
    let line = format!("const GREETING: &str = \"{name}\";");
    ensure!(text.contains(&line), "no {line:?} in the generated source");
    std::fs::write(&source, text.replace(&line, &format!("const GREETING: &str = \"{greeting}\";")))?;
    Ok(())
}

/// A node serving `wasm` on [`SERVICE`], with its admin API: the process
/// (killed when dropped), its address and its admin API's.
fn node_serving(wasm: &Path) -> anyhow::Result<(common::Running, SocketAddr, String)> {
    let plugin = format!("{SERVICE}={}", wasm.display());
    let args = ["node", "--listen", "127.0.0.1:0", "--no-cache", "--admin", "127.0.0.1:0", "--plugin", &plugin];
    common::server::node_until(&args, &[("FOGCONNECT_ADMIN_TOKEN", ADMIN_TOKEN)], "admin API on ")
}

/// `fogconnect plugin swap` of [`SERVICE`] to `wasm`: what it printed.
fn swap(admin: &str, wasm: &Path) -> anyhow::Result<String> {
    let out = Command::new(BIN)
        .args(["plugin", "swap", "--node", admin, "--service", SERVICE])
        .arg(wasm)
        .env("FOGCONNECT_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()?;
    ensure!(out.status.success(), "plugin swap: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// A second build of the crate, greeting "NAME v2", swapped in on the node
/// whose admin API is `admin`: what the swap printed.
fn second_build_swapped_in(crate_dir: &Path, name: &str, admin: &str) -> anyhow::Result<String> {
    set_greeting(crate_dir, name, &format!("{name} v2"))?;
    swap(admin, &build(crate_dir, name)?)
}

/// `fogconnect send` of one message to [`SERVICE`]: the reply.
fn send(addr: SocketAddr, message: &str) -> anyhow::Result<String> {
    let out = Command::new(BIN).args(["send", "--addr", &addr.to_string(), "--service", SERVICE, message]).output()?;
    ensure!(out.status.success(), "send: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim_end().to_string())
}

/// `fogconnect stream` from [`SERVICE`] with `params` and the command
/// `hello`, until the stream ends: what it printed.
fn stream(addr: SocketAddr, params: &str) -> anyhow::Result<String> {
    let out = Command::new(BIN)
        .args(["stream", "--addr", &addr.to_string(), "--service", SERVICE, "--params", params])
        .args(["--command", "hello", "--report-ms", "60000"])
        .output()?;
    ensure!(out.status.success(), "stream: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// Checks a service crate from `plugin new` whose manifest names the SDK
/// with `dependency`: it builds, answers twice on a node, and swaps live
/// to its second build, which goes on counting with `handoff` and starts
/// anew without.
fn serves_and_swaps(crate_dir: &Path, name: &str, dependency: &str, handoff: bool) -> anyhow::Result<()> {
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml"))?;
    ensure!(manifest.contains(&format!("fogconnect-guest = {dependency}\n")), "{manifest}");
    let wasm = build(crate_dir, name)?;
    let (_node, addr, admin) = node_serving(&wasm)?;
    assert_eq!(send(addr, "hello")?, format!("{name} #1: hello"));
    assert_eq!(send(addr, "again")?, format!("{name} #2: again"));

    let swapped = second_build_swapped_in(crate_dir, name, &admin)?;
    let state = if handoff { "state handed over (8 bytes)" } else { "no state handoff" };
    ensure!(swapped.contains("swapped: generation 2") && swapped.contains(state), "{swapped}");
    let count = if handoff { 3 } else { 1 };
    assert_eq!(send(addr, "after")?, format!("{name} v2 #{count}: after"));
    Ok(())
}

#[test]
fn a_service_plugin_with_handoff_answers_and_keeps_its_count_across_a_live_swap() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let crate_dir = plugin_new(dir.path(), "greeter", &["--handoff"])?;
    // The SDK is a copy in the crate: nothing points back at our tree.
    ensure!(crate_dir.join("vendor/wit/service.wit").exists());
    serves_and_swaps(&crate_dir, "greeter", "{ path = \"vendor/fogconnect-guest\" }", true)
}

#[test]
fn a_service_plugin_on_a_checkouts_sdk_starts_anew_after_a_live_swap() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sdk = common::c::repo().join("sdk-guest");
    let crate_dir = plugin_new(dir.path(), "plain-echo", &["--sdk-path", &sdk.display().to_string()])?;
    ensure!(!crate_dir.join("vendor").exists());
    let dependency = format!("{{ path = \"{}\" }}", std::fs::canonicalize(&sdk)?.display());
    serves_and_swaps(&crate_dir, "plain-echo", &dependency, false)
}

#[test]
fn a_service_plugin_on_the_sdk_of_a_git_repository_builds_and_answers() -> anyhow::Result<()> {
    // A repository holding the SDK as fogconnect's does (the workspace
    // manifest, sdk-guest, wit), at a commit, reached over file://.
    let dir = tempfile::tempdir()?;
    let repository = dir.path().join("fogconnect.git");
    std::fs::create_dir(&repository)?;
    let repo = common::c::repo();
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@fogconnect.invalid"])
            .args(args)
            .current_dir(&repository)
            .output()
            .context("git")?;
        ensure!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    git(&["init", "-q"])?;
    for part in ["Cargo.toml", "sdk-guest", "wit"] {
        let out = Command::new("cp").arg("-R").arg(repo.join(part)).arg(&repository).output()?;
        ensure!(out.status.success(), "cp {part}: {}", String::from_utf8_lossy(&out.stderr));
    }
    git(&["add", "-A"])?;
    git(&["commit", "-q", "-m", "the guest SDK"])?;
    let commit = git(&["rev-parse", "HEAD"])?;
    let url = format!("file://{}", repository.display());

    let crate_dir = plugin_new(dir.path(), "from-git", &["--sdk-git", &url, "--sdk-rev", &commit])?;
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml"))?;
    ensure!(manifest.contains(&format!("fogconnect-guest = {{ git = \"{url}\", rev = \"{commit}\" }}")), "{manifest}");
    let wasm = build(&crate_dir, "from-git")?;
    let (_node, addr, _admin) = node_serving(&wasm)?;
    assert_eq!(send(addr, "over git")?, "from-git #1: over git");
    Ok(())
}

#[test]
fn a_stream_plugin_streams_and_swaps_live_to_its_second_build() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let crate_dir = plugin_new(dir.path(), "ticker", &["--stream"])?;
    let wasm = build(&crate_dir, "ticker")?;
    let (_node, addr, admin) = node_serving(&wasm)?;
    let first = stream(addr, "count=50")?;
    ensure!(first.contains("reply to hello: ticker: 0 streams started"), "{first}");
    ensure!(first.contains("ended: the stream finished;") && first.contains(" in 50 chunks"), "{first}");

    let swapped = second_build_swapped_in(&crate_dir, "ticker", &admin)?;
    ensure!(swapped.contains("swapped: generation 2"), "{swapped}");
    let second = stream(addr, "count=20")?;
    ensure!(second.contains("reply to hello: ticker v2: 0 streams started"), "{second}");
    ensure!(second.contains(" in 20 chunks"), "{second}");
    Ok(())
}

#[test]
fn a_stream_plugin_with_handoff_keeps_a_running_stream_across_a_live_swap() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let crate_dir = plugin_new(dir.path(), "relayed-ticks", &["--stream", "--handoff"])?;
    let first_build = build(&crate_dir, "relayed-ticks")?;
    let kept = dir.path().join("first.wasm");
    std::fs::copy(&first_build, &kept)?;
    set_greeting(&crate_dir, "relayed-ticks", "relayed-ticks v2")?;
    let second_build = build(&crate_dir, "relayed-ticks")?;
    let (_node, addr, admin) = node_serving(&kept)?;

    // 300 chunks at one per 10 ms pull: the swap comes while it runs.
    let mut receiver = Command::new(BIN)
        .args(["stream", "--addr", &addr.to_string(), "--service", SERVICE, "--params", "count=300"])
        .args(["--report-ms", "60000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = receiver.stdout.take().context("stdout")?;
    let receiver = common::Running(receiver);
    let mut lines = BufReader::new(stdout).lines();
    let started = lines.next().context("the stream printed nothing")??;
    ensure!(started.starts_with("stream 1 from "), "{started}");
    let swapped = swap(&admin, &second_build)?;
    ensure!(swapped.contains("swapped: generation 2") && swapped.contains("state handed over"), "{swapped}");
    let rest: Vec<String> = lines.collect::<Result<_, _>>()?;
    let ended = rest.iter().find(|l| l.starts_with("ended: ")).with_context(|| format!("no end in {rest:?}"))?;
    // Every chunk once, across the swap, and the stream ran to its count.
    ensure!(ended.starts_with("ended: the stream finished;") && ended.contains(" in 300 chunks"), "{ended}");
    drop(receiver);
    Ok(())
}

#[test]
fn bad_names_and_taken_directories_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("taken"))?;
    for (args, expected) in [
        (&["plugin", "new", "Bad Name"][..], "lower-case letters"),
        (&["plugin", "new", "fn"], "reserved"),
        (&["plugin", "new", "taken"], "already exists"),
        (&["plugin", "new", "x", "--sdk-path", "/nonexistent"], "cannot read /nonexistent/Cargo.toml"),
        (&["plugin", "new", "x", "--sdk-git", "https://example.invalid/f.git"], "--sdk-rev"),
    ] {
        let out = Command::new(BIN).args(args).current_dir(dir.path()).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Nothing was left behind by the refusals.
    let left: Vec<_> = std::fs::read_dir(dir.path())?.filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(left, ["taken"]);
    Ok(())
}
