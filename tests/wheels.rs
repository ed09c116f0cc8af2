//! Real wheels in a real Nix closure (`scripts/wheel-closure`, issue 10): the `small` set
//! (numpy, pillow, pyyaml, aiohttp and its C extensions, safetensors, tokenizers) built into a
//! closure, imaged by nixoci with layers/comfyui.toml and run in podman; and the bad inputs
//! (hash mismatch, Requires-Dist outside the set, a NEEDED no store path provides) with
//! hand-made wheels, offline.
//!
//! Tools: nix-bin, patchelf, jq, Debian's python3.11 with pip, podman, runc, gcc; the `small`
//! set needs the package index (PyPI) once, then the wheel cache
//! (`${XDG_CACHE_HOME:-~/.cache}/nixoci-wheels`). Outside CI a missing tool skips a test with a
//! message; in CI (env CI set) it fails it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::repo;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether every tool (and pip for Debian's python3.11) is there; outside CI a missing one skips
/// the test, in CI it fails it.
fn have_tools(tools: &[&str]) -> bool {
    if !common::have_tools("tests/wheels.rs", tools) {
        return false;
    }
    let pip = Path::new("/usr/bin/python3.11").exists()
        && Command::new("/usr/bin/python3.11")
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if pip {
        return true;
    }
    let msg = "pip for /usr/bin/python3.11 is missing (apt-get install python3-pip)";
    assert!(!common::in_ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

const CLOSURE_TOOLS: &[&str] = &["nix-build", "nix", "nix-store", "patchelf", "jq", "/usr/bin/python3.11"];

fn wheel_closure(set: &str, out: &Path, envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(repo().join("scripts/wheel-closure"));
    cmd.arg(set).arg(out);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("running scripts/wheel-closure")
}

/// `nixoci ARGS` with `envs`, a layer cache of its own (as every suite's runs have).
fn nixoci(args: &[&str], envs: &[(&str, PathBuf)]) -> Output {
    let mut cmd = common::nixoci();
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("running nixoci")
}

const SMALL_CHECKS: &str = r#"
[[check]]
name = "the small set imports and computes"
command = ["python3", "-c", """
import numpy, PIL.Image, yaml, aiohttp, multidict, yarl, safetensors.numpy, tokenizers
a = numpy.arange(12, dtype=numpy.float64).reshape(3, 4)
m = a @ a.T
img = PIL.Image.fromarray((a * 20).astype(numpy.uint8)).resize((8, 6))
blob = safetensors.numpy.save({"m": m})
back = safetensors.numpy.load(blob)["m"]
doc = yaml.safe_load(yaml.safe_dump({"trace": float(numpy.trace(m)), "size": list(img.size)}))
url = yarl.URL("http://127.0.0.1/a?b=c")
print("matmul", m.tolist(), "trace", doc["trace"], "img", doc["size"], "roundtrip", bool((back == m).all()),
      "yarl", url.query["b"], "numpy from", numpy.__file__.split("/")[3].split("-", 1)[1])
"""]
expect_stdout = "matmul [[14.0, 38.0, 62.0], [38.0, 126.0, 214.0], [62.0, 214.0, 366.0]] trace 506.0 img [8, 6] roundtrip True yarl c numpy from python3.11-numpy-2.2.6"
timeout = "120s"

[[check]]
name = "nothing from the host"
command = ["python3", "-c", """
import os, sys
ld = next(l.split()[-1] for l in open('/proc/self/maps') if 'ld-linux' in l)
print(ld.startswith('/nix/store/'), os.path.exists('/lib64'), os.path.exists('/usr'), sys.prefix.endswith('-python3-3.11.2-env'))
"""]
expect_stdout = "True False False True"
timeout = "60s"

[[check]]
name = "console scripts run with the store's python"
command = ["tqdm", "--version"]
timeout = "60s"
"#;

/// The `small` set end to end: closure → plan with layers/comfyui.toml → image → podman.
#[test]
fn small_set_builds_images_and_runs_in_podman() {
    if !have_tools(CLOSURE_TOOLS) || !have_tools(&["podman", "runc"]) {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wheel-closure-small");
    let t = std::time::Instant::now();
    let out = wheel_closure("small", &dir, &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "scripts/wheel-closure small failed:\n{stderr}");
    eprintln!("wheel-closure small: {:.1}s\n{stderr}", t.elapsed().as_secs_f64());
    assert!(stderr.contains("the store's loader resolves every NEEDED"), "{stderr}");
    let closure: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("closure.json")).unwrap()).unwrap();
    let names: Vec<String> = closure
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().split_once('-').unwrap().1.to_owned())
        .collect();
    for want in ["python3.11-numpy-2.2.6", "python3.11-aiohttp-3.14.5", "python3-3.11.2-env", "gcc-12.2.0-lib"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("patchelf-") || n.ends_with(".whl")), "build tools leak: {names:?}");
    // Requires-Dist became real references: aiohttp refers to multidict and yarl.
    let aiohttp =
        closure.as_array().unwrap().iter().find(|i| i["path"].as_str().unwrap().contains("-aiohttp-")).unwrap();
    let refs: Vec<&str> = aiohttp["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(
        refs.iter().any(|r| r.contains("-python3.11-multidict-"))
            && refs.iter().any(|r| r.contains("-python3.11-yarl-")),
        "{refs:?}"
    );

    // The real graph under layers/comfyui.toml: named paths stay in the group that names them.
    let cj = dir.join("closure.json");
    let layers = repo().join("layers/comfyui.toml");
    let (cj, layers) = (cj.to_str().unwrap(), layers.to_str().unwrap());
    let plan = nixoci(&["plan", "--closure", cj, "--layers", layers, "--max-layers", "40", "--json"], &[]);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let group_of = |name: &str| -> String {
        let l = plan["layers"].as_array().unwrap().iter().find(|l| {
            l["paths"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().split_once('-').unwrap().1 == name)
        });
        l.unwrap_or_else(|| panic!("{name} in no layer")).get("group").unwrap().as_str().unwrap().to_owned()
    };
    assert_eq!(group_of("python3.11-numpy-2.2.6"), "scientific");
    assert_eq!(group_of("python3.11-aiohttp-3.14.5"), "utilities");
    assert_eq!(group_of("python3.11-multidict-7.2.1"), "utilities", "unnamed: follows aiohttp");
    assert_eq!(group_of("python3.11-tokenizers-0.23.3"), "ml-frameworks");
    assert_eq!(group_of("glibc-2.36-debian"), "base-runtime");
    assert_eq!(group_of("python3-3.11.2-env"), "app-env");

    // Image (few layers: podman's vfs copies every layer below each one) and podman run.
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("small.tar");
    let dest = format!("oci-archive:{}", archive.display());
    let image = dir.join("image.toml");
    let out = nixoci(
        &[
            "build",
            "--closure",
            cj,
            "--layers",
            layers,
            "--max-layers",
            "4",
            "--image",
            image.to_str().unwrap(),
            "-q",
            "-o",
            &dest,
        ],
        &[],
    );
    assert!(out.status.success(), "nixoci build failed:\n{}", text(&out.stderr));
    let checks = work.path().join("checks.toml");
    std::fs::write(&checks, SMALL_CHECKS).unwrap();
    let podman = common::Podman::new();
    let envs = podman.envs();
    let out = nixoci(&["smoke", &dest, "--checks", checks.to_str().unwrap(), "--cpu", "--json"], &envs);
    let stderr = text(&out.stderr);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}:\n{stderr}"));
    assert_eq!(json["passed"], true, "{json:#}\n{stderr}");
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3);
    assert_eq!(checks[2]["stdout"].as_str().map(str::trim), Some("4.70.1"), "{:#}", checks[2]);
    let _ = Command::new("podman").args(["rmi", "-a", "-f"]).envs(envs.iter().map(|(k, v)| (*k, v))).output();
}

// ---- bad input, offline, with hand-made wheels ----------------------------------------------------

/// Writes a wheel `DIST-VER-py3-none-any.whl` (or with `tag`) into `dir` holding `files` plus a
/// dist-info whose METADATA lists `requires`; returns (file name, sha256).
fn make_wheel(
    dir: &Path,
    dist: &str,
    ver: &str,
    tag: &str,
    requires: &[&str],
    files: &[(&str, Vec<u8>)],
) -> (String, String) {
    let name = format!("{dist}-{ver}-{tag}.whl");
    let path = dir.join(&name);
    let py = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\nfor a in sys.argv[2:]:\n    n, _, src = a.partition('=')\n    z.write(src, n)\nz.close()\n".to_owned();
    let staging = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec!["-c".into(), py, path.display().to_string()];
    let mut meta = format!("Metadata-Version: 2.1\nName: {dist}\nVersion: {ver}\n");
    for r in requires {
        meta.push_str(&format!("Requires-Dist: {r}\n"));
    }
    let mut all: Vec<(String, Vec<u8>)> = files.iter().map(|(n, b)| ((*n).to_owned(), b.clone())).collect();
    all.push((format!("{dist}-{ver}.dist-info/METADATA"), meta.into_bytes()));
    all.push((format!("{dist}-{ver}.dist-info/WHEEL"), format!("Wheel-Version: 1.0\nTag: {tag}\n").into_bytes()));
    all.push((format!("{dist}-{ver}.dist-info/RECORD"), Vec::new()));
    for (i, (n, b)) in all.iter().enumerate() {
        let src = staging.path().join(i.to_string());
        std::fs::File::create(&src).unwrap().write_all(b).unwrap();
        args.push(format!("{n}={}", src.display()));
    }
    let out = Command::new("/usr/bin/python3.11").args(&args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sha = text(&Command::new("sha256sum").arg(&path).output().unwrap().stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    (name, sha)
}

/// Runs scripts/wheel-closure on `lock` with only `cache` as the index (no network).
fn bad_run(cache: &Path, lock: &str, out: &Path) -> String {
    let lock_file = cache.parent().unwrap().join("requirements-bad.txt");
    std::fs::write(&lock_file, lock).unwrap();
    let mut cmd = Command::new(repo().join("scripts/wheel-closure"));
    cmd.arg(&lock_file).arg(out).env("NIXOCI_WHEEL_CACHE", cache).env("PIP_NO_INDEX", "1").env("PIP_FIND_LINKS", cache);
    let o = cmd.output().unwrap();
    assert!(!o.status.success(), "should have failed:\n{}", text(&o.stderr));
    let leftovers: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("result") || n.starts_with(".build-result"))
        .collect();
    assert!(leftovers.is_empty(), "GC roots left behind: {leftovers:?}");
    text(&o.stderr)
}

#[test]
fn bad_wheels_name_the_package_and_the_file_and_leave_no_gc_root() {
    if !have_tools(CLOSURE_TOOLS) || !have_tools(&["gcc"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let out = work.path().join("out");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&out).unwrap();

    // Requires-Dist outside the set.
    let (whl, sha) =
        make_wheel(&cache, "needy", "1.0", "py3-none-any", &["absent-pkg>=2"], &[("needy/__init__.py", b"".to_vec())]);
    let err = bad_run(&cache, &format!("needy==1.0 --hash=sha256:{sha}\n"), &out);
    assert!(
        err.contains("needy==1.0")
            && err.contains(&whl)
            && err.contains("absent-pkg")
            && err.contains("not in the set"),
        "{err}"
    );

    // A hash that does not match (pip's check or ours: either names the package).
    let (_, _) = make_wheel(&cache, "plain", "1.0", "py3-none-any", &[], &[("plain/__init__.py", b"x = 1\n".to_vec())]);
    let err = bad_run(&cache, &format!("plain==1.0 --hash=sha256:{}\n", "0".repeat(64)), &out);
    assert!(err.contains("plain") && (err.contains("hash") || err.contains("HASH")), "{err}");

    // No wheel for this Python: only a CPython 3.9 wheel in the cache.
    let (_, sha) =
        make_wheel(&cache, "oldpy", "1.0", "cp39-cp39-manylinux_2_17_x86_64", &[], &[("oldpy.py", b"".to_vec())]);
    let err = bad_run(&cache, &format!("oldpy==1.0 --hash=sha256:{sha}\n"), &out);
    assert!(err.contains("oldpy"), "{err}");

    // A NEEDED library no store path provides: an extension linked against a library that is not
    // in the wheel.
    let src = work.path().join("c");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("gone.c"), "int gone(void) { return 1; }\n").unwrap();
    std::fs::write(src.join("ext.c"), "int gone(void);\nint ext(void) { return gone(); }\n").unwrap();
    let sh = format!(
        "cd {0} && gcc -shared -fPIC -o libgone.so.1 -Wl,-soname,libgone.so.1 gone.c && \
         gcc -shared -fPIC -o ext.so ext.c -L. -l:libgone.so.1",
        src.display()
    );
    let o = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let so = std::fs::read(src.join("ext.so")).unwrap();
    let (whl, sha) =
        make_wheel(&cache, "linked", "1.0", "py3-none-manylinux_2_17_x86_64", &[], &[("linked/ext.so", so)]);
    let err = bad_run(&cache, &format!("linked==1.0 --hash=sha256:{sha}\n"), &out);
    assert!(
        err.contains("python3.11-linked-1.0")
            && err.contains("linked/ext.so")
            && err.contains("libgone.so.1")
            && err.contains("no store path provides"),
        "{err} (wheel {whl})"
    );
}
