//! The C API from C: the suite in `capi/tests/c/suite.c`, compiled with
//! warnings as errors against the installed header and library (the
//! staged install `make c-stage` makes, found with pkg-config), run against
//! a real signaling server: plain, under AddressSanitizer and under
//! valgrind; a C program and a Rust node talking both ways; the exported
//! symbols checked against the header; and the same suite against the
//! device build of the library (`make device-stage`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::c::{
    ASAN_FLAGS, ASAN_OPTIONS, Running, compile, compile_against, device_stage, repo, stage, valgrind, wrapped,
};
use common::{WAIT, ask, closed_within, config, message};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{CloseKind, ConnectionEvent, Node, Transport};

const SECRET: &[u8] = b"C API test secret, loopback only";

/// The scenarios both builds run (the two that pair with a Rust node run
/// in [`c_and_rust_talk_both_ways`]).
const SHARED_SCENARIOS: [&str; 8] = [
    "exchange",
    "failures",
    "handles",
    "concurrent",
    "release_in_callback",
    "signal_unreachable",
    "identity",
    "transports",
];

/// The scenario only the full build runs (a Wasm plugin beside C services).
const FULL_ONLY: &str = "plugin";

/// The scenario only the device build runs (no WebAssembly runtime: loading
/// a plugin fails with the reason).
const DEVICE_ONLY: &str = "device_build";

/// The scenarios of a build: the shared ones and its own.
fn scenarios(own: &'static str) -> Vec<&'static str> {
    SHARED_SCENARIOS.iter().copied().chain([own]).collect()
}

/// The C suite's source.
fn suite_source() -> PathBuf {
    repo().join("capi/tests/c/suite.c")
}

/// A signaling server and the tokens of every id the scenarios use.
async fn signaling() -> anyhow::Result<(SignalServer, String)> {
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let mut tokens = Vec::new();
    for scenario in SHARED_SCENARIOS.iter().chain(&[FULL_ONLY, DEVICE_ONLY, "serve_for_rust", "connect_rust"]) {
        for role in ["device", "app", "plain"] {
            let id = format!("{scenario}-{role}");
            tokens.push(format!("{id}={}", token::issue(SECRET, &id, u64::MAX / 2)));
        }
    }
    Ok((server, tokens.join(";")))
}

/// The suite's command for `scenario`, optionally under a wrapper.
///
/// The plugin cache goes beside the binary, not into the user's home, so
/// each run compiles the plugin itself.
fn suite(binary: &Path, wrapper: &[&str], scenario: &str, server: &SignalServer, tokens: &str) -> Command {
    let mut command = wrapped(wrapper, binary);
    command
        .arg(scenario)
        .env("FC_SIGNAL_PORT", server.local_addr().port().to_string())
        .env("FC_TOKENS", tokens)
        .env("FC_ECHO_PLUGIN", common::plugin("echo"))
        .env("FC_DEAD_PORT", dead_port().to_string())
        .env("FOGCONNECT_LOG", "warn")
        .env("XDG_CACHE_HOME", binary.with_extension("cache"))
        .env_remove("FOGCONNECT_TOKEN")
        .env_remove("FOGCONNECT_LISTEN")
        .stdin(Stdio::null());
    command
}

/// A loopback TCP port nobody listens at (bound, then released).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(9, |a| a.port())
}

/// Runs `command` to its end, at most `limit` (then it is killed).
async fn output_within(mut command: Command, limit: Duration) -> anyhow::Result<Output> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().with_context(|| format!("cannot run {command:?}"))?;
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(limit, waiting).await {
        Ok(output) => Ok(output??),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            bail!("{command:?} did not finish within {limit:?}")
        }
    }
}

/// Runs every scenario, each within `limit`; fails with the output of the
/// first that fails.
async fn run_all(binary: &Path, wrapper: &[&str], env: &[(&str, &str)], limit: Duration) -> anyhow::Result<()> {
    run_scenarios(&scenarios(FULL_ONLY), binary, wrapper, env, limit).await
}

/// Runs `scenarios` as [`run_all`] does.
async fn run_scenarios(
    scenarios: &[&str],
    binary: &Path,
    wrapper: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> anyhow::Result<()> {
    let (server, tokens) = signaling().await?;
    for &scenario in scenarios {
        let mut command = suite(binary, wrapper, scenario, &server, &tokens);
        command.envs(env.iter().copied());
        let out = output_within(command, limit).await.with_context(|| scenario.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && stdout.contains(&format!("{scenario}: ok")),
            "{scenario} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status
        );
    }
    server.shutdown();
    Ok(())
}

#[tokio::test]
async fn the_c_suite_passes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = compile(&suite_source(), dir.path(), "suite", &[])?;
    run_all(&binary, &[], &[], Duration::from_secs(60)).await
}

#[tokio::test]
async fn the_c_suite_passes_under_address_sanitizer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = compile(&suite_source(), dir.path(), "suite-asan", &ASAN_FLAGS)?;
    run_all(&binary, &[], &[("ASAN_OPTIONS", ASAN_OPTIONS)], Duration::from_secs(120)).await
}

#[tokio::test]
async fn the_c_suite_passes_under_valgrind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = compile(&suite_source(), dir.path(), "suite-valgrind", &[])?;
    let valgrind = valgrind();
    let wrapper: Vec<&str> = valgrind.iter().map(String::as_str).collect();
    run_all(&binary, &wrapper, &[("FC_WAIT_S", "120")], Duration::from_secs(600)).await
}

#[tokio::test]
async fn c_and_rust_talk_both_ways() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = compile(&suite_source(), dir.path(), "suite", &[])?;
    let (server, tokens) = signaling().await?;
    let rust = Node::builder()
        .config(config())
        .node_id("rust-node")
        .signal(server.url(), token::issue(SECRET, "rust-node", u64::MAX / 2));
    let mut incoming = rust.incoming(4)?;
    let rust = rust.start().await?;
    rust.registered(WAIT).await?;
    tokio::spawn(async move {
        while let Some(mut conn) = incoming.accept().await {
            tokio::spawn(async move {
                while let ConnectionEvent::Message(data) = conn.recv().await {
                    let _ = conn.send([&b"rust:"[..], &data].concat());
                }
            });
        }
    });

    // C dials the Rust node's native service.
    let mut command = suite(&binary, &[], "connect_rust", &server, &tokens);
    command.env("FC_RUST_PEER", "rust-node");
    let out = output_within(command, Duration::from_secs(60)).await?;
    ensure!(
        out.status.success(),
        "connect_rust:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Rust dials a C device.
    let mut device = Running::start(suite(&binary, &[], "serve_for_rust", &server, &tokens))?;
    let ready = device.next_line().await?;
    ensure!(ready == "ready", "{ready:?}");
    let mut conn = rust.connect_peer("serve_for_rust-device", Transport::Quic, 1).await?;
    ensure!(conn.peer_verified() && conn.peer_id() == "serve_for_rust-device");
    ensure!(conn.convention().raw() & 0xf == 5);
    ensure!(message(&mut conn).await? == b"welcome"[..]);
    ensure!(ask(&mut conn, "I am fog data!").await? == "I know!");
    conn.close();
    let ended = device.next_line().await?;
    ensure!(ended.starts_with("ended once: eof") && ended.ends_with("I am fog data!"), "{ended}");
    let status = device.exited().await?;
    ensure!(status.success(), "the C device failed: {status}");

    // The C device closes on request: the Rust side sees end of file.
    let mut device = Running::start(suite(&binary, &[], "serve_for_rust", &server, &tokens))?;
    ensure!(device.next_line().await? == "ready");
    let mut conn = rust.connect_peer("serve_for_rust-device", Transport::Quic, 1).await?;
    ensure!(message(&mut conn).await? == b"welcome"[..]);
    conn.send(&b"close-me"[..])?;
    let reason = closed_within(&mut conn, WAIT).await?;
    ensure!(reason.kind == CloseKind::Eof, "{reason}");
    let status = device.exited().await?;
    ensure!(status.success(), "the C device failed: {status}");

    rust.shutdown().await;
    server.shutdown();
    Ok(())
}

#[test]
fn the_headers_stand_alone_in_c_and_cpp() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let include = format!("-I{}", stage()?.join("include").display());
    let programs = [
        ("fogconnect", "#include <fogconnect.h>\nint main(void) { return PR_TRANSPORT_PROTOCOL_QUIC == 5 ? 0 : 1; }\n"),
        (
            "iv_av_p2p",
            "#include <iv_av_p2p.h>\nint main(void) { return IV_AVT_EVENT_P2P_CLI_SEND_CLOSE == 9 ? 0 : 1; }\n",
        ),
    ];
    for ((compiler, standard, language), (name, program)) in
        [("gcc", "-std=c99", "c"), ("g++", "-std=c++11", "c++")].into_iter().flat_map(|c| programs.map(|p| (c, p)))
    {
        let source = dir.path().join(format!("only_{name}.c"));
        std::fs::write(&source, program)?;
        let out = std::process::Command::new(compiler)
            .args([standard, "-pedantic", "-Wall", "-Wextra", "-Werror", "-x", language, &include, "-c", "-o"])
            .arg(dir.path().join("out.o"))
            .arg(&source)
            .output()
            .with_context(|| format!("{compiler} (make c-deps installs it)"))?;
        ensure!(out.status.success(), "{compiler} {standard} {name}.h: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[tokio::test]
async fn a_program_linked_with_the_static_library_runs() -> anyhow::Result<()> {
    let stage = stage()?;
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join("suite-static");
    // pkg-config --static: the libraries libfogconnect.a needs, after it.
    let out = std::process::Command::new("pkg-config")
        .args(["--static", "--libs-only-l", "fogconnect"])
        .env("PKG_CONFIG_PATH", stage.join("lib/pkgconfig"))
        .output()?;
    let private: Vec<String> = String::from_utf8(out.stdout)?
        .split_whitespace()
        .filter(|flag| *flag != "-lfogconnect")
        .map(str::to_owned)
        .collect();
    let out = std::process::Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror", "-O1"])
        .arg(format!("-I{}", stage.join("include").display()))
        .arg(repo().join("capi/tests/c/suite.c"))
        .arg(stage.join("lib/libfogconnect.a"))
        .args(&private)
        .arg("-lpthread")
        .arg("-o")
        .arg(&binary)
        .output()?;
    ensure!(out.status.success(), "static link: {}", String::from_utf8_lossy(&out.stderr));
    let ldd = std::process::Command::new("ldd").arg(&binary).output()?;
    ensure!(!String::from_utf8_lossy(&ldd.stdout).contains("libfogconnect"), "linked the shared library");
    let (server, tokens) = signaling().await?;
    let out = output_within(suite(&binary, &[], "exchange", &server, &tokens), Duration::from_secs(60)).await?;
    ensure!(
        out.status.success(),
        "exchange, statically linked:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown();
    Ok(())
}

/// The functions the headers declare (`fogconnect.h`, `iv_av_p2p.h`).
fn header_functions() -> anyhow::Result<BTreeSet<String>> {
    let mut header = std::fs::read_to_string(repo().join("capi/include/fogconnect.h"))?;
    header += &std::fs::read_to_string(repo().join("capi/include/iv_av_p2p.h"))?;
    let mut names = BTreeSet::new();
    let declarations = header.lines().filter(|l| ![" ", "#", "/*", "typedef"].iter().any(|p| l.starts_with(p)));
    for line in declarations {
        if let Some(open) = line.find('(') {
            let name = line[..open].rsplit([' ', '*']).next().unwrap_or_default();
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(name.to_string());
            }
        }
    }
    ensure!(names.len() >= 20, "found only {names:?} in the header");
    Ok(names)
}

#[test]
fn the_library_exports_exactly_the_headers() -> anyhow::Result<()> {
    exports_exactly_the_headers(&stage()?)
}

#[test]
fn the_device_library_exports_exactly_the_headers() -> anyhow::Result<()> {
    exports_exactly_the_headers(&device_stage()?)
}

#[tokio::test]
async fn the_device_library_passes_the_c_suite() -> anyhow::Result<()> {
    // The device build (make device-stage): without the WebAssembly
    // runtime and browsers, the C API behaves the same, except that
    // loading a plugin fails with the reason.
    let stage = device_stage()?;
    let dir = tempfile::tempdir()?;
    let binary = compile_against(&stage, &suite_source(), dir.path(), "suite-device", &[])?;
    run_scenarios(&scenarios(DEVICE_ONLY), &binary, &[], &[], Duration::from_secs(60)).await
}

/// Whether the library staged in `stage` (shared and static) exports the
/// functions the headers declare, and nothing else.
fn exports_exactly_the_headers(stage: &Path) -> anyhow::Result<()> {
    let declared = header_functions()?;
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(stage.join("lib/libfogconnect.so"))
        .output()
        .context("nm")?;
    ensure!(out.status.success(), "nm: {}", String::from_utf8_lossy(&out.stderr));
    let exported: BTreeSet<String> = String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (name, kind) = (fields.next()?, fields.next()?);
            // Functions and data; versioned markers and weak glibc
            // references are not the library's own.
            matches!(kind, "T" | "D" | "B" | "R").then(|| name.to_string())
        })
        .collect();
    ensure!(
        exported == declared,
        "exported but not declared: {:?}; declared but not exported: {:?}",
        exported.difference(&declared).collect::<Vec<_>>(),
        declared.difference(&exported).collect::<Vec<_>>()
    );
    // The static library defines every declared function too.
    let out = std::process::Command::new("nm")
        .args(["--defined-only", "--format=posix"])
        .arg(stage.join("lib/libfogconnect.a"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let defined: BTreeSet<&str> = text.lines().filter_map(|l| l.split_whitespace().next()).collect();
    for name in &declared {
        ensure!(defined.contains(name.as_str()), "{name} is missing from libfogconnect.a");
    }
    Ok(())
}
