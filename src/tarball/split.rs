//! The build-time half of the size cap: cutting a listed layer larger than `max_layer_size` into
//! parts by its files. The plan only knows NAR sizes; the files are seen when the build lists
//! them, so the cut is settled there (`build::list_layers`), by this pure function.
//!
//! Entries are taken in tar order (bytewise by path) and poured into the current part until the
//! next one would push its tar size over the cap; each part repeats the directories above its
//! entries (`nix`, `nix/store`, the store path, …) with the same metadata, so every part
//! unpacks on its own. Every file and symlink lands in exactly one part, directories may repeat,
//! and the same listing always gives the same parts. A file too large for any part gets a part of
//! its own, which is then over the cap: a warning says so.

use std::collections::{BTreeMap, BTreeSet};

use super::{END_MARKER, Entry, Kind};
use crate::closure::StorePath;
use crate::size::human;

/// One part of a split layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Sorted bytewise by path, as the tar writer expects.
    pub entries: Vec<Entry>,
    /// The store paths the part holds entries of, sorted.
    pub paths: Vec<StorePath>,
}

/// The parts of a split layer and what the user should hear about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub parts: Vec<Part>,
    pub warnings: Vec<String>,
}

/// Cuts normalised `entries` (sorted, unique) into parts whose tar streams are at most `cap`
/// bytes each (but for a single file larger than that, which gets a part of its own).
pub fn split_entries(entries: &[Entry], cap: u64) -> Cut {
    let dirs: BTreeMap<&str, &Entry> =
        entries.iter().filter(|e| e.kind == Kind::Dir).map(|e| (e.path.as_str(), e)).collect();
    let mut parts: Vec<Vec<Entry>> = Vec::new();
    let mut warnings = Vec::new();
    let mut cur: Vec<Entry> = Vec::new();
    let mut cur_dirs: BTreeSet<&str> = BTreeSet::new();
    let mut cur_size = END_MARKER;
    for e in entries {
        let missing = |cur_dirs: &BTreeSet<&str>| -> Vec<&Entry> {
            ancestors(&e.path).filter(|a| !cur_dirs.contains(a)).filter_map(|a| dirs.get(a).copied()).collect()
        };
        let cost = |m: &[&Entry]| e.tar_size() + m.iter().map(|d| d.tar_size()).sum::<u64>();
        let mut need = missing(&cur_dirs);
        if !cur.is_empty() && cur_size + cost(&need) > cap {
            parts.push(std::mem::take(&mut cur));
            cur_dirs.clear();
            cur_size = END_MARKER;
            need = missing(&cur_dirs);
        }
        let alone = cur_size + cost(&need) > cap;
        if alone {
            warnings.push(format!(
                "/{} ({}) is larger than the layer size cap of {}: it gets a layer of its own, over the cap",
                e.path,
                human(e.data_size()),
                human(cap)
            ));
        }
        cur_size += cost(&need);
        for d in need {
            cur_dirs.insert(d.path.as_str());
            cur.push(d.clone());
        }
        if e.kind == Kind::Dir {
            cur_dirs.insert(e.path.as_str());
        }
        cur.push(e.clone());
        if alone {
            parts.push(std::mem::take(&mut cur));
            cur_dirs.clear();
            cur_size = END_MARKER;
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    let parts = parts
        .into_iter()
        .map(|mut entries| {
            entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
            let paths: BTreeSet<StorePath> = entries.iter().filter_map(|e| store_path_of(&e.path)).collect();
            Part { entries, paths: paths.into_iter().collect() }
        })
        .collect();
    Cut { parts, warnings }
}

/// `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// The store path an image path belongs to (`nix/store/<base>/…`), if any.
fn store_path_of(path: &str) -> Option<StorePath> {
    let base = path.strip_prefix("nix/store/")?.split('/').next()?;
    StorePath::from_base_name(base).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::testing::sp;
    use crate::tarball::{self, Content};

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File { size, content: Content::Inline(vec![]) },
            mode: 0o444,
            uid: 0,
            gid: 0,
        }
    }

    fn listing() -> (Vec<Entry>, StorePath) {
        let p = sp("python3.14-torch-2.10.0");
        let root = p.in_image();
        let mut v = tarball::store_prefix().to_vec();
        v.push(Entry::dir(root.clone(), 0o555));
        v.push(Entry::dir(format!("{root}/lib"), 0o555));
        for i in 0..20 {
            v.push(file(&format!("{root}/lib/f{i:02}.so"), 3000 + i * 100));
        }
        v.push(Entry::dir(format!("{root}/empty"), 0o555));
        v.push(Entry {
            path: format!("{root}/lib/link"),
            kind: Kind::Symlink { target: "f00.so".into() },
            mode: 0o777,
            uid: 0,
            gid: 0,
        });
        v.push(file(&format!("{root}/share-huge.bin"), 50_000));
        tarball::normalize(&mut v).unwrap();
        (v, p)
    }

    /// Nothing lost, nothing twice but directories, every part under the cap (but a lone
    /// oversized file), parents present and sorted in each part.
    fn check(entries: &[Entry], cut: &Cut, cap: u64) {
        let mut seen: Vec<&str> = Vec::new();
        for part in &cut.parts {
            let over = tarball::tar_size(&part.entries) > cap;
            let files: Vec<&Entry> = part.entries.iter().filter(|e| e.kind != Kind::Dir).collect();
            assert!(!over || files.len() == 1, "part over the cap holds more than one file");
            let mut sorted = part.entries.clone();
            tarball::normalize(&mut sorted).unwrap();
            assert_eq!(sorted, part.entries, "part not sorted or has duplicates");
            let here: BTreeSet<&str> = part.entries.iter().map(|e| e.path.as_str()).collect();
            for e in &part.entries {
                for a in ancestors(&e.path) {
                    assert!(here.contains(a), "{} lacks its parent {a}", e.path);
                }
            }
            seen.extend(files.iter().map(|e| e.path.as_str()));
        }
        let mut want: Vec<&str> = entries.iter().filter(|e| e.kind != Kind::Dir).map(|e| e.path.as_str()).collect();
        seen.sort_unstable();
        want.sort_unstable();
        assert_eq!(seen, want, "files lost or duplicated");
        let dirs_in: BTreeSet<&str> = entries.iter().filter(|e| e.kind == Kind::Dir).map(|e| e.path.as_str()).collect();
        let dirs_out: BTreeSet<&str> = cut
            .parts
            .iter()
            .flat_map(|p| p.entries.iter())
            .filter(|e| e.kind == Kind::Dir)
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(dirs_in, dirs_out, "a directory was lost");
    }

    #[test]
    fn cuts_under_the_cap_deterministically() {
        let (entries, p) = listing();
        for cap in [12_000, 20_000, 40_000, 1 << 20] {
            let cut = split_entries(&entries, cap);
            check(&entries, &cut, cap);
            assert_eq!(cut, split_entries(&entries, cap), "deterministic");
            assert!(cut.parts.iter().all(|part| part.paths == vec![p.clone()]));
            assert_eq!(cut.warnings.len(), usize::from(cap < 52_000), "the 50 kB file warns when it does not fit");
        }
        assert_eq!(split_entries(&entries, 1 << 20).parts.len(), 1);
    }

    #[test]
    fn several_store_paths_are_named_per_part() {
        let (a, b) = (sp("a-1"), sp("b-1"));
        let mut v = tarball::store_prefix().to_vec();
        for p in [&a, &b] {
            v.push(Entry::dir(p.in_image(), 0o555));
            v.push(file(&format!("{}/data", p.in_image()), 6000));
        }
        tarball::normalize(&mut v).unwrap();
        let cut = split_entries(&v, 10_000);
        check(&v, &cut, 10_000);
        assert!(cut.parts.len() >= 2 && cut.warnings.is_empty());
        for part in &cut.parts {
            let owners: BTreeSet<StorePath> = part.entries.iter().filter_map(|e| store_path_of(&e.path)).collect();
            assert_eq!(part.paths, owners.into_iter().collect::<Vec<_>>());
        }
        let all: BTreeSet<&StorePath> = cut.parts.iter().flat_map(|p| &p.paths).collect();
        assert_eq!(all, [&a, &b].into_iter().collect());
    }
}
