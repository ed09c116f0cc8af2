//! The one invariant checker every planner test runs after every case.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// Plans and checks: nothing lost, nothing twice, budget and cap held, sizes add up, layers in
/// partition order and sorted, reuse flags true, the same plan twice. Returns the plan.
pub(crate) fn plan_checked(closure: &Closure, groups: &Groups, budget: Budget, previous: Option<&Previous>) -> Plan {
    let p = plan(closure, groups, budget, previous);
    check(closure, groups, budget, previous, &p);
    assert_eq!(p, plan(closure, groups, budget, previous), "the plan is not deterministic");
    p
}

pub(crate) fn check(closure: &Closure, groups: &Groups, budget: Budget, previous: Option<&Previous>, p: &Plan) {
    // Nothing lost, nothing twice.
    let mut all: Vec<&StorePath> = p.layers.iter().flat_map(|l| l.paths.iter()).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a path appears twice");
    let want: Vec<&StorePath> = closure.iter().map(|i| &i.path).collect();
    assert_eq!(all, want, "a path is lost or foreign");
    // Sizes add up.
    let size = |l: &Layer| l.paths.iter().map(|q| closure.nar_size(q)).sum::<u64>();
    let total: u64 = closure.iter().map(|i| i.nar_size.unwrap_or(0)).sum();
    assert_eq!(p.layers.iter().map(size).sum::<u64>(), total, "sizes do not add up");
    // Layers non-empty and sorted; cap held; splits only for a lone path over the cap.
    for l in &p.layers {
        assert!(!l.paths.is_empty(), "empty layer");
        assert!(l.paths.windows(2).all(|w| w[0] < w[1]), "paths of a layer not sorted");
        let s = size(l);
        match (budget.max_layer_size, l.split) {
            (Some(cap), Some(split)) => {
                assert_eq!(l.paths.len(), 1, "a split layer shares");
                assert!(s > cap);
                assert_eq!(split.parts as u64, s.div_ceil(cap));
            }
            (Some(cap), None) => assert!(s <= cap, "layer of {s} bytes over the cap {cap}"),
            (None, split) => assert_eq!(split, None, "split without a cap"),
        }
    }
    assert_eq!(p.max_layer_size, budget.max_layer_size);
    // Budget held, unless the cap alone forbids it (and then a warning says so).
    let budget_layers = budget.store_layers.max(1);
    if p.layer_count() > budget_layers {
        assert!(
            p.warnings.iter().any(|w| w.contains("the budget yields")),
            "budget {budget_layers} exceeded: {}",
            p.layer_count()
        );
    }
    // Groups: a layer's paths share a partition named by its group, partitions in order.
    let assigned = groups.assign(closure);
    let shared = p.warnings.iter().any(|w| w.contains("share layers"));
    let mut last = 0;
    for l in &p.layers {
        let parts: BTreeSet<usize> = l.paths.iter().map(|q| assigned[q]).collect();
        let first = *parts.first().unwrap();
        if !shared {
            assert_eq!(parts.len(), 1, "a layer mixes groups");
            assert!(first >= last, "groups out of order");
            last = first;
        }
        assert_eq!(l.group, groups.partition_name(first));
    }
    // Reuse flags and the previous report.
    let prev_sets: BTreeSet<Vec<&StorePath>> =
        previous.map(|pr| pr.layers.iter().map(|l| l.paths.iter().collect()).collect()).unwrap_or_default();
    for l in &p.layers {
        assert_eq!(l.reused, prev_sets.contains(&l.paths.iter().collect::<Vec<_>>()), "wrong reuse flag");
    }
    match (previous, &p.previous) {
        (None, r) => assert!(r.is_none()),
        (Some(pr), Some(r)) => {
            assert_eq!(r.reused_bytes + r.pull_bytes, total);
            assert_eq!(r.reused_layers, p.layers.iter().filter(|l| l.reused).count());
            let before = pr.all_paths();
            let changed: u64 =
                closure.iter().filter(|i| !before.contains(&i.path)).map(|i| i.nar_size.unwrap_or(0)).sum();
            assert_eq!(r.changed_bytes, changed);
            assert!(r.pull_bytes >= r.changed_bytes, "pulls less than what changed");
        }
        (Some(_), None) => panic!("no previous report"),
    }
}

/// The previous release as `plan --json` would hand it over.
pub(crate) fn previous_of(p: &Plan) -> Previous {
    let json = serde_json::to_string(p).unwrap();
    Previous::from_plan_json(&json, "test").unwrap()
}

/// Store path names (hash stripped) of each layer, for readable assertions.
pub(crate) fn names(p: &Plan) -> Vec<Vec<&str>> {
    p.layers.iter().map(|l| l.paths.iter().map(|q| q.name()).collect()).collect()
}

/// Bytes a puller of `old` fetches for `new`: layers whose path sets `old` lacks.
pub(crate) fn pulled(closure: &Closure, old: &Plan, new: &Plan) -> u64 {
    let have: BTreeSet<&Vec<StorePath>> = old.layers.iter().map(|l| &l.paths).collect();
    new.layers.iter().filter(|l| !have.contains(&l.paths)).flat_map(|l| &l.paths).map(|q| closure.nar_size(q)).sum()
}

/// NAR bytes of paths in `new` that `old` lacks.
pub(crate) fn changed(closure: &Closure, old: &Plan) -> u64 {
    let have: BTreeSet<&StorePath> = old.layers.iter().flat_map(|l| &l.paths).collect();
    closure.iter().filter(|i| !have.contains(&i.path)).map(|i| i.nar_size.unwrap_or(0)).sum()
}

/// The layer holding the path named `name`.
pub(crate) fn layer_of<'p>(p: &'p Plan, name: &str) -> &'p Layer {
    p.layers.iter().find(|l| l.paths.iter().any(|q| q.name() == name)).unwrap_or_else(|| panic!("{name} not planned"))
}

/// A tiny input-addressed closure builder: a bump re-hashes every dependent, as Nix does.
#[derive(Clone, Default)]
pub(crate) struct Synth {
    /// name → (size, dependency names)
    pub pkgs: BTreeMap<String, (u64, Vec<String>)>,
}

impl Synth {
    pub fn add(&mut self, name: &str, size: u64, deps: &[&str]) -> &mut Self {
        self.pkgs.insert(name.to_owned(), (size, deps.iter().map(|d| (*d).to_owned()).collect()));
        self
    }

    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.pkgs.remove(name);
        for (_, deps) in self.pkgs.values_mut() {
            deps.retain(|d| d != name);
        }
        self
    }

    /// Renames `old` to `new` (a version bump) everywhere.
    pub fn bump(&mut self, old: &str, new: &str) -> &mut Self {
        let v = self.pkgs.remove(old).unwrap();
        self.pkgs.insert(new.to_owned(), v);
        for (_, deps) in self.pkgs.values_mut() {
            for d in deps.iter_mut() {
                if d == old {
                    *d = new.to_owned();
                }
            }
        }
        self
    }

    pub fn closure(&self) -> Closure {
        let mut hashes: BTreeMap<&str, String> = BTreeMap::new();
        fn hash_of<'a>(s: &'a Synth, name: &'a str, memo: &mut BTreeMap<&'a str, String>) -> String {
            if let Some(h) = memo.get(name) {
                return h.clone();
            }
            let (_, deps) = &s.pkgs[name];
            let mut input = name.to_owned();
            for d in deps {
                input.push('.');
                input.push_str(&hash_of(s, d, memo));
            }
            let fnv = input.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
            let h = crate::closure::testing::sp(&format!("h{fnv:016x}")).hash_part().to_owned();
            memo.insert(name, h.clone());
            h
        }
        let names: Vec<&str> = self.pkgs.keys().map(String::as_str).collect();
        for n in &names {
            hash_of(self, n, &mut hashes);
        }
        let path = |n: &str| StorePath::from_base_name(&format!("{}-{n}", hashes[n])).unwrap();
        Closure::new(self.pkgs.iter().map(|(n, (size, deps))| crate::closure::PathInfo {
            path: path(n),
            nar_hash: None,
            nar_size: Some(*size),
            references: deps.iter().map(|d| path(d)).collect(),
        }))
        .unwrap()
    }
}
