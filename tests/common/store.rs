//! Store paths on disk: names, copies, snapshots, walks, hardlinking, and comparing a store path
//! with its copy in an unpacked rootfs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run_ok, sha256_hex};

/// `/nix/store/x-y` from `x-y` or `/nix/store/x-y`.
pub fn full_store_path(p: &str) -> String {
    if p.starts_with("/nix/store/") { p.to_string() } else { format!("/nix/store/{p}") }
}

pub fn base_name(p: &str) -> &str {
    p.strip_prefix("/nix/store/").unwrap_or(p)
}

/// A recursive listing: relative path → type, mode, size and content hash (or link target).
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(rel, format!("l -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.insert(rel, format!("d {mode:o}"));
                walk(base, &p, out);
            } else if m.is_file() {
                out.insert(rel, format!("f {mode:o} {} {}", m.len(), sha256_hex(&fs::read(&p).unwrap())));
            } else {
                out.insert(rel, format!("? {:?}", m.file_type()));
            }
        }
    }
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// `cp -a` (or `cp -r`, which breaks hardlinks) of store paths from `from` into `to`.
pub fn copy_store_paths(paths: &[String], from: &Path, to: &Path, preserve: bool) {
    fs::create_dir_all(to).unwrap();
    for p in paths {
        let base = base_name(p);
        let mut cmd = Command::new("cp");
        cmd.arg(if preserve { "-a" } else { "-r" }).arg(from.join(base)).arg(to.join(base));
        run_ok(&mut cmd);
    }
}

/// Walks a tree without following symlinks: (path, metadata) of every entry below `dir`, and `dir`.
pub fn walk(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let m = fs::symlink_metadata(dir).unwrap();
    let is_dir = m.is_dir();
    out.push((dir.to_path_buf(), m));
    if is_dir {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            out.extend(walk(&p));
        }
    }
    out
}

/// Hardlinks together regular files of equal content and mode (what `nix-store --optimise` does).
/// Returns how many links it made.
pub fn hardlink_duplicates(dir: &Path) -> usize {
    let mut first: BTreeMap<(String, u32), PathBuf> = BTreeMap::new();
    let mut linked = 0;
    for (p, m) in walk(dir) {
        if !m.is_file() {
            continue;
        }
        let key = (sha256_hex(&fs::read(&p).unwrap()), m.permissions().mode() & 0o7777);
        match first.get(&key) {
            Some(orig) => {
                if fs::metadata(orig).unwrap().ino() != m.ino() {
                    fs::remove_file(&p).unwrap();
                    fs::hard_link(orig, &p).unwrap();
                    linked += 1;
                }
            }
            None => {
                first.insert(key, p);
            }
        }
    }
    linked
}

/// Compares a store path on disk with its copy in an unpacked rootfs: same tree, same file content,
/// same symlink targets, files 0444/0555 by their x bit, and no hardlinks (every file nlink 1).
pub fn compare_store_path(src: &Path, dst: &Path, problems: &mut Vec<String>) {
    let sm = fs::symlink_metadata(src).unwrap();
    let dm = match fs::symlink_metadata(dst) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("{}: missing from the rootfs ({e})", dst.display()));
            return;
        }
    };
    if sm.file_type().is_symlink() {
        if !dm.file_type().is_symlink() {
            problems.push(format!("{}: not a symlink", dst.display()));
        } else if fs::read_link(src).unwrap() != fs::read_link(dst).unwrap() {
            problems.push(format!(
                "{}: symlink target {:?} != {:?}",
                dst.display(),
                fs::read_link(dst).unwrap(),
                fs::read_link(src).unwrap()
            ));
        }
    } else if sm.is_file() {
        if !dm.is_file() {
            problems.push(format!("{}: not a regular file", dst.display()));
            return;
        }
        if fs::read(src).unwrap() != fs::read(dst).unwrap() {
            problems.push(format!("{}: content differs", dst.display()));
        }
        let want = if sm.permissions().mode() & 0o100 != 0 { 0o555 } else { 0o444 };
        let got = dm.permissions().mode() & 0o7777;
        if got != want {
            problems.push(format!("{}: mode {got:o}, expected {want:o}", dst.display()));
        }
        if dm.nlink() != 1 {
            problems.push(format!(
                "{}: has {} links (hardlinks must become separate files)",
                dst.display(),
                dm.nlink()
            ));
        }
    } else if sm.is_dir() {
        if !dm.is_dir() {
            problems.push(format!("{}: not a directory", dst.display()));
            return;
        }
        let names = |d: &Path| -> BTreeSet<std::ffi::OsString> {
            fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect()
        };
        let (a, b) = (names(src), names(dst));
        if a != b {
            problems.push(format!("{}: entries differ: on disk {a:?}, in the rootfs {b:?}", dst.display()));
        }
        for n in a.intersection(&b) {
            compare_store_path(&src.join(n), &dst.join(n), problems);
        }
    } else if sm.file_type().is_fifo() {
        problems.push(format!("{}: source is a fifo", src.display()));
    }
}
