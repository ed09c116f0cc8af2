//! `nixoci copy SRC DEST`: an image from any transport to `oci:`, `oci-archive:` or `docker://`,
//! its manifest and config bytes (so its digest) unchanged. An image index is copied whole (its
//! bytes unchanged, every image it lists with it, see [`crate::index`]) unless `--platform` picks
//! one of its images.
//!
//! Blobs the destination already has are neither read nor sent. The others come from the source:
//! an `oci:` layout's blob files are verified in place and used as they are; blobs of archives
//! and registries are streamed, verified, into a staging directory first (registry → registry
//! copies go through local disk, never memory).

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::blob::{BlobInfo, Digest};
use crate::image::{ANNOTATION_GROUP, Image, IndexImage, JsonBlob, LayerDesc, Top};
use crate::index::{IndexOptions, PlatformEntry};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::transport::oci_dir;
use crate::transport::registry::{PushStats, Repository};
use crate::transport::source::{SourceImage, SourceIndex, Staged};
use crate::transport::{self, ImageRef, archive};

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Blobs uploaded at once to a registry.
    pub jobs: usize,
    /// mtime of the members of an `oci-archive:` destination.
    pub epoch: u64,
    /// Copy only this platform's image of an index (a single image must be of this platform).
    pub platform: Option<Platform>,
}

/// What a copy did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub source: String,
    pub destination: String,
    /// The manifest's digest, or the index's when a whole index was copied.
    pub manifest_digest: Digest,
    /// The config's digest (absent when a whole index was copied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Digest>,
    /// Layers (of every image, when an index was copied).
    pub layers: usize,
    /// The platforms of the images of a copied index.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformEntry>,
    /// Blob bytes read from the source (blobs the destination had are not read).
    pub bytes_read: u64,
    #[serde(flatten)]
    pub upload: PushStats,
    pub seconds: f64,
}

pub fn copy(src: &ImageRef, dest: &ImageRef, opts: &CopyOptions, reporter: &dyn Reporter) -> Result<CopyReport> {
    let started = Instant::now();
    match dest {
        ImageRef::DockerArchive { .. } | ImageRef::Stdout => bail!(
            "cannot copy to {dest}: docker-archive destinations are not supported by copy yet (they need uncompressed layers); copy to oci-archive:FILE, which `podman load -i` reads too"
        ),
        ImageRef::OciDir { .. } | ImageRef::OciArchive { .. } => {
            super::transport::parent_dir(dest.local_path().unwrap_or(std::path::Path::new(".")))?;
        }
        ImageRef::Registry(_) => {}
    }
    let dest_repo = match dest {
        ImageRef::Registry(r) => Some(Repository::open_for_push(r).with_context(|| format!("cannot push to {r}"))?),
        _ => None,
    };
    if opts.platform.is_none()
        && let Some(idx) = SourceIndex::open(src)?
    {
        drop(dest_repo);
        return copy_index(src, dest, &idx, opts, reporter, started);
    }
    let source = match &opts.platform {
        Some(p) => {
            let s = SourceImage::open_platform(src, p)?;
            let has = Platform::of_config(&s.config);
            if !p.matches(&has) {
                bail!("{src} is a {has} image, not {p}");
            }
            s
        }
        None => SourceImage::open(src)?,
    };
    let image = image_of(&source)?;
    let staging = tempfile::Builder::new()
        .prefix(".nixoci-copy-")
        .tempdir_in(transport::staging_parent([dest]))
        .context("creating a staging directory")?;
    let blobs = Staged::new(&source, staging.path());
    let mut upload = PushStats::default();
    match dest {
        ImageRef::OciDir { dir, tag } => {
            let tag = tag.clone().unwrap_or_else(|| source_tag(src).to_owned());
            oci_dir::write(dir, Some(&tag), &image, &blobs)?;
        }
        ImageRef::OciArchive { file, reference } => {
            archive::write_oci_archive(file, reference.as_deref(), &image, &blobs, opts.epoch)?;
        }
        ImageRef::Registry(r) => {
            let repo = dest_repo.as_ref().ok_or_else(|| anyhow!("internal error: {r} was not connected"))?;
            let at = r.manifest_reference().unwrap_or_else(|| source_tag(src).to_owned());
            upload = repo.push(&image, &at, &blobs, opts.jobs, reporter).with_context(|| format!("pushing to {r}"))?;
        }
        ImageRef::DockerArchive { .. } | ImageRef::Stdout => unreachable!("refused above"),
    }
    reporter.note(&format!("copied {src} to {dest}"));
    let bytes_read = blobs.bytes_read();
    Ok(CopyReport {
        source: src.to_string(),
        destination: dest.to_string(),
        manifest_digest: image.manifest.digest.clone(),
        config_digest: Some(image.config.digest.clone()),
        layers: image.layers.len(),
        platforms: Vec::new(),
        bytes_read,
        upload,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A whole image index: its bytes unchanged, every image it lists with it.
fn copy_index(
    src: &ImageRef,
    dest: &ImageRef,
    idx: &SourceIndex,
    opts: &CopyOptions,
    reporter: &dyn Reporter,
    started: Instant,
) -> Result<CopyReport> {
    crate::index::preflight(dest)?;
    let sources = idx.index.manifests().iter().map(|d| idx.image(d)).collect::<Result<Vec<_>>>()?;
    let images = sources.iter().map(image_of).collect::<Result<Vec<_>>>()?;
    let platforms = sources
        .iter()
        .map(|s| PlatformEntry {
            platform: Platform::of_config(&s.config).to_string(),
            manifest_digest: s.manifest_digest.clone(),
            layers: s.layers.len(),
            source: s.reference.clone(),
        })
        .collect();
    let whole = IndexImage {
        index: JsonBlob { bytes: idx.bytes.clone(), digest: idx.digest.clone() },
        media_type: idx.media_type.clone(),
        images,
    };
    let index_opts = IndexOptions { jobs: opts.jobs, epoch: opts.epoch };
    let (upload, bytes_read) =
        crate::index::write_sources(dest, Top::Index(&whole), &sources, source_tag(src), &index_opts, reporter)?;
    reporter.note(&format!("copied the index of {} images from {src} to {dest}", whole.images.len()));
    Ok(CopyReport {
        source: src.to_string(),
        destination: dest.to_string(),
        manifest_digest: whole.index.digest.clone(),
        config_digest: None,
        layers: whole.images.iter().map(|i| i.layers.len()).sum(),
        platforms,
        bytes_read,
        upload,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The source's bytes as an [`Image`] (nothing re-serialised).
pub fn image_of(source: &SourceImage) -> Result<Image> {
    let layers = source
        .layers
        .iter()
        .map(|l| LayerDesc {
            blob: BlobInfo {
                digest: l.digest.clone(),
                size: l.size,
                diff_id: l.diff_id.clone().unwrap_or_else(|| l.digest.clone()),
                uncompressed_size: 0,
                media_type: l.media_type.clone(),
                annotations: Default::default(),
            },
            group: l.annotations.get(ANNOTATION_GROUP).cloned().unwrap_or_default(),
            paths: Vec::new(),
        })
        .collect();
    Ok(Image {
        config: JsonBlob { bytes: source.config_bytes.clone(), digest: source.config_digest.clone() },
        manifest: JsonBlob { bytes: source.manifest_bytes.clone(), digest: source.manifest_digest.clone() },
        layers,
        platform: crate::platform::Platform::of_config(&source.config),
    })
}

/// The tag a copy gives when the destination names none: the source's, else `latest`.
fn source_tag(src: &ImageRef) -> &str {
    src.tag().unwrap_or("latest")
}
