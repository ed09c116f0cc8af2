//! How the library reports progress: the binary draws bars or prints lines, tests stay silent.

use crate::blob::BlobInfo;

pub trait Reporter: Sync {
    /// Layer `index` (of `total`) starts; `bytes` is the content it will read.
    fn layer_started(&self, _index: usize, _total: usize, _label: &str, _bytes: u64) {}
    /// `bytes` more content bytes of layer `index` were read.
    fn layer_progress(&self, _index: usize, _bytes: u64) {}
    fn layer_finished(&self, _index: usize, _blob: &BlobInfo) {}
    /// Blob `id` of a push (`label`: `layer 3/12 (group)`, `config`) starts uploading `bytes`.
    fn upload_started(&self, _id: usize, _label: &str, _bytes: u64) {}
    /// `position` bytes of upload `id` are sent (it may go back when an upload resumes).
    fn upload_progress(&self, _id: usize, _position: u64) {}
    /// Blob `id` is in the registry: `outcome` is `uploaded`, `mounted` or `already present`.
    fn upload_finished(&self, _id: usize, _label: &str, _outcome: &str) {}
    /// A line for the user (stderr).
    fn note(&self, _message: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {}
