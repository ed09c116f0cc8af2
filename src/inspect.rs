//! `nixoci inspect`: what an image holds — manifest, platform, run config, and each layer with its
//! sizes, media type, group and store paths.
//!
//! Where the store paths come from:
//! - **Images nixoci built** carry them in layer annotations (`org.nixos.nixoci.group`, and
//!   `org.nixos.nixoci.store-paths`, one full path per line). Then no layer is read at all, which is
//!   what lets a registry source fetch only the manifest and the config.
//! - **Any other image**: each layer is read as a stream — decompressed, never extracted — and every
//!   tar entry under `nix/store/<hash>-<name>` names a store path. Whiteouts of store paths
//!   (`nix/store/.wh.<hash>-<name>`, `nix/store/.wh..wh..opq`) are honoured when the layers are
//!   stacked into the image's set of paths.
//!
//! A layer that is read is verified twice: the blob against the manifest's digest and size, the
//! uncompressed tar against the config's diff_id. [`scan_layer`] is also what `diff --files` uses
//! to hash the files of selected store paths while streaming.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::blob::{Digest, HashReader};
use crate::closure::{REFERENCE_PREFIX, StorePath, reference_finder};
use crate::image::{ANNOTATION_GROUP, ANNOTATION_STORE_PATHS};
use crate::progress::Reporter;
use crate::table::{Align, Table, human_size, short_digest};
use crate::transport::source::{SourceImage, SourceLayer, decompress};

/// Options of [`inspect`].
#[derive(Debug, Clone, Copy, Default)]
pub struct InspectOptions {
    /// Read every layer, even annotated ones: gives uncompressed sizes and verifies every blob.
    pub read_layers: bool,
}

/// What `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub reference: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// `os/architecture`.
    pub platform: String,
    pub created: Option<String>,
    pub config: RunConfig,
    /// The manifest's annotations (`org.opencontainers.image.*`; with `build --from`, the base's
    /// name and digest).
    pub annotations: BTreeMap<String, String>,
    pub layers: Vec<LayerInfo>,
    /// Sum of the layers' compressed sizes (each distinct blob once).
    pub compressed_size: u64,
}

/// The parts of the image config that say how a container runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: Vec<String>,
}

/// Where a layer's store paths were learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathsFrom {
    /// nixoci's layer annotations.
    Annotation,
    /// The layer's tar headers.
    TarHeaders,
}

/// One layer of an inspected image.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub digest: Digest,
    pub diff_id: Option<Digest>,
    /// Compressed size (what is downloaded).
    pub size: u64,
    /// The tar's size, when known: uncompressed layers, and layers that were read.
    pub unpacked_size: Option<u64>,
    pub media_type: String,
    pub group: Option<String>,
    pub paths: Vec<StorePath>,
    pub paths_from: PathsFrom,
    /// Tar entries outside `/nix/store` (only known when the layer was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_entries: Option<u64>,
    /// Store paths this layer deletes from the ones below (whiteouts).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub whiteouts: Vec<StorePath>,
    /// Whether this layer hides every store path below (an opaque `nix/store`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub opaque_store: bool,
    /// A zstd:chunked layer (its TOC annotations present): its TOC in numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunked: Option<crate::chunked::TocSummary>,
    /// A zstd:chunked layer's files and chunks, for `diff`'s partial-pull estimate.
    #[serde(skip)]
    pub chunked_contents: Option<crate::chunked::Contents>,
}

impl LayerInfo {
    /// `python3.14-torch-2.10.0`, `hello-1.0 +3`, or the group when the layer holds no store path.
    pub fn label(&self) -> String {
        crate::image::layer_label(&self.paths, self.group.as_deref())
    }
}

impl Inspection {
    /// The image's store paths, with the indexes of the layers that hold each, after whiteouts.
    pub fn store_paths(&self) -> BTreeMap<StorePath, Vec<usize>> {
        let mut all: BTreeMap<StorePath, Vec<usize>> = BTreeMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            if l.opaque_store {
                all.clear();
            }
            for w in &l.whiteouts {
                all.remove(w);
            }
            for p in &l.paths {
                all.entry(p.clone()).or_default().push(i);
            }
        }
        all
    }
}

/// Inspects an opened image. Layers are read only when they carry no nixoci annotations (or when
/// `opts.read_layers` asks for it).
pub fn inspect(img: &SourceImage, opts: &InspectOptions, reporter: &dyn Reporter) -> Result<Inspection> {
    let cfg = img.config.config().clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = cfg.labels().clone().unwrap_or_default().into_iter().collect();
    let mut exposed_ports = cfg.exposed_ports().clone().unwrap_or_default();
    exposed_ports.sort();
    let config = RunConfig {
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        env: cfg.env().clone().unwrap_or_default(),
        user: cfg.user().clone().filter(|u| !u.is_empty()),
        workdir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
        labels,
        exposed_ports,
    };
    let total = img.layers.len();
    let mut layers = Vec::with_capacity(total);
    for (i, l) in img.layers.iter().enumerate() {
        let annotated = annotated_paths(l).with_context(|| format!("layer {} of {}", i + 1, img.reference))?;
        let mut info = match annotated {
            Some((group, paths)) if !opts.read_layers => LayerInfo {
                digest: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                size: l.size,
                unpacked_size: is_uncompressed(&l.media_type).then_some(l.size),
                media_type: l.media_type.clone(),
                group,
                paths,
                paths_from: PathsFrom::Annotation,
                other_entries: None,
                whiteouts: Vec::new(),
                opaque_store: false,
                chunked: None,
                chunked_contents: None,
            },
            annotated => {
                reporter.note(&format!(
                    "reading layer {}/{total} of {} ({})",
                    i + 1,
                    img.reference,
                    human_size(l.size)
                ));
                let scan = scan_layer(img, i, None)?;
                let (group, paths_from, paths) = match annotated {
                    Some((group, paths)) => {
                        let listed: BTreeSet<&StorePath> = paths.iter().collect();
                        if listed != scan.paths.iter().collect() {
                            reporter.note(&format!(
                                "warning: layer {} of {}: its annotation lists {} store path(s) but its tar holds {}",
                                i + 1,
                                img.reference,
                                listed.len(),
                                scan.paths.len()
                            ));
                        }
                        (group, PathsFrom::Annotation, paths)
                    }
                    None => (None, PathsFrom::TarHeaders, scan.paths.iter().cloned().collect()),
                };
                LayerInfo {
                    digest: l.digest.clone(),
                    diff_id: l.diff_id.clone(),
                    size: l.size,
                    unpacked_size: Some(scan.unpacked_size),
                    media_type: l.media_type.clone(),
                    group,
                    paths,
                    paths_from,
                    other_entries: Some(scan.other_entries),
                    whiteouts: scan.whiteouts.into_iter().collect(),
                    opaque_store: scan.opaque_store,
                    chunked: None,
                    chunked_contents: None,
                }
            }
        };
        // A TOC that cannot be read is reported, not fatal: the layer still pulls whole.
        match crate::chunked::read_layer_toc(img, l) {
            Ok(Some(toc)) => {
                let toc_bytes = crate::chunked::toc_position(&l.annotations).map_or(0, |p| p.1);
                info.chunked = Some(toc.summary());
                info.chunked_contents = Some(crate::chunked::Contents::of(&toc, toc_bytes));
            }
            Ok(None) => {}
            Err(e) => reporter.note(&format!("warning: layer {} of {}: {e:#}", i + 1, img.reference)),
        }
        layers.push(info);
    }
    let mut seen = BTreeSet::new();
    let compressed_size = layers.iter().filter(|l| seen.insert(&l.digest)).map(|l| l.size).sum();
    Ok(Inspection {
        reference: img.reference.clone(),
        manifest_digest: img.manifest_digest.clone(),
        config_digest: img.config_digest.clone(),
        platform: crate::platform::Platform::of_config(&img.config).to_string(),
        created: img.config.created().clone(),
        config,
        annotations: img.manifest.annotations().clone().unwrap_or_default().into_iter().collect(),
        layers,
        compressed_size,
    })
}

fn is_uncompressed(media_type: &str) -> bool {
    media_type.ends_with(".tar")
}

/// The group and store paths from nixoci's annotations; `None` when the layer has neither.
fn annotated_paths(l: &SourceLayer) -> Result<Option<(Option<String>, Vec<StorePath>)>> {
    let group = l.annotations.get(ANNOTATION_GROUP).cloned();
    let listed = l.annotations.get(ANNOTATION_STORE_PATHS);
    if group.is_none() && listed.is_none() {
        return Ok(None);
    }
    let mut paths = listed
        .map(|s| {
            s.lines()
                .filter(|p| !p.is_empty())
                .map(|p| StorePath::parse(p).map_err(|e| anyhow!("annotation {ANNOTATION_STORE_PATHS}: {e}")))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();
    paths.sort();
    paths.dedup();
    Ok(Some((group, paths)))
}

/// A file, directory or symlink inside a store path, as `diff --files` compares them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FileEntry {
    File {
        size: u64,
        sha256: String,
        executable: bool,
        /// The SHA-256 of the content with store path hashes rewritten (see [`FileScan::rewrite`]),
        /// when a rewrite was asked for and changed something.
        #[serde(skip)]
        sha256_rewritten: Option<String>,
        /// The old store paths (hash parts) whose references were rewritten in it.
        #[serde(skip)]
        rewritten_refs: BTreeSet<String>,
    },
    Dir,
    Symlink {
        target: String,
    },
    /// A device, fifo or anything else a store path should not hold.
    Other,
}

impl FileEntry {
    /// Bytes of content: a file's size, a symlink's target length, 0 otherwise.
    pub fn size(&self) -> u64 {
        match self {
            FileEntry::File { size, .. } => *size,
            FileEntry::Symlink { target } => target.len() as u64,
            FileEntry::Dir | FileEntry::Other => 0,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            FileEntry::File { .. } => "file",
            FileEntry::Dir => "dir",
            FileEntry::Symlink { .. } => "symlink",
            FileEntry::Other => "other",
        }
    }
}

/// The files of one store path: path inside it (`""` for the store path itself) → entry.
pub type FileTree = BTreeMap<String, FileEntry>;

/// What one pass over a layer's tar found.
#[derive(Debug, Clone, Default)]
pub struct LayerScan {
    pub paths: BTreeSet<StorePath>,
    pub whiteouts: BTreeSet<StorePath>,
    pub opaque_store: bool,
    /// Entries outside `/nix/store` (and not `/nix`, `/nix/store` themselves).
    pub other_entries: u64,
    pub unpacked_size: u64,
    /// The files of the store paths asked for.
    pub files: BTreeMap<StorePath, FileTree>,
}

/// Which store paths' files [`scan_layer`] records, and how.
#[derive(Debug, Clone, Copy)]
pub struct FileScan<'a> {
    pub paths: &'a BTreeSet<StorePath>,
    /// Store paths to replace (old base name `<hash>-<name>` → new) in a second hash of each
    /// file's content, so that a file that differs only by its references to rebuilt store paths
    /// can be told apart from one whose content changed. Only references written
    /// `/nix/store/<hash>…` are found.
    pub rewrite: &'a BTreeMap<String, String>,
}

/// Reads layer `i` of `img` as a stream: its store paths from the tar headers, and for the store
/// paths in `files` every entry, with file contents hashed. Verifies the blob's digest and size
/// and the tar's diff_id; on a mismatch, that is the error reported (it explains any decoding
/// error that came first).
pub fn scan_layer(img: &SourceImage, i: usize, files: Option<&FileScan<'_>>) -> Result<LayerScan> {
    let (mut scan, size) = read_layer_verified(img, i, |tar| read_entries(tar, files))?;
    scan.unpacked_size = size;
    Ok(scan)
}

/// Runs `read` on layer `i`'s uncompressed tar, then reads whatever it left and verifies the
/// blob's digest and size and the tar's diff_id; on a mismatch, that is the error reported (it
/// explains any decoding error that came first). Returns what `read` returned and the tar size.
/// Every reader of untrusted layers (inspect, diff, check) goes through here.
pub fn read_layer_verified<T>(
    img: &SourceImage,
    i: usize,
    read: impl FnOnce(&mut dyn Read) -> Result<T>,
) -> Result<(T, u64)> {
    let l = img.layers.get(i).ok_or_else(|| anyhow!("{}: no layer {}", img.reference, i + 1))?;
    let what = || format!("reading layer {} ({}) of {}", i + 1, l.digest, img.reference);
    let mut raw = img.open_blob(&l.digest, l.size).with_context(what)?;
    let scanned = (|| -> Result<(T, u64)> {
        let mut tar = HashReader::new(decompress(&mut raw, &l.media_type)?);
        let out = read(&mut tar)?;
        io::copy(&mut tar, &mut io::sink())?;
        let (size, got) = tar.finish();
        if let Some(want) = l.diff_id.as_ref().filter(|w| **w != got) {
            bail!("its uncompressed tar does not match the config's diff_id {want} (it hashes to {got})");
        }
        Ok((out, size))
    })();
    // Read the blob to its end: `Verified` checks digest and size there.
    let verified = io::copy(&mut raw, &mut io::sink());
    match (scanned, verified) {
        (_, Err(e)) => Err(anyhow::Error::new(e)).with_context(what),
        (Err(e), Ok(_)) => Err(e).with_context(what),
        (Ok(out), Ok(_)) => Ok(out),
    }
}

/// Walks the tar entries.
fn read_entries<R: Read>(r: R, files: Option<&FileScan<'_>>) -> Result<LayerScan> {
    let rewrite = files.map(|f| rewrite_map(f.rewrite)).unwrap_or_default();
    let mut scan = LayerScan::default();
    // Every file entry seen in this layer (for hardlinks, which carry no data of their own).
    let mut by_path: BTreeMap<String, FileEntry> = BTreeMap::new();
    let mut ar = tar::Archive::new(LenientEnd::new(r));
    // Where the last entry's data ends, and its name.
    let mut data_end = (0u64, String::new());
    for entry in ar.entries().context("reading the layer as a tar")? {
        let mut entry = entry.context("reading the layer as a tar")?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        data_end = (entry.raw_file_position() + entry.size(), raw_path.clone());
        let path = normalise(&raw_path);
        let Some(rest) = path.strip_prefix("nix/store/") else {
            if path != "nix" && path != "nix/store" && !path.is_empty() {
                scan.other_entries += 1;
            }
            continue;
        };
        let (base, inner) = rest.split_once('/').unwrap_or((rest, ""));
        if base == ".wh..wh..opq" {
            scan.opaque_store = true;
            continue;
        }
        if let Some(hidden) = base.strip_prefix(".wh.") {
            if let Ok(p) = StorePath::from_base_name(hidden) {
                scan.whiteouts.insert(p);
            }
            continue;
        }
        let Ok(sp) = StorePath::from_base_name(base) else {
            scan.other_entries += 1;
            continue;
        };
        let wanted = files.is_some_and(|f| f.paths.contains(&sp));
        if wanted {
            let header = entry.header();
            let file = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let executable = header.mode().unwrap_or(0) & 0o111 != 0;
                    let mut h = HashReader::new(&mut entry);
                    let mut rewritten = RefRewriter::new(&rewrite);
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = h.read(&mut buf).with_context(|| format!("reading {raw_path}"))?;
                        if n == 0 {
                            break;
                        }
                        rewritten.update(&buf[..n]);
                    }
                    let (size, digest) = h.finish();
                    let sha256 = digest.hex().to_owned();
                    let (sha256_rewritten, rewritten_refs) = rewritten.finish();
                    let sha256_rewritten = sha256_rewritten.filter(|r| *r != sha256);
                    FileEntry::File { size, sha256, executable, sha256_rewritten, rewritten_refs }
                }
                tar::EntryType::Directory => FileEntry::Dir,
                tar::EntryType::Symlink => FileEntry::Symlink {
                    target: entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default(),
                },
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| normalise(&String::from_utf8_lossy(&t)).to_owned())
                        .unwrap_or_default();
                    by_path.get(&target).cloned().unwrap_or(FileEntry::Other)
                }
                _ => FileEntry::Other,
            };
            if matches!(file, FileEntry::File { .. }) {
                by_path.insert(path.to_owned(), file.clone());
            }
            scan.files.entry(sp.clone()).or_default().insert(inner.trim_end_matches('/').to_owned(), file);
        }
        scan.paths.insert(sp);
    }
    if let Some(end) = ar.into_inner().ended_at.filter(|e| *e < data_end.0) {
        bail!("the tar ends inside {}: {} byte(s) of its data are missing", data_end.1, data_end.0 - end);
    }
    Ok(scan)
}

/// `./nix/store/x/` → `nix/store/x`.
pub(crate) fn normalise(p: &str) -> &str {
    let mut p = p;
    loop {
        let next = p.trim_start_matches('/').trim_start_matches("./");
        if next.len() == p.len() {
            break;
        }
        p = next;
    }
    p.trim_end_matches('/')
}

/// Supplies the end of a tar that stops right after its last entry's data: the zero padding to the
/// next 512-byte block and the two zero blocks that end an archive (umoci 0.4 `insert` writes such
/// layers; Go's and GNU tar's readers fail on them, umoci and podman accept them). The bytes are
/// not hashed: the diff_id still covers exactly what the layer holds. [`read_entries`] checks
/// that the real bytes did not end inside an entry's data.
pub(crate) struct LenientEnd<R> {
    inner: R,
    pos: u64,
    /// Where `inner` ended, once it has.
    ended_at: Option<u64>,
    /// Zeros left to supply once `inner` has ended.
    zeros: Option<u64>,
}

impl<R: Read> LenientEnd<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, pos: 0, ended_at: None, zeros: None }
    }
}

impl<R: Read> Read for LenientEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.zeros.is_none() {
            let n = self.inner.read(buf)?;
            self.pos += n as u64;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.ended_at = Some(self.pos);
            self.zeros = Some((512 - self.pos % 512) % 512 + 1024);
        }
        let left = self.zeros.get_or_insert(0);
        let n = (*left).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}

/// Old store path → its replacement, for [`RefRewriter`]: keyed by the old hash part; the old
/// `-<name>` that normally follows it, and the new `<hash>-<name>`.
type RewriteMap = BTreeMap<[u8; 32], (Vec<u8>, Vec<u8>)>;

fn rewrite_map(rewrite: &BTreeMap<String, String>) -> RewriteMap {
    rewrite
        .iter()
        .filter_map(|(o, n)| {
            let (hash, name) = o.split_at_checked(32)?;
            Some((hash.as_bytes().try_into().ok()?, (name.as_bytes().to_vec(), n.as_bytes().to_vec())))
        })
        .collect()
}

/// Hashes a stream with references rewritten: `/nix/store/<old hash>-<old name>` becomes
/// `/nix/store/<new hash>-<new name>` (just the hash when the old name does not follow), across
/// chunk boundaries. Idle (and free) when there is nothing to rewrite.
struct RefRewriter<'a> {
    map: &'a RewriteMap,
    hasher: Sha256,
    /// Bytes not hashed yet: a possible match may straddle the next chunk.
    pending: Vec<u8>,
    /// Old hash parts found (and rewritten).
    matched: BTreeSet<[u8; 32]>,
}

impl<'a> RefRewriter<'a> {
    fn new(map: &'a RewriteMap) -> Self {
        Self { map, hasher: Sha256::new(), pending: Vec::new(), matched: BTreeSet::new() }
    }

    fn update(&mut self, chunk: &[u8]) {
        if self.map.is_empty() {
            return;
        }
        self.pending.extend_from_slice(chunk);
        self.process(false);
    }

    /// Hashes what can be decided of `pending`; at the end of the stream (`last`), all of it.
    fn process(&mut self, last: bool) {
        let buf = &self.pending;
        let p = REFERENCE_PREFIX.len();
        // `scan`: where to look for the next prefix; `done`: bytes of `buf` already hashed.
        let (mut scan, mut done) = (0, 0);
        let mut hold = None;
        while let Some(at) = reference_finder().find(&buf[scan..]) {
            let m = scan + at;
            let start = m + p;
            if start + 32 > buf.len() {
                hold = Some(m);
                break;
            }
            let Some((key, (old_name, new))) = self.map.get_key_value(&buf[start..start + 32]) else {
                scan = start;
                continue;
            };
            let after = &buf[start + 32..];
            if !last && after.len() < old_name.len() && old_name.starts_with(after) {
                // Cannot tell yet whether the old name follows.
                hold = Some(m);
                break;
            }
            self.hasher.update(&buf[done..start]);
            if after.starts_with(old_name) {
                self.hasher.update(new);
                done = start + 32 + old_name.len();
            } else {
                self.hasher.update(&new[..32]);
                done = start + 32;
            }
            self.matched.insert(*key);
            scan = done;
        }
        // Without a pending match, keep only the last bytes that could begin a prefix cut by the
        // end of the chunk.
        let upto = match (last, hold) {
            (true, _) => buf.len(),
            (false, Some(m)) => m,
            (false, None) => scan.max(buf.len().saturating_sub(p - 1)),
        }
        .max(done);
        self.hasher.update(&buf[done..upto]);
        self.pending.drain(..upto);
    }

    /// The rewritten content's hash if anything was rewritten, and the old hash parts found.
    fn finish(mut self) -> (Option<String>, BTreeSet<String>) {
        if self.map.is_empty() {
            return (None, BTreeSet::new());
        }
        self.process(true);
        let found = self.matched.iter().map(|h| String::from_utf8_lossy(h).into_owned()).collect();
        ((!self.matched.is_empty()).then(|| hex::encode(self.hasher.finalize())), found)
    }
}

/// The human report: a summary, the run config, then a table of layers.
pub fn write_text<W: Write>(ins: &Inspection, w: &mut W) -> io::Result<()> {
    let mut head = Table::new(&[("", Align::Left), ("", Align::Left)]);
    let mut kv = |k: &str, v: String| head.row(vec![k.to_owned(), v]);
    kv("IMAGE", ins.reference.clone());
    kv("MANIFEST", ins.manifest_digest.to_string());
    kv("CONFIG", ins.config_digest.to_string());
    kv("PLATFORM", ins.platform.clone());
    if let Some(c) = &ins.created {
        kv("CREATED", c.clone());
    }
    for (k, v) in config_lines(&ins.config) {
        kv(k, v);
    }
    let (base_name, base_digest) = (
        ins.annotations.get(crate::image::ANNOTATION_BASE_NAME),
        ins.annotations.get(crate::image::ANNOTATION_BASE_DIGEST),
    );
    if base_name.is_some() || base_digest.is_some() {
        let parts: Vec<&str> = [base_name, base_digest].into_iter().flatten().map(String::as_str).collect();
        kv("BASE", format!("{} (its layers: group base)", parts.join(" ")));
    }
    if !ins.annotations.is_empty() {
        kv("ANNOTATIONS", ins.annotations.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n"));
    }
    kv("SIZE", format!("{} in {} layer(s)", human_size(ins.compressed_size), ins.layers.len()));
    write_kv(&head, w)?;
    writeln!(w)?;
    let mut t = Table::new(&[
        ("#", Align::Right),
        ("DIGEST", Align::Left),
        ("SIZE", Align::Right),
        ("UNPACKED", Align::Right),
        ("TYPE", Align::Left),
        ("GROUP", Align::Left),
        ("STORE PATHS", Align::Left),
    ]);
    for (i, l) in ins.layers.iter().enumerate() {
        let mut paths: Vec<String> = l.paths.iter().map(StorePath::full).collect();
        paths.extend(l.whiteouts.iter().map(|p| format!("(deletes {p})")));
        if l.opaque_store {
            paths.push("(hides every store path below)".to_owned());
        }
        if let Some(n) = l.other_entries.filter(|n| *n > 0) {
            paths.push(format!("(+{n} entries outside /nix/store)"));
        }
        if paths.is_empty() {
            paths.push("-".to_owned());
        }
        t.row(vec![
            (i + 1).to_string(),
            short_digest(l.digest.as_str()).to_owned(),
            human_size(l.size),
            l.unpacked_size.map_or_else(|| "-".to_owned(), human_size),
            match &l.chunked {
                Some(c) => {
                    format!("{}:chunked\n{} files, {} chunks", short_media_type(&l.media_type), c.files, c.chunks)
                }
                None => short_media_type(&l.media_type).to_owned(),
            },
            l.group.clone().unwrap_or_else(|| "-".to_owned()),
            paths.join("\n"),
        ]);
    }
    t.write(w, 0)?;
    if ins.layers.iter().any(|l| l.unpacked_size.is_none()) {
        writeln!(w, "\n(UNPACKED is known for layers that were read: use --read-layers to read them all.)")?;
    }
    Ok(())
}

/// A key/value table without its (empty) header line.
pub(crate) fn write_kv<W: Write>(t: &Table, w: &mut W) -> io::Result<()> {
    let mut buf = Vec::new();
    t.write(&mut buf, 0)?;
    let text = String::from_utf8_lossy(&buf);
    for line in text.lines().skip(1) {
        writeln!(w, "{line}")?;
    }
    Ok(())
}

/// The run config as `(KEY, value)` lines; lists one item per line.
pub(crate) fn config_lines(c: &RunConfig) -> Vec<(&'static str, String)> {
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    let mut out = vec![("ENTRYPOINT", json(&c.entrypoint)), ("CMD", json(&c.cmd))];
    out.push(("ENV", if c.env.is_empty() { "-".to_owned() } else { c.env.join("\n") }));
    out.push(("USER", c.user.clone().unwrap_or_else(|| "-".to_owned())));
    out.push(("WORKDIR", c.workdir.clone().unwrap_or_else(|| "-".to_owned())));
    let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push(("LABELS", if labels.is_empty() { "-".to_owned() } else { labels.join("\n") }));
    out.push(("PORTS", if c.exposed_ports.is_empty() { "-".to_owned() } else { c.exposed_ports.join(" ") }));
    out
}

/// `application/vnd.oci.image.layer.v1.tar+gzip` → `tar+gzip`.
pub fn short_media_type(m: &str) -> &str {
    m.rfind(".tar").map_or(m, |i| &m[i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o555 } else { 0o444 });
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    const A: &str = "0c7mkyx2ra1ph9nd61mcvy0kh8lsaxhr-foo-1.0";
    const B: &str = "1c7mkyx2ra1ph9nd61mcvy0kh8lsaxhr-bar";

    #[test]
    fn store_paths_and_files_come_from_tar_headers() {
        use tar::EntryType::*;
        let bytes = tar_of(&[
            ("./nix/", Directory, b"", ""),
            ("nix/store/", Directory, b"", ""),
            (&format!("nix/store/{A}/"), Directory, b"", ""),
            (&format!("nix/store/{A}/bin/foo"), Regular, b"hello", ""),
            (&format!("nix/store/{A}/bin/bar"), Link, b"", &format!("nix/store/{A}/bin/foo")),
            (&format!("nix/store/{A}/lib"), Symlink, b"", "bin"),
            (&format!("nix/store/{B}"), Regular, b"x", ""),
            ("nix/store/.wh.2c7mkyx2ra1ph9nd61mcvy0kh8lsaxhr-gone", Regular, b"", ""),
            ("etc/passwd", Regular, b"root", ""),
            ("nix/store/not-a-store-path", Regular, b"", ""),
        ]);
        let want: BTreeSet<StorePath> = [StorePath::from_base_name(A).unwrap()].into();
        let none = BTreeMap::new();
        let scan = read_entries(&bytes[..], Some(&FileScan { paths: &want, rewrite: &none })).unwrap();
        let names: Vec<&str> = scan.paths.iter().map(StorePath::name).collect();
        assert_eq!(names, ["foo-1.0", "bar"]);
        assert_eq!(scan.other_entries, 2);
        assert_eq!(scan.whiteouts.iter().map(StorePath::name).collect::<Vec<_>>(), ["gone"]);
        let files = &scan.files[&want.iter().next().unwrap().clone()];
        assert_eq!(files.keys().collect::<Vec<_>>(), ["", "bin/bar", "bin/foo", "lib"]);
        assert_eq!(files["bin/foo"], files["bin/bar"], "a hardlink has its target's content");
        assert_eq!(files["bin/foo"].size(), 5);
        assert_eq!(files["lib"], FileEntry::Symlink { target: "bin".into() });
        assert!(!scan.files.contains_key(&StorePath::from_base_name(B).unwrap()));
    }

    /// Hashes `chunks` through a rewriter; the rewritten content's hash, if any.
    fn rewritten(map: &RewriteMap, chunks: &[&[u8]]) -> Option<String> {
        let mut r = RefRewriter::new(map);
        for c in chunks {
            r.update(c);
        }
        r.finish().0
    }

    #[test]
    fn references_are_rewritten_across_chunk_boundaries() {
        let (a, b, c) = ("a".repeat(32), "b".repeat(32), "c".repeat(32));
        let map = rewrite_map(&BTreeMap::from([(format!("{a}-dep-1.0"), format!("{b}-dep-1.10"))]));
        let old = format!("x /nix/store/{a}-dep-1.0/lib y /nix/store/{c}-z /nix/store/{a}");
        let new = format!("x /nix/store/{b}-dep-1.10/lib y /nix/store/{c}-z /nix/store/{b}");
        let want = hex::encode(Sha256::digest(new.as_bytes()));
        let b = old.as_bytes();
        for cut in 0..b.len() {
            assert_eq!(rewritten(&map, &[&b[..cut], &b[cut..]]).as_deref(), Some(want.as_str()), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(rewritten(&map, &bytes).as_deref(), Some(want.as_str()), "byte by byte");
        assert_eq!(rewritten(&map, &[b"no store path here /nix/sto"]), None);
        assert_eq!(rewritten(&BTreeMap::new(), &[b]), None);
    }

    #[test]
    fn a_tar_without_its_end_blocks_reads() {
        let bytes = tar_of(&[(&format!("nix/store/{A}/x"), tar::EntryType::Regular, b"1234567", "")]);
        let cut = &bytes[..512 + 7];
        let scan = read_entries(cut, None).unwrap();
        assert_eq!(scan.paths.len(), 1);
        assert!(read_entries(&bytes[..512 + 3], None).is_err(), "cut inside an entry");
    }

    #[test]
    fn media_types_shorten() {
        assert_eq!(short_media_type("application/vnd.oci.image.layer.v1.tar+gzip"), "tar+gzip");
        assert_eq!(short_media_type("application/vnd.oci.image.layer.v1.tar"), "tar");
        assert_eq!(short_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"), "tar.gzip");
        assert_eq!(normalise("./nix/store/x/"), "nix/store/x");
        assert_eq!(normalise("/./a"), "a");
    }
}
