//! `nixoci build`: plan → list → layer blobs → image → destinations.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::atomic::{AtomicFile, FILE_MODE};
use crate::base::{Base, OnBase};
use crate::blob::{self, BlobInfo, Compression, Digest, Pool};
use crate::cache::{Cache, LayerKey};
use crate::closure::Closure;
use crate::image::{self, CUSTOM_GROUP, Image, ImageSpec, JsonBlob, LayerDesc};
use crate::layering::Plan;
use crate::progress::Reporter;
use crate::tarball::{self, Entry};
use crate::transport::archive::{self, LayerTar, StreamLayer};
use crate::transport::oci_dir::{self, BlobSource};
use crate::transport::registry::{PushStats, RegistryRef, Repository};
use crate::transport::source::Staged;
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
    /// The layer cache directory; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// `--policy`: the image must pass it before anything is written.
    pub policy: Option<crate::policy::Policy>,
    /// `--from`: the image to build on; its layers come first, as they are.
    pub base: Option<Arc<Base>>,
}

/// What a build made.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<LayerDesc>,
    pub outputs: Vec<String>,
    pub stats: Stats,
}

/// What a build cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// File content bytes read from the store.
    pub bytes_read: u64,
    /// Layer blob bytes compressed and written (cache hits excluded).
    pub bytes_written: u64,
    /// Layers made from the store.
    pub layers_built: usize,
    /// Layers known from the cache without reading the store.
    pub cache_hits: usize,
    /// Seconds per stage (`list`, `layers`, `write`; the CLI adds `closure` and `plan`).
    pub seconds: std::collections::BTreeMap<String, f64>,
    /// Registry destinations: `bytes_uploaded`, `blobs_uploaded`, `blobs_skipped`,
    /// `blobs_mounted`.
    #[serde(flatten)]
    pub upload: PushStats,
}

/// A layer ready to be written: its plan entry and its listing.
struct Listed {
    group: String,
    paths: Vec<crate::closure::StorePath>,
    entries: Vec<Entry>,
    /// What besides its paths determines the layer's bytes (e.g. which part of a split path);
    /// part of the cache key.
    variant: String,
}

impl Listed {
    fn label(&self) -> String {
        image::layer_label(&self.paths, Some(&self.group))
    }

    fn data_size(&self) -> u64 {
        self.entries.iter().map(Entry::data_size).sum()
    }
}

/// Builds the image and writes it to every destination of `opts.outputs`. `stdout` is where
/// `-o -` writes (the caller decides it is not a terminal); nothing else is written there.
pub fn build(
    closure: &Closure,
    plan: &Plan,
    opts: &BuildOptions,
    stdout: Option<&mut dyn Write>,
    reporter: &dyn Reporter,
) -> Result<BuildReport> {
    if opts.outputs.is_empty() {
        bail!("no destination: give at least one -o DEST");
    }
    if opts.outputs.iter().filter(|o| **o == ImageRef::Stdout).count() > 1 {
        bail!("-o - is given twice: stdout can carry one image");
    }
    for out in &opts.outputs {
        preflight(out, stdout.is_some())?;
    }
    // Registries are reached first: a wrong password, an untrusted certificate or a registry
    // that is down fails the build before any work.
    let repos = connect_registries(&opts.outputs)?;
    let mut stats = Stats::default();
    let mut clock = Stopwatch(Instant::now());
    let mut layers = list_layers(closure, plan, opts)?;
    if let Compression::ZstdChunked(_) = opts.compression {
        // zstd:chunked layers start with their root (see chunked.rs); in every output, so that
        // a docker-archive written beside them has the same diff_ids.
        for l in &mut layers {
            l.entries.insert(0, crate::chunked::root_entry());
        }
    }
    clock.lap(&mut stats, "list");
    let mut written = Vec::new();
    let mut primary: Option<Image> = None;
    if opts.outputs.iter().any(is_oci_output) {
        let (image, store) = make_oci_image(closure, &layers, opts, &repos, reporter, &mut stats)?;
        clock.lap(&mut stats, "layers");
        for out in opts.outputs.iter().filter(|o| is_oci_output(o)) {
            write_oci_output(out, &image, &store, opts, &repos, reporter, &mut stats)?;
            written.push(out.to_string());
        }
        clock.lap(&mut stats, "write");
        primary = Some(image);
    } else {
        // docker-archive layers are uncompressed tars, whose exact size the listing gives.
        gate(opts, &layers, layers.iter().map(|l| tarball::tar_size(&l.entries)))?;
    }
    let mut stdout = stdout;
    let streams: Vec<&ImageRef> = opts.outputs.iter().filter(|o| !is_oci_output(o)).collect();
    // A base's layers, decompressed once for every docker-archive output.
    let base_tars = match &opts.base {
        Some(base) if !streams.is_empty() => Some(BaseTars::decompress(base, &opts.outputs)?),
        _ => None,
    };
    for out in streams {
        // `-o -` is given once at most (checked above): it takes stdout.
        let to = if *out == ImageRef::Stdout { stdout.take() } else { None };
        let (descs, config) = write_stream_output(out, &layers, base_tars.as_ref(), opts, to, reporter, &mut stats)?;
        match &primary {
            Some(p) if p.config != config => {
                bail!("internal error: the docker-archive's config differs from the OCI image's")
            }
            Some(_) => {}
            None => primary = Some(image::assemble(&opts.spec, descs, opts.epoch, opts.base.as_deref())?),
        }
        reporter.note(&format!("wrote {out}"));
        written.push(out.to_string());
        clock.lap(&mut stats, "write");
    }
    let image = primary.ok_or_else(|| anyhow!("internal error: no image was made"))?;
    Ok(BuildReport {
        manifest_digest: image.manifest.digest.clone(),
        config_digest: image.config.digest.clone(),
        layers: image.layers,
        outputs: written,
        stats,
    })
}

/// Adds the time since the last lap to a stage of [`Stats::seconds`].
struct Stopwatch(Instant);

impl Stopwatch {
    fn lap(&mut self, stats: &mut Stats, stage: &str) {
        *stats.seconds.entry(stage.to_owned()).or_default() += self.0.elapsed().as_secs_f64();
        self.0 = Instant::now();
    }
}

/// Destinations that take the OCI image (compressed blobs); the others stream a docker-archive.
fn is_oci_output(out: &ImageRef) -> bool {
    matches!(out, ImageRef::OciDir { .. } | ImageRef::OciArchive { .. } | ImageRef::Registry(_))
}

/// Makes every layer blob (or finds it in the cache or at the destinations), assembles the
/// image and runs the policy gate.
fn make_oci_image<'a>(
    closure: &Closure,
    layers: &[Listed],
    opts: &'a BuildOptions,
    repos: &[Repository],
    reporter: &dyn Reporter,
    stats: &mut Stats,
) -> Result<(Image, BlobStore<'a>)> {
    let store = BlobStore::new(opts.cache_dir.as_deref(), &opts.outputs, opts.base.as_deref())?;
    // A registry answers with a HEAD: a warm rebuild pushing there reads no store file.
    let dests_have = |d: &Digest, size: u64| {
        opts.outputs.iter().filter(|o| is_oci_output(o)).all(|o| match o {
            ImageRef::OciDir { dir, .. } => oci_dir::has_blob(dir, d, size),
            ImageRef::Registry(r) => repo_for(repos, r).is_some_and(|repo| match repo.has_blob(d, size) {
                Ok(there) => there,
                Err(e) => {
                    tracing::warn!("{e}");
                    false
                }
            }),
            _ => false,
        })
    };
    let mut descs = match &opts.base {
        Some(b) => b.layers()?,
        None => Vec::new(),
    };
    descs.extend(make_blobs(closure, layers, opts, &store, &dests_have, reporter, stats)?);
    let image = image::assemble(&opts.spec, descs, opts.epoch, opts.base.as_deref())?;
    let n_base = opts.base.as_ref().map_or(0, |b| b.layer_count());
    gate(opts, layers, image.layers[n_base..].iter().map(|l| l.blob.size))?;
    Ok((image, store))
}

/// Writes the OCI image to one `oci:`, `oci-archive:` or `docker://` destination.
fn write_oci_output(
    out: &ImageRef,
    image: &Image,
    store: &BlobStore<'_>,
    opts: &BuildOptions,
    repos: &[Repository],
    reporter: &dyn Reporter,
    stats: &mut Stats,
) -> Result<()> {
    match out {
        ImageRef::OciDir { dir, tag } => {
            let tag = tag.clone().unwrap_or_else(|| default_tag(&opts.spec));
            oci_dir::write(dir, Some(&tag), image, store)?;
            reporter.note(&format!("wrote {out}"));
        }
        ImageRef::OciArchive { file, reference } => {
            let r = reference.clone().or_else(|| opts.spec.name.clone());
            archive::write_oci_archive(file, r.as_deref(), image, store, opts.epoch)?;
            reporter.note(&format!("wrote {out}"));
        }
        ImageRef::Registry(r) => {
            let repo = repo_for(repos, r).ok_or_else(|| anyhow!("internal error: {r} was not connected"))?;
            let at = r.manifest_reference().unwrap_or_else(|| default_tag(&opts.spec));
            let pushed =
                repo.push(image, &at, store, opts.jobs, reporter).with_context(|| format!("pushing to {r}"))?;
            stats.upload.add(&pushed);
            reporter.note(&format!(
                "pushed {out}: {} uploaded, {} already there, {} mounted",
                pushed.blobs_uploaded, pushed.blobs_skipped, pushed.blobs_mounted
            ));
        }
        ImageRef::DockerArchive { .. } | ImageRef::Stdout => {
            bail!("internal error: {out} takes a docker-archive stream, not the OCI image")
        }
    }
    Ok(())
}

/// A base's layers as uncompressed tar files (in place, or decompressed into a staging
/// directory removed with this), for docker-archive outputs.
struct BaseTars {
    layers: Vec<(PathBuf, u64, LayerDesc)>,
    _staging: tempfile::TempDir,
}

impl BaseTars {
    fn decompress(base: &Base, outputs: &[ImageRef]) -> Result<Self> {
        let staging = staging_dir(".nixoci-base-", outputs)?;
        let layers = base
            .layers()?
            .into_iter()
            .enumerate()
            .map(|(i, d)| base.uncompressed_layer(i, staging.path()).map(|(path, size)| (path, size, d)))
            .collect::<Result<_>>()?;
        Ok(Self { layers, _staging: staging })
    }
}

/// Streams a docker-archive (uncompressed layers, tarred as they are written; a base's from
/// `base_tars`) to a file or to `stdout`; returns its layers and config.
fn write_stream_output(
    out: &ImageRef,
    layers: &[Listed],
    base_tars: Option<&BaseTars>,
    opts: &BuildOptions,
    stdout: Option<&mut dyn Write>,
    reporter: &dyn Reporter,
    stats: &mut Stats,
) -> Result<(Vec<LayerDesc>, JsonBlob)> {
    let mut stream: Vec<StreamLayer<'_>> = base_tars
        .into_iter()
        .flat_map(|b| &b.layers)
        .map(|(path, size, d)| StreamLayer {
            tar: LayerTar::File { path: path.clone(), size: *size },
            group: d.group.clone(),
            paths: d.paths.clone(),
        })
        .collect();
    let n_base = stream.len();
    stream.extend(layers.iter().map(|l| StreamLayer {
        tar: LayerTar::Entries(&l.entries),
        group: l.group.clone(),
        paths: l.paths.clone(),
    }));
    let total = stream.len();
    let mut read = 0u64;
    let mut on_layer = |i: usize, n: u64, done: Option<&BlobInfo>| match done {
        Some(b) => reporter.layer_finished(i, b),
        None => {
            read += n;
            reporter.layer_progress(i, n)
        }
    };
    for (i, l) in stream[..n_base].iter().enumerate() {
        reporter.layer_started(i, total, &format!("base layer {}", i + 1), l.tar.size());
    }
    for (i, l) in layers.iter().enumerate() {
        reporter.layer_started(n_base + i, total, &l.label(), l.data_size());
    }
    let config = |descs: &[LayerDesc]| {
        // The base's tars hash to its config's diff_ids (checked as they were decompressed).
        image::config(&opts.spec, descs, opts.epoch, opts.base.as_deref().map(Base::config))
    };
    let (descs, config) = match (out, stdout) {
        (ImageRef::DockerArchive { file, reference }, _) => {
            let r = reference.clone().or_else(|| opts.spec.name.clone());
            archive::write_docker_archive_file(file, r.as_deref(), &stream, opts.epoch, &config, &mut on_layer)?
        }
        (ImageRef::Stdout, Some(stdout)) => {
            let w = std::io::BufWriter::with_capacity(1 << 20, stdout);
            let r = opts.spec.name.clone();
            let (w, d, c) =
                archive::write_docker_archive(w, r.as_deref(), &stream, opts.epoch, &config, &mut on_layer)?;
            let stdout = w.into_inner().map_err(|e| e.into_error()).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
            (d, c)
        }
        _ => bail!("internal error: {out} is not a docker-archive stream"),
    };
    stats.bytes_read += read;
    stats.bytes_written += descs.iter().map(|d| d.blob.size).sum::<u64>();
    Ok((descs, config))
}

/// `--policy`: judges the listed layers (with `our_sizes`, their blob sizes) before anything is
/// written, after a base's layers (with their blob sizes). A base's layers count in size and
/// number; their files are judged by `nixoci check` of the result, which reads them. The user is
/// the spec's, else the base's; `/etc/passwd` ours, else the base's.
fn gate(opts: &BuildOptions, layers: &[Listed], our_sizes: impl Iterator<Item = u64>) -> Result<()> {
    use crate::policy::{ImageFacts, LayerFacts};
    let Some(policy) = &opts.policy else { return Ok(()) };
    let mut facts: Vec<LayerFacts> = match &opts.base {
        Some(b) => {
            b.layers()?.into_iter().map(|d| LayerFacts::from_entries(d.blob.size, &d.group, d.paths, &[])).collect()
        }
        None => Vec::new(),
    };
    let ours: Vec<u64> = our_sizes.collect();
    if ours.len() != layers.len() {
        bail!("internal error: {} layer sizes for {} layers", ours.len(), layers.len());
    }
    facts.extend(
        layers.iter().zip(ours).map(|(l, size)| LayerFacts::from_entries(size, &l.group, l.paths.clone(), &l.entries)),
    );
    let base_user = opts.base.as_ref().and_then(|b| b.config().config().as_ref().and_then(|c| c.user().clone()));
    let user = opts.spec.user.clone().or(base_user).filter(|u| !u.is_empty());
    let mut passwd = crate::policy::passwd_of_entries(layers.iter().map(|l| l.entries.as_slice()));
    // The base's layers are read for its /etc/passwd only when a rule needs it.
    if passwd.is_none()
        && policy.needs_passwd(user.as_deref())
        && let Some(b) = &opts.base
    {
        passwd = b.accounts()?.passwd;
    }
    let facts = ImageFacts { reference: "the image being built".to_owned(), user, passwd, layers: facts };
    let verdict = policy.evaluate(&facts);
    if !verdict.passed {
        return Err(verdict.to_error());
    }
    Ok(())
}

/// One connection per registry repository (and set of options), checked for push access.
fn connect_registries(outputs: &[ImageRef]) -> Result<Vec<Repository>> {
    let mut repos: Vec<Repository> = Vec::new();
    for out in outputs {
        if let ImageRef::Registry(r) = out
            && repo_for(&repos, r).is_none()
        {
            repos.push(Repository::open_for_push(r).with_context(|| format!("cannot push to {r}"))?);
        }
    }
    Ok(repos)
}

fn repo_for<'a>(repos: &'a [Repository], r: &RegistryRef) -> Option<&'a Repository> {
    repos.iter().find(|x| x.reference.host == r.host && x.reference.repo == r.repo && x.reference.options == r.options)
}

/// Fails early, before any work, when a destination cannot be written.
fn preflight(out: &ImageRef, have_stdout: bool) -> Result<()> {
    match out {
        ImageRef::Registry(_) => {}
        ImageRef::Stdout => {
            if !have_stdout {
                bail!("internal error: -o - without a stdout to write to");
            }
        }
        ImageRef::OciDir { dir, .. } => {
            if dir.exists() && !dir.is_dir() {
                bail!("cannot write {out}: {} exists and is not a directory", dir.display());
            }
            transport::check_writable(if dir.is_dir() { dir } else { dir.parent().unwrap_or(Path::new(".")) }, out)?;
        }
        ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file, .. } => {
            if file.is_dir() {
                bail!("cannot write {out}: {} is a directory", file.display());
            }
            transport::check_writable(file.parent().unwrap_or(Path::new(".")), out)?;
        }
    }
    Ok(())
}

/// Lists every layer's entries up front: a missing path or a fifo fails the build before
/// anything is written. A layer whose tar would exceed the plan's `max_layer_size` is cut into
/// parts by its files here, where they can be seen (`tarball::split`).
fn list_layers(closure: &Closure, plan: &Plan, opts: &BuildOptions) -> Result<Vec<Listed>> {
    let mut listed = Vec::with_capacity(plan.layers.len() + 1);
    let elf = crate::platform::ElfCheck::new(&opts.spec.architecture, &opts.spec.foreign_elf)?
        .with_memo(opts.cache_dir.as_ref().map(|d| d.join("elf")));
    for layer in &plan.layers {
        let mut entries = tarball::store_prefix().to_vec();
        for path in &layer.paths {
            let Some(info) = closure.get(path) else {
                bail!("internal error: the plan names {path}, which is not in the closure");
            };
            let from = entries.len();
            tarball::list_store_path(&opts.store_root, path, &mut entries)?;
            elf.check_memo(&entries[from..], path, info.nar_hash.as_ref())?;
        }
        tarball::normalize(&mut entries)?;
        match plan.max_layer_size {
            Some(cap) if tarball::tar_size(&entries) > cap => {
                let cut = tarball::split::split_entries(&entries, cap);
                for w in &cut.warnings {
                    tracing::warn!("{w}");
                }
                let label = layer.paths.first().map_or("", |p| p.name());
                let expected = layer.split.map_or(1, |s| s.parts);
                if cut.parts.len() > expected {
                    tracing::warn!(
                        "layer of {label} split into {} layers under the {} cap, where the plan counted {expected}",
                        cut.parts.len(),
                        crate::size::human(cap)
                    );
                } else {
                    tracing::info!("layer of {label} split into {} layers", cut.parts.len());
                }
                let n = cut.parts.len();
                for (i, part) in cut.parts.into_iter().enumerate() {
                    listed.push(Listed {
                        group: layer.group.clone(),
                        paths: part.paths,
                        entries: part.entries,
                        variant: format!("split {cap} part {}/{n}", i + 1),
                    });
                }
            }
            _ => listed.push(Listed {
                group: layer.group.clone(),
                paths: layer.paths.clone(),
                entries,
                variant: String::new(),
            }),
        }
    }
    if opts.spec.has_layer() {
        let spec = &opts.spec;
        // Users and groups join the base's: read its /etc/passwd and /etc/group only then.
        let accounts = match &opts.base {
            Some(b) if !(spec.users.is_empty() && spec.groups.is_empty()) => Some(b.accounts()?),
            _ => None,
        };
        let on_base = opts.base.as_ref().map(|b| OnBase { reference: &b.reference, accounts: accounts.as_ref() });
        listed.push(Listed {
            group: CUSTOM_GROUP.to_owned(),
            paths: Vec::new(),
            entries: spec.layer_entries_for(closure, opts.epoch, on_base)?,
            variant: String::new(),
        });
    }
    Ok(listed)
}

/// The cache key of a listed layer, if it can be cached.
fn layer_key(closure: &Closure, layer: &Listed, opts: &BuildOptions) -> Option<LayerKey> {
    if layer.paths.is_empty() {
        return LayerKey::for_inline_entries(&layer.entries, opts.compression, opts.epoch);
    }
    let hashes = layer.paths.iter().map(|p| (p, closure.get(p).and_then(|i| i.nar_hash.as_ref())));
    LayerKey::for_store_paths(hashes, &layer.variant, opts.compression, opts.epoch)
}

/// Makes every layer's blob, `jobs` layers at a time, largest first, on one compression pool.
/// A layer whose cache entry is valid is not read at all when every destination already has
/// its blob, or when the cache holds a blob that still hashes right.
fn make_blobs(
    closure: &Closure,
    layers: &[Listed],
    opts: &BuildOptions,
    store: &BlobStore<'_>,
    dests_have: &(dyn Fn(&Digest, u64) -> bool + Sync),
    reporter: &dyn Reporter,
    stats: &mut Stats,
) -> Result<Vec<LayerDesc>> {
    let (read, written, built, hits) = (AtomicU64::new(0), AtomicU64::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let total = layers.len();
    let jobs = opts.jobs.max(1);
    let pool = Pool::new(jobs);
    let one_layer = |i: usize| -> Result<BlobInfo> {
        let layer = &layers[i];
        reporter.layer_started(i, total, &layer.label(), layer.data_size());
        let key = store.cache.as_ref().and_then(|_| layer_key(closure, layer, opts));
        let cached = key.as_ref().and_then(|k| store.cache.as_ref()?.lookup(k));
        if let Some(info) = &cached
            && (dests_have(&info.digest, info.size) || store.cached_blob(info))
        {
            hits.fetch_add(1, Ordering::Relaxed);
            reporter.layer_finished(i, info);
            return Ok(info.clone());
        }
        let info = store.write_layer(&layer.entries, opts.epoch, opts.compression, &pool, &mut |n| {
            read.fetch_add(n, Ordering::Relaxed);
            reporter.layer_progress(i, n)
        })?;
        built.fetch_add(1, Ordering::Relaxed);
        written.fetch_add(info.size, Ordering::Relaxed);
        if let (Some(cache), Some(key)) = (&store.cache, &key) {
            if cached.is_some_and(|c| c != info) {
                reporter.note(&format!("cache entry for layer {} was wrong; replaced it", i + 1));
            }
            cache.store(key, &info)?;
        }
        reporter.layer_finished(i, &info);
        Ok(info)
    };
    // Layer producers only tar and hash; the pool compresses. A few producers keep it fed.
    let sizes: Vec<u64> = layers.iter().map(|l| tarball::tar_size(&l.entries)).collect();
    let blobs = crate::parallel::largest_first(&sizes, jobs.min(4), one_layer)?;
    stats.bytes_read += read.into_inner();
    stats.bytes_written += written.into_inner();
    stats.layers_built += built.into_inner();
    stats.cache_hits += hits.into_inner();
    Ok(blobs
        .into_iter()
        .zip(layers)
        .map(|(blob, l)| LayerDesc { blob, group: l.group.clone(), paths: l.paths.clone() })
        .collect())
}

/// The tag for `oci:DIR` without one: the image spec's name's tag, else `latest`.
fn default_tag(spec: &ImageSpec) -> String {
    spec.name.as_deref().and_then(transport::tag_of).unwrap_or("latest").to_owned()
}

/// Where this build's blobs are made and read from: the cache's blob directory, or (with
/// `--no-cache`) a staging directory removed when the build ends; a base's blobs come from the
/// base ([`Staged`]: in place, or fetched into a staging directory when first needed).
struct BlobStore<'a> {
    cache: Option<Cache>,
    staging: Option<tempfile::TempDir>,
    base: Option<(Staged<'a>, tempfile::TempDir)>,
}

fn staging_dir(prefix: &str, outputs: &[ImageRef]) -> Result<tempfile::TempDir> {
    let parent = transport::staging_parent(outputs);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))
}

impl<'a> BlobStore<'a> {
    fn new(cache_dir: Option<&Path>, outputs: &[ImageRef], base: Option<&'a Base>) -> Result<Self> {
        let base = match base {
            Some(b) => {
                let dir = staging_dir(".nixoci-base-", outputs)?;
                Some((Staged::new(&b.source, dir.path()), dir))
            }
            None => None,
        };
        if let Some(dir) = cache_dir {
            return Ok(Self { cache: Some(Cache::open(dir)?), staging: None, base });
        }
        Ok(Self { cache: None, staging: Some(staging_dir(".nixoci-staging-", outputs)?), base })
    }

    fn tmp_dir(&self) -> PathBuf {
        match (&self.cache, &self.staging) {
            (Some(c), _) => c.tmp_dir(),
            (None, Some(s)) => s.path().to_owned(),
            (None, None) => unreachable!("a blob store has a cache or a staging directory"),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        match (&self.cache, &self.staging) {
            (Some(c), _) => c.blob_path(digest),
            (None, Some(s)) => s.path().join(digest.hex()),
            (None, None) => unreachable!("a blob store has a cache or a staging directory"),
        }
    }

    /// Whether the cache holds `info`'s blob, intact.
    fn cached_blob(&self, info: &BlobInfo) -> bool {
        self.cache.as_ref().is_some_and(|c| c.verified_blob(info).is_some())
    }

    fn write_layer(
        &self,
        entries: &[Entry],
        epoch: u64,
        compression: Compression,
        pool: &Pool,
        on_data: &mut dyn FnMut(u64),
    ) -> Result<BlobInfo> {
        let tmp_dir = self.tmp_dir();
        let file = AtomicFile::new_in(&tmp_dir)?;
        let w = std::io::BufWriter::with_capacity(1 << 20, file.file());
        let (w, info) = blob::write_layer(entries, epoch, compression, Some(pool), w, on_data)?;
        w.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing a layer blob in {}", tmp_dir.display()))?;
        // Blobs are hard-linked into oci: layouts: readable like the layout's other files.
        file.commit(&self.path(&info.digest), FILE_MODE)?;
        Ok(info)
    }
}

impl BlobSource for BlobStore<'_> {
    fn blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        if let Some((base, _)) = &self.base
            && base.has(digest)
        {
            return base.blob_path(digest);
        }
        let p = self.path(digest);
        if !p.is_file() {
            bail!("internal error: blob {digest} is in neither the cache nor the staging directory");
        }
        Ok(p)
    }
}
