//! The packer: greedy agglomerative merging of components under the cost model of
//! [`super::model`], within a partition or across all of them, until a layer count is reached.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap};

use super::model::{BitSet, Model};

/// Above this many components in scope, candidates are first limited to components linked by a
/// reference (sparse), which keeps the all-pairs search for the last, decisive merges.
const DENSE_LIMIT: usize = 400;

/// A would-be layer: some store paths (indices into the model) and what the packer knows of them.
#[derive(Debug, Clone)]
pub(crate) struct Comp {
    pub members: Vec<usize>,
    pub size: u64,
    pub cl: BitSet,
    /// The partition (group index, or the auto partition).
    pub part: usize,
    /// Layers this component takes: 1, or the split estimate of a path larger than the cap.
    pub layers: usize,
    /// False for a path larger than the cap: it is split at build time and never shares.
    pub mergeable: bool,
    /// An intact previous layer: merging it away costs its bytes in this update.
    pub frozen: bool,
    /// The previous slot this component continues, if any (keeps its place in the stack).
    pub slot: Option<usize>,
    pub alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Only components of this partition, merged with each other.
    Partition(usize),
    /// Every component, merged only within its partition.
    SamePartition,
    /// Every component, merged across partitions too (the last resort of a tight budget).
    AnyPartition,
}

struct Cand {
    cost: f64,
    a: usize,
    b: usize,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.cost.total_cmp(&o.cost).then(self.a.cmp(&o.a)).then(self.b.cmp(&o.b))
    }
}

pub(crate) struct Packer<'m, 'a> {
    pub model: &'m Model<'a>,
    pub comps: Vec<Comp>,
    pub cap: Option<u64>,
    /// Weight of the expected future ratio against the bytes pulled now.
    pub horizon: f64,
    /// What one byte pulled now costs (1 / bytes truly changed in this update).
    pub per_byte_now: f64,
}

impl<'m, 'a> Packer<'m, 'a> {
    pub fn new(model: &'m Model<'a>, cap: Option<u64>) -> Self {
        Self { model, comps: Vec::new(), cap, horizon: 1.0, per_byte_now: 0.0 }
    }

    /// Adds a component. More than one path over the cap is split into singletons.
    pub fn add(&mut self, mut members: Vec<usize>, part: usize, frozen: bool, slot: Option<usize>) {
        members.sort_unstable();
        members.dedup();
        let size: u64 = members.iter().map(|&m| self.model.size[m]).sum();
        if let Some(cap) = self.cap
            && size > cap
            && members.len() > 1
        {
            for m in members {
                self.add(vec![m], part, false, slot);
            }
            return;
        }
        let (layers, mergeable) = match self.cap {
            Some(cap) if size > cap => (size.div_ceil(cap.max(1)) as usize, false),
            _ => (1, true),
        };
        let cl = self.model.events_of(&members);
        self.comps.push(Comp { members, size, cl, part, layers, mergeable, frozen, slot, alive: true });
    }

    fn in_scope(c: &Comp, scope: Scope) -> bool {
        c.alive && if let Scope::Partition(p) = scope { c.part == p } else { true }
    }

    /// Layers the live components in `scope` take.
    pub fn count(&self, scope: Scope) -> usize {
        self.comps.iter().filter(|c| Self::in_scope(c, scope)).map(|c| c.layers).sum()
    }

    /// The cost of merging `a` and `b`, or `None` when they may not merge.
    fn cost(&self, a: usize, b: usize, scope: Scope) -> Option<f64> {
        let (x, y) = (&self.comps[a], &self.comps[b]);
        if !x.mergeable || !y.mergeable || (scope != Scope::AnyPartition && x.part != y.part) {
            return None;
        }
        if self.cap.is_some_and(|cap| x.size + y.size > cap) {
            return None;
        }
        let future = self.model.merge_delta(x.size, &x.cl, y.size, &y.cl);
        let now = [x, y].iter().filter(|c| c.frozen).map(|c| c.size as f64).sum::<f64>() * self.per_byte_now;
        Some(self.horizon * future + now)
    }

    fn merge(&mut self, a: usize, b: usize) -> usize {
        let (x, y) = (&self.comps[a], &self.comps[b]);
        let mut members = x.members.clone();
        members.extend_from_slice(&y.members);
        members.sort_unstable();
        let mut cl = x.cl.clone();
        cl.union_with(&y.cl);
        let slot = match (x.slot, y.slot) {
            (Some(s), Some(t)) => Some(s.min(t)),
            (s, t) => s.or(t),
        };
        let c = Comp {
            members,
            size: x.size + y.size,
            cl,
            part: x.part.min(y.part),
            layers: 1,
            mergeable: true,
            frozen: false,
            slot,
            alive: true,
        };
        self.comps[a].alive = false;
        self.comps[b].alive = false;
        self.comps.push(c);
        self.comps.len() - 1
    }

    /// Merges every mergeable component of partition `part` into one when the cap allows it
    /// (the default for a group without `split`); otherwise packs it down to one as far as it can.
    pub fn merge_partition(&mut self, part: usize) -> bool {
        let ids: Vec<usize> = (0..self.comps.len())
            .filter(|&i| Self::in_scope(&self.comps[i], Scope::Partition(part)) && self.comps[i].mergeable)
            .collect();
        let size: u64 = ids.iter().map(|&i| self.comps[i].size).sum();
        if self.cap.is_some_and(|cap| size > cap) {
            let fixed = self.count(Scope::Partition(part)) - ids.len();
            return self.merge_down(Scope::Partition(part), fixed + 1);
        }
        let mut it = ids.into_iter();
        if let Some(mut acc) = it.next() {
            for i in it {
                acc = self.merge(acc, i);
            }
        }
        true
    }

    /// Merges the cheapest pair in `scope` until its components take at most `target` layers.
    /// Returns false when no allowed merge is left before that.
    pub fn merge_down(&mut self, scope: Scope, target: usize) -> bool {
        let mut count = self.count(scope);
        if count <= target {
            return true;
        }
        let live = |s: &Self| -> Vec<usize> {
            (0..s.comps.len()).filter(|&i| Self::in_scope(&s.comps[i], scope) && s.comps[i].mergeable).collect()
        };
        let mut sparse = live(self).len() > DENSE_LIMIT;
        let mut nbrs: Vec<BTreeSet<usize>> = Vec::new();
        let mut heap: BinaryHeap<Reverse<Cand>> = BinaryHeap::new();
        let mut rebuild = true;
        while count > target {
            if rebuild {
                rebuild = false;
                heap.clear();
                let ids = live(self);
                if sparse {
                    nbrs = self.neighbours(&ids);
                    for &a in &ids {
                        for &b in nbrs[a].range(a + 1..) {
                            self.push(&mut heap, a, b, scope);
                        }
                    }
                } else {
                    for (k, &a) in ids.iter().enumerate() {
                        for &b in &ids[k + 1..] {
                            self.push(&mut heap, a, b, scope);
                        }
                    }
                }
            }
            let Some(Reverse(c)) = heap.pop() else {
                if sparse {
                    sparse = false;
                    rebuild = true;
                    continue;
                }
                return false;
            };
            if !self.comps[c.a].alive || !self.comps[c.b].alive {
                continue;
            }
            let new = self.merge(c.a, c.b);
            count -= 1;
            if sparse {
                let mut n: BTreeSet<usize> =
                    nbrs[c.a].union(&nbrs[c.b]).copied().filter(|&i| self.comps[i].alive).collect();
                n.remove(&c.a);
                n.remove(&c.b);
                for &i in &n {
                    nbrs[i].insert(new);
                }
                nbrs.push(n);
                let others: Vec<usize> = nbrs[new].iter().copied().collect();
                for o in others {
                    self.push(&mut heap, o, new, scope);
                }
                if live(self).len() <= DENSE_LIMIT {
                    sparse = false;
                    rebuild = true;
                }
            } else {
                for o in live(self) {
                    if o != new {
                        self.push(&mut heap, o, new, scope);
                    }
                }
            }
        }
        true
    }

    fn push(&self, heap: &mut BinaryHeap<Reverse<Cand>>, a: usize, b: usize, scope: Scope) {
        if let Some(cost) = self.cost(a, b, scope) {
            let (a, b) = (a.min(b), a.max(b));
            heap.push(Reverse(Cand { cost, a, b }));
        }
    }

    /// For each component id, the live components in `ids` linked to it by a reference.
    fn neighbours(&self, ids: &[usize]) -> Vec<BTreeSet<usize>> {
        let mut owner = vec![usize::MAX; self.model.len()];
        for &i in ids {
            for &m in &self.comps[i].members {
                owner[m] = i;
            }
        }
        let mut out = vec![BTreeSet::new(); self.comps.len()];
        for &i in ids {
            for &m in &self.comps[i].members {
                for &r in &self.model.refs[m] {
                    let j = owner[r];
                    if j != usize::MAX && j != i {
                        out[i].insert(j);
                        out[j].insert(i);
                    }
                }
            }
        }
        out
    }

    /// The live components, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = &Comp> {
        self.comps.iter().filter(|c| c.alive)
    }

    /// The expected pull ratio of the current layout.
    pub fn expected_ratio(&self) -> f64 {
        self.model.expected_ratio(self.live().map(|c| self.model.layer_cost(c.size, &c.cl)).sum())
    }
}

impl Packer<'_, '_> {
    /// Local search after the merges: moves single paths between layers of the same partition
    /// while that lowers the expected pull ratio (the greedy merges decide early and never undo;
    /// this fixes what they decided too early). Kept layers and split paths do not move; no
    /// layer is emptied, so the layer count stays.
    pub fn refine(&mut self, passes: usize) {
        let ids: Vec<usize> = (0..self.comps.len())
            .filter(|&i| self.comps[i].alive && self.comps[i].mergeable && !self.comps[i].frozen)
            .collect();
        let mut cost: Vec<f64> = vec![0.0; self.comps.len()];
        let mut weight: Vec<f64> = vec![0.0; self.comps.len()];
        for &i in &ids {
            weight[i] = self.comps[i].cl.weight(&self.model.omega);
            cost[i] = self.comps[i].size as f64 * weight[i];
        }
        for _ in 0..passes {
            let mut moved = false;
            for &a in &ids {
                let mut k = 0;
                while k < self.comps[a].members.len() {
                    if self.comps[a].members.len() < 2 {
                        break;
                    }
                    let p = self.comps[a].members[k];
                    let ps = self.model.size[p];
                    let rest: Vec<usize> = self.comps[a].members.iter().copied().filter(|&m| m != p).collect();
                    let rest_cl = self.model.events_of(&rest);
                    let rest_w = rest_cl.weight(&self.model.omega);
                    let rest_cost = (self.comps[a].size - ps) as f64 * rest_w;
                    let pcl = &self.model.events[p];
                    let mut best: Option<(f64, usize)> = None;
                    for &b in &ids {
                        let cb = &self.comps[b];
                        if b == a || cb.part != self.comps[a].part || self.cap.is_some_and(|cap| cb.size + ps > cap) {
                            continue;
                        }
                        let union_w = weight[b] + pcl.weight_minus(&cb.cl, &self.model.omega);
                        let new_b = (cb.size + ps) as f64 * union_w;
                        let delta = rest_cost + new_b - cost[a] - cost[b];
                        if delta < -1e-12 && best.is_none_or(|(d, _)| delta < d) {
                            best = Some((delta, b));
                        }
                    }
                    match best {
                        Some((_, b)) => {
                            self.comps[a].members.remove(k);
                            self.comps[a].size -= ps;
                            self.comps[a].cl = rest_cl;
                            cost[a] = rest_cost;
                            weight[a] = rest_w;
                            let cb = &mut self.comps[b];
                            cb.members.push(p);
                            cb.members.sort_unstable();
                            cb.size += ps;
                            cb.cl.union_with(pcl);
                            weight[b] = cb.cl.weight(&self.model.omega);
                            cost[b] = cb.size as f64 * weight[b];
                            moved = true;
                        }
                        None => k += 1,
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }
}
