//! OCI 1.1 referrers: artifacts (SBOMs) whose manifest's `subject` is an image manifest.
//!
//! **The artifact** ([`Artifact::new`]): an image manifest with `artifactType` (e.g.
//! `application/spdx+json`), the empty config (`application/vnd.oci.empty.v1+json`, `{}`), one
//! layer holding the document, `subject` = the image manifest's descriptor, and the creation
//! time (from the epoch) as an annotation. Canonical JSON: the same document gives the same
//! artifact digest.
//!
//! **Where referrers live** ([`Store`]):
//! - `oci:` layouts (image-layout 1.1): the artifact's blobs in `blobs/sha256`, its descriptor
//!   in `index.json` with `artifactType` and the manifest's annotations (no ref name, so tags
//!   are unaffected); listing reads the manifests in `index.json` that have an `artifactType`
//!   and keeps those whose `subject` is the image.
//! - `docker://` registries: the artifact is pushed by digest. Listing asks the referrers API
//!   (`GET /v2/REPO/referrers/DIGEST`); a 404 (registries before distribution 1.1, such as
//!   Debian's docker-registry 2.8) falls back to the referrers tag schema: the tag
//!   `sha256-<hex of the subject digest>` holding an image index of referrer descriptors. After a
//!   push, when the referrers API does not list the new artifact, that index is read, the new
//!   descriptor merged in (one per digest, sorted) and the index put back at the tag.
//!
//! Archives (`oci-archive:`, `docker-archive:`) hold no referrers here.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use canon_json::CanonJsonSerialize;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType};

use std::sync::Arc;

use crate::atomic::atomic_write_bytes;
use crate::blob::Digest;
use crate::image::{self, JsonBlob};
use crate::progress::Reporter;
use crate::transport::ImageRef;
use crate::transport::registry::{RegistryRef, Repository, request};

/// The empty JSON config of artifacts.
pub const EMPTY_JSON: &[u8] = b"{}";
/// Layer annotation: the file name of the document (what `oras pull` names it).
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Referrers larger than this are not fetched (an SBOM of 100,000 packages is ~60 MiB).
const MAX_BLOB: u64 = 256 << 20;

/// The manifest a referrer points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Subject {
    fn descriptor(&self) -> Result<Descriptor> {
        image::descriptor(MediaType::from(self.media_type.as_str()), &self.digest, self.size, None)
    }
}

/// An artifact: its manifest and its blobs (config and layers), in memory.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub manifest: JsonBlob,
    pub parsed: ImageManifest,
    /// Every blob the manifest names, config first.
    pub blobs: Vec<(Descriptor, Vec<u8>)>,
}

impl Artifact {
    /// An artifact of type `artifact_type` holding `document` (named `title`) about `subject`.
    pub fn new(artifact_type: &str, document: &[u8], title: &str, subject: &Subject, epoch: u64) -> Result<Self> {
        let config = image::descriptor(MediaType::EmptyJSON, &Digest::of(EMPTY_JSON), EMPTY_JSON.len() as u64, None)?;
        let layer = image::descriptor(
            MediaType::from(artifact_type),
            &Digest::of(document),
            document.len() as u64,
            Some([(ANNOTATION_TITLE.to_owned(), title.to_owned())].into()),
        )?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .artifact_type(MediaType::from(artifact_type))
            .config(config.clone())
            .layers(vec![layer.clone()])
            .subject(subject.descriptor()?)
            .annotations(std::collections::HashMap::from([(
                image::ANNOTATION_CREATED.to_owned(),
                image::rfc3339(epoch),
            )]))
            .build()?;
        let bytes = manifest.to_canon_json_vec().context("serialising the artifact manifest")?;
        Ok(Self {
            manifest: JsonBlob { digest: Digest::of(&bytes), bytes },
            parsed: manifest,
            blobs: vec![(config, EMPTY_JSON.to_vec()), (layer, document.to_vec())],
        })
    }

    pub fn artifact_type(&self) -> Option<String> {
        self.parsed.artifact_type().as_ref().map(|m| m.to_string())
    }

    /// The descriptor listing it among referrers: `artifactType` and the manifest's annotations.
    pub fn descriptor(&self) -> Result<Descriptor> {
        let mut d = image::descriptor(
            MediaType::ImageManifest,
            &self.manifest.digest,
            self.manifest.bytes.len() as u64,
            self.parsed.annotations().clone(),
        )?;
        d.set_artifact_type(self.parsed.artifact_type().clone());
        Ok(d)
    }

    /// The first layer's bytes (the document of an SBOM artifact).
    pub fn document(&self) -> Option<&[u8]> {
        self.blobs.get(1).map(|(_, b)| b.as_slice())
    }
}

/// A referrer as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Referrer {
    pub digest: Digest,
    pub size: u64,
    #[serde(rename = "artifactType")]
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

impl Referrer {
    fn of(d: &Descriptor) -> Result<Self> {
        Ok(Self {
            digest: d.digest().to_string().parse()?,
            size: d.size(),
            artifact_type: d.artifact_type().as_ref().map(|m| m.to_string()),
            annotations: d.annotations().clone().unwrap_or_default().into_iter().collect(),
        })
    }
}

/// Where an image's referrers are kept.
pub enum Store {
    Layout(PathBuf),
    Registry(Box<Repository>),
}

impl Store {
    /// The store of `r`; `None` for archives. `push`: connect with push access.
    pub fn open(r: &ImageRef, push: bool) -> Result<Option<Self>> {
        Ok(match r {
            ImageRef::OciDir { dir, .. } => Some(Store::Layout(dir.clone())),
            ImageRef::Registry(reg) => {
                // Artifacts go by digest and the fallback tag: the image's own tag or digest is
                // not theirs.
                let repo_ref = RegistryRef { tag: None, digest: None, ..reg.clone() };
                let repo = if push { Repository::open_for_push(&repo_ref) } else { Repository::open(&repo_ref) };
                Some(Store::Registry(Box::new(repo.with_context(|| format!("connecting to {reg}"))?)))
            }
            _ => None,
        })
    }

    pub fn name(&self) -> String {
        match self {
            Store::Layout(d) => format!("oci:{}", d.display()),
            Store::Registry(r) => format!("docker://{}", r.name()),
        }
    }

    /// The subject descriptor of manifest `digest` (its size and media type read from the store).
    pub fn subject(&self, digest: &Digest) -> Result<Subject> {
        let bytes = match self {
            Store::Layout(dir) => {
                let p = dir.join("blobs/sha256").join(digest.hex());
                fs::read(&p).with_context(|| format!("reading manifest {}", p.display()))?
            }
            Store::Registry(repo) => repo.get_manifest(digest.as_str())?.0,
        };
        if Digest::of(&bytes) != *digest {
            bail!("manifest {digest} in {} does not match its digest", self.name());
        }
        #[derive(serde::Deserialize)]
        struct Typed {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        let media_type = serde_json::from_slice::<Typed>(&bytes)
            .ok()
            .and_then(|t| t.media_type)
            .unwrap_or_else(|| MediaType::ImageManifest.to_string());
        Ok(Subject { media_type, digest: digest.clone(), size: bytes.len() as u64 })
    }

    /// The referrers of `subject`, sorted by digest.
    pub fn list(&self, subject: &Digest) -> Result<Vec<Referrer>> {
        let descs = match self {
            Store::Layout(dir) => layout_referrers(dir, subject)?,
            Store::Registry(repo) => match registry_api_referrers(repo, subject)? {
                Some(index) => index,
                None => tag_index(repo, subject)?.map(|i| i.manifests().clone()).unwrap_or_default(),
            },
        };
        let mut out = descs.iter().map(Referrer::of).collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out.dedup_by(|a, b| a.digest == b.digest);
        Ok(out)
    }

    /// Reads referrer `r` whole: its manifest and blobs, each verified.
    pub fn fetch(&self, r: &Referrer) -> Result<Artifact> {
        let what = || format!("reading referrer {} from {}", r.digest, self.name());
        let bytes = self.read_manifest(&r.digest).with_context(what)?;
        let parsed: ImageManifest = serde_json::from_slice(&bytes).with_context(what)?;
        let mut blobs = Vec::new();
        for d in std::iter::once(parsed.config()).chain(parsed.layers()) {
            let digest: Digest = d.digest().to_string().parse()?;
            if d.size() > MAX_BLOB {
                bail!("{}: blob {digest} has {} bytes, more than a referrer may", what(), d.size());
            }
            let data = self.read_blob(&digest, d.size()).with_context(what)?;
            blobs.push((d.clone(), data));
        }
        Ok(Artifact { manifest: JsonBlob { digest: r.digest.clone(), bytes }, parsed, blobs })
    }

    fn read_manifest(&self, digest: &Digest) -> Result<Vec<u8>> {
        let bytes = match self {
            Store::Layout(dir) => {
                let p = dir.join("blobs/sha256").join(digest.hex());
                fs::read(&p).with_context(|| format!("reading {}", p.display()))?
            }
            Store::Registry(repo) => repo.get_manifest(digest.as_str())?.0,
        };
        if Digest::of(&bytes) != *digest {
            bail!("manifest {digest} does not match its digest");
        }
        Ok(bytes)
    }

    fn read_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        match self {
            Store::Layout(dir) => {
                let p = dir.join("blobs/sha256").join(digest.hex());
                fs::File::open(&p)
                    .with_context(|| format!("blob {digest} is missing ({})", p.display()))?
                    .take(MAX_BLOB + 1)
                    .read_to_end(&mut data)?;
            }
            Store::Registry(repo) => {
                repo.open_blob(digest)?.take(MAX_BLOB + 1).read_to_end(&mut data)?;
            }
        }
        if Digest::of(&data) != *digest || data.len() as u64 != size {
            bail!("blob {digest} does not match its descriptor ({} bytes, expected {size})", data.len());
        }
        Ok(data)
    }

    /// Adds `artifact` beside its subject (idempotent).
    pub fn attach(&self, artifact: &Artifact, reporter: &dyn Reporter) -> Result<()> {
        let subject = artifact
            .parsed
            .subject()
            .as_ref()
            .ok_or_else(|| anyhow!("internal error: artifact {} has no subject", artifact.manifest.digest))?;
        let subject: Digest = subject.digest().to_string().parse()?;
        match self {
            Store::Layout(dir) => attach_layout(dir, artifact),
            Store::Registry(repo) => attach_registry(repo, artifact, &subject, reporter)
                .with_context(|| format!("attaching {} to {}@{subject}", artifact.manifest.digest, repo.name())),
        }
    }
}

fn read_index(path: &Path) -> Result<Option<ImageIndex>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn layout_referrers(dir: &Path, subject: &Digest) -> Result<Vec<Descriptor>> {
    let index_path = dir.join("index.json");
    let Some(index) = read_index(&index_path)? else { bail!("{} is not an OCI layout", dir.display()) };
    let mut out = Vec::new();
    for d in index.manifests().iter().filter(|d| d.artifact_type().is_some()) {
        let p = dir.join("blobs/sha256").join(d.digest().digest());
        let bytes = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let m: ImageManifest = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))?;
        if m.subject().as_ref().is_some_and(|s| s.digest().to_string() == subject.as_str()) {
            out.push(d.clone());
        }
    }
    Ok(out)
}

fn attach_layout(dir: &Path, artifact: &Artifact) -> Result<()> {
    if !dir.join("oci-layout").is_file() {
        bail!("cannot attach to {}: it is not an OCI layout", dir.display());
    }
    let lock = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    lock.lock().with_context(|| format!("locking {}", dir.display()))?;
    let blob_dir = dir.join("blobs/sha256");
    let blobs = artifact.blobs.iter().map(|(d, b)| (d.digest().digest().to_owned(), b.as_slice()));
    for (hex, bytes) in blobs.chain([(artifact.manifest.digest.hex().to_owned(), artifact.manifest.bytes.as_slice())]) {
        let dest = blob_dir.join(hex);
        if !dest.exists() {
            atomic_write_bytes(&dest, bytes)?;
        }
    }
    let index_path = dir.join("index.json");
    let mut manifests = read_index(&index_path)?.map(|i| i.manifests().clone()).unwrap_or_default();
    if manifests.iter().any(|m| m.digest().to_string() == artifact.manifest.digest.as_str()) {
        return Ok(());
    }
    manifests.push(artifact.descriptor()?);
    atomic_write_bytes(&index_path, &image::index(manifests)?.bytes)
}

/// The referrers API's answer; `None` when the registry does not have it (404).
fn registry_api_referrers(repo: &Repository, subject: &Digest) -> Result<Option<Vec<Descriptor>>> {
    let req = request::get_referrers(&repo.client.base, &repo.name(), &repo.reference.repo, subject);
    let resp = repo.client.send(&req)?;
    match resp.status().as_u16() {
        200 => {
            let bytes = resp.bytes().map_err(|e| anyhow!("{}: {e}", req.what))?;
            let index: ImageIndex =
                serde_json::from_slice(&bytes).with_context(|| format!("{}: parsing the index", req.what))?;
            Ok(Some(index.manifests().clone()))
        }
        404 => Ok(None),
        _ => Err(repo.client.error_from(&req, resp).into()),
    }
}

/// The referrers tag of `subject`: `sha256-<hex>`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

fn tag_index(repo: &Repository, subject: &Digest) -> Result<Option<ImageIndex>> {
    match repo.get_manifest(&fallback_tag(subject)) {
        Ok((bytes, _)) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing the referrers index {}:{}", repo.name(), fallback_tag(subject)))?,
        )),
        Err(e) if e.status() == Some(404) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Uploads a small in-memory blob unless the repository has it: `POST` a session, one `PUT`.
fn push_small_blob(repo: &Repository, digest: &Digest, bytes: &[u8]) -> Result<()> {
    if repo.has_blob(digest, bytes.len() as u64)? {
        return Ok(());
    }
    let (base, name, r) = (&repo.client.base, repo.name(), &repo.reference.repo);
    let req = request::start_upload(base, &name, r, None);
    let resp = repo.client.send(&req)?;
    let resp = repo.client.expect(&req, resp, &[202])?;
    let location = repo.client.location(&req, &resp)?;
    let req = request::put_blob(&location, r, &name, digest, request::Body::Bytes(Arc::from(bytes)));
    let resp = repo.client.send(&req)?;
    repo.client.expect(&req, resp, &[201])?;
    Ok(())
}

fn attach_registry(repo: &Repository, artifact: &Artifact, subject: &Digest, reporter: &dyn Reporter) -> Result<()> {
    for (d, bytes) in &artifact.blobs {
        let digest: Digest = d.digest().to_string().parse()?;
        push_small_blob(repo, &digest, bytes).with_context(|| format!("pushing blob {digest}"))?;
    }
    repo.put_manifest_bytes(&artifact.manifest, MediaType::ImageManifest.as_ref(), artifact.manifest.digest.as_str())?;
    reporter.note(&format!("{}: artifact {} pushed", repo.name(), artifact.manifest.digest));
    if let Some(listed) = registry_api_referrers(repo, subject)?
        && listed.iter().any(|d| d.digest().to_string() == artifact.manifest.digest.as_str())
    {
        return Ok(());
    }
    // No referrers API (or it does not list ours yet): the referrers tag schema.
    let mut manifests = tag_index(repo, subject)?.map(|i| i.manifests().clone()).unwrap_or_default();
    if manifests.iter().any(|m| m.digest().to_string() == artifact.manifest.digest.as_str()) {
        return Ok(());
    }
    manifests.push(artifact.descriptor()?);
    manifests.sort_by_key(|m| m.digest().to_string());
    let index = image::index(manifests)?;
    repo.put_manifest_bytes(&index, request::MT_OCI_INDEX, &fallback_tag(subject))?;
    tracing::info!("{}: referrers of {subject} listed at tag {}", repo.name(), fallback_tag(subject));
    Ok(())
}

/// `copy`'s part: the referrers of manifest `subject` copied from `src` to `dest` when both keep
/// referrers (`oci:`, `docker://`); returns how many were copied.
pub fn carry_between(src: &ImageRef, dest: &ImageRef, subject: &Digest, reporter: &dyn Reporter) -> Result<usize> {
    let Some(from) = Store::open(src, false)? else { return Ok(0) };
    if from.list(subject)?.is_empty() {
        return Ok(0);
    }
    let Some(to) = Store::open(dest, true)? else { return Ok(0) };
    let n = carry(&from, &to, subject, reporter)
        .with_context(|| format!("copying the referrers of {subject} from {src} to {dest}"))?;
    if n > 0 {
        reporter.note(&format!("copied {n} referrer(s) of {subject} (SBOMs…) to {dest}"));
    }
    Ok(n)
}

/// Copies every referrer of `subject` from `from` to `to` (those `to` already lists are
/// skipped); returns how many were copied.
pub fn carry(from: &Store, to: &Store, subject: &Digest, reporter: &dyn Reporter) -> Result<usize> {
    let have: Vec<Digest> = to.list(subject)?.into_iter().map(|r| r.digest).collect();
    let mut n = 0;
    for r in from.list(subject)? {
        if have.contains(&r.digest) {
            continue;
        }
        let a = from.fetch(&r)?;
        to.attach(&a, reporter)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject { media_type: MediaType::ImageManifest.to_string(), digest: Digest::of(b"m"), size: 1 }
    }

    #[test]
    fn artifact_manifest_shape() {
        let a = Artifact::new(crate::sbom::SPDX_MEDIA_TYPE, b"{\"x\":1}", "sbom.spdx.json", &subject(), 1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&a.manifest.bytes).unwrap();
        assert_eq!(v["artifactType"], "application/spdx+json");
        assert_eq!(v["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
        assert_eq!(v["config"]["digest"], Digest::of(b"{}").as_str());
        assert_eq!(v["config"]["size"], 2);
        assert_eq!(v["layers"][0]["mediaType"], "application/spdx+json");
        assert_eq!(v["subject"]["digest"], Digest::of(b"m").as_str());
        let d = a.descriptor().unwrap();
        assert_eq!(d.artifact_type().as_ref().map(|m| m.to_string()).as_deref(), Some("application/spdx+json"));
        assert_eq!(a.document(), Some(&b"{\"x\":1}"[..]));
        assert_eq!(fallback_tag(&Digest::of(b"m")), format!("sha256-{}", Digest::of(b"m").hex()));
    }

    #[test]
    fn layout_attach_list_fetch() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(dir.join("index.json"), image::index(vec![]).unwrap().bytes).unwrap();
        let store = Store::Layout(dir.to_owned());
        let a = Artifact::new(crate::sbom::CYCLONEDX_MEDIA_TYPE, b"{}x", "sbom.cdx.json", &subject(), 1).unwrap();
        let reporter = crate::progress::Silent;
        store.attach(&a, &reporter).unwrap();
        store.attach(&a, &reporter).unwrap();
        let listed = store.list(&Digest::of(b"m")).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].artifact_type.as_deref(), Some(crate::sbom::CYCLONEDX_MEDIA_TYPE));
        assert!(store.list(&Digest::of(b"other")).unwrap().is_empty());
        let back = store.fetch(&listed[0]).unwrap();
        assert_eq!(back.document(), Some(&b"{}x"[..]));
        assert_eq!(back.manifest, a.manifest);
    }
}
