//! `nixoci inspect` and `nixoci diff` end to end: the real binary on images it built from two
//! variants of a small closure, on an image umoci made, through every local transport, on damaged
//! input, and the HTML report rendered in headless Chromium.
//!
//! The closure (made here, no Nix needed; NAR hashes and sizes are real):
//!   lib-2.3   (40 KiB, incompressible)      unchanged
//!   static-0.5 (8 KiB text)                 unchanged
//!   data-1.0  → data-1.1 in variant 2 (13 KiB) content and version change
//!   tool-1.0  embeds data's and lib's paths  → new hash, same version
//!   env       links tool, mentions static    → new hash
//! The real Nix test closure (`scripts/nix-test-closure`, variants 1 and 2) is diffed too.
//! External tools (Nix, umoci, skopeo, chromium) are skipped when missing, except under CI (env CI),
//! where a missing tool fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

mod common;

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

// ---- a tiny store: trees, NARs, closure JSON ------------------------------------------------------

enum Node {
    File(Vec<u8>, bool),
    Link(String),
    Dir(Vec<(&'static str, Node)>),
}

fn nar_str(out: &mut Vec<u8>, b: &[u8]) {
    out.extend((b.len() as u64).to_le_bytes());
    out.extend(b);
    out.extend(std::iter::repeat_n(0u8, (8 - b.len() % 8) % 8));
}

fn nar_node(n: &Node, out: &mut Vec<u8>) {
    nar_str(out, b"(");
    nar_str(out, b"type");
    match n {
        Node::File(data, exec) => {
            nar_str(out, b"regular");
            if *exec {
                nar_str(out, b"executable");
                nar_str(out, b"");
            }
            nar_str(out, b"contents");
            nar_str(out, data);
        }
        Node::Link(t) => {
            nar_str(out, b"symlink");
            nar_str(out, b"target");
            nar_str(out, t.as_bytes());
        }
        Node::Dir(entries) => {
            nar_str(out, b"directory");
            let mut sorted: Vec<&(&str, Node)> = entries.iter().collect();
            sorted.sort_by_key(|(n, _)| *n);
            for (name, child) in sorted {
                nar_str(out, b"entry");
                nar_str(out, b"(");
                nar_str(out, b"name");
                nar_str(out, name.as_bytes());
                nar_str(out, b"node");
                nar_node(child, out);
                nar_str(out, b")");
            }
        }
    }
    nar_str(out, b")");
}

fn write_node(n: &Node, at: &Path) {
    match n {
        Node::File(data, exec) => {
            fs::write(at, data).unwrap();
            fs::set_permissions(at, fs::Permissions::from_mode(if *exec { 0o755 } else { 0o644 })).unwrap();
        }
        Node::Link(t) => std::os::unix::fs::symlink(t, at).unwrap(),
        Node::Dir(entries) => {
            fs::create_dir_all(at).unwrap();
            for (name, child) in entries {
                write_node(child, &at.join(name));
            }
        }
    }
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Store {
    store_root: PathBuf,
    closure: PathBuf,
    image_toml: PathBuf,
    /// name without hash (`data`, `tool`…) → full store path.
    paths: BTreeMap<&'static str, String>,
}

struct StoreBuilder {
    root: PathBuf,
    infos: Vec<Value>,
    paths: BTreeMap<&'static str, String>,
}

impl StoreBuilder {
    /// Adds `<hash>-<name>`; its hash depends on its name and NAR (which holds its references).
    fn add(&mut self, key: &'static str, name: &str, node: Node, refs: &[&str]) -> String {
        let mut nar = Vec::new();
        nar_str(&mut nar, b"nix-archive-1");
        nar_node(&node, &mut nar);
        let fp = Sha256::new().chain_update(name).chain_update(&nar).finalize();
        let hash: String = fp.iter().take(32).map(|b| NIX32[(*b % 32) as usize] as char).collect();
        let base = format!("{hash}-{name}");
        write_node(&node, &self.root.join(&base));
        let full = format!("/nix/store/{base}");
        let nar_hash = nixoci::closure::NarHash(Sha256::digest(&nar).into()).to_string();
        let references: Vec<String> = refs.iter().map(|r| self.paths[r].clone()).collect();
        self.infos.push(
            serde_json::json!({"path": full, "narHash": nar_hash, "narSize": nar.len(), "references": references}),
        );
        self.paths.insert(key, full.clone());
        full
    }
}

fn make_store(dir: &Path, variant: u8) -> Store {
    let root = dir.join("store");
    fs::create_dir_all(&root).unwrap();
    let mut b = StoreBuilder { root: root.clone(), infos: Vec::new(), paths: BTreeMap::new() };
    let lib = b.add(
        "lib",
        "lib-2.3",
        Node::Dir(vec![("lib", Node::Dir(vec![("libfoo.so", Node::File(noise(40 << 10, 7), true))]))]),
        &[],
    );
    let stat = b.add(
        "static",
        "static-0.5",
        Node::Dir(vec![("share", Node::Dir(vec![("static.txt", Node::File(b"static data\n".repeat(700), false))]))]),
        &[],
    );
    let data = if variant == 1 {
        b.add(
            "data",
            "data-1.0",
            Node::Dir(vec![(
                "share",
                Node::Dir(vec![
                    ("blob.bin", Node::File(noise(12 << 10, 1), false)),
                    ("data.txt", Node::File(b"data version one\n".repeat(20), false)),
                    ("old.txt", Node::File(b"only in 1.0\n".to_vec(), false)),
                ]),
            )]),
            &[],
        )
    } else {
        b.add(
            "data",
            "data-1.1",
            Node::Dir(vec![(
                "share",
                Node::Dir(vec![
                    ("blob.bin", Node::File(noise(12 << 10, 2), false)),
                    ("data.txt", Node::File(b"data version 1.1, longer\n".repeat(30), false)),
                    ("extra.txt", Node::File(b"new in 1.1\n".to_vec(), false)),
                ]),
            )]),
            &[],
        )
    };
    let script = format!("#!/bin/sh\ncat {data}/share/data.txt\n# links {lib}/lib/libfoo.so\n");
    let tool = b.add(
        "tool",
        "tool-1.0",
        Node::Dir(vec![("bin", Node::Dir(vec![("tool", Node::File(script.into_bytes(), true))]))]),
        &["data", "lib"],
    );
    let profile = format!("export PATH={tool}/bin\nexport STATIC={stat}/share\n");
    b.add(
        "env",
        "env",
        Node::Dir(vec![
            ("bin", Node::Dir(vec![("tool", Node::Link(format!("{tool}/bin/tool")))])),
            ("etc", Node::Dir(vec![("profile", Node::File(profile.into_bytes(), false))])),
        ]),
        &["tool", "static"],
    );
    let closure = dir.join("closure.json");
    fs::write(&closure, serde_json::to_string_pretty(&Value::Array(b.infos)).unwrap()).unwrap();
    let env = &b.paths["env"];
    let image_toml = dir.join("image.toml");
    let label = if variant == 1 { "one".to_owned() } else { r#"two <b>&amp; \"quoted\"</b>"#.to_owned() };
    fs::write(
        &image_toml,
        format!(
            "entrypoint = [\"{tool}/bin/tool\"]\nenv = [\"PATH={env}/bin\", \"LANG=C.UTF-8\"]\nuser = \"1000\"\n\
             labels = {{ release = \"{label}\" }}\n\n[[files]]\npath = \"/etc/motd\"\ncontent = \"hello\\n\"\nmode = \"0644\"\n"
        ),
    )
    .unwrap();
    Store { store_root: root, closure, image_toml, paths: b.paths }
}

// ---- running things -------------------------------------------------------------------------------

fn nixoci(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixoci")).args(args).env("NIXOCI_LOG", "warn").output().unwrap()
}

/// Runs nixoci, asserts success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = nixoci(args);
    assert!(out.status.success(), "nixoci {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs nixoci, asserts failure, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = nixoci(args);
    assert!(!out.status.success(), "nixoci {args:?} should fail; stdout:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

/// Whether `name` is installed; under CI a missing tool fails the test instead.
fn have(name: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{name} is not installed (CI must have it)");
        eprintln!("SKIPPED: {name} is not installed");
    }
    found
}

fn run_tool(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `cmd`, killing it after `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran past {limit:?}; stderr:\n{}", fs::read_to_string(&e).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), fs::read_to_string(&o).unwrap(), String::from_utf8_lossy(&fs::read(&e).unwrap()).into_owned())
}

// ---- the shared fixture ----------------------------------------------------------------------------

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    v1: Store,
    v2: Store,
}

impl Fixture {
    fn p(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }
}

/// Variant 1 as oci:IMG:v1, oci-archive:v1.tar, docker-archive:v1-docker.tar, and regrouped
/// (--max-layers 4) as oci:IMG:v1-regrouped; variant 2 as oci:IMG:v2.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let v1 = make_store(&dir.join("v1"), 1);
        let v2 = make_store(&dir.join("v2"), 2);
        let img = dir.join("img");
        let build = |s: &Store, extra: &[&str], outs: &[String]| {
            let (c, r, i) = (
                s.closure.display().to_string(),
                s.store_root.display().to_string(),
                s.image_toml.display().to_string(),
            );
            let mut args = vec!["build", "-q", "--closure", &c, "--store-root", &r, "--image", &i];
            args.extend(extra);
            for o in outs {
                args.extend(["-o", o.as_str()]);
            }
            ok(&args);
        };
        let d = dir.display();
        build(
            &v1,
            &[],
            &[
                format!("oci:{}:v1", img.display()),
                format!("oci-archive:{d}/v1.tar"),
                format!("docker-archive:{d}/v1-docker.tar"),
            ],
        );
        build(&v1, &["--max-layers", "4"], &[format!("oci:{}:v1-regrouped", img.display())]);
        build(&v2, &[], &[format!("oci:{}:v2", img.display())]);
        Fixture { _dir: tmp, dir, v1, v2 }
    })
}

/// The layers of `oci:DIR:TAG`'s manifest, read directly from the layout: (digest, size, paths).
fn manifest_layers(dir: &Path, tag: &str) -> Vec<(String, u64, Vec<String>)> {
    let blob = |d: &str| fs::read(dir.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .is_some_and(|r| r == tag || r.ends_with(&format!(":{tag}")))
        })
        .unwrap();
    let manifest: Value = serde_json::from_slice(&blob(m["digest"].as_str().unwrap())).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let paths = l["annotations"]["org.nixos.nixoci.store-paths"]
                .as_str()
                .unwrap_or("")
                .lines()
                .map(str::to_owned)
                .collect();
            (l["digest"].as_str().unwrap().to_owned(), l["size"].as_u64().unwrap(), paths)
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect()
}

fn digests(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
}

// ---- the tests ----------------------------------------------------------------------------------

#[test]
fn diff_names_exactly_the_changed_paths_and_the_bytes_to_download() {
    let f = fixture();
    let (old, new) = (format!("oci:{}:v1", f.p("img")), format!("oci:{}:v2", f.p("img")));
    let out = nixoci(&["diff", &old, &new, "--json"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("reading layer"), "annotated images need no layer read");
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Exactly data, tool and env changed; nothing added or removed.
    assert_eq!(strings(&d["paths"]["added"]), Vec::<String>::new());
    assert_eq!(strings(&d["paths"]["removed"]), Vec::<String>::new());
    let changed: Vec<(String, String, String, String)> = d["paths"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            (s("name"), s("old"), s("new"), s("change"))
        })
        .collect();
    let exp = |k: &str, change: &str| (k.to_owned(), f.v1.paths[k].clone(), f.v2.paths[k].clone(), change.to_owned());
    assert_eq!(
        changed,
        [exp("data", "version"), exp("env", "same-version-new-hash"), exp("tool", "same-version-new-hash")]
    );
    assert_eq!(d["paths"]["changed"][0]["old_version"], "1.0");
    assert_eq!(d["paths"]["changed"][0]["new_version"], "1.1");
    assert_eq!(d["paths"]["unchanged"], 2);

    // Shared layers are exactly those of lib, static and the customisation layer.
    let old_layers = manifest_layers(&f.dir.join("img"), "v1");
    let new_layers = manifest_layers(&f.dir.join("img"), "v2");
    let changed_new: BTreeSet<&String> = ["data", "tool", "env"].iter().map(|k| &f.v2.paths[k]).collect();
    let holds_changed = |l: &(String, u64, Vec<String>)| l.2.iter().any(|p| changed_new.contains(p));
    let want_shared: BTreeSet<String> = new_layers.iter().filter(|l| !holds_changed(l)).map(|l| l.0.clone()).collect();
    assert_eq!(want_shared.len(), 3, "lib, static, customisation");
    assert_eq!(digests(&d["layers"]["shared"]), want_shared);
    let shared_paths: BTreeSet<String> =
        d["layers"]["shared"].as_array().unwrap().iter().flat_map(|l| strings(&l["paths"])).collect();
    assert_eq!(shared_paths, [f.v2.paths["lib"].clone(), f.v2.paths["static"].clone()].into());
    assert_eq!(
        digests(&d["layers"]["added"]),
        new_layers.iter().filter(|l| holds_changed(l)).map(|l| l.0.clone()).collect()
    );
    let changed_old: BTreeSet<&String> = ["data", "tool", "env"].iter().map(|k| &f.v1.paths[k]).collect();
    let removed: BTreeSet<String> =
        old_layers.iter().filter(|l| l.2.iter().any(|p| changed_old.contains(p))).map(|l| l.0.clone()).collect();
    assert_eq!(digests(&d["layers"]["removed"]), removed);

    // Download bytes: the summed sizes of the changed layers; and NEW's total.
    let want: u64 = new_layers.iter().filter(|l| holds_changed(l)).map(|l| l.1).sum();
    assert!(want > 0);
    assert_eq!(d["download_bytes"], want);
    assert_eq!(d["new_total_bytes"], new_layers.iter().map(|l| l.1).sum::<u64>());
    assert_eq!(d["identical"], false);

    // Config: entrypoint, env PATH and the label changed; nothing else.
    let fields: Vec<String> =
        d["config"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap().to_owned()).collect();
    assert_eq!(fields, ["entrypoint", "env PATH", "label release"]);

    // The human report says the same, in tables.
    let text = ok(&["diff", &old, &new]);
    for needle in [
        "DOWNLOAD",
        "1.0 → 1.1",
        "same version, new hash (a dependency changed)",
        "3 shared, 3 added, 3 removed",
        "env PATH",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    eprintln!("{text}");
}

#[test]
fn files_diff_reads_only_the_changed_layers() {
    let f = fixture();
    let (old, new) = (format!("oci:{}:v1", f.p("img")), format!("oci:{}:v2", f.p("img")));
    let out = nixoci(&["diff", &old, &new, "--files", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("for --files").count(), 6, "3 layers of each image:\n{stderr}");
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = |i: usize, kind: &str| -> Vec<(String, Option<u64>, Option<u64>)> {
        d["paths"]["changed"][i]["files"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["path"].as_str().unwrap().to_owned(), c["old_size"].as_u64(), c["new_size"].as_u64()))
            .collect()
    };
    // data
    assert_eq!(
        files(0, "modified"),
        [
            ("share/blob.bin".to_owned(), Some(12 << 10), Some(12 << 10)),
            ("share/data.txt".to_owned(), Some(17 * 20), Some(25 * 30))
        ]
    );
    assert_eq!(files(0, "added"), [("share/extra.txt".to_owned(), None, Some(11))]);
    assert_eq!(files(0, "removed"), [("share/old.txt".to_owned(), Some(12), None)]);
    // env and tool: their files differ only by the references to the rebuilt data and tool.
    let whats = |i: usize| -> Vec<(String, String)> {
        d["paths"]["changed"][i]["files"]["modified"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["path"].as_str().unwrap().to_owned(), c["what"].as_str().unwrap().to_owned()))
            .collect()
    };
    let refs = |p: &str| (p.to_owned(), "references".to_owned());
    assert_eq!(whats(1), [refs("bin/tool"), refs("etc/profile")]);
    assert_eq!(whats(2), [refs("bin/tool")]);
    assert_eq!(d["paths"]["changed"][1]["cause"], "dependency");
    assert_eq!(d["paths"]["changed"][2]["cause"], "dependency");
    assert!(d["paths"]["changed"][0].get("cause").is_none(), "a version change needs no cause");
    assert_eq!(whats(0)[0].1, "content");

    let text = ok(&["diff", &old, &new, "--files"]);
    assert!(
        text.contains("modified (content)")
            && text.contains("modified (references)")
            && text.contains("share/extra.txt"),
        "{text}"
    );
}

#[test]
fn an_image_against_itself_and_through_two_transports_is_identical() {
    let f = fixture();
    let oci = format!("oci:{}:v1", f.p("img"));
    for other in [oci.clone(), format!("oci-archive:{}", f.p("v1.tar"))] {
        let d = json(&["diff", &oci, &other, "--json"]);
        assert_eq!(d["identical"], true, "{other}");
        assert_eq!(d["download_bytes"], 0);
        assert_eq!(d["layers"]["added"].as_array().unwrap().len(), 0);
        assert_eq!(d["layers"]["removed"].as_array().unwrap().len(), 0);
        assert_eq!(d["layers"]["shared"].as_array().unwrap().len(), 6);
        assert!(d["paths"]["changed"].as_array().unwrap().is_empty() && d["config"].as_array().unwrap().is_empty());
        assert!(ok(&["diff", &oci, &other]).contains("identical"));
    }
    // docker-archive holds the same tars uncompressed: new blobs, same content.
    let d = json(&["diff", &oci, &format!("docker-archive:{}", f.p("v1-docker.tar")), "--json"]);
    assert_eq!(d["identical"], false);
    assert_eq!(d["layers"]["recompressed"].as_array().unwrap().len(), 6);
    assert!(d["paths"]["changed"].as_array().unwrap().is_empty() && d["config"].as_array().unwrap().is_empty());
    assert_eq!(d["paths"]["unchanged"], 5);
    let text = ok(&["diff", &oci, &format!("docker-archive:{}", f.p("v1-docker.tar"))]);
    assert_eq!(text.matches("added (recompressed)").count(), 6, "{text}");
    // The HTML page says so too (it once showed them as plain "added").
    let tmp = common::tempdir();
    let report = tmp.path().join("recompressed.html");
    ok(&["diff", &oci, &format!("docker-archive:{}", f.p("v1-docker.tar")), "--html", &report.display().to_string()]);
    let html = fs::read_to_string(&report).unwrap();
    assert_eq!(html.matches("<td>added (recompressed)</td>").count(), 6, "{html}");
    assert_eq!(html.matches("class=\"layer recompressed\"").count(), 6, "NEW's bar colours them");
}

#[test]
fn layers_changed_only_by_grouping_are_called_regrouped() {
    let f = fixture();
    let (old, new) = (format!("oci:{}:v1", f.p("img")), format!("oci:{}:v1-regrouped", f.p("img")));
    let d = json(&["diff", &old, &new, "--json"]);
    assert!(d["paths"]["changed"].as_array().unwrap().is_empty());
    let regrouped = d["layers"]["regrouped"].as_array().unwrap();
    // Whatever the planner merges at 3 store layers: each multi-path layer of v1-regrouped is a
    // regrouping of v1's one-path layers.
    let merged: BTreeSet<BTreeSet<String>> = manifest_layers(&f.dir.join("img"), "v1-regrouped")
        .into_iter()
        .filter(|l| l.2.len() > 1)
        .map(|l| l.2.into_iter().collect())
        .collect();
    assert!(!merged.is_empty());
    let got: BTreeSet<BTreeSet<String>> =
        regrouped.iter().map(|r| strings(&r["paths"]).into_iter().collect()).collect();
    assert_eq!(got, merged, "{d:#}");
    for r in regrouped {
        assert_eq!(r["moved_from"].as_array().unwrap().len(), r["paths"].as_array().unwrap().len());
    }
    let moved_from: BTreeSet<String> = regrouped.iter().flat_map(|r| strings(&r["moved_from"])).collect();
    assert_eq!(digests(&d["layers"]["removed"]), moved_from);
    assert_eq!(d["layers"]["regrouped_removed"].as_array().unwrap().len(), moved_from.len());
    let text = ok(&["diff", &old, &new]);
    assert!(
        text.contains("changed only because the grouping moved store paths") && text.contains("removed (regrouped)"),
        "{text}"
    );
    eprintln!("{text}");
    let added: u64 = d["layers"]["added"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum();
    assert_eq!(d["download_bytes"].as_u64().unwrap(), added);
}

#[test]
fn inspect_shows_config_layers_and_paths() {
    let f = fixture();
    let r = format!("oci:{}:v2", f.p("img"));
    let ins = json(&["inspect", &r, "--json"]);
    assert_eq!(ins["platform"], "linux/amd64");
    assert_eq!(ins["config"]["entrypoint"][0], format!("{}/bin/tool", f.v2.paths["tool"]));
    let layers = ins["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 6);
    assert!(layers.iter().all(|l| l["paths_from"] == "annotation" && l["unpacked_size"].is_null()));
    let all: BTreeSet<String> = layers.iter().flat_map(|l| strings(&l["paths"])).collect();
    assert_eq!(all, f.v2.paths.values().cloned().collect());
    // --read-layers reads and verifies them all, and knows their tar sizes.
    let ins = json(&["inspect", &r, "--json", "--read-layers"]);
    assert!(ins["layers"].as_array().unwrap().iter().all(|l| l["unpacked_size"].as_u64().unwrap() > 0));
    let text = ok(&["inspect", &r]);
    for needle in ["MANIFEST", "ENTRYPOINT", "tar+gzip", &f.v2.paths["data"], "customisation"] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // docker-archive: uncompressed layers, so the unpacked size is known without reading.
    let ins = json(&["inspect", &format!("docker-archive:{}", f.p("v1-docker.tar")), "--json"]);
    let l = &ins["layers"][0];
    assert_eq!(l["unpacked_size"], l["size"]);
}

/// A rootfs dir turned into an image by umoci: one layer with `common-1` and `gone-1`, then OLD
/// adds `foo-1.0`, NEW adds `foo-1.1` and deletes `gone-1` with a whiteout.
#[test]
fn an_image_nixoci_did_not_build_works_from_tar_headers() {
    if !have("umoci") || !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (common, gone, foo1, foo2) = (
        "0a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-common-1",
        "1a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-gone-1",
        "2a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-foo-1.0",
        "3a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-foo-1.1",
    );
    let mk = |root: &str, files: &[(&str, &str)]| {
        for (p, content) in files {
            let p = d.join(root).join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
    };
    mk(
        "base",
        &[
            (&format!("nix/store/{common}/share/c.txt"), "common"),
            (&format!("nix/store/{gone}/g"), "gone"),
            ("etc/os-release", "ID=test\n"),
        ],
    );
    mk("old", &[(&format!("nix/store/{foo1}/bin/foo"), "foo one")]);
    mk(
        "new",
        &[(&format!("nix/store/{foo2}/bin/foo"), "foo one point one"), (&format!("nix/store/{foo2}/share/doc"), "doc")],
    );
    let layout = d.join("layout");
    let img = |tag: &str| format!("{}:{tag}", layout.display());
    let umoci = |args: &[&str]| run_tool(Command::new("umoci").args(args));
    umoci(&["init", "--layout", &layout.display().to_string()]);
    umoci(&["new", "--image", &img("base")]);
    umoci(&["insert", "--rootless", "--image", &img("base"), &d.join("base").display().to_string(), "/"]);
    umoci(&["tag", "--image", &img("base"), "old"]);
    umoci(&["tag", "--image", &img("base"), "new"]);
    umoci(&["insert", "--rootless", "--image", &img("old"), &d.join("old/nix").display().to_string(), "/nix"]);
    umoci(&["insert", "--rootless", "--image", &img("new"), &d.join("new/nix").display().to_string(), "/nix"]);
    umoci(&["insert", "--rootless", "--image", &img("new"), "--whiteout", &format!("/nix/store/{gone}")]);

    let (old, new) = (format!("oci:{}", img("old")), format!("oci:{}", img("new")));
    let ins = json(&["inspect", &new, "--json"]);
    let layers = ins["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert!(layers.iter().all(|l| l["paths_from"] == "tar-headers"));
    assert_eq!(strings(&layers[0]["paths"]), [format!("/nix/store/{common}"), format!("/nix/store/{gone}")]);
    assert_eq!(layers[0]["other_entries"].as_u64().unwrap(), 2, "etc and etc/os-release");
    assert_eq!(strings(&layers[1]["paths"]), [format!("/nix/store/{foo2}")]);
    assert_eq!(strings(&layers[2]["whiteouts"]), [format!("/nix/store/{gone}")]);
    let text = ok(&["inspect", &new]);
    assert!(text.contains(&format!("(deletes /nix/store/{gone})")), "{text}");

    let d2 = json(&["diff", &old, &new, "--files", "--json"]);
    assert_eq!(d2["layers"]["shared"].as_array().unwrap().len(), 1);
    assert_eq!(d2["paths"]["removed"], serde_json::json!([format!("/nix/store/{gone}")]));
    let c = &d2["paths"]["changed"][0];
    assert_eq!(
        (c["name"].as_str(), c["old_version"].as_str(), c["new_version"].as_str()),
        (Some("foo"), Some("1.0"), Some("1.1"))
    );
    assert_eq!(c["files"]["modified"][0]["path"], "bin/foo");
    assert_eq!(c["files"]["modified"][0]["new_size"], 17);
    assert_eq!(c["files"]["added"].as_array().unwrap().iter().filter(|f| f["path"] == "share/doc").count(), 1);
    let new_sizes: u64 = manifest_layers(&layout, "new").iter().skip(1).map(|l| l.1).sum();
    assert_eq!(d2["download_bytes"], new_sizes);

    // The same image as a docker-archive made by skopeo reads the same.
    let archive = d.join("new-docker.tar");
    run_tool(Command::new("skopeo").args([
        "copy",
        "-q",
        &new,
        &format!("docker-archive:{}:localhost/new:1", archive.display()),
    ]));
    let via = json(&["inspect", &format!("docker-archive:{}", archive.display()), "--json"]);
    let paths =
        |v: &Value| v["layers"].as_array().unwrap().iter().flat_map(|l| strings(&l["paths"])).collect::<Vec<_>>();
    assert_eq!(paths(&via), paths(&ins));
    let d3 = json(&["diff", &new, &format!("docker-archive:{}", archive.display()), "--json"]);
    assert!(
        d3["paths"]["changed"].as_array().unwrap().is_empty() && d3["paths"]["added"].as_array().unwrap().is_empty()
    );

    // A flipped byte in a layer nobody annotated is caught when its headers are read.
    let copy = d.join("broken");
    run_tool(Command::new("cp").arg("-a").arg(&layout).arg(&copy));
    let top = manifest_layers(&copy, "new")[1].0.clone();
    let blob = copy.join("blobs/sha256").join(top.trim_start_matches("sha256:"));
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&blob, &bytes).unwrap();
    let err = fails(&["inspect", &format!("oci:{}:new", copy.display())]);
    assert!(err.contains("does not match its digest") && err.contains(&top) && err.contains("broken"), "{err}");
}

#[test]
fn damaged_input_gives_a_clear_error() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let good = format!("oci:{}:v1", f.p("img"));

    // A truncated oci-archive, cut inside a member's data and inside a header.
    let bytes = fs::read(f.dir.join("v1.tar")).unwrap();
    let cut = tmp.path().join("cut.tar");
    for len in [bytes.len() * 2 / 3, 3000] {
        fs::write(&cut, &bytes[..len]).unwrap();
        let r = format!("oci-archive:{}", cut.display());
        let err = fails(&["diff", &good, &r]);
        assert!(err.contains(&format!("reading image {r}")) && err.contains("is truncated"), "{err}");
    }

    // A layer blob cut short: found when it is read (--read-layers, --files).
    let copy = tmp.path().join("img");
    run_tool(Command::new("cp").arg("-a").arg(f.dir.join("img")).arg(&copy));
    let r = format!("oci:{}:v1", copy.display());
    let layers = manifest_layers(&copy, "v1");
    let data_layer = layers.iter().find(|l| l.2.contains(&f.v1.paths["data"])).unwrap().0.clone();
    let blob = copy.join("blobs/sha256").join(data_layer.trim_start_matches("sha256:"));
    let b = fs::read(&blob).unwrap();
    fs::write(&blob, &b[..b.len() - 10]).unwrap();
    let err = fails(&["inspect", &r, "--read-layers"]);
    assert!(err.contains("truncated") && err.contains(&data_layer) && err.contains(&r), "{err}");
    let err = fails(&["diff", &r, &format!("oci:{}:v2", f.p("img")), "--files"]);
    assert!(err.contains("truncated") && err.contains(&data_layer), "{err}");

    // A layer whose tar does not match the config's diff_id (config and manifest rewritten so
    // that their own digests are right).
    let other = layers.iter().find(|l| l.2.contains(&f.v1.paths["lib"])).unwrap().0.clone();
    rewrite_diff_id(&copy, "v1", &other);
    let err = fails(&["inspect", &r, "--read-layers"]);
    assert!(err.contains("diff_id") && err.contains(&other), "{err}");

    // A config blob that does not match its digest.
    let cfg = config_digest(&copy, "v1");
    let path = copy.join("blobs/sha256").join(cfg.trim_start_matches("sha256:"));
    let mut c = fs::read(&path).unwrap();
    c[10] ^= 1;
    fs::write(&path, c).unwrap();
    let err = fails(&["inspect", &r]);
    assert!(err.contains("does not match its digest") && err.contains(&r), "{err}");
}

fn manifest_digest(dir: &Path, tag: &str) -> (usize, String) {
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .find(|(_, m)| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .map(|(i, m)| (i, m["digest"].as_str().unwrap().to_owned()))
        .unwrap()
}

fn config_digest(dir: &Path, tag: &str) -> String {
    let (_, m) = manifest_digest(dir, tag);
    let manifest: Value = serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(&m[7..])).unwrap()).unwrap();
    manifest["config"]["digest"].as_str().unwrap().to_owned()
}

/// Points the diff_id of layer `layer` at a wrong value, rewriting config, manifest and index.
fn rewrite_diff_id(dir: &Path, tag: &str, layer: &str) {
    let put = |bytes: &[u8]| -> String {
        let d = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        d
    };
    let (i, m) = manifest_digest(dir, tag);
    let mut manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(&m[7..])).unwrap()).unwrap();
    let pos = manifest["layers"].as_array().unwrap().iter().position(|l| l["digest"] == layer).unwrap();
    let cfg_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut config: Value =
        serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(&cfg_digest[7..])).unwrap()).unwrap();
    config["rootfs"]["diff_ids"][pos] = Value::String(format!("sha256:{}", "ab".repeat(32)));
    let cfg_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = Value::String(put(&cfg_bytes));
    manifest["config"]["size"] = cfg_bytes.len().into();
    let m_bytes = serde_json::to_vec(&manifest).unwrap();
    let mut index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][i]["digest"] = Value::String(put(&m_bytes));
    index["manifests"][i]["size"] = m_bytes.len().into();
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

// ---- the HTML report --------------------------------------------------------------------------------

#[test]
fn html_report_is_self_contained_escaped_and_renders_the_bars() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.html");
    let (old, new) = (format!("oci:{}:v1", f.p("img")), format!("oci:{}:v2", f.p("img")));
    ok(&["diff", &old, &new, "--files", "--html", &report.display().to_string()]);
    let html = fs::read_to_string(&report).unwrap();
    assert_eq!(fs::metadata(&report).unwrap().permissions().mode() & 0o777, 0o644);
    for external in ["src=", "<link", "url(", "http://", "https://", "<script"] {
        assert!(!html.contains(external), "the page must be self-contained: found {external:?}");
    }
    // The label `two <b>&amp; "quoted"</b>` arrives escaped, never as markup.
    assert!(html.contains("two &lt;b&gt;&amp;amp; &quot;quoted&quot;&lt;/b&gt;"), "label not escaped");
    assert!(!html.contains("<b>&amp;"));
    assert_eq!(html.matches("class=\"layer ").count(), 12, "6 layers in each bar");
    assert!(html.contains("\ngroup: auto\nsha256:"), "tooltips name the group");
    assert!(html.contains(&f.v2.paths["data"]));

    if !have("chromium") {
        return;
    }
    let chromium = |extra: &[&str]| {
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", report.display()));
        let (ok, out, err) = run_with_timeout(&mut cmd, Duration::from_secs(60));
        assert!(ok, "chromium failed:\n{err}");
        for bad in ["Uncaught", ":CONSOLE", "console.error"] {
            assert!(!err.contains(bad), "console error in the page:\n{err}");
        }
        out
    };
    let dom = chromium(&["--dump-dom"]);
    assert!(dom.contains("id=\"bar-old\"") && dom.contains("id=\"bar-new\""), "the bars are not in the DOM");
    assert_eq!(dom.matches("class=\"layer ").count(), 12);
    assert!(dom.contains("title=\"layer 1 "), "layers carry their tooltip");

    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("diff-report.png");
    let _ = fs::remove_file(&png);
    chromium(&[&format!("--screenshot={}", png.display())]);
    let (w, h, pixels) = decode_png(&fs::read(&png).unwrap());
    assert_eq!((w, h), (1200, 900));
    // The bars' colours are on screen: shared (#9db7d3) and changed (#f0904a).
    let count = |rgb: [u8; 3]| pixels.iter().filter(|p| **p == rgb).count();
    let (shared, changed) = (count([0x9d, 0xb7, 0xd3]), count([0xf0, 0x90, 0x4a]));
    assert!(
        shared > 10_000 && changed > 10_000,
        "bars not visible in {}: {shared} shared, {changed} changed pixels",
        png.display()
    );
}

/// A minimal PNG decoder (8-bit RGB/RGBA, non-interlaced): enough to look at a screenshot.
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (mut pos, mut idat, mut w, mut h, mut channels) = (8, Vec::new(), 0u32, 0u32, 0usize);
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => {
                w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                assert_eq!(data[8], 8, "8-bit");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    other => panic!("PNG colour type {other}"),
                };
                assert_eq!(data[12], 0, "not interlaced");
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).unwrap();
    let stride = w as usize * channels;
    let mut prev = vec![0u8; stride];
    let mut pixels = Vec::with_capacity((w * h) as usize);
    for row in raw.chunks(stride + 1).take(h as usize) {
        let (filter, line) = (row[0], &row[1..]);
        let mut cur = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= channels { cur[i - channels] as i16 } else { 0 };
            let b = prev[i] as i16;
            let c = if i >= channels { prev[i - channels] as i16 } else { 0 };
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                other => panic!("PNG filter {other}"),
            };
            cur[i] = line[i].wrapping_add(pred as u8);
        }
        pixels.extend(cur.chunks(channels).map(|p| [p[0], p[1], p[2]]));
        prev = cur;
    }
    (w, h, pixels)
}

// ---- the real Nix test closure ------------------------------------------------------------------------

/// `NIXOCI_TEST_VARIANT=2` changes one leaf (`nixoci-test-data`) and so its dependents' paths.
#[test]
fn nix_test_closure_variants_diff_names_the_changed_paths() {
    let Some(c1) = common::nix_closure(test_name!(), 1) else {
        return;
    };
    let Some(c2) = common::nix_closure(test_name!(), 2) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let mut refs = Vec::new();
    for (v, c) in [("1", c1), ("2", c2)] {
        let dir = t.path().join(v);
        fs::create_dir_all(&dir).unwrap();
        let spec = common::nix_image_toml(c, &dir);
        let r = format!("oci:{}:v", dir.join("oci").display());
        let (closure, spec) = (c.closure_json().display().to_string(), spec.display().to_string());
        ok(&["build", "-q", "--closure", &closure, "--image", &spec, "--max-layers", "100", "-o", &r]);
        refs.push((r, dir.join("oci")));
    }
    let d = json(&["diff", &refs[0].0, &refs[1].0, "--json", "--files"]);

    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
        (c1.store_paths.iter().collect(), c2.store_paths.iter().collect());
    let old_only: BTreeSet<String> = a.difference(&b).map(|p| p.to_string()).collect();
    let new_only: BTreeSet<String> = b.difference(&a).map(|p| p.to_string()).collect();
    assert!(!old_only.is_empty() && old_only.len() == new_only.len());
    let changed = d["paths"]["changed"].as_array().unwrap();
    let olds: BTreeSet<String> = changed.iter().map(|c| c["old"].as_str().unwrap().to_owned()).collect();
    let news: BTreeSet<String> = changed.iter().map(|c| c["new"].as_str().unwrap().to_owned()).collect();
    assert_eq!((olds, news), (old_only, new_only.clone()), "exactly the paths the variant changed, paired");
    assert!(d["paths"]["added"].as_array().unwrap().is_empty() && d["paths"]["removed"].as_array().unwrap().is_empty());
    assert!(
        changed.iter().all(|c| c["old"].as_str().unwrap()[44..] == c["new"].as_str().unwrap()[44..]),
        "names are kept"
    );
    assert_eq!(d["paths"]["unchanged"], a.intersection(&b).count());

    // Store layers are shared exactly when they hold only unchanged paths; the customisation layer
    // (its files name store paths of the variant) when its digest is the same. Download bytes: the
    // sizes of the rest.
    let new_layers = manifest_layers(&refs[1].1, "v");
    let old_layers = manifest_layers(&refs[0].1, "v");
    let custom = |ls: &[(String, u64, Vec<String>)]| ls.iter().find(|l| l.2.is_empty()).unwrap().clone();
    let (old_custom, new_custom) = (custom(&old_layers), custom(&new_layers));
    let unchanged = |l: &(String, u64, Vec<String>)| {
        if l.2.is_empty() { old_custom.0 == new_custom.0 } else { !l.2.iter().any(|p| new_only.contains(p)) }
    };
    let shared: BTreeSet<String> = new_layers.iter().filter(|l| unchanged(l)).map(|l| l.0.clone()).collect();
    assert_eq!(digests(&d["layers"]["shared"]), shared);
    let want: u64 = new_layers.iter().filter(|l| !unchanged(l)).map(|l| l.1).sum();
    assert_eq!(d["download_bytes"], want);
    // The data leaf's own content changed; hello only embeds data's new path.
    let by_name = |n: &str| changed.iter().find(|c| c["name"] == n).unwrap();
    assert_eq!(by_name("nixoci-test-data")["cause"], "content");
    let hello = changed.iter().find(|c| c["new"] == c2.hello.as_str()).unwrap();
    assert_eq!(hello["cause"], "dependency", "{hello:#}");
    assert_eq!(hello["files"]["modified"][0]["path"], "bin/hello");
    // (Its bytes differ beyond the reference too: the linker's build ID hashes the content.)
    let links = changed.iter().find(|c| c["name"] == "nixoci-test-links").unwrap();
    assert!(
        links["files"]["modified"].as_array().unwrap().iter().all(|f| f["what"] == "references"),
        "links only point at rebuilt paths: {links:#}"
    );
}
