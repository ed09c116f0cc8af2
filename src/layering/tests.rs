//! Planner tests: table cases, multi-release scenarios, the recorded ComfyUI closure. Every case
//! goes through [`testing::plan_checked`], the shared invariant checker.

use super::testing::*;
use super::*;

const MB: u64 = 1_000_000;
const GB: u64 = 1_000_000_000;

/// A ComfyUI-shaped closure in miniature: natives, CUDA, torch, Python packages, env and app.
fn comfy() -> Synth {
    let mut s = Synth::default();
    s.add("glibc-2.40", 30 * MB, &[])
        .add("gcc-14.2.1-lib", 8 * MB, &["glibc-2.40"])
        .add("zlib-1.3.1", MB / 3, &["glibc-2.40"])
        .add("openssl-3.4.1", 7 * MB, &["glibc-2.40"])
        .add("python3-3.14.0", 110 * MB, &["glibc-2.40", "zlib-1.3.1", "openssl-3.4.1"])
        .add("cuda_cudart-13.0.48-lib", 2 * MB, &["glibc-2.40"])
        .add("libcublas-13.0.0.19-lib", 850 * MB, &["cuda_cudart-13.0.48-lib", "gcc-14.2.1-lib"])
        .add("cudnn-9.13.0.50-lib", 1100 * MB, &["libcublas-13.0.0.19-lib"])
        .add("nccl-2.27.7-1", 350 * MB, &["cuda_cudart-13.0.48-lib"])
        .add("openblas-0.3.29", 40 * MB, &["gcc-14.2.1-lib"])
        .add("python3.14-numpy-2.3.1", 45 * MB, &["python3-3.14.0", "openblas-0.3.29"])
        .add("python3.14-typing-extensions-4.14.0", MB / 5, &["python3-3.14.0"])
        .add("python3.14-filelock-3.18.0", MB / 10, &["python3-3.14.0"])
        .add("python3.14-sympy-1.14.0", 70 * MB, &["python3-3.14.0"])
        .add("python3.14-triton-3.5.0", 600 * MB, &["python3-3.14.0", "zlib-1.3.1"])
        .add(
            "python3.14-torch-2.10.0",
            4100 * MB,
            &[
                "python3-3.14.0",
                "cudnn-9.13.0.50-lib",
                "libcublas-13.0.0.19-lib",
                "nccl-2.27.7-1",
                "python3.14-numpy-2.3.1",
                "python3.14-typing-extensions-4.14.0",
                "python3.14-filelock-3.18.0",
                "python3.14-sympy-1.14.0",
                "python3.14-triton-3.5.0",
            ],
        )
        .add("python3.14-torchvision-0.25.0", 40 * MB, &["python3.14-torch-2.10.0"])
        .add("python3.14-safetensors-0.5.3", 2 * MB, &["python3.14-torch-2.10.0"])
        .add("python3.14-huggingface-hub-0.33.0", 3 * MB, &["python3-3.14.0", "python3.14-filelock-3.18.0"])
        .add("python3.14-tokenizers-0.21.1", 9 * MB, &["python3.14-huggingface-hub-0.33.0"])
        .add(
            "python3.14-transformers-4.53.0",
            80 * MB,
            &["python3.14-tokenizers-0.21.1", "python3.14-safetensors-0.5.3", "python3.14-torch-2.10.0"],
        )
        .add(
            "python3.14-diffusers-0.31.0",
            14 * MB,
            &["python3.14-huggingface-hub-0.33.0", "python3.14-safetensors-0.5.3", "python3.14-torch-2.10.0"],
        )
        .add("python3.14-compel-2.0.3", MB / 3, &["python3.14-diffusers-0.31.0", "python3.14-transformers-4.53.0"])
        .add("python3.14-pillow-11.2.1", 12 * MB, &["python3-3.14.0", "zlib-1.3.1"])
        .add("python3.14-scipy-1.15.3", 110 * MB, &["python3.14-numpy-2.3.1"])
        .add("python3.14-addict-2.4.0", MB / 10, &["python3-3.14.0"])
        .add("python3.14-toml-0.10.2", MB / 10, &["python3-3.14.0"])
        .add("python3.14-smmap-5.0.2", MB / 10, &["python3-3.14.0"])
        .add("python3.14-gitdb-4.0.12", MB / 2, &["python3.14-smmap-5.0.2"])
        .add("python3.14-gitpython-3.1.44", MB, &["python3.14-gitdb-4.0.12"]);
    let py: Vec<String> = s.pkgs.keys().filter(|k| k.starts_with("python3.14-")).cloned().collect();
    let mut env_deps: Vec<&str> = py.iter().map(String::as_str).collect();
    env_deps.push("python3-3.14.0");
    s.add("python3-3.14.0-env", 4 * MB, &env_deps);
    s.add("comfyui-0.3.68", 12 * MB, &["python3-3.14.0-env"]);
    s
}

fn budget(n: usize, cap: Option<u64>) -> Budget {
    Budget { store_layers: n, max_layer_size: cap }
}

#[test]
fn every_budget_and_cap_holds() {
    let c = comfy().closure();
    for cap in [None, Some(4 * GB), Some(GB)] {
        for n in [1, 2, 3, 5, 8, 13, 20, 31, 32, 33, 40, 100] {
            plan_checked(&c, &Groups::none(), budget(n, cap), None);
        }
    }
}

#[test]
fn a_budget_above_the_closure_gives_one_layer_per_path() {
    let c = comfy().closure();
    let p = plan_checked(&c, &Groups::none(), budget(c.len() + 1, None), None);
    assert_eq!(p.layers.len(), c.len(), "the reserved slot is left free");
    assert!((p.expected_update_ratio.unwrap() - 1.0).abs() < 1e-9);
    let p = plan_checked(&c, &Groups::none(), budget(c.len(), None), None);
    assert_eq!(p.layers.len(), c.len() - 1, "one layer held in reserve");
}

#[test]
fn tight_budgets_keep_big_stable_paths_away_from_volatile_ones() {
    let c = comfy().closure();
    let p = plan_checked(&c, &Groups::none(), budget(12, None), None);
    // The app and the env change on every release: nothing big may ride with them.
    for volatile in ["comfyui-0.3.68", "python3-3.14.0-env"] {
        let l = layer_of(&p, volatile);
        let ride: u64 = l
            .paths
            .iter()
            .filter(|q| !q.name().starts_with("comfyui") && !q.name().ends_with("-env"))
            .map(|q| c.nar_size(q))
            .sum();
        assert!(ride < 2 * MB, "{volatile} carries {ride} bytes: {:?}", names(&p));
    }
    // What rides with torch is small beside it: a torch bump pulls little that did not change.
    let torch = layer_of(&p, "python3.14-torch-2.10.0");
    let mates: u64 = torch.paths.iter().filter(|q| !q.name().contains("torch")).map(|q| c.nar_size(q)).sum();
    assert!(mates * 20 < 4100 * MB, "{:?}", names(&p));
    // The most volatile layer (the app and the env) sits on top.
    assert!(names(&p).last().unwrap().contains(&"comfyui-0.3.68"), "{:?}", names(&p));
}

#[test]
fn the_cap_splits_big_paths_and_the_budget_counts_the_parts() {
    let c = comfy().closure();
    let p = plan_checked(&c, &Groups::none(), budget(12, Some(2 * GB)), None);
    let torch = layer_of(&p, "python3.14-torch-2.10.0");
    assert_eq!(torch.split, Some(Split { parts: 3 }));
    assert!(p.layer_count() <= 11);
    // A cap below everything's needs: the budget yields, with a warning.
    let p = plan_checked(&c, &Groups::none(), budget(3, Some(500 * MB)), None);
    assert!(p.layer_count() > 3 && p.warnings.iter().any(|w| w.contains("budget yields")), "{:?}", p.warnings);
}

fn comfy_groups() -> Groups {
    Groups::new(vec![
        Group::new("runtime", &["glibc-*", "python3-3.*[0-9]"], SplitMode::None, None).unwrap(),
        Group::new("cuda-torch", &["python3.14-torch-*", "cudnn-*", "libcublas-*", "nccl-*"], SplitMode::PerPath, None)
            .unwrap(),
        Group::new(
            "ml",
            &["python3.14-diffusers-*", "python3.14-transformers-*", "python3.14-compel-*"],
            SplitMode::PerPath,
            Some(3),
        )
        .unwrap(),
        Group::new("app", &["python3-3.14.0-env", "comfyui-*"], SplitMode::PerPath, None).unwrap(),
    ])
    .unwrap()
}

#[test]
fn groups_partition_order_and_limits() {
    let c = comfy().closure();
    let g = comfy_groups();
    for n in [5, 8, 12, 20, 40] {
        for cap in [None, Some(2 * GB)] {
            plan_checked(&c, &g, budget(n, cap), None);
        }
    }
    let p = plan_checked(&c, &g, budget(40, None), None);
    let groups: Vec<&str> = p.layers.iter().map(|l| l.group.as_str()).collect();
    assert_eq!(groups.iter().filter(|g| **g == "runtime").count(), 1, "a group without split is one layer");
    assert!(groups.iter().filter(|g| **g == "ml").count() <= 3, "max_layers of a group holds");
    assert_eq!(groups.first(), Some(&"runtime"));
    // base's closure (zlib, openssl) came along with python3.
    assert!(layer_of(&p, "openssl-3.4.1").group == "runtime");
    // A budget smaller than the groups: they share layers, and a warning says so.
    let p = plan_checked(&c, &g, budget(3, None), None);
    assert!(p.warnings.iter().any(|w| w.contains("share layers")), "{:?}", p.warnings);
    assert!(p.layer_count() <= 3);
}

/// v1 → v2 (bump diffusers) → v3 (add a custom node with a new dependency, remove gitpython)
/// → v4 (bump python): which layers survive each step.
#[test]
fn releases_keep_what_did_not_change() {
    for (groups, n) in [(Groups::none(), 12), (comfy_groups(), 12), (Groups::none(), 40)] {
        let mut s = comfy();
        let c1 = s.closure();
        let v1 = plan_checked(&c1, &groups, budget(n, None), None);

        s.bump("python3.14-diffusers-0.31.0", "python3.14-diffusers-0.32.0");
        let c2 = s.closure();
        let prev = previous_of(&v1);
        let v2 = plan_checked(&c2, &groups, budget(n, None), Some(&prev));
        let r = v2.previous.as_ref().unwrap();
        // Every v1 layer without diffusers, compel, the env or the app survives byte for byte.
        let touched = ["python3.14-diffusers", "python3.14-compel", "python3-3.14.0-env", "comfyui"];
        for l in &v1.layers {
            let hit = l.paths.iter().any(|q| touched.iter().any(|t| q.name().starts_with(t)));
            assert_eq!(!hit, v2.layers.iter().any(|m| m.paths == l.paths), "layer {:?}", l.paths);
        }
        let ratio = pulled(&c2, &v1, &v2) as f64 / changed(&c2, &v1) as f64;
        assert!(ratio < 1.6, "diffusers bump pulls {ratio:.2}× what changed ({n} layers)");
        assert_eq!(v2.layers.iter().filter(|l| l.reused).count(), r.reused_layers);

        s.add("python3.14-piexif-1.1.3", MB / 2, &["python3-3.14.0"]);
        s.add("comfyui-impact-pack-8.8", 6 * MB, &["python3.14-piexif-1.1.3", "python3.14-torch-2.10.0"]);
        s.remove("python3.14-gitpython-3.1.44").remove("python3.14-gitdb-4.0.12").remove("python3.14-smmap-5.0.2");
        let mut app = s.pkgs["comfyui-0.3.68"].1.clone();
        app.push("comfyui-impact-pack-8.8".into());
        s.pkgs.get_mut("comfyui-0.3.68").unwrap().1 = app;
        let mut env = s.pkgs["python3-3.14.0-env"].1.clone();
        env.push("python3.14-piexif-1.1.3".into());
        s.pkgs.get_mut("python3-3.14.0-env").unwrap().1 = env;
        let c3 = s.closure();
        let prev = previous_of(&v2);
        let v3 = plan_checked(&c3, &groups, budget(n, None), Some(&prev));
        let gone = ["python3.14-gitpython", "python3.14-gitdb", "python3.14-smmap"];
        for l in &v2.layers {
            let hit = l.paths.iter().any(|q| {
                q.name().starts_with("python3-3.14.0-env")
                    || q.name().starts_with("comfyui")
                    || gone.iter().any(|g| q.name().starts_with(g))
            });
            if !hit {
                assert!(v3.layers.iter().any(|m| m.paths == l.paths), "v2 layer {:?} did not survive v3", l.paths);
            }
        }
        for newcomer in ["python3.14-piexif-1.1.3", "comfyui-impact-pack-8.8"] {
            assert!(!layer_of(&v3, newcomer).reused);
        }

        // v4: python bumped: everything Python changes; a fresh layout costs nothing extra.
        s.bump("python3-3.14.0", "python3-3.14.1");
        let c4 = s.closure();
        let prev = previous_of(&v3);
        let v4 = plan_checked(&c4, &groups, budget(n, None), Some(&prev));
        let r = v4.previous.as_ref().unwrap();
        // The rule: the cheaper of now + HORIZON·E wins.
        match r.strategy {
            Strategy::Sticky => {
                assert!(r.sticky.cost <= r.fresh.cost);
                // Sticky: every v3 layer whose paths all outlive the Python bump is kept.
                for l in v3.layers.iter().filter(|l| l.paths.iter().all(|q| c4.get(q).is_some())) {
                    assert!(
                        v4.layers.iter().any(|m| m.paths == l.paths),
                        "{:?} did not survive: {:?}",
                        l.paths,
                        names(&v4)
                    );
                }
            }
            Strategy::Replanned => {
                assert!(r.fresh.cost < r.sticky.cost);
            }
        }
        assert_eq!(r.pull_bytes, if r.strategy == Strategy::Sticky { r.sticky.pull_bytes } else { r.fresh.pull_bytes });
    }
}

#[test]
fn a_renamed_group_or_a_foreign_image_keeps_nothing() {
    let c = comfy().closure();
    let v1 = plan_checked(&c, &comfy_groups(), budget(12, None), None);
    // Same closure, no groups now: the group names differ, so nothing is kept as is...
    let p = plan_checked(&c, &Groups::none(), budget(12, None), Some(&previous_of(&v1)));
    assert!(p.layers.iter().all(|l| !l.reused || l.group == AUTO_GROUP));
    // ...and a previous image of other paths is simply ignored.
    let other = {
        let mut s = Synth::default();
        s.add("hello-2.12", MB, &[]);
        s.closure()
    };
    let o = plan_checked(&other, &Groups::none(), budget(4, None), None);
    let p = plan_checked(&c, &Groups::none(), budget(12, None), Some(&previous_of(&o)));
    assert_eq!(p.previous.unwrap().reused_layers, 0);
}

#[test]
fn an_unchanged_closure_reuses_every_layer() {
    let c = comfy().closure();
    for n in [6, 12, 40] {
        let v1 = plan_checked(&c, &comfy_groups(), budget(n, Some(2 * GB)), None);
        let v2 = plan_checked(&c, &comfy_groups(), budget(n, Some(2 * GB)), Some(&previous_of(&v1)));
        assert!(v2.layers.iter().all(|l| l.reused), "{:?}", names(&v2));
        assert_eq!(v2.layers, v1.layers.iter().map(|l| Layer { reused: true, ..l.clone() }).collect::<Vec<_>>());
    }
}

/// The recorded ComfyUI closure (tests/fixtures, made by scripts/synth-closure) with
/// layers/comfyui.toml: three releases, both budgets of the issue.
mod recorded {
    use super::*;
    use crate::closure::read::parse;

    fn fixture(name: &str) -> Closure {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn layers_file(name: &str) -> LayersFile {
        let path = format!("{}/layers/{name}", env!("CARGO_MANIFEST_DIR"));
        LayersFile::parse(&std::fs::read_to_string(&path).unwrap(), name).unwrap()
    }

    fn comfyui() -> LayersFile {
        layers_file("comfyui.toml")
    }

    fn ratio(c: &Closure, old: &Plan, new: &Plan) -> f64 {
        pulled(c, old, new) as f64 / changed(c, old) as f64
    }

    #[test]
    fn the_layers_file_covers_the_closure_and_the_plan_holds_its_invariants() {
        let c = fixture("comfyui-v1.json");
        let file = comfyui();
        assert_eq!(file.groups.warnings(&c, "layers/comfyui.toml"), Vec::<String>::new());
        let cap = file.max_layer_size;
        assert_eq!(cap, Some(4 << 30));
        // Nine groups, and cuda-torch needs three 4 GiB layers: ten layers cannot keep them apart.
        let p = plan_checked(&c, &file.groups, budget(10, cap), None);
        assert!(p.warnings.iter().any(|w| w.contains("share layers")), "{:?}", p.warnings);
        for n in [20, 40, 99, 100] {
            let p = plan_checked(&c, &file.groups, budget(n, cap), None);
            assert!(p.warnings.is_empty(), "{n}: {:?}", p.warnings);
            // Groups bottom to top, as the file orders them.
            let order: Vec<&str> = file.groups.iter().map(|g| g.name.as_str()).collect();
            let seen: Vec<&str> = p.layers.iter().map(|l| l.group.as_str()).collect();
            let mut dedup = seen.clone();
            dedup.dedup();
            assert!(
                dedup.iter().all(|g| order.contains(g))
                    && dedup
                        .windows(2)
                        .all(|w| { order.iter().position(|g| g == &w[0]) < order.iter().position(|g| g == &w[1]) })
            );
        }
        let p = plan_checked(&c, &file.groups, budget(40, cap), None);
        assert_eq!(p.layer_count(), 39, "one slot held in reserve");
        // The app and the environment change on every release: what rides with them is tiny.
        let top = layer_of(&p, "comfyui-0.3.68");
        let ride: u64 = top
            .paths
            .iter()
            .filter(|q| !q.name().starts_with("comfyui-0") && !q.name().ends_with("-env"))
            .map(|q| c.nar_size(q))
            .sum();
        assert!(ride <= 2_000_000, "{:?}", top.paths);
        assert_eq!(top.group, "app-env");
        assert_eq!(layer_of(&p, "python3.14-torch-2.10.0").group, "cuda-torch");
        assert_eq!(layer_of(&p, "glibc-2.40-66").group, "base-runtime");
        assert_eq!(layer_of(&p, "python3.14-diffusers-0.31.0").group, "ml-frameworks");
        // A 2 GiB cap splits torch (3.9 GB) and cuDNN + cuBLAS never exceed it together.
        let p = plan_checked(&c, &file.groups, budget(40, Some(2 << 30)), None);
        assert_eq!(layer_of(&p, "python3.14-torch-2.10.0").split, Some(Split { parts: 2 }));
    }

    /// v1 → v2 (diffusers bump) → v3 (custom node added, gitpython removed), with --previous.
    #[test]
    fn releases_pull_little_more_than_what_changed() {
        let (c1, c2, c3) =
            (fixture("comfyui-v1.json"), fixture("comfyui-v2-diffusers.json"), fixture("comfyui-v3-add-remove.json"));
        let file = comfyui();
        let g = &file.groups;
        // Measured ratios (scripts/bench-layering); the bounds guard against regressions.
        for (n, r2_max, r3_max) in [(40, 1.1, 1.1), (100, 1.05, 1.05)] {
            let b = budget(n, file.max_layer_size);
            let v1 = plan_checked(&c1, g, b, None);
            let v2 = plan_checked(&c2, g, b, Some(&previous_of(&v1)));
            let r2 = ratio(&c2, &v1, &v2);
            assert!(r2 <= r2_max, "diffusers bump at {n} layers: {r2:.3}");
            // Sticky: every v1 layer that holds nothing diffusers touches is kept byte for byte.
            if v2.previous.as_ref().unwrap().strategy == Strategy::Sticky {
                let touched = |q: &StorePath| c2.get(q).is_none();
                for l in v1.layers.iter().filter(|l| !l.paths.iter().any(touched)) {
                    assert!(v2.layers.iter().any(|m| m.paths == l.paths && m.reused), "{:?}", l.paths);
                }
            }
            let v3 = plan_checked(&c3, g, b, Some(&previous_of(&v2)));
            let r3 = ratio(&c3, &v2, &v3);
            assert!(r3 <= r3_max, "add/remove at {n} layers: {r3:.3}");
            // Without --previous the same release pulls far more: the layout moves.
            let fresh = plan_checked(&c3, g, b, None);
            assert!(ratio(&c3, &v2, &fresh) > r3, "{n}");
            for newcomer in ["comfyui-impact-pack-8.22.2", "python3.14-segment-anything-1.0"] {
                assert!(!layer_of(&v3, newcomer).reused);
            }
        }
    }

    /// layers/comfyui.toml caps the strata that change rarely or all at once with shares of the
    /// budget, so a 40-layer budget goes where single packages change: the diffusers bump and the
    /// add/remove release stay within 10 % of what changed, and the caps grow with the budget.
    #[test]
    fn the_default_file_keeps_small_releases_small_at_40_and_100_layers() {
        let (c1, c2, c3) =
            (fixture("comfyui-v1.json"), fixture("comfyui-v2-diffusers.json"), fixture("comfyui-v3-add-remove.json"));
        let file = comfyui();
        let caps = |n: usize| -> Vec<usize> { file.groups.iter().map(|g| g.limit(n)).collect() };
        assert!(caps(40).iter().zip(caps(100)).all(|(a, b)| *a <= b) && caps(40) != caps(100), "caps scale");
        for (n, max) in [(40, 1.1), (100, 1.05)] {
            let b = budget(n, file.max_layer_size);
            let v1 = plan_checked(&c1, &file.groups, b, None);
            let v2 = plan_checked(&c2, &file.groups, b, Some(&previous_of(&v1)));
            let v3 = plan_checked(&c3, &file.groups, b, Some(&previous_of(&v2)));
            let (r2, r3) = (ratio(&c2, &v1, &v2), ratio(&c3, &v2, &v3));
            assert!(r2 <= max && r3 <= max, "{n} layers: diffusers {r2:.3}, add/remove {r3:.3}");
        }
    }
}
