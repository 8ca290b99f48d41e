//! `fogconnect stream`: the application side of a stream service from the
//! command line. Asks the device for one stream and prints the received
//! rate every report interval, then a summary when the stream ends, the
//! time is up, or on Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use fogconnect::{MediaEvent, Node, StreamSession, Transport};

/// Arguments of `fogconnect stream`.
#[derive(Debug, Args)]
pub struct StreamArgs {
    #[command(flatten)]
    target: super::target::TargetArgs,
    /// Service number of the stream plugin on the device.
    #[arg(long, default_value_t = 0)]
    service: u8,
    /// Stream parameters for the plugin's send-init.
    #[arg(long, default_value = "action=live")]
    params: String,
    /// Stop the stream after this many seconds (0: run until it ends).
    #[arg(long, default_value_t = 0, value_name = "S")]
    seconds: u64,
    /// Report interval, in milliseconds.
    #[arg(long, default_value_t = 1_000, value_name = "MS")]
    report_ms: u64,
    /// A command to send the plugin before the stream (repeatable); its
    /// reply is printed.
    #[arg(long = "command", value_name = "TEXT")]
    commands: Vec<String>,
    /// A command sent at every report (e.g. `stats`); its reply's lines are
    /// printed after the report, each as `  | <line>`.
    #[arg(long, value_name = "TEXT")]
    watch_command: Option<String>,
    /// How long to wait for each command's reply, in milliseconds.
    #[arg(long, default_value_t = 7_500, value_name = "MS")]
    reply_timeout_ms: u64,
}

/// Totals of the received data.
#[derive(Debug, Default, Clone, Copy)]
struct Received {
    bytes: u64,
    chunks: u64,
}

fn mbit_per_s(bytes: u64, over: Duration) -> f64 {
    if over.is_zero() { 0.0 } else { bytes as f64 * 8.0 / over.as_secs_f64() / 1e6 }
}

/// Connects, runs the commands, receives the stream.
pub async fn run(args: StreamArgs) -> anyhow::Result<()> {
    let node = args.target.start_node().await?;
    let result = receive(&node, &args).await;
    node.shutdown().await;
    result
}

async fn receive(node: &Node, args: &StreamArgs) -> anyhow::Result<()> {
    let convention = fogconnect::Convention::new(Transport::Quic, args.service).raw();
    let conn = args.target.connect(node, convention).await?;
    let stats = conn.stats();
    let mut session = StreamSession::new(conn);
    let timeout = Duration::from_millis(args.reply_timeout_ms.max(1));
    for command in &args.commands {
        let reply = session
            .command(Bytes::from(command.clone().into_bytes()), timeout)
            .await
            .with_context(|| format!("command {command:?}"))?;
        println!("reply to {command}: {}", super::terminal_safe(String::from_utf8_lossy(&reply).trim_end()));
    }
    let mut stream = session.open(&args.params).await.context("cannot open the stream")?;
    println!(
        "stream {} from {} (path {}, rtt {:.2} ms): {}",
        stream.id(),
        session.peer_id(),
        stats.path,
        stats.rtt.as_secs_f64() * 1e3,
        args.params
    );
    let started = Instant::now();
    let until = (args.seconds > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.seconds));
    let every = Duration::from_millis(args.report_ms.max(10));
    let mut report = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut total = Received::default();
    let mut last = Received::default();
    let mut stopping = false;
    let mut commands_open = true;
    // One watch command at a time, answered while the data keeps flowing.
    let (watch_tx, mut watch_rx) = tokio::sync::mpsc::channel(1);
    let mut watching = false;
    let reason = loop {
        tokio::select! {
            event = stream.recv() => match event {
                MediaEvent::Data(data) => {
                    total.bytes += data.len() as u64;
                    total.chunks += 1;
                }
                MediaEvent::Ended(reason) => break reason,
            },
            _ = report.tick() => {
                println!(
                    "{:6.1} s  {:8.3} Mbit/s  {:5} chunks  {:10} bytes",
                    started.elapsed().as_secs_f64(),
                    mbit_per_s(total.bytes - last.bytes, every),
                    total.chunks - last.chunks,
                    total.bytes
                );
                last = total;
                if let Some(watch) = &args.watch_command && !watching {
                    watching = true;
                    let commander = session.commander();
                    let replies = watch_tx.clone();
                    let watch = Bytes::from(watch.clone().into_bytes());
                    tokio::spawn(async move {
                        let _ = replies.send(commander.command(watch, timeout).await).await;
                    });
                }
            }
            reply = watch_rx.recv() => {
                watching = false;
                match reply {
                    Some(Ok(reply)) => {
                        for line in String::from_utf8_lossy(&reply).lines() {
                            println!("  | {}", super::terminal_safe(line));
                        }
                    }
                    Some(Err(e)) => println!("  | watch command failed: {e}"),
                    None => {}
                }
            }
            command = session.next_command(), if commands_open => match command {
                Some(command) => {
                    println!("device command: {}", super::terminal_safe(&String::from_utf8_lossy(command.data())));
                    let _ = command.reply(Err("fogconnect stream does not answer commands".into()));
                }
                None => commands_open = false,
            },
            _ = async { match until { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } }, if !stopping => {
                stopping = true;
                stream.stop();
            }
            signal = tokio::signal::ctrl_c(), if !stopping => {
                signal?;
                stopping = true;
                stream.stop();
            }
        }
    };
    let elapsed = started.elapsed();
    println!(
        "ended: {reason}; {} bytes in {} chunks over {:.1} s, {:.3} Mbit/s average",
        total.bytes,
        total.chunks,
        elapsed.as_secs_f64(),
        mbit_per_s(total.bytes, elapsed)
    );
    if reason.starts_with("connection closed") && !stopping {
        bail!("the connection ended before the stream: {reason}");
    }
    Ok(())
}
