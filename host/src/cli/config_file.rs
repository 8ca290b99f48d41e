//! Config files: `fogconnect node|signal|relay|stun --config FILE` and
//! `fogconnect config check FILE`.
//!
//! A config file is TOML with one table per server (`[node]`, `[signal]`,
//! `[relay]`, `[stun]`). A key is one of that server's long flags, spelled
//! the same (`plugin-memory-mb = 64`); its value is what the flag takes: an
//! integer for a number, a string for anything else, `true` or `false` for
//! a switch, an array (or one value) for a flag that may be repeated.
//!
//! The settings become command-line arguments put before the real ones, so
//! clap checks them exactly as it checks flags: the same value parsers,
//! ranges and rules between options, and no second definition of the
//! options that could drift from the flags. A setting is left out when the
//! command line or its environment variable sets the same option: flags
//! win over the environment, which wins over the file.
//!
//! Everything wrong is reported with the file, the line and the key's
//! path (`node.toml:3: node.listen: invalid socket address syntax`).

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Cli;

/// The servers a config file configures, each by the table of its name.
pub const SERVERS: [&str; 4] = ["node", "signal", "relay", "stun"];

/// The largest config file read: a real one is a few KiB.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One thing wrong in a config file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as given.
    pub file: String,
    /// Its line (1-based), when the problem has one.
    pub line: Option<usize>,
    /// The key's path (`node.listen`), or the table's name.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// One server's table of a config file.
struct ServerTable<'a> {
    /// The server's name, which is the table's.
    name: String,
    /// Where the table's name is in the file.
    span: Range<usize>,
    table: DeTable<'a>,
}

/// A config file, read.
pub struct ConfigFile {
    /// The path as given, for messages.
    name: String,
    text: String,
    /// Whether users other than the owner and group may read it.
    readable_by_all: bool,
}

impl ConfigFile {
    /// Reads `path` (at most 1 MiB of UTF-8).
    ///
    /// # Errors
    /// A file that cannot be read, is too large or is not UTF-8.
    pub fn read(path: &Path) -> Result<Self, Problem> {
        let name = path.display().to_string();
        let problem = |reason: String| Problem { file: name.clone(), line: None, key: None, reason };
        let file = std::fs::File::open(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
        let metadata = file.metadata().map_err(|e| problem(format!("cannot read it: {e}")))?;
        if !metadata.is_file() {
            return Err(problem("not a file".into()));
        }
        if metadata.len() > MAX_FILE_BYTES {
            return Err(problem(format!("{} bytes: a config file is at most {MAX_FILE_BYTES}", metadata.len())));
        }
        let mut bytes = Vec::with_capacity(metadata.len() as usize);
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| problem(format!("cannot read it: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| problem("not UTF-8 text".into()))?;
        Ok(Self { name, text, readable_by_all: readable_by_all(&metadata) })
    }

    /// A config file from `text`, as if read from a file named `name`
    /// that only its owner may read.
    #[cfg(test)]
    fn from_text(name: &str, text: &str) -> Self {
        Self { name: name.into(), text: text.into(), readable_by_all: false }
    }

    fn problem(&self, span: Option<Range<usize>>, key: Option<String>, reason: impl Into<String>) -> Problem {
        let line = span.map(|s| self.text[..s.start.min(self.text.len())].matches('\n').count() + 1);
        Problem { file: self.name.clone(), line, key, reason: reason.into() }
    }

    /// The file parsed, its top level checked: only server tables.
    fn tables(&self) -> Result<Vec<ServerTable<'_>>, Vec<Problem>> {
        let document = DeTable::parse(&self.text).map_err(|e| {
            let reason = e.message().trim_end().replace('\n', "; ");
            vec![self.problem(e.span(), None, format!("not valid TOML: {reason}"))]
        })?;
        let mut tables = Vec::new();
        let mut problems = Vec::new();
        for (key, value) in document.into_inner() {
            let name = key.get_ref().to_string();
            let span = key.span();
            match value.into_inner() {
                DeValue::Table(table) if SERVERS.contains(&name.as_str()) => {
                    tables.push(ServerTable { name, span, table })
                }
                DeValue::Table(_) => problems.push(self.problem(
                    Some(span),
                    Some(name),
                    "unknown table (the tables are [node], [signal], [relay] and [stun])",
                )),
                _ => problems.push(self.problem(
                    Some(span),
                    Some(name),
                    "a setting outside a table: put it under [node], [signal], [relay] or [stun]",
                )),
            }
        }
        if problems.is_empty() { Ok(tables) } else { Err(problems) }
    }

    /// The arguments the `[server]` table stands for (`--listen=ADDR`,
    /// `--no-cache`), checked against the flags of `server`, which is
    /// the subcommand of that name. `given` tells which options the
    /// command line or the environment already sets: their keys are left
    /// out.
    ///
    /// # Errors
    /// Every problem of the file: bad TOML, a table or key that is not a
    /// server's or a flag's, a value of the wrong type or one the flag
    /// refuses, a secret others may read, no `[server]` table.
    pub fn arguments(&self, server: &Command, given: impl Fn(&Arg) -> bool) -> Result<Vec<OsString>, Vec<Problem>> {
        let tables = self.tables()?;
        let name = server.get_name();
        let Some(ServerTable { table, .. }) = tables.iter().find(|table| table.name == name) else {
            let present: Vec<String> = tables.iter().map(|table| format!("[{}]", table.name)).collect();
            let has = if present.is_empty() { "no table".to_string() } else { present.join(", ") };
            return Err(vec![self.problem(None, None, format!("no [{name}] table (the file has {has})"))]);
        };
        self.table_arguments(server, table, given)
    }

    fn table_arguments(
        &self,
        server: &Command,
        table: &DeTable<'_>,
        given: impl Fn(&Arg) -> bool,
    ) -> Result<Vec<OsString>, Vec<Problem>> {
        let mut arguments = Vec::new();
        let mut problems = Vec::new();
        for (key, value) in table {
            let path = format!("{}.{}", server.get_name(), key.get_ref());
            let at = |reason: String| self.problem(Some(key.span()), Some(path.clone()), reason);
            let Some(arg) = flag_named(server, key.get_ref()) else {
                problems.push(at(unknown_key_reason(server, key.get_ref())));
                continue;
            };
            if self.readable_by_all && is_secret(arg) {
                let instead = arg.get_env().map(|env| format!(", or set {} instead", env.to_string_lossy()));
                problems.push(at(format!(
                    "a secret in a file anyone on this host may read: chmod o-r {}{}",
                    self.name,
                    instead.unwrap_or_default()
                )));
                continue;
            }
            match setting(server, arg, value) {
                // The command line or the environment sets it, or an
                // option that cannot go with it: theirs wins.
                Ok(_) if given(arg) || conflicting(server, arg).into_iter().any(&given) => {}
                Ok(mut flags) => arguments.append(&mut flags),
                Err(reason) => problems.push(self.problem(Some(value.span()), Some(path.clone()), reason)),
            }
        }
        if problems.is_empty() { Ok(arguments) } else { Err(problems) }
    }

    /// Checks every table of the file as its server would at start: each
    /// setting, then the settings together (an option that needs another).
    /// Returns each table's name and number of settings.
    ///
    /// # Errors
    /// Every problem found.
    pub fn check(&self) -> Result<Vec<(String, usize)>, Vec<Problem>> {
        let cli = Cli::command();
        let mut checked = Vec::new();
        let mut problems = Vec::new();
        for ServerTable { name, span, table } in self.tables()? {
            let Some(server) = cli.find_subcommand(&name) else { continue };
            match self.table_arguments(server, &table, |_| false) {
                Ok(arguments) => {
                    let line: Vec<OsString> =
                        ["fogconnect", name.as_str()].into_iter().map(OsString::from).chain(arguments).collect();
                    match Cli::command().try_get_matches_from(line) {
                        Ok(_) => checked.push((name, table.len())),
                        Err(e) => problems.push(self.problem(Some(span), Some(name), clap_reason(&e))),
                    }
                }
                Err(mut more) => problems.append(&mut more),
            }
        }
        if problems.is_empty() { Ok(checked) } else { Err(problems) }
    }
}

#[cfg(unix)]
fn readable_by_all(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o004 != 0
}

#[cfg(not(unix))]
fn readable_by_all(_: &std::fs::Metadata) -> bool {
    false
}

/// The flag of `server` a key names: a long flag other than `--config`
/// (a file does not name another), `--help` and `--version`.
fn flag_named<'a>(server: &'a Command, key: &str) -> Option<&'a Arg> {
    if matches!(key, "config" | "help" | "version") {
        return None;
    }
    server.get_arguments().find(|arg| arg.get_long() == Some(key))
}

fn unknown_key_reason(server: &Command, key: &str) -> String {
    let dashed = key.replace('_', "-");
    if dashed != key && flag_named(server, &dashed).is_some() {
        return format!("unknown key (did you mean {dashed}? keys are spelled as the flags)");
    }
    if key == "config" {
        return "a config file cannot name another".into();
    }
    format!("unknown key (the keys are the long flags of `fogconnect {}`, see --help)", server.get_name())
}

/// The options of `server` that cannot be given with `arg`, whichever of
/// the two declares the conflict.
fn conflicting<'a>(server: &'a Command, arg: &Arg) -> Vec<&'a Arg> {
    let mut found = server.get_arg_conflicts_with(arg);
    for other in server.get_arguments() {
        if server.get_arg_conflicts_with(other).iter().any(|a| a.get_id() == arg.get_id()) {
            found.push(other);
        }
    }
    found
}

/// Options whose values are secrets: those hidden from `--help`'s
/// environment listing, and the relay's NAME:PASSWORD users.
fn is_secret(arg: &Arg) -> bool {
    arg.is_hide_env_values_set() || (arg.get_long() == Some("user") && arg.get_value_names().is_some())
}

/// What TOML calls the kind of `value`, for messages.
fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The command-line arguments one setting stands for.
fn setting(server: &Command, arg: &Arg, value: &Spanned<DeValue<'_>>) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().unwrap_or_default();
    match (arg.get_action(), value.get_ref()) {
        (ArgAction::SetTrue, DeValue::Boolean(true)) => Ok(vec![format!("--{long}").into()]),
        (ArgAction::SetTrue, DeValue::Boolean(false)) => Ok(Vec::new()),
        (ArgAction::SetTrue, other) => Err(format!("expected true or false, found {}", kind(other))),
        (ArgAction::Append, DeValue::Array(items)) => {
            items.iter().map(|item| one_value(server, arg, item.get_ref())).collect()
        }
        (ArgAction::Set | ArgAction::Append, scalar) => Ok(vec![one_value(server, arg, scalar)?]),
        _ => Err("this flag cannot be set in a config file".into()),
    }
}

/// `--long=VALUE` for one scalar, checked by the flag's own parser.
fn one_value(server: &Command, arg: &Arg, value: &DeValue<'_>) -> Result<OsString, String> {
    let long = arg.get_long().unwrap_or_default();
    let text = match (takes_integer(arg), value) {
        (true, DeValue::Integer(integer)) => i128::from_str_radix(integer.as_str(), integer.radix())
            .map_err(|_| format!("{integer} is out of range"))?
            .to_string(),
        (true, other) => return Err(format!("expected an integer, found {}", kind(other))),
        (false, DeValue::String(text)) => text.to_string(),
        (false, other @ (DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_))) => {
            let text = match other {
                DeValue::Integer(integer) => integer.to_string(),
                DeValue::Float(float) => float.to_string(),
                _ => matches!(other, DeValue::Boolean(true)).to_string(),
            };
            return Err(format!("expected a string, found {}: write it in quotes, {long} = \"{text}\"", kind(other)));
        }
        (false, other) => return Err(format!("expected a string, found {}", kind(other))),
    };
    let flag: OsString = format!("--{long}={text}").into();
    // The flag's own value parser, through clap: a lone argument whose
    // value it refuses fails on the value before any rule between options.
    let line = [OsString::from(server.get_name()), flag.clone()];
    match server.clone().try_get_matches_from(line) {
        Err(e) if matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8) => {
            Err(clap_reason(&e))
        }
        _ => Ok(flag),
    }
}

/// Whether the flag's value is a number (a TOML integer in a file).
fn takes_integer(arg: &Arg) -> bool {
    use std::any::TypeId;
    let id = arg.get_value_parser().type_id();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
    ]
    .into_iter()
    .any(|t| id == t)
}

/// The reason in a clap error, in one line: what the flag's parser said,
/// or the first paragraph of clap's message.
fn clap_reason(error: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    let rendered = error.render().to_string();
    let paragraph: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let joined = paragraph.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_string()
}

/// The command line with the settings of the `--config FILE` it names put
/// before its own arguments, for a server subcommand; any other command
/// line as it is (clap then reports what is wrong with it).
///
/// # Errors
/// The config file's problems.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, Vec<Problem>> {
    let cli = Cli::command();
    let Ok(matches) = cli.clone().ignore_errors(true).try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some((name, sub_matches)) = matches.subcommand() else { return Ok(argv) };
    if !SERVERS.contains(&name) || sub_matches.subcommand().is_some() {
        return Ok(argv);
    }
    let Some(path) = sub_matches.get_one::<std::path::PathBuf>("config") else { return Ok(argv) };
    let Some(server) = cli.find_subcommand(name) else { return Ok(argv) };
    let file = ConfigFile::read(path).map_err(|p| vec![p])?;
    let settings = file.arguments(server, |arg| is_given(sub_matches, arg))?;
    // After the subcommand's name: the first argument equal to it.
    let at = argv.iter().skip(1).position(|a| a == name).map_or(argv.len(), |i| i + 2);
    let mut expanded = argv;
    expanded.splice(at..at, settings);
    Ok(expanded)
}

/// Whether the command line or the environment sets `arg`.
fn is_given(matches: &ArgMatches, arg: &Arg) -> bool {
    matches!(matches.value_source(arg.get_id().as_str()), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> Command {
        Cli::command().find_subcommand(name).cloned().unwrap_or_else(|| Command::new("missing"))
    }

    fn arguments(text: &str, name: &str) -> Result<Vec<String>, Vec<String>> {
        ConfigFile::from_text("test.toml", text)
            .arguments(&server(name), |_| false)
            .map(|a| a.into_iter().map(|s| s.to_string_lossy().into_owned()).collect())
            .map_err(|p| p.into_iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn settings_become_the_flags_they_name() {
        let text = "[node]\nlisten = \"127.0.0.1:7700\"\nno-cache = true\nno-segmentation-offload = false\n\
                    plugin = [\"1=/a.wasm\", \"2=/b.wasm\"]\nplugin-memory-mb = 32\nrelay = \"turn:r.example:3478\"\n\
                    relay-user = \"dev\"\n";
        assert_eq!(
            arguments(text, "node"),
            Ok(vec![
                "--listen=127.0.0.1:7700".into(),
                "--no-cache".into(),
                "--plugin=1=/a.wasm".into(),
                "--plugin=2=/b.wasm".into(),
                "--plugin-memory-mb=32".into(),
                "--relay=turn:r.example:3478".into(),
                "--relay-user=dev".into(),
            ])
        );
        assert_eq!(arguments("[stun]\nrate = 0x10\n", "stun"), Ok(vec!["--rate=16".into()]));
    }

    #[test]
    fn each_mistake_names_its_line_and_key() {
        let cases = [
            ("[node]\nlisten = \"nowhere\"\n", "test.toml:2: node.listen: invalid socket address syntax"),
            ("[node]\n\nbogus = 1\n", "test.toml:3: node.bogus: unknown key (the keys are the long flags"),
            ("[node]\nno_cache = true\n", "test.toml:2: node.no_cache: unknown key (did you mean no-cache?"),
            (
                "[node]\nlisten = 7700\n",
                "test.toml:2: node.listen: expected a string, found an integer: write it in quotes, listen = \"7700\"",
            ),
            ("[node]\nbirthday-sockets = \"many\"\n", "node.birthday-sockets: expected an integer, found a string"),
            ("[node]\nbirthday-sockets = 70000\n", "test.toml:2: node.birthday-sockets: 70000 is not in 0..=65535"),
            ("[node]\nconnect-timeout-ms = -5\n", "node.connect-timeout-ms: invalid digit found in string"),
            ("[node]\nplugin-scan-ms = 5\n", "node.plugin-scan-ms: 5 is not in 10..=3600000"),
            ("[node]\nno-cache = \"yes\"\n", "node.no-cache: expected true or false, found a string"),
            ("[node]\nplugin = [\"x\"]\n", "node.plugin: expected SERVICE=PATH, got \"x\""),
            ("[node]\nconfig = \"/x\"\n", "node.config: a config file cannot name another"),
            ("[nod]\nlisten = \"127.0.0.1:1\"\n", "test.toml:1: nod: unknown table"),
            ("listen = \"127.0.0.1:1\"\n", "test.toml:1: listen: a setting outside a table"),
            ("[relay]\nrealm = \"x\"\n", "test.toml: no [node] table (the file has [relay])"),
            ("[node]\nlisten = \n", "test.toml:2: not valid TOML"),
        ];
        for (text, expected) in cases {
            let problems = arguments(text, "node").expect_err(text);
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert!(problems[0].starts_with("test.toml"), "{text}: {problems:?}");
            assert!(problems[0].contains(expected), "{text}: {problems:?}");
            assert!(!problems[0].contains('\n'), "{problems:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = arguments("[node]\nlisten = 1\nbogus = 2\nmax-probes = -1\n", "node").expect_err("bad");
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn settings_the_command_line_gives_are_left_out() {
        let file = ConfigFile::from_text("t.toml", "[stun]\nlisten = \"127.0.0.1:1\"\nrate = 5\n");
        let given = file.arguments(&server("stun"), |arg| arg.get_long() == Some("listen"));
        assert_eq!(given, Ok(vec![OsString::from("--rate=5")]));
    }

    #[test]
    fn a_setting_gives_way_to_a_given_option_it_conflicts_with() {
        // The unit's environment file sets the secret: the file's
        // secret-file, which cannot go with it, is left out; and the other
        // way round.
        let file = ConfigFile::from_text("t.toml", "[signal]\nsecret-file = \"/s\"\nmax-clients = 9\n");
        let with_env = file.arguments(&server("signal"), |arg| arg.get_long() == Some("secret"));
        assert_eq!(with_env, Ok(vec![OsString::from("--max-clients=9")]));
        let file = ConfigFile::from_text("t.toml", "[signal]\nsecret = \"s\"\n");
        let with_flag = file.arguments(&server("signal"), |arg| arg.get_long() == Some("secret-file"));
        assert_eq!(with_flag, Ok(vec![]));
    }

    #[test]
    fn secrets_must_not_be_readable_by_all() {
        let mut file =
            ConfigFile::from_text("t.toml", "[relay]\nauth-secret = \"s\"\nuser = [\"a:b\"]\nrealm = \"x\"\n");
        assert!(file.arguments(&server("relay"), |_| false).is_ok());
        file.readable_by_all = true;
        let problems = file.arguments(&server("relay"), |_| false).expect_err("readable");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].to_string().contains("relay.auth-secret: a secret in a file anyone"), "{problems:?}");
        assert!(problems[0].to_string().contains("or set FOGCONNECT_TURN_SECRET instead"), "{problems:?}");
    }

    #[test]
    fn the_command_line_gets_the_settings_after_the_subcommand() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stun.toml");
        std::fs::write(&path, "[stun]\nlisten = \"127.0.0.1:1\"\nrate = 5\n")?;
        let argv: Vec<OsString> = ["fogconnect", "stun", "--rate", "9", "--config"]
            .into_iter()
            .map(OsString::from)
            .chain([path.into()])
            .collect();
        let expanded = expand(argv.clone()).map_err(|p| anyhow::anyhow!("{p:?}"))?;
        assert_eq!(expanded[..3], [OsString::from("fogconnect"), "stun".into(), "--listen=127.0.0.1:1".into()]);
        assert_eq!(expanded[3..], argv[2..]);
        // Another command, or none, passes as it is.
        let other: Vec<OsString> = ["fogconnect", "nat", "--stun", "x:1"].into_iter().map(OsString::from).collect();
        assert_eq!(expand(other.clone()).map_err(|p| anyhow::anyhow!("{p:?}"))?, other);
        Ok(())
    }

    #[test]
    fn check_judges_the_settings_together() {
        let file = ConfigFile::from_text("t.toml", "[stun]\nrate = 5\n[node]\ntoken = \"t\"\n");
        let problems = file.check().expect_err("token without signal");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].to_string().starts_with("t.toml:3: node: "), "{problems:?}");
        let file = ConfigFile::from_text("t.toml", "[stun]\nrate = 5\n[relay]\nrealm = \"r\"\nuser = \"a:b\"\n");
        assert_eq!(file.check(), Ok(vec![("relay".to_string(), 2), ("stun".to_string(), 1)]));
    }

    #[test]
    fn the_examples_are_valid_and_name_every_flag() {
        let examples = [
            ("node", include_str!("../../../dist/config/node.toml")),
            ("signal", include_str!("../../../dist/config/signal.toml")),
            ("relay", include_str!("../../../dist/config/relay.toml")),
            ("stun", include_str!("../../../dist/config/stun.toml")),
        ];
        for (name, text) in examples {
            let server = server(name);
            assert_eq!(ConfigFile::from_text(name, text).check(), Ok(vec![(name.to_string(), table_len(text))]));
            let mut keys = std::collections::BTreeSet::new();
            for line in text.lines() {
                let setting = line.strip_prefix("# ").unwrap_or(line);
                let Some((key, value)) = setting.split_once(" = ") else { continue };
                if !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
                    continue;
                }
                keys.insert(key);
                // A commented setting, once uncommented, is valid.
                let alone = ConfigFile::from_text(name, &format!("[{name}]\n{key} = {value}\n"));
                assert!(alone.arguments(&server, |_| false).is_ok(), "{name}: {line}");
            }
            let flags: std::collections::BTreeSet<&str> =
                server.get_arguments().filter_map(Arg::get_long).filter(|long| *long != "config").collect();
            assert_eq!(keys, flags, "{name}.toml names every flag, and only them");
        }
    }

    /// The settings not commented out in an example.
    fn table_len(text: &str) -> usize {
        text.lines().filter(|l| !l.starts_with('#') && !l.starts_with('[') && l.contains(" = ")).count()
    }
}
