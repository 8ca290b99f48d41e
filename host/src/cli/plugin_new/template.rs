//! The templates of `fogconnect plugin new`, and how one is filled in.
//!
//! A template is text with `{{key}}` placeholders and blocks between the
//! lines `//#if FLAG`, `//#else` and `//#end` (not nested), kept or left
//! out by the flags. The directive lines themselves are never written.

use std::collections::BTreeMap;

/// The source of a service plugin (`src/lib.rs`).
pub const SERVICE: &str = include_str!("templates/service.rs");
/// The source of a stream plugin (`src/lib.rs`).
pub const STREAM: &str = include_str!("templates/stream.rs");
/// The crate's manifest.
pub const MANIFEST: &str = include_str!("templates/Cargo.toml");
/// `.cargo/config.toml`: the target.
pub const CARGO_CONFIG: &str = include_str!("templates/cargo-config.toml");
/// `.gitignore`.
pub const GITIGNORE: &str = include_str!("templates/gitignore");
/// The crate's README.
pub const README: &str = include_str!("templates/README.md");

/// Why a template could not be filled in: a fault of the template itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A placeholder with no value.
    #[error("the template names {{{{{0}}}}}, which has no value")]
    Unknown(String),
    /// `//#else` or `//#end` without `//#if`, or an `//#if` not closed.
    #[error("the template's blocks are unbalanced at line {0}")]
    Unbalanced(usize),
}

/// Fills in `template`: blocks by `flags`, placeholders by `values`.
///
/// # Errors
/// A placeholder `values` lacks, or unbalanced blocks.
pub fn render(template: &str, flags: &[&str], values: &BTreeMap<&str, String>) -> Result<String, TemplateError> {
    let mut kept = String::with_capacity(template.len());
    // Inside a block: whether its current branch is kept.
    let mut block: Option<bool> = None;
    for (number, line) in template.lines().enumerate() {
        let directive = line.trim();
        if let Some(flag) = directive.strip_prefix("//#if ") {
            if block.is_some() {
                return Err(TemplateError::Unbalanced(number + 1));
            }
            block = Some(flags.contains(&flag.trim()));
        } else if directive == "//#else" {
            block = Some(!block.ok_or(TemplateError::Unbalanced(number + 1))?);
        } else if directive == "//#end" {
            block.take().ok_or(TemplateError::Unbalanced(number + 1))?;
        } else if block.unwrap_or(true) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if block.is_some() {
        return Err(TemplateError::Unbalanced(template.lines().count()));
    }
    substitute(&kept, values)
}

fn substitute(text: &str, values: &BTreeMap<&str, String>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| TemplateError::Unknown(after.chars().take(20).collect()))?;
        let key = &after[..end];
        out.push_str(values.get(key).ok_or_else(|| TemplateError::Unknown(key.to_string()))?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<&'static str, String> {
        BTreeMap::from([("name", "greeter".to_string())])
    }

    #[test]
    fn blocks_follow_the_flags_and_placeholders_their_values() {
        let template = "a {{name}}\n//#if handoff\nwith\n//#else\nwithout\n//#end\nz\n";
        assert_eq!(render(template, &["handoff"], &values()), Ok("a greeter\nwith\nz\n".into()));
        assert_eq!(render(template, &[], &values()), Ok("a greeter\nwithout\nz\n".into()));
    }

    #[test]
    fn faults_of_a_template_are_errors() {
        assert_eq!(render("{{nope}}", &[], &values()), Err(TemplateError::Unknown("nope".into())));
        assert_eq!(render("x\n//#end\n", &[], &values()), Err(TemplateError::Unbalanced(2)));
        assert_eq!(render("//#if a\n", &[], &values()), Err(TemplateError::Unbalanced(1)));
        assert_eq!(render("//#if a\n//#if b\n", &[], &values()), Err(TemplateError::Unbalanced(2)));
    }
}
