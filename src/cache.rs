//! The layer cache: what a layer's blob is, known without reading a byte of it.
//!
//! Store paths never change once built, so a layer made of the same store paths (identified by
//! their NAR hashes) with the same format settings always has the same digest. An entry is keyed
//! by the format version, the compression, the epoch, the layer's variant (a split part, say) and
//! the sorted store paths with their NAR hashes; a layer with a path whose NAR hash is unknown is
//! never cached. An entry holds the blob's digest, diff_id, sizes and media type; the cache also
//! keeps the compressed blobs themselves (`blobs/sha256/<hex>`) so archive outputs skip
//! recompression too.
//!
//! Nothing read from the cache is trusted blindly: an entry that does not parse or does not name
//! its own key is dropped, and a cached blob is hashed before use ([`Cache::verified_blob`]).
//! Layout: `DIR/layers/<key>.json`, `DIR/blobs/sha256/<digest hex>`. Delete the directory to
//! empty it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::atomic::{AtomicFile, FILE_MODE, write_then_commit};
use crate::blob::{BlobInfo, Compression, Digest, HashWriter};
use crate::closure::{NarHash, StorePath};
use crate::tarball::{Content, Entry, Kind};

/// Bump when the tar or layer format changes: every old entry then misses.
const FORMAT_VERSION: &str = "nixoci-layer-v1";

/// A cache key: hex SHA-256 of everything that determines a layer's bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerKey(String);

impl LayerKey {
    /// The key of a store layer, or `None` when a path's NAR hash is unknown.
    pub fn for_store_paths<'a>(
        paths: impl IntoIterator<Item = (&'a StorePath, Option<&'a NarHash>)>,
        variant: &str,
        compression: Compression,
        epoch: u64,
    ) -> Option<Self> {
        let mut h = Self::start(compression, epoch, variant);
        let mut paths: Vec<_> = paths.into_iter().collect();
        paths.sort_by(|a, b| a.0.cmp(b.0));
        for (p, nar) in paths {
            let nar = nar?;
            h.update(p.full().as_bytes());
            h.update(b"\0");
            h.update(nar.0);
        }
        Some(Self(hex::encode(h.finalize())))
    }

    /// The key of a layer whose entries carry their content inline (the customisation layer).
    pub fn for_inline_entries(entries: &[Entry], compression: Compression, epoch: u64) -> Option<Self> {
        let mut h = Self::start(compression, epoch, "inline");
        for e in entries {
            h.update(e.path.as_bytes());
            h.update(format!("\0{:o}\0{}\0{}\0", e.mode, e.uid, e.gid).as_bytes());
            match &e.kind {
                Kind::Dir => h.update(b"d"),
                Kind::Symlink { target } => {
                    h.update(b"l");
                    h.update(target.as_bytes());
                }
                Kind::File { content: Content::Inline(bytes), .. } => {
                    h.update(format!("f{}\0", bytes.len()).as_bytes());
                    h.update(bytes);
                }
                Kind::File { content: Content::Disk(_), .. } => return None,
            }
            h.update(b"\0");
        }
        Some(Self(hex::encode(h.finalize())))
    }

    fn start(compression: Compression, epoch: u64, variant: &str) -> Sha256 {
        let mut h = Sha256::new();
        h.update(format!("{FORMAT_VERSION}\0{compression}\0{epoch}\0{variant}\0").as_bytes());
        h
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Serialize, Deserialize)]
struct EntryFile {
    key: String,
    blob: BlobInfo,
}

/// An on-disk layer cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `$XDG_CACHE_HOME/nixoci`, else `~/.cache/nixoci`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("nixoci"))
    }

    pub fn open(root: &Path) -> Result<Self> {
        for sub in ["layers", "blobs/sha256", "tmp"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating the cache directory {}", root.join(sub).display()))?;
        }
        Ok(Self { root: root.to_owned() })
    }

    /// Where new blobs are written before they are renamed to their digest.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The cached descriptor for `key`; a damaged entry is removed and reported as a miss.
    pub fn lookup(&self, key: &LayerKey) -> Option<BlobInfo> {
        let path = self.entry_path(key);
        let bytes = fs::read(&path).ok()?;
        match serde_json::from_slice::<EntryFile>(&bytes) {
            Ok(e) if e.key == key.0 && e.blob.size > 0 => Some(e.blob),
            _ => {
                tracing::warn!("ignoring damaged cache entry {}", path.display());
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    pub fn store(&self, key: &LayerKey, blob: &BlobInfo) -> Result<()> {
        let bytes = serde_json::to_vec(&EntryFile { key: key.0.clone(), blob: blob.clone() })?;
        let dest = self.entry_path(key);
        write_then_commit(AtomicFile::new_in(&self.tmp_dir())?, &dest, FILE_MODE, |w| {
            w.write_all(&bytes).with_context(|| format!("writing {}", dest.display()))
        })
    }

    /// The cached blob for `blob`, if it is there and hashes to its digest; a damaged one is
    /// deleted.
    pub fn verified_blob(&self, blob: &BlobInfo) -> Option<PathBuf> {
        let path = self.blob_path(&blob.digest);
        let meta = fs::metadata(&path).ok()?;
        if meta.len() == blob.size && hash_file(&path).ok().as_ref() == Some(&blob.digest) {
            return Some(path);
        }
        tracing::warn!("cached blob {} is damaged; rebuilding it", blob.digest);
        let _ = fs::remove_file(&path);
        None
    }

    fn entry_path(&self, key: &LayerKey) -> PathBuf {
        self.root.join("layers").join(format!("{}.json", key.0))
    }
}

/// SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut h = HashWriter::new(io::sink());
    io::copy(&mut io::BufReader::with_capacity(1 << 20, fs::File::open(path)?), &mut h)?;
    Ok(h.finish().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::testing::sp;

    fn nar(b: u8) -> NarHash {
        NarHash([b; 32])
    }

    #[test]
    fn key_depends_on_everything_that_shapes_the_bytes() {
        let (a, b) = (sp("a"), sp("b"));
        let (na, nb) = (nar(1), nar(2));
        let k = |v: &str, c, e| LayerKey::for_store_paths([(&a, Some(&na)), (&b, Some(&nb))], v, c, e).unwrap();
        let base = k("", Compression::Gzip(6), 1);
        assert_eq!(
            base,
            LayerKey::for_store_paths([(&b, Some(&nb)), (&a, Some(&na))], "", Compression::Gzip(6), 1).unwrap(),
            "order-free"
        );
        assert_ne!(base, k("part 1", Compression::Gzip(6), 1));
        assert_ne!(base, k("", Compression::Gzip(9), 1));
        assert_ne!(base, k("", Compression::Zstd(3), 1));
        assert_ne!(base, k("", Compression::Gzip(6), 2));
        let other = nar(3);
        assert_ne!(
            base,
            LayerKey::for_store_paths([(&a, Some(&na)), (&b, Some(&other))], "", Compression::Gzip(6), 1).unwrap()
        );
        assert!(LayerKey::for_store_paths([(&a, None)], "", Compression::Gzip(6), 1).is_none());
    }

    #[test]
    fn damaged_entries_and_blobs_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let key = LayerKey::for_store_paths([(&sp("a"), Some(&nar(1)))], "", Compression::None, 1).unwrap();
        let data = b"blob bytes";
        let blob = BlobInfo {
            digest: Digest::of(data),
            size: data.len() as u64,
            diff_id: Digest::of(data),
            uncompressed_size: 10,
            media_type: "x".into(),
            // zstd:chunked blobs carry their TOC's position: it must survive the cache.
            annotations: [("io.github.containers.zstd-chunked.manifest-position".to_owned(), "1:2:3:1".to_owned())]
                .into(),
        };
        cache.store(&key, &blob).unwrap();
        assert_eq!(cache.lookup(&key), Some(blob.clone()));
        fs::write(cache.blob_path(&blob.digest), data).unwrap();
        assert!(cache.verified_blob(&blob).is_some());
        fs::write(cache.blob_path(&blob.digest), b"blob bytez").unwrap();
        assert!(cache.verified_blob(&blob).is_none());
        assert!(!cache.blob_path(&blob.digest).exists(), "a damaged blob is deleted");
        fs::write(dir.path().join("layers").join(format!("{}.json", key.as_str())), b"{\"key\":").unwrap();
        assert_eq!(cache.lookup(&key), None);
    }
}
