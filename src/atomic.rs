//! Atomic file outputs: every file nixoci writes (archives, layout files, blobs, cache entries,
//! reports) is written to a temporary file on the destination's filesystem, given its mode, and
//! renamed into place, so a failed or killed run leaves the destination as it was. Every error
//! names the destination.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

/// The mode of what we write: readable by all, like the files podman, skopeo and umoci write.
pub const FILE_MODE: u32 = 0o644;

/// A file being written whose final name may be known only at the end (a blob named by its
/// digest): created in a directory on the destination's filesystem, renamed by [`Self::commit`],
/// removed if dropped uncommitted.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
}

impl AtomicFile {
    /// A temporary file in `dir`, which must be on the filesystem of the final destination.
    pub fn new_in(dir: &Path) -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix(".nixoci-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        Ok(Self { tmp })
    }

    /// A temporary sibling of `dest` (same directory, so the rename is atomic); the directory is
    /// created if missing.
    pub fn sibling_of(dest: &Path) -> Result<Self> {
        let parent = crate::transport::parent_dir(dest)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = tempfile::Builder::new().prefix(&format!(".{name}.nixoci-")).tempfile_in(&parent).map_err(|e| {
            anyhow!("cannot write {}: creating a temporary file in {}: {e}", dest.display(), parent.display())
        })?;
        Ok(Self { tmp })
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Gives the file `mode` and renames it to `dest`.
    pub fn commit(self, dest: &Path, mode: u32) -> Result<()> {
        let what = || format!("writing {}", dest.display());
        self.tmp.as_file().set_permissions(fs::Permissions::from_mode(mode)).with_context(what)?;
        self.tmp.persist(dest).map_err(|e| e.error).with_context(what)?;
        Ok(())
    }
}

/// Writes `dest` atomically: `write` fills a buffered temporary sibling, which then gets `mode`
/// and is renamed into place. Nothing is left behind when `write` fails.
pub fn atomic_write<T>(dest: &Path, mode: u32, write: impl FnOnce(&mut dyn Write) -> Result<T>) -> Result<T> {
    write_then_commit(AtomicFile::sibling_of(dest)?, dest, mode, write)
}

/// Writes `bytes` to `dest` atomically with mode [`FILE_MODE`], synced before the rename: these
/// are small files that name others (`index.json`, cache entries), which a crash must not leave
/// empty. (Blobs and archives are named by what they hold, or rewritten whole by the next run.)
pub fn atomic_write_bytes(dest: &Path, bytes: &[u8]) -> Result<()> {
    let file = AtomicFile::sibling_of(dest)?;
    let what = || format!("writing {}", dest.display());
    let mut f = file.file();
    f.write_all(bytes).with_context(what)?;
    f.sync_data().with_context(what)?;
    file.commit(dest, FILE_MODE)
}

/// Fills `file` through a buffer, flushes it (errors naming `dest`) and commits it as `dest`.
pub fn write_then_commit<T>(
    file: AtomicFile,
    dest: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let mut w = BufWriter::with_capacity(1 << 20, file.file());
    let value = write(&mut w)?;
    w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", dest.display()))?;
    file.commit(dest, mode)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_mode_and_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/out.txt");
        atomic_write_bytes(&dest, b"hello").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o644);

        let err = atomic_write(&dest, FILE_MODE, |w| {
            w.write_all(b"half")?;
            Err::<(), _>(anyhow!("boom"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(fs::read(&dest).unwrap(), b"hello", "the old file stays");
        let names: Vec<_> = fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.txt")], "no temporary file is left");
    }

    #[test]
    fn commit_errors_name_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let f = AtomicFile::new_in(dir.path()).unwrap();
        let dest = dir.path().join("missing-dir/blob");
        let err = f.commit(&dest, FILE_MODE).unwrap_err();
        assert!(format!("{err:#}").contains(&dest.display().to_string()), "{err:#}");
    }
}
