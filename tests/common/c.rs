//! C programs in tests: compiled against the staged install (`make
//! c-stage`) as a user's program would be, and run beside the test.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use tokio::sync::mpsc;

use super::WAIT;

/// Where `make c-stage` installed the library, header and pkg-config file.
pub fn stage() -> anyhow::Result<PathBuf> {
    staged("FOGCONNECT_C_STAGE", "c-install", "make c-stage")
}

/// Where `make device-stage` installed the device build of the library
/// (no WebAssembly runtime, no browsers).
pub fn device_stage() -> anyhow::Result<PathBuf> {
    staged("FOGCONNECT_C_DEVICE_STAGE", "c-install-device", "make device-stage")
}

fn staged(variable: &str, default: &str, make: &str) -> anyhow::Result<PathBuf> {
    let stage = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target").join(default));
    ensure!(
        stage.join("lib/libfogconnect.so").exists() && stage.join("include/fogconnect.h").exists(),
        "no staged C install in {}: run `{make}` (make test does)",
        stage.display()
    );
    Ok(stage)
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `pkg-config --cflags --libs fogconnect` against the staged install.
pub fn pkg_config(stage: &Path) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("pkg-config")
        .args(["--cflags", "--libs", "fogconnect"])
        .env("PKG_CONFIG_PATH", stage.join("lib/pkgconfig"))
        .output()
        .context("pkg-config (make c-deps installs it)")?;
    ensure!(out.status.success(), "pkg-config: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.split_whitespace().map(str::to_owned).collect())
}

/// Compiles the C program `source` with `extra` flags into `dir`, warnings
/// as errors, against the staged install.
pub fn compile(source: &Path, dir: &Path, name: &str, extra: &[&str]) -> anyhow::Result<PathBuf> {
    compile_against(&stage()?, source, dir, name, extra)
}

/// [`compile`] against the install in `stage`.
pub fn compile_against(stage: &Path, source: &Path, dir: &Path, name: &str, extra: &[&str]) -> anyhow::Result<PathBuf> {
    let binary = dir.join(name);
    let out = std::process::Command::new("gcc")
        .args(["-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .args(extra)
        .arg(source)
        .arg("-o")
        .arg(&binary)
        .args(pkg_config(stage)?)
        .arg("-lpthread")
        // DT_RPATH rather than RUNPATH: it comes before LD_LIBRARY_PATH,
        // which cargo points at its own target directory (where the other
        // build's library may lie) when it runs tests.
        .arg(format!("-Wl,--disable-new-dtags,-rpath,{}", stage.join("lib").display()))
        .output()
        .context("gcc (make c-deps installs it)")?;
    ensure!(out.status.success(), "{} does not build:\n{}", source.display(), String::from_utf8_lossy(&out.stderr));
    Ok(binary)
}

/// A C program running beside the test, whose output lines are read as
/// they come; killed when dropped.
pub struct Running {
    /// The process.
    pub child: super::Running,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Running {
    /// Starts `command` with its standard output read line by line.
    pub fn start(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child: super::Running(child), lines })
    }

    /// The next line of standard output.
    pub async fn next_line(&mut self) -> anyhow::Result<String> {
        tokio::time::timeout(WAIT, self.lines.recv()).await.context("no line in time")?.context("the program ended")
    }

    /// Waits for the exit, at most [`WAIT`].
    pub async fn exited(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.0.try_wait()? {
                return Ok(status);
            }
            ensure!(tokio::time::Instant::now() < deadline, "the program did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Compiler flags of an AddressSanitizer build.
pub const ASAN_FLAGS: [&str; 2] = ["-fsanitize=address", "-fno-omit-frame-pointer"];

/// AddressSanitizer's options for the runs: leaks checked, the first error
/// fatal, exit code 86.
pub const ASAN_OPTIONS: &str = "detect_leaks=1:halt_on_error=1:exitcode=86";

/// The valgrind command C programs run under: an invalid access or a
/// definite leak fails the run (exit 99); the reports in dependencies
/// `capi/tests/c/valgrind.supp` explains are suppressed.
pub fn valgrind() -> Vec<String> {
    let suppressions = format!("--suppressions={}", repo().join("capi/tests/c/valgrind.supp").display());
    [
        "valgrind",
        "--quiet",
        &suppressions,
        "--error-exitcode=99",
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite",
    ]
    .map(str::to_string)
    .to_vec()
}

/// The command that runs `binary` under `wrapper` (e.g. valgrind), or
/// alone when `wrapper` is empty.
pub fn wrapped(wrapper: &[&str], binary: &Path) -> Command {
    match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}
