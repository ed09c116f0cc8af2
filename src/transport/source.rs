//! Reading images: `oci:`, `oci-archive:`, `docker-archive:` and `docker://` as sources for
//! inspect, diff, check, smoke, copy and `--previous`.
//!
//! Nothing is extracted to disk. Archives are indexed by reading tar headers only (member name →
//! offset and size), and blobs are then read in place. Every manifest and config read is checked
//! against its digest; layer reads go through [`Verified`], which fails at the end of a blob whose
//! digest or size is not the one the manifest promised.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::ImageRef;
use super::oci_dir::BlobSource;
use super::oci_dir::REF_NAME;
use super::registry::{self, Repository};
use crate::atomic::{AtomicFile, FILE_MODE, write_then_commit};
use crate::blob::{Digest, HashReader, HashWriter};
use crate::platform::Platform;

/// One layer as the manifest describes it, with its diff_id from the config.
#[derive(Debug, Clone)]
pub struct SourceLayer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub diff_id: Option<Digest>,
    pub annotations: BTreeMap<String, String>,
}

/// An image opened for reading.
pub struct SourceImage {
    /// How the user named it.
    pub reference: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub layers: Vec<SourceLayer>,
    blobs: Blobs,
}

/// Where blob bytes live.
#[derive(Clone)]
enum Blobs {
    /// `DIR/blobs/sha256/<hex>`.
    Dir(PathBuf),
    /// Members of a tar file: name → (offset, size).
    Tar { file: PathBuf, members: BTreeMap<String, (u64, u64)>, layout: TarLayout },
    /// A registry repository: blobs stream from `GET /v2/REPO/blobs/DIGEST`.
    Registry(std::sync::Arc<Repository>),
}

#[derive(Clone)]
enum TarLayout {
    /// An OCI layout inside the tar.
    Oci,
    /// docker save: layer digests map to member names.
    Docker(BTreeMap<Digest, String>),
}

/// Manifest-like media types (fetched from `/manifests/`, not `/blobs/`).
fn is_manifest_type(mt: &str) -> bool {
    [
        registry::request::MT_OCI_MANIFEST,
        registry::request::MT_OCI_INDEX,
        registry::request::MT_DOCKER_MANIFEST,
        registry::request::MT_DOCKER_LIST,
    ]
    .contains(&mt)
}

impl SourceImage {
    /// Opens an image; from an image index, its linux/amd64 manifest.
    pub fn open(r: &ImageRef) -> Result<Self> {
        Self::open_for(r, "amd64")
    }

    /// Opens an image; from an image index, its manifest for linux/`architecture`.
    pub fn open_for(r: &ImageRef, architecture: &str) -> Result<Self> {
        Self::open_platform(r, &Platform { os: "linux".into(), architecture: architecture.into(), variant: None })
    }

    /// Opens an image; from an image index, its manifest for `platform`.
    pub fn open_platform(r: &ImageRef, architecture: &Platform) -> Result<Self> {
        let reference = r.to_string();
        let img = (|| match r {
            ImageRef::OciDir { dir, tag } => {
                open_layout(Blobs::Dir(dir.clone()), tag.as_deref(), reference.clone(), architecture)
            }
            ImageRef::OciArchive { file, reference: want } => {
                let members = index_tar(file)?;
                open_layout(
                    Blobs::Tar { file: file.clone(), members, layout: TarLayout::Oci },
                    want.as_deref(),
                    reference.clone(),
                    architecture,
                )
            }
            ImageRef::DockerArchive { file, reference: want } => {
                let members = index_tar(file)?;
                if members.contains_key("index.json") && members.contains_key("oci-layout") {
                    // docker ≥ 25 writes an OCI layout beside manifest.json: read that.
                    open_layout(
                        Blobs::Tar { file: file.clone(), members, layout: TarLayout::Oci },
                        want.as_deref(),
                        reference.clone(),
                        architecture,
                    )
                } else {
                    open_docker_archive(file, members, want.as_deref(), reference.clone())
                }
            }
            ImageRef::Registry(r) => open_registry(r, reference.clone(), architecture),
            ImageRef::Stdout => bail!(
                "`-` is a destination only; to read an image use oci:, oci-archive:, docker-archive: or docker://"
            ),
        })();
        img.with_context(|| format!("reading image {reference}"))
    }

    /// The raw (compressed) bytes of a blob, verified against `digest` and `size` as they are read.
    pub fn open_blob(&self, digest: &Digest, size: u64) -> Result<Verified<Box<dyn Read + '_>>> {
        let raw = self.blobs.open(digest)?;
        Ok(Verified::new(raw, digest.clone(), size))
    }

    /// `len` bytes of a blob from `offset`: a range request to a registry, a seek in a file;
    /// `None` where the transport cannot (the caller then streams the blob).
    pub fn read_blob_range(&self, digest: &Digest, offset: u64, len: u64) -> Option<Result<Vec<u8>>> {
        match &self.blobs {
            Blobs::Registry(repo) => Some(repo.read_blob_range(digest, offset, len).map_err(Into::into)),
            Blobs::Dir(dir) => Some((|| {
                let path = dir.join("blobs/sha256").join(digest.hex());
                let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                let mut buf = vec![0u8; len as usize];
                f.seek(SeekFrom::Start(offset))
                    .and_then(|_| f.read_exact(&mut buf))
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(buf)
            })()),
            Blobs::Tar { .. } => None,
        }
    }

    /// The file holding a blob, when the image is an `oci:` layout (so it can be used in place).
    pub fn blob_file(&self, digest: &Digest) -> Option<PathBuf> {
        match &self.blobs {
            Blobs::Dir(dir) => Some(dir.join("blobs/sha256").join(digest.hex())),
            _ => None,
        }
    }

    /// Layer `i` as an uncompressed tar stream (verified against its blob digest).
    pub fn open_layer_tar(&self, i: usize) -> Result<Box<dyn Read + '_>> {
        let l = self.layers.get(i).ok_or_else(|| anyhow!("{}: no layer {i}", self.reference))?;
        let raw = self.open_blob(&l.digest, l.size)?;
        decompress(raw, &l.media_type)
    }
}

/// The layer blobs of a source image as files, for writers that want paths ([`BlobSource`]):
/// a blob of an `oci:` layout is verified and used in place; others are fetched, verified as they
/// stream, into `dir` when a destination first asks for them (a blob the destination already has
/// is never read).
pub struct Staged<'a> {
    source: &'a SourceImage,
    dir: PathBuf,
    read: Mutex<u64>,
    sizes: BTreeMap<Digest, u64>,
}

impl<'a> Staged<'a> {
    pub fn new(source: &'a SourceImage, dir: &Path) -> Self {
        let sizes = source.layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
        Self { source, dir: dir.to_owned(), read: Mutex::new(0), sizes }
    }

    /// Whether `digest` is one of the source's layers.
    pub fn has(&self, digest: &Digest) -> bool {
        self.sizes.contains_key(digest)
    }

    /// Blob bytes read from the source so far.
    pub fn bytes_read(&self) -> u64 {
        *self.read.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, n: u64) {
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) += n;
    }
}

impl BlobSource for Staged<'_> {
    fn blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        let size =
            *self.sizes.get(digest).ok_or_else(|| anyhow!("internal error: {digest} is not a layer of the image"))?;
        let staged = self.dir.join(digest.hex());
        if staged.is_file() {
            return Ok(staged);
        }
        if let Some(p) = self.source.blob_file(digest) {
            // An oci: layout: verify the file in place and hand it over.
            let got = crate::cache::hash_file(&p).with_context(|| format!("reading blob {}", p.display()))?;
            let len = std::fs::metadata(&p)?.len();
            if got != *digest || len != size {
                bail!(
                    "blob {} does not match its descriptor ({got}, {len} bytes; expected {digest}, {size} bytes)",
                    p.display()
                );
            }
            self.count(len);
            return Ok(p);
        }
        let n = write_then_commit(AtomicFile::new_in(&self.dir)?, &staged, FILE_MODE, |w| {
            io::copy(&mut self.source.open_blob(digest, size)?, w)
                .with_context(|| format!("reading blob {digest} from {}", self.source.reference))
        })?;
        self.count(n);
        Ok(staged)
    }
}

/// Wraps a reader by its media type's compression (gzip, zstd, or none; sniffed when unclear).
pub fn decompress<'a, R: Read + 'a>(raw: R, media_type: &str) -> Result<Box<dyn Read + 'a>> {
    let mut raw = io::BufReader::with_capacity(1 << 20, raw);
    let kind = if media_type.ends_with("gzip") {
        "gzip"
    } else if media_type.ends_with("zstd") {
        "zstd"
    } else {
        let head = io::BufRead::fill_buf(&mut raw)?;
        if head.starts_with(&[0x1f, 0x8b]) {
            "gzip"
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            "zstd"
        } else {
            "none"
        }
    };
    Ok(match kind {
        "gzip" => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        "zstd" => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        _ => Box::new(raw),
    })
}

/// A reader that hashes what it reads ([`HashReader`]) and fails at the end when digest or size
/// differ from the descriptor's.
pub struct Verified<R> {
    inner: HashReader<R>,
    digest: Digest,
    size: u64,
}

impl<R: Read> Verified<R> {
    pub fn new(inner: R, digest: Digest, size: u64) -> Self {
        Self { inner: HashReader::new(inner), digest, size }
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = self.inner.count();
        if read > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} is larger than its descriptor's {} bytes", self.digest, self.size),
            ));
        }
        if n == 0 && !buf.is_empty() {
            let got = self.inner.digest();
            if read != self.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("blob {} is truncated: {read} of {} bytes", self.digest, self.size),
                ));
            }
            if got != self.digest {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob {} does not match its digest (its content hashes to {got})", self.digest),
                ));
            }
        }
        Ok(n)
    }
}

impl Blobs {
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + '_>> {
        match self {
            Blobs::Dir(dir) => {
                let p = dir.join("blobs/sha256").join(digest.hex());
                let f = File::open(&p).with_context(|| format!("blob {digest} is missing ({})", p.display()))?;
                Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
            }
            Blobs::Tar { file, members, layout } => {
                let name = match layout {
                    TarLayout::Oci => format!("blobs/sha256/{}", digest.hex()),
                    TarLayout::Docker(map) => {
                        map.get(digest).cloned().unwrap_or_else(|| format!("{}.json", digest.hex()))
                    }
                };
                let &(offset, size) = members
                    .get(&name)
                    .ok_or_else(|| anyhow!("blob {digest} is missing from {} (no member {name})", file.display()))?;
                let mut f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(BufReader::with_capacity(1 << 20, f.take(size))))
            }
            Blobs::Registry(repo) => Ok(Box::new(BufReader::with_capacity(1 << 20, repo.open_blob(digest)?))),
        }
    }

    fn read_named(&self, name: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        match self {
            Blobs::Dir(dir) => {
                let p = dir.join(name);
                File::open(&p).with_context(|| format!("opening {}", p.display()))?.read_to_end(&mut buf)?;
            }
            Blobs::Tar { file, members, .. } => {
                let &(offset, size) = members.get(name).ok_or_else(|| anyhow!("{} has no {name}", file.display()))?;
                let mut f = File::open(file)?;
                f.seek(SeekFrom::Start(offset))?;
                f.take(size).read_to_end(&mut buf)?;
                if buf.len() as u64 != size {
                    bail!("{} is truncated inside {name}", file.display());
                }
            }
            Blobs::Registry(repo) => bail!("internal error: {name} read from {}", repo.name()),
        }
        Ok(buf)
    }

    /// Reads a small JSON blob whole and checks its digest.
    fn read_json(&self, d: &Descriptor) -> Result<(Vec<u8>, Digest)> {
        let digest: Digest = d.digest().to_string().parse()?;
        if let Blobs::Registry(repo) = self
            && is_manifest_type(d.media_type().as_ref())
        {
            let (bytes, _) = repo.get_manifest(digest.as_str())?;
            let got = Digest::of(&bytes);
            if got != digest || bytes.len() as u64 != d.size() {
                bail!(
                    "manifest {digest} from {} does not match its descriptor (got {got}, {} bytes)",
                    repo.name(),
                    bytes.len()
                );
            }
            return Ok((bytes, digest));
        }
        let mut bytes = Vec::new();
        Verified::new(self.open(&digest)?, digest.clone(), d.size()).read_to_end(&mut bytes)?;
        Ok((bytes, digest))
    }
}

/// Reads tar headers only, recording where each regular member's data starts.
fn index_tar(file: &Path) -> Result<BTreeMap<String, (u64, u64)>> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let len = f.metadata()?.len();
    let mut ar = tar::Archive::new(BufReader::new(f));
    let mut members = BTreeMap::new();
    // The tar crate reports a short file as "unexpected EOF during skip" or "failed to read entire
    // block" (ErrorKind::Other).
    let what = |e: io::Error| {
        let msg = e.to_string();
        if e.kind() == io::ErrorKind::UnexpectedEof
            || msg.contains("unexpected EOF")
            || msg.contains("failed to read entire block")
        {
            anyhow!("{} is truncated: it ends inside a tar member ({msg})", file.display())
        } else {
            anyhow::Error::new(e).context(format!("reading {} as a tar", file.display()))
        }
    };
    for entry in ar.entries().map_err(what)? {
        let entry = entry.map_err(what)?;
        if entry.header().entry_type().is_file() {
            let name = entry.path()?.to_string_lossy().trim_start_matches("./").to_owned();
            let (offset, size) = (entry.raw_file_position(), entry.size());
            if offset + size > len {
                bail!(
                    "{} is truncated: member {name} needs {} bytes past the end",
                    file.display(),
                    offset + size - len
                );
            }
            members.insert(name, (offset, size));
        }
    }
    Ok(members)
}

fn open_layout(blobs: Blobs, want: Option<&str>, reference: String, architecture: &Platform) -> Result<SourceImage> {
    let chosen = choose_in_layout(&blobs, want)?;
    let desc = resolve_platform(&blobs, chosen, architecture)?;
    load(blobs, &desc, reference)
}

/// The entry of a layout's `index.json` named `want` (or its only entry).
fn choose_in_layout(blobs: &Blobs, want: Option<&str>) -> Result<Descriptor> {
    let index_bytes = blobs.read_named("index.json")?;
    let index: ImageIndex = serde_json::from_slice(&index_bytes).context("parsing index.json")?;
    let refname = |m: &Descriptor| m.annotations().as_ref().and_then(|a| a.get(REF_NAME)).cloned();
    let chosen = match want {
        Some(w) => index.manifests().iter().find(|m| refname(m).as_deref() == Some(w)).ok_or_else(|| {
            let names: Vec<String> = index.manifests().iter().filter_map(refname).collect();
            anyhow!(
                "no image tagged {w:?} (tags here: {})",
                if names.is_empty() { "none".into() } else { names.join(", ") }
            )
        })?,
        // Referrers (artifacts with an `artifactType`, e.g. SBOMs) are not images to choose.
        None => match index.manifests().iter().filter(|m| m.artifact_type().is_none()).collect::<Vec<_>>().as_slice() {
            [one] => *one,
            [] => bail!("index.json lists no image"),
            many => {
                let names: Vec<String> = many.iter().filter_map(|m| refname(m)).collect();
                bail!("index.json lists {} images: name one with :TAG ({})", many.len(), names.join(", "))
            }
        },
    };
    Ok(chosen.clone())
}

/// Follows a nested image index to its manifest for `architecture` (a platform).
fn resolve_platform(blobs: &Blobs, mut desc: Descriptor, architecture: &Platform) -> Result<Descriptor> {
    for _ in 0..4 {
        if *desc.media_type() != MediaType::ImageIndex
            && desc.media_type().to_string() != "application/vnd.docker.distribution.manifest.list.v2+json"
        {
            return Ok(desc);
        }
        let (bytes, _) = blobs.read_json(&desc)?;
        let index: ImageIndex = serde_json::from_slice(&bytes).context("parsing a nested image index")?;
        desc = index
            .manifests()
            .iter()
            .find(|m| Platform::of_descriptor(m).is_none_or(|p| architecture.matches(&p)))
            .cloned()
            .ok_or_else(|| {
                let have: Vec<String> =
                    index.manifests().iter().filter_map(Platform::of_descriptor).map(|p| p.to_string()).collect();
                anyhow!("the image index has no {architecture} manifest (it has: {})", have.join(", "))
            })?;
    }
    bail!("image indexes nest too deep")
}

/// `docker://…`: the manifest at the tag (default `latest`) or digest, following an index to
/// its linux/`architecture` manifest.
fn open_registry(r: &registry::RegistryRef, reference: String, architecture: &Platform) -> Result<SourceImage> {
    let repo = Repository::open(r)?;
    let at = r.manifest_reference().unwrap_or_else(|| "latest".into());
    let (bytes, content_type) = repo.get_manifest(&at)?;
    let digest = Digest::of(&bytes);
    if let Some(want) = &r.digest
        && *want != digest
    {
        bail!("the registry sent a manifest whose digest is {digest}, not {want}");
    }
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let media_type = serde_json::from_slice::<Typed>(&bytes).ok().and_then(|t| t.media_type).unwrap_or(content_type);
    let blobs = Blobs::Registry(std::sync::Arc::new(repo));
    if media_type == registry::request::MT_OCI_INDEX || media_type == registry::request::MT_DOCKER_LIST {
        let desc = crate::image::descriptor(MediaType::from(media_type.as_str()), &digest, bytes.len() as u64, None)?;
        let desc = resolve_platform(&blobs, desc, architecture)?;
        return load(blobs, &desc, reference);
    }
    load_manifest(blobs, bytes, digest, reference)
}

fn load(blobs: Blobs, desc: &Descriptor, reference: String) -> Result<SourceImage> {
    let (manifest_bytes, manifest_digest) = blobs.read_json(desc).context("reading the manifest")?;
    load_manifest(blobs, manifest_bytes, manifest_digest, reference)
}

fn load_manifest(
    blobs: Blobs,
    manifest_bytes: Vec<u8>,
    manifest_digest: Digest,
    reference: String,
) -> Result<SourceImage> {
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).context("parsing the manifest")?;
    let (config_bytes, config_digest) = blobs.read_json(manifest.config()).context("reading the config")?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes).context("parsing the config")?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        bail!("the manifest lists {} layers but the config has {} diff_ids", manifest.layers().len(), diff_ids.len());
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff)| {
            Ok(SourceLayer {
                digest: l.digest().to_string().parse()?,
                size: l.size(),
                media_type: l.media_type().to_string(),
                diff_id: Some(diff.parse()?),
                annotations: l.annotations().clone().unwrap_or_default().into_iter().collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SourceImage {
        reference,
        manifest_bytes,
        manifest_digest,
        manifest,
        config_bytes,
        config_digest,
        config,
        layers,
        blobs,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// docker save's format: `manifest.json` names the config and layer members. It has no OCI
/// manifest, so one is made (uncompressed layers: digest = diff_id) to give the image a digest.
fn open_docker_archive(
    file: &Path,
    members: BTreeMap<String, (u64, u64)>,
    want: Option<&str>,
    reference: String,
) -> Result<SourceImage> {
    let tmp = Blobs::Tar { file: file.to_owned(), members: members.clone(), layout: TarLayout::Oci };
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&tmp.read_named("manifest.json")?).context("parsing manifest.json")?;
    let entry = match want {
        Some(w) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == w || t.strip_prefix("localhost/") == Some(w)))
            .ok_or_else(|| anyhow!("no image named {w:?} in manifest.json"))?,
        None => match entries.as_slice() {
            [one] => one,
            _ => bail!("manifest.json lists {} images: name one with :REF", entries.len()),
        },
    };
    let config_bytes = tmp.read_named(&entry.config)?;
    let config_digest = Digest::of(&config_bytes);
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).with_context(|| format!("parsing {}", entry.config))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        bail!("manifest.json lists {} layers but the config has {} diff_ids", entry.layers.len(), diff_ids.len());
    }
    let mut map = BTreeMap::new();
    let mut layers = Vec::new();
    for (name, diff) in entry.layers.iter().zip(diff_ids) {
        let &(_, size) = members
            .get(name.trim_start_matches("./"))
            .ok_or_else(|| anyhow!("{} has no member {name}", file.display()))?;
        let diff: Digest = diff.parse()?;
        // Compressed members (rare in docker save output) need hashing to get their digest.
        let media_type = {
            let mut r = tmp.open_prefix(name, 4)?;
            let mut magic = [0u8; 4];
            let n = r.read(&mut magic)?;
            if magic[..n].starts_with(&[0x1f, 0x8b]) {
                MediaType::ImageLayerGzip
            } else if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
                MediaType::ImageLayerZstd
            } else {
                MediaType::ImageLayer
            }
        };
        let digest = if media_type != MediaType::ImageLayer {
            let mut h = HashWriter::new(io::sink());
            io::copy(&mut tmp.open_prefix(name, size)?, &mut h)?;
            h.finish().1
        } else {
            diff.clone()
        };
        map.insert(digest.clone(), name.trim_start_matches("./").to_owned());
        layers.push(SourceLayer {
            digest,
            size,
            media_type: media_type.to_string(),
            diff_id: Some(diff),
            annotations: BTreeMap::new(),
        });
    }
    map.insert(config_digest.clone(), entry.config.clone());
    let descs = layers
        .iter()
        .map(|l| crate::image::descriptor(MediaType::from(l.media_type.as_str()), &l.digest, l.size, None))
        .collect::<Result<Vec<_>>>()?;
    let manifest = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(crate::image::descriptor(MediaType::ImageConfig, &config_digest, config_bytes.len() as u64, None)?)
        .layers(descs)
        .build()?;
    let manifest_bytes = canon_json::CanonJsonSerialize::to_canon_json_vec(&manifest)?;
    let manifest_digest = Digest::of(&manifest_bytes);
    let blobs = Blobs::Tar { file: file.to_owned(), members, layout: TarLayout::Docker(map) };
    Ok(SourceImage {
        reference,
        manifest_bytes,
        manifest_digest,
        manifest,
        config_bytes,
        config_digest,
        config,
        layers,
        blobs,
    })
}

impl Blobs {
    /// The first `len` bytes of a named tar member.
    fn open_prefix(&self, name: &str, len: u64) -> Result<Box<dyn Read + '_>> {
        match self {
            Blobs::Tar { file, members, .. } => {
                let &(offset, size) = members
                    .get(name.trim_start_matches("./"))
                    .ok_or_else(|| anyhow!("{} has no member {name}", file.display()))?;
                let mut f = File::open(file)?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(BufReader::new(f.take(size.min(len)))))
            }
            Blobs::Dir(_) | Blobs::Registry(_) => {
                bail!("internal error: open_prefix outside a tar")
            }
        }
    }
}

/// An image index opened for reading: its exact bytes and the images it lists, each opened on
/// demand from the same place.
pub struct SourceIndex {
    /// How the user named it.
    pub reference: String,
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
    pub index: ImageIndex,
    blobs: Blobs,
}

impl SourceIndex {
    /// Opens `r` as an image index: `None` when it names a single image (or a docker-archive).
    pub fn open(r: &ImageRef) -> Result<Option<Self>> {
        let reference = r.to_string();
        let found = (|| -> Result<Option<Self>> {
            let (blobs, desc) = match r {
                ImageRef::OciDir { dir, tag } => {
                    let blobs = Blobs::Dir(dir.clone());
                    let desc = choose_in_layout(&blobs, tag.as_deref())?;
                    (blobs, desc)
                }
                ImageRef::OciArchive { file, reference: want } => {
                    let blobs = Blobs::Tar { file: file.clone(), members: index_tar(file)?, layout: TarLayout::Oci };
                    let desc = choose_in_layout(&blobs, want.as_deref())?;
                    (blobs, desc)
                }
                ImageRef::DockerArchive { .. } | ImageRef::Stdout => return Ok(None),
                ImageRef::Registry(rr) => {
                    let repo = Repository::open(rr)?;
                    let at = rr.manifest_reference().unwrap_or_else(|| "latest".into());
                    let (bytes, content_type) = repo.get_manifest(&at)?;
                    let digest = Digest::of(&bytes);
                    if let Some(want) = &rr.digest
                        && *want != digest
                    {
                        bail!("the registry sent a manifest whose digest is {digest}, not {want}");
                    }
                    let media_type = media_type_of(&bytes).unwrap_or(content_type);
                    let desc = crate::image::descriptor(
                        MediaType::from(media_type.as_str()),
                        &digest,
                        bytes.len() as u64,
                        None,
                    )?;
                    (Blobs::Registry(std::sync::Arc::new(repo)), desc)
                }
            };
            let media_type = desc.media_type().to_string();
            if !is_index_type(&media_type) {
                return Ok(None);
            }
            let (bytes, digest) = blobs.read_json(&desc).context("reading the image index")?;
            let index: ImageIndex = serde_json::from_slice(&bytes).context("parsing the image index")?;
            Ok(Some(SourceIndex { reference: reference.clone(), bytes, digest, media_type, index, blobs }))
        })();
        found.with_context(|| format!("reading image {reference}"))
    }

    /// The image of one entry of the index (a manifest, not a nested index).
    pub fn image(&self, desc: &Descriptor) -> Result<SourceImage> {
        if is_index_type(desc.media_type().as_ref()) {
            bail!("{}: nested image indexes ({}) are not supported", self.reference, desc.digest());
        }
        let reference = match Platform::of_descriptor(desc) {
            Some(p) => format!("{} ({p})", self.reference),
            None => format!("{} ({})", self.reference, desc.digest()),
        };
        load(self.blobs.clone(), desc, reference.clone()).with_context(|| format!("reading image {reference}"))
    }
}

fn is_index_type(mt: &str) -> bool {
    mt == registry::request::MT_OCI_INDEX || mt == registry::request::MT_DOCKER_LIST
}

/// The `mediaType` a manifest or index states in its bytes.
fn media_type_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Typed>(bytes).ok().and_then(|t| t.media_type)
}
