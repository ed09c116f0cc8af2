//! `nixoci copy SRC DEST`: an image from any transport to `oci:`, `oci-archive:` or `docker://`,
//! its manifest and config bytes (so its digest) unchanged.
//!
//! Blobs the destination already has are neither read nor sent. The others come from the source:
//! an `oci:` layout's blob files are verified in place and used as they are; blobs of archives
//! and registries are streamed, verified, into a staging directory first (registry → registry
//! copies go through local disk, never memory).

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::blob::{BlobInfo, Digest};
use crate::image::{ANNOTATION_GROUP, Image, JsonBlob, LayerDesc};
use crate::progress::Reporter;
use crate::transport::oci_dir;
use crate::transport::registry::{PushStats, Repository};
use crate::transport::source::{SourceImage, Staged};
use crate::transport::{self, ImageRef, archive};

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Blobs uploaded at once to a registry.
    pub jobs: usize,
    /// mtime of the members of an `oci-archive:` destination.
    pub epoch: u64,
}

/// What a copy did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub source: String,
    pub destination: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: usize,
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
    let source = SourceImage::open(src)?;
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
        config_digest: image.config.digest.clone(),
        layers: image.layers.len(),
        bytes_read,
        upload,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The source's bytes as an [`Image`] (nothing re-serialised).
fn image_of(source: &SourceImage) -> Result<Image> {
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
        architecture: source.config.architecture().to_string(),
    })
}

/// The tag a copy gives when the destination names none: the source's, else `latest`.
fn source_tag(src: &ImageRef) -> &str {
    src.tag().unwrap_or("latest")
}
