//! Servers started from config files (`--config FILE`): each example in
//! `dist/config` answers as the server started with flags does; a flag
//! wins over its key (lists too), the environment over a secret's key;
//! a bad setting stops the server with one line naming the file, line and
//! key.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, ensure};
use common::server::ServerProcess;
use common::turn::{drive, free_port, test_client_config};
use fogconnect::relay::client::TurnClient;

const BIN: &str = env!("CARGO_BIN_EXE_fogconnect");

/// `dist/config/SERVER.toml`.
fn example(server: &str) -> String {
    common::c::repo().join("dist/config").join(format!("{server}.toml")).display().to_string()
}

/// `fogconnect ARGS` with `env`, which must succeed: its standard output.
fn fogconnect(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let output = Command::new(BIN).args(args).envs(env.iter().copied()).output()?;
    ensure!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?)
}

/// `args` after `fogconnect SERVER [--config dist/config/SERVER.toml]`.
fn server_args<'a>(server: &'a str, config: Option<&'a str>, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![server];
    if let Some(config) = config {
        all.extend(["--config", config]);
    }
    all.extend(args);
    all
}

#[test]
fn the_stun_example_answers_as_the_server_with_flags() -> anyhow::Result<()> {
    let config = example("stun");
    for config in [Some(config.as_str()), None] {
        let args = server_args("stun", config, &["--listen", "127.0.0.1:0"]);
        let stun = ServerProcess::start(&args, None, "stun listening on ", &[])?;
        let report = fogconnect(&["nat", "--stun", &stun.addr.to_string()], &[])?;
        ensure!(report.contains("public address:  127.0.0.1:"), "{config:?}: {report}");
        ensure!(report.contains("behind nat:      no"), "{config:?}: {report}");
    }
    Ok(())
}

#[tokio::test]
async fn the_relay_example_allocates_as_the_server_with_flags() -> anyhow::Result<()> {
    let config = example("relay");
    // The unit's environment file would hold the shared secret.
    let env = [("FOGCONNECT_TURN_SECRET", "relay example secret 0123456789")];
    for config in [Some(config.as_str()), None] {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let args = server_args("relay", config, &["--listen", &listen, "--user", "dev:secret"]);
        let relay = ServerProcess::start(&args, None, "relay listening on ", &env)?;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let mut client = TurnClient::new(test_client_config(relay.addr), Instant::now());
        let mut events = Vec::new();
        drive(&mut client, &socket, relay.addr, &mut events, common::WAIT, |c, _| c.relayed().is_some()).await?;
        let relayed = client.relayed().context("no allocation")?;
        ensure!(relayed.ip() == relay.addr.ip(), "{config:?}: relayed on {relayed}");
    }
    Ok(())
}

#[test]
fn the_signal_example_registers_as_the_server_with_flags() -> anyhow::Result<()> {
    let config = example("signal");
    let env = [("FOGCONNECT_SIGNAL_SECRET", "signal example secret 0123456789")];
    let token = fogconnect(&["signal", "token", "--id", "app-1"], &env)?;
    for config in [Some(config.as_str()), None] {
        let args = server_args("signal", config, &["--listen", "127.0.0.1:0"]);
        let signal = ServerProcess::start(&args, None, "signaling on ws://", &env)?;
        let peers = fogconnect(&["peers", "--signal", &signal.url(), "--id", "app-1", "--token", token.trim()], &[])?;
        assert_eq!(peers, "app-1\n", "{config:?}");
    }
    Ok(())
}

#[test]
fn the_node_example_serves_its_plugin_directory_as_the_node_with_flags() -> anyhow::Result<()> {
    let config = example("node");
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(common::plugin("echo"), plugins.join("1-echo.wasm"))?;
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (identity, cache, plugins) = (path("identity.pem"), path("cache"), plugins.display().to_string());
    for config in [Some(config.as_str()), None] {
        // The example's paths are the unit's directories: here, the test's.
        let overrides = ["--listen", "127.0.0.1:0", "--identity", &identity, "--cache-dir", &cache];
        let args = server_args("node", config, &overrides);
        let args = [args.as_slice(), &["--plugin-dir", &plugins]].concat();
        let (_node, addr) = node_serving(&args, 1)?;
        let reply = fogconnect(&["send", "--addr", &addr.to_string(), "--service", "1", "from the file"], &[])?;
        assert_eq!(reply, "from the file\n", "{config:?}");
    }
    Ok(())
}

/// `fogconnect ARGS` (a node), once it says it serves `service`: the
/// process (killed when dropped) and its address.
fn node_serving(args: &[&str], service: u8) -> anyhow::Result<(common::Running, SocketAddr)> {
    let (node, addr, _) = common::server::node_until(args, &[], &format!("service {service} -> "))?;
    Ok((node, addr))
}

/// Writes `text` to `dir/name`, readable by its owner only.
fn private_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

#[test]
fn a_flag_wins_over_its_key_and_the_environment_over_a_secret_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A key takes effect; the flag replaces it.
    let port = free_port()?;
    let file = private_file(dir.path(), "stun.toml", &format!("[stun]\nlisten = \"127.0.0.1:{port}\"\n"))?;
    let file = file.display().to_string();
    let from_file = ServerProcess::start(&["stun", "--config", &file], None, "stun listening on ", &[])?;
    assert_eq!(from_file.addr, SocketAddr::from(([127, 0, 0, 1], port)));
    let flagged =
        ServerProcess::start(&["stun", "--config", &file, "--listen", "127.0.0.1:0"], None, "stun listening on ", &[])?;
    assert_ne!(flagged.addr.port(), port);

    // A list: the flag's entries replace the file's.
    let echo = common::plugin("echo").display().to_string();
    let node_file =
        private_file(dir.path(), "node.toml", &format!("[node]\nno-cache = true\nplugin = [\"1={echo}\"]\n"))?;
    let node_file = node_file.display().to_string();
    let plugin_flag = format!("2={echo}");
    let args = ["node", "--config", &node_file, "--listen", "127.0.0.1:0", "--plugin", &plugin_flag];
    let (_node, addr) = node_serving(&args, 2)?;
    let addr = addr.to_string();
    assert_eq!(fogconnect(&["send", "--addr", &addr, "--service", "2", "flag"], &[])?, "flag\n");
    let refused = Command::new(BIN).args(["send", "--addr", &addr, "--service", "1", "file"]).output()?;
    ensure!(!refused.status.success(), "service 1 of the file was loaded too");

    // A secret in the file gives way to its environment variable.
    let (file_secret, env_secret) = ("secret from the file 0123456789", "secret from the environment 0123");
    let signal_file = format!("[signal]\nlisten = \"127.0.0.1:0\"\nsecret = \"{file_secret}\"\n");
    let signal_file = private_file(dir.path(), "signal.toml", &signal_file)?.display().to_string();
    let token_under =
        |secret: &str| fogconnect(&["signal", "token", "--id", "app-1"], &[("FOGCONNECT_SIGNAL_SECRET", secret)]);
    let (file_token, env_token) = (token_under(file_secret)?, token_under(env_secret)?);
    let peers = |url: &str, token: &str| {
        Command::new(BIN).args(["peers", "--signal", url, "--id", "app-1", "--token", token.trim()]).output()
    };
    let signal = ServerProcess::start(&["signal", "--config", &signal_file], None, "signaling on ws://", &[])?;
    ensure!(peers(&signal.url(), &file_token)?.status.success(), "the file's secret is not used");
    let env = [("FOGCONNECT_SIGNAL_SECRET", env_secret)];
    let signal = ServerProcess::start(&["signal", "--config", &signal_file], None, "signaling on ws://", &env)?;
    ensure!(peers(&signal.url(), &env_token)?.status.success(), "the environment's secret is not used");
    ensure!(!peers(&signal.url(), &file_token)?.status.success(), "the file's secret won over the environment");
    // So does a secret-file key, which cannot go with the secret the
    // environment gives (as a unit's environment file would).
    let secret_file = private_file(dir.path(), "signal.secret", file_secret)?;
    let with_secret_file = format!("[signal]\nlisten = \"127.0.0.1:0\"\nsecret-file = \"{}\"\n", secret_file.display());
    let with_secret_file = private_file(dir.path(), "signal-file.toml", &with_secret_file)?.display().to_string();
    let signal = ServerProcess::start(&["signal", "--config", &with_secret_file], None, "signaling on ws://", &[])?;
    ensure!(peers(&signal.url(), &file_token)?.status.success(), "the secret file is not used");
    let signal = ServerProcess::start(&["signal", "--config", &with_secret_file], None, "signaling on ws://", &env)?;
    ensure!(peers(&signal.url(), &env_token)?.status.success(), "the environment's secret is not used");
    Ok(())
}

#[test]
fn a_bad_setting_stops_the_server_with_one_line_naming_its_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = [
        ("unknown.toml", "[node]\nlisten = \"127.0.0.1:0\"\nlisten-port = 7700\n", ":3: node.listen-port: unknown key"),
        (
            "type.toml",
            "[node]\nkeep-alive-ms = \"5s\"\n",
            ":2: node.keep-alive-ms: expected an integer, found a string",
        ),
        (
            "range.toml",
            "[node]\n\nbirthday-sockets = 100000\n",
            ":3: node.birthday-sockets: 100000 is not in 0..=65535",
        ),
        (
            "secret.toml",
            "[node]\nadmin-token = \"0123456789abcdef\"\n",
            ":2: node.admin-token: a secret in a file anyone",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let expected = format!("{}{expected}", path.display());
        let out = Command::new(BIN).args(["node", "--no-cache", "--config"]).arg(&path).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(2), "{name}: {:?} {stderr}", out.status);
        ensure!(stderr.lines().count() == 1, "{name}: {stderr}");
        ensure!(stderr.starts_with(&format!("fogconnect: {expected}")), "{name}: {stderr}");
        // `config check` says the same, without starting anything.
        let out = Command::new(BIN).args(["config", "check"]).arg(&path).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(1), "{name}: {:?}", out.status);
        ensure!(stderr.lines().next().is_some_and(|l| l.starts_with(&expected)), "{name}: {stderr}");
    }
    // A file that is not there.
    let out = Command::new(BIN).args(["stun", "--config"]).arg(dir.path().join("missing.toml")).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.lines().count() == 1, "{stderr}");
    ensure!(stderr.contains("missing.toml: cannot read it"), "{stderr}");
    Ok(())
}

#[test]
fn config_check_accepts_every_example_and_names_its_tables() -> anyhow::Result<()> {
    let files: Vec<String> = ["node", "signal", "relay", "stun"].map(example).into();
    let args: Vec<&str> = ["config", "check"].into_iter().chain(files.iter().map(String::as_str)).collect();
    let out = fogconnect(&args, &[])?;
    for (file, server) in files.iter().zip(["node", "signal", "relay", "stun"]) {
        ensure!(out.contains(&format!("{file}: valid: [{server}]")), "{out}");
    }
    Ok(())
}
