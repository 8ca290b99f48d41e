//! The C camera (`capi/examples/c/camera.c`, written against
//! `iv_av_p2p.h`) serving a Rust `StreamSession` through a real signaling
//! server: plain, under AddressSanitizer and under valgrind. Frames arrive
//! whole and in order; commands go both ways (a reply, a reply larger than
//! the camera's buffer, a timeout, a call from inside a callback);
//! talk-back ends with its marker; the size -1 error path ends a stream;
//! every stream stops once and every buffer is freed once (the camera's
//! totals at exit).

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use common::c::{ASAN_FLAGS, ASAN_OPTIONS, Running, compile, repo, valgrind, wrapped};
use common::media::{frame, number, open_flowing};
use common::{WAIT, config};
use fogconnect::signal::server::{SignalServer, SignalServerConfig};
use fogconnect::signal::token;
use fogconnect::{MediaEvent, Node, StreamSession, Transport};

const SECRET: &[u8] = b"C camera test secret, loopback only";
const SERVICE: u8 = 2;

/// Reads the camera's lines until one contains `needle`; returns it.
async fn line_with(camera: &mut Running, needle: &str) -> anyhow::Result<String> {
    loop {
        let line = camera.next_line().await.with_context(|| format!("waiting for {needle:?}"))?;
        if line.contains(needle) {
            return Ok(line);
        }
    }
}

/// Reads the camera's lines until each of `needles` was in one, in any
/// order.
async fn lines_with(camera: &mut Running, needles: &[&str]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = needles.to_vec();
    while !missing.is_empty() {
        let line = camera.next_line().await.with_context(|| format!("waiting for {missing:?}"))?;
        missing.retain(|needle| !line.contains(needle));
    }
    Ok(())
}

/// A signaling server and the camera registered with it, under `wrapper`
/// (e.g. valgrind).
async fn start_camera(
    binary: &Path,
    wrapper: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(SignalServer, Running)> {
    let server = SignalServer::start(SignalServerConfig::new("127.0.0.1:0".parse()?, SECRET.to_vec())).await?;
    let port = server.local_addr().port().to_string();
    let mut command = wrapped(wrapper, binary);
    command
        .args(["cam-1", "127.0.0.1", &port, &SERVICE.to_string()])
        .env("FOGCONNECT_TOKEN", token::issue(SECRET, "cam-1", u64::MAX / 2))
        .env("FOGCONNECT_LISTEN", "127.0.0.1:0")
        .env("FOGCONNECT_LOG", "warn")
        .envs(env.iter().copied());
    let mut camera = Running::start(command)?;
    // Two threads print these: in either order.
    lines_with(&mut camera, &["LOCAL_NET_READY", "registered as cam-1"]).await?;
    Ok((server, camera))
}

/// Stops the camera (SIGTERM) and returns its totals line once it exited
/// successfully.
async fn exit_totals(camera: &mut Running) -> anyhow::Result<String> {
    let pid = camera.child.0.id();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let totals = line_with(camera, "camera: exit").await?;
    let status = camera.exited().await?;
    ensure!(status.success(), "the camera exited with {status}: {totals}");
    let field = |name: &str| -> anyhow::Result<u64> {
        let at = totals.find(name).context("field")? + name.len();
        Ok(totals[at..].split_whitespace().next().context("value")?.parse()?)
    };
    ensure!(field("started=")? == field("stopped=")?, "every stream stops once: {totals}");
    ensure!(field("handed=")? == field("freed=")?, "every buffer is freed once: {totals}");
    Ok(totals)
}

/// One full run of the camera under `wrapper` (e.g. valgrind).
async fn camera_serves(binary: &Path, wrapper: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let (server, mut camera) = start_camera(binary, wrapper, env).await?;
    let app = common::registered_node(&server.url(), SECRET, "viewer").await?;
    let mut session = StreamSession::new(app.connect_peer("cam-1", Transport::Quic, SERVICE).await?);
    line_with(&mut camera, "PEER_READY").await?;

    // Numbered frames, whole and in order: 800 kbit/s is 1,000 bytes a tick.
    let mut live = session.open("action=live&bitrate=800000").await?;
    for expected in 0..30u64 {
        let data = frame(&mut live).await?;
        ensure!(data.len() == 1000, "frame {expected}: {} bytes", data.len());
        ensure!(number(&data)? == expected, "frame {} where {expected} was due", number(&data)?);
        ensure!(data[8..].iter().all(|&b| b == (expected % 251) as u8), "frame {expected} corrupted");
    }

    // Commands from the application.
    let stats = session.command(&b"stats"[..], WAIT).await?;
    ensure!(stats.starts_with(b"streams=1 "), "{}", String::from_utf8_lossy(&stats));
    let inline = session.command(&b"inline"[..], WAIT).await?;
    ensure!(&inline[..] == b"inline rc=-9", "a waiting call inside a callback: {}", String::from_utf8_lossy(&inline));

    // Commands from the camera: answered, answered too large, unanswered.
    for (text, reply) in [("fits", Some(&b"0123456789"[..])), ("big", Some(&[b'x'; 40][..])), ("silent", None)] {
        session.command(format!("ask viewer {text}").into_bytes(), WAIT).await?;
        let incoming = tokio::time::timeout(WAIT, session.next_command()).await?.context("no command")?;
        ensure!(incoming.data() == text.as_bytes(), "{:?}", incoming.data());
        match reply {
            Some(reply) => incoming.reply(Ok(Bytes::copy_from_slice(reply)))?,
            None => std::mem::forget(incoming),
        }
        let outcome = line_with(&mut camera, &format!("ask {text} ->")).await?;
        let expected = match text {
            "fits" => "rc=0 reply=0123456789",
            "big" => "rc=-8 len=40",
            _ => "rc=-7",
        };
        ensure!(outcome.contains(expected), "ask {text}: {outcome}");
    }

    // Talk-back with its end marker.
    let talk = session.talk("codec=pcm").await?;
    for size in [160usize, 320, 480] {
        talk.send(&vec![7u8; size])?;
    }
    talk.finish();
    line_with(&mut camera, "talk-back ended after 960 bytes").await?;

    // The get callback's error path ends a stream after what it produced.
    let mut failing = session.open("action=live&fail_after=5").await?;
    let mut numbers = Vec::new();
    let reason = loop {
        match tokio::time::timeout(WAIT, failing.recv()).await {
            Ok(MediaEvent::Data(data)) => numbers.push(number(&data)?),
            Ok(MediaEvent::Ended(reason)) => break reason,
            Err(_) => bail!("the failing stream did not end"),
        }
    };
    ensure!(numbers == (0..5).collect::<Vec<_>>(), "{numbers:?}");
    ensure!(reason.contains("the device failed the stream"), "{reason}");

    // The application stops a stream: CLI_SEND_CLOSE, then send_stop.
    live.stop();
    line_with(&mut camera, "CLI_SEND_CLOSE").await?;
    line_with(&mut camera, "stopped after").await?;

    // Streams still running when the camera exits stop too.
    let mut running = Vec::new();
    for _ in 0..2 {
        let mut stream = session.open("action=live&bitrate=400000").await?;
        frame(&mut stream).await?;
        running.push(stream);
    }
    let totals = exit_totals(&mut camera).await?;
    ensure!(totals.contains("rc=0 streams started=4 stopped=4"), "{totals}");
    ensure!(totals.contains("talk bytes=960 ends=1"), "{totals}");
    for stream in &mut running {
        loop {
            match tokio::time::timeout(WAIT, stream.recv()).await {
                Ok(MediaEvent::Data(_)) => {}
                Ok(MediaEvent::Ended(_)) => break,
                Err(_) => bail!("a stream of the exited camera did not end"),
            }
        }
    }
    app.shutdown().await;
    server.shutdown();
    Ok(())
}

fn camera_source() -> std::path::PathBuf {
    repo().join("capi/examples/c/camera.c")
}

#[tokio::test]
async fn the_c_camera_serves_a_rust_application() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = compile(&camera_source(), dir.path(), "camera", &[])?;
    camera_serves(&binary, &[], &[]).await
}

#[tokio::test]
async fn the_c_camera_serves_under_address_sanitizer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = compile(&camera_source(), dir.path(), "camera-asan", &ASAN_FLAGS)?;
    camera_serves(&binary, &[], &[("ASAN_OPTIONS", ASAN_OPTIONS)]).await
}

#[tokio::test]
async fn the_c_camera_serves_under_valgrind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = compile(&camera_source(), dir.path(), "camera-valgrind", &[])?;
    let valgrind = valgrind();
    let wrapper: Vec<&str> = valgrind.iter().map(String::as_str).collect();
    camera_serves(&binary, &wrapper, &[]).await
}

#[tokio::test]
async fn the_c_camera_streams_to_the_cli_and_stops_the_streams_of_a_vanished_app() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = compile(&camera_source(), dir.path(), "camera", &[])?;
    let (server, mut camera) = start_camera(&binary, &[], &[]).await?;

    // `fogconnect stream` shows the rate and gets the command's reply.
    // Run from a blocking thread: the signaling server runs on this one.
    let mut cli = Command::new(env!("CARGO_BIN_EXE_fogconnect"));
    cli.args(["stream", "--signal", &server.url(), "--id", "cli-viewer", "--peer", "cam-1"])
        .args(["--service", &SERVICE.to_string(), "--params", "action=live&bitrate=800000", "--seconds", "2"])
        .args(["--command", "stats", "--listen", "127.0.0.1:0"])
        .env("FOGCONNECT_TOKEN", token::issue(SECRET, "cli-viewer", u64::MAX / 2));
    let out = tokio::task::spawn_blocking(move || cli.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "fogconnect stream: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    ensure!(stdout.contains("reply to stats: streams=0"), "{stdout}");
    // The reports: "   1.0 s     0.800 Mbit/s    100 chunks ...".
    let rates: Vec<f64> = stdout
        .lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    ensure!(rates.iter().any(|r| (0.7..0.9).contains(r)), "about 0.8 Mbit/s a second: {rates:?} in {stdout}");
    ensure!(stdout.contains("ended: stopped by the application"), "{stdout}");
    line_with(&mut camera, "CLI_SEND_CLOSE").await?;

    // An application that vanishes: the camera's keep-alive (1 s, 3
    // attempts) ends its connection, and its streams stop.
    let url = server.url();
    common::vanish(move || async move {
        let app = Node::builder()
            .config(config())
            .node_id("vanishing")
            .signal(url, token::issue(SECRET, "vanishing", u64::MAX / 2))
            .start()
            .await?;
        app.registered(WAIT).await?;
        let session = StreamSession::new(app.connect_peer("cam-1", Transport::Quic, SERVICE).await?);
        let streams = open_flowing(&session, "action=live&bitrate=400000", 2).await?;
        anyhow::Ok((app, session, streams))
    })
    .await?;
    line_with(&mut camera, "LINK_DISCONNECT").await?;
    let totals = exit_totals(&mut camera).await?;
    ensure!(totals.contains("streams started=3 stopped=3"), "{totals}");
    server.shutdown();
    Ok(())
}
