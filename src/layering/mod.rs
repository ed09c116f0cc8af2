//! The plan: which store paths go into which layer. A pure function of its inputs; no I/O.
//!
//! First layering (no groups): one layer per store path, largest NAR first, up to the store-layer
//! budget; when the closure has more paths than the budget, the last layer takes all the rest.
//! Ties in size are broken by path, so the plan is deterministic.

use serde::{Deserialize, Serialize};

use crate::closure::{Closure, StorePath};

/// The group name of layers the first layering makes.
pub const AUTO_GROUP: &str = "auto";

/// An ordered list of store layers (bottom first). The customisation layer is not part of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub layers: Vec<Layer>,
}

/// One layer: a group name and the store paths it holds, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub group: String,
    pub paths: Vec<StorePath>,
}

/// Limits the planner works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Layers available for store paths (the image's max minus the customisation layer).
    pub store_layers: usize,
}

/// Plans the layers of `closure` within `budget`.
pub fn plan(closure: &Closure, budget: Budget) -> Plan {
    let mut paths: Vec<(&StorePath, u64)> = closure
        .iter()
        .map(|i| (&i.path, i.nar_size.unwrap_or(0)))
        .collect();
    paths.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let n = budget.store_layers.max(1);
    let mut layers: Vec<Layer> = Vec::new();
    for (i, (path, _)) in paths.into_iter().enumerate() {
        if i < n {
            layers.push(Layer {
                group: AUTO_GROUP.to_owned(),
                paths: vec![path.clone()],
            });
        } else {
            layers[n - 1].paths.push(path.clone());
        }
    }
    for l in &mut layers {
        l.paths.sort();
    }
    Plan { layers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::testing::info;

    fn closure(n: usize) -> Closure {
        Closure::new((0..n).map(|i| info(&format!("p{i}"), (i as u64 + 1) * 10, &[]))).unwrap()
    }

    /// Nothing lost, nothing twice, budget held.
    fn check(c: &Closure, p: &Plan, budget: usize) {
        let mut all: Vec<_> = p.layers.iter().flat_map(|l| l.paths.iter()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a path appears twice");
        assert_eq!(n, c.len(), "a path is lost");
        assert!(p.layers.len() <= budget.max(1));
    }

    #[test]
    fn one_layer_per_path_largest_first() {
        let c = closure(3);
        let p = plan(&c, Budget { store_layers: 10 });
        check(&c, &p, 10);
        assert_eq!(p.layers.len(), 3);
        assert_eq!(p.layers[0].paths[0].name(), "p2");
    }

    #[test]
    fn rest_is_merged_into_the_last_layer() {
        let c = closure(10);
        for budget in [1, 2, 5, 9, 10, 11] {
            let p = plan(
                &c,
                Budget {
                    store_layers: budget,
                },
            );
            check(&c, &p, budget);
            assert_eq!(p.layers.len(), budget.min(10));
            assert_eq!(
                p,
                plan(
                    &c,
                    Budget {
                        store_layers: budget
                    }
                ),
                "deterministic"
            );
        }
    }
}
