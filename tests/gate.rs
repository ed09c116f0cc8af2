//! The release gate end to end with the real tools: a real Python in a real Nix closure
//! (`scripts/python-closure`), imaged by nixoci, judged by `nixoci check` and run by `nixoci smoke`
//! in podman (runc, vfs, private configuration).
//!
//! Tools: nix-bin, patchelf, jq, python3.11 (Debian's), podman, runc. Outside CI a missing tool
//! skips a test with a message; in CI (env CI set) it fails it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const NIXOCI: &str = env!("CARGO_BIN_EXE_nixoci");

mod common;

use common::repo;

/// Whether every tool is there; outside CI a missing one skips the test, in CI it fails it.
fn have_tools(tools: &[&str]) -> bool {
    common::have_tools("tests/gate.rs", tools)
}

const CLOSURE_TOOLS: &[&str] = &["nix-build", "nix", "patchelf", "jq", "/usr/bin/python3.11"];
const PODMAN_TOOLS: &[&str] = &["podman", "runc"];

/// The python closure, built once per test run (a second build is a no-op).
struct PyClosure {
    dir: PathBuf,
    root: String,
}

fn python_closure() -> &'static PyClosure {
    static ONCE: OnceLock<PyClosure> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-closure");
        let t = std::time::Instant::now();
        let out = Command::new(repo().join("scripts/python-closure"))
            .arg(&dir)
            .output()
            .expect("running scripts/python-closure");
        assert!(
            out.status.success(),
            "scripts/python-closure failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("python-closure: {:.1}s", t.elapsed().as_secs_f64());
        let root = std::fs::read_to_string(dir.join("root")).unwrap().trim().to_owned();
        PyClosure { dir, root }
    })
}

/// `nixoci ARGS` with `envs`, a layer cache of its own (as every suite's runs have).
fn nixoci(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = common::nixoci();
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("running nixoci")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Builds the python closure's image to `dest`, with `image` as its spec (None: no spec, root).
fn build_image(dest: &str, image: Option<&Path>) {
    build_image_layers(dest, image, "100");
}

/// podman's vfs driver copies every layer below each new one: images for podman get few layers.
fn build_image_for_podman(dest: &str, image: Option<&Path>) {
    build_image_layers(dest, image, "2");
}

fn build_image_layers(dest: &str, image: Option<&Path>, max_layers: &str) {
    let pc = python_closure();
    let closure = pc.dir.join("closure.json");
    let mut args = vec!["build", "--closure", closure.to_str().unwrap(), "--max-layers", max_layers, "-q", "-o", dest];
    let spec;
    if let Some(i) = image {
        spec = i.to_str().unwrap().to_owned();
        args.extend(["--image", spec.as_str()]);
    }
    let out = nixoci(&args, &[]);
    assert!(out.status.success(), "nixoci build failed:\n{}", text(&out.stderr));
}

/// A private podman: runc, cgroupfs, vfs, no network, lowered ulimits, storage unique to this
/// run under /tmp (runroot under 50 characters). Removed on drop.
/// The shared private podman, and `nixoci smoke` pointed at it.
struct Podman {
    inner: common::Podman,
}

impl Podman {
    fn new() -> Self {
        Self { inner: common::Podman::new() }
    }

    fn smoke(&self, args: &[&str]) -> Output {
        let envs = self.inner.envs();
        let envs: Vec<(&str, &Path)> = envs.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let mut all = vec!["smoke"];
        all.extend(args);
        nixoci(&all, &envs)
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.inner.cmd().args(args).output().unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers were run with --rm; images go with the storage directory.
        let _ = self.podman(&["rmi", "-a", "-f"]);
    }
}

const CHECKS: &str = r#"
[[check]]
name = "imports its packages"
command = ["python3", "-c", "import nixoci_calc, ssl, sqlite3, ctypes, json; print(nixoci_calc.report())"]
expect_stdout = "2 + 3 = 5"
timeout = "60s"

[[check]]
name = "wrong output"
command = ["python3", "-c", "print('goodbye <&> world')"]
expect_stdout = "hello"
timeout = "60s"

[[check]]
name = "sleeps too long"
command = ["python3", "-c", "import time; print('sleeping', flush=True); time.sleep(60)"]
timeout = "2s"

[[check]]
name = "missing program"
command = ["gcc", "--version"]

[[check]]
name = "needs a GPU"
command = ["python3", "-c", "import torch"]
gpu = true
"#;

/// A tiny XML reader: checks tags balance and returns every element (name, attributes, text).
#[derive(Debug)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    parent: Option<usize>,
}

impl Element {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn parse_xml(xml: &str) -> Vec<Element> {
    let body = xml.strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>").expect("XML declaration");
    let mut elements: Vec<Element> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut rest = body;
    while let Some(lt) = rest.find('<') {
        let between = &rest[..lt];
        assert!(!between.contains('>'), "stray '>' in text: {between:?}");
        if let Some(&top) = stack.last() {
            elements[top].text.push_str(&unescape(between));
        } else {
            assert!(between.trim().is_empty(), "text outside the root: {between:?}");
        }
        let gt = rest[lt..].find('>').expect("unclosed tag") + lt;
        let tag = &rest[lt + 1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().expect("closing tag without an open one");
            assert_eq!(elements[open].name, name, "mismatched tags");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, mut attrs_text) = tag.split_once(' ').unwrap_or((tag, ""));
        let mut attrs = Vec::new();
        while let Some(eq) = attrs_text.find("=\"") {
            let key = attrs_text[..eq].trim().to_owned();
            let end = attrs_text[eq + 2..].find('"').expect("unterminated attribute") + eq + 2;
            let value = &attrs_text[eq + 2..end];
            assert!(!value.contains('<'), "unescaped < in attribute {key}");
            attrs.push((key, unescape(value)));
            attrs_text = &attrs_text[end + 1..];
        }
        assert!(attrs_text.trim().is_empty(), "junk in tag: {attrs_text:?}");
        elements.push(Element { name: name.to_owned(), attrs, text: String::new(), parent: stack.last().copied() });
        if !self_closing {
            stack.push(elements.len() - 1);
        }
    }
    assert!(stack.is_empty() && rest.trim().is_empty(), "unbalanced XML");
    elements
}

#[test]
fn smoke_cpu_reports_pass_fail_timeout_and_skip() {
    if !have_tools(CLOSURE_TOOLS) || !have_tools(PODMAN_TOOLS) {
        return;
    }
    let pc = python_closure();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("py.tar");
    build_image_for_podman(&format!("oci-archive:{}", archive.display()), Some(&pc.dir.join("image.toml")));
    let checks = work.path().join("checks.toml");
    std::fs::write(&checks, CHECKS).unwrap();
    let junit = work.path().join("junit.xml");
    let podman = Podman::new();
    let t = std::time::Instant::now();
    let out = podman.smoke(&[
        &format!("oci-archive:{}", archive.display()),
        "--checks",
        checks.to_str().unwrap(),
        "--cpu",
        "--json",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let secs = t.elapsed().as_secs_f64();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a failed check exits 1:\n{stderr}");
    let json: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", text(&out.stdout)));
    assert_eq!(json["passed"], false);
    assert_eq!(json["runtime"], "podman");
    let checks = json["checks"].as_array().unwrap();
    let get = |name: &str| checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}"));
    let ok = get("imports its packages");
    assert_eq!(ok["status"], "passed", "{ok:#}");
    assert_eq!(ok["exit_code"], 0);
    assert!(ok["stdout"].as_str().unwrap().contains("from /nix/store/"), "{ok:#}");
    let bad = get("wrong output");
    assert_eq!((bad["status"].as_str(), bad["exit_code"].as_i64()), (Some("failed"), Some(0)));
    assert_eq!(bad["message"], "stdout does not contain \"hello\"");
    assert_eq!(bad["stdout"], "goodbye <&> world\n");
    let slow = get("sleeps too long");
    assert_eq!(slow["status"], "timed_out", "{slow:#}");
    assert!(slow["exit_code"].is_null());
    assert!(slow["seconds"].as_f64().unwrap() < 15.0, "the timeout kills the container: {slow:#}");
    let missing = get("missing program");
    assert_eq!(missing["status"], "failed");
    assert!(missing["message"].as_str().unwrap().contains("\"gcc\" was not found in the image"), "{missing:#}");
    let gpu = get("needs a GPU");
    assert_eq!(gpu["status"], "skipped");
    assert!(gpu["message"].as_str().unwrap().contains("--cpu"));
    assert!(secs < 60.0, "smoke took {secs:.1}s");
    // The timed-out container is gone, and nothing else is left running.
    let ps = podman.podman(&["ps", "-a", "-q"]);
    assert_eq!(text(&ps.stdout).trim(), "", "containers left behind");
    // Progress on stderr, one line per check.
    assert!(stderr.contains("PASS    imports its packages"), "{stderr}");
    assert!(stderr.contains("TIMEOUT sleeps too long"), "{stderr}");

    let xml = std::fs::read_to_string(&junit).unwrap();
    let el = parse_xml(&xml);
    let suites = &el[0];
    assert_eq!(suites.name, "testsuites");
    assert_eq!(
        (suites.attr("tests"), suites.attr("failures"), suites.attr("skipped")),
        (Some("5"), Some("3"), Some("1"))
    );
    let cases: Vec<(usize, &Element)> = el.iter().enumerate().filter(|(_, e)| e.name == "testcase").collect();
    assert_eq!(cases.len(), 5);
    let child = |case: usize, name: &str| el.iter().find(|e| e.parent == Some(case) && e.name == name);
    let case = |name: &str| cases.iter().find(|(_, e)| e.attr("name") == Some(name)).unwrap().0;
    let ok = case("imports its packages");
    assert!(child(ok, "failure").is_none() && child(ok, "skipped").is_none());
    assert!(child(ok, "system-out").unwrap().text.contains("2 + 3 = 5"));
    let bad = child(case("wrong output"), "failure").expect("a <failure> for the wrong output");
    assert_eq!(bad.attr("type"), Some("failed"));
    assert_eq!(bad.attr("message"), Some("stdout does not contain \"hello\""));
    assert!(bad.text.contains("goodbye <&> world"), "captured output, escaped: {xml}");
    assert!(xml.contains("goodbye &lt;&amp;&gt; world"));
    let slow = child(case("sleeps too long"), "failure").unwrap();
    assert_eq!(slow.attr("type"), Some("timeout"));
    assert!(child(case("needs a GPU"), "skipped").is_some());
}

#[test]
fn smoke_loads_oci_dirs_and_docker_archives() {
    if !have_tools(CLOSURE_TOOLS) || !have_tools(PODMAN_TOOLS) {
        return;
    }
    let pc = python_closure();
    let work = tempfile::tempdir().unwrap();
    let oci = format!("oci:{}:v1", work.path().join("oci").display());
    let docker = format!("docker-archive:{}", work.path().join("d.tar").display());
    build_image_for_podman(&oci, Some(&pc.dir.join("image.toml")));
    build_image_for_podman(&docker, Some(&pc.dir.join("image.toml")));
    let checks = work.path().join("checks.toml");
    std::fs::write(
        &checks,
        // Nothing from the host: the loader is the store's, and there is no /lib64 or /usr.
        r#"
[[check]]
name = "stdlib"
command = ["python3", "-c", """
import os, sys
ld = next(l.split()[-1] for l in open('/proc/self/maps') if 'ld-linux' in l)
print(sys.prefix, os.getuid(), ld.startswith('/nix/store/'), os.path.exists('/lib64'), os.path.exists('/usr'))
"""]
expect_stdout = "-python3.11-env 1000 True False False"
"#,
    )
    .unwrap();
    let podman = Podman::new();
    for image in [&oci, &docker] {
        let out = podman.smoke(&[image, "--checks", checks.to_str().unwrap(), "--json"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{image}:\n{stderr}");
        assert!(stderr.contains(&format!("loading {image} into podman")), "{stderr}");
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["passed"], true);
        assert_eq!(json["checks"][0]["stdout"], format!("{} 1000 True False False\n", pc.root));
        if image == &oci {
            let rmi = podman.podman(&["rmi", "-a", "-f"]);
            assert!(rmi.status.success(), "{}", text(&rmi.stderr));
        }
    }
    // An image the runtime has is not loaded again.
    let out = podman.smoke(&[&docker, "--checks", checks.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(out.status.success() && !stderr.contains("loading") && stderr.contains("result: PASS"), "{stderr}");
}

/// A `podman` that answers `--version` and `image exists` but hangs in `load` and `pull`
/// (recording its pid): what a stuck storage lock or a stalled registry looks like.
const HANGING_PODMAN: &str = r#"#!/bin/sh
case "$1" in
  --version) echo "podman version 4.3.1 (hanging test double)" ;;
  image) exit 1 ;;
  load|pull) echo "$$" >"$NIXOCI_TEST_PID_FILE"; exec sleep 600 ;;
  *) exit 0 ;;
esac
"#;

#[test]
fn smoke_kills_a_hung_load_or_pull_after_load_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let podman = bin.join("podman");
    std::fs::write(&podman, HANGING_PODMAN).unwrap();
    std::fs::set_permissions(&podman, std::fs::Permissions::from_mode(0o755)).unwrap();
    let checks = work.path().join("checks.toml");
    std::fs::write(&checks, "[[check]]\nname = \"never runs\"\ncommand = [\"true\"]\n").unwrap();
    // A real image (smoke opens and verifies it before loading): the shipped example.
    let e = repo().join("examples/hello");
    let archive = format!("oci-archive:{}", work.path().join("hello.tar").display());
    let dir = format!("oci:{}:v1", work.path().join("hello").display());
    let arg = |p: &str| e.join(p).to_str().unwrap().to_owned();
    let (closure, store, image) = (arg("closure.json"), arg("store"), arg("image.toml"));
    let out = nixoci(
        &["build", "--closure", &closure, "--store-root", &store, "--image", &image, "-q", "-o", &archive, "-o", &dir],
        &[],
    );
    assert!(out.status.success(), "nixoci build failed:\n{}", text(&out.stderr));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    for (image, command) in [(&archive, "podman load -i "), (&dir, "podman pull -q oci:")] {
        let pid_file = work.path().join("pid");
        let _ = std::fs::remove_file(&pid_file);
        let t = std::time::Instant::now();
        let out = Command::new(NIXOCI)
            .args(["smoke", image, "--checks", checks.to_str().unwrap(), "--load-timeout", "2s"])
            .env("PATH", &path)
            .env("NIXOCI_TEST_PID_FILE", &pid_file)
            .output()
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{image}: a hung load is an error:\n{stderr}");
        assert!((2.0..30.0).contains(&secs), "{image}: smoke returned after {secs:.1}s, not after its 2s load timeout");
        assert!(
            stderr.contains(&format!("`{command}"))
                && stderr.contains(&format!("did not finish loading {image} into podman within 2s: it was killed")),
            "{image}: the error names the command, the image and the timeout:\n{stderr}"
        );
        assert!(stderr.contains("--load-timeout"), "{stderr}");
        // The hung runtime process is gone (killed and reaped), not left sleeping.
        let pid =
            std::fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("{image}: the fake podman never ran ({e})"));
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        assert!(!proc_dir.exists(), "{image}: the hung `{command}…` (pid {}) is still running", pid.trim());
    }
}

const PASSING: &str = r#"
max_layers = 10
max_layer_size = "100MiB"
max_total_size = "500MiB"
forbid = ["gcc-*", "*-dev"]
require = ["python3-3.*", "python3.11-nixoci-calc-*"]
non_root_user = true
no_setuid = true
no_world_writable = true
"#;

const FAILING: &str = r#"
max_layers = 3
forbid = ["*-nixoci-greet-*"]
non_root_user = true
"#;

fn check(image: &str, policy: &Path) -> (Option<i32>, Value, String) {
    let out = nixoci(&["check", image, "--policy", policy.to_str().unwrap(), "--json"], &[]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    (out.status.code(), json, text(&out.stderr))
}

fn rule<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["rules"].as_array().unwrap().iter().find(|r| r["rule"] == name).unwrap_or_else(|| panic!("no rule {name}: {v:#}"))
}

#[test]
fn check_passes_and_fails_policies() {
    if !have_tools(CLOSURE_TOOLS) {
        return;
    }
    let pc = python_closure();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (pass, fail) = (w.join("pass.toml"), w.join("fail.toml"));
    std::fs::write(&pass, PASSING).unwrap();
    std::fs::write(&fail, FAILING).unwrap();

    let oci = format!("oci:{}:v1", w.join("oci").display());
    build_image(&oci, Some(&pc.dir.join("image.toml")));
    let (code, v, stderr) = check(&oci, &pass);
    assert_eq!(code, Some(0), "{v:#}\n{stderr}");
    assert_eq!(v["passed"], true);
    assert_eq!(v["rules"].as_array().unwrap().len(), 8);
    assert_eq!(rule(&v, "non_root_user")["detail"], "runs as app (uid 1000)");

    let (code, v, _) = check(&oci, &fail);
    assert_eq!(code, Some(1));
    assert_eq!(v["passed"], false);
    assert_eq!(rule(&v, "max_layers")["passed"], false);
    let greet: Vec<&str> = v["rules"][1]["offenders"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert_eq!(greet.len(), 1, "{v:#}");
    assert!(greet[0].contains("-python3.11-nixoci-greet-1.0 (matches *-nixoci-greet-*)"), "{greet:?}");
    assert_eq!(rule(&v, "non_root_user")["passed"], true);

    // No spec: the image runs as root. A docker-archive has no annotations: store paths come from
    // the tar headers.
    let root_img = format!("docker-archive:{}", w.join("root.tar").display());
    build_image(&root_img, None);
    let (code, v, _) = check(&root_img, &fail);
    assert_eq!(code, Some(1));
    let nr = rule(&v, "non_root_user");
    assert_eq!(
        (nr["passed"].as_bool(), nr["detail"].as_str()),
        (Some(false), Some("no User is set: the container runs as root"))
    );
    assert_eq!(rule(&v, "forbid")["offenders"].as_array().unwrap().len(), 1, "store paths from tar headers: {v:#}");

    // setuid and world-writable entries, judged from the tar headers.
    let spec = w.join("bad.toml");
    let base = std::fs::read_to_string(pc.dir.join("image.toml")).unwrap();
    std::fs::write(
        &spec,
        format!("{base}\n[[dirs]]\npath = \"/srv/drop\"\nmode = \"0777\"\n\n[[files]]\npath = \"/usr/bin/su\"\ncontent = \"x\"\nmode = \"4755\"\n"),
    )
    .unwrap();
    let bad_img = format!("oci-archive:{}", w.join("bad.tar").display());
    build_image(&bad_img, Some(&spec));
    let (code, v, stderr) = check(&bad_img, &pass);
    assert_eq!(code, Some(1));
    assert_eq!(rule(&v, "no_setuid")["offenders"], serde_json::json!(["/usr/bin/su (mode 4755)"]));
    assert_eq!(
        rule(&v, "no_world_writable")["offenders"],
        serde_json::json!(["/srv/drop (mode 0777)"]),
        "/tmp 1777 is allowed"
    );
    assert_eq!(rule(&v, "max_layers")["passed"], true);
    assert!(stderr.is_empty(), "--json keeps the table off stderr: {stderr}");

    // Without --json, the table goes to stderr and names the offenders.
    let out = nixoci(&["check", &bad_img, "--policy", pass.to_str().unwrap()], &[]);
    let table = text(&out.stderr);
    assert!(
        table.contains("FAIL  no_setuid")
            && table.contains("/usr/bin/su (mode 4755)")
            && table.contains("result: FAIL (2 of 8 rules failed)"),
        "{table}"
    );

    // A policy with a typo names the file and line.
    let typo = w.join("typo.toml");
    std::fs::write(&typo, "max_layers = 3\nno_setuidd = true\n").unwrap();
    let out = nixoci(&["check", &oci, "--policy", typo.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("typo.toml") && err.contains("line 2") && err.contains("no_setuidd"),
        "{err}"
    );
}

#[test]
fn build_with_a_failing_policy_writes_nothing() {
    if !have_tools(CLOSURE_TOOLS) {
        return;
    }
    let pc = python_closure();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let fail = w.join("fail.toml");
    std::fs::write(&fail, FAILING).unwrap();
    let pass = w.join("pass.toml");
    std::fs::write(&pass, PASSING).unwrap();
    let closure = pc.dir.join("closure.json");
    let spec = pc.dir.join("image.toml");
    let (oci, archive, docker) = (w.join("out/oci"), w.join("out/img.tar"), w.join("out/d.tar"));
    let args = |policy: &Path| {
        vec![
            "build".to_owned(),
            "--closure".into(),
            closure.display().to_string(),
            "--image".into(),
            spec.display().to_string(),
            "--policy".into(),
            policy.display().to_string(),
            "-o".into(),
            format!("oci:{}", oci.display()),
            "-o".into(),
            format!("oci-archive:{}", archive.display()),
            "-o".into(),
            format!("docker-archive:{}", docker.display()),
        ]
    };
    let a = args(&fail);
    let out = nixoci(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("fails policy") && err.contains("nothing was written") && err.contains("FAIL  forbid"),
        "{err}"
    );
    for dest in [&oci, &archive, &docker] {
        assert!(!dest.exists(), "{} was written", dest.display());
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(w.join("out")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");

    // docker-archive alone takes the streaming path: refused before a byte is written too.
    let out = nixoci(
        &[
            "build",
            "--closure",
            closure.to_str().unwrap(),
            "--policy",
            fail.to_str().unwrap(),
            "-o",
            &format!("docker-archive:{}", docker.display()),
        ],
        &[],
    );
    assert!(!out.status.success() && text(&out.stderr).contains("no User is set"), "{}", text(&out.stderr));
    assert!(!docker.exists());

    let a = args(&pass);
    let out = nixoci(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(oci.join("index.json").exists() && archive.exists() && docker.exists());
}

#[test]
fn shipped_policies_checks_and_specs_load() {
    use nixoci::policy::Policy;
    use nixoci::smoke::Checks;
    for p in ["policies/comfyui.toml", "policies/example.toml"] {
        Policy::load(&repo().join(p)).unwrap_or_else(|e| panic!("{p}: {e:#}"));
    }
    let comfy = Policy::load(&repo().join("policies/comfyui.toml")).unwrap();
    assert!(comfy.non_root_user && comfy.no_setuid && comfy.no_world_writable);
    assert!(comfy.require.iter().any(|g| g.pattern == "python3.*-flash-attn-*"));
    let checks = Checks::load(&repo().join("policies/smoke-comfyui.toml")).unwrap();
    let names: Vec<&str> = checks.check.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "libcuda resolves",
        "torch sees the GPU",
        "CUDA matmul matches the CPU",
        "flash-attn forward",
        "sageattention forward",
    ] {
        assert!(names.contains(&want), "{names:?}");
        assert!(checks.check.iter().find(|c| c.name == want).unwrap().gpu, "{want} is a GPU check");
    }
    let imports = &checks.check.iter().find(|c| c.name.starts_with("imports")).unwrap().command[2];
    for m in [
        "torch",
        "torchvision",
        "torchaudio",
        "diffusers",
        "transformers",
        "accelerate",
        "timm",
        "cv2",
        "insightface",
        "facexlib",
        "clip",
    ] {
        assert!(imports.contains(&format!("\"{m}\"")), "imports lack {m}");
    }
    let spec = nixoci::image::ImageSpec::load(&repo().join("examples/comfyui/image.toml")).unwrap();
    assert!(spec.gpu);
    let env = spec.effective_env();
    assert!(
        env.contains(&"LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/usr/lib64:/run/opengl-driver/lib".to_owned()),
        "{env:?}"
    );
    assert!(
        env.contains(&"NVIDIA_VISIBLE_DEVICES=all".to_owned())
            && env.contains(&"NVIDIA_DRIVER_CAPABILITIES=compute,utility".to_owned())
    );
}
