//! `nixoci build`: plan → list → layer blobs → image → destinations.


use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::blob::{self, BlobInfo, Compression, Digest};
use crate::closure::Closure;
use crate::image::{self, CUSTOM_GROUP, Image, ImageSpec, LayerDesc};
use crate::layering::Plan;
use crate::progress::Reporter;
use crate::tarball::{self, Entry};
use crate::transport::archive::{self, StreamLayer};
use crate::transport::oci_dir::{self, BlobSource};
use crate::transport::{self, ImageRef};

/// Everything a build needs besides the closure and the plan.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The directory holding `<hash>-<name>` store path directories.
    pub store_root: PathBuf,
    pub spec: ImageSpec,
    pub compression: Compression,
    pub jobs: usize,
    /// mtime of every entry and the config's `created`.
    pub epoch: u64,
    pub outputs: Vec<ImageRef>,
}

/// What a build made.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<LayerDesc>,
    pub outputs: Vec<String>,
}

/// A layer ready to be written: its plan entry and its listing.
struct Listed {
    group: String,
    paths: Vec<crate::closure::StorePath>,
    entries: Vec<Entry>,
}

impl Listed {
    fn label(&self) -> String {
        match self.paths.as_slice() {
            [] => self.group.clone(),
            [one] => one.name().to_owned(),
            [first, rest @ ..] => format!("{} +{}", first.name(), rest.len()),
        }
    }

    fn data_size(&self) -> u64 {
        self.entries.iter().map(Entry::data_size).sum()
    }
}

pub fn build(closure: &Closure, plan: &Plan, opts: &BuildOptions, reporter: &dyn Reporter) -> Result<BuildReport> {
    if opts.outputs.is_empty() {
        bail!("no destination: give at least one -o DEST");
    }
    for out in &opts.outputs {
        preflight(out)?;
    }
    let layers = list_layers(closure, plan, opts)?;
    let oci_outputs: Vec<&ImageRef> =
        opts.outputs.iter().filter(|o| matches!(o, ImageRef::OciDir { .. } | ImageRef::OciArchive { .. })).collect();
    let mut primary: Option<Image> = None;
    let mut written = Vec::new();
    if !oci_outputs.is_empty() {
        let staging = Staging::new(staging_parent(&opts.outputs))?;
        let descs = make_blobs(&layers, opts, &staging, reporter)?;
        let image = image::assemble(&opts.spec, descs, opts.epoch)?;
        for out in oci_outputs {
            match out {
                ImageRef::OciDir { dir, tag } => {
                    let tag = tag.clone().or_else(|| default_tag(&opts.spec));
                    oci_dir::write(dir, tag.as_deref(), &image, &staging)?
                }
                ImageRef::OciArchive { file, reference } => {
                    let r = reference.clone().or_else(|| opts.spec.name.clone());
                    archive::write_oci_archive(file, r.as_deref(), &image, &staging, opts.epoch)?
                }
                _ => unreachable!(),
            }
            reporter.note(&format!("wrote {out}"));
            written.push(out.to_string());
        }
        primary = Some(image);
    }
    for out in opts.outputs.iter().filter(|o| matches!(o, ImageRef::DockerArchive { .. } | ImageRef::Stdout)) {
        let stream: Vec<StreamLayer<'_>> =
            layers.iter().map(|l| StreamLayer { entries: &l.entries, group: l.group.clone(), paths: l.paths.clone() }).collect();
        let total = layers.len();
        let mut on_layer = |i: usize, n: u64, done: Option<&BlobInfo>| match done {
            Some(b) => reporter.layer_finished(i, b),
            None if n > 0 && layers[i].entries.is_empty() => {}
            None => reporter.layer_progress(i, n),
        };
        for (i, l) in layers.iter().enumerate() {
            reporter.layer_started(i, total, &l.label(), l.data_size());
        }
        let config = |descs: &[LayerDesc]| image::config(&opts.spec, descs, opts.epoch);
        let (descs, config) = match out {
            ImageRef::DockerArchive { file, reference } => {
                let r = reference.clone().or_else(|| opts.spec.name.clone());
                archive::write_docker_archive_file(file, r.as_deref(), &stream, opts.epoch, &config, &mut on_layer)?
            }
            _ => {
                let stdout = std::io::stdout().lock();
                let w = std::io::BufWriter::with_capacity(1 << 20, stdout);
                let r = opts.spec.name.clone();
                let (w, d, c) = archive::write_docker_archive(w, r.as_deref(), &stream, opts.epoch, &config, &mut on_layer)?;
                let mut stdout = w.into_inner().map_err(|e| e.into_error()).context("writing to stdout")?;
                std::io::Write::flush(&mut stdout).context("writing to stdout")?;
                (d, c)
            }
        };
        match &primary {
            Some(p) if p.config != config => bail!("internal error: the docker-archive's config differs from the OCI image's"),
            Some(_) => {}
            None => primary = Some(image::assemble(&opts.spec, descs, opts.epoch)?),
        }
        reporter.note(&format!("wrote {out}"));
        written.push(out.to_string());
    }
    let image = primary.ok_or_else(|| anyhow!("internal error: no image was made"))?;
    Ok(BuildReport {
        manifest_digest: image.manifest.digest.clone(),
        config_digest: image.config.digest.clone(),
        layers: image.layers,
        outputs: written,
    })
}

/// Fails early, before any work, when a destination cannot be written.
fn preflight(out: &ImageRef) -> Result<()> {
    match out {
        ImageRef::Stdout => {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                bail!("refusing to write a docker-archive to a terminal: pipe it, e.g. `nixoci build … -o - | podman load`");
            }
        }
        ImageRef::OciDir { dir, .. } => {
            if dir.exists() && !dir.is_dir() {
                bail!("cannot write {out}: {} exists and is not a directory", dir.display());
            }
            let probe = if dir.is_dir() { dir.join("x") } else { dir.clone() };
            drop(transport::temp_sibling_file(&probe)?);
        }
        ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file, .. } => {
            if file.is_dir() {
                bail!("cannot write {out}: {} is a directory", file.display());
            }
            drop(transport::temp_sibling_file(file)?);
        }
    }
    Ok(())
}

/// Lists every layer's entries up front: a missing path or a fifo fails the build before
/// anything is written. A layer whose tar would exceed the plan's `max_layer_size` is cut into
/// parts by its files here, where they can be seen (`layering::split`).
fn list_layers(closure: &Closure, plan: &Plan, opts: &BuildOptions) -> Result<Vec<Listed>> {
    let mut listed = Vec::with_capacity(plan.layers.len() + 1);
    for layer in &plan.layers {
        let mut entries = tarball::store_prefix().to_vec();
        for path in &layer.paths {
            if closure.get(path).is_none() {
                bail!("internal error: the plan names {path}, which is not in the closure");
            }
            tarball::list_store_path(&opts.store_root, path, &mut entries)?;
        }
        tarball::normalize(&mut entries)?;
        match plan.max_layer_size {
            Some(cap) if tarball::tar_size(&entries) > cap => {
                let cut = crate::layering::split::split_entries(&entries, cap);
                for w in &cut.warnings {
                    tracing::warn!("{w}");
                }
                let label = layer.paths.first().map_or("", |p| p.name());
                let expected = layer.split.map_or(1, |s| s.parts);
                if cut.parts.len() > expected {
                    tracing::warn!(
                        "layer of {label} split into {} layers under the {} cap, where the plan counted {expected}",
                        cut.parts.len(),
                        crate::layering::size::human(cap)
                    );
                } else {
                    tracing::info!("layer of {label} split into {} layers", cut.parts.len());
                }
                for part in cut.parts {
                    listed.push(Listed { group: layer.group.clone(), paths: part.paths, entries: part.entries });
                }
            }
            _ => listed.push(Listed { group: layer.group.clone(), paths: layer.paths.clone(), entries }),
        }
    }
    if opts.spec.has_layer() {
        listed.push(Listed { group: CUSTOM_GROUP.to_owned(), paths: Vec::new(), entries: opts.spec.layer_entries()? });
    }
    Ok(listed)
}

/// Compresses every layer into `staging`, `jobs` at a time, largest first.
fn make_blobs(layers: &[Listed], opts: &BuildOptions, staging: &Staging, reporter: &dyn Reporter) -> Result<Vec<LayerDesc>> {
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(tarball::tar_size(&layers[i].entries)), i));
    let results: Vec<Mutex<Option<BlobInfo>>> = layers.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let total = layers.len();
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1).min(layers.len().max(1)) {
            s.spawn(|| {
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { return };
                    let layer = &layers[i];
                    reporter.layer_started(i, total, &layer.label(), layer.data_size());
                    match staging.write_layer(&layer.entries, opts.epoch, opts.compression, &mut |n| reporter.layer_progress(i, n)) {
                        Ok(info) => {
                            reporter.layer_finished(i, &info);
                            *results[i].lock().unwrap() = Some(info);
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results
        .into_iter()
        .zip(layers)
        .map(|(r, l)| LayerDesc { blob: r.into_inner().unwrap().expect("every layer was built"), group: l.group.clone(), paths: l.paths.clone() })
        .collect())
}

fn default_tag(spec: &ImageSpec) -> Option<String> {
    let name = spec.name.as_deref()?;
    let last = name.rsplit('/').next()?;
    Some(last.split_once(':').map_or("latest", |(_, t)| t).to_owned())
}

/// A directory beside the first file destination (so blobs can be hard-linked into an oci dir).
fn staging_parent(outputs: &[ImageRef]) -> PathBuf {
    outputs
        .iter()
        .find_map(|o| o.local_path())
        .and_then(|p| p.parent().map(Path::to_owned))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Blobs being made for this build, named by digest; removed when the build ends.
struct Staging {
    dir: tempfile::TempDir,
}

impl Staging {
    fn new(parent: PathBuf) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(".nixoci-staging-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
        Ok(Self { dir })
    }

    fn write_layer(&self, entries: &[Entry], epoch: u64, compression: Compression, on_data: &mut dyn FnMut(u64)) -> Result<BlobInfo> {
        let tmp = tempfile::NamedTempFile::new_in(self.dir.path())?;
        let w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        let (w, info) = blob::write_layer(entries, epoch, compression, w, on_data)?;
        w.into_inner().map_err(|e| e.into_error()).context("writing a layer blob")?;
        tmp.persist(self.dir.path().join(info.digest.hex())).map_err(|e| e.error)?;
        Ok(info)
    }
}

impl BlobSource for Staging {
    fn blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        let p = self.dir.path().join(digest.hex());
        if !p.is_file() {
            bail!("internal error: blob {digest} was not staged");
        }
        Ok(p)
    }
}

