//! Reading from a registry: manifests (with their media type) and streamed blobs.
//!
//! A blob download that breaks off (connection dropped, body cut short) resumes where it stopped
//! with `Range: bytes=N-`, instead of starting over: a `206` answer continues the stream; a
//! server that ignores `Range` (`200`) is read again with the first N bytes skipped. Breaks go
//! through the one retry loop ([`with_retry`]): it gives up after `--retry-times` consecutive
//! breaks without a byte of progress. Memory per download: the caller's buffer; nothing is held
//! whole.

use std::io::Read;

use anyhow::Result;
use reqwest::blocking::Response;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE};

use super::Repository;
use super::client::read_limited;
use super::error::RegistryError;
use super::request;
use super::retry::with_retry;
use crate::blob::Digest;

/// Manifests and indexes larger than this are refused (the spec's suggested limit is 4 MiB).
const MANIFEST_MAX: u64 = 8 << 20;

impl Repository {
    /// The manifest or index at `reference` (tag or digest): its bytes and media type.
    pub fn get_manifest(&self, reference: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let r = &self.reference;
        let req = request::get_manifest(&self.client.base, &self.name(), &r.repo, reference);
        let resp = self.client.send(&req)?;
        let resp = self.client.expect(&req, resp, &[200])?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let bytes = read_limited(resp, MANIFEST_MAX + 1).map_err(|e| self.client.io_error(&req, e))?;
        if bytes.len() as u64 > MANIFEST_MAX {
            return Err(RegistryError::Status {
                host: self.client.host.clone(),
                what: req.what,
                status: 200,
                body: format!("the manifest is larger than {MANIFEST_MAX} bytes"),
            });
        }
        Ok((bytes, media_type))
    }

    /// `len` bytes of a blob from `offset`, by a range request (a server that ignores the range
    /// sends the whole blob, of which the range is taken). The caller checks what it reads.
    pub fn read_blob_range(&self, digest: &Digest, offset: u64, len: u64) -> Result<Vec<u8>, RegistryError> {
        let r = &self.reference;
        let req = request::get_blob_range(&self.client.base, &self.name(), &r.repo, digest, offset, len);
        let resp = self.client.send(&req)?;
        let resp = self.client.expect(&req, resp, &[200, 206])?;
        let skip = if resp.status().as_u16() == 206 { 0 } else { offset };
        let mut body = resp;
        std::io::copy(&mut (&mut body).take(skip), &mut std::io::sink()).map_err(|e| self.client.io_error(&req, e))?;
        read_limited(body, len).map_err(|e| self.client.io_error(&req, e))
    }

    /// A blob's bytes as they arrive (the caller verifies the digest); breaks resume with
    /// `Range` requests.
    pub fn open_blob(&self, digest: &Digest) -> Result<BlobReader<'_>, RegistryError> {
        let resp = self.get_blob_from(digest, 0)?;
        let total = content_length(&resp);
        Ok(BlobReader { repo: self, digest: digest.clone(), resp: Some(resp), position: 0, total })
    }

    /// `GET` the blob from byte `from` on: the answer positioned at `from`.
    fn get_blob_from(&self, digest: &Digest, from: u64) -> Result<Response, RegistryError> {
        let r = &self.reference;
        let req = request::get_blob(&self.client.base, &self.name(), &r.repo, digest, from);
        let resp = self.client.send(&req)?;
        match resp.status().as_u16() {
            200 if from > 0 => {
                // The server ignored the Range: skip what we have.
                tracing::info!("{}: no range support; reading blob {digest} again up to byte {from}", self.name());
                let mut resp = resp;
                let skipped = std::io::copy(&mut (&mut resp).take(from), &mut std::io::sink())
                    .map_err(|e| self.client.io_error(&req, e))?;
                if skipped < from {
                    return Err(self.client.io_error(
                        &req,
                        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the blob is shorter than before"),
                    ));
                }
                Ok(resp)
            }
            200 => Ok(resp),
            206 if from > 0 => {
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(from) {
                    return Err(RegistryError::Status {
                        host: self.client.host.clone(),
                        what: req.what,
                        status: 206,
                        body: format!("asked for bytes from {from}, got Content-Range {start:?}"),
                    });
                }
                Ok(resp)
            }
            _ => Err(self.client.error_from(&req, resp)),
        }
    }
}

fn content_length(resp: &Response) -> Option<u64> {
    resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// A blob download that resumes after a break (see the module docs).
pub struct BlobReader<'a> {
    repo: &'a Repository,
    digest: Digest,
    /// `None` after a break: reopened on the next read.
    resp: Option<Response>,
    /// Bytes delivered so far.
    position: u64,
    /// The whole blob's length, from the first answer's `Content-Length`.
    total: Option<u64>,
}

impl BlobReader<'_> {
    /// Bytes delivered so far.
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl Read for BlobReader<'_> {
    /// One read through the one retry loop: a break (error, or a body shorter than announced)
    /// is a transient failure; the next attempt reopens the blob at the current position.
    /// Every read that delivers bytes starts the bounds afresh.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let repo = self.repo;
        with_retry(repo.client.retry, |_| {
            let resp = match &mut self.resp {
                Some(r) => r,
                None => self.resp.insert(repo.get_blob_from(&self.digest, self.position)?),
            };
            let broke = match resp.read(buf) {
                Ok(0) if self.total.is_some_and(|t| self.position < t) => {
                    format!("the body ended before byte {} of {}", self.position, self.total.unwrap_or(0))
                }
                Ok(n) => {
                    self.position += n as u64;
                    return Ok(n);
                }
                Err(e) => e.to_string(),
            };
            self.resp = None;
            Err(RegistryError::Connect {
                host: repo.client.host.clone(),
                what: format!(
                    "reading blob {} from {} (broke off at byte {})",
                    self.digest,
                    repo.name(),
                    self.position
                ),
                message: broke,
                permanent: false,
            }
            .into())
        })
        .map_err(std::io::Error::other)
    }
}
