//! Plugin manifests: the limits a plugin's service runs with, given by the
//! operator beside the plugin file (`echo.wasm` → `echo.toml`) or with the
//! load command, overriding the node's defaults.
//!
//! ```toml
//! # echo.toml
//! version = "1.4.2"        # shown in the service list
//! memory-mib = 32          # linear memory cap
//! call-deadline-ms = 200   # longest one plugin call may run
//! connect-peer = false     # may the plugin open connections itself
//! ```
//!
//! Every key is optional; a key not given takes the node's default.
//! Unknown keys are refused, so a misspelt limit cannot silently be
//! ignored.

use serde::{Deserialize, Serialize};

/// Largest memory cap a manifest may ask for, in MiB (the 32-bit address
/// space of a wasm32 plugin).
pub const MAX_MEMORY_MIB: u32 = 4096;
/// Longest call deadline a manifest may ask for, in milliseconds.
pub const MAX_CALL_DEADLINE_MS: u32 = 60_000;
/// Longest manifest accepted, in bytes.
pub const MAX_MANIFEST_LEN: usize = 16 * 1024;
/// Longest version text, in characters.
pub const MAX_VERSION_LEN: usize = 64;

/// A plugin manifest. The default (every field `None`) leaves every limit at
/// the node's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginManifest {
    /// The build's version as its author names it (1 to
    /// [`MAX_VERSION_LEN`] printable characters), shown in the service
    /// list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Cap of the plugin's linear memory, in MiB (1 to [`MAX_MEMORY_MIB`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Longest a single plugin call may run, in milliseconds (1 to
    /// [`MAX_CALL_DEADLINE_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_deadline_ms: Option<u32>,
    /// Whether the plugin may open connections with its `connect-peer`
    /// import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_peer: Option<bool>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Longer than [`MAX_MANIFEST_LEN`].
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST_LEN} accepted")]
    TooLong(usize),
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("manifest is not valid: {0}")]
    Syntax(String),
    /// A version that is empty, too long or has control characters.
    #[error("manifest version {0:?} is not 1 to 64 printable characters")]
    BadVersion(String),
    /// A value outside its range.
    #[error("manifest {key} = {value} is out of range ({range})")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value given.
        value: u32,
        /// The values accepted.
        range: &'static str,
    },
}

impl PluginManifest {
    /// Parses and checks a manifest.
    ///
    /// # Errors
    /// [`ManifestError`] for text that is too long, not TOML, has an
    /// unknown key or a value of the wrong type or out of range.
    pub fn decode(text: &str) -> Result<Self, ManifestError> {
        if text.len() > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLong(text.len()));
        }
        let manifest: Self = toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Writes the manifest as TOML (only the keys given).
    pub fn encode(&self) -> String {
        // Optional scalar keys always serialize; an empty manifest is the
        // empty document.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks every value given against its range.
    ///
    /// # Errors
    /// [`ManifestError::OutOfRange`] for the first value outside its range,
    /// [`ManifestError::BadVersion`] for an unusable version.
    pub fn check(&self) -> Result<(), ManifestError> {
        if let Some(version) = &self.version
            && (version.is_empty()
                || version.chars().count() > MAX_VERSION_LEN
                || version.chars().any(char::is_control))
        {
            return Err(ManifestError::BadVersion(version.clone()));
        }
        if let Some(value) = self.memory_mib
            && !(1..=MAX_MEMORY_MIB).contains(&value)
        {
            return Err(ManifestError::OutOfRange { key: "memory-mib", value, range: "1 to 4096" });
        }
        if let Some(value) = self.call_deadline_ms
            && !(1..=MAX_CALL_DEADLINE_MS).contains(&value)
        {
            return Err(ManifestError::OutOfRange { key: "call-deadline-ms", value, range: "1 to 60000" });
        }
        Ok(())
    }

    /// This manifest's values where given, `other`'s elsewhere (e.g. the
    /// load command's flags over the manifest file).
    pub fn or(self, other: PluginManifest) -> PluginManifest {
        PluginManifest {
            version: self.version.or(other.version),
            memory_mib: self.memory_mib.or(other.memory_mib),
            call_deadline_ms: self.call_deadline_ms.or(other.call_deadline_ms),
            connect_peer: self.connect_peer.or(other.connect_peer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_manifest_round_trips() {
        let manifest = PluginManifest {
            version: Some("1.4.2 \"beta\"".into()),
            memory_mib: Some(32),
            call_deadline_ms: Some(200),
            connect_peer: Some(false),
        };
        let text = manifest.encode();
        assert_eq!(text, "version = '1.4.2 \"beta\"'\nmemory-mib = 32\ncall-deadline-ms = 200\nconnect-peer = false\n");
        assert_eq!(PluginManifest::decode(&text), Ok(manifest));
    }

    #[test]
    fn empty_manifest_is_all_defaults() {
        assert_eq!(PluginManifest::decode(""), Ok(PluginManifest::default()));
        assert_eq!(PluginManifest::decode("# nothing\n"), Ok(PluginManifest::default()));
        assert_eq!(PluginManifest::default().encode(), "");
    }

    #[test]
    fn partial_manifest_leaves_the_rest_unset() {
        let manifest = PluginManifest::decode("call-deadline-ms = 50 # tight\n");
        assert_eq!(manifest, Ok(PluginManifest { call_deadline_ms: Some(50), ..PluginManifest::default() }));
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = PluginManifest::decode("memory-mb = 32\n");
        assert!(matches!(&err, Err(ManifestError::Syntax(m)) if m.contains("memory-mb")), "{err:?}");
    }

    #[test]
    fn wrong_types_are_refused() {
        assert!(matches!(PluginManifest::decode("memory-mib = \"32\""), Err(ManifestError::Syntax(_))));
        assert!(matches!(PluginManifest::decode("connect-peer = 1"), Err(ManifestError::Syntax(_))));
        assert!(matches!(PluginManifest::decode("memory-mib = -1"), Err(ManifestError::Syntax(_))));
        assert!(matches!(PluginManifest::decode("memory-mib = 32\nmemory-mib = 33"), Err(ManifestError::Syntax(_))));
        assert!(matches!(PluginManifest::decode("[limits]\nmemory-mib = 3"), Err(ManifestError::Syntax(_))));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert_eq!(
            PluginManifest::decode("memory-mib = 0"),
            Err(ManifestError::OutOfRange { key: "memory-mib", value: 0, range: "1 to 4096" })
        );
        assert_eq!(
            PluginManifest::decode("memory-mib = 4097"),
            Err(ManifestError::OutOfRange { key: "memory-mib", value: 4097, range: "1 to 4096" })
        );
        assert_eq!(
            PluginManifest::decode("call-deadline-ms = 60001"),
            Err(ManifestError::OutOfRange { key: "call-deadline-ms", value: 60001, range: "1 to 60000" })
        );
        assert!(PluginManifest::decode("memory-mib = 4096\ncall-deadline-ms = 1").is_ok());
    }

    #[test]
    fn unusable_versions_are_refused() {
        for bad in ["", "1\n2", &"9".repeat(MAX_VERSION_LEN + 1)] {
            let text = PluginManifest { version: Some(bad.to_string()), ..PluginManifest::default() }.encode();
            assert_eq!(PluginManifest::decode(&text), Err(ManifestError::BadVersion(bad.to_string())), "{bad:?}");
        }
        let longest = "é".repeat(MAX_VERSION_LEN);
        assert!(PluginManifest::decode(&format!("version = \"{longest}\"")).is_ok());
    }

    #[test]
    fn overlong_manifest_is_refused_before_parsing() {
        let text = "#".repeat(MAX_MANIFEST_LEN + 1);
        assert_eq!(PluginManifest::decode(&text), Err(ManifestError::TooLong(MAX_MANIFEST_LEN + 1)));
    }

    #[test]
    fn flags_override_the_file() {
        let file = PluginManifest {
            version: Some("2".into()),
            memory_mib: Some(32),
            call_deadline_ms: Some(200),
            connect_peer: None,
        };
        let flags =
            PluginManifest { call_deadline_ms: Some(20), connect_peer: Some(false), ..PluginManifest::default() };
        assert_eq!(
            flags.or(file),
            PluginManifest {
                version: Some("2".into()),
                memory_mib: Some(32),
                call_deadline_ms: Some(20),
                connect_peer: Some(false)
            }
        );
    }
}
