//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: pushing to and reading from OCI distribution
//! registries. The only networking code in nixoci.
//!
//! **Push flow** (distribution spec): every blob is `HEAD`ed first and skipped when present, so
//! an unchanged layer is never read nor sent. With `--mount-from REPO` a missing blob is first
//! mounted from that repository of the same registry (`POST …/blobs/uploads/?mount=D&from=REPO`);
//! a `202` answer falls back to an upload in the session it opened. Blobs under
//! [`MONOLITHIC_MAX`] go in one streaming `PUT`; larger ones in `PATCH` chunks of
//! [`CHUNK_SIZE`] (or the server's `OCI-Chunk-Min-Length`, if larger), then an empty `PUT`. After
//! a failed chunk the client asks the server how far it got (`GET` the upload URL, `Range:
//! 0-END`) and resumes from there; if the server lost the session, the blob starts over in a new
//! one. Blobs upload `--jobs` at a time, largest first, each streamed from its file (memory per
//! upload: one 256 KiB read buffer). The manifest goes last, as the exact bytes that were
//! hashed, with `Content-Type` = its media type: until then the tag is untouched.
//!
//! **Retries**: connection errors, 5xx, 408 and 429 are retried with exponential backoff and
//! jitter (0.5 s doubling to 30 s), `Retry-After` honoured, at most `--retry-times` (default 5)
//! retries and 5 minutes per operation. A chunk that lands resets both bounds (an upload goes on
//! as long as it advances). The final error names the host, the repository, the blob and the
//! server's body.
//!
//! **Auth**: the `/v2/` ping's `WWW-Authenticate` challenge decides: none (anonymous), `Basic`
//! (credentials on every request), or `Bearer` (a token per scope set from the realm, with
//! `repository:FROM:pull` added for mounts; refreshed before it expires and after a 401).
//! Credentials: see [`auth`]. Secrets live in [`Secret`], whose `Debug`/`Display` print
//! `<redacted>`, and go into sensitive header values only.
//!
//! **TLS** ([`tls`]): rustls with the system's roots, plus `*.crt` from `--cert-dir` (else
//! `/etc/containers/certs.d/HOST` or `/etc/docker/certs.d/HOST`) and a client certificate
//! `*.cert` + `*.key`; a self-signed server certificate in that directory is accepted as it is
//! (host name and dates still checked), as the Go clients do; refusals say which problem and
//! what to do. `--tls-verify=false` accepts any certificate and allows plain HTTP; like
//! docker, loopback registries (`localhost`, 127.0.0.0/8, `::1`) may answer on plain HTTP too.
//!
//! **Proxies** ([`proxy`]): `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` as the Go clients read them;
//! loopback registries never proxied; credentials in a proxy URL never printed.
//!
//! Blocking `reqwest` on plain threads (the build is thread-based); there is no async code.

pub mod auth;
pub mod client;
pub mod error;
pub mod proxy;
pub mod pull;
pub mod push;
pub mod reference;
pub mod request;
pub mod retry;
pub mod secret;
pub mod tls;

pub use auth::Credentials;
pub use client::Client;
pub use error::RegistryError;
pub use push::{CHUNK_SIZE, MONOLITHIC_MAX, PushStats};
pub use reference::{RegistryOptions, RegistryRef, RetryPolicy, is_loopback};
pub use secret::Secret;

use std::collections::HashSet;
use std::sync::Mutex;

use anyhow::Result;

use crate::blob::Digest;

/// A connected repository of a registry: what pushes and reads go through.
pub struct Repository {
    pub client: Client,
    pub reference: RegistryRef,
    /// Blobs known to be in the repository (HEAD answered 200, or we put them there).
    present: Mutex<HashSet<Digest>>,
}

impl Repository {
    /// Connects for reading.
    pub fn open(reference: &RegistryRef) -> Result<Self> {
        Ok(Self { client: Client::connect(reference)?, reference: reference.clone(), present: Mutex::default() })
    }

    /// `host/repo`, for messages.
    pub fn name(&self) -> String {
        self.reference.name()
    }

    fn mark_present(&self, digest: &Digest) {
        self.present.lock().unwrap_or_else(|e| e.into_inner()).insert(digest.clone());
    }

    fn known_present(&self, digest: &Digest) -> bool {
        self.present.lock().unwrap_or_else(|e| e.into_inner()).contains(digest)
    }
}
