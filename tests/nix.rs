//! The Nix library (`nix/default.nix`, the flake's `lib`) with real Nix 2.8, offline, no nixpkgs:
//! `buildImage` over the derivations of scripts/nix-test-closure, built with `nix-build`, its
//! scripts run (podman load + run, oci layouts), its `.oci` derivation, a leaf change rebuilt with
//! `--previous`, a misspelt config field failing the Nix build, and `nix_db = true` checked by the
//! host's own Nix (`nix-store --store ROOT --verify --check-contents`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Layout, NixClosure, Podman, describe, output, run_ok, run_ok_str};
use serde_json::Value;

const NAME: &str = "localhost/nixoci-nix";

/// The expression the tests build: the test closure's `env` as root, a config and a layers
/// attribute set; `extraConfig`, `variant`, `tag`, `policy`, `fromImage`, `labels` and
/// `annotations` come from `--arg`.
fn write_expression(c: &NixClosure, dir: &Path) -> PathBuf {
    let file = dir.join("image.nix");
    let closure_nix = c.dir.join("test-closure.nix");
    let lib = common::repo().join("nix");
    fs::write(
        &file,
        format!(
            r#"{{ nixoci, variant ? "1", tag ? "1.0", extraConfig ? {{ }}, policy ? null, fromImage ? null, labels ? {{ }}, annotations ? {{ }} }}:
let
  c = import {closure_nix} {{ inherit variant; }};
  nixociLib = import {lib} {{ }};
in
nixociLib.buildImage {{
  name = "{NAME}";
  inherit tag nixoci policy fromImage labels annotations;
  roots = [ c.env ];
  config = {{
    cmd = [ "${{c.hello}}/bin/hello" ];
    env = [ "PATH=${{c.env}}/bin" ];
    workdir = "/home/app";
    user = "1000:1000";
    users = [ {{ name = "app"; uid = 1000; gid = 1000; home = "/home/app"; }} ];
    groups = [ {{ name = "app"; gid = 1000; }} ];
    dirs = [
      {{ path = "/tmp"; mode = "1777"; }}
      {{ path = "/home/app"; uid = 1000; gid = 1000; mode = "0755"; }}
    ];
  }} // extraConfig;
  layers = {{
    max_layers = 12;
    group = [
      {{ name = "libs"; match = [ "nixoci-test-lib*" ]; }}
      {{ name = "pkgs"; match = [ "nixoci-test-pkg-*" ]; split = "per-path"; max_layers = 3; }}
    ];
  }};
}}
"#,
            closure_nix = closure_nix.display(),
            lib = lib.display(),
        ),
    )
    .unwrap();
    file
}

/// The same spec and layers as TOML, for a plain `nixoci build`.
fn write_toml_inputs(c: &NixClosure, dir: &Path) -> (PathBuf, PathBuf) {
    let (spec, layers) = (dir.join("image.toml"), dir.join("layers.toml"));
    fs::write(
        &spec,
        format!(
            r#"name = "{NAME}:1.0"
cmd = ["{hello}/bin/hello"]
env = ["PATH={root}/bin"]
workdir = "/home/app"
user = "1000:1000"

[[users]]
name = "app"
uid = 1000
gid = 1000
home = "/home/app"

[[groups]]
name = "app"
gid = 1000

[[dirs]]
path = "/tmp"
mode = "1777"

[[dirs]]
path = "/home/app"
uid = 1000
gid = 1000
mode = "0755"
"#,
            hello = c.hello,
            root = c.root
        ),
    )
    .unwrap();
    fs::write(
        &layers,
        "max_layers = 12\n\n[[group]]\nname = \"libs\"\nmatch = [\"nixoci-test-lib*\"]\n\n[[group]]\nname = \"pkgs\"\n\
         match = [\"nixoci-test-pkg-*\"]\nsplit = \"per-path\"\nmax_layers = 3\n",
    )
    .unwrap();
    (spec, layers)
}

/// A Nix command with the test closure's private, offline configuration.
fn nix_cmd(c: &NixClosure, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("NIX_CONF_DIR", c.dir.join("nix-conf")).env_remove("NIX_PATH").env_remove("NIX_REMOTE");
    cmd
}

/// `nix-build EXPR -A ATTR --arg nixoci <the cargo-built binary> ARGS… --out-link LINK`; the
/// output path.
fn nix_build(c: &NixClosure, expr: &Path, attr: Option<&str>, args: &[&str], link: &Path) -> PathBuf {
    let mut cmd = nix_cmd(c, "nix-build");
    cmd.arg(expr).arg("--arg").arg("nixoci").arg(common::bin()).args(args).arg("--out-link").arg(link);
    if let Some(a) = attr {
        cmd.args(["-A", a]);
    }
    PathBuf::from(run_ok_str(&mut cmd).trim())
}

/// One of the result's scripts, with a layer cache of its own and no inherited epoch.
fn script(result: &Path, name: &str, cache: &Path) -> Command {
    let mut cmd = Command::new(result.join("bin").join(name));
    cmd.env("XDG_CACHE_HOME", cache).env_remove("SOURCE_DATE_EPOCH").env("NO_COLOR", "1");
    cmd
}

fn manifest_digest(dir: &Path, tag: &str) -> String {
    Layout::new(dir).manifest_descriptor(Some(tag))["digest"].as_str().unwrap().to_owned()
}

/// Each layer's digest and store paths (from its annotation), in order.
fn layers(dir: &Path, tag: &str) -> Vec<(String, BTreeSet<String>)> {
    Layout::new(dir)
        .image(Some(tag))
        .layers
        .iter()
        .map(|l| {
            let paths = l.annotation(common::STORE_PATHS_ANNOTATION).map(common::parse_store_paths_annotation);
            (l.descriptor["digest"].as_str().unwrap().to_owned(), paths.unwrap_or_default())
        })
        .collect()
}

/// The store paths of a result's closure file (the `.attrs.json` Nix wrote).
fn closure_paths(result: &Path) -> BTreeSet<String> {
    let v = common::read_json(&result.join("closure.json"));
    v["closure"].as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn nix_build_then_copy_to_podman_runs_the_program() {
    require_tools!("podman", "runc");
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let tmp = common::tempdir();
    let expr = write_expression(c, tmp.path());
    let result = nix_build(c, &expr, None, &[], &tmp.path().join("result"));
    for f in ["closure.json", "image.json", "layers.json", "plan.json"] {
        assert!(result.join(f).is_file(), "{f} missing from {}", result.display());
    }
    // The platform defaults to the derivation's system's (x86_64-linux → amd64).
    assert_eq!(common::read_json(&result.join("image.json"))["architecture"], "amd64");
    for s in ["copy-to", "copy-to-podman", "copy-to-registry", "plan", "diff-against", "check", "smoke"] {
        let text = fs::read_to_string(result.join("bin").join(s)).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "bin/{s}: {text}");
    }
    // The plan recorded at build time covers the whole closure, in the layers' groups.
    let plan = common::read_json(&result.join("plan.json"));
    let planned: BTreeSet<String> = plan["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["paths"].as_array().unwrap().clone())
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(planned, c.store_paths.iter().cloned().collect::<BTreeSet<_>>());
    assert!(plan["layers"].as_array().unwrap().iter().any(|l| l["group"] == "libs"));

    let podman = Podman::new();
    let cache = tmp.path().join("cache");
    let mut load = script(&result, "copy-to-podman", &cache);
    for (k, v) in podman.cmd().get_envs() {
        match v {
            Some(v) => load.env(k, v),
            None => load.env_remove(k),
        };
    }
    let loaded = run_ok_str(&mut load);
    assert!(loaded.contains(&format!("{NAME}:1.0")), "podman load printed: {loaded}");
    let printed = podman.run(&format!("{NAME}:1.0"), &[]);
    assert_eq!(printed, c.expected_hello, "what the container printed");
}

#[test]
fn copy_to_and_the_oci_derivation_equal_a_plain_build() {
    require_tools!("oci-image-tool");
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let tmp = common::tempdir();
    let expr = write_expression(c, tmp.path());
    let result = nix_build(c, &expr, None, &[], &tmp.path().join("result"));
    let oci = nix_build(c, &expr, Some("oci"), &[], &tmp.path().join("result-oci"));

    let copied = tmp.path().join("copied");
    run_ok(script(&result, "copy-to", &tmp.path().join("cache")).arg(format!("oci:{}:1.0", copied.display())));
    let (spec, layers_toml) = write_toml_inputs(c, tmp.path());
    let plain_dir = tmp.path().join("plain");
    let plain = common::build(&[
        "--closure".as_ref(),
        c.dir.join("closure.attrs.json").as_os_str(),
        "--image".as_ref(),
        spec.as_os_str(),
        "--layers".as_ref(),
        layers_toml.as_os_str(),
        "-o".as_ref(),
        format!("oci:{}:1.0", plain_dir.display()).as_ref(),
    ]);
    let (from_script, from_drv) = (manifest_digest(&copied, "1.0"), manifest_digest(&oci, "1.0"));
    assert_eq!(from_script, plain.manifest_digest, "bin/copy-to vs a plain nixoci build of the TOML spec");
    assert_eq!(from_drv, plain.manifest_digest, "the .oci derivation vs a plain nixoci build");
    // Every digest checks out, and the layout is valid.
    let image = Layout::new(&oci).image(Some("1.0"));
    assert_eq!(image.layers.len(), plain.layers.len());
    run_ok(Command::new("oci-image-tool").args(["validate", "--type", "image"]).arg(&oci));
}

#[test]
fn a_changed_leaf_rebuilt_with_previous_keeps_every_other_layer() {
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let tmp = common::tempdir();
    let expr = write_expression(c, tmp.path());
    let cache = tmp.path().join("cache");
    let r1 = nix_build(c, &expr, None, &[], &tmp.path().join("result-1"));
    let r2 = nix_build(
        c,
        &expr,
        None,
        &["--argstr", "variant", "2", "--argstr", "tag", "2.0"],
        &tmp.path().join("result-2"),
    );
    let (p1, p2) = (closure_paths(&r1), closure_paths(&r2));
    let changed: BTreeSet<&str> = p1.difference(&p2).map(|p| p.split_once('-').unwrap().1).collect();
    // The leaf, and what embeds its path: hello, the links (symlinks into it) and the top env.
    let want = ["nixoci-test-data", "nixoci-test-env", "nixoci-test-hello-1.0", "nixoci-test-links"];
    assert_eq!(changed, BTreeSet::from(want));

    let (d1, d2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    run_ok(script(&r1, "copy-to", &cache).arg(format!("oci:{}:1.0", d1.display())));
    run_ok(
        script(&r2, "copy-to", &cache)
            .arg(format!("oci:{}:2.0", d2.display()))
            .arg("--previous")
            .arg(format!("oci:{}:1.0", d1.display())),
    );
    let (l1, l2) = (layers(&d1, "1.0"), layers(&d2, "2.0"));
    let new_digests: BTreeSet<&str> = l2.iter().map(|(d, _)| d.as_str()).collect();
    let mut kept = 0;
    for (digest, paths) in &l1 {
        if !paths.is_empty() && paths.is_subset(&p2) {
            assert!(new_digests.contains(digest.as_str()), "unchanged layer {paths:?} ({digest}) was not kept");
            kept += 1;
        }
    }
    let store_layers = l1.iter().filter(|(_, p)| !p.is_empty()).count();
    assert!(kept > 0 && kept < store_layers, "kept {kept} of {store_layers} store layers");

    // diff-against names the changed leaf.
    let diff = run_ok_str(script(&r2, "diff-against", &cache).arg(format!("oci:{}:1.0", d1.display())));
    assert!(diff.contains("nixoci-test-data"), "diff-against printed:\n{diff}");
}

#[test]
fn a_misspelt_config_field_fails_the_nix_build_naming_it() {
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let tmp = common::tempdir();
    let expr = write_expression(c, tmp.path());
    let mut cmd = nix_cmd(c, "nix-build");
    cmd.arg(&expr).arg("--arg").arg("nixoci").arg(common::bin()).args([
        "--arg",
        "extraConfig",
        "{ entrypont = [ \"/bin/sh\" ]; }",
        "--no-out-link",
    ]);
    let out = output(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "`{}` should fail", describe(&cmd));
    assert!(
        stderr.contains("unknown field `entrypont`") && stderr.contains("image spec") && stderr.contains("image.json"),
        "nix-build's error does not carry nixoci's message:\n{stderr}"
    );
}

#[test]
fn nix_db_is_verified_by_the_hosts_nix_and_reproducible() {
    require_tools!("umoci");
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let tmp = common::tempdir();
    let expr = write_expression(c, tmp.path());
    let result = nix_build(c, &expr, None, &["--arg", "extraConfig", "{ nix_db = true; }"], &tmp.path().join("result"));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Two builds, each without a cache: the database's bytes (and so every digest) are the same.
    for dir in [&a, &b] {
        run_ok(
            script(&result, "copy-to", &tmp.path().join("cache"))
                .arg(format!("oci:{}:1.0", dir.display()))
                .arg("--no-cache"),
        );
    }
    assert_eq!(manifest_digest(&a, "1.0"), manifest_digest(&b, "1.0"), "two builds with nix_db differ");

    let bundle = tmp.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:1.0", a.display()))
            .arg(&bundle),
    );
    let root = bundle.join("rootfs");
    assert_eq!(fs::read_to_string(root.join("nix/var/nix/db/schema")).unwrap(), "10");
    let verify = |root: &Path| {
        let mut cmd = nix_cmd(c, "nix-store");
        cmd.arg("--store").arg(root).args(["--verify", "--check-contents"]);
        let out = output(&mut cmd);
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, log) = verify(&root);
    assert!(ok, "nix-store --verify --check-contents of the image root failed:\n{log}");
    assert!(log.contains("checking store hashes"), "{log}");
    // The image's database answers like the host's: same references, same NAR hashes.
    for p in [&c.root, &c.hello, c.path_named("-nixoci-test-links")] {
        for q in ["--references", "--hash"] {
            let ask = |store: Option<&Path>| {
                let mut cmd = nix_cmd(c, "nix-store");
                if let Some(s) = store {
                    cmd.arg("--store").arg(s);
                }
                let mut lines: Vec<String> = run_ok_str(cmd.args(["-q", q, p])).lines().map(str::to_owned).collect();
                lines.sort();
                lines
            };
            assert_eq!(ask(Some(&root)), ask(None), "nix-store -q {q} {p}");
        }
    }
    // The check is real: a changed byte in a store path is caught.
    let greeting = root.join(&c.path_named("-nixoci-test-data")[1..]).join("share/greeting.txt");
    let mut perms = fs::metadata(&greeting).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(&greeting, perms).unwrap();
    fs::write(&greeting, "tampered\n").unwrap();
    let (ok, log) = verify(&root);
    assert!(!ok && log.contains("was modified"), "a tampered store path passed verification:\n{log}");
}

#[test]
fn check_and_plan_scripts_pass_arguments_through() {
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let tmp = common::tempdir();
    let expr = write_expression(c, tmp.path());
    let cache = tmp.path().join("cache");
    let policy = "{ require = [ \"nixoci-test-hello-*\" ]; forbid = [ \"*-bigdata\" ]; non_root_user = true; }";
    let result = nix_build(c, &expr, None, &["--arg", "policy", policy], &tmp.path().join("result"));
    // bin/plan passes --json through and prints what plan.json holds.
    let plan: Value = serde_json::from_str(&run_ok_str(script(&result, "plan", &cache).arg("--json"))).unwrap();
    assert_eq!(plan, common::read_json(&result.join("plan.json")));
    // The policy (an attribute set, so policy.json) forbids a path of the closure: check says so,
    // and every build refuses the image before writing it.
    let out = output(&mut script(&result, "check", &cache));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("nixoci-test-bigdata"), "bin/check:\n{text}");
    let dest = tmp.path().join("refused");
    let out = output(script(&result, "copy-to", &cache).arg(format!("oci:{}", dest.display())));
    assert!(!out.status.success() && !dest.exists(), "copy-to wrote an image the policy refuses");
    // Usage errors name what is missing.
    let out = output(&mut script(&result, "copy-to", &cache));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn every_nix_file_parses_and_lib_evaluates_through_a_plain_import() {
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let repo = common::repo();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() && !name.starts_with('.') && name != "target" {
                walk(&p, out);
            } else if name.ends_with(".nix") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo, &mut files);
    files.sort();
    for want in ["flake.nix", "nix/default.nix", "examples/comfyui/flake.nix"] {
        assert!(files.contains(&repo.join(want)), "{want} not found among {files:?}");
    }
    for f in &files {
        run_ok(nix_cmd(c, "nix-instantiate").arg("--parse").arg(f));
    }
    // The README's ComfyUI flake is examples/comfyui/flake.nix, so it parses too.
    let readme = fs::read_to_string(repo.join("README.md")).unwrap();
    let section = &readme[readme.find("## From Nix").expect("README has a From Nix section")..];
    let block = section.split("```nix\n").nth(1).and_then(|b| b.split("```\n").next()).expect("a nix block");
    assert_eq!(block, fs::read_to_string(repo.join("examples/comfyui/flake.nix")).unwrap());
    let eval = |expr: String| {
        run_ok_str(nix_cmd(c, "nix-instantiate").args(["--eval", "--strict", "-E", &expr])).trim().to_owned()
    };
    let nix = repo.join("nix").display().to_string();
    assert_eq!(eval(format!("builtins.typeOf (import {nix} {{ }}).buildImage")), "\"lambda\"");
    // The flake's lib, through a plain import of flake.nix (no flakes, no nixpkgs needed).
    let flake = repo.join("flake.nix").display().to_string();
    assert_eq!(
        eval(format!(
            "let f = import {flake}; o = f.outputs {{ self = o; nixpkgs = throw \"lib must not need nixpkgs\"; }}; \
             in builtins.typeOf o.lib.buildImage"
        )),
        "\"lambda\""
    );
    // Evaluating an image's attributes needs no build: its name, tag and scripts' store path.
    let keep = common::tempdir();
    let expr = write_expression(c, keep.path());
    let attrs = eval(format!(
        "let i = import {} {{ nixoci = {}; }}; in [ i.imageName i.imageTag (builtins.typeOf i.plan) i.oci.name ]",
        expr.display(),
        common::bin().display()
    ));
    assert_eq!(attrs, format!("[ \"{NAME}\" \"1.0\" \"string\" \"nixoci-nix-1.0-oci\" ]"));
}

#[test]
fn copy_to_registry_pushes_what_the_oci_derivation_holds() {
    require_tools!("docker-registry", "skopeo");
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let tmp = common::tempdir();
    let expr = write_expression(c, tmp.path());
    let result = nix_build(c, &expr, None, &[], &tmp.path().join("result"));
    let oci = nix_build(c, &expr, Some("oci"), &[], &tmp.path().join("result-oci"));
    let registry = common::registry::Registry::start(common::registry::Setup::Plain);
    let reference = format!("127.0.0.1:{}/nixoci-nix:1.0", registry.port);
    // Extra arguments pass through to nixoci build (here a registry flag).
    run_ok(script(&result, "copy-to-registry", &tmp.path().join("cache")).arg(&reference).arg("--tls-verify=false"));
    let inspected: Value = serde_json::from_str(&run_ok_str(
        Command::new("skopeo").args(["inspect", "--tls-verify=false"]).arg(format!("docker://{reference}")),
    ))
    .unwrap();
    assert_eq!(inspected["Digest"].as_str().unwrap(), manifest_digest(&oci, "1.0"));
}

#[test]
fn from_image_labels_and_annotations_reach_the_image() {
    require_tools!("umoci", "busybox", "skopeo");
    let Some(c) = common::nix_closure(test_name!(), 1) else { return };
    let tmp = common::tempdir();
    // A base nixoci did not build: busybox, by umoci.
    let rootfs = tmp.path().join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy(common::which("busybox").unwrap(), rootfs.join("bin/busybox")).unwrap();
    let base = tmp.path().join("base");
    let img = format!("{}:1", base.display());
    let umoci = |args: &[&str]| run_ok(Command::new("umoci").args(args));
    umoci(&["init", "--layout", &base.display().to_string()]);
    umoci(&["new", "--image", &img]);
    umoci(&["insert", "--rootless", "--image", &img, &rootfs.display().to_string(), "/"]);
    umoci(&["config", "--image", &img, "--config.env", "BASEVAR=1"]);
    let from = format!("oci:{img}");
    let expr = write_expression(c, tmp.path());
    let result = nix_build(
        c,
        &expr,
        None,
        &[
            "--argstr",
            "fromImage",
            &from,
            "--arg",
            "labels",
            r#"{ "org.opencontainers.image.version" = "1.4"; }"#,
            "--arg",
            "annotations",
            r#"{ "org.opencontainers.image.revision" = "abc"; }"#,
        ],
        &tmp.path().join("result"),
    );
    let plan = common::read_json(&result.join("plan.json"));
    assert!(
        plan["layers"].as_array().unwrap().len() <= 12 - 2,
        "the base's layer and the customisation layer count in max_layers"
    );
    let out = tmp.path().join("out");
    run_ok(script(&result, "copy-to", &tmp.path().join("cache")).arg(format!("oci:{}:1.0", out.display())));
    let reference = format!("oci:{}:1.0", out.display());
    let inspect: Value =
        serde_json::from_str(&run_ok_str(Command::new("skopeo").args(["inspect", &reference]))).unwrap();
    assert_eq!(inspect["Labels"]["org.opencontainers.image.version"], "1.4");
    assert!(inspect["Env"].as_array().unwrap().iter().any(|e| e == "BASEVAR=1"), "{inspect}");
    let raw: Value =
        serde_json::from_str(&run_ok_str(Command::new("skopeo").args(["inspect", "--raw", &reference]))).unwrap();
    assert_eq!(raw["annotations"]["org.opencontainers.image.revision"], "abc");
    // A local base is named by its digest only: its path must not change the image.
    assert!(raw["annotations"].get("org.opencontainers.image.base.name").is_none(), "{raw}");
    assert!(raw["annotations"]["org.opencontainers.image.base.digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(raw["layers"][0]["annotations"]["org.nixos.nixoci.group"], "base");
}
