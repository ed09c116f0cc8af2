//! `oci:DIR[:TAG]`: an OCI image layout directory.
//!
//! A new directory is assembled in a temporary sibling and renamed into place. An existing layout
//! gets the blobs it lacks (each written to a temporary name, then renamed to its digest) and
//! then a new `index.json`, renamed over the old one: until that last rename, readers see the
//! layout as it was, and a blob that is already there is never rewritten.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use oci_spec::image::ImageIndex;

use crate::atomic::atomic_write_bytes;
use crate::blob::Digest;
use crate::image::{self, Image, Top};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Where layer blobs are read from while writing a destination.
pub trait BlobSource {
    /// A file holding the blob, to copy or hard-link.
    fn blob_path(&self, digest: &Digest) -> Result<PathBuf>;
}

/// Whether the layout at `dir` holds blob `digest` with `size` bytes.
pub fn has_blob(dir: &Path, digest: &Digest, size: u64) -> bool {
    fs::metadata(dir.join("blobs/sha256").join(digest.hex())).is_ok_and(|m| m.len() == size)
}

/// Writes `image` into the layout at `dir`, tagged `tag`.
///
/// Concurrent writers are safe: changes to an existing layout happen under an exclusive lock on
/// the directory, and when two builds create the same new directory the loser adds its image to
/// the winner's layout.
pub fn write(dir: &Path, tag: Option<&str>, image: &Image, blobs: &dyn BlobSource) -> Result<()> {
    write_top(dir, tag, Top::Image(image), blobs)
}

/// Writes an image or an image index with its images ([`Top`]) into the layout at `dir`, the
/// `index.json` entry (the manifest's or the index's descriptor) tagged `tag`; as [`write`].
pub fn write_top(dir: &Path, tag: Option<&str>, image: Top<'_>, blobs: &dyn BlobSource) -> Result<()> {
    let existing = match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("cannot write {}: it is not a directory", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", dir.display())),
    };
    if existing {
        if !dir.join("oci-layout").is_file() {
            bail!(
                "cannot write {}: the directory is not empty and is not an OCI layout (no oci-layout file)",
                dir.display()
            );
        }
        let _lock = lock(dir)?;
        add_to_layout(dir, tag, image, blobs)
    } else {
        let tmp = TempLayout::create(dir)?;
        fs::write(tmp.0.join("oci-layout"), OCI_LAYOUT)?;
        add_to_layout(&tmp.0, tag, image, blobs)?;
        match fs::rename(&tmp.0, dir) {
            Ok(()) => {
                std::mem::forget(tmp);
                Ok(())
            }
            Err(e) if dir.join("oci-layout").is_file() => {
                // Another build created the layout first: add to it instead.
                tracing::debug!("{} appeared while building ({e}); adding to it", dir.display());
                drop(tmp);
                let _lock = lock(dir)?;
                add_to_layout(dir, tag, image, blobs)
            }
            Err(e) => Err(e)
                .with_context(|| format!("cannot write {}: renaming the finished layout into place", dir.display())),
        }
    }
}

/// An exclusive lock on the layout directory, held while `index.json` is read, changed and replaced.
fn lock(dir: &Path) -> Result<fs::File> {
    let f = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    f.lock().with_context(|| format!("locking {}", dir.display()))?;
    Ok(f)
}

/// A new layout being assembled beside its destination; removed on drop unless renamed into
/// place. Made with `mkdir`, so its mode follows the umask like any directory the user makes.
struct TempLayout(PathBuf);

impl TempLayout {
    fn create(dest: &Path) -> Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let parent = super::parent_dir(dest)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        loop {
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = parent.join(format!(".{name}.nixoci-{}-{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot write {}: creating a temporary directory in {}",
                            dest.display(),
                            parent.display()
                        )
                    });
                }
            }
        }
    }
}

impl Drop for TempLayout {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn add_to_layout(dir: &Path, tag: Option<&str>, image: Top<'_>, blobs: &dyn BlobSource) -> Result<()> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).with_context(|| format!("creating {}", blob_dir.display()))?;
    for layer in image.images().iter().flat_map(|i| &i.layers) {
        let dest = blob_dir.join(layer.blob.digest.hex());
        if !dest.exists() {
            place_blob(&blobs.blob_path(&layer.blob.digest)?, &dest)?;
        }
    }
    for json in image.json_blobs() {
        let dest = blob_dir.join(json.digest.hex());
        if !dest.exists() {
            atomic_write_bytes(&dest, &json.bytes)?;
        }
    }
    let index_path = dir.join("index.json");
    let mut manifests = match fs::read(&index_path) {
        Ok(bytes) => {
            let index: ImageIndex =
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", index_path.display()))?;
            index.manifests().clone()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", index_path.display())),
    };
    // A tag names one manifest: drop any older manifest holding it (skopeo does the same).
    if let Some(tag) = tag {
        manifests.retain(|m| m.annotations().as_ref().and_then(|a| a.get(REF_NAME)).map(String::as_str) != Some(tag));
    }
    manifests.push(image.descriptor(tag)?);
    let index = image::index(manifests)?;
    atomic_write_bytes(&index_path, &index.bytes)
}

/// Hard-links `src` to `dest` when they share a filesystem, else copies; atomic either way.
fn place_blob(src: &Path, dest: &Path) -> Result<()> {
    let tmp =
        dest.with_file_name(format!(".{}.tmp-{}", dest.file_name().unwrap().to_string_lossy(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    use std::os::unix::fs::PermissionsExt;
    // Readable like every file of a layout, whatever mode the cache or staging file had. A hard
    // link shares its mode with `src` (perhaps another layout's file, or one we may not chmod):
    // link only when `src` is readable by all already, else copy.
    let readable = fs::metadata(src).is_ok_and(|m| m.permissions().mode() & 0o444 == 0o444);
    if !(readable && fs::hard_link(src, &tmp).is_ok()) {
        fs::copy(src, &tmp).with_context(|| format!("copying blob {} to {}", src.display(), tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("writing blob {}", dest.display()))?;
    }
    fs::rename(&tmp, dest).with_context(|| format!("writing blob {}", dest.display()))
}
