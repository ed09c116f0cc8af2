//! The deterministic tar writer (DESIGN.md §6).
//!
//! A layer is first *listed* ([`Entry`] values, from the store or from the image spec), then
//! *written*. Listing reads only metadata (lstat, readlink), so the exact tar size is known before a
//! byte of content is read: that lets `-o -` stream a layer into a docker-archive with no temp file.
//!
//! Rules: entries sorted bytewise by path (parents sort before children), `nix` and `nix/store`
//! (0755) in every store layer, mtime = the epoch given, owner 0:0 for store paths, modes normalised
//! (dirs 0555, files 0444 or 0555 by their executable bit, symlinks 0777), hardlinks written as
//! regular files, no xattrs, GNU long-name records for names over 100 bytes.

pub mod split;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::closure::StorePath;

const BLOCK: u64 = 512;
const NAME_FIELD: usize = 100;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A file on disk (a store file under `--store-root`).
    Disk(PathBuf),
    /// Bytes from the image spec (`/etc/passwd`, `[[files]]`).
    Inline(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, content: Content },
    Symlink { target: String },
}

/// One tar entry. `path` is relative to the image root, with no leading or trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Entry {
    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Self { path: path.into(), kind: Kind::Dir, mode, uid: 0, gid: 0 }
    }

    /// Content bytes this entry carries (0 for dirs and symlinks).
    pub fn data_size(&self) -> u64 {
        match &self.kind {
            Kind::File { size, .. } => *size,
            _ => 0,
        }
    }

    /// The bytes this entry takes in the tar stream, headers and padding included.
    pub fn tar_size(&self) -> u64 {
        let name_len = self.tar_name().len();
        let mut n = BLOCK + long_record_size(name_len);
        if let Kind::Symlink { target } = &self.kind {
            n += long_record_size(target.len());
        }
        n + padded(self.data_size())
    }

    fn tar_name(&self) -> String {
        match self.kind {
            Kind::Dir => format!("{}/", self.path),
            _ => self.path.clone(),
        }
    }
}

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// A GNU `././@LongLink` record (header + name + NUL, padded) when `len` overflows the field.
fn long_record_size(len: usize) -> u64 {
    if len > NAME_FIELD { BLOCK + padded(len as u64 + 1) } else { 0 }
}

/// Two zero blocks end every tar stream.
pub const END_MARKER: u64 = 2 * BLOCK;

/// The exact size of the tar stream [`write`] produces for `entries`.
pub fn tar_size(entries: &[Entry]) -> u64 {
    entries.iter().map(Entry::tar_size).sum::<u64>() + END_MARKER
}

/// Sorts entries bytewise by path and checks there are no duplicates (directories may repeat
/// when they are identical; the first is kept).
pub fn normalize(entries: &mut Vec<Entry>) -> Result<()> {
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for e in entries.drain(..) {
        match out.last() {
            Some(prev) if prev.path == e.path => {
                if prev.kind == Kind::Dir && e.kind == Kind::Dir {
                    continue;
                }
                bail!("/{} is defined twice in one layer", e.path);
            }
            _ => out.push(e),
        }
    }
    *entries = out;
    Ok(())
}

/// The leading `nix` and `nix/store` directories of every store layer.
pub fn store_prefix() -> [Entry; 2] {
    [Entry::dir("nix", 0o755), Entry::dir("nix/store", 0o755)]
}

/// Lists a store path's files from `store_root/<hash>-<name>`, normalised for the image.
///
/// Errors name the file when it is missing or of a type a layer cannot hold (fifo, socket, device).
pub fn list_store_path(store_root: &Path, path: &StorePath, out: &mut Vec<Entry>) -> Result<()> {
    let disk = store_root.join(path.base_name());
    let meta = fs::symlink_metadata(&disk)
        .with_context(|| format!("store path {path} is missing on disk (looked for {})", disk.display()))?;
    list_node(&disk, path.in_image(), meta, out)
}

fn list_node(disk: &Path, image_path: String, meta: fs::Metadata, out: &mut Vec<Entry>) -> Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(disk).with_context(|| format!("reading symlink {}", disk.display()))?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|t| anyhow::anyhow!("symlink {} has a non-UTF-8 target {t:?}", disk.display()))?;
        out.push(Entry { path: image_path, kind: Kind::Symlink { target }, mode: 0o777, uid: 0, gid: 0 });
    } else if ft.is_file() {
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o555 } else { 0o444 };
        let kind = Kind::File { size: meta.len(), content: Content::Disk(disk.to_owned()) };
        out.push(Entry { path: image_path, kind, mode, uid: 0, gid: 0 });
    } else if ft.is_dir() {
        out.push(Entry { path: image_path.clone(), kind: Kind::Dir, mode: 0o555, uid: 0, gid: 0 });
        let mut children: Vec<_> = fs::read_dir(disk)
            .with_context(|| format!("reading directory {}", disk.display()))?
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading directory {}", disk.display()))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let name = child
                .file_name()
                .into_string()
                .map_err(|n| anyhow::anyhow!("{} holds a file with a non-UTF-8 name {n:?}", disk.display()))?;
            let child_disk = child.path();
            let meta =
                fs::symlink_metadata(&child_disk).with_context(|| format!("reading {}", child_disk.display()))?;
            list_node(&child_disk, format!("{image_path}/{name}"), meta, out)?;
        }
    } else {
        let what = if ft.is_fifo() {
            "a fifo"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "an unknown file type"
        };
        bail!("{} is {what}: a store path may hold only files, directories and symlinks", disk.display());
    }
    Ok(())
}

/// Writes `entries` (already [`normalize`]d) as a tar stream with every header field pinned.
/// `on_data` is told how many content bytes were copied, for progress.
pub fn write<W: Write>(entries: &[Entry], epoch: u64, mut w: W, on_data: &mut dyn FnMut(u64)) -> Result<W> {
    let mut buf = vec![0u8; 256 * 1024];
    for e in entries {
        write_entry(e, epoch, &mut w, &mut buf, on_data)?;
    }
    w.write_all(&[0u8; END_MARKER as usize])?;
    Ok(w)
}

/// Writes one entry: its long-name records, header, content and padding (no end-of-archive).
pub fn write_entry<W: Write>(
    e: &Entry,
    epoch: u64,
    w: &mut W,
    buf: &mut [u8],
    on_data: &mut dyn FnMut(u64),
) -> Result<()> {
    write_header(e, epoch, w)?;
    if let Kind::File { size, content } = &e.kind {
        match content {
            Content::Inline(bytes) => w.write_all(bytes)?,
            Content::Disk(file) => copy_exact(file, *size, w, buf, on_data)?,
        }
        write_padding(w, *size)?;
    }
    Ok(())
}

/// Writes an entry's long-name records and header; a file's content must follow.
pub fn write_header<W: Write>(e: &Entry, epoch: u64, w: &mut W) -> io::Result<()> {
    let name = e.tar_name();
    if name.len() > NAME_FIELD {
        write_long(w, b'L', &name, epoch)?;
    }
    let mut h = tar::Header::new_gnu();
    set_field(&mut h.as_mut_bytes()[..NAME_FIELD], name.as_bytes());
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(epoch);
    match &e.kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        }
        Kind::Symlink { target } => {
            if target.len() > NAME_FIELD {
                write_long(w, b'K', target, epoch)?;
            }
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            set_field(&mut h.as_mut_bytes()[157..257], target.as_bytes());
        }
        Kind::File { size, .. } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(*size);
        }
    }
    h.set_cksum();
    w.write_all(h.as_bytes())
}

pub fn set_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&value[..n]);
}

fn write_long<W: Write>(w: &mut W, kind: u8, name: &str, epoch: u64) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    set_field(&mut h.as_mut_bytes()[..NAME_FIELD], b"././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(name.len() as u64 + 1);
    h.set_cksum();
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    write_padding(w, name.len() as u64 + 1)
}

/// Zero bytes that pad `size` content bytes to a whole block.
pub fn write_padding<W: Write>(w: &mut W, size: u64) -> io::Result<()> {
    let pad = (padded(size) - size) as usize;
    w.write_all(&[0u8; BLOCK as usize][..pad])
}

/// Copies exactly `size` bytes of `file`; a file that changed size since it was listed is an error.
fn copy_exact<W: Write>(file: &Path, size: u64, w: &mut W, buf: &mut [u8], on_data: &mut dyn FnMut(u64)) -> Result<()> {
    read_exact_pieces(file, size, buf, |piece| {
        w.write_all(piece)?;
        on_data(piece.len() as u64);
        Ok(())
    })
}

/// Reads exactly `size` bytes of `file` into `buf` a piece at a time, handing each to `each`;
/// a file that changed size since it was listed is an error that names it.
pub(crate) fn read_exact_pieces(
    file: &Path,
    size: u64,
    buf: &mut [u8],
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want]).with_context(|| format!("reading {}", file.display()))?;
        if n == 0 {
            bail!("{} shrank while the layer was written (expected {size} bytes)", file.display());
        }
        each(&buf[..n])?;
        left -= n as u64;
    }
    if f.read(&mut buf[..1]).with_context(|| format!("reading {}", file.display()))? != 0 {
        bail!("{} grew while the layer was written (expected {size} bytes)", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(entries: &[Entry]) -> Vec<u8> {
        let bytes = write(entries, 1, Vec::new(), &mut |_| {}).unwrap();
        assert_eq!(bytes.len() as u64, tar_size(entries), "tar_size must predict the stream");
        bytes
    }

    #[test]
    fn long_names_and_targets_survive_and_size_is_exact() {
        let long = format!("nix/store/{}", "x".repeat(300));
        let target = "/".to_owned() + &"t".repeat(150);
        let mut entries = vec![
            Entry::dir("nix", 0o755),
            Entry {
                path: long.clone(),
                kind: Kind::File { size: 5, content: Content::Inline(b"hello".to_vec()) },
                mode: 0o444,
                uid: 0,
                gid: 0,
            },
            Entry { path: "nix/l".into(), kind: Kind::Symlink { target: target.clone() }, mode: 0o777, uid: 0, gid: 0 },
            Entry { path: "home/app".into(), kind: Kind::Dir, mode: 0o755, uid: 1000, gid: 1000 },
        ];
        normalize(&mut entries).unwrap();
        let bytes = roundtrip(&entries);
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!(h.mtime().unwrap(), 1);
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            seen.push((path, h.mode().unwrap(), h.uid().unwrap(), link, data));
        }
        assert_eq!(seen[0].0, "home/app/");
        assert_eq!((seen[0].1, seen[0].2), (0o755, 1000));
        assert_eq!(seen[2].0, "nix/l");
        assert_eq!(seen[2].3.as_deref(), Some(target.as_str()));
        assert_eq!(seen[3].0, long);
        assert_eq!(seen[3].4, "hello");
    }

    #[test]
    fn duplicate_files_are_refused_duplicate_dirs_merged() {
        let f = Entry {
            path: "a".into(),
            kind: Kind::File { size: 0, content: Content::Inline(vec![]) },
            mode: 0o444,
            uid: 0,
            gid: 0,
        };
        let mut v = vec![Entry::dir("d", 0o755), Entry::dir("d", 0o755)];
        normalize(&mut v).unwrap();
        assert_eq!(v.len(), 1);
        let mut v = vec![f.clone(), f];
        assert!(normalize(&mut v).unwrap_err().to_string().contains("/a is defined twice"));
    }

    #[test]
    fn fifo_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let sp = StorePath::parse("/nix/store/0c7mkyx2ra1ph9nd61mcvy0kh8lsaxhr-x").unwrap();
        let root = dir.path().join(sp.base_name());
        fs::create_dir(&root).unwrap();
        let fifo = root.join("pipe");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = list_store_path(dir.path(), &sp, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("pipe is a fifo"), "{err}");
    }
}
