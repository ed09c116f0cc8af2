//! `nixoci index DEST IMAGE…`: an OCI image index over per-platform images, and the writer that
//! `index` and `copy` share for an image or an index with its images.
//!
//! Each IMAGE is any source transport; an IMAGE that is itself an index brings all its images.
//! A platform comes from each image's config (`os`, `architecture`, `variant`), which `build`
//! checked against the binaries ([`crate::platform`]); two images of one platform are refused.
//! The index lists the manifests sorted by platform, so the same images give the same bytes in
//! any order. Every blob of every image is carried: `oci:` gets an `index.json` entry whose
//! descriptor is the index (tagged with `ref.name`), `oci-archive:` the same inside a tar, and
//! `docker://` each manifest pushed by digest, then the index at the tag.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use oci_spec::image::MediaType;
use serde::Serialize;

use crate::blob::Digest;
use crate::image::{self, Image, IndexImage, JsonBlob, Top};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::transport::oci_dir::{self, BlobSource};
use crate::transport::registry::{PushStats, Repository};
use crate::transport::source::{SourceImage, SourceIndex, Staged};
use crate::transport::{self, ImageRef, archive};

#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Blobs uploaded at once to a registry.
    pub jobs: usize,
    /// mtime of the members of an `oci-archive:` destination.
    pub epoch: u64,
}

/// One image of an index.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformEntry {
    pub platform: String,
    pub manifest_digest: Digest,
    pub layers: usize,
    pub source: String,
}

/// What `index` (or `copy` of an index) did.
#[derive(Debug, Clone, Serialize)]
pub struct IndexReport {
    pub destination: String,
    pub index_digest: Digest,
    pub platforms: Vec<PlatformEntry>,
    /// Blob bytes read from the sources (blobs the destination had are not read).
    pub bytes_read: u64,
    #[serde(flatten)]
    pub upload: PushStats,
    pub seconds: f64,
}

/// The index over `images` (each with its platform): sorted by platform, one image per platform.
pub fn make_index(images: Vec<(Platform, Image)>) -> Result<IndexImage> {
    let mut images = images;
    images.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.manifest.digest.cmp(&b.1.manifest.digest)));
    for pair in images.windows(2) {
        if pair[0].0 == pair[1].0 {
            bail!(
                "two images are for {}: manifests {} and {} (an index holds one image per platform)",
                pair[0].0,
                pair[0].1.manifest.digest,
                pair[1].1.manifest.digest
            );
        }
    }
    let descriptors = images
        .iter()
        .map(|(p, i)| {
            let mut i = i.clone();
            i.platform = p.clone();
            image::manifest_descriptor(&i, None)
        })
        .collect::<Result<Vec<_>>>()?;
    let index = image::index(descriptors)?;
    Ok(IndexImage {
        index,
        media_type: MediaType::ImageIndex.to_string(),
        images: images.into_iter().map(|(_, i)| i).collect(),
    })
}

/// `nixoci index DEST SRC…`.
pub fn index(
    dest: &ImageRef,
    sources: &[ImageRef],
    opts: &IndexOptions,
    reporter: &dyn Reporter,
) -> Result<IndexReport> {
    let started = Instant::now();
    if sources.is_empty() {
        bail!("name at least one image to put in the index");
    }
    preflight(dest)?;
    let mut opened: Vec<SourceImage> = Vec::new();
    for src in sources {
        match SourceIndex::open(src)? {
            Some(idx) => {
                for d in idx.index.manifests() {
                    opened.push(idx.image(d)?);
                }
            }
            None => opened.push(SourceImage::open(src)?),
        }
    }
    let mut entries = Vec::new();
    let mut images = Vec::new();
    for s in &opened {
        let platform = Platform::of_config(&s.config);
        entries.push(PlatformEntry {
            platform: platform.to_string(),
            manifest_digest: s.manifest_digest.clone(),
            layers: s.layers.len(),
            source: s.reference.clone(),
        });
        images.push((platform, crate::copy::image_of(s)?));
    }
    let idx = make_index(images).context("making the image index")?;
    entries.sort_by(|a, b| a.platform.cmp(&b.platform));
    let default_tag = "latest";
    let (upload, bytes_read) = write_sources(dest, Top::Index(&idx), &opened, default_tag, opts, reporter)?;
    reporter.note(&format!("wrote the index of {} images to {dest}", idx.images.len()));
    Ok(IndexReport {
        destination: dest.to_string(),
        index_digest: idx.index.digest.clone(),
        platforms: entries,
        bytes_read,
        upload,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Fails early when `dest` cannot hold an index.
pub fn preflight(dest: &ImageRef) -> Result<()> {
    match dest {
        ImageRef::DockerArchive { .. } | ImageRef::Stdout => bail!(
            "cannot write an image index to {dest}: a docker-archive holds single images; use oci:DIR[:TAG], oci-archive:FILE[:REF] or docker://"
        ),
        ImageRef::Registry(r) if r.digest.is_some() => {
            bail!("cannot push an image index to {dest}: name a tag, not a digest")
        }
        ImageRef::OciDir { .. } | ImageRef::OciArchive { .. } => {
            transport::parent_dir(dest.local_path().unwrap_or(std::path::Path::new(".")))?;
            Ok(())
        }
        ImageRef::Registry(_) => Ok(()),
    }
}

/// Writes `top` (whose blobs come from the `sources` images) to `dest`; returns the upload stats
/// and the blob bytes read from the sources.
pub fn write_sources(
    dest: &ImageRef,
    top: Top<'_>,
    sources: &[SourceImage],
    default_tag: &str,
    opts: &IndexOptions,
    reporter: &dyn Reporter,
) -> Result<(PushStats, u64)> {
    let dest_repo = match dest {
        ImageRef::Registry(r) => Some(Repository::open_for_push(r).with_context(|| format!("cannot push to {r}"))?),
        _ => None,
    };
    let staging = tempfile::Builder::new()
        .prefix(".nixoci-index-")
        .tempdir_in(transport::staging_parent([dest]))
        .context("creating a staging directory")?;
    let blobs = StagedMany(sources.iter().map(|s| Staged::new(s, staging.path())).collect());
    let mut upload = PushStats::default();
    match dest {
        ImageRef::OciDir { dir, tag } => {
            oci_dir::write_top(dir, Some(tag.as_deref().unwrap_or(default_tag)), top, &blobs)?;
        }
        ImageRef::OciArchive { file, reference } => {
            archive::write_oci_archive_top(file, reference.as_deref(), top, &blobs, opts.epoch)?;
        }
        ImageRef::Registry(r) => {
            let repo = dest_repo.as_ref().ok_or_else(|| anyhow!("internal error: {r} was not connected"))?;
            let at = r.manifest_reference().unwrap_or_else(|| default_tag.to_owned());
            upload = push(repo, top, &at, &blobs, opts.jobs, reporter).with_context(|| format!("pushing to {r}"))?;
        }
        ImageRef::DockerArchive { .. } | ImageRef::Stdout => preflight(dest)?,
    }
    Ok((upload, blobs.bytes_read()))
}

/// Pushes an image at `at`, or each image of an index by its digest and then the index at `at`.
fn push(
    repo: &Repository,
    top: Top<'_>,
    at: &str,
    blobs: &(dyn BlobSource + Sync),
    jobs: usize,
    reporter: &dyn Reporter,
) -> Result<PushStats> {
    match top {
        Top::Image(i) => repo.push(i, at, blobs, jobs, reporter),
        Top::Index(x) => {
            let mut stats = PushStats::default();
            for i in &x.images {
                let s = repo
                    .push(i, i.manifest.digest.as_str(), blobs, jobs, reporter)
                    .with_context(|| format!("pushing the {} image", i.platform))?;
                stats.add(&s);
            }
            put_index(repo, &x.index, &x.media_type, at)?;
            Ok(stats)
        }
    }
}

fn put_index(repo: &Repository, index: &JsonBlob, media_type: &str, at: &str) -> Result<()> {
    repo.put_manifest_bytes(index, media_type, at).with_context(|| format!("pushing the image index {}", index.digest))
}

/// The blobs of several source images, each looked up where it came from.
struct StagedMany<'a>(Vec<Staged<'a>>);

impl StagedMany<'_> {
    fn bytes_read(&self) -> u64 {
        self.0.iter().map(Staged::bytes_read).sum()
    }
}

impl BlobSource for StagedMany<'_> {
    fn blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        self.0
            .iter()
            .find(|s| s.has(digest))
            .ok_or_else(|| anyhow!("internal error: {digest} is not a layer of any image of the index"))?
            .blob_path(digest)
    }
}

/// What `inspect` and `diff` read: one image, or each image of an index with its platform.
pub struct Opened {
    /// The index's digest and media type when the reference named an index.
    pub index: Option<(Digest, String)>,
    /// Sorted by platform.
    pub images: Vec<(Platform, SourceImage)>,
}

/// Opens `r`: an index with all its images, or one image. With `platform`, only that platform's
/// image (from an index; a single image must be of that platform).
pub fn open_platforms(r: &ImageRef, platform: Option<&Platform>) -> Result<Opened> {
    if let Some(p) = platform {
        let img = SourceImage::open_platform(r, p)?;
        let has = Platform::of_config(&img.config);
        if !p.matches(&has) {
            bail!("{r} is a {has} image, not {p}");
        }
        return Ok(Opened { index: None, images: vec![(has, img)] });
    }
    match SourceIndex::open(r)? {
        Some(idx) => {
            let mut images = idx
                .index
                .manifests()
                .iter()
                .map(|d| {
                    let img = idx.image(d)?;
                    let p = Platform::of_descriptor(d).unwrap_or_else(|| Platform::of_config(&img.config));
                    Ok((p, img))
                })
                .collect::<Result<Vec<_>>>()?;
            images.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(Opened { index: Some((idx.digest.clone(), idx.media_type.clone())), images })
        }
        None => {
            let img = SourceImage::open(r)?;
            Ok(Opened { index: None, images: vec![(Platform::of_config(&img.config), img)] })
        }
    }
}

/// `inspect` of an index: each platform's image.
#[derive(Debug, Clone, Serialize)]
pub struct IndexInspection {
    pub reference: String,
    pub index_digest: Digest,
    pub media_type: String,
    pub platforms: Vec<PlatformInspection>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformInspection {
    pub platform: String,
    pub image: crate::inspect::Inspection,
}

/// The text report of an index: a summary line per platform, then one section per platform.
pub fn write_index_text<W: std::io::Write>(ins: &IndexInspection, w: &mut W) -> std::io::Result<()> {
    writeln!(w, "IMAGE INDEX  {}", ins.reference)?;
    writeln!(w, "DIGEST       {}", ins.index_digest)?;
    for p in &ins.platforms {
        writeln!(w, "  {:<16} {}", p.platform, p.image.manifest_digest)?;
    }
    for p in &ins.platforms {
        writeln!(w, "\n== {} ==\n", p.platform)?;
        crate::inspect::write_text(&p.image, w)?;
    }
    Ok(())
}

/// `diff` of two indexes (or an index and an image): the images paired by platform.
#[derive(Debug, Clone, Serialize)]
pub struct IndexDiff {
    pub platforms: Vec<PlatformDiff>,
    /// Platforms only OLD has.
    pub removed: Vec<String>,
    /// Platforms only NEW has.
    pub added: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformDiff {
    pub platform: String,
    pub diff: crate::diff::Diff,
}

/// Pairs OLD's and NEW's images by platform and diffs each pair.
pub fn diff_platforms(
    old: &Opened,
    new: &Opened,
    opts: &crate::diff::DiffOptions,
    reporter: &dyn Reporter,
) -> Result<IndexDiff> {
    let mut out = IndexDiff { platforms: Vec::new(), removed: Vec::new(), added: Vec::new() };
    for (p, o) in &old.images {
        match new.images.iter().find(|(q, _)| q == p) {
            Some((_, n)) => out.platforms.push(PlatformDiff {
                platform: p.to_string(),
                diff: crate::diff::diff(o, n, opts, reporter).with_context(|| format!("comparing the {p} images"))?,
            }),
            None => out.removed.push(p.to_string()),
        }
    }
    out.added = new
        .images
        .iter()
        .filter(|(q, _)| !old.images.iter().any(|(p, _)| p == q))
        .map(|(q, _)| q.to_string())
        .collect();
    Ok(out)
}

/// The text report: one section per platform pair, then the platforms only one side has.
pub fn write_diff_text<W: std::io::Write>(d: &IndexDiff, w: &mut W) -> std::io::Result<()> {
    for (i, p) in d.platforms.iter().enumerate() {
        if i > 0 {
            writeln!(w)?;
        }
        writeln!(w, "== {} ==\n", p.platform)?;
        crate::diff::write_text(&p.diff, w)?;
    }
    if !d.removed.is_empty() {
        writeln!(w, "\nPLATFORMS REMOVED  {}", d.removed.join(", "))?;
    }
    if !d.added.is_empty() {
        writeln!(w, "\nPLATFORMS ADDED    {}", d.added.join(", "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(arch: &str, n: u8) -> (Platform, Image) {
        let config = JsonBlob { bytes: vec![b'{', n, b'}'], digest: Digest::of(&[b'{', n, b'}']) };
        let m = format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":{n}}}"#);
        let manifest = JsonBlob { digest: Digest::of(m.as_bytes()), bytes: m.into_bytes() };
        let p = Platform::parse(arch).unwrap();
        (p.clone(), Image { config, manifest, layers: Vec::new(), platform: p })
    }

    #[test]
    fn index_is_sorted_by_platform_whatever_the_order() {
        let a = make_index(vec![image("linux/arm64", 1), image("linux/amd64", 2)]).unwrap();
        let b = make_index(vec![image("linux/amd64", 2), image("linux/arm64", 1)]).unwrap();
        assert_eq!(a.index.bytes, b.index.bytes);
        let text = String::from_utf8(a.index.bytes.clone()).unwrap();
        let (amd, arm) = (text.find("amd64").unwrap(), text.find("arm64").unwrap());
        assert!(amd < arm, "{text}");
        assert!(text.contains(r#""os":"linux""#), "{text}");
        assert_eq!(a.images[0].platform.architecture, "amd64");
    }

    #[test]
    fn two_images_of_one_platform_are_refused() {
        let err = make_index(vec![image("linux/arm64", 1), image("arm64", 2)]).unwrap_err().to_string();
        assert!(err.contains("two images are for linux/arm64"), "{err}");
        make_index(vec![image("linux/arm/v7", 1), image("linux/arm/v6", 2)]).unwrap();
    }
}
