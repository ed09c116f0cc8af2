//! Requests as plain data, built by pure functions; [`super::client::Client`] sends them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use reqwest::Method;
use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, HeaderName, RANGE};

use crate::blob::Digest;

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCTET_STREAM: &str = "application/octet-stream";

/// One HTTP request to a registry, resendable: a file body is reopened on every attempt.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Body,
    /// Token scopes it needs (`repository:acme/app:pull,push`).
    pub scopes: Vec<String>,
    /// What it does, for errors: `pushing blob sha256:… to host/repo`.
    pub what: String,
    /// Bound on sending it and getting the response head (default: the client's).
    pub timeout: Option<Duration>,
}

#[derive(Clone)]
pub enum Body {
    Empty,
    Bytes(Arc<[u8]>),
    /// `len` bytes of `path` from `offset`, streamed.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
        progress: Option<Progress>,
    },
}

/// Lengths only: a body may hold a refresh token.
impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Body::File { path, offset, len, .. } => write!(f, "File({}, {offset}+{len})", path.display()),
        }
    }
}

impl Body {
    pub fn size(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// Counters a streamed body updates as it is read.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Position in the blob of the last byte read (absolute: offset included).
    pub position: Arc<AtomicU64>,
    /// Bytes sent, every attempt counted.
    pub sent: Arc<AtomicU64>,
}

/// Scope to pull from `repo`.
pub fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// Scope to push to `repo`.
pub fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

fn url(base: &Url, path: &str) -> Url {
    let mut u = base.clone();
    u.set_path(path);
    u.set_query(None);
    u
}

fn req(method: Method, url: Url, scopes: Vec<String>, what: String) -> Req {
    Req { method, url, headers: Vec::new(), body: Body::Empty, scopes, what, timeout: None }
}

/// `GET /v2/`: the version check that tells the scheme works and which auth the registry wants.
pub fn ping(base: &Url, host: &str) -> Req {
    let mut r = req(Method::GET, url(base, "/v2/"), Vec::new(), format!("checking the registry at {host}"));
    r.timeout = Some(Duration::from_secs(30));
    r
}

pub fn head_blob(base: &Url, name: &str, repo: &str, digest: &Digest, scope: String) -> Req {
    req(
        Method::HEAD,
        url(base, &format!("/v2/{repo}/blobs/{digest}")),
        vec![scope],
        format!("checking for blob {digest} in {name}"),
    )
}

/// `POST /v2/REPO/blobs/uploads/`, with `?mount=DIGEST&from=REPO` to try a cross-repo mount.
pub fn start_upload(base: &Url, name: &str, repo: &str, mount: Option<(&Digest, &str)>) -> Req {
    let mut u = url(base, &format!("/v2/{repo}/blobs/uploads/"));
    let mut scopes = vec![push_scope(repo)];
    let what = match mount {
        Some((digest, from)) => {
            u.query_pairs_mut().append_pair("mount", digest.as_str()).append_pair("from", from);
            scopes.push(pull_scope(from));
            format!("mounting blob {digest} from {from} into {name}")
        }
        None => format!("starting an upload to {name}"),
    };
    let mut r = req(Method::POST, u, scopes, what);
    r.body = Body::Bytes(Arc::from(&[][..]));
    r
}

/// `PUT LOCATION&digest=D`: completes an upload, with the whole blob (monolithic) or nothing
/// (after chunks).
pub fn put_blob(location: &Url, repo: &str, name: &str, digest: &Digest, body: Body) -> Req {
    let mut u = location.clone();
    u.query_pairs_mut().append_pair("digest", digest.as_str());
    let mut r = req(Method::PUT, u, vec![push_scope(repo)], format!("pushing blob {digest} to {name}"));
    r.headers.push((CONTENT_TYPE, OCTET_STREAM.into()));
    r.timeout = Some(upload_timeout(body.size()));
    r.body = match body {
        Body::Empty => Body::Bytes(Arc::from(&[][..])),
        b => b,
    };
    r
}

/// `PATCH LOCATION` with bytes `offset..offset+len` of the blob.
pub fn patch_chunk(location: &Url, repo: &str, name: &str, digest: &Digest, body: Body) -> Req {
    let (offset, len) = match &body {
        Body::File { offset, len, .. } => (*offset, *len),
        other => (0, other.size()),
    };
    let mut r = req(
        Method::PATCH,
        location.clone(),
        vec![push_scope(repo)],
        format!("pushing blob {digest} to {name} (bytes {offset}-{})", offset + len.max(1) - 1),
    );
    r.headers.push((CONTENT_TYPE, OCTET_STREAM.into()));
    r.headers.push((CONTENT_RANGE, format!("{offset}-{}", offset + len.max(1) - 1)));
    r.timeout = Some(upload_timeout(len));
    r.body = body;
    r
}

/// `GET LOCATION`: how much of an upload the server holds (`Range: 0-END`).
pub fn upload_status(location: &Url, repo: &str, name: &str, digest: &Digest) -> Req {
    req(
        Method::GET,
        location.clone(),
        vec![push_scope(repo)],
        format!("resuming the upload of blob {digest} to {name}"),
    )
}

/// `PUT /v2/REPO/manifests/REF` with the exact bytes that were hashed.
pub fn put_manifest(base: &Url, name: &str, repo: &str, reference: &str, bytes: Arc<[u8]>, media_type: &str) -> Req {
    let mut r = req(
        Method::PUT,
        url(base, &format!("/v2/{repo}/manifests/{reference}")),
        vec![push_scope(repo)],
        format!("pushing the manifest to {name}:{reference}"),
    );
    r.headers.push((CONTENT_TYPE, media_type.to_owned()));
    r.body = Body::Bytes(bytes);
    r
}

pub fn get_manifest(base: &Url, name: &str, repo: &str, reference: &str) -> Req {
    let mut r = req(
        Method::GET,
        url(base, &format!("/v2/{repo}/manifests/{reference}")),
        vec![pull_scope(repo)],
        format!("reading the manifest {name}:{reference}"),
    );
    r.headers.push((ACCEPT, [MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST].join(", ")));
    r
}

/// `GET /v2/REPO/referrers/DIGEST` (OCI distribution 1.1): an image index of the manifests whose
/// `subject` is `digest`. Registries without the API answer 404.
pub fn get_referrers(base: &Url, name: &str, repo: &str, digest: &Digest) -> Req {
    let mut r = req(
        Method::GET,
        url(base, &format!("/v2/{repo}/referrers/{digest}")),
        vec![pull_scope(repo)],
        format!("listing the referrers of {name}@{digest}"),
    );
    r.headers.push((ACCEPT, MT_OCI_INDEX.to_owned()));
    r
}

/// `GET /v2/REPO/blobs/DIGEST`, from byte `from` on (`Range: bytes=FROM-`) when resuming.
pub fn get_blob(base: &Url, name: &str, repo: &str, digest: &Digest, from: u64) -> Req {
    let mut r = req(
        Method::GET,
        url(base, &format!("/v2/{repo}/blobs/{digest}")),
        vec![pull_scope(repo)],
        format!("reading blob {digest} from {name}"),
    );
    if from > 0 {
        r.headers.push((RANGE, format!("bytes={from}-")));
        r.what = format!("reading blob {digest} from {name} (from byte {from})");
    }
    r
}

/// `GET` of `len` bytes of a blob from `offset` (a `Range` request: a zstd:chunked TOC).
pub fn get_blob_range(base: &Url, name: &str, repo: &str, digest: &Digest, offset: u64, len: u64) -> Req {
    let mut r = get_blob(base, name, repo, digest, 0);
    r.what = format!("reading bytes {offset}+{len} of blob {digest} from {name}");
    r.headers.push((RANGE, format!("bytes={offset}-{}", offset + len.max(1) - 1)));
    r
}

/// `GET REALM?service=S&scope=…` (token auth; basic credentials go in a header).
pub fn token(realm: &Url, service: Option<&str>, scopes: &[String], host: &str) -> Req {
    let mut u = realm.clone();
    {
        let mut q = u.query_pairs_mut();
        if let Some(s) = service {
            q.append_pair("service", s);
        }
        for s in scopes {
            q.append_pair("scope", s);
        }
    }
    let mut r = req(Method::GET, u, Vec::new(), format!("getting a token for {host} from {}", realm_name(realm)));
    r.timeout = Some(Duration::from_secs(60));
    r
}

/// `POST REALM` with an OAuth2 refresh token (docker's `identitytoken`).
pub fn oauth_token(realm: &Url, service: Option<&str>, scopes: &[String], host: &str, refresh_token: &str) -> Req {
    let mut form = realm.clone();
    form.set_query(None);
    {
        let mut q = form.query_pairs_mut();
        q.append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh_token)
            .append_pair("client_id", "nixoci")
            .append_pair("scope", &scopes.join(" "));
        if let Some(s) = service {
            q.append_pair("service", s);
        }
    }
    let body = form.query().unwrap_or("").as_bytes().to_vec();
    let mut r =
        req(Method::POST, realm.clone(), Vec::new(), format!("getting a token for {host} from {}", realm_name(realm)));
    r.headers.push((CONTENT_TYPE, "application/x-www-form-urlencoded".to_owned()));
    r.body = Body::Bytes(Arc::from(body));
    r.timeout = Some(Duration::from_secs(60));
    r
}

fn realm_name(realm: &Url) -> String {
    format!("{}{}", realm.host_str().unwrap_or("?"), realm.port().map(|p| format!(":{p}")).unwrap_or_default())
}

/// Time to send `len` bytes and get an answer: 2 minutes plus 1 s per 256 KiB (stalls fail,
/// slow links at ≥ 256 KiB/s do not).
fn upload_timeout(len: u64) -> Duration {
    Duration::from_secs(120 + len / (256 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Digest {
        format!("sha256:{}", "ab".repeat(32)).parse().unwrap()
    }

    #[test]
    fn builds_distribution_spec_requests() {
        let base = Url::parse("http://127.0.0.1:5000/").unwrap();
        let r = start_upload(&base, "h/app", "app", Some((&d(), "base")));
        assert_eq!(r.method, Method::POST);
        assert_eq!(
            r.url.as_str(),
            format!("http://127.0.0.1:5000/v2/app/blobs/uploads/?mount=sha256%3A{}&from=base", "ab".repeat(32))
        );
        assert_eq!(r.scopes, vec!["repository:app:pull,push", "repository:base:pull"]);
        let loc = Url::parse("http://127.0.0.1:5000/v2/app/blobs/uploads/u1?_state=x").unwrap();
        let r = put_blob(&loc, "app", "h/app", &d(), Body::Empty);
        assert_eq!(r.url.query(), Some(format!("_state=x&digest=sha256%3A{}", "ab".repeat(32)).as_str()));
        let body = Body::File { path: "/x".into(), offset: 16, len: 16, progress: None };
        let r = patch_chunk(&loc, "app", "h/app", &d(), body);
        assert!(r.headers.iter().any(|(k, v)| *k == CONTENT_RANGE && v == "16-31"));
        let r = get_blob_range(&base, "h/app", "app", &d(), 100, 50);
        assert_eq!(
            (r.method.clone(), r.url.path()),
            (Method::GET, format!("/v2/app/blobs/sha256:{}", "ab".repeat(32)).as_str())
        );
        assert!(r.headers.iter().any(|(k, v)| *k == reqwest::header::RANGE && v == "bytes=100-149"));
        let r = put_manifest(&base, "h/app", "app", "1.0", Arc::from(&b"{}"[..]), MT_OCI_MANIFEST);
        assert_eq!(r.url.path(), "/v2/app/manifests/1.0");
        assert!(r.headers.iter().any(|(k, v)| *k == CONTENT_TYPE && v == MT_OCI_MANIFEST));
        let realm = Url::parse("https://auth.example/token").unwrap();
        let r = token(&realm, Some("reg"), &[push_scope("app"), pull_scope("base")], "h");
        assert_eq!(
            r.url.query(),
            Some("service=reg&scope=repository%3Aapp%3Apull%2Cpush&scope=repository%3Abase%3Apull")
        );
    }
}
