//! The Debian package (`make deb`, which `make test` runs first),
//! installed with `dpkg -i` into a throwaway root: its binary runs, its
//! configs pass `fogconnect config check`, its units pass `systemd-analyze
//! verify`, a C program builds with its header, library and pkg-config
//! file, and a purge leaves nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, ensure};

const SERVERS: [&str; 4] = ["node", "signal", "relay", "stun"];

/// The package `make deb` built (`FOGCONNECT_DEB`, else the one in the
/// target directory).
fn package() -> anyhow::Result<PathBuf> {
    let deb = match std::env::var_os("FOGCONNECT_DEB") {
        Some(path) => PathBuf::from(path),
        None => {
            let dir = common::target_dir().join("deb");
            let found = std::fs::read_dir(&dir)
                .with_context(|| format!("no {}: run `make deb` (make test does)", dir.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"));
            found.with_context(|| format!("no package in {}: run `make deb` (make test does)", dir.display()))?
        }
    };
    ensure!(deb.exists(), "no {}: run `make deb` (make test does)", deb.display());
    Ok(deb)
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The package installed into a root of its own, removed when the test
/// ends.
struct Installed {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

/// `dpkg --root ROOT -i DEB` into a new, empty root. Its dpkg database
/// holds this host's records of the packages ours depends on, so dpkg
/// checks our Depends against real versions; the maintainer scripts run
/// outside a chroot (the root has no shell) with `DPKG_ROOT` set, which
/// they honour.
fn install(deb: &Path) -> anyhow::Result<Installed> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let database = root.join("var/lib/dpkg");
    for sub in ["info", "updates"] {
        std::fs::create_dir_all(database.join(sub))?;
    }
    std::fs::write(database.join("available"), "")?;
    let depends = text(&run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"))?);
    // "libc6 (>= 2.34), libssl3 (>= 3.0.0)": the first of each alternative.
    let names: Vec<&str> =
        depends.split(',').filter_map(|dependency| dependency.split('|').next()?.split_whitespace().next()).collect();
    ensure!(!names.is_empty(), "no dependencies in {depends:?}");
    let status = run(Command::new("dpkg-query").arg("-s").args(&names))?;
    std::fs::write(database.join("status"), &status.stdout)?;
    dpkg(&root, &["-i".as_ref(), deb.as_os_str()])?;
    Ok(Installed { _dir: dir, root })
}

/// `dpkg --root ROOT ARGS`, scripts outside a chroot, no log.
fn dpkg(root: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--log=/dev/null"])
        .args(args))
}

#[test]
fn the_package_describes_itself_and_its_conffiles() -> anyhow::Result<()> {
    let deb = package()?;
    let fields = text(&run(Command::new("dpkg-deb").arg("-f").arg(&deb).args(["Package", "Version", "Depends"]))?);
    ensure!(fields.contains("Package: fogconnect\n"), "{fields}");
    ensure!(fields.contains(&format!("Version: {}\n", env!("CARGO_PKG_VERSION"))), "{fields}");
    // What the binary links, found by dpkg-shlibdeps: the C library and
    // OpenSSL (browser connections' DTLS), with versions.
    for dependency in ["libc6 (>= ", "libssl3 (>= "] {
        ensure!(fields.contains(dependency), "no {dependency}: {fields}");
    }
    let conffiles = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles"))?);
    let mut listed: Vec<&str> = conffiles.lines().collect();
    listed.sort_unstable();
    let expected: Vec<String> = {
        let mut e: Vec<String> = SERVERS.iter().map(|s| format!("/etc/fogconnect/{s}.toml")).collect();
        e.sort();
        e
    };
    assert_eq!(listed, expected);
    // The C library's entry for programs packaged against it, and the
    // ld.so cache refreshed when it comes or goes.
    let shlibs = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("shlibs"))?);
    assert_eq!(shlibs, format!("libfogconnect 0 fogconnect (>= {})\n", env!("CARGO_PKG_VERSION")));
    let triggers = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("triggers"))?);
    assert_eq!(triggers, "activate-noawait ldconfig\n");
    Ok(())
}

#[test]
fn the_installed_binary_runs_and_its_configs_are_valid() -> anyhow::Result<()> {
    let installed = install(&package()?)?;
    let binary = installed.root.join("usr/bin/fogconnect");
    let version = text(&run(Command::new(&binary).arg("--version"))?);
    ensure!(version.starts_with(&format!("fogconnect {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
    ensure!(version.contains("release build"), "{version}");
    // Every example config, as installed, and the directory node.toml names.
    let configs: Vec<PathBuf> =
        SERVERS.iter().map(|s| installed.root.join(format!("etc/fogconnect/{s}.toml"))).collect();
    let checked = text(&run(Command::new(&binary).args(["config", "check"]).args(&configs))?);
    for server in SERVERS {
        ensure!(checked.contains(&format!("{server}.toml: valid: [{server}]")), "{checked}");
    }
    ensure!(installed.root.join("etc/fogconnect/plugins").is_dir());
    // The contracts plugin authors build against, as in the source.
    let source_wit = common::c::repo().join("wit");
    for relative in [
        "service.wit",
        "plugin-0.2.0/service.wit",
        "stream/stream.wit",
        "handoff/handoff.wit",
        "stream-0.2.0/deps/plugin-0.2.0/service.wit",
    ] {
        let installed = std::fs::read(installed.root.join("usr/share/fogconnect/wit").join(relative))?;
        ensure!(installed == std::fs::read(source_wit.join(relative))?, "{relative} differs");
    }
    // Shell completions where bash, zsh and fish look for them.
    for (path, marker) in [
        ("usr/share/bash-completion/completions/fogconnect", "complete -F"),
        ("usr/share/zsh/vendor-completions/_fogconnect", "#compdef fogconnect"),
        ("usr/share/fish/vendor_completions.d/fogconnect.fish", "complete -c fogconnect"),
    ] {
        let script = std::fs::read_to_string(installed.root.join(path)).with_context(|| path.to_string())?;
        ensure!(script.contains(marker), "{path} has no {marker:?}");
    }
    Ok(())
}

#[test]
fn the_units_pass_systemd_analyze_verify() -> anyhow::Result<()> {
    let installed = install(&package()?)?;
    // systemd-analyze resolves what the units name (targets, the binary)
    // inside --root: give it the host's own units beside ours.
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|dir| dir.join("sysinit.target").exists())
        .context("no systemd units on this host (make deb-deps installs systemd)")?;
    let target = installed.root.join("usr/lib/systemd");
    std::fs::create_dir_all(&target)?;
    run(Command::new("cp").arg("-a").arg(host_units).arg(&target))?;
    let units: Vec<String> = SERVERS.iter().map(|s| format!("fogconnect-{s}.service")).collect();
    for unit in &units {
        let text = std::fs::read_to_string(installed.root.join("lib/systemd/system").join(unit))?;
        let server = unit.trim_start_matches("fogconnect-").trim_end_matches(".service");
        let exec = format!("ExecStart=/usr/bin/fogconnect {server} --config /etc/fogconnect/{server}.toml\n");
        ensure!(text.contains(&exec), "{unit} does not start {server} with its config");
        for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "Restart=on-failure"] {
            ensure!(text.contains(hardening), "{unit} lacks {hardening}");
        }
        ensure!(text.contains("\nLimitNOFILE="), "{unit} sets no descriptor limit");
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", installed.root.display()))
        .args(&units)
        .output()
        .context("systemd-analyze (make deb-deps installs systemd)")?;
    let complaints = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    Ok(())
}

#[test]
fn a_c_program_builds_with_the_installed_header_library_and_pkg_config_file() -> anyhow::Result<()> {
    let installed = install(&package()?)?;
    let root = &installed.root;
    let flags = text(&run(Command::new("pkg-config")
        .args(["--cflags", "--libs", "fogconnect"])
        .env("PKG_CONFIG_SYSROOT_DIR", root)
        // The system's own: the full build's static link needs OpenSSL's
        // (libssl-dev, which the package suggests).
        .env("PKG_CONFIG_PATH", root.join("usr/lib/pkgconfig")))?);
    let include = format!("-I{}", root.join("usr/include").display());
    ensure!(flags.split_whitespace().any(|f| f == include), "{flags}");
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("app.c");
    std::fs::write(
        &source,
        "#include <fogconnect.h>\n#include <stdio.h>\n\
         int main(void) {\n  void* ctx = pr_fogconnect_init();\n  if (!ctx) return 1;\n\
         pr_fogconnect_release(ctx);\n  puts(\"initialised and released\");\n  return 0;\n}\n",
    )?;
    let binary = dir.path().join("app");
    run(Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror"])
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,--disable-new-dtags,-rpath,{}", root.join("usr/lib").display())))?;
    let output = run(&mut Command::new(&binary))?;
    assert_eq!(text(&output), "initialised and released\n");
    // The program loads the library by its SONAME, which links to the
    // versioned file; -lfogconnect found it through libfogconnect.so.
    let needed = dynamic_entries(&binary, "NEEDED")?;
    ensure!(needed.iter().any(|n| n == "libfogconnect.so.0"), "{needed:?}");
    let lib = root.join("usr/lib");
    let versioned = format!("libfogconnect.so.{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(std::fs::read_link(lib.join("libfogconnect.so.0"))?, Path::new(&versioned));
    assert_eq!(std::fs::read_link(lib.join("libfogconnect.so"))?, Path::new("libfogconnect.so.0"));
    assert_eq!(dynamic_entries(&lib.join(&versioned), "SONAME")?, ["libfogconnect.so.0"]);
    Ok(())
}

/// The values of an ELF file's dynamic entries named `tag` (`NEEDED`,
/// `SONAME`), as `objdump -p` prints them.
fn dynamic_entries(file: &Path, tag: &str) -> anyhow::Result<Vec<String>> {
    let dump = text(&run(Command::new("objdump").arg("-p").arg(file))?);
    Ok(dump
        .lines()
        .filter_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [name, value] if name == tag => Some(value.to_string()),
            _ => None,
        })
        .collect())
}

#[test]
fn a_purge_removes_the_package_its_configs_and_the_nodes_state() -> anyhow::Result<()> {
    let installed = install(&package()?)?;
    let root = &installed.root;
    let status = text(&dpkg(root, &["-s".as_ref(), "fogconnect".as_ref()])?);
    ensure!(status.contains("Status: install ok installed"), "{status}");
    // What the node's unit would have made under its state directory.
    let state = root.join("var/lib/fogconnect-node");
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join("identity.pem"), "a node identity")?;
    // A remove keeps the configs an operator edited, a purge does not.
    dpkg(root, &["--remove".as_ref(), "fogconnect".as_ref()])?;
    ensure!(!root.join("usr/bin/fogconnect").exists(), "the binary stayed");
    ensure!(root.join("etc/fogconnect/node.toml").exists(), "a remove took the configs");
    dpkg(root, &["--purge".as_ref(), "fogconnect".as_ref()])?;
    for gone in ["etc/fogconnect", "var/lib/fogconnect-node", "lib/systemd/system/fogconnect-node.service"] {
        ensure!(!root.join(gone).exists(), "{gone} is left after the purge");
    }
    Ok(())
}
