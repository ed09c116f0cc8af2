//! The update model the packer optimises (see the module docs of [`super`]).
//!
//! One release bumps one store path `x`, chosen uniformly among the `N` paths. With input
//! addressing every path whose closure holds `x` changes too, so the bytes that truly change are
//! `changed(x)` = the NAR size of `x`'s reverse closure. A layer `L` must be pulled again exactly
//! when `x ∈ C(L)`, the union of its paths' closures. The expected pull ratio of a layout is
//!
//! ```text
//! E[pulled(x) / changed(x)] = Σ_L size(L) · Σ_{x ∈ C(L)} ω(x),   ω(x) = 1 / (N · changed(x))
//! ```
//!
//! which is 1 for one layer per path, and grows with every merge of paths that do not change
//! together. Small updates (a leaf package, whose `changed` is small) weigh the most, which is
//! what keeps the ratio low on the releases people make most.

use std::collections::BTreeMap;

use crate::closure::{Closure, StorePath};

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

/// The closure seen as indexed paths: sizes, closures and event weights.
pub(crate) struct Model<'a> {
    /// Paths in store-path order; a path's index is its position.
    pub paths: Vec<&'a StorePath>,
    pub index: BTreeMap<&'a StorePath, usize>,
    pub size: Vec<u64>,
    /// Each path's direct references (indices), itself excluded.
    pub refs: Vec<Vec<usize>>,
    /// Each path's closure, itself included.
    pub closure: Vec<BitSet>,
    /// ω(x) = 1 / (N · changed(x)): the weight of "x is bumped" in the expected pull ratio.
    pub omega: Vec<f64>,
}

impl<'a> Model<'a> {
    pub fn new(closure: &'a Closure) -> Self {
        let paths: Vec<&StorePath> = closure.iter().map(|i| &i.path).collect();
        let n = paths.len();
        let index: BTreeMap<&StorePath, usize> =
            paths.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let size: Vec<u64> = paths.iter().map(|p| closure.nar_size(p)).collect();
        let refs: Vec<Vec<usize>> = paths
            .iter()
            .map(|p| {
                closure.get(p).map_or_else(Vec::new, |i| {
                    i.references
                        .iter()
                        .filter_map(|r| index.get(r).copied())
                        .collect()
                })
            })
            .collect();
        // Closures in post-order (references first); an explicit stack keeps deep graphs safe.
        let mut cl: Vec<Option<BitSet>> = vec![None; n];
        for start in 0..n {
            let mut stack = vec![(start, false)];
            while let Some((v, expanded)) = stack.pop() {
                if cl[v].is_some() {
                    continue;
                }
                if expanded {
                    let mut set = BitSet::new(n);
                    set.insert(v);
                    for &r in &refs[v] {
                        if let Some(c) = &cl[r] {
                            set.union_with(c);
                        }
                    }
                    cl[v] = Some(set);
                } else {
                    stack.push((v, true));
                    // A reference cycle (not possible in a valid store) just stops the descent.
                    stack.extend(
                        refs[v]
                            .iter()
                            .filter(|&&r| cl[r].is_none() && r != v)
                            .map(|&r| (r, false)),
                    );
                }
            }
        }
        let closure_sets: Vec<BitSet> = cl
            .into_iter()
            .map(|c| c.unwrap_or_else(|| BitSet::new(n)))
            .collect();
        let mut changed = vec![0u64; n];
        for (p, set) in closure_sets.iter().enumerate() {
            for (x, c) in changed.iter_mut().enumerate() {
                if set.contains(x) {
                    *c += size[p];
                }
            }
        }
        let omega = changed
            .iter()
            .map(|&c| 1.0 / (n.max(1) as f64 * c.max(1) as f64))
            .collect();
        Self {
            paths,
            index,
            size,
            refs,
            closure: closure_sets,
            omega,
        }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// The closure union of `members`.
    pub fn closure_of(&self, members: &[usize]) -> BitSet {
        let mut set = BitSet::new(self.len());
        for &m in members {
            set.union_with(&self.closure[m]);
        }
        set
    }

    /// A layer's term in the expected pull ratio: size(L) · ω(C(L)).
    pub fn layer_cost(&self, size: u64, closure: &BitSet) -> f64 {
        size as f64 * closure.weight(&self.omega)
    }

    /// How much merging two layers adds to the expected pull ratio.
    pub fn merge_delta(&self, size_a: u64, cl_a: &BitSet, size_b: u64, cl_b: &BitSet) -> f64 {
        size_a as f64 * cl_b.weight_minus(cl_a, &self.omega)
            + size_b as f64 * cl_a.weight_minus(cl_b, &self.omega)
    }

    /// The probability a layer changes in one release (|C(L)| / N): its place in the stack.
    pub fn change_probability(&self, closure: &BitSet) -> f64 {
        closure.count() as f64 / self.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::testing::info;

    #[test]
    fn one_layer_per_path_has_ratio_one_and_merges_cost() {
        let c = Closure::new([
            info("base", 100, &[]),
            info("lib", 10, &["base"]),
            info("app", 1, &["lib"]),
            info("leaf", 5, &["base"]),
        ])
        .unwrap();
        let m = Model::new(&c);
        let total: f64 = (0..m.len())
            .map(|i| m.layer_cost(m.size[i], &m.closure[i]))
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let i = |n: &str| m.paths.iter().position(|p| p.name() == n).unwrap();
        // changed(base) = everything; changed(app) = app.
        let changed = |x: usize| (1.0 / (m.len() as f64 * m.omega[x])).round() as u64;
        assert_eq!(changed(i("base")), 116);
        assert_eq!(changed(i("app")), 1);
        // Merging a path with its only dependent chain costs less than with an unrelated leaf.
        let d_chain = m.merge_delta(10, &m.closure[i("lib")], 1, &m.closure[i("app")]);
        let d_leaf = m.merge_delta(10, &m.closure[i("lib")], 5, &m.closure[i("leaf")]);
        assert!(d_chain > 0.0 && d_leaf > 0.0);
        let merged = m.closure_of(&[i("lib"), i("app")]);
        let after = m.layer_cost(11, &merged);
        let before = m.layer_cost(10, &m.closure[i("lib")]) + m.layer_cost(1, &m.closure[i("app")]);
        assert!((after - before - d_chain).abs() < 1e-9);
    }
}
