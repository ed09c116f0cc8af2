//! Layer tars: their entries, and DESIGN.md §6's rules checked on them.

use std::collections::BTreeSet;
use std::io::Read;

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Without a leading `./` or `/` and without a trailing `/`.
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Option<String>,
    pub data: Vec<u8>,
    pub pax_keys: Vec<String>,
}

pub fn tar_entries(tar_bytes: &[u8]) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut entries = Vec::new();
    for e in archive.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let raw = String::from_utf8(e.path_bytes().into_owned()).expect("UTF-8 tar path");
        let path = raw.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_string();
        let h = e.header().clone();
        let link = e.link_name_bytes().map(|l| String::from_utf8(l.into_owned()).expect("UTF-8 link"));
        let pax_keys = match e.pax_extensions() {
            Ok(Some(exts)) => exts.filter_map(|x| x.ok()).map(|x| x.key().unwrap_or("?").to_string()).collect(),
            _ => Vec::new(),
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("tar entry data");
        entries.push(TarEntry {
            path,
            kind: h.entry_type(),
            mode: h.mode().expect("tar mode"),
            uid: h.uid().expect("tar uid"),
            gid: h.gid().expect("tar gid"),
            mtime: h.mtime().expect("tar mtime"),
            link,
            data,
            pax_keys,
        });
    }
    entries
}

/// DESIGN.md §6 on one layer: sorted, parents first, no duplicates, mtime = epoch, no hardlinks or
/// special files, no xattrs, and under /nix: owner 0:0, dirs 0555 (/nix, /nix/store 0755), files
/// 0444/0555, symlinks 0777. A layer with store paths has /nix and /nix/store.
pub fn check_tar_rules(what: &str, entries: &[TarEntry], epoch: u64) {
    let mut problems = Vec::new();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut seen = BTreeSet::new();
    for p in &paths {
        if !seen.insert(*p) {
            problems.push(format!("{p}: listed twice"));
        }
        if let Some((parent, _)) = p.rsplit_once('/') {
            // The parent must come earlier (when the layer has it at all; it must for store paths).
            let has_parent = seen.contains(parent);
            if !has_parent && (parent == "nix" || parent == "nix/store" || parent.starts_with("nix/store/")) {
                problems.push(format!("{p}: its parent {parent} does not come before it"));
            }
        }
    }
    let bytewise = paths.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes());
    let by_component = paths.windows(2).all(|w| w[0].split('/').lt(w[1].split('/')));
    if !bytewise && !by_component {
        problems.push(format!("entries are not sorted: {paths:?}"));
    }
    let has_store = paths.iter().any(|p| p.starts_with("nix/store/"));
    if has_store {
        for p in ["nix", "nix/store"] {
            match entries.iter().find(|e| e.path == p) {
                Some(e) if e.kind == tar::EntryType::Directory && e.mode & 0o7777 == 0o755 => {}
                Some(e) => problems.push(format!("{p}: expected a 0755 directory, got {:?} {:o}", e.kind, e.mode)),
                None => problems.push(format!("{p}: missing from a layer with store paths")),
            }
        }
    }
    for e in entries {
        if e.mtime != epoch {
            problems.push(format!("{}: mtime {} (expected {epoch})", e.path, e.mtime));
        }
        if e.pax_keys.iter().any(|k| k.contains("xattr") || k.contains("acl")) {
            problems.push(format!("{}: has xattr/ACL records {:?}", e.path, e.pax_keys));
        }
        let in_store = e.path.starts_with("nix/store/");
        match e.kind {
            tar::EntryType::Directory | tar::EntryType::Regular | tar::EntryType::Symlink => {}
            other => {
                problems.push(format!("{}: entry type {other:?} (hardlinks and special files are not allowed)", e.path))
            }
        }
        if in_store {
            if (e.uid, e.gid) != (0, 0) {
                problems.push(format!("{}: owner {}:{} (store paths are 0:0)", e.path, e.uid, e.gid));
            }
            let mode = e.mode & 0o7777;
            let ok = match e.kind {
                tar::EntryType::Directory => mode == 0o555,
                tar::EntryType::Regular => mode == 0o444 || mode == 0o555,
                tar::EntryType::Symlink => mode == 0o777,
                _ => false,
            };
            if !ok {
                problems.push(format!("{}: {:?} with mode {mode:o}", e.path, e.kind));
            }
        }
    }
    assert!(problems.is_empty(), "{what} breaks the tar rules:\n  {}", problems.join("\n  "));
}
