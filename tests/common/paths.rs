//! Where things are: the repository, the built binary, `target/`, temporary directories, CI.

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nixoci"))
}

/// `target/` (or `target/<triple>/`): the binary lives in `<that>/<profile>/nixoci`.
pub fn target_dir() -> PathBuf {
    bin().parent().and_then(Path::parent).expect("binary is in target/<profile>/").to_path_buf()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("nixoci-e2e.").tempdir().expect("creating a temporary directory")
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}
