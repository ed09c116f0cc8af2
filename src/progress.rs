//! How the library reports progress: the binary draws bars or prints lines, tests stay silent.

use crate::blob::BlobInfo;

pub trait Reporter: Sync {
    /// Layer `index` (of `total`) starts; `bytes` is the content it will read.
    fn layer_started(&self, _index: usize, _total: usize, _label: &str, _bytes: u64) {}
    /// `bytes` more content bytes of layer `index` were read.
    fn layer_progress(&self, _index: usize, _bytes: u64) {}
    fn layer_finished(&self, _index: usize, _blob: &BlobInfo) {}
    /// A line for the user (stderr).
    fn note(&self, _message: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {}
