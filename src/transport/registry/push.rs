//! Pushing an image: blobs (skip, mount, monolithic or chunked upload, resume), then the
//! manifest. See the module above for the flow.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::Url;
use reqwest::blocking::Response;
use serde::Serialize;

use super::Repository;
use super::error::RegistryError;
use super::request::{self, Body, Progress, Req};
use super::retry::{Failure, with_retry};
use crate::blob::Digest;
use crate::image::{Image, JsonBlob};
use crate::progress::Reporter;
use crate::transport::oci_dir::BlobSource;

/// Blobs up to this size go in one `PUT`; larger ones in chunks. 16 MiB: a retry resends at
/// most this much, and the per-request overhead (one round trip) stays under 1 % at 100 MB/s.
pub const MONOLITHIC_MAX: u64 = 16 << 20;
/// Bytes per `PATCH` (unless the server's `OCI-Chunk-Min-Length` asks for more): what a failure
/// costs to resend.
pub const CHUNK_SIZE: u64 = 16 << 20;

/// What a push did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PushStats {
    /// Blob bytes sent, resent bytes included.
    pub bytes_uploaded: u64,
    pub blobs_uploaded: usize,
    /// Already in the repository.
    pub blobs_skipped: usize,
    /// Mounted from `--mount-from`.
    pub blobs_mounted: usize,
}

impl PushStats {
    pub fn add(&mut self, o: &PushStats) {
        self.bytes_uploaded += o.bytes_uploaded;
        self.blobs_uploaded += o.blobs_uploaded;
        self.blobs_skipped += o.blobs_skipped;
        self.blobs_mounted += o.blobs_mounted;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Skipped,
    Mounted,
    Uploaded,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Skipped => "already present",
            Outcome::Mounted => "mounted",
            Outcome::Uploaded => "uploaded",
        }
    }
}

/// A blob to push.
struct Item {
    digest: Digest,
    size: u64,
    label: String,
    /// Config bytes; layers are read from the blob source.
    bytes: Option<Arc<[u8]>>,
}

/// An upload session: where to send bytes.
struct Session {
    location: Url,
    min_chunk: u64,
}

enum Started {
    Mounted,
    Session(Session),
}

impl Repository {
    /// Connects for pushing, and checks the credentials open the repository for push.
    pub fn open_for_push(reference: &super::RegistryRef) -> Result<Self> {
        let repo = Self::open(reference)?;
        let mut scopes = vec![request::push_scope(&reference.repo)];
        if let Some(from) = &reference.options.mount_from {
            scopes.push(request::pull_scope(from));
        }
        let mut probe = repo.head_req(&Digest::of(b""));
        probe.what = format!("checking push access to {}", repo.name());
        repo.client.check_access(&scopes, &probe)?;
        Ok(repo)
    }

    fn head_req(&self, digest: &Digest) -> Req {
        let r = &self.reference;
        request::head_blob(&self.client.base, &self.name(), &r.repo, digest, request::push_scope(&r.repo))
    }

    /// Whether the repository holds `digest` (`HEAD`, remembered).
    pub fn has_blob(&self, digest: &Digest, size: u64) -> Result<bool, RegistryError> {
        if self.known_present(digest) {
            return Ok(true);
        }
        let req = self.head_req(digest);
        let resp = self.client.send(&req)?;
        match resp.status().as_u16() {
            200 => {
                // The header itself: for a HEAD, reqwest's content_length() is the (empty) body's.
                let len = resp
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(size);
                if len != size {
                    tracing::warn!("{}: blob {digest} has {len} bytes there, {size} here; uploading it", self.name());
                    return Ok(false);
                }
                self.mark_present(digest);
                Ok(true)
            }
            404 => Ok(false),
            _ => Err(self.client.error_from(&req, resp)),
        }
    }

    /// Pushes `image`'s blobs that the repository lacks (`jobs` at a time), then its manifest
    /// at `reference` (a tag, or the manifest's own digest).
    pub fn push(
        &self,
        image: &Image,
        reference: &str,
        blobs: &(dyn BlobSource + Sync),
        jobs: usize,
        reporter: &dyn Reporter,
    ) -> Result<PushStats> {
        if let Some(d) = &self.reference.digest
            && *d != image.manifest.digest
        {
            bail!("the image's manifest digest is {}, not {d}", image.manifest.digest);
        }
        let mut items: Vec<Item> = Vec::new();
        for (i, l) in image.layers.iter().enumerate() {
            if items.iter().any(|it| it.digest == l.blob.digest) {
                continue;
            }
            items.push(Item {
                digest: l.blob.digest.clone(),
                size: l.blob.size,
                label: format!("layer {}/{} ({})", i + 1, image.layers.len(), l.group),
                bytes: None,
            });
        }
        items.push(Item {
            digest: image.config.digest.clone(),
            size: image.config.bytes.len() as u64,
            label: "config".into(),
            bytes: Some(Arc::from(image.config.bytes.as_slice())),
        });
        let stats = self.push_blobs(&items, blobs, jobs, reporter)?;
        self.put_manifest(image, reference)?;
        Ok(stats)
    }

    fn push_blobs(
        &self,
        items: &[Item],
        blobs: &(dyn BlobSource + Sync),
        jobs: usize,
        reporter: &dyn Reporter,
    ) -> Result<PushStats> {
        let progress: Vec<Progress> = items.iter().map(|_| Progress::default()).collect();
        let active: Vec<AtomicBool> = items.iter().map(|_| AtomicBool::new(false)).collect();
        let sizes: Vec<u64> = items.iter().map(|it| it.size).collect();
        // Dropped when the uploads are done: stops the ticker at once.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let outcomes = std::thread::scope(|s| {
            // Progress: a ticker publishes each active upload's position.
            let (progress, active) = (&progress, &active);
            s.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_millis(200))
                {
                    for (i, p) in progress.iter().enumerate() {
                        if active[i].load(Ordering::Relaxed) {
                            reporter.upload_progress(i, p.position.load(Ordering::Relaxed));
                        }
                    }
                }
            });
            let outcomes = crate::parallel::largest_first(&sizes, jobs, |i| {
                let item = &items[i];
                let start = || {
                    active[i].store(true, Ordering::Relaxed);
                    reporter.upload_started(i, &item.label, item.size);
                };
                let outcome = self.push_blob(item, blobs, &progress[i], &start);
                active[i].store(false, Ordering::Relaxed);
                if let Ok(o) = &outcome {
                    reporter.upload_finished(i, &item.label, o.as_str());
                }
                outcome
            });
            drop(stop);
            outcomes
        })?;
        let mut stats = PushStats {
            bytes_uploaded: progress.iter().map(|p| p.sent.load(Ordering::Relaxed)).sum(),
            ..Default::default()
        };
        for o in outcomes {
            match o {
                Outcome::Skipped => stats.blobs_skipped += 1,
                Outcome::Mounted => stats.blobs_mounted += 1,
                Outcome::Uploaded => stats.blobs_uploaded += 1,
            }
        }
        Ok(stats)
    }

    /// One blob: skip, mount, or upload.
    fn push_blob(
        &self,
        item: &Item,
        blobs: &(dyn BlobSource + Sync),
        progress: &Progress,
        start: &dyn Fn(),
    ) -> Result<Outcome> {
        if self.has_blob(&item.digest, item.size)? {
            return Ok(Outcome::Skipped);
        }
        let from = self.reference.options.mount_from.as_deref().filter(|f| *f != self.reference.repo);
        let session = match self.start_upload(from.map(|f| (&item.digest, f)))? {
            Started::Mounted => {
                self.mark_present(&item.digest);
                return Ok(Outcome::Mounted);
            }
            Started::Session(s) => s,
        };
        // Only now is the blob read (a copy stages it from its source here).
        let source = match &item.bytes {
            Some(b) => Source::Bytes(b.clone()),
            None => Source::File(blobs.blob_path(&item.digest)?),
        };
        start();
        let body = |offset: u64, len: u64| match &source {
            Source::Bytes(b) => Body::Bytes(Arc::from(&b[offset as usize..(offset + len) as usize])),
            Source::File(path) => Body::File { path: path.clone(), offset, len, progress: Some(progress.clone()) },
        };
        let what = || format!("pushing blob {} to {}", item.digest, self.name());
        if item.size <= MONOLITHIC_MAX || item.bytes.is_some() {
            self.upload_monolithic(item, session, &body).with_context(what)?;
        } else {
            self.upload_chunked(item, session, &body).with_context(what)?;
        }
        if let Source::Bytes(b) = &source {
            // In-memory bodies are not counted as they stream.
            progress.sent.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.mark_present(&item.digest);
        Ok(Outcome::Uploaded)
    }

    /// `POST …/blobs/uploads/` (optionally with a mount).
    fn start_upload(&self, mount: Option<(&Digest, &str)>) -> Result<Started, RegistryError> {
        let r = &self.reference;
        let req = request::start_upload(&self.client.base, &self.name(), &r.repo, mount);
        let resp = self.client.send(&req)?;
        match resp.status().as_u16() {
            201 if mount.is_some() => Ok(Started::Mounted),
            202 => {
                let location = self.client.location(&req, &resp)?;
                let min_chunk = resp
                    .headers()
                    .get("oci-chunk-min-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if let Some((d, from)) = mount {
                    tracing::debug!("{d} not mountable from {from}: uploading");
                }
                Ok(Started::Session(Session { location, min_chunk }))
            }
            _ => Err(self.client.error_from(&req, resp)),
        }
    }

    /// One `PUT` with the whole blob. A failed attempt may leave partial data in its session,
    /// so each retry opens a new one (unless the blob landed after all).
    fn upload_monolithic(
        &self,
        item: &Item,
        session: Session,
        body: &dyn Fn(u64, u64) -> Body,
    ) -> Result<(), RegistryError> {
        let r = &self.reference;
        let mut location = session.location;
        with_retry(self.client.retry, |backoff| {
            if backoff.is_retry() {
                if self.head_now(&item.digest)? {
                    return Ok(());
                }
                location = match self.start_upload(None)? {
                    Started::Session(s) => s.location,
                    Started::Mounted => return Ok(()),
                };
            }
            let req = request::put_blob(&location, &r.repo, &self.name(), &item.digest, body(0, item.size));
            let resp = self.client.send_once(&req)?;
            if resp.status().as_u16() == 201 {
                return Ok(self.check_digest(&req, &resp, &item.digest)?);
            }
            Err(self.failure(&req, resp))
        })
    }

    /// `PATCH` chunks then an empty `PUT`; after a failure, resume where the server says it is.
    fn upload_chunked(
        &self,
        item: &Item,
        session: Session,
        body: &dyn Fn(u64, u64) -> Body,
    ) -> Result<(), RegistryError> {
        let r = &self.reference;
        let chunk = CHUNK_SIZE.max(session.min_chunk);
        let mut location = session.location;
        let mut offset = 0u64;
        with_retry(self.client.retry, |backoff| {
            if backoff.is_retry() {
                // How far did the server get?
                if self.head_now(&item.digest)? {
                    return Ok(());
                }
                match self.upload_status(&location, &item.digest)? {
                    Some((l, end)) if end <= item.size => {
                        tracing::info!("{}: resuming blob {} at byte {end} of {}", self.name(), item.digest, item.size);
                        location = l;
                        offset = end;
                    }
                    _ => {
                        tracing::info!(
                            "{}: the upload of blob {} was lost; starting it again",
                            self.name(),
                            item.digest
                        );
                        match self.start_upload(None)? {
                            Started::Session(s) => location = s.location,
                            Started::Mounted => return Ok(()),
                        }
                        offset = 0;
                    }
                }
            }
            while offset < item.size {
                let len = chunk.min(item.size - offset);
                let req = request::patch_chunk(&location, &r.repo, &self.name(), &item.digest, body(offset, len));
                let resp = self.client.send_once(&req)?;
                if resp.status().as_u16() != 202 {
                    return Err(self.failure(&req, resp));
                }
                if let Ok(l) = self.client.location(&req, &resp) {
                    location = l;
                }
                offset = range_end(&resp).map_or(offset + len, |e| e + 1);
                backoff.progressed();
            }
            let req = request::put_blob(&location, &r.repo, &self.name(), &item.digest, Body::Empty);
            let resp = self.client.send_once(&req)?;
            if resp.status().as_u16() == 201 {
                return Ok(self.check_digest(&req, &resp, &item.digest)?);
            }
            Err(self.failure(&req, resp))
        })
    }

    /// The server's view of an upload: its new location and how many bytes it holds; `None`
    /// when it no longer knows the session.
    fn upload_status(&self, location: &Url, digest: &Digest) -> Result<Option<(Url, u64)>, RegistryError> {
        let r = &self.reference;
        let req = request::upload_status(location, &r.repo, &self.name(), digest);
        let resp = self.client.send(&req)?;
        if !matches!(resp.status().as_u16(), 200 | 202 | 204) {
            tracing::debug!("upload status: {}", resp.status());
            return Ok(None);
        }
        let l = self.client.location(&req, &resp).unwrap_or_else(|_| location.clone());
        // distribution answers `0-0` for an empty upload (END is inclusive otherwise).
        let held = range_end(&resp).map_or(0, |e| if e == 0 { 0 } else { e + 1 });
        Ok(Some((l, held)))
    }

    /// `HEAD`, not remembered-negative: after a failure, another process (or our lost PUT)
    /// may have completed the blob.
    fn head_now(&self, digest: &Digest) -> Result<bool, RegistryError> {
        let req = self.head_req(digest);
        let resp = self.client.send(&req)?;
        let there = resp.status().as_u16() == 200;
        if there {
            self.mark_present(digest);
        }
        Ok(there)
    }

    /// An unexpected answer as a failed attempt (retried when transient).
    fn failure(&self, req: &Req, resp: Response) -> Failure {
        let retry_after = super::client::retry_after(&resp);
        Failure { error: self.client.error_from(req, resp), retry_after }
    }

    fn check_digest(&self, req: &Req, resp: &Response, want: &Digest) -> Result<(), RegistryError> {
        match resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            Some(got) if got != want.as_str() => Err(RegistryError::DigestMismatch {
                host: self.client.host.clone(),
                what: req.what.clone(),
                expected: want.clone(),
                actual: got.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// `PUT` the manifest: the exact bytes hashed, typed by their media type.
    pub fn put_manifest(&self, image: &Image, reference: &str) -> Result<(), RegistryError> {
        self.put_manifest_bytes(&image.manifest, &image.manifest_media_type(), reference)
    }

    /// `PUT` a manifest or an image index: `json`'s exact bytes, typed `media_type`.
    pub fn put_manifest_bytes(&self, json: &JsonBlob, media_type: &str, reference: &str) -> Result<(), RegistryError> {
        let r = &self.reference;
        let req = request::put_manifest(
            &self.client.base,
            &self.name(),
            &r.repo,
            reference,
            Arc::from(json.bytes.as_slice()),
            media_type,
        );
        let resp = self.client.send(&req)?;
        let resp = self.client.expect(&req, resp, &[200, 201, 202])?;
        self.check_digest(&req, &resp, &json.digest)
    }
}

enum Source {
    Bytes(Arc<[u8]>),
    File(PathBuf),
}

/// `Range: 0-END` (or `bytes=0-END`) → END.
fn range_end(resp: &Response) -> Option<u64> {
    let v = resp.headers().get("range")?.to_str().ok()?;
    let v = v.trim().trim_start_matches("bytes=");
    v.split_once('-')?.1.trim().parse().ok()
}
