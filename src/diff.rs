//! `nixoci diff OLD NEW`: what changed between two images, what a node holding OLD must download
//! to get NEW, and why — which store paths moved.
//!
//! Definitions:
//! - **Layers** are compared by digest: *shared* (NEW's layers OLD also has, in NEW's order),
//!   *added* (NEW's layers OLD lacks), *removed* (OLD's layers NEW lacks). An added layer whose
//!   store paths all exist, unchanged, in OLD changed *only because the grouping moved a path*
//!   (*regrouped*). An added and a removed layer with the same diff_id hold the same tar,
//!   differently compressed (*recompressed*).
//! - **Download bytes**: the compressed sizes of NEW's layers OLD lacks, each distinct blob once;
//!   config and manifest are not counted. NEW's total is the same sum over all its layers.
//! - **Store paths** present in only one image are paired by name without the hash: first by the
//!   whole name (same name, new hash: "a dependency changed"), then by (name, output suffix) and by
//!   name alone, where the name/version split is Nix's `parseDrvName` ([`drv_name`]), when exactly
//!   one old and one new path share the key. What stays unpaired is added or removed.
//! - **Config**: entrypoint, cmd, env (per variable), user, workdir, labels (per key), exposed
//!   ports, platform and creation date.
//! - **Files** (`--files`): for each changed pair, the layers that hold the old and the new path are
//!   streamed (only those) and their files compared by type, size, SHA-256, executable bit and
//!   symlink target. Old files are also hashed with references to changed paths rewritten
//!   (`/nix/store/<old>` → `/nix/store/<new>`), so a file that differs only in those references is
//!   reported as such (`references`). A same-version path that refers to another changed path
//!   "had a dependency change"; one that refers to none "had its own content change"; without
//!   `--files` the former is assumed (the usual case in a Nix closure).
//!
//! Nothing here reads a layer unless it must: nixoci's annotations give store paths for free; other
//! images' layers are read once for their tar headers (see [`crate::inspect`]).

pub mod html;
mod text;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde::Serialize;

use crate::blob::Digest;
use crate::closure::StorePath;
use crate::image::{ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME};
use crate::inspect::{
    FileEntry, FileScan, FileTree, InspectOptions, Inspection, LayerInfo, RunConfig, inspect, scan_layer,
};
use crate::progress::Reporter;
use crate::transport::source::SourceImage;

pub use text::write_text;

/// Options of [`diff`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    /// Compare the files of changed store paths.
    pub files: bool,
}

/// The difference between two images.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub old: ImageSide,
    pub new: ImageSide,
    /// Same config and the same layers in the same order.
    pub identical: bool,
    /// What a node holding OLD downloads to get NEW.
    pub download_bytes: u64,
    /// What a node holding nothing downloads to get NEW.
    pub new_total_bytes: u64,
    /// When NEW's added layers include zstd:chunked ones: what a partial pull fetches instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_pull: Option<PartialPull>,
    pub layers: LayerDiff,
    pub paths: PathDiff,
    pub config: Vec<ConfigChange>,
    /// The two images as inspected (for the reports).
    #[serde(skip)]
    pub old_image: Inspection,
    #[serde(skip)]
    pub new_image: Inspection,
}

/// Estimates of what a node holding OLD fetches to get NEW's added layers with partial pulls
/// (podman with `enable_partial_images`): for each chunked layer its TOC plus the frames of what
/// OLD's chunked layers lack; other added layers whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartialPull {
    /// Added layers that are zstd:chunked.
    pub chunked_layers: usize,
    /// Fetching every file whose content digest OLD lacks.
    pub by_files_bytes: u64,
    /// Fetching every chunk whose digest OLD lacks (podman 4.3 also reuses the unchanged chunks
    /// of a changed file): the closer estimate, as long as a layer needs no more than 1,024
    /// ranges. Past that containers/storage merges neighbouring ranges and fetches what lies
    /// between them too; podman 4.3.1 counts the chunks it copies locally among them, so a layer
    /// of 64 KiB chunks (podman's own writer) can cost most of its size. nixoci's chunks keep
    /// the count low (the comfyui closure after a rebuilt interpreter: 102 MB estimated, 106 MB
    /// fetched).
    pub by_chunks_bytes: u64,
}

fn partial_pull(old: &Inspection, new: &Inspection, added: &[LayerRef]) -> Option<PartialPull> {
    let have: std::collections::HashSet<&str> =
        old.layers.iter().filter_map(|l| l.chunked_contents.as_ref()).flat_map(|c| c.digests()).collect();
    let mut seen = BTreeSet::new();
    let mut p = PartialPull { chunked_layers: 0, by_files_bytes: 0, by_chunks_bytes: 0 };
    for a in added.iter().filter(|a| seen.insert(&a.digest)) {
        match new.layers.iter().find(|l| l.digest == a.digest).and_then(|l| l.chunked_contents.as_ref()) {
            Some(c) => {
                let (files, chunks) = c.missing(&have);
                p.chunked_layers += 1;
                p.by_files_bytes += files;
                p.by_chunks_bytes += chunks;
            }
            None => {
                p.by_files_bytes += a.size;
                p.by_chunks_bytes += a.size;
            }
        }
    }
    (p.chunked_layers > 0).then_some(p)
}

/// One side of the diff, in brief.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSide {
    pub reference: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub platform: String,
    pub layer_count: usize,
    pub total_bytes: u64,
}

/// A layer of one of the images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerRef {
    /// Position in its image (0 = bottom).
    pub index: usize,
    pub digest: Digest,
    pub size: u64,
    pub group: Option<String>,
    pub paths: Vec<StorePath>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerDiff {
    /// NEW's layers that OLD has too (positions in NEW).
    pub shared: Vec<LayerRef>,
    /// NEW's layers that OLD lacks.
    pub added: Vec<LayerRef>,
    /// OLD's layers that NEW lacks.
    pub removed: Vec<LayerRef>,
    /// Added layers that changed only because the grouping moved store paths.
    pub regrouped: Vec<Regrouped>,
    /// Removed layers whose store paths all live on, unchanged, in other layers of NEW.
    pub regrouped_removed: Vec<Digest>,
    /// Added layers holding the same tar as a removed one, compressed differently.
    pub recompressed: Vec<Recompressed>,
}

/// What happened to a layer between OLD and NEW — decided here once, drawn by both reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerStatus {
    /// Both images have it.
    Shared,
    /// Only NEW has it.
    Added,
    /// Only NEW has it, but its store paths are all in OLD, unchanged: the grouping moved them.
    AddedRegrouped,
    /// Only NEW has it, but it holds the same tar as a layer of OLD, compressed differently.
    AddedRecompressed,
    /// Only OLD has it.
    Removed,
    /// Only OLD has it, and its store paths all live on, unchanged, in other layers of NEW.
    RemovedRegrouped,
}

impl LayerStatus {
    /// The words the reports show.
    pub fn label(self) -> &'static str {
        match self {
            LayerStatus::Shared => "shared",
            LayerStatus::Added => "added",
            LayerStatus::AddedRegrouped => "added (regrouped)",
            LayerStatus::AddedRecompressed => "added (recompressed)",
            LayerStatus::Removed => "removed",
            LayerStatus::RemovedRegrouped => "removed (regrouped)",
        }
    }

    /// Its colour class: shared, changed (only one image has it), regrouped, recompressed.
    pub fn class(self) -> &'static str {
        match self {
            LayerStatus::Shared => "shared",
            LayerStatus::Added | LayerStatus::Removed => "changed",
            LayerStatus::AddedRegrouped | LayerStatus::RemovedRegrouped => "regrouped",
            LayerStatus::AddedRecompressed => "recompressed",
        }
    }
}

impl Diff {
    /// The status of the layer `digest` of NEW (`in_new`) or of OLD.
    pub fn layer_status(&self, in_new: bool, digest: &Digest) -> LayerStatus {
        let other = if in_new { &self.old_image } else { &self.new_image };
        let l = &self.layers;
        if other.layers.iter().any(|o| o.digest == *digest) {
            LayerStatus::Shared
        } else if !in_new {
            if l.regrouped_removed.contains(digest) { LayerStatus::RemovedRegrouped } else { LayerStatus::Removed }
        } else if l.regrouped.iter().any(|r| r.digest == *digest) {
            LayerStatus::AddedRegrouped
        } else if l.recompressed.iter().any(|r| r.new == *digest) {
            LayerStatus::AddedRecompressed
        } else {
            LayerStatus::Added
        }
    }

    /// The rows of the layers table: NEW's shared and added layers, then OLD's removed ones.
    pub fn layer_rows(&self) -> impl Iterator<Item = (LayerStatus, &LayerRef)> {
        let l = &self.layers;
        let new = l.shared.iter().chain(&l.added).map(|x| (self.layer_status(true, &x.digest), x));
        new.chain(l.removed.iter().map(|x| (self.layer_status(false, &x.digest), x)))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Regrouped {
    /// The added layer.
    pub digest: Digest,
    pub group: Option<String>,
    /// Its store paths, all present unchanged in OLD.
    pub paths: Vec<StorePath>,
    /// The OLD layers that held them.
    pub moved_from: Vec<Digest>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recompressed {
    pub old: Digest,
    pub new: Digest,
    pub diff_id: Digest,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PathDiff {
    pub added: Vec<StorePath>,
    pub removed: Vec<StorePath>,
    pub changed: Vec<ChangedPath>,
    /// Store paths in both images.
    pub unchanged: usize,
}

/// A store path replaced by another of the same name.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedPath {
    /// The name without hash and version (`python3.14-diffusers`).
    pub name: String,
    pub old: StorePath,
    pub new: StorePath,
    pub old_version: Option<String>,
    pub new_version: Option<String>,
    pub change: Change,
    /// Why a same-version path got a new hash, when `--files` could tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// With `--files`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FileDiff>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// The version changed.
    Version,
    /// Same name and version, another hash: an input (usually a dependency) changed.
    SameVersionNewHash,
}

/// Why a store path of the same name and version has a new hash (known with `--files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// It refers to another changed store path (its files may differ beyond those references
    /// too: a build ID, say).
    Dependency,
    /// It refers to no other changed store path: its own inputs changed.
    Content,
}

impl ChangedPath {
    /// `0.31.0 → 0.32.0`, or `same version, new hash (a dependency changed)`.
    pub fn describe(&self) -> String {
        match self.change {
            Change::Version => {
                let v = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_owned());
                format!("{} → {}", v(&self.old_version), v(&self.new_version))
            }
            Change::SameVersionNewHash if self.cause == Some(Cause::Content) => {
                "same version, new hash (its own content changed)".to_owned()
            }
            Change::SameVersionNewHash => "same version, new hash (a dependency changed)".to_owned(),
        }
    }
}

/// A changed config field. Absent values are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigChange {
    /// `entrypoint`, `cmd`, `env PATH`, `user`, `workdir`, `label KEY`, `exposed port 80/tcp`,
    /// `platform`, `created`, `base image` (`build --from`: its name and manifest digest).
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The files of a changed store path that differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    pub added: Vec<FileChange>,
    pub removed: Vec<FileChange>,
    pub modified: Vec<FileChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// Inside the store path; `""` is the store path itself.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_size: Option<u64>,
    /// For modified entries: `content`, `type`, `executable bit` or `symlink target`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
}

/// Compares two opened images.
pub fn diff(old: &SourceImage, new: &SourceImage, opts: &DiffOptions, reporter: &dyn Reporter) -> Result<Diff> {
    let old_image = inspect(old, &InspectOptions::default(), reporter)?;
    let new_image = inspect(new, &InspectOptions::default(), reporter)?;
    let mut d = compare(old_image, new_image);
    if opts.files && !d.paths.changed.is_empty() {
        add_file_diffs(old, new, &mut d, reporter)?;
    }
    Ok(d)
}

/// Everything but the file-level diff: a pure function of the two inspections.
pub fn compare(old_image: Inspection, new_image: Inspection) -> Diff {
    let old_paths = old_image.store_paths();
    let new_paths = new_image.store_paths();
    let layers = layer_diff(&old_image, &new_image, &old_paths, &new_paths);
    let mut seen = BTreeSet::new();
    let download_bytes = layers.added.iter().filter(|l| seen.insert(&l.digest)).map(|l| l.size).sum();
    let partial_pull = partial_pull(&old_image, &new_image, &layers.added);
    let paths = path_diff(&old_paths, &new_paths);
    let mut config = config_diff(&old_image.config, &new_image.config);
    let mut field = |name: &str, o: Option<String>, n: Option<String>| {
        if o != n {
            config.push(ConfigChange { field: name.to_owned(), old: o, new: n });
        }
    };
    field("platform", Some(old_image.platform.clone()), Some(new_image.platform.clone()));
    field("created", old_image.created.clone(), new_image.created.clone());
    // `build --from`: the base moved (a new digest under the same or another name).
    let base = |i: &Inspection| {
        let a = &i.annotations;
        let (name, digest) = (a.get(ANNOTATION_BASE_NAME), a.get(ANNOTATION_BASE_DIGEST));
        (name.is_some() || digest.is_some())
            .then(|| format!("{} {}", name.map_or("-", String::as_str), digest.map_or("-", String::as_str)))
    };
    field("base image", base(&old_image), base(&new_image));
    let digests = |i: &Inspection| i.layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>();
    let identical = old_image.config_digest == new_image.config_digest && digests(&old_image) == digests(&new_image);
    let side = |i: &Inspection| ImageSide {
        reference: i.reference.clone(),
        manifest_digest: i.manifest_digest.clone(),
        config_digest: i.config_digest.clone(),
        platform: i.platform.clone(),
        layer_count: i.layers.len(),
        total_bytes: i.compressed_size,
    };
    Diff {
        old: side(&old_image),
        new: side(&new_image),
        identical,
        download_bytes,
        new_total_bytes: new_image.compressed_size,
        partial_pull,
        layers,
        paths,
        config,
        old_image,
        new_image,
    }
}

fn layer_ref(index: usize, l: &LayerInfo) -> LayerRef {
    LayerRef { index, digest: l.digest.clone(), size: l.size, group: l.group.clone(), paths: l.paths.clone() }
}

fn layer_diff(
    old: &Inspection,
    new: &Inspection,
    old_paths: &BTreeMap<StorePath, Vec<usize>>,
    new_paths: &BTreeMap<StorePath, Vec<usize>>,
) -> LayerDiff {
    let old_digests: BTreeSet<&Digest> = old.layers.iter().map(|l| &l.digest).collect();
    let new_digests: BTreeSet<&Digest> = new.layers.iter().map(|l| &l.digest).collect();
    let mut d = LayerDiff::default();
    for (i, l) in new.layers.iter().enumerate() {
        if old_digests.contains(&l.digest) {
            d.shared.push(layer_ref(i, l));
        } else {
            d.added.push(layer_ref(i, l));
        }
    }
    for (i, l) in old.layers.iter().enumerate() {
        if !new_digests.contains(&l.digest) {
            d.removed.push(layer_ref(i, l));
        }
    }
    let removed_by_diff_id: BTreeMap<&Digest, &Digest> =
        d.removed.iter().filter_map(|r| old.layers[r.index].diff_id.as_ref().map(|id| (id, &r.digest))).collect();
    let recompressed_old: BTreeSet<&Digest> = removed_by_diff_id
        .iter()
        .filter(|(id, _)| d.added.iter().any(|a| new.layers[a.index].diff_id.as_ref() == Some(**id)))
        .map(|(_, dg)| *dg)
        .collect();
    for r in &d.removed {
        if !r.paths.is_empty()
            && r.paths.iter().all(|p| new_paths.contains_key(p))
            && !recompressed_old.contains(&r.digest)
        {
            d.regrouped_removed.push(r.digest.clone());
        }
    }
    for a in &d.added {
        let l = &new.layers[a.index];
        if let Some((id, old_digest)) = l.diff_id.as_ref().and_then(|id| removed_by_diff_id.get(id).map(|o| (id, *o))) {
            d.recompressed.push(Recompressed { old: old_digest.clone(), new: a.digest.clone(), diff_id: id.clone() });
            continue;
        }
        let unchanged = |p: &StorePath| old_paths.contains_key(p) && new_paths.contains_key(p);
        if !a.paths.is_empty() && a.paths.iter().all(unchanged) {
            let from: BTreeSet<&Digest> =
                a.paths.iter().flat_map(|p| old_paths[p].iter().map(|&i| &old.layers[i].digest)).collect();
            d.regrouped.push(Regrouped {
                digest: a.digest.clone(),
                group: a.group.clone(),
                paths: a.paths.clone(),
                moved_from: from.into_iter().cloned().collect(),
            });
        }
    }
    d
}

/// Nix's `parseDrvName`: the version starts after the first `-` that is followed by a character
/// other than a letter (`python3.14-diffusers-0.31.0` → (`python3.14-diffusers`, `0.31.0`)).
pub fn drv_name(name: &str) -> (&str, Option<&str>) {
    let b = name.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'-' && i + 1 < b.len() && !b[i + 1].is_ascii_alphabetic() {
            return (&name[..i], Some(&name[i + 1..]));
        }
    }
    (name, None)
}

/// The output suffix of a version (`1.0-dev` → `dev`), if its last `-` part starts with a letter.
fn output_suffix(version: Option<&str>) -> &str {
    match version.and_then(|v| v.rsplit_once('-')) {
        Some((_, s)) if s.starts_with(|c: char| c.is_ascii_alphabetic()) => s,
        _ => "",
    }
}

fn path_diff(old: &BTreeMap<StorePath, Vec<usize>>, new: &BTreeMap<StorePath, Vec<usize>>) -> PathDiff {
    let mut old_only: Vec<StorePath> = old.keys().filter(|p| !new.contains_key(*p)).cloned().collect();
    let mut new_only: Vec<StorePath> = new.keys().filter(|p| !old.contains_key(*p)).cloned().collect();
    let unchanged = old.len() - old_only.len();
    let mut pairs: Vec<(StorePath, StorePath)> = Vec::new();
    // 1. The same whole name: several of them pair in path order.
    pair_by(&mut old_only, &mut new_only, &mut pairs, |p| p.name().to_owned(), false);
    // 2. The same name and output suffix, then 3. the same name: only where one meets one.
    pair_by(
        &mut old_only,
        &mut new_only,
        &mut pairs,
        |p| {
            let (n, v) = drv_name(p.name());
            format!("{n}\0{}", output_suffix(v))
        },
        true,
    );
    pair_by(&mut old_only, &mut new_only, &mut pairs, |p| drv_name(p.name()).0.to_owned(), true);
    let mut changed: Vec<ChangedPath> = pairs
        .into_iter()
        .map(|(o, n)| {
            let (name, ov) = drv_name(o.name());
            let (_, nv) = drv_name(n.name());
            let change = if o.name() == n.name() { Change::SameVersionNewHash } else { Change::Version };
            ChangedPath {
                name: name.to_owned(),
                old_version: ov.map(str::to_owned),
                new_version: nv.map(str::to_owned),
                old: o,
                new: n,
                change,
                cause: None,
                files: None,
            }
        })
        .collect();
    changed.sort_by(|a, b| (&a.name, &a.old).cmp(&(&b.name, &b.old)));
    PathDiff { added: new_only, removed: old_only, changed, unchanged }
}

/// Moves pairs with equal keys from `old`/`new` into `pairs`. With `one_to_one`, only keys held by
/// exactly one path on each side pair.
fn pair_by(
    old: &mut Vec<StorePath>,
    new: &mut Vec<StorePath>,
    pairs: &mut Vec<(StorePath, StorePath)>,
    key: impl Fn(&StorePath) -> String,
    one_to_one: bool,
) {
    let group = |v: &[StorePath]| {
        let mut m: BTreeMap<String, Vec<StorePath>> = BTreeMap::new();
        for p in v {
            m.entry(key(p)).or_default().push(p.clone());
        }
        m
    };
    let (old_by, new_by) = (group(old), group(new));
    let mut taken: BTreeSet<StorePath> = BTreeSet::new();
    for (k, os) in &old_by {
        let Some(ns) = new_by.get(k) else { continue };
        if one_to_one && (os.len() != 1 || ns.len() != 1) {
            continue;
        }
        for (o, n) in os.iter().zip(ns) {
            taken.insert(o.clone());
            taken.insert(n.clone());
            pairs.push((o.clone(), n.clone()));
        }
    }
    old.retain(|p| !taken.contains(p));
    new.retain(|p| !taken.contains(p));
}

fn config_diff(old: &RunConfig, new: &RunConfig) -> Vec<ConfigChange> {
    let mut out = Vec::new();
    let mut push = |field: String, o: Option<String>, n: Option<String>| {
        if o != n {
            out.push(ConfigChange { field, old: o, new: n });
        }
    };
    let list = |v: &[String]| (!v.is_empty()).then(|| serde_json::to_string(v).unwrap_or_default());
    push("entrypoint".into(), list(&old.entrypoint), list(&new.entrypoint));
    push("cmd".into(), list(&old.cmd), list(&new.cmd));
    let env = |v: &[String]| -> BTreeMap<String, String> {
        v.iter()
            .map(|e| e.split_once('=').map_or((e.clone(), String::new()), |(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    };
    for (k, o, n) in merge(&env(&old.env), &env(&new.env)) {
        push(format!("env {k}"), o, n);
    }
    push("user".into(), old.user.clone(), new.user.clone());
    push("workdir".into(), old.workdir.clone(), new.workdir.clone());
    for (k, o, n) in merge(&old.labels, &new.labels) {
        push(format!("label {k}"), o, n);
    }
    let ports = |v: &[String]| v.iter().map(|p| (p.clone(), p.clone())).collect::<BTreeMap<_, _>>();
    for (k, o, n) in merge(&ports(&old.exposed_ports), &ports(&new.exposed_ports)) {
        push(format!("exposed port {k}"), o, n);
    }
    out
}

/// Every key of either map with its value on each side.
fn merge(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<(String, Option<String>, Option<String>)> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().map(|k| (k.clone(), a.get(k).cloned(), b.get(k).cloned())).collect()
}

/// Streams the layers that hold changed paths (only those) and compares their files.
fn add_file_diffs(old: &SourceImage, new: &SourceImage, d: &mut Diff, reporter: &dyn Reporter) -> Result<()> {
    let rewrite: BTreeMap<String, String> =
        d.paths.changed.iter().map(|c| (c.old.base_name().to_owned(), c.new.base_name().to_owned())).collect();
    let old_paths: BTreeSet<StorePath> = d.paths.changed.iter().map(|c| c.old.clone()).collect();
    let new_paths: BTreeSet<StorePath> = d.paths.changed.iter().map(|c| c.new.clone()).collect();
    let none = BTreeMap::new();
    let old_trees = trees(old, &d.old_image, &FileScan { paths: &old_paths, rewrite: &rewrite }, reporter)?;
    let new_trees = trees(new, &d.new_image, &FileScan { paths: &new_paths, rewrite: &none }, reporter)?;
    let empty = FileTree::new();
    for c in &mut d.paths.changed {
        let o = old_trees.get(&c.old).unwrap_or(&empty);
        let n = new_trees.get(&c.new).unwrap_or(&empty);
        let files = compare_trees(o, n, &rewrite);
        if c.change == Change::SameVersionNewHash {
            // A dependency changed when the path refers to another changed path.
            let refers = changed_refs(o, &rewrite).into_iter().any(|h| h != c.old.hash_part());
            c.cause = Some(if refers { Cause::Dependency } else { Cause::Content });
        }
        c.files = Some(files);
    }
    Ok(())
}

/// The file trees of `wanted` store paths, reading each layer that holds one of them once.
fn trees(
    img: &SourceImage,
    ins: &Inspection,
    scan: &FileScan<'_>,
    reporter: &dyn Reporter,
) -> Result<BTreeMap<StorePath, FileTree>> {
    let all = ins.store_paths();
    let mut by_layer: BTreeMap<usize, BTreeSet<StorePath>> = BTreeMap::new();
    for p in scan.paths {
        for &i in all.get(p).into_iter().flatten() {
            by_layer.entry(i).or_default().insert(p.clone());
        }
    }
    let mut out: BTreeMap<StorePath, FileTree> = BTreeMap::new();
    for (i, want) in &by_layer {
        reporter.note(&format!("reading layer {}/{} of {} for --files", i + 1, img.layers.len(), img.reference));
        let layer = scan_layer(img, *i, Some(&FileScan { paths: want, rewrite: scan.rewrite }))?;
        for (p, files) in layer.files {
            out.entry(p).or_default().extend(files);
        }
    }
    Ok(out)
}

/// Added, removed and modified entries between two trees of one store path. `rewrite` (old store
/// path base name → new) tells a change of references to rebuilt store paths (`what: "references"`) from
/// other changes; file contents were hashed with it applied at scan time ([`FileScan`]).
pub fn compare_trees(old: &FileTree, new: &FileTree, rewrite: &BTreeMap<String, String>) -> FileDiff {
    let mut d = FileDiff::default();
    let change =
        |path: &str, kind: &str, o: Option<&FileEntry>, n: Option<&FileEntry>, what: Option<&str>| FileChange {
            path: path.to_owned(),
            kind: kind.to_owned(),
            old_size: o.map(FileEntry::size),
            new_size: n.map(FileEntry::size),
            what: what.map(str::to_owned),
        };
    for (path, o) in old {
        let Some(n) = new.get(path) else {
            d.removed.push(change(path, o.kind(), Some(o), None, None));
            continue;
        };
        let what = match (o, n) {
            (
                FileEntry::File { size: sa, sha256: a, executable: xa, sha256_rewritten: ra, .. },
                FileEntry::File { size: sb, sha256: b, executable: xb, .. },
            ) => {
                if sa == sb && a == b {
                    (xa != xb).then_some("executable bit")
                } else if xa == xb && ra.as_ref() == Some(b) {
                    Some("references")
                } else {
                    Some("content")
                }
            }
            (FileEntry::Symlink { target: a }, FileEntry::Symlink { target: b }) => {
                if a == b {
                    None
                } else if rewrite_refs(a, rewrite) == *b {
                    Some("references")
                } else {
                    Some("symlink target")
                }
            }
            (o, n) if o.kind() == n.kind() => None,
            _ => Some("type"),
        };
        if let Some(what) = what {
            let kind = if o.kind() == n.kind() { n.kind().to_owned() } else { format!("{}→{}", o.kind(), n.kind()) };
            d.modified.push(change(path, &kind, Some(o), Some(n), Some(what)));
        }
    }
    for (path, n) in new {
        if !old.contains_key(path) {
            d.added.push(change(path, n.kind(), None, Some(n), None));
        }
    }
    d
}

/// The hash parts of the changed store paths (`rewrite`'s keys) that `tree` refers to.
fn changed_refs(tree: &FileTree, rewrite: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for entry in tree.values() {
        match entry {
            FileEntry::File { rewritten_refs, .. } => found.extend(rewritten_refs.iter().cloned()),
            FileEntry::Symlink { target } => {
                for o in rewrite.keys().filter_map(|o| o.get(..32)) {
                    if target.contains(&format!("/nix/store/{o}")) {
                        found.insert(o.to_owned());
                    }
                }
            }
            FileEntry::Dir | FileEntry::Other => {}
        }
    }
    found
}

/// `s` with every `/nix/store/<old hash>-<old name>` made `/nix/store/<new hash>-<new name>`, and
/// any other `/nix/store/<old hash>` made `/nix/store/<new hash>`.
fn rewrite_refs(s: &str, rewrite: &BTreeMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (o, n) in rewrite {
        out = out.replace(&format!("/nix/store/{o}"), &format!("/nix/store/{n}"));
        if let (Some(oh), Some(nh)) = (o.get(..32), n.get(..32)) {
            out = out.replace(&format!("/nix/store/{oh}"), &format!("/nix/store/{nh}"));
        }
    }
    out
}

/// Writes the HTML report to `path` atomically (a temporary sibling renamed into place).
pub fn write_html(d: &Diff, path: &std::path::Path) -> Result<()> {
    crate::atomic::atomic_write_bytes(path, html::render(d).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(hash_char: char, name: &str) -> StorePath {
        StorePath::from_base_name(&format!("{}-{name}", hash_char.to_string().repeat(32))).unwrap()
    }

    #[test]
    fn drv_names_split_like_nix() {
        assert_eq!(drv_name("python3.14-diffusers-0.31.0"), ("python3.14-diffusers", Some("0.31.0")));
        assert_eq!(drv_name("hello-link"), ("hello-link", None));
        assert_eq!(drv_name("glibc-2.40-66-bin"), ("glibc", Some("2.40-66-bin")));
        assert_eq!(drv_name("foo-"), ("foo-", None));
        assert_eq!(drv_name("source"), ("source", None));
        assert_eq!(output_suffix(Some("2.40-66-bin")), "bin");
        assert_eq!(output_suffix(Some("1.0")), "");
    }

    fn map(paths: &[StorePath]) -> BTreeMap<StorePath, Vec<usize>> {
        paths.iter().map(|p| (p.clone(), vec![0])).collect()
    }

    #[test]
    fn paths_pair_by_name_then_version() {
        let old = map(&[
            sp('a', "python3.14-diffusers-0.31.0"),
            sp('b', "hello-1.0"),
            sp('c', "zlib-1.3"),
            sp('d', "glibc-2.40-66"),
            sp('g', "glibc-2.40-66-bin"),
            sp('f', "gone-1"),
        ]);
        let new = map(&[
            sp('1', "python3.14-diffusers-0.32.0"),
            sp('2', "hello-1.0"),
            sp('c', "zlib-1.3"),
            sp('3', "glibc-2.41-1"),
            sp('4', "glibc-2.41-1-bin"),
            sp('5', "fresh-2"),
        ]);
        let d = path_diff(&old, &new);
        let got: Vec<(String, String, Change)> =
            d.changed.iter().map(|c| (c.old.name().to_owned(), c.new.name().to_owned(), c.change)).collect();
        assert_eq!(
            got,
            [
                ("glibc-2.40-66".into(), "glibc-2.41-1".into(), Change::Version),
                ("glibc-2.40-66-bin".into(), "glibc-2.41-1-bin".into(), Change::Version),
                ("hello-1.0".into(), "hello-1.0".into(), Change::SameVersionNewHash),
                ("python3.14-diffusers-0.31.0".into(), "python3.14-diffusers-0.32.0".into(), Change::Version),
            ]
        );
        assert_eq!(d.changed[3].describe(), "0.31.0 → 0.32.0");
        assert_eq!(d.changed[2].describe(), "same version, new hash (a dependency changed)");
        assert_eq!(d.added, [sp('5', "fresh-2")]);
        assert_eq!(d.removed, [sp('f', "gone-1")]);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn config_changes_per_variable_and_label() {
        let old = RunConfig {
            env: vec!["PATH=/a".into(), "LANG=C".into()],
            labels: [("x".to_owned(), "1".to_owned())].into(),
            user: Some("app".into()),
            ..Default::default()
        };
        let new = RunConfig {
            env: vec!["PATH=/b".into(), "LANG=C".into()],
            labels: [("y".to_owned(), "2".to_owned())].into(),
            user: Some("app".into()),
            exposed_ports: vec!["80/tcp".into()],
            entrypoint: vec!["/bin/x".into()],
            ..Default::default()
        };
        let fields: Vec<String> = config_diff(&old, &new).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["entrypoint", "env PATH", "label x", "label y", "exposed port 80/tcp"]);
        assert!(config_diff(&old, &old).is_empty());
    }

    #[test]
    fn file_trees_compare() {
        let f = |size, h: &str, x, r: Option<&str>| FileEntry::File {
            size,
            sha256: h.into(),
            executable: x,
            sha256_rewritten: r.map(str::to_owned),
            rewritten_refs: BTreeSet::new(),
        };
        let (o, n) = ("a".repeat(32), "b".repeat(32));
        let link = |h: &str| FileEntry::Symlink { target: format!("/nix/store/{h}-dep/bin/x") };
        let old: FileTree = [
            ("bin/a".to_owned(), f(1, "aa", true, None)),
            ("bin/b".to_owned(), f(2, "bb", false, None)),
            ("bin/c".to_owned(), f(6, "c1", false, Some("c2"))),
            ("bin/d".to_owned(), f(6, "d1", false, Some("d2"))),
            ("lib".to_owned(), FileEntry::Symlink { target: "x".into() }),
            ("dep".to_owned(), link(&o)),
            ("gone".to_owned(), f(3, "cc", false, None)),
        ]
        .into();
        let new: FileTree = [
            ("bin/a".to_owned(), f(1, "aa", false, None)),
            ("bin/b".to_owned(), f(4, "dd", false, None)),
            ("bin/c".to_owned(), f(6, "c2", false, None)),
            ("bin/d".to_owned(), f(6, "d3", false, None)),
            ("lib".to_owned(), FileEntry::Dir),
            ("dep".to_owned(), link(&n)),
            ("new".to_owned(), f(5, "ee", false, None)),
        ]
        .into();
        let rewrite = BTreeMap::from([(o.clone(), n.clone())]);
        let d = compare_trees(&old, &new, &rewrite);
        let what: Vec<_> = d.modified.iter().map(|c| (c.path.as_str(), c.what.as_deref().unwrap())).collect();
        assert_eq!(
            what,
            [
                ("bin/a", "executable bit"),
                ("bin/b", "content"),
                ("bin/c", "references"),
                ("bin/d", "content"),
                ("dep", "references"),
                ("lib", "type")
            ]
        );
        assert_eq!(d.modified[1].old_size, Some(2));
        assert_eq!(d.modified[1].new_size, Some(4));
        assert_eq!(d.removed[0].path, "gone");
        assert_eq!(d.added[0].path, "new");
        assert_eq!(compare_trees(&old, &new, &BTreeMap::new()).modified[4].what.as_deref(), Some("symlink target"));
        assert!(compare_trees(&old, &old, &rewrite) == FileDiff::default());
    }
}
