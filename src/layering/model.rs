//! The update model the packer optimises (see the module docs of [`super`]).
//!
//! A release is one *event*, drawn at random:
//! - **bump x**: `x` gets a new version. With input addressing every path whose closure holds `x`
//!   changes too; the bytes that truly change are `changed(x)`, the NAR size of `x`'s reverse
//!   closure. A layer must be pulled again when it holds one of them.
//! - **remove r**: `r` leaves the image with what only it kept alive (the paths `r` dominates in
//!   the reference graph, Nixery's dominator tree), and its dependents (the environment) are
//!   rebuilt. A layer breaks when it holds a removed or rebuilt path; its other paths are pulled
//!   again although nothing new is in them.
//!
//! Each event `e` has a weight and a `changed(e)`; a path `p` is hit by the events in `S(p)` (the
//! bumps of its closure, the removals of its closure and of its dominators). For a layout,
//!
//! ```text
//! E[pulled / changed] = Σ_L size(L) · Σ_{e ∈ S(L)} ω(e)  −  offset,   ω(e) = P(e) / changed(e)
//! ```
//!
//! with `S(L)` the union over `L`'s paths and `offset` a constant that leaves the bytes removed
//! out of what is pulled: one layer per path scores exactly 1, and every merge of paths that are
//! not hit together adds `size(A)·ω(S(B) \ S(A)) + size(B)·ω(S(A) \ S(B))`. Small releases (a
//! leaf package, a removal, where little changes beside the environment and the app) weigh the
//! most, which is where a few megabytes of collateral already spoil the ratio.
//!
//! Dominators are computed without the out-edges of *aggregators*, paths whose closure holds
//! more than half the closure (the Python environment, the app): they refer to every package,
//! and would otherwise hide that `gitdb` lives only for `gitpython`.

use std::collections::BTreeMap;

use crate::closure::{Closure, StorePath};

/// Weight of a removal event against a bump of the same path.
const REMOVAL_WEIGHT: f64 = 0.5;

/// A fixed-size set of path indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BitSet(Vec<u64>);

impl BitSet {
    pub fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }

    pub fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    #[cfg(test)]
    pub fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    pub fn union_with(&mut self, other: &BitSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Members below `n`.
    pub fn count_below(&self, n: usize) -> usize {
        self.iter().take_while(|&i| i < n).count()
    }

    /// Members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(k, &w)| {
            let mut word = w;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                Some(k * 64 + bit)
            })
        })
    }

    /// Σ w[i] over the members of `self`.
    pub fn weight(&self, w: &[f64]) -> f64 {
        Self::sum_bits(self.0.iter().copied(), w)
    }

    /// Σ w[i] over the members of `self` that are not in `other`.
    pub fn weight_minus(&self, other: &BitSet, w: &[f64]) -> f64 {
        Self::sum_bits(self.0.iter().zip(&other.0).map(|(a, b)| a & !b), w)
    }

    fn sum_bits(words: impl Iterator<Item = u64>, w: &[f64]) -> f64 {
        let mut sum = 0.0;
        for (k, mut word) in words.enumerate() {
            while word != 0 {
                let bit = word.trailing_zeros() as usize;
                sum += w[k * 64 + bit];
                word &= word - 1;
            }
        }
        sum
    }
}

/// The closure seen as indexed paths: sizes, events and their weights.
pub(crate) struct Model<'a> {
    /// Paths in store-path order; a path's index is its position.
    pub paths: Vec<&'a StorePath>,
    pub index: BTreeMap<&'a StorePath, usize>,
    pub size: Vec<u64>,
    /// Each path's direct references (indices), itself excluded.
    pub refs: Vec<Vec<usize>>,
    /// `S(p)`: bits `[0, N)` bump the paths of `p`'s closure, bits `[N, 2N)` remove them or
    /// `p`'s dominators.
    pub events: Vec<BitSet>,
    /// ω(e) for the 2N events.
    pub omega: Vec<f64>,
    /// Σ_p size(p) · ω(removals of p's dominators): bytes that leave rather than being pulled.
    offset: f64,
}

impl<'a> Model<'a> {
    /// `weight(path)`: how likely the path is bumped (or removed) on its own, relative to others.
    pub fn new(closure: &'a Closure, weight: impl Fn(&StorePath) -> f64) -> Self {
        let paths: Vec<&StorePath> = closure.iter().map(|i| &i.path).collect();
        let n = paths.len();
        let index: BTreeMap<&StorePath, usize> = paths.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let size: Vec<u64> = paths.iter().map(|p| closure.nar_size(p)).collect();
        let refs: Vec<Vec<usize>> = paths
            .iter()
            .map(|p| {
                let mut r: Vec<usize> = closure
                    .get(p)
                    .map_or_else(Vec::new, |i| i.references.iter().filter_map(|r| index.get(r).copied()).collect());
                r.sort_unstable();
                r
            })
            .collect();
        let order = topo_order(&refs);
        // Closures, references first.
        let mut cl: Vec<BitSet> = vec![BitSet::new(n); n];
        for &v in order.iter().rev() {
            let mut set = BitSet::new(n);
            set.insert(v);
            for &r in &refs[v] {
                set.union_with(&cl[r]);
            }
            cl[v] = set;
        }
        let mut changed = vec![0u64; n];
        for (p, set) in cl.iter().enumerate() {
            for x in set.iter() {
                changed[x] += size[p];
            }
        }
        let aggregator: Vec<bool> = cl.iter().map(|c| 2 * c.count() > n).collect();
        let idom = dominators(&refs, &order, &aggregator);
        let mut referred = vec![false; n];
        for r in refs.iter().flatten() {
            referred[*r] = true;
        }
        let w: Vec<f64> = paths.iter().map(|p| weight(p).max(0.0)).collect();
        let w_rm: Vec<f64> =
            (0..n).map(|r| if referred[r] && !aggregator[r] { REMOVAL_WEIGHT * w[r] } else { 0.0 }).collect();
        let total = (w.iter().sum::<f64>() + w_rm.iter().sum::<f64>()).max(f64::MIN_POSITIVE);
        let mut omega = vec![0.0; 2 * n];
        for x in 0..n {
            omega[x] = w[x] / (total * changed[x].max(1) as f64);
            omega[n + x] = w_rm[x] / (total * changed[x].saturating_sub(size[x]).max(1) as f64);
        }
        let mut events = Vec::with_capacity(n);
        let mut offset = 0.0;
        for p in 0..n {
            let mut e = BitSet::new(2 * n);
            let mut dom_w = 0.0;
            let mut d = Some(p);
            while let Some(r) = d {
                e.insert(n + r);
                dom_w += omega[n + r];
                d = idom[r];
            }
            for x in cl[p].iter() {
                e.insert(x);
                e.insert(n + x);
            }
            offset += size[p] as f64 * dom_w;
            events.push(e);
        }
        Self { paths, index, size, refs, events, omega, offset }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// The events of `members` together.
    pub fn events_of(&self, members: &[usize]) -> BitSet {
        let mut set = BitSet::new(2 * self.len());
        for &m in members {
            set.union_with(&self.events[m]);
        }
        set
    }

    /// A layer's term in the expected pull ratio: size(L) · ω(S(L)).
    pub fn layer_cost(&self, size: u64, events: &BitSet) -> f64 {
        size as f64 * events.weight(&self.omega)
    }

    /// The expected pull ratio of a layout, from the sum of its layers' costs.
    pub fn expected_ratio(&self, layer_costs: f64) -> f64 {
        layer_costs - self.offset
    }

    /// How much merging two layers adds to the expected pull ratio.
    pub fn merge_delta(&self, size_a: u64, ev_a: &BitSet, size_b: u64, ev_b: &BitSet) -> f64 {
        size_a as f64 * ev_b.weight_minus(ev_a, &self.omega) + size_b as f64 * ev_a.weight_minus(ev_b, &self.omega)
    }

    /// The probability-like rank of a layer in the stack: how many paths' bumps change it.
    pub fn change_rank(&self, events: &BitSet) -> usize {
        events.count_below(self.len())
    }
}

/// Paths ordered so that each comes before everything it refers to (referrers first).
fn topo_order(refs: &[Vec<usize>]) -> Vec<usize> {
    let n = refs.len();
    let mut indeg = vec![0usize; n];
    for r in refs.iter().flatten() {
        indeg[*r] += 1;
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&v| indeg[v] == 0).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(v) = ready.pop_first() {
        out.push(v);
        for &r in &refs[v] {
            indeg[r] -= 1;
            if indeg[r] == 0 {
                ready.insert(r);
            }
        }
    }
    // A cycle (impossible in a valid store): append what is left, in index order.
    if out.len() < n {
        let seen: std::collections::BTreeSet<usize> = out.iter().copied().collect();
        out.extend((0..n).filter(|v| !seen.contains(v)));
    }
    out
}

/// Immediate dominators below a virtual root that refers to every path nothing refers to
/// (`None`: the virtual root). Out-edges of aggregators are ignored.
fn dominators(refs: &[Vec<usize>], order: &[usize], aggregator: &[bool]) -> Vec<Option<usize>> {
    let n = refs.len();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (v, rs) in refs.iter().enumerate() {
        if !aggregator[v] {
            for &r in rs {
                preds[r].push(v);
            }
        }
    }
    let mut idom: Vec<Option<usize>> = vec![None; n];
    let mut depth = vec![0usize; n];
    let lca = |mut a: Option<usize>, mut b: Option<usize>, idom: &[Option<usize>], depth: &[usize]| {
        let d = |x: Option<usize>| x.map_or(0, |v| depth[v]);
        while a != b {
            if d(a) >= d(b) {
                a = a.and_then(|v| idom[v]);
            } else {
                b = b.and_then(|v| idom[v]);
            }
        }
        a
    };
    for &v in order {
        let mut it = preds[v].iter().copied();
        let dom = match it.next() {
            None => None,
            // None (the virtual root) dominates everything: nothing to fold further.
            Some(first) => it.try_fold(first, |acc, p| lca(Some(acc), Some(p), &idom, &depth)),
        };
        idom[v] = dom;
        depth[v] = dom.map_or(1, |d| depth[d] + 1);
    }
    idom
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::testing::info;

    fn model(c: &Closure) -> Model<'_> {
        Model::new(c, |_| 1.0)
    }

    #[test]
    fn one_layer_per_path_scores_one_and_merges_cost() {
        // app (aggregator) -> lib -> base; app -> leaf -> base; lib -> private.
        let c = Closure::new([
            info("base", 100, &[]),
            info("private", 3, &[]),
            info("lib", 10, &["base", "private"]),
            info("leaf", 5, &["base"]),
            info("app", 1, &["lib", "leaf"]),
        ])
        .unwrap();
        let m = model(&c);
        let i = |n: &str| m.paths.iter().position(|p| p.name() == n).unwrap();
        let total: f64 = (0..m.len()).map(|p| m.layer_cost(m.size[p], &m.events[p])).sum();
        assert!((m.expected_ratio(total) - 1.0).abs() < 1e-9, "{}", m.expected_ratio(total));
        // Merges never lower the ratio, and the delta is exactly the change.
        for (a, b) in [("lib", "app"), ("lib", "leaf"), ("private", "lib"), ("base", "leaf")] {
            let (a, b) = (i(a), i(b));
            let d = m.merge_delta(m.size[a], &m.events[a], m.size[b], &m.events[b]);
            let merged = m.events_of(&[a, b]);
            let after = m.layer_cost(m.size[a] + m.size[b], &merged);
            let before = m.layer_cost(m.size[a], &m.events[a]) + m.layer_cost(m.size[b], &m.events[b]);
            assert!(d >= 0.0 && (after - before - d).abs() < 1e-12);
        }
        // A private dependency rides with its only user more cheaply than with a stranger.
        let with_user = m.merge_delta(3, &m.events[i("private")], 10, &m.events[i("lib")]);
        let with_stranger = m.merge_delta(3, &m.events[i("private")], 5, &m.events[i("leaf")]);
        assert!(with_user < with_stranger, "{with_user} vs {with_stranger}");
    }

    #[test]
    fn dominators_ignore_aggregators() {
        // env refers to everything (an aggregator); gitdb is kept alive by gitpython alone.
        let c = Closure::new([
            info("py", 10, &[]),
            info("gitdb", 1, &["py"]),
            info("gitpython", 1, &["gitdb", "py"]),
            info("numpy", 5, &["py"]),
            info("scipy", 5, &["numpy"]),
            info("toml", 1, &["py"]),
            info("rich", 1, &["py"]),
            info("env", 1, &["py", "gitdb", "gitpython", "numpy", "scipy", "toml", "rich"]),
        ])
        .unwrap();
        let m = model(&c);
        let i = |n: &str| m.paths.iter().position(|p| p.name() == n).unwrap();
        let n = m.len();
        assert!(m.events[i("gitdb")].contains(n + i("gitpython")), "removing gitpython takes gitdb along");
        assert!(!m.events[i("numpy")].contains(n + i("gitpython")));
    }
}
