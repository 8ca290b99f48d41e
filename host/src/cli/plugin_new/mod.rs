//! `fogconnect plugin new NAME [--stream] [--handoff]`: a new plugin crate,
//! outside any fogconnect checkout, that builds to `wasm32-wasip2` with
//! `cargo build --release` and that a node loads as it is.

mod sdk;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use sdk::SdkSource;

/// The service number the generated README and hints use.
const EXAMPLE_SERVICE: u8 = 10;

/// Arguments of `fogconnect plugin new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name: its crate's and directory's (lower-case letters,
    /// digits, - and _, starting with a letter).
    #[arg(value_parser = parse_name)]
    name: String,
    /// A stream plugin (the device SDK's push model with watermarks)
    /// instead of a service that answers messages.
    #[arg(long)]
    stream: bool,
    /// Hand the plugin's state (a service's count, a stream plugin's
    /// streams) to the next build when it is swapped live.
    #[arg(long)]
    handoff: bool,
    /// Where to create the crate's directory (default: here).
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Depend on the guest SDK of this fogconnect checkout (its sdk-guest
    /// directory) instead of a copy in the crate.
    #[arg(long, value_name = "DIR", conflicts_with = "sdk_git")]
    sdk_path: Option<PathBuf>,
    /// Depend on the guest SDK of this fogconnect git repository (with
    /// --sdk-rev) instead of a copy in the crate.
    #[arg(long, value_name = "URL", requires = "sdk_rev")]
    sdk_git: Option<String>,
    /// The commit of --sdk-git.
    #[arg(long, value_name = "REV", requires = "sdk_git")]
    sdk_rev: Option<String>,
}

/// Rust's keywords, the crates every Rust program has and the SDK's own:
/// not crate names (cargo takes - and _ as the same).
const RESERVED: [&str; 43] = [
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "test",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "fogconnect_guest",
];

fn parse_name(text: &str) -> Result<String, String> {
    let valid = text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!("{text:?}: 1 to 64 lower-case letters, digits, - or _, starting with a letter"));
    }
    if RESERVED.contains(&text.replace('-', "_").as_str()) {
        return Err(format!("{text:?} is reserved in Rust: choose another name"));
    }
    Ok(text.to_string())
}

impl NewArgs {
    /// The crate's name as Rust and the `.wasm` file spell it.
    fn crate_name(&self) -> String {
        self.name.replace('-', "_")
    }

    /// What the crate is.
    fn kind(&self) -> &'static str {
        match (self.stream, self.handoff) {
            (false, false) => "service plugin",
            (false, true) => "service plugin that hands its state to the next build",
            (true, false) => "stream plugin",
            (true, true) => "stream plugin that hands its streams to the next build",
        }
    }
}

/// Creates the crate.
pub fn run(args: &NewArgs) -> anyhow::Result<()> {
    let source = match (&args.sdk_path, &args.sdk_git, &args.sdk_rev) {
        (Some(dir), _, _) => SdkSource::Path(sdk::checkout(dir)?),
        (None, Some(url), Some(rev)) => SdkSource::Git { url: url.clone(), rev: rev.clone() },
        _ => SdkSource::Vendored,
    };
    let destination = args.dir.join(&args.name);
    if destination.exists() {
        bail!("{} already exists: choose another name or --dir", destination.display());
    }
    let files = crate_files(args, &source)?;
    write_atomically(&args.dir, &destination, &files)?;
    print_next_steps(args, &source, &destination);
    Ok(())
}

/// Every file of the new crate, by path in it.
fn crate_files(args: &NewArgs, source: &SdkSource) -> anyhow::Result<Vec<(String, String)>> {
    let (dependency, how) = sdk::dependency(source);
    let sdk_where = match source {
        SdkSource::Vendored => "vendor/fogconnect-guest/src".to_string(),
        SdkSource::Path(dir) => format!("{}/src", dir.display()),
        SdkSource::Git { .. } => "sdk-guest/src in the repository".to_string(),
    };
    let service = EXAMPLE_SERVICE;
    let try_it = if args.stream {
        format!("    fogconnect stream --addr 127.0.0.1:7700 --service {service} --params count=100 --command hello")
    } else {
        format!("    fogconnect send --addr 127.0.0.1:7700 --service {service} hello again")
    };
    let swap_state = match (args.stream, args.handoff) {
        (false, false) => "the new build starts its count anew",
        (false, true) => "the new build carries on with the old one's count",
        (true, false) => "its streams end (\"service plugin swapped\") and new ones come from the new build",
        (true, true) => "its streams carry on from the new build, every chunk once",
    };
    let values: BTreeMap<&str, String> = BTreeMap::from([
        ("name", args.name.clone()),
        ("crate", args.crate_name()),
        ("kind", args.kind().to_string()),
        ("edition", sdk::package_field("edition")?),
        ("sdk_version", env!("CARGO_PKG_VERSION").to_string()),
        ("sdk_how", how),
        ("sdk_dependency", dependency),
        ("sdk_where", sdk_where),
        ("try_it", try_it),
        ("swap_state", swap_state.to_string()),
    ]);
    let flags: &[&str] = if args.handoff { &["handoff"] } else { &[] };
    let source_template = if args.stream { template::STREAM } else { template::SERVICE };
    let mut files = vec![
        ("Cargo.toml".to_string(), template::render(template::MANIFEST, flags, &values)?),
        ("src/lib.rs".to_string(), template::render(source_template, flags, &values)?),
        (".cargo/config.toml".to_string(), template::render(template::CARGO_CONFIG, flags, &values)?),
        (".gitignore".to_string(), template::render(template::GITIGNORE, flags, &values)?),
        ("README.md".to_string(), template::render(template::README, flags, &values)?),
        ("Cargo.lock".to_string(), sdk::lock_file()?),
    ];
    if *source == SdkSource::Vendored {
        files.extend(sdk::vendored_files()?);
    }
    Ok(files)
}

/// Writes `files` into a new directory beside `destination` and renames it
/// there: a failure leaves nothing half-written.
fn write_atomically(parent: &Path, destination: &Path, files: &[(String, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".fogconnect-plugin-new-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    for (path, text) in files {
        let target = staging.path().join(path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("cannot write {}", target.display()))?;
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, destination) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(e).with_context(|| format!("cannot create {}", destination.display()));
    }
    Ok(())
}

fn print_next_steps(args: &NewArgs, source: &SdkSource, destination: &Path) {
    let (_, how) = sdk::dependency(source);
    println!("created {}: a {}, the guest SDK {how}", destination.display(), args.kind());
    println!("build it:");
    println!("  rustup target add wasm32-wasip2   # once");
    println!("  cd {} && cargo build --release", destination.display());
    println!("run it on a node:");
    let wasm = destination.join("target/wasm32-wasip2/release").join(format!("{}.wasm", args.crate_name()));
    println!("  fogconnect node --plugin {EXAMPLE_SERVICE}={}", wasm.display());
    println!("its README says how to try it and swap it live");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_names() {
        for good in ["greeter", "my-plugin", "cam_2"] {
            assert_eq!(parse_name(good).as_deref(), Ok(good));
        }
        for bad in ["", "Greeter", "2cam", "-x", "a b", "ünï", "fn", "test", "fogconnect_guest", &"x".repeat(65)] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_kind_of_crate_is_filled_in_whole() -> anyhow::Result<()> {
        for (stream, handoff) in [(false, false), (false, true), (true, false), (true, true)] {
            let args = NewArgs {
                name: "my-plugin".into(),
                stream,
                handoff,
                dir: ".".into(),
                sdk_path: None,
                sdk_git: None,
                sdk_rev: None,
            };
            let files = crate_files(&args, &SdkSource::Vendored)?;
            for (path, text) in &files {
                assert!(!text.contains("{{") && !text.contains("//#"), "{path} of {}: {text}", args.kind());
            }
            let source = &files.iter().find(|(path, _)| path == "src/lib.rs").context("src/lib.rs")?.1;
            assert_eq!(source.contains("impl Handoff for Plugin"), handoff, "{}", args.kind());
            assert_eq!(source.contains("impl StreamPlugin for Plugin"), stream, "{}", args.kind());
        }
        Ok(())
    }
}
