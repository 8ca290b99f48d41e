//! `fogconnect config check`.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::config_file::ConfigFile;
use super::terminal_safe;

/// Arguments of `fogconnect config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Check config files as the servers would read them, without
    /// starting anything: every problem is printed, one per line, with its
    /// file, line and key; the exit status is non-zero if there is one.
    Check(CheckArgs),
}

/// Arguments of `fogconnect config check`.
#[derive(Debug, Args)]
struct CheckArgs {
    /// The files (TOML, a table per server: [node], [signal], [relay],
    /// [stun]).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// Checks the files.
pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let ConfigAction::Check(check) = args.action;
    let mut problems = 0;
    for path in &check.files {
        let result = ConfigFile::read(path).map_err(|p| vec![p]).and_then(|file| file.check());
        match result {
            Ok(tables) if tables.is_empty() => {
                eprintln!("{}: no server table ([node], [signal], [relay] or [stun])", path.display());
                problems += 1;
            }
            Ok(tables) => {
                let described: Vec<String> =
                    tables.iter().map(|(name, count)| format!("[{name}] {count} setting{}", plural(*count))).collect();
                println!("{}: valid: {}", path.display(), described.join(", "));
            }
            Err(found) => {
                for problem in &found {
                    eprintln!("{}", terminal_safe(&problem.to_string()));
                }
                problems += found.len();
            }
        }
    }
    if problems > 0 {
        bail!("{problems} problem{} found", plural(problems));
    }
    Ok(())
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}
