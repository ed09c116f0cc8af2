//! Byte sizes as people write them (`4GiB`, `500MB`, `1.5 GiB`, `65536`) and as we print them.

use anyhow::{Result, bail};
use serde::Deserialize;

/// A value of a TOML or JSON file that may be written as an integer or as a string: the one
/// serde adapter behind sizes (`4294967296` or `"4GiB"`), durations (`30` or `"1m30s"`), layer
/// limits (`4` or `"10%"`) and modes (refused as integers, `"0755"` as strings).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u64),
    Str(String),
}

/// A size in a file: bytes as an integer, or a string in the syntax of [`parse_size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "IntOrString")]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(Size).map_err(|e| e.to_string())
    }
}

impl TryFrom<IntOrString> for Size {
    type Error = String;
    fn try_from(r: IntOrString) -> Result<Self, String> {
        match r {
            IntOrString::Int(n) => Ok(Size(n)),
            IntOrString::Str(s) => s.parse(),
        }
    }
}

/// Parses a size: a number (decimals allowed) and an optional unit. SI units are powers of 1000
/// (`kB`, `MB`, `GB`, `TB`); IEC units and bare letters are powers of 1024 (`KiB`/`K`, `MiB`/`M`,
/// `GiB`/`G`, `TiB`/`T`, as docker's and podman's `--memory 2g`); units are case-insensitive and
/// `B` alone means bytes. Used by layers files, policies and the command line alike.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        _ => bail!("invalid size {s:?}: unknown unit {unit:?} (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"),
    };
    if num.is_empty() || num.matches('.').count() > 1 {
        bail!("invalid size {s:?}: expected a number followed by a unit, e.g. 4GiB or 500MB");
    }
    let bytes = match num.split_once('.') {
        None => num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)),
        Some((int, frac)) => {
            // Exact decimal arithmetic: no float rounding in a limit.
            let digits = frac.len() as u32;
            let scale = 10u64.checked_pow(digits);
            let whole = format!("{int}{frac}").parse::<u64>().ok();
            match (whole, scale) {
                (Some(w), Some(scale)) => (w as u128 * mult as u128 / scale as u128).try_into().ok(),
                _ => None,
            }
        }
    };
    match bytes {
        Some(b) => Ok(b),
        None => bail!("invalid size {s:?}: too large"),
    }
}

/// `4.0 GiB`, `512.0 MiB`, `17 B`: for messages and tables.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        for bad in ["", "GiB", "4 parsecs", "1.2.3G", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(17), "17 B");
        assert_eq!(human(4 << 30), "4.0 GiB");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
