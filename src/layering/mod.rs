//! The plan: which store paths go into which layer. [`plan`] is a pure function of the closure,
//! the layer groups, the budget and the previous release's layers; no I/O.
//!
//! # What we optimise
//!
//! A puller reuses a layer only when its exact contents (full store paths, hashes included) were
//! in the image it has. With input addressing, bumping one package `x` changes `x` and every path
//! whose closure holds `x` (its *reverse closure*): those are the bytes that truly changed. Every
//! layer holding one of them is pulled whole; whatever else it holds is collateral. The measure
//! is `pulled / changed` after an update.
//!
//! # What we learnt from the others
//!
//! - *Popularity contest* (nixpkgs `referencesByPopularity`, `buildLayeredImage`): the most
//!   referenced paths get a layer each, the rest share the last one. Popularity says nothing
//!   about change: the leftover layer holds the environment and the app, so it is pulled on every
//!   release, with everything else in it.
//! - *dockerTools' auto-layer*: the largest paths become layer roots, their private
//!   dependencies ride along, shared ones get a layer per set of roots. Size-first and
//!   graph-aware, but blind to what changes: a small volatile path lands with whatever is left.
//! - *Nixery*: the dominator tree of the reference graph; a dominated subtree (what only one path
//!   keeps alive) is one unit; units merge by popularity × size until the budget fits.
//! - *chunkah*: components with a stability, greedy pairwise merges that lose the least expected
//!   reuse, until the budget fits.
//!
//! We keep chunkah's greedy merging and give it a cost that knows the graph: `model.rs` draws one
//! *event* per release (a path is bumped; or a package is removed, taking with it the paths it
//! dominates, Nixery's subtrees) and prices a layout by its expected `pulled / changed`:
//! `Σ_L size(L) · Σ_{e ∈ S(L)} P(e) / changed(e)` (minus a constant), where `S(L)` are the
//! events that hit a path of `L`. One layer per path scores 1. Merging two layers adds
//! `size(A)·ω(S(B) \ S(A)) + size(B)·ω(S(A) \ S(B))`: cheap when they change together (a path
//! and its only dependent; big stable libraries that only move with a toolchain bump), dear when
//! a big stable path would ride with a volatile one. Events with few changed bytes (a leaf
//! Python package, a removal) weigh the most: there a few megabytes of collateral already spoil
//! the ratio. The environment and the app change on every release, so the model keeps what sits
//! beside them tiny.
//!
//! Event weights come from the layers file: paths a `split = "per-path"` group names are bumped
//! one at a time (weight 1); what a group only pulls in through closures, and the paths of groups
//! without `split` (they change together, or with a nixpkgs update that changes nearly
//! everything), weigh 0.1. Without a layers file every path weighs 1.
//!
//! # Steps
//!
//! 1. **Partitions.** Groups of the layers file ([`groups`]), bottom first. A path some group's
//!    globs *name* belongs to the first group that names it, whatever closure it also sits in:
//!    real graphs have cross-stratum references (a perf kernel that depends on diffusers), and
//!    following closures there would drag diffusers into the kernels' layer, so a diffusers bump
//!    would re-pull the kernels. A path no group names follows the closure of the first group
//!    whose named paths reach it through unnamed paths (the walk stops at another group's named
//!    path, so what only diffusers needs stays with diffusers). What no group takes is the
//!    `auto` partition, laid out last. Layers never mix partitions (but see step 4).
//! 2. **Components.** Every path starts as its own component. A path larger than
//!    `max_layer_size` is marked *split at build time*: it takes `⌈size / cap⌉` layers of the
//!    budget, never shares a layer, and is cut by its files when the build lists it ([`crate::tarball::split`]).
//! 3. **Group limits.** A group without `split` is one layer, or at most its `max_layers`
//!    (packed by cost), or what the cap forces; `split = "per-path"` keeps one layer per path
//!    unless its `max_layers` or the budget say otherwise. `max_layers` is a number of layers or
//!    a share of the store-layer budget (`"10%"`, rounded up, at least 1), so a layers file can
//!    cap the strata that change rarely or all at once (CUDA, torch, the scientific stack) in
//!    proportion at any budget, and the layers they would take go to the strata bumped one
//!    package at a time. The size cap wins over either; over a number it warns, over a share it
//!    does not (a share is a soft cap that follows the budget).
//! 4. **Budget.** While the layers exceed the budget, merge the pair with the lowest cost (same
//!    partition, sum at most the cap). Ties break on component ids, which follow store-path
//!    order, so the plan is deterministic. On large closures candidates are first restricted to
//!    pairs linked by a reference (a path mostly changes with its dependents), then all pairs
//!    compete once fewer than 400 components are left. If the groups alone exceed the budget,
//!    partitions share layers; if the cap alone does, the budget yields (a registry rejects an
//!    oversized blob; it does not reject a 41st layer) and a warning says so.
//! 5. **Local search.** Greedy merges never undo an early choice: single paths then move between
//!    layers of their partition while that lowers the expected ratio (the layer count stays).
//! 6. **Order.** Partitions bottom first; within one, layers that continue a previous slot keep
//!    its order, then the rest by rising change probability (how many paths' bumps change the
//!    layer; ties: largest first), so the most stable layers sit lowest (runtimes that key
//!    layers by chain ID reuse everything below the first change).
//!
//! A fresh plan with a budget of 10 or more leaves one layer unused: the *reserved slot* for
//! paths that arrive in the next release, so they need not break a kept layer.
//!
//! # With a previous release ([`Previous`])
//!
//! - A previous layer whose store paths are all still in the closure, unchanged and in the same
//!   group (and, split, under the same cap) is **kept** as is: identical bytes, nothing to pull.
//! - Every other path is *loose*: it is pulled anyway. Loose paths whose [`previous::slot_key`]
//!   (the name without hash and version: `python-diffusers`) sat in a broken previous layer start
//!   out together in that slot again, so a bump lands where the old version was; paths with a
//!   new key start alone (they fill the reserved slot, or join a broken layer, whichever costs
//!   less); removed paths simply leave.
//! - Then steps 3–6 run with one more term in the cost: merging a kept layer away costs its bytes
//!   now, divided by the bytes that truly changed in this update. Merging loose components costs
//!   nothing now, only their future term, weighted by a horizon of [`HORIZON`] releases. The
//!   local search leaves kept layers alone.
//!
//! **Drift and re-planning.** Sticky layouts drift from what a fresh plan would do as releases
//! pile up: new paths join whatever layer was broken anyway, leftovers of broken layers stay
//! together. Each time, both layouts are made; with `now(X)` the bytes of `X`'s layers that are
//! not identical to a previous layer, divided by the bytes that changed, and `E(X)` the expected
//! pull ratio of the next release, the plan taken is the one with the lower
//! `now(X) + HORIZON · E(X)`: a re-plan happens when its extra bytes today are repaid within the
//! horizon — typically on a big update (torch or python bumped) where nearly everything is pulled
//! anyway, rarely on a small one. `plan --json` reports both scores (`previous.sticky`,
//! `previous.fresh`) and the `strategy` taken.
//!
//! # Edge cases
//!
//! Paths without a NAR size weigh 0 bytes. A previous release of another image keeps nothing.
//! Budget 1: one layer (or what the cap forces). A group that claims nothing is skipped, with a
//! warning from [`Groups::warnings`]; so is a glob that matches nothing.

pub mod groups;
mod model;
mod pack;
pub mod previous;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::closure::{Closure, StorePath};

pub use groups::{AUTO_GROUP, Group, Groups, LayerLimit, LayersFile, SplitMode};
use model::Model;
use pack::{Comp, Packer, Scope};
pub use previous::{Previous, PreviousLayer};

/// How many future releases a layout is expected to serve: weighs the expected pull ratio
/// against the bytes pulled now (see the module docs).
pub const HORIZON: f64 = 8.0;
/// How likely a path is bumped on its own, relative to a path a `per-path` group names.
const QUIET_WEIGHT: f64 = 0.1;
/// Passes of the local search after the merges.
const REFINE_PASSES: usize = 0;
/// A fresh plan keeps one layer free for new paths from this budget on.
const RESERVE_FROM: usize = 10;

/// An ordered list of store layers (bottom first). The customisation layer is not part of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub layers: Vec<Layer>,
    /// The size cap the plan was made under: the build splits any layer listed larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_layer_size: Option<u64>,
    /// The model's expected `pulled / changed` ratio for the next single-package update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_update_ratio: Option<f64>,
    /// What was kept from the previous release, and whether a fresh layout won.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousReport>,
    /// Things the user should know (budget yielded to the cap, a group packed tighter…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One layer: a group name and the store paths it holds, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub group: String,
    pub paths: Vec<StorePath>,
    /// Set when the layer's one path is larger than the cap: the build cuts it by its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// The layer is identical to one of the previous release (same store paths).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
}

/// A layer split at build time, where its files can be seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The plan's estimate, ⌈NAR size / cap⌉, which the budget counts.
    pub parts: usize,
}

/// Limits the planner works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Layers available for store paths (the image's max minus the customisation layer).
    pub store_layers: usize,
    /// The largest layer allowed (tar bytes; NAR bytes when planning).
    pub max_layer_size: Option<u64>,
}

impl Budget {
    pub fn layers(store_layers: usize) -> Self {
        Self { store_layers, max_layer_size: None }
    }
}

/// How the plan relates to the previous release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousReport {
    /// `sticky` (kept what it could) or `replanned` (a fresh layout paid off).
    pub strategy: Strategy,
    pub reused_layers: usize,
    /// NAR bytes in layers identical to previous ones.
    pub reused_bytes: u64,
    /// NAR bytes in the other layers: what a puller of the previous image fetches.
    pub pull_bytes: u64,
    /// NAR bytes of store paths that were not in the previous image.
    pub changed_bytes: u64,
    pub sticky: Score,
    pub fresh: Score,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Sticky,
    Replanned,
}

/// The terms of the re-plan rule for one candidate layout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub pull_bytes: u64,
    pub expected_update_ratio: f64,
    /// `pull_bytes / changed_bytes + HORIZON · expected_update_ratio`.
    pub cost: f64,
}

/// Plans the layers of `closure` within `budget`, grouped by `groups`, keeping what it can of
/// `previous`. See the module docs for the algorithm.
pub fn plan(closure: &Closure, groups: &Groups, budget: Budget, previous: Option<&Previous>) -> Plan {
    let assigned = groups.assign(closure);
    let model = Model::new(closure, |p| bump_weight(groups, assigned.get(p).copied(), p));
    let part: Vec<usize> = model.paths.iter().map(|p| assigned.get(p).copied().unwrap_or(groups.len())).collect();
    let store_layers = budget.store_layers.max(1);
    let reserve = usize::from(store_layers >= RESERVE_FROM);
    let cap = budget.max_layer_size;
    let fresh = layout(&model, groups, &part, cap, store_layers, store_layers - reserve, None);
    let Some(prev) = previous else {
        return emit(&model, groups, fresh, cap, None, &BTreeSet::new());
    };
    let seed = seed_from(&model, groups, &part, cap, prev);
    let sticky = layout(&model, groups, &part, cap, store_layers, store_layers, Some(&seed));
    let prev_sets: BTreeSet<Vec<&StorePath>> = prev.layers.iter().map(|l| l.paths.iter().collect()).collect();
    let score = |l: &Layout| {
        let pull: u64 = l.comps.iter().filter(|c| !reused(&model, c, &prev_sets)).map(|c| c.size).sum();
        let cost = pull as f64 / seed.changed.max(1) as f64 + HORIZON * l.expected;
        Score { pull_bytes: pull, expected_update_ratio: l.expected, cost }
    };
    let (s, f) = (score(&sticky), score(&fresh));
    let (strategy, chosen) = if f.cost < s.cost { (Strategy::Replanned, fresh) } else { (Strategy::Sticky, sticky) };
    let report = PreviousReport {
        strategy,
        reused_layers: 0,
        reused_bytes: 0,
        pull_bytes: 0,
        changed_bytes: seed.changed,
        sticky: s,
        fresh: f,
    };
    emit(&model, groups, chosen, cap, Some(report), &prev_sets)
}

/// How likely `p` (in partition `part`) is bumped or removed on its own. Without groups every
/// path is alike. With groups, `split = "per-path"` says its paths change one at a time: the
/// paths its globs name weigh 1. What a group only pulls in through closures, and the paths of
/// groups without `split` (which change together, or with a nixpkgs update that changes nearly
/// everything), weigh [`QUIET_WEIGHT`]. Unclaimed paths weigh 1: nothing is known of them.
fn bump_weight(groups: &Groups, part: Option<usize>, p: &StorePath) -> f64 {
    match part.and_then(|i| groups.iter().nth(i)) {
        None => 1.0,
        Some(g) if g.split == SplitMode::PerPath && g.matches(p.name()) => 1.0,
        Some(_) => QUIET_WEIGHT,
    }
}

/// A packed layout: live components in layer order.
struct Layout {
    comps: Vec<Comp>,
    expected: f64,
    warnings: Vec<String>,
}

/// Where a sticky layout starts: kept layers, loose paths seeded into their old slots, new paths.
struct Seed {
    /// (members, partition, kept, slot)
    comps: Vec<(Vec<usize>, usize, bool, Option<usize>)>,
    /// NAR bytes of paths that were not in the previous image.
    changed: u64,
}

fn seed_from(model: &Model<'_>, groups: &Groups, part: &[usize], cap: Option<u64>, prev: &Previous) -> Seed {
    let n = model.len();
    let mut taken = vec![false; n];
    let mut comps = Vec::new();
    let mut intact = vec![false; prev.layers.len()];
    for (si, slot) in prev.layers.iter().enumerate() {
        let members: Option<Vec<usize>> = slot.paths.iter().map(|p| model.index.get(p).copied()).collect();
        let Some(members) = members else { continue };
        let Some(&first) = members.first() else {
            continue;
        };
        let p = part[first];
        let size: u64 = members.iter().map(|&m| model.size[m]).sum();
        let split_now = cap.is_some_and(|c| size > c);
        let cap_ok = match prev.max_layer_size {
            None => true,
            Some(pc) => (size > pc) == split_now && (!split_now || Some(pc) == cap),
        };
        let ok = members.iter().all(|&m| part[m] == p && !taken[m])
            && groups.partition_name(p) == slot.group
            && cap_ok
            && !(split_now && members.len() > 1);
        if ok {
            for &m in &members {
                taken[m] = true;
            }
            intact[si] = true;
            comps.push((members, p, true, Some(si)));
        }
    }
    let mut key_slot: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (si, slot) in prev.layers.iter().enumerate() {
        for p in &slot.paths {
            key_slot.entry(previous::slot_key(p.name())).or_insert(si);
        }
    }
    let mut seeded: std::collections::BTreeMap<(usize, usize), Vec<usize>> = std::collections::BTreeMap::new();
    for i in (0..n).filter(|&i| !taken[i]) {
        match key_slot.get(&previous::slot_key(model.paths[i].name())) {
            Some(&si) if !intact[si] => seeded.entry((part[i], si)).or_default().push(i),
            _ => comps.push((vec![i], part[i], false, None)),
        }
    }
    for ((p, si), members) in seeded {
        comps.push((members, p, false, Some(si)));
    }
    let before = prev.all_paths();
    let changed = (0..n).filter(|&i| !before.contains(model.paths[i])).map(|i| model.size[i]).sum();
    Seed { comps, changed }
}

fn layout(
    model: &Model<'_>,
    groups: &Groups,
    part: &[usize],
    cap: Option<u64>,
    store_layers: usize,
    target: usize,
    seed: Option<&Seed>,
) -> Layout {
    let mut pk = Packer::new(model, cap);
    let mut warnings = Vec::new();
    match seed {
        None => {
            for (i, &p) in part.iter().enumerate() {
                pk.add(vec![i], p, false, None);
            }
        }
        Some(s) => {
            pk.horizon = HORIZON;
            pk.per_byte_now = 1.0 / s.changed.max(1) as f64;
            for (members, p, kept, slot) in &s.comps {
                pk.add(members.clone(), *p, *kept, *slot);
            }
        }
    }
    for p in 0..=groups.len() {
        let limit = groups.partition_limit(p, store_layers);
        if pk.count(Scope::Partition(p)) <= limit {
            continue;
        }
        let ok = if limit == 1 { pk.merge_partition(p) } else { pk.merge_down(Scope::Partition(p), limit) };
        // A share of the budget is a soft cap: where the size cap needs more, it yields quietly.
        let share = groups.iter().nth(p).is_some_and(|g| matches!(g.max_layers, Some(LayerLimit::Share(_))));
        if !ok && !share {
            warnings.push(format!(
                "group {:?} takes {} layers: the size cap does not let it fit in {limit}",
                groups.partition_name(p),
                pk.count(Scope::Partition(p))
            ));
        }
    }
    if !pk.merge_down(Scope::SamePartition, target) {
        if pk.merge_down(Scope::AnyPartition, target) {
            warnings.push(format!(
                "{target} store layers cannot keep every group apart under the size cap: some groups share layers"
            ));
        } else {
            warnings.push(format!(
                "the size cap needs {} store layers, more than the budget of {target}: the budget yields",
                pk.count(Scope::AnyPartition)
            ));
        }
    }
    pk.refine(REFINE_PASSES);
    let expected = pk.expected_ratio();
    let mut comps: Vec<Comp> = pk.comps.into_iter().filter(|c| c.alive).collect();
    let key = |c: &Comp| {
        (c.part, c.slot.unwrap_or(usize::MAX), model.change_rank(&c.cl), std::cmp::Reverse(c.size), c.members[0])
    };
    comps.sort_by_key(key);
    Layout { comps, expected, warnings }
}

fn reused(model: &Model<'_>, c: &Comp, prev_sets: &BTreeSet<Vec<&StorePath>>) -> bool {
    let paths: Vec<&StorePath> = c.members.iter().map(|&m| model.paths[m]).collect();
    prev_sets.contains(&paths)
}

fn emit(
    model: &Model<'_>,
    groups: &Groups,
    l: Layout,
    cap: Option<u64>,
    mut report: Option<PreviousReport>,
    prev_sets: &BTreeSet<Vec<&StorePath>>,
) -> Plan {
    let layers: Vec<Layer> = l
        .comps
        .iter()
        .map(|c| Layer {
            group: groups.partition_name(c.part).to_owned(),
            paths: c.members.iter().map(|&m| model.paths[m].clone()).collect(),
            split: (!c.mergeable).then_some(Split { parts: c.layers }),
            reused: reused(model, c, prev_sets),
        })
        .collect();
    if let Some(r) = report.as_mut() {
        for (layer, c) in layers.iter().zip(&l.comps) {
            if layer.reused {
                r.reused_layers += 1;
                r.reused_bytes += c.size;
            } else {
                r.pull_bytes += c.size;
            }
        }
    }
    Plan {
        layers,
        max_layer_size: cap,
        expected_update_ratio: Some(l.expected),
        previous: report,
        warnings: l.warnings,
    }
}

impl Plan {
    /// Image layers the plan makes, counting each split layer as its estimated parts.
    pub fn layer_count(&self) -> usize {
        self.layers.iter().map(|l| l.split.map_or(1, |s| s.parts)).sum()
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
