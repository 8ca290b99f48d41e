//! The `fogconnect` binary: a node and a sender as two processes.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail, ensure};
use common::Running;

const BIN: &str = env!("CARGO_BIN_EXE_fogconnect");

/// A node process, killed when dropped (also when the test fails).
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(plugins: &[(u8, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--id", "cli-node"]);
        for (service, name) in plugins {
            cmd.arg("--plugin").arg(format!("{service}={}", common::plugin(name).display()));
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("spawn node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let mut process = NodeProcess { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)) };
        // The first line says where it listens; a node that fails exits and
        // closes stdout, which ends this loop.
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().context("node printed nothing")??;
        let addr = first.strip_prefix("listening on ").with_context(|| format!("unexpected first line {first:?}"))?;
        process.addr = addr.parse()?;
        std::thread::spawn(move || for _ in lines {});
        Ok(process)
    }
}

/// Starts `fogconnect node` with `args` (loopback, no cache) and returns
/// it (killed when dropped), the rest of its output lines and the address
/// of its first line, `listening on ADDR`.
fn node_with_output(
    id: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> anyhow::Result<(Running, std::io::Lines<BufReader<std::process::ChildStdout>>, SocketAddr)> {
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--id", id]).args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("spawn node")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let node = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr = lines.next().context("no output")??.strip_prefix("listening on ").context("first line")?.parse()?;
    Ok((node, lines, addr))
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(addr: SocketAddr, service: &str, messages: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = Command::new(BIN)
        .args(["send", "--addr", &addr.to_string(), "--service", service])
        .args(messages)
        .output()
        .context("run send")?;
    Ok(output)
}

#[test]
fn send_through_the_cli_gets_the_demo_reply() -> anyhow::Result<()> {
    let node = NodeProcess::start(&[(0, "echo"), (1, "demo")])?;
    let output = send(node.addr, "1", &["I am fog data!"])?;
    ensure!(output.status.success(), "send failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "I know!\n");
    let output = send(node.addr, "0", &["one", "two"])?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "one\ntwo\n");
    Ok(())
}

#[test]
fn refusals_and_bad_input_exit_non_zero_with_one_line() -> anyhow::Result<()> {
    let node = NodeProcess::start(&[(1, "demo")])?;
    let output = send(node.addr, "9", &["hello"])?;
    ensure!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.lines().count() == 1 && stderr.contains("no such service: 9"), "{stderr}");

    let output = send(node.addr, "300", &["hello"])?;
    ensure!(!output.status.success());
    ensure!(String::from_utf8_lossy(&output.stderr).contains("300"));

    let missing =
        Command::new(BIN).args(["node", "--listen", "127.0.0.1:0", "--plugin", "1=/nonexistent.wasm"]).output()?;
    ensure!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    ensure!(last.starts_with("fogconnect: ") && last.contains("/nonexistent.wasm"), "{stderr}");

    let not_wasm = std::env::temp_dir().join(format!("fogconnect-not-wasm-{}.wasm", std::process::id()));
    std::fs::write(&not_wasm, b"definitely not wasm")?;
    let bad = Command::new(BIN)
        .args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--plugin"])
        .arg(format!("0={}", not_wasm.display()))
        .output()?;
    std::fs::remove_file(&not_wasm)?;
    ensure!(!bad.status.success());
    ensure!(String::from_utf8_lossy(&bad.stderr).contains("does not compile"));
    Ok(())
}

#[test]
fn help_is_available_everywhere() -> anyhow::Result<()> {
    for args in [
        &["--help"][..],
        &["node", "--help"],
        &["send", "--help"],
        &["stream", "--help"],
        &["plugin", "--help"],
        &["plugin", "swap", "--help"],
        &["demo", "--help"],
        &["signal", "--help"],
        &["signal", "token", "--help"],
        &["peers", "--help"],
        &["stun", "--help"],
        &["nat", "--help"],
        &["relay", "--help"],
        &["completions", "--help"],
    ] {
        let output = Command::new(BIN).args(args).output()?;
        if !output.status.success() || output.stdout.is_empty() {
            bail!("{args:?} --help failed");
        }
    }
    Ok(())
}

/// `--version` names the build: the version, the commit it was built
/// from (this checkout's, when it is one), the profile and the features.
#[test]
fn the_version_names_the_build() -> anyhow::Result<()> {
    let output = Command::new(BIN).arg("--version").output()?;
    ensure!(output.status.success(), "--version failed");
    let line = String::from_utf8(output.stdout)?;
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_string(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let expected = format!(
        "fogconnect {} (commit {commit}, {profile} build, features: plugins, browsers)\n",
        env!("CARGO_PKG_VERSION")
    );
    ensure!(line == expected, "{line:?}, expected {expected:?}");
    // Each command says the same.
    let node = Command::new(BIN).args(["node", "--version"]).output()?;
    ensure!(String::from_utf8(node.stdout)? == format!("fogconnect-node {}", &expected["fogconnect ".len()..]));
    Ok(())
}

/// Completions for every shell clap knows, each naming the commands; the
/// bash ones load into bash and register the completion.
#[test]
fn completions_are_printed_for_each_shell() -> anyhow::Result<()> {
    for (shell, marker) in [
        ("bash", "complete -F _fogconnect"),
        ("zsh", "#compdef fogconnect"),
        ("fish", "complete -c fogconnect"),
        ("elvish", "edit:completion:arg-completer[fogconnect]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let output = Command::new(BIN).args(["completions", shell]).output()?;
        let text = String::from_utf8(output.stdout)?;
        ensure!(output.status.success() && text.contains(marker), "{shell}: no {marker:?}");
        ensure!(["node", "send", "signal", "relay", "completions"].iter().all(|c| text.contains(c)), "{shell}");
    }
    let script = tempfile::NamedTempFile::new()?;
    let output = Command::new(BIN).args(["completions", "bash"]).output()?;
    std::fs::write(script.path(), &output.stdout)?;
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p fogconnect", script.path().display()))
        .output()?;
    let spec = String::from_utf8_lossy(&loaded.stdout);
    ensure!(loaded.status.success() && spec.contains("_fogconnect"), "bash: {spec}");
    let refused = Command::new(BIN).args(["completions", "tcsh"]).output()?;
    ensure!(!refused.status.success(), "an unknown shell is refused");
    Ok(())
}

#[test]
fn the_demo_runs_the_embedded_default() -> anyhow::Result<()> {
    let dir = common::plugin("echo").parent().context("plugin dir")?.to_path_buf();
    let output = Command::new(BIN).args(["demo", "--plugins-dir"]).arg(&dir).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "demo failed: {}", String::from_utf8_lossy(&output.stderr));
    ensure!(stdout.contains("device -> app: \"I know!\""), "{stdout}");
    ensure!(stdout.contains("connected by id to ee:34:a1:44:2c:1c"), "{stdout}");
    ensure!(stdout.contains("service 7: refused by peer: no such service: 7"), "{stdout}");
    ensure!(stdout.contains("stun server on 127.0.0.1:"), "{stdout}");
    ensure!(stdout.contains("app: nat open internet (mapping endpoint-independent"), "{stdout}");
    ensure!(stdout.contains("connectivity checks chose"), "{stdout}");
    ensure!(
        stdout.contains("swapped service 0 live to generation 2")
            && stdout.contains("the same connection answered \"hello again\""),
        "{stdout}"
    );
    ensure!(
        stdout.contains("stream service 5 (action=playback") && stdout.contains("ended: the stream finished"),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn stream_through_the_cli_shows_the_rate_and_the_end() -> anyhow::Result<()> {
    let node = NodeProcess::start(&[(5, "adaptive-source")])?;
    let addr = node.addr.to_string();
    let params = "action=playback&seconds=1&bitrate=800000";
    let args = ["stream", "--addr", &addr, "--service", "5", "--params", params, "--report-ms", "250"];
    let output = Command::new(BIN).args(args).args(["--command", "ping"]).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "stream failed: {}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines.first() == Some(&"reply to ping: pong"), "{stdout}");
    // By address: the node is shown as its certificate (nobody vouched for its id).
    ensure!(lines.get(1).is_some_and(|l| l.starts_with("stream 1 from fp:") && l.contains("(path LAN")), "{stdout}");
    let reports = lines.iter().filter(|l| l.contains(" Mbit/s ") && l.contains(" chunks ")).count();
    ensure!((2..=6).contains(&reports), "{reports} reports for 1 s at 250 ms: {stdout}");
    let last = lines.last().context("no output")?;
    ensure!(last.starts_with("ended: the stream finished; "), "{stdout}");

    // A refusal: one line on stderr, exit status 1.
    let args = ["stream", "--addr", &addr, "--service", "5", "--params", "action=rewind"];
    let output = Command::new(BIN).args(args).output()?;
    ensure!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.lines().count() == 1 && stderr.contains("unknown action \"rewind\""), "{stderr}");
    Ok(())
}

#[test]
fn stun_server_and_nat_command_as_processes() -> anyhow::Result<()> {
    // A plain RFC 5389 server (no alternate address).
    let child = Command::new(BIN)
        .args(["stun", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stun = Running(child);
    let first = BufReader::new(stun.0.stdout.take().context("stdout")?).lines().next().context("no output")??;
    let addr = first.strip_prefix("stun listening on ").with_context(|| format!("unexpected {first:?}"))?.to_string();
    let out = Command::new(BIN).args(["nat", "--stun", &addr]).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ensure!(stdout.contains("public address:  127.0.0.1:"), "{stdout}");
    ensure!(stdout.contains("behind nat:      no"), "{stdout}");
    ensure!(stdout.contains("does not support RFC 5780"), "{stdout}");
    drop(stun);

    // Nothing answers: reported, not an error.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let out =
        Command::new(BIN).args(["nat", "--rto-ms", "20", "--stun"]).arg(silent.local_addr()?.to_string()).output()?;
    ensure!(out.status.success());
    ensure!(String::from_utf8_lossy(&out.stdout).contains("nat type:        UDP blocked"));

    // Bad input: one line each.
    for args in [
        &["stun", "--listen", "127.0.0.1:3478", "--alt-addr", "127.0.0.1:3479"][..],
        &["nat", "--stun", "no-such-host.invalid:3478"],
        &["nat", "--stun", "not an address"],
        &["relay", "--listen", "127.0.0.1:0"],
        &["relay", "--listen", "127.0.0.1:0", "--user", "no-password"],
        &["relay", "--listen", "0.0.0.0:0", "--user", "a:b"],
    ] {
        let out = Command::new(BIN).args(args).output()?;
        ensure!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(stderr.lines().count() == 1 && stderr.starts_with("fogconnect: "), "{args:?}: {stderr}");
    }
    Ok(())
}

#[test]
fn signal_node_and_send_by_id_as_processes() -> anyhow::Result<()> {
    let secret = [("FOGCONNECT_SIGNAL_SECRET", "cli test secret 0123456789")];
    let issue = |id: &str| -> anyhow::Result<String> {
        let out = Command::new(BIN).args(["signal", "token", "--id", id]).envs(secret).output()?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let signal_child = Command::new(BIN)
        .args(["signal", "--listen", "127.0.0.1:0"])
        .envs(secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut signal = Running(signal_child);
    let first = BufReader::new(signal.0.stdout.take().context("stdout")?).lines().next().context("no output")??;
    let url = first.strip_prefix("signaling on ").with_context(|| format!("unexpected {first:?}"))?.to_string();
    let device_token = issue("ee:34:a1:44:2c:1c")?;
    let node_child = Command::new(BIN)
        .args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--id", "ee:34:a1:44:2c:1c", "--signal", &url])
        .args(["--token", &device_token, "--plugin"])
        .arg(format!("1={}", common::plugin("demo").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut node = Running(node_child);
    let lines: Vec<String> =
        BufReader::new(node.0.stdout.take().context("stdout")?).lines().take(4).collect::<Result<_, _>>()?;
    ensure!(lines.iter().any(|l| l.starts_with("registered with")), "{lines:?}");
    let app_token = issue("app-1")?;
    let peers = Command::new(BIN).args(["peers", "--signal", &url, "--id", "app-1", "--token", &app_token]).output()?;
    assert_eq!(String::from_utf8_lossy(&peers.stdout), "app-1\nee:34:a1:44:2c:1c\n");
    let send = Command::new(BIN)
        .args(["send", "--peer", "ee:34:a1:44:2c:1c", "--service", "1", "--signal", &url, "--id", "app-1"])
        .args(["--token", &app_token, "I am fog data!"])
        .output()?;
    ensure!(send.status.success(), "{}", String::from_utf8_lossy(&send.stderr));
    assert_eq!(String::from_utf8_lossy(&send.stdout), "I know!\n");
    // A token for another id is refused, in one line.
    let bad = Command::new(BIN).args(["peers", "--signal", &url, "--id", "app-2", "--token", &app_token]).output()?;
    ensure!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    ensure!(stderr.lines().count() == 1 && stderr.contains("not valid for this id"), "{stderr}");
    Ok(())
}

#[test]
fn plugins_are_managed_on_a_running_node_through_the_admin_api() -> anyhow::Result<()> {
    let token = "cli-admin-token-0123456789";
    let plugin_arg = format!("3={}", common::plugin("test-echo-v1").display());
    let args = ["--admin", "127.0.0.1:0", "--plugin", &plugin_arg].map(std::ffi::OsStr::new);
    let (_node, mut lines, node_addr) = node_with_output("managed", &args, &[("FOGCONNECT_ADMIN_TOKEN", token)])?;
    let admin = loop {
        let line = lines.next().context("the node ended before its admin API started")??;
        if let Some(addr) = line.strip_prefix("admin API on ") {
            break addr.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let plugin = |args: &[&str], with_token: bool| -> anyhow::Result<std::process::Output> {
        let mut cmd = Command::new(BIN);
        cmd.arg("plugin").args(["--node", &admin]).args(args).env_remove("FOGCONNECT_ADMIN_TOKEN");
        if with_token {
            cmd.env("FOGCONNECT_ADMIN_TOKEN", token);
        }
        Ok(cmd.output()?)
    };
    let listed = plugin(&["list"], true)?;
    ensure!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let text = String::from_utf8_lossy(&listed.stdout);
    ensure!(text.lines().count() == 2 && text.contains("test_echo_v1") && text.contains("running"), "{text}");

    let v2 = common::plugin("test-echo-v2");
    let swapped = plugin(&["swap", "--service", "3", &v2.display().to_string()], true)?;
    ensure!(swapped.status.success(), "{}", String::from_utf8_lossy(&swapped.stderr));
    let text = String::from_utf8_lossy(&swapped.stdout);
    ensure!(text.contains("test_echo_v2") && text.split_whitespace().any(|w| w == "2"), "{text}");
    ensure!(text.starts_with("swapped: generation 2, paused ") && text.contains("no state handoff"), "{text}");
    let output = send(node_addr, "3", &["hello"])?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "v2:hello\n");

    let loaded = plugin(&["load", "--service", "3", &v2.display().to_string()], true)?;
    ensure!(!loaded.status.success());
    let stderr = String::from_utf8_lossy(&loaded.stderr);
    ensure!(stderr.lines().count() == 1 && stderr.contains("is already served") && stderr.contains("409"), "{stderr}");

    // Limits from a manifest beside the file, the flags over it.
    let dir = tempfile::tempdir()?;
    let counter = dir.path().join("counter.wasm");
    std::fs::copy(common::plugin("test-counter"), &counter)?;
    std::fs::write(dir.path().join("counter.toml"), "version = \"7.1\"\nmemory-mib = 24\ncall-deadline-ms = 300\n")?;
    let counter = counter.display().to_string();
    let loaded =
        plugin(&["load", "--service", "4", "--call-deadline-ms", "120", "--connect-peer", "false", &counter], true)?;
    ensure!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let text = String::from_utf8_lossy(&loaded.stdout);
    ensure!(text.contains("counter") && text.contains(" 7.1 ") && text.contains("24MiB 120ms no-connect"), "{text}");
    let refused = plugin(&["swap", "--service", "4", "--memory-mib", "0", &counter], true)?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success() && stderr.contains("memory-mib = 0 is out of range"), "{stderr}");
    let output = send(node_addr, "4", &["add", "add"])?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1\n2\n");
    let swapped = plugin(&["swap", "--service", "4", &counter], true)?;
    let text = String::from_utf8_lossy(&swapped.stdout);
    ensure!(text.contains("state handed over (18 bytes)") && text.contains("24MiB 300ms connect"), "{text}");
    let output = send(node_addr, "4", &["add"])?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "3\n", "the count went on");

    let unloaded = plugin(&["unload", "--service", "3"], true)?;
    ensure!(String::from_utf8_lossy(&unloaded.stdout).contains("service 3 unloaded"));
    let output = send(node_addr, "3", &["hello"])?;
    ensure!(String::from_utf8_lossy(&output.stderr).contains("no such service: 3"));

    let denied = plugin(&["list"], false)?;
    ensure!(!denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("admin token"));
    Ok(())
}

#[test]
fn a_node_serves_and_watches_its_plugin_directory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(common::plugin("test-echo-v1"), dir.path().join("3-echo.wasm"))?;
    let args =
        [std::ffi::OsStr::new("--plugin-scan-ms"), "50".as_ref(), "--plugin-dir".as_ref(), dir.path().as_os_str()];
    let (_node, mut lines, node_addr) = node_with_output("watching", &args, &[])?;
    let mut next_directory_line = move || -> anyhow::Result<String> {
        loop {
            let line = lines.next().context("the node ended")??;
            if let Some(event) = line.strip_prefix("plugin directory: ") {
                return Ok(event.to_string());
            }
        }
    };
    assert_eq!(next_directory_line()?, "service 3: loaded 3-echo.wasm");
    assert_eq!(String::from_utf8_lossy(&send(node_addr, "3", &["hello"])?.stdout), "v1:hello\n");
    let tmp = dir.path().join("incoming");
    std::fs::copy(common::plugin("test-echo-v2"), &tmp)?;
    std::fs::rename(&tmp, dir.path().join("3-echo.wasm"))?;
    assert_eq!(next_directory_line()?, "service 3: swapped to 3-echo.wasm (generation 2)");
    assert_eq!(String::from_utf8_lossy(&send(node_addr, "3", &["hello"])?.stdout), "v2:hello\n");
    Ok(())
}

#[test]
fn an_identity_file_keeps_the_fingerprint_peers_pinned_across_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("device.identity");
    let id = |file: &std::path::Path| -> anyhow::Result<String> {
        let out = Command::new(BIN).arg("id").arg("--identity").arg(file).output()?;
        ensure!(out.status.success(), "id failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // `fogconnect id` creates the file on first use and prints its fingerprint.
    let fingerprint = id(&file)?;
    ensure!(fingerprint.len() == 64, "{fingerprint}");
    use std::os::unix::fs::PermissionsExt;
    ensure!(std::fs::metadata(&file)?.permissions().mode() & 0o777 == 0o600);
    let echo = common::plugin("echo");
    let plugin = format!("0={}", echo.display());
    let args: [&std::ffi::OsStr; 4] = ["--identity".as_ref(), file.as_os_str(), "--plugin".as_ref(), plugin.as_ref()];
    for round in 0..2 {
        let (node, mut lines, addr) = node_with_output("kept", &args, &[])?;
        let shown = lines.find_map(|l| l.ok()?.strip_prefix("fingerprint ").map(str::to_string));
        ensure!(shown.as_deref() == Some(fingerprint.as_str()), "round {round}: node shows {shown:?}");
        // A peer that pinned the fingerprint connects, before and after the restart.
        let out = Command::new(BIN)
            .args(["send", "--addr", &addr.to_string(), "--fingerprint", &fingerprint, "pinned"])
            .output()?;
        ensure!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        ensure!(String::from_utf8_lossy(&out.stdout).trim() == "pinned");
        drop(node);
    }
    ensure!(id(&file)? == fingerprint);

    // A file others may read is refused, by the node and by `id`.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let out =
        Command::new(BIN).args(["node", "--listen", "127.0.0.1:0", "--no-cache", "--identity"]).arg(&file).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("permissions 644") && stderr.contains("chmod 600"), "{stderr}");
    let out = Command::new(BIN).arg("id").arg("--identity").arg(&file).output()?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    // A file that is not an identity is refused with the reason.
    let other = dir.path().join("not-an-identity");
    std::fs::write(&other, "just text")?;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600))?;
    let out = Command::new(BIN).arg("id").arg("--identity").arg(&other).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("no certificate"), "{stderr}");
    Ok(())
}
