//! `oci-archive:` (an OCI layout in a tar) and `docker-archive:` / `-` (what `docker save` writes
//! and `podman load` / `docker load` read, with uncompressed layers).
//!
//! The docker-archive is streamed: each layer's tar size is known from its listing, so layers go
//! straight into the outer tar as they are produced, and `manifest.json` and the config (which
//! need the diff_ids) come last. Loaders find members by name, so order does not matter to them.

use std::io::Write;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::oci_dir::BlobSource;
use crate::blob::{BlobInfo, Compression, OffloadHashWriter};
use crate::image::{self, Image, JsonBlob, Top};
use crate::tarball::{self, Content, Entry, Kind};

/// Writes the outer tar of an archive: every member 0444, root-owned, at `epoch`.
struct Outer<W: Write> {
    w: W,
    epoch: u64,
}

impl<W: Write> Outer<W> {
    fn entry(&self, path: &str, kind: Kind) -> Entry {
        let mode = if kind == Kind::Dir { 0o755 } else { 0o444 };
        Entry { path: path.to_owned(), kind, mode, uid: 0, gid: 0 }
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let e = self.entry(path, Kind::Dir);
        self.members(&[e])
    }

    fn bytes(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let e = self.entry(path, Kind::File { size: bytes.len() as u64, content: Content::Inline(bytes.to_vec()) });
        self.members(&[e])
    }

    fn file(&mut self, path: &str, src: &std::path::Path, size: u64) -> Result<()> {
        let e = self.entry(path, Kind::File { size, content: Content::Disk(src.to_owned()) });
        self.members(&[e])
    }

    /// Writes entries without the end-of-archive blocks.
    fn members(&mut self, entries: &[Entry]) -> Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        for e in entries {
            tarball::write_entry(e, self.epoch, &mut self.w, &mut buf, &mut |_| {})?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<W> {
        self.w.write_all(&[0u8; tarball::END_MARKER as usize])?;
        Ok(self.w)
    }
}

/// Writes `image` as an OCI layout inside a tar at `file`, atomically.
pub fn write_oci_archive(
    file: &std::path::Path,
    reference: Option<&str>,
    image: &Image,
    blobs: &dyn BlobSource,
    epoch: u64,
) -> Result<()> {
    write_oci_archive_top(file, reference, Top::Image(image), blobs, epoch)
}

/// Writes an image or an image index with its images ([`Top`]) as an OCI layout inside a tar at
/// `file`, atomically; `index.json` names the manifest or the index.
pub fn write_oci_archive_top(
    file: &std::path::Path,
    reference: Option<&str>,
    image: Top<'_>,
    blobs: &dyn BlobSource,
    epoch: u64,
) -> Result<()> {
    crate::atomic::atomic_write(file, crate::atomic::FILE_MODE, |w| {
        let mut out = Outer { w, epoch };
        let index = image::index(vec![image.descriptor(reference)?])?;
        out.dir("blobs")?;
        out.dir("blobs/sha256")?;
        let mut blobs_sorted: Vec<(String, Option<&JsonBlob>, Option<&BlobInfo>)> = Vec::new();
        for json in image.json_blobs() {
            blobs_sorted.push((json.digest.hex().to_owned(), Some(json), None));
        }
        for l in image.images().iter().flat_map(|i| &i.layers) {
            blobs_sorted.push((l.blob.digest.hex().to_owned(), None, Some(&l.blob)));
        }
        blobs_sorted.sort_by(|a, b| a.0.cmp(&b.0));
        blobs_sorted.dedup_by(|a, b| a.0 == b.0);
        for (hex, json, layer) in blobs_sorted {
            let name = format!("blobs/sha256/{hex}");
            match (json, layer) {
                (Some(j), _) => out.bytes(&name, &j.bytes)?,
                (None, Some(l)) => out.file(&name, &blobs.blob_path(&l.digest)?, l.size)?,
                _ => unreachable!(),
            }
        }
        out.bytes("index.json", &index.bytes)?;
        out.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        out.finish()?;
        Ok(())
    })
}

/// One layer to stream into a docker-archive.
pub struct StreamLayer<'a> {
    pub tar: LayerTar<'a>,
    pub group: String,
    pub paths: Vec<crate::closure::StorePath>,
}

/// Where a streamed layer's tar comes from.
pub enum LayerTar<'a> {
    /// Listed entries, tarred as they are written.
    Entries(&'a [Entry]),
    /// A tar file made elsewhere (a base image's layer), copied as it is.
    File { path: std::path::PathBuf, size: u64 },
}

impl LayerTar<'_> {
    pub fn size(&self) -> u64 {
        match self {
            LayerTar::Entries(e) => tarball::tar_size(e),
            LayerTar::File { size, .. } => *size,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Streams a docker-archive into `w`: layers (uncompressed) first, then config and manifest.json.
/// `config` turns the finished layers into the image config.
pub fn write_docker_archive<W: Write>(
    w: W,
    reference: Option<&str>,
    layers: &[StreamLayer<'_>],
    epoch: u64,
    config: &dyn Fn(&[image::LayerDesc]) -> Result<JsonBlob>,
    on_layer: &mut dyn FnMut(usize, u64, Option<&BlobInfo>),
) -> Result<(W, Vec<image::LayerDesc>, JsonBlob)> {
    let mut out = Outer { w, epoch };
    let mut descs = Vec::with_capacity(layers.len());
    let mut names = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        let size = layer.tar.size();
        let name = format!("{i:03}.tar");
        // The header announces `size` bytes; the layer tar then streams through a hasher.
        let header = Entry {
            path: name.clone(),
            kind: Kind::File { size, content: Content::Inline(Vec::new()) },
            mode: 0o444,
            uid: 0,
            gid: 0,
        };
        tarball::write_header(&header, epoch, &mut out.w)?;
        on_layer(i, size, None);
        // Hashing on its own thread: this stream is otherwise one thread reading files,
        // hashing and writing the pipe.
        let hashed = OffloadHashWriter::new(&mut out.w);
        let hashed = match &layer.tar {
            LayerTar::Entries(entries) => tarball::write(entries, epoch, hashed, &mut |n| on_layer(i, n, None))?,
            LayerTar::File { path, .. } => {
                let mut hashed = hashed;
                let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
                let n = std::io::copy(&mut f, &mut hashed).with_context(|| format!("reading {}", path.display()))?;
                on_layer(i, n, None);
                hashed
            }
        };
        let (_, diff_id, written) = hashed.finish()?;
        if written != size {
            bail!("internal error: layer {i} is {written} bytes, its listing said {size}");
        }
        tarball::write_padding(&mut out.w, size)?;
        let blob = BlobInfo {
            digest: diff_id.clone(),
            size,
            diff_id,
            uncompressed_size: size,
            media_type: Compression::None.media_type().to_string(),
            annotations: Default::default(),
        };
        on_layer(i, 0, Some(&blob));
        descs.push(image::LayerDesc { blob, group: layer.group.clone(), paths: layer.paths.clone() });
        names.push(name);
    }
    let config = config(&descs)?;
    let config_name = format!("{}.json", config.digest.hex());
    out.bytes(&config_name, &config.bytes)?;
    let manifest = vec![DockerManifestEntry {
        config: config_name,
        // docker load treats a tagless RepoTags entry poorly: `app` → `app:latest`.
        repo_tags: reference.map(super::with_default_tag).into_iter().collect(),
        layers: names,
    }];
    out.bytes("manifest.json", &serde_json::to_vec(&manifest)?)?;
    Ok((out.finish()?, descs, config))
}

/// `docker-archive:FILE[:REF]`: streams into a temporary sibling, then renames it into place.
pub fn write_docker_archive_file(
    file: &std::path::Path,
    reference: Option<&str>,
    layers: &[StreamLayer<'_>],
    epoch: u64,
    config: &dyn Fn(&[image::LayerDesc]) -> Result<JsonBlob>,
    on_layer: &mut dyn FnMut(usize, u64, Option<&BlobInfo>),
) -> Result<(Vec<image::LayerDesc>, JsonBlob)> {
    crate::atomic::atomic_write(file, crate::atomic::FILE_MODE, |w| {
        let (_, descs, config) = write_docker_archive(w, reference, layers, epoch, config, on_layer)?;
        Ok((descs, config))
    })
}
