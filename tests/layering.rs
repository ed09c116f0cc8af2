//! `nixoci plan` and `nixoci build` with layer groups, a size cap and `--previous`, end to end:
//! the recorded ComfyUI closure (tests/fixtures) for plans, and a scaled store tree made by
//! scripts/synth-closure for real builds whose split layers are read back file by file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nixoci::transport::ImageRef;
use nixoci::transport::source::SourceImage;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixoci")).args(args).output().expect("running nixoci")
}

/// Runs nixoci, which must succeed; returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let out = run(args);
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "nixoci {args:?} failed:\n{se}");
    (so, se)
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "nixoci {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fixture(name: &str) -> String {
    repo().join("tests/fixtures").join(name).display().to_string()
}

fn comfyui_toml() -> String {
    repo().join("layers/comfyui.toml").display().to_string()
}

/// Each store path of the closure file, with its NAR size.
fn closure_sizes(file: &str) -> BTreeMap<String, u64> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| (i["path"].as_str().unwrap().to_owned(), i["narSize"].as_u64().unwrap()))
        .collect()
}

fn layer_paths(l: &Value) -> Vec<String> {
    l["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
}

#[test]
fn plan_json_holds_every_path_once_in_the_files_groups() {
    let v1 = fixture("comfyui-v1.json");
    let toml = comfyui_toml();
    let (out, err) = ok(&["plan", "--closure", &v1, "--layers", &toml, "--max-layers", "40", "--json"]);
    assert!(!err.contains("warning"), "{err}");
    let plan: Value = serde_json::from_str(&out).expect("stdout is one JSON document");
    let sizes = closure_sizes(&v1);
    let mut seen = BTreeSet::new();
    let groups = [
        "base-runtime",
        "cuda-torch",
        "perf-kernels",
        "ml-frameworks",
        "cv-face",
        "scientific",
        "utilities",
        "git-built",
        "app-env",
    ];
    let mut total = 0;
    for l in plan["layers"].as_array().unwrap() {
        assert!(groups.contains(&l["group"].as_str().unwrap()), "{l}");
        let paths = layer_paths(l);
        assert_eq!(l["nar_size"].as_u64().unwrap(), paths.iter().map(|p| sizes[p]).sum::<u64>());
        total += l["nar_size"].as_u64().unwrap();
        for p in paths {
            assert!(seen.insert(p.clone()), "{p} twice");
        }
    }
    assert_eq!(seen, sizes.keys().cloned().collect());
    assert_eq!(plan["total_nar_size"].as_u64().unwrap(), total);
    assert!(plan["layers"].as_array().unwrap().len() <= 40);
    assert_eq!(plan["max_layer_size"].as_u64(), Some(4 << 30), "from the layers file");
}

#[test]
fn plan_needs_no_store_and_marks_splits_for_build_time() {
    let v1 = fixture("comfyui-v1.json");
    let toml = comfyui_toml();
    let args =
        ["plan", "--closure", &v1, "--layers", &toml, "--store-root", "/nonexistent", "--max-layer-size", "2GiB"];
    let (json, _) = ok(&[&args[..], &["--json"]].concat());
    let plan: Value = serde_json::from_str(&json).unwrap();
    let torch = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| layer_paths(l)[0].ends_with("-python3.14-torch-2.10.0"))
        .unwrap();
    assert_eq!(torch["split"]["parts"], 2, "{torch}");
    assert_eq!(plan["max_layer_size"].as_u64(), Some(2 << 30), "the flag overrides the file");
    let (table, summary) = ok(&args);
    assert!(table.contains("split by its files at build time, ~2 layers"), "{table}");
    assert!(summary.contains("store layers"), "{summary}");
}

#[test]
fn previous_plan_json_keeps_unchanged_layers() {
    let dir = tempfile::tempdir().unwrap();
    let toml = comfyui_toml();
    let (v1, v2) = (fixture("comfyui-v1.json"), fixture("comfyui-v2-diffusers.json"));
    let (p1, _) = ok(&["plan", "--closure", &v1, "--layers", &toml, "--max-layers", "40", "--json"]);
    let prev = dir.path().join("v1.json");
    std::fs::write(&prev, &p1).unwrap();
    let prev = prev.display().to_string();
    let (p2, _) =
        ok(&["plan", "--closure", &v2, "--layers", &toml, "--max-layers", "40", "--previous", &prev, "--json"]);
    let (p1, p2): (Value, Value) = (serde_json::from_str(&p1).unwrap(), serde_json::from_str(&p2).unwrap());
    let before: BTreeSet<Vec<String>> = p1["layers"].as_array().unwrap().iter().map(layer_paths).collect();
    let mut kept = 0;
    for l in p2["layers"].as_array().unwrap() {
        let same = before.contains(&layer_paths(l));
        assert_eq!(l["reused"].as_bool().unwrap_or(false), same, "{l}");
        kept += usize::from(same);
    }
    let r = &p2["previous"];
    assert_eq!(r["reused_layers"].as_u64().unwrap() as usize, kept);
    assert!(kept >= 35, "only {kept} layers kept after a diffusers bump");
    let changed = r["changed_bytes"].as_u64().unwrap() as f64;
    assert!(r["pull_bytes"].as_u64().unwrap() as f64 <= 1.25 * changed, "{r}");
    // The table says which layers are kept.
    let (table, summary) =
        ok(&["plan", "--closure", &v2, "--layers", &toml, "--max-layers", "40", "--previous", &prev]);
    assert!(table.contains("(kept)") && summary.contains("layers kept"), "{table}\n{summary}");
    // A file that is not a plan is refused with its name.
    let err = fails(&["plan", "--closure", &v2, "--previous", &v1]);
    assert!(err.contains(&v1) && err.contains("plan --json"), "{err}");
}

#[test]
fn layers_file_errors_name_the_file_and_line_and_unmatched_globs_warn() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = fixture("comfyui-v1.json");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[group]]\nname = \"torch\"\nmatch = [\"python3.14-torch-*\"]\nspilt = \"per-path\"\n")
        .unwrap();
    let bad = bad.display().to_string();
    let err = fails(&["plan", "--closure", &v1, "--layers", &bad]);
    assert!(err.contains(&bad) && err.contains("line 4") && err.contains("spilt"), "{err}");
    let warn = dir.path().join("warn.toml");
    std::fs::write(
        &warn,
        "[[group]]\nname = \"torch\"\nmatch = [\n  \"python3.14-torch-*\",\n  \"tensorflow-*\",\n]\n",
    )
    .unwrap();
    let warn = warn.display().to_string();
    let (_, err) = ok(&["plan", "--closure", &v1, "--layers", &warn]);
    assert!(
        err.contains(&format!("warning: {warn}:5: glob \"tensorflow-*\" of group \"torch\" matches no store path")),
        "{err}"
    );
    let err = fails(&["plan", "--closure", &v1, "--max-layer-size", "4 parsecs"]);
    assert!(err.contains("unknown unit"), "{err}");
}

/// A scaled ComfyUI store: the closure file and the store root.
fn synth_store(dir: &Path, scenario: Option<&str>) -> String {
    let out = dir.join(format!("closure-{}.json", scenario.unwrap_or("v1")));
    let mut cmd = Command::new(repo().join("scripts/synth-closure"));
    cmd.args([
        "--store",
        &dir.join("store").display().to_string(),
        "--scale",
        "0.0002",
        "-o",
        &out.display().to_string(),
    ]);
    if let Some(s) = scenario {
        cmd.args(["--apply", s]);
    }
    let status = cmd.status().expect("running scripts/synth-closure (python3)");
    assert!(status.success());
    out.display().to_string()
}

/// Per layer: (digest, store paths, files in the tar, uncompressed size).
fn read_image(r: &str) -> Vec<(String, Vec<String>, Vec<String>, u64)> {
    let img = SourceImage::open(&ImageRef::parse(r).unwrap()).unwrap();
    (0..img.layers.len())
        .map(|i| {
            let l = &img.layers[i];
            let paths = l
                .annotations
                .get("org.nixos.nixoci.store-paths")
                .map_or_else(Vec::new, |s| s.lines().map(str::to_owned).collect());
            let mut tar = Vec::new();
            img.open_layer_tar(i).unwrap().read_to_end(&mut tar).unwrap();
            let mut files = Vec::new();
            for e in tar::Archive::new(&tar[..]).entries().unwrap() {
                let e = e.unwrap();
                if e.header().entry_type() != tar::EntryType::Directory {
                    files.push(e.path().unwrap().display().to_string());
                }
            }
            (l.digest.to_string(), paths, files, tar.len() as u64)
        })
        .collect()
}

#[test]
fn build_with_groups_splits_a_path_over_the_cap_and_keeps_layers_across_releases() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = synth_store(dir.path(), None);
    let store = dir.path().join("store").display().to_string();
    let toml = comfyui_toml();
    let img = dir.path().join("img").display().to_string();
    let cap: u64 = 512 << 10;
    let build = |closure: &str, tag: &str, extra: &[&str]| {
        let out = format!("oci:{img}:{tag}");
        let args = [
            &["build", "--closure", closure, "--store-root", &store, "--layers", &toml, "--max-layers", "40"][..],
            &["--max-layer-size", "512KiB", "--no-cache", "--json", "-o", &out],
            extra,
        ]
        .concat();
        let (json, err) = ok(&args);
        (serde_json::from_str::<Value>(&json).unwrap(), err, out)
    };
    let (report, _, r1) = build(&v1, "v1", &[]);
    let layers = read_image(&r1);
    assert_eq!(layers.len(), report["layers"].as_array().unwrap().len());
    // torch (3.9 GB scaled to ~780 kB) is over the cap: cut into parts, each under it, holding
    // torch's files exactly once between them.
    let torch: Vec<_> =
        layers.iter().filter(|l| l.1.len() == 1 && l.1[0].ends_with("-python3.14-torch-2.10.0")).collect();
    assert!(torch.len() >= 2, "torch not split: {:?}", layers.iter().map(|l| &l.1).collect::<Vec<_>>());
    let torch_dir = Path::new(&store).join(torch[0].1[0].trim_start_matches("/nix/store/"));
    let mut on_disk = Vec::new();
    for e in walk(&torch_dir) {
        on_disk.push(format!(
            "nix/store/{}",
            e.strip_prefix(&store).unwrap().display().to_string().trim_start_matches('/')
        ));
    }
    let mut in_parts: Vec<String> = torch.iter().flat_map(|l| l.2.clone()).collect();
    in_parts.sort();
    on_disk.sort();
    assert_eq!(in_parts, on_disk, "torch's files, once each, across its parts");
    for l in &layers {
        assert!(l.3 <= cap, "layer {} is {} bytes, over the cap", l.0, l.3);
    }
    for (d, l) in report["layers"].as_array().unwrap().iter().zip(&layers) {
        assert_eq!(d["digest"].as_str().unwrap(), l.0);
        assert!(d["uncompressed_size"].as_u64().unwrap() <= cap);
    }

    // v2 (diffusers bumped) with --previous the v1 image: unchanged layers are the same blobs.
    let v2 = synth_store(dir.path(), Some("bump-diffusers"));
    let (_, _, r2) = build(&v2, "v2", &["--previous", &r1]);
    let after = read_image(&r2);
    let before: BTreeSet<&String> = layers.iter().map(|l| &l.0).collect();
    let kept = after.iter().filter(|l| before.contains(&l.0)).count();
    assert!(kept + 4 >= after.len(), "only {kept} of {} layers kept", after.len());
    for t in &torch {
        assert!(after.iter().any(|l| l.0 == t.0), "torch part {} rebuilt", t.0);
    }
    // The same from the image and from what `build --json` printed for v1.
    let build_json = dir.path().join("v1-build.json");
    std::fs::write(&build_json, serde_json::to_string(&report).unwrap()).unwrap();
    let build_json = build_json.display().to_string();
    let plan_from = |previous: &str| {
        let args = ["plan", "--closure", &v2, "--layers", &toml, "--max-layers", "40", "--max-layer-size", "512KiB"];
        let (plan, _) = ok(&[&args[..], &["--previous", previous, "--json"]].concat());
        serde_json::from_str::<Value>(&plan).unwrap()
    };
    let (from_image, from_json) = (plan_from(&r1), plan_from(&build_json));
    assert_eq!(from_image["layers"], from_json["layers"]);
    let reused = from_image["previous"]["reused_layers"].as_u64().unwrap() as usize;
    assert!(reused + 4 >= from_image["layers"].as_array().unwrap().len());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
