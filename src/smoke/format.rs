//! The checks file of `nixoci smoke`: `[[check]]` tables, parsed and validated (unknown keys name
//! their line; names unique; commands and `env` entries well-formed), and the duration syntax
//! (`"30s"`, `"1m30s"`, `"500ms"`, or an integer of seconds, through `size::IntOrString`) its
//! `timeout` and `--load-timeout` use.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::size::IntOrString;

/// A check's timeout when it names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A duration written as `"30s"`, `"2m"`, `"1m30s"`, `"500ms"`, `"1h"`, or an integer of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "IntOrString")]
pub struct Timeout(pub Duration);

impl TryFrom<IntOrString> for Timeout {
    type Error = String;
    fn try_from(r: IntOrString) -> Result<Self, String> {
        match r {
            IntOrString::Int(n) => Ok(Timeout(Duration::from_secs(n))),
            IntOrString::Str(s) => s.parse(),
        }
    }
}

impl std::str::FromStr for Timeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("duration {s:?} is not like \"30s\", \"2m\", \"1m30s\" or \"500ms\"");
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let n_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            let u_end = rest[n_end..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| n_end + i);
            let n: u64 = rest[..n_end].parse().map_err(|_| bad())?;
            let d = match &rest[n_end..u_end] {
                "ms" => Duration::from_millis(n),
                "s" | "" => Duration::from_secs(n),
                "m" | "min" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                _ => return Err(bad()),
            };
            total += d;
            rest = &rest[u_end..];
        }
        if total.is_zero() {
            return Err(format!("duration {s:?} is zero"));
        }
        Ok(Timeout(total))
    }
}

/// Written back in the same syntax: `"30m"`, `"1m30s"`, `"500ms"`.
impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        let parts = [(ms / 3_600_000, "h"), (ms / 60_000 % 60, "m"), (ms / 1000 % 60, "s"), (ms % 1000, "ms")];
        let mut wrote = false;
        for (n, unit) in parts {
            if n > 0 {
                write!(f, "{n}{unit}")?;
                wrote = true;
            }
        }
        if !wrote {
            write!(f, "0s")?;
        }
        Ok(())
    }
}

/// One check of a checks file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    /// The program and its arguments, run as the container's entrypoint.
    pub command: Vec<String>,
    /// A substring stdout must contain.
    pub expect_stdout: Option<String>,
    #[serde(default)]
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub gpu: bool,
    /// `KEY=VALUE` strings added to the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
}

impl Check {
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0)
    }
}

/// A checks file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    #[serde(default)]
    pub check: Vec<Check>,
}

impl Checks {
    /// Reads a checks file, TOML or JSON (see [`crate::config_format`]).
    pub fn load(file: &Path) -> Result<Self> {
        let (text, format) = crate::config_format::read(file, "checks file")?;
        Self::parse_as(&text, format).with_context(|| format!("in checks file {}", file.display()))
    }

    /// Parses checks TOML.
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_as(text, crate::config_format::Format::Toml)
    }

    fn parse_as(text: &str, format: crate::config_format::Format) -> Result<Self> {
        let checks: Checks = format.parse(text)?;
        if checks.check.is_empty() {
            bail!("no [[check]] in it");
        }
        let mut names = BTreeSet::new();
        for c in &checks.check {
            if c.name.trim().is_empty() {
                bail!("a check has an empty name");
            }
            if !names.insert(c.name.as_str()) {
                bail!("two checks are named {:?}", c.name);
            }
            if c.command.first().is_none_or(|p| p.is_empty()) {
                bail!("check {:?}: command is empty", c.name);
            }
            if let Some(e) = c.env.iter().find(|e| !e.contains('=')) {
                bail!("check {:?}: env entry {e:?} must be KEY=VALUE", c.name);
            }
        }
        Ok(checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!("30s".parse::<Timeout>().unwrap().0, Duration::from_secs(30));
        assert_eq!("1m30s".parse::<Timeout>().unwrap().0, Duration::from_secs(90));
        assert_eq!("500ms".parse::<Timeout>().unwrap().0, Duration::from_millis(500));
        assert_eq!("2".parse::<Timeout>().unwrap().0, Duration::from_secs(2));
        for bad in ["", "s", "3 weeks", "0s", "1.5s"] {
            assert!(bad.parse::<Timeout>().is_err(), "{bad}");
        }
        for (text, shown) in [("1800", "30m"), ("1m30s", "1m30s"), ("2h0m5s", "2h5s"), ("1500ms", "1s500ms")] {
            let t: Timeout = text.parse().unwrap();
            assert_eq!(t.to_string(), shown);
            assert_eq!(shown.parse::<Timeout>().unwrap(), t);
        }
    }

    #[test]
    fn checks_file_is_validated() {
        let c = Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"true\"]\ntimeout = \"2s\"\ngpu = true").unwrap();
        assert_eq!(c.check[0].timeout(), Duration::from_secs(2));
        assert!(c.check[0].gpu);
        let err =
            Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"true\"]\nexpect = \"x\"").unwrap_err().to_string();
        assert!(err.contains("expect") && err.contains("line 4"), "{err}");
        assert!(Checks::parse("[[check]]\nname = \"a\"\ncommand = []").is_err());
        assert!(
            Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"x\"]\n[[check]]\nname = \"a\"\ncommand = [\"y\"]")
                .is_err()
        );
        assert!(Checks::parse("").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("checks.json");
        std::fs::write(&file, r#"{"check": [{"name": "a", "command": ["true"], "timeout": "2s", "gpu": true}]}"#)
            .unwrap();
        assert_eq!(Checks::load(&file).unwrap(), c);
        std::fs::write(&file, r#"{"check": [{"name": "a", "command": ["true"], "expect": "x"}]}"#).unwrap();
        let err = format!("{:#}", Checks::load(&file).unwrap_err());
        assert!(err.contains("checks.json") && err.contains("unknown field `expect`"), "{err}");
        let c = Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout = 5").unwrap();
        assert_eq!(c.check[0].timeout(), Duration::from_secs(5));
        let err = Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout = \"5 weeks\"").unwrap_err();
        assert!(format!("{err:#}").contains("\"5 weeks\" is not like"), "{err:#}");
    }
}
