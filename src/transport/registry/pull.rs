//! Reading from a registry: manifests (with their media type) and streamed blobs.

use std::io::Read;

use anyhow::Result;
use reqwest::blocking::Response;

use super::Repository;
use super::client::read_limited;
use super::error::RegistryError;
use super::request;
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

    /// A blob's bytes as they arrive (the caller verifies the digest).
    pub fn open_blob(&self, digest: &Digest) -> Result<Response, RegistryError> {
        let r = &self.reference;
        let req = request::get_blob(&self.client.base, &self.name(), &r.repo, digest);
        let resp = self.client.send(&req)?;
        self.client.expect(&req, resp, &[200])
    }
}
