//! `StorePath`: a validated `/nix/store/<32-char nix-base32 hash>-<name>` path.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The store directory every image uses, whatever `--store-root` says about where the files are.
pub const STORE_DIR: &str = "/nix/store";

/// Where a reference to a store path starts inside a file's bytes: [`STORE_DIR`] and its slash,
/// followed by the [`HASH_LEN`] characters of the hash.
pub const REFERENCE_PREFIX: &[u8] = b"/nix/store/";

/// Finds [`REFERENCE_PREFIX`] in bytes (memchr's substring search, built once).
pub fn reference_finder() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(REFERENCE_PREFIX));
    &FINDER
}

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
/// The length of a store path's hash part.
pub const HASH_LEN: usize = 32;
/// Nix's limit on the name part of a store path.
const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorePathError {
    #[error("invalid store path {0:?}: not under {STORE_DIR}/")]
    NotInStore(String),
    #[error("invalid store path {0:?}: the hash must be 32 nix-base32 characters")]
    BadHash(String),
    #[error(
        "invalid store path {0:?}: the name must be 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9+-._?=], not starting with '.'"
    )]
    BadName(String),
}

/// A store path, kept as its base name (`<hash>-<name>`); ordered bytewise like the image's tar.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

impl StorePath {
    /// Parses a full path (`/nix/store/…`) or a base name (`<hash>-<name>`).
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        let base = match s.strip_prefix(STORE_DIR) {
            Some(rest) => rest.strip_prefix('/').ok_or_else(|| StorePathError::NotInStore(s.to_owned()))?,
            None if s.starts_with('/') => return Err(StorePathError::NotInStore(s.to_owned())),
            None => s,
        };
        Self::from_base_name(base).map_err(|e| match e {
            StorePathError::BadHash(_) => StorePathError::BadHash(s.to_owned()),
            StorePathError::BadName(_) => StorePathError::BadName(s.to_owned()),
            other => other,
        })
    }

    /// Parses `<hash>-<name>`.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let bytes = base.as_bytes();
        if bytes.len() < HASH_LEN + 2 || bytes[HASH_LEN] != b'-' || !bytes[..HASH_LEN].iter().all(|b| NIX32.contains(b))
        {
            return Err(StorePathError::BadHash(base.to_owned()));
        }
        let name = &base[HASH_LEN + 1..];
        let name_ok = name.len() <= MAX_NAME_LEN
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
        if !name_ok {
            return Err(StorePathError::BadName(base.to_owned()));
        }
        Ok(Self(base.to_owned()))
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> &str {
        &self.0
    }

    /// The 32-character hash.
    pub fn hash_part(&self) -> &str {
        &self.0[..HASH_LEN]
    }

    /// The name after `<hash>-`, e.g. `python3.14-torch-2.10.0`.
    pub fn name(&self) -> &str {
        &self.0[HASH_LEN + 1..]
    }

    /// `/nix/store/<hash>-<name>`.
    pub fn full(&self) -> String {
        format!("{STORE_DIR}/{}", self.0)
    }

    /// The path inside an image, without the leading slash: `nix/store/<hash>-<name>`.
    pub fn in_image(&self) -> String {
        format!("{}/{}", &STORE_DIR[1..], self.0)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}", self.0)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for StorePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StorePath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0c7mkyx2ra1ph9nd61mcvy0kh8lsaxhr";

    #[test]
    fn a_reference_is_the_store_dir_and_a_hash() {
        assert_eq!(REFERENCE_PREFIX, format!("{STORE_DIR}/").as_bytes());
        assert_eq!(H.len(), HASH_LEN);
        let hay = format!("x/nix/stor/nix/store/{H}-a");
        assert_eq!(reference_finder().find(hay.as_bytes()), Some("x/nix/stor".len()));
    }

    #[test]
    fn parses_full_and_base_forms() {
        let p = StorePath::parse(&format!("/nix/store/{H}-python3.14-torch-2.10.0")).unwrap();
        assert_eq!(p.name(), "python3.14-torch-2.10.0");
        assert_eq!(p.hash_part(), H);
        assert_eq!(p, StorePath::parse(&format!("{H}-python3.14-torch-2.10.0")).unwrap());
        assert_eq!(p.in_image(), format!("nix/store/{H}-python3.14-torch-2.10.0"));
    }

    #[test]
    fn rejects_bad_paths() {
        assert!(matches!(StorePath::parse("/usr/lib/x"), Err(StorePathError::NotInStore(_))));
        assert!(matches!(
            StorePath::parse("/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"),
            Err(StorePathError::BadHash(_))
        ));
        assert!(matches!(StorePath::parse(&format!("/nix/store/{H}-a/b")), Err(StorePathError::BadName(_))));
        assert!(matches!(StorePath::parse(&format!("/nix/store/{H}-")), Err(StorePathError::BadHash(_))));
        assert!(matches!(StorePath::parse(&format!("{H}-.hidden")), Err(StorePathError::BadName(_))));
        let long = "a".repeat(212);
        assert!(StorePath::parse(&format!("{H}-{long}")).is_err());
        assert!(StorePath::parse(&format!("{H}-{}", &long[..211])).is_ok());
    }
}
