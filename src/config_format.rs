//! Configuration files (image specs, layers files, policies, smoke checks) in TOML or JSON: one
//! schema, two syntaxes. JSON is what Nix writes (`builtins.toJSON`), TOML what people write.
//!
//! The syntax is chosen by the file name (`.json`, `.toml`) or else by the content: a JSON
//! configuration is an object, so its first non-blank character is `{`, which cannot start a TOML
//! document. Both go through the same `serde` types with `deny_unknown_fields`, so a misspelt key
//! is refused with the same message (`unknown field `entrypont``) in either syntax; TOML errors
//! give the line, JSON errors the line and column.
//!
//! Values whose line matters after parsing (globs, group names) are [`Located`]: `Spanned<String>`
//! under TOML, plain `String` under JSON (whose line is rarely useful: Nix writes one line).

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// The syntax of a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// `.json` / `.toml` by name; otherwise JSON when the text starts (after blanks) with `{`.
    pub fn detect(name: &str, text: &str) -> Self {
        let ext = Path::new(name).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json") => Self::Json,
            Some("toml") => Self::Toml,
            _ if text.trim_start_matches('\u{feff}').trim_start().starts_with('{') => Self::Json,
            _ => Self::Toml,
        }
    }

    /// Parses `text` as `T`. The error is the parser's (it names the field, and the line); the
    /// caller adds which file it was.
    pub fn parse<T: DeserializeOwned>(self, text: &str) -> Result<T> {
        match self {
            Self::Toml => toml::from_str(text).map_err(anyhow::Error::from),
            Self::Json => serde_json::from_str(text).map_err(anyhow::Error::from),
        }
    }
}

/// Reads a configuration file: its text and detected syntax. `what` names the kind of file in
/// the error (`image spec`).
pub fn read(file: &Path, what: &str) -> Result<(String, Format)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {what} {}", file.display()))?;
    let format = Format::detect(&file.display().to_string(), &text);
    Ok((text, format))
}

/// A string value and, under TOML, where it was written.
pub trait Located {
    /// The 1-based line of the value in `text`, when the syntax keeps spans (TOML).
    fn line(&self, text: &str) -> Option<usize>;
    fn value(&self) -> &str;
    fn into_value(self) -> String;
}

impl Located for toml::Spanned<String> {
    fn line(&self, text: &str) -> Option<usize> {
        let start = self.span().start.min(text.len());
        Some(text.get(..start).map_or(1, |t| t.matches('\n').count() + 1))
    }
    fn value(&self) -> &str {
        self.get_ref()
    }
    fn into_value(self) -> String {
        self.into_inner()
    }
}

impl Located for String {
    fn line(&self, _text: &str) -> Option<usize> {
        None
    }
    fn value(&self) -> &str {
        self
    }
    fn into_value(self) -> String {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct T {
        name: String,
        #[serde(default)]
        list: Vec<String>,
    }

    #[test]
    fn detects_by_name_then_content() {
        assert_eq!(Format::detect("a.json", "name = 1"), Format::Json);
        assert_eq!(Format::detect("a.JSON", ""), Format::Json);
        assert_eq!(Format::detect("a.toml", "{"), Format::Toml);
        assert_eq!(Format::detect("/nix/store/x-spec", "\n  {\"name\": 1}"), Format::Json);
        assert_eq!(Format::detect("spec", "# comment\nname = \"x\""), Format::Toml);
        assert_eq!(Format::detect("spec", "[[group]]"), Format::Toml);
    }

    #[test]
    fn both_syntaxes_give_the_same_value_and_name_unknown_fields() {
        let t: T = Format::Toml.parse("name = \"a\"\nlist = [\"x\"]").unwrap();
        let j: T = Format::Json.parse(r#"{"name": "a", "list": ["x"]}"#).unwrap();
        assert_eq!(t, j);
        let e = Format::Toml.parse::<T>("name = \"a\"\nnmae = 1").unwrap_err().to_string();
        assert!(e.contains("unknown field `nmae`") && e.contains("line 2"), "{e}");
        let e = Format::Json.parse::<T>("{\"name\": \"a\",\n \"nmae\": 1}").unwrap_err().to_string();
        assert!(e.contains("unknown field `nmae`") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn located_values_know_their_toml_line() {
        #[derive(Deserialize)]
        struct S<L> {
            v: Vec<L>,
        }
        let text = "v = [\n  \"a\",\n  \"b\",\n]";
        let s: S<toml::Spanned<String>> = Format::Toml.parse(text).unwrap();
        assert_eq!(s.v.iter().map(|l| l.line(text)).collect::<Vec<_>>(), [Some(2), Some(3)]);
        let s: S<String> = Format::Json.parse(r#"{"v": ["a"]}"#).unwrap();
        assert_eq!((s.v[0].line(""), s.v[0].value()), (None, "a"));
    }
}
