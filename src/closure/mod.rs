//! The closure: validated store paths with their NAR hash, NAR size and references.
//!
//! Every Nix input shape is read here (see [`read`]) and nowhere else.

mod nar_hash;
pub mod read;
mod store_path;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};

pub use nar_hash::NarHash;
pub use store_path::{HASH_LEN, REFERENCE_PREFIX, STORE_DIR, StorePath, StorePathError, reference_finder};

/// What Nix knows about one store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: Option<NarHash>,
    pub nar_size: Option<u64>,
    /// Other paths this one refers to (a self-reference is kept out: it says nothing about layering).
    pub references: BTreeSet<StorePath>,
}

/// A set of store paths closed under references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    paths: BTreeMap<StorePath, PathInfo>,
    /// Paths whose input listed themselves among their references (kept apart from
    /// `references`, which layering reads; a Nix database registers them).
    self_refs: BTreeSet<StorePath>,
}

impl Closure {
    /// Builds a closure, checking that every reference is inside it.
    pub fn new(infos: impl IntoIterator<Item = PathInfo>) -> Result<Self> {
        let mut paths = BTreeMap::new();
        let mut self_refs = BTreeSet::new();
        for mut info in infos {
            if info.references.remove(&info.path) {
                self_refs.insert(info.path.clone());
            }
            if let Some(old) = paths.insert(info.path.clone(), info) {
                bail!("store path {} is listed twice", old.path);
            }
        }
        for info in paths.values() {
            if let Some(missing) = info.references.iter().find(|r| !paths.contains_key(*r)) {
                bail!(
                    "store path {} refers to {missing}, which is not in the closure (a dangling reference)",
                    info.path
                );
            }
        }
        Ok(Self { paths, self_refs })
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn get(&self, path: &StorePath) -> Option<&PathInfo> {
        self.paths.get(path)
    }

    /// All paths, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &PathInfo> {
        self.paths.values()
    }

    /// Whether the closure input listed `path` among its own references (Nix records a store
    /// path that contains its own path as referring to itself).
    pub fn refers_to_itself(&self, path: &StorePath) -> bool {
        self.self_refs.contains(path)
    }

    /// Paths no other path refers to.
    pub fn roots(&self) -> Vec<&StorePath> {
        let referenced: BTreeSet<&StorePath> = self.paths.values().flat_map(|i| i.references.iter()).collect();
        self.paths.keys().filter(|p| !referenced.contains(p)).collect()
    }

    /// The NAR size, or 0 where it is unknown.
    pub fn nar_size(&self, path: &StorePath) -> u64 {
        self.paths.get(path).and_then(|i| i.nar_size).unwrap_or(0)
    }

    /// `start` and everything it refers to, directly or not.
    pub fn closure_of<'a>(&'a self, start: impl IntoIterator<Item = &'a StorePath>) -> BTreeSet<&'a StorePath> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&StorePath> = start.into_iter().collect();
        while let Some(p) = stack.pop() {
            if let Some((key, info)) = self.paths.get_key_value(p)
                && seen.insert(key)
            {
                stack.extend(info.references.iter());
            }
        }
        seen
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A store path named `name`, with a hash derived from it.
    pub fn sp(name: &str) -> StorePath {
        let nix32 = b"0123456789abcdfghijklmnpqrsvwxyz";
        let mut h = 0xcbf29ce484222325u64;
        let hash: String = (0..32)
            .map(|i| {
                for b in name.bytes().chain([i as u8]) {
                    h = (h ^ b as u64).wrapping_mul(0x100000001b3);
                }
                nix32[(h >> 59) as usize % 32] as char
            })
            .collect();
        StorePath::from_base_name(&format!("{hash}-{name}")).unwrap()
    }

    pub fn info(name: &str, size: u64, refs: &[&str]) -> PathInfo {
        PathInfo {
            path: sp(name),
            nar_hash: None,
            nar_size: Some(size),
            references: refs.iter().map(|r| sp(r)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn dangling_reference_names_both_paths() {
        let err = Closure::new([info("a", 1, &["b"])]).unwrap_err().to_string();
        assert!(err.contains("-a refers to") && err.contains("-b"), "{err}");
    }

    #[test]
    fn self_reference_is_dropped_and_roots_found() {
        let c = Closure::new([info("a", 1, &["a", "b"]), info("b", 2, &[])]).unwrap();
        assert_eq!(c.roots(), vec![&sp("a")]);
        assert_eq!(c.get(&sp("a")).unwrap().references.len(), 1);
        assert_eq!(c.closure_of([&sp("a")]).len(), 2);
    }
}
