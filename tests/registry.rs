//! Registry tests: a real CNCF distribution registry (`docker-registry`) on 127.0.0.1, one per
//! test on a free port (plain HTTP, htpasswd bcrypt basic auth, bearer tokens, TLS with a private
//! CA, a client certificate, Docker's self-signed recipe), with skopeo as the independent check.
//! The registry, the token server and the proxies (a fault-injecting, byte-counting reverse proxy
//! and a tunnel-counting CONNECT proxy) are in `tests/common/` (`registry.rs`, `tokens.rs`,
//! `proxy.rs`). The 5 GiB layer test runs only with NIXOCI_BIG_TESTS=1.
//!
//! Tools: docker-registry, skopeo, openssl, htpasswd, time (Debian: docker-registry skopeo openssl
//! apache2-utils time). Under CI a missing tool fails the test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::proxy::{Action, ConnectProxy, Fault, Proxy};
use common::registry::{PASSWORD, Registry, Setup, USER, free_port, oci_manifest_digest};
use common::tokens::TokenServer;
use common::{describe, example_args, output, run_ok_str, tempdir};

// ---- running nixoci -------------------------------------------------------------------------------

struct Run {
    out: Output,
    cmd: String,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    fn ok(self) -> Value {
        assert!(self.out.status.success(), "`{}` failed ({}):\n{}", self.cmd, self.out.status, self.stderr());
        self.no_secret();
        serde_json::from_slice(&self.out.stdout).unwrap_or_else(|e| panic!("`{}`: no JSON on stdout ({e})", self.cmd))
    }

    /// Fails; returns stderr.
    fn fails(self) -> String {
        assert!(!self.out.status.success(), "`{}` should have failed:\n{}", self.cmd, self.stderr());
        self.no_secret();
        self.stderr()
    }

    fn no_secret(&self) {
        for (name, s) in [("stdout", &self.out.stdout), ("stderr", &self.out.stderr)] {
            let text = String::from_utf8_lossy(s);
            assert!(!text.contains(PASSWORD), "`{}` printed the password on {name}:\n{text}", self.cmd);
        }
    }
}

fn nixoci(args: &[String], env: &[(&str, &str)]) -> Run {
    let mut c = nixoci_cmd(args, env);
    let cmd = describe(&c);
    Run { out: output(&mut c), cmd }
}

/// The command [`nixoci`] runs (for tests that start it and kill it).
fn nixoci_cmd(args: &[String], env: &[(&str, &str)]) -> std::process::Command {
    let mut c = common::nixoci();
    c.args(args).arg("--json");
    // Debug logs on: secrets must not show up there either.
    c.env("NIXOCI_LOG", "debug");
    // No credentials from the machine's own auth files.
    c.env_remove("REGISTRY_AUTH_FILE")
        .env("XDG_RUNTIME_DIR", "/nonexistent")
        .env("HOME", "/nonexistent")
        .env_remove("DOCKER_CONFIG")
        .env_remove("XDG_CONFIG_HOME");
    // No proxy from the machine's environment (tests set their own).
    for k in
        ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"]
    {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `build` of examples/hello (optionally with another image spec) pushed to `dest`.
fn build_args(dest: &[String], cache: &Path, image_toml: Option<&Path>) -> Vec<String> {
    let mut a = s(&["build"]);
    let mut ex = example_args();
    if let Some(t) = image_toml {
        let i = ex.iter().position(|x| x == "--image").unwrap();
        ex[i + 1] = t.display().to_string();
    }
    a.extend(ex);
    a.extend(s(&["--cache-dir", &cache.display().to_string(), "--jobs", "2"]));
    for d in dest {
        a.push("-o".into());
        a.push(d.clone());
    }
    a
}

/// examples/hello's image spec with another environment: same store layers, other config.
fn other_spec(dir: &Path, marker: &str) -> PathBuf {
    let mut t = fs::read_to_string(common::example_dir().join("image.toml")).unwrap();
    t = t.replace("LANG=C.UTF-8", &format!("LANG=C.UTF-8\", \"MARKER={marker}"));
    let p = dir.join(format!("image-{marker}.toml"));
    fs::write(&p, t).unwrap();
    p
}

/// A store with one 20 MiB path of incompressible bytes (so its layer takes the chunked path)
/// and one small path; returns the build inputs.
fn big_store(dir: &Path) -> Vec<String> {
    big_store_seeded(dir, 0x9E37_79B9_7F4A_7C15)
}

/// [`big_store`] with other bytes in the big path (same store paths: use another cache).
fn big_store_seeded(dir: &Path, seed: u64) -> Vec<String> {
    let store = dir.join("store");
    let big = "0a1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r-big-blob-1.0";
    let small = "9z8y7x6w5v4s3r2q1p0n9m8l7k6j5i4h-small-1.0";
    fs::create_dir_all(store.join(big).join("share")).unwrap();
    fs::create_dir_all(store.join(small).join("bin")).unwrap();
    let mut x: u64 = seed;
    let mut data = vec![0u8; 20 << 20];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(store.join(big).join("share/weights.bin"), &data).unwrap();
    fs::write(store.join(small).join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    let sri = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let sri2 = "sha256-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
    let closure = format!(
        r#"[{{"path":"/nix/store/{big}","narHash":"{sri}","narSize":{},"references":[]}},
            {{"path":"/nix/store/{small}","narHash":"{sri2}","narSize":200,"references":["/nix/store/{big}"]}}]"#,
        20 << 20
    );
    fs::write(dir.join("closure.json"), closure).unwrap();
    vec![
        "--closure".into(),
        dir.join("closure.json").display().to_string(),
        "--store-root".into(),
        store.display().to_string(),
    ]
}

fn stat(v: &Value, k: &str) -> u64 {
    v["stats"][k].as_u64().or_else(|| v[k].as_u64()).unwrap_or_else(|| panic!("no {k} in {v:#}"))
}

// ---- tests ----------------------------------------------------------------------------------------

/// Plain HTTP: push, verify with skopeo, re-push uploads nothing (counted by a proxy) and reads
/// no store file, several tags, copy registry → oci: / oci-archive: and back with a mount.
#[test]
fn plain_push_repush_tags_and_copy() {
    require_tools!("docker-registry", "skopeo");
    let reg = Registry::start(Setup::Plain);
    let proxy = Proxy::start(reg.port, Vec::new());
    let t = tempdir();
    let cache = t.path().join("cache");
    let dest = format!("docker://{}/hello:1.0", proxy.host());

    let started = Instant::now();
    let first = nixoci(&build_args(std::slice::from_ref(&dest), &cache, None), &[]).ok();
    let first_secs = started.elapsed().as_secs_f64();
    let digest = first["manifest_digest"].as_str().unwrap().to_owned();
    let layers = first["layers"].as_array().unwrap().len() as u64;
    assert_eq!(stat(&first, "blobs_uploaded"), layers + 1, "{first:#}");
    assert!(proxy.upload_bytes() > 0);
    assert_eq!(stat(&first, "bytes_uploaded"), proxy.upload_bytes());
    assert_eq!(reg.digest_of("hello:1.0").as_deref(), Some(digest.as_str()));
    assert_eq!(reg.copy_back("hello:1.0", &t.path().join("back")), digest);

    // No change: HEADs only — no upload byte, no store file read.
    let before = proxy.upload_bytes();
    let n0 = proxy.requests().len();
    let started = Instant::now();
    let second = nixoci(&build_args(std::slice::from_ref(&dest), &cache, None), &[]).ok();
    let second_secs = started.elapsed().as_secs_f64();
    assert_eq!(second["manifest_digest"], first["manifest_digest"]);
    assert_eq!(proxy.upload_bytes(), before, "a no-change push uploaded bytes");
    assert_eq!(stat(&second, "bytes_uploaded"), 0);
    assert_eq!(stat(&second, "blobs_skipped"), layers + 1);
    assert_eq!(stat(&second, "bytes_read"), 0, "a warm re-push read store files");
    let again = proxy.requests()[n0..].to_vec();
    assert!(
        again.iter().all(|r| r.starts_with("HEAD ")
            || r.starts_with("GET /v2/")
            || r.starts_with("PUT ") && r.contains("/manifests/")),
        "a no-change push sent more than HEADs and the manifest: {again:?}"
    );
    eprintln!("examples/hello: first push {first_secs:.2}s, no-change re-push {second_secs:.2}s");

    // Several tags: -o twice.
    let tags = [format!("docker://{}/hello:1.1", reg.host()), format!("docker://{}/hello:latest", reg.host())];
    nixoci(&build_args(&tags, &cache, None), &[]).ok();
    for tag in ["hello:1.1", "hello:latest"] {
        assert_eq!(reg.digest_of(tag).as_deref(), Some(digest.as_str()), "{tag}");
    }

    // copy: registry → oci: and oci-archive:, then back to another repository with a mount.
    let oci = format!("oci:{}:x", t.path().join("copied").display());
    let src = format!("docker://{}/hello:1.0", reg.host());
    let c = nixoci(&s(&["copy", &src, &oci]), &[]).ok();
    assert_eq!(c["manifest_digest"].as_str(), Some(digest.as_str()));
    assert_eq!(oci_manifest_digest(&t.path().join("copied"), "x"), digest);
    let archive = format!("oci-archive:{}", t.path().join("copied.tar").display());
    nixoci(&s(&["copy", &src, &archive]), &[]).ok();
    let mounted = format!("docker://{}/hello-copy:1.0", reg.host());
    let m = nixoci(&s(&["copy", "--mount-from", "hello", &oci, &mounted]), &[]).ok();
    assert_eq!(stat(&m, "blobs_mounted"), layers + 1, "{m:#}");
    assert_eq!(stat(&m, "bytes_uploaded"), 0);
    assert_eq!(stat(&m, "bytes_read"), 0, "a mounted blob was read");
    assert_eq!(reg.digest_of("hello-copy:1.0").as_deref(), Some(digest.as_str()));
    // oci-archive → registry (no mount: uploads).
    let again = format!("docker://{}/hello-archive:1.0", reg.host());
    let a = nixoci(&s(&["copy", &archive, &again]), &[]).ok();
    assert_eq!(stat(&a, "blobs_uploaded"), layers + 1);
    assert_eq!(reg.digest_of("hello-archive:1.0").as_deref(), Some(digest.as_str()));
    // docker-archive → registry: its synthesised manifest goes up as it is.
    let da = t.path().join("hello-docker.tar");
    nixoci(&build_args(&[format!("docker-archive:{}", da.display())], &cache, None), &[]).ok();
    let d = nixoci(
        &s(&["copy", &format!("docker-archive:{}", da.display()), &format!("docker://{}/hello-docker:1", reg.host())]),
        &[],
    )
    .ok();
    let dd = d["manifest_digest"].as_str().unwrap().to_owned();
    assert_eq!(reg.digest_of("hello-docker:1").as_deref(), Some(dd.as_str()));
    assert_eq!(reg.copy_back("hello-docker:1", &t.path().join("back-docker")), dd);
    // docker-archive as a copy destination is refused clearly.
    let e = nixoci(&s(&["copy", &src, &format!("docker-archive:{}", t.path().join("x.tar").display())]), &[]).fails();
    assert!(e.contains("not supported"), "{e}");
    // The registry's error document shown as one readable line.
    let missing = format!("docker://{}/hello:no-such-tag", reg.host());
    let e = nixoci(&s(&["copy", &missing, &format!("oci:{}:x", t.path().join("none").display())]), &[]).fails();
    let line = e.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(line.contains("answered 404: MANIFEST_UNKNOWN: manifest unknown ({\"Tag\":\"no-such-tag\"})"), "{e}");
}

/// A 20 MiB layer (chunked PATCH) through a proxy that drops the connection mid-blob and answers
/// 500, 503 and 429: the push completes, resumes from the server's Range, and verifies. A
/// re-push then uploads nothing.
#[test]
fn chunked_push_survives_faults() {
    require_tools!("docker-registry", "skopeo");
    let reg = Registry::start(Setup::Plain);
    let faults = vec![
        Fault { method: "POST", path: "/blobs/uploads/", skip: 0, action: Action::Status(429) },
        Fault { method: "HEAD", path: "/blobs/", skip: 0, action: Action::Status(500) },
        // The first chunk dies after 1 MiB: the server's session is unusable, so it restarts.
        Fault { method: "PATCH", path: "/blobs/uploads/", skip: 0, action: Action::Drop(1 << 20) },
        // Then the second chunk fails: resume from the server's Range (no resend of chunk 1).
        Fault { method: "PATCH", path: "/blobs/uploads/", skip: 1, action: Action::Status(500) },
        Fault { method: "PUT", path: "/manifests/", skip: 0, action: Action::Status(503) },
    ];
    let proxy = Proxy::start(reg.port, faults);
    let t = tempdir();
    let cache = t.path().join("cache");
    let mut args = s(&["build"]);
    args.extend(big_store(t.path()));
    args.extend(s(&[
        "--cache-dir",
        &cache.display().to_string(),
        "--jobs",
        "2",
        "--compression",
        "gzip:1",
        "-o",
        &format!("docker://{}/big:1", proxy.host()),
    ]));
    let run = nixoci(&args, &[]);
    let log = run.stderr();
    let first = run.ok();
    // The debug log tells the story: a lost session started again, then a resume at 16 MiB.
    assert!(log.contains("starting it again"), "{log}");
    assert!(log.contains(&format!("at byte {} of", 16 << 20)), "{log}");
    let fired = proxy.log.fired.lock().unwrap().clone();
    assert!(proxy.faults.lock().unwrap().is_empty(), "faults left: {fired:?}");
    let digest = first["manifest_digest"].as_str().unwrap().to_owned();
    let big = first["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).max().unwrap();
    assert!(big > 16 << 20, "the big layer must take the chunked path ({big} bytes)");
    let reqs = proxy.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET ") && r.contains("/blobs/uploads/")),
        "no upload status request after the failed chunk: {reqs:?}"
    );
    // Resumed, not restarted, after the 500: at most the big blob twice plus 1 MiB was sent.
    let sent = stat(&first, "bytes_uploaded");
    assert!(sent > big, "{sent} <= {big}");
    // Restarting instead of resuming would resend the whole blob: > big + 16 MiB in all.
    assert!(sent < big + (16 << 20), "sent {sent} bytes for a {big}-byte blob: the resume resent too much");
    assert_eq!(reg.digest_of("big:1").as_deref(), Some(digest.as_str()));
    assert_eq!(reg.copy_back("big:1", &t.path().join("back")), digest);

    let before = proxy.upload_bytes();
    let started = Instant::now();
    let second = nixoci(&args, &[]).ok();
    eprintln!("20 MiB image: no-change re-push {:.2}s", started.elapsed().as_secs_f64());
    assert_eq!(proxy.upload_bytes(), before);
    assert_eq!(stat(&second, "bytes_read"), 0);

    // Throughput straight to the registry (no proxy), cold cache: build + push.
    let mut direct = args.clone();
    let n = direct.len();
    direct[n - 1] = format!("docker://{}/big-direct:1", reg.host());
    let started = Instant::now();
    let d = nixoci(&direct, &[]).ok();
    let secs = started.elapsed().as_secs_f64();
    let bytes = stat(&d, "bytes_uploaded");
    eprintln!("20 MiB image pushed in {secs:.2}s (warm layer cache): {:.0} MB/s", bytes as f64 / secs / 1e6);
}

/// A blob download cut mid-blob (by the proxy, twice) resumes at the byte where it stopped with a
/// `Range` request, for `copy` and for `inspect --read-layers`; what arrives verifies.
#[test]
fn pull_resumes_at_the_cut_byte() {
    require_tools!("docker-registry");
    let reg = Registry::start(Setup::Plain);
    let t = tempdir();
    let mut args = s(&["build"]);
    args.extend(big_store(t.path()));
    args.extend(s(&["--cache-dir", &t.path().join("cache").display().to_string(), "--compression", "gzip:1"]));
    args.extend(s(&["-o", &format!("docker://{}/big:1", reg.host())]));
    let built = nixoci(&args, &[]).ok();
    let digest = built["manifest_digest"].as_str().unwrap().to_owned();
    let layers = built["layers"].as_array().unwrap();
    let big = layers.iter().max_by_key(|l| l["size"].as_u64().unwrap()).unwrap();
    let (big_digest, big_size) = (big["digest"].as_str().unwrap().to_owned(), big["size"].as_u64().unwrap());
    let path: &'static str = Box::leak(format!("/blobs/{big_digest}").into_boxed_str());
    let cut = (5 << 20) + 12345;
    let cut_at = |at: u64| Fault { method: "GET", path, skip: 0, action: Action::CutResponse(at) };
    // The first GET is cut after `cut` bytes, the resumed one after `cut` more.
    let proxy = Proxy::start(reg.port, vec![cut_at(cut), cut_at(cut)]);
    let src = format!("docker://{}/big:1", proxy.host());
    let oci = t.path().join("copied");
    let run = nixoci(&s(&["copy", &src, &format!("oci:{}:c", oci.display())]), &[]);
    let log = run.stderr();
    run.ok();
    assert!(proxy.faults.lock().unwrap().is_empty(), "{:?}", proxy.log.fired.lock().unwrap());
    let ranges = proxy.log.ranges.lock().unwrap().clone();
    let get = format!("GET /v2/big{path}");
    assert_eq!(ranges, vec![format!("{get} bytes={cut}-"), format!("{get} bytes={}-", 2 * cut)]);
    assert!(log.contains(&format!("broke off at byte {cut})")), "{log}");
    assert_eq!(oci_manifest_digest(&oci, "c"), digest);
    let hex = big_digest.trim_start_matches("sha256:");
    let blob = fs::read(oci.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(blob.len() as u64, big_size);
    assert_eq!(common::sha256_hex(&blob), hex);

    // inspect --read-layers reads the layer through the same resumption.
    proxy.faults.lock().unwrap().push(cut_at(cut));
    nixoci(&s(&["inspect", "--read-layers", &src]), &[]).ok();
    let ranges = proxy.log.ranges.lock().unwrap().clone();
    assert_eq!(ranges.last(), Some(&format!("{get} bytes={cut}-")), "{ranges:?}");
}

/// `kill -9` of a push at three points — mid-blob (the first 16 MiB chunk of the big layer
/// landed), after the first blob landed, and before the manifest — leaves the tag as it was; each
/// re-run uploads only what is still missing (counted by the proxy), and the last one finishes
/// and verifies.
#[test]
fn push_killed_leaves_the_tag_and_resumes() {
    use std::os::unix::process::ExitStatusExt;
    require_tools!("docker-registry", "skopeo");
    let reg = Registry::start(Setup::Plain);
    let t = tempdir();
    // Release 1 at the tag, straight to the registry.
    let (one, two) = (t.path().join("one"), t.path().join("two"));
    let build = |dir: &Path, seed: u64, dest: String| {
        let mut a = s(&["build"]);
        a.extend(big_store_seeded(dir, seed));
        a.extend(s(&["--cache-dir", &dir.join("cache").display().to_string(), "--compression", "none"]));
        a.extend(s(&["--jobs", "1", "-o", &dest]));
        a
    };
    let first = nixoci(&build(&one, 1, format!("docker://{}/app:1", reg.host())), &[]).ok();
    let digest_one = first["manifest_digest"].as_str().unwrap().to_owned();

    // Release 2 to the same tag through the proxy, killed at each point in turn.
    let proxy = Proxy::start(reg.port, Vec::new());
    let args = build(&two, 2, format!("docker://{}/app:1", proxy.host()));
    let big = 20u64 << 20;
    let kill_at = |fault: Fault, point: &str| -> u64 {
        let before = proxy.upload_bytes();
        let fired = proxy.log.fired.lock().unwrap().len();
        proxy.faults.lock().unwrap().push(fault);
        let log = std::fs::File::create(t.path().join(format!("{point}.log"))).unwrap();
        let mut child = nixoci_cmd(&args, &[]).stdout(std::process::Stdio::null()).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while proxy.log.fired.lock().unwrap().len() == fired {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{point}: nixoci ended ({status}) before the fault fired");
            }
            assert!(Instant::now() < deadline, "{point}: the fault never fired");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL
        assert_eq!(child.wait().unwrap().signal(), Some(9), "{point}");
        assert_eq!(reg.digest_of("app:1").as_deref(), Some(digest_one.as_str()), "{point}: the tag moved");
        proxy.upload_bytes() - before
    };
    // Mid-blob: the second PATCH of the big layer hangs, the first chunk is in.
    let sent = kill_at(Fault { method: "PATCH", path: "/blobs/uploads/", skip: 1, action: Action::Hold }, "mid-blob");
    assert!(sent >= 16 << 20, "{sent}");
    // After the first blob: it (the big layer, largest first) completes, the next upload hangs.
    // The lost session of the killed upload is not resumable: the big layer goes once more, whole.
    let sent = kill_at(Fault { method: "POST", path: "/blobs/uploads/", skip: 1, action: Action::Hold }, "first-blob");
    assert!(sent >= big && sent < big + (1 << 20), "{sent}");
    // Before the manifest: every blob is in; the big layer is not sent again.
    let sent = kill_at(Fault { method: "PUT", path: "/manifests/", skip: 0, action: Action::Hold }, "manifest");
    assert!(sent < 1 << 20, "re-sent {sent} bytes: only the blobs still missing may go");
    // The same command again: nothing left to upload; it finishes, the tag moves, it verifies.
    let before = proxy.upload_bytes();
    let last = nixoci(&args, &[]).ok();
    assert_eq!(proxy.upload_bytes(), before);
    assert_eq!(stat(&last, "blobs_uploaded"), 0, "{last:#}");
    let digest_two = last["manifest_digest"].as_str().unwrap().to_owned();
    assert_ne!(digest_two, digest_one);
    assert_eq!(reg.digest_of("app:1").as_deref(), Some(digest_two.as_str()));
    assert_eq!(reg.copy_back("app:1", &t.path().join("back")), digest_two);
}

/// Blobs over 4 GiB (a torch-sized layer): a 5 GiB layer of a sparse file with data at a few
/// offsets (past 4 GiB too) is pushed in chunks and pulled back with `copy`; the bytes and the
/// digest are checked, and the peak RSS of both (`/usr/bin/time -v`) stays bounded. Slow (it
/// writes 15 GiB): runs only with NIXOCI_BIG_TESTS=1.
#[test]
fn blob_over_4_gib_push_and_pull() {
    if std::env::var_os("NIXOCI_BIG_TESTS").is_none() {
        eprintln!("SKIP blob_over_4_gib_push_and_pull: set NIXOCI_BIG_TESTS=1 (writes 15 GiB)");
        return;
    }
    require_tools!("docker-registry", "time");
    use std::io::{Seek, SeekFrom, Write};
    let reg = Registry::start(Setup::Plain);
    let t = tempdir();
    let store = t.path().join("store");
    let name = "5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f-torch-like-2.10";
    fs::create_dir_all(store.join(name).join("lib")).unwrap();
    let size: u64 = (5 << 30) + 12345;
    {
        let mut f = fs::File::create(store.join(name).join("lib/libtorch_cuda.so")).unwrap();
        f.set_len(size).unwrap();
        for (i, at) in [0, 1 << 30, (4 << 30) - 3, (4 << 30) + 64, size - 64].into_iter().enumerate() {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(format!("marker {i} at byte {at};").as_bytes()).unwrap();
        }
    }
    let closure = format!(
        r#"[{{"path":"/nix/store/{name}","narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":{size},"references":[]}}]"#
    );
    fs::write(t.path().join("closure.json"), closure).unwrap();
    let timed = |args: Vec<String>, what: &str| -> (Value, u64, f64) {
        let c = nixoci_cmd(&args, &[("NIXOCI_LOG", "info")]);
        let mut timed = std::process::Command::new("/usr/bin/time");
        timed.arg("-v").arg(c.get_program()).args(c.get_args());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => timed.env(k, v),
                None => timed.env_remove(k),
            };
        }
        let started = Instant::now();
        let out = output(&mut timed);
        let secs = started.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{what} failed:\n{err}");
        let rss_kb: u64 = err
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no peak RSS in:\n{err}"));
        (serde_json::from_slice(&out.stdout).unwrap(), rss_kb, secs)
    };
    let mut a = s(&["build", "--closure", &t.path().join("closure.json").display().to_string()]);
    a.extend(s(&["--store-root", &store.display().to_string(), "--compression", "none", "--no-cache"]));
    a.extend(s(&["-o", &format!("docker://{}/torch:1", reg.host())]));
    let (pushed, push_rss, push_secs) = timed(a, "build + push");
    let digest = pushed["manifest_digest"].as_str().unwrap().to_owned();
    let layer = pushed["layers"].as_array().unwrap().iter().max_by_key(|l| l["size"].as_u64().unwrap()).unwrap();
    let (layer_digest, layer_size) = (layer["digest"].as_str().unwrap().to_owned(), layer["size"].as_u64().unwrap());
    assert!(layer_size > size && layer_size > 4 << 30, "{layer_size}");
    assert!(stat(&pushed, "bytes_uploaded") >= layer_size);

    let oci = t.path().join("pulled");
    let (_, pull_rss, pull_secs) =
        timed(s(&["copy", &format!("docker://{}/torch:1", reg.host()), &format!("oci:{}:t", oci.display())]), "copy");
    assert_eq!(oci_manifest_digest(&oci, "t"), digest);
    let blob = oci.join("blobs/sha256").join(layer_digest.trim_start_matches("sha256:"));
    assert_eq!(fs::metadata(&blob).unwrap().len(), layer_size);
    let sum = run_ok_str(std::process::Command::new("sha256sum").arg(&blob));
    assert!(sum.starts_with(layer_digest.trim_start_matches("sha256:")), "{sum}");
    // The markers are where they were in the file, inside the pulled tar.
    let markers = [0, 1 << 30, (4 << 30) - 3, (4 << 30) + 64, size - 64];
    let mut f = fs::File::open(&blob).unwrap();
    let mut head = vec![0u8; 64 << 10];
    std::io::Read::read_exact(&mut f, &mut head).unwrap();
    let start = head.windows(19).position(|w| w == b"marker 0 at byte 0;").expect("file data in the tar") as u64;
    for (i, at) in markers.into_iter().enumerate() {
        let want = format!("marker {i} at byte {at};");
        let mut got = vec![0u8; want.len()];
        f.seek(SeekFrom::Start(start + at)).unwrap();
        std::io::Read::read_exact(&mut f, &mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
    eprintln!(
        "5 GiB layer ({layer_size} bytes): build + push {push_secs:.0}s, peak RSS {} MiB; pull {pull_secs:.0}s, peak RSS {} MiB",
        push_rss / 1024,
        pull_rss / 1024
    );
    assert!(push_rss < 512 * 1024 && pull_rss < 512 * 1024, "memory not bounded: {push_rss} / {pull_rss} KiB");
}

/// Two processes push images that share layers to one registry at once: both succeed, both
/// verify.
#[test]
fn concurrent_pushes_share_layers() {
    require_tools!("docker-registry", "skopeo");
    let reg = Registry::start(Setup::Plain);
    let t = tempdir();
    let specs = [other_spec(t.path(), "a"), other_spec(t.path(), "b")];
    let children: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let args = build_args(
                &[format!("docker://{}/shared:{i}", reg.host())],
                &t.path().join(format!("cache{i}")),
                Some(spec),
            );
            std::thread::spawn(move || nixoci(&args, &[]).ok())
        })
        .collect();
    let results: Vec<Value> = children.into_iter().map(|c| c.join().unwrap()).collect();
    assert_ne!(results[0]["manifest_digest"], results[1]["manifest_digest"]);
    for (i, r) in results.iter().enumerate() {
        let d = r["manifest_digest"].as_str().unwrap();
        assert_eq!(reg.digest_of(&format!("shared:{i}")).as_deref(), Some(d));
        assert_eq!(reg.copy_back(&format!("shared:{i}"), &t.path().join(format!("back{i}"))), d);
    }
}

/// htpasswd (bcrypt) basic auth: --creds, --authfile, $REGISTRY_AUTH_FILE, a credential helper;
/// wrong or missing credentials fail clearly and leave the tag as it was; the password never
/// shows up in any output (debug logs included).
#[test]
fn basic_auth_credentials() {
    require_tools!("docker-registry", "skopeo", "htpasswd");
    let reg = Registry::start(Setup::Basic);
    let t = tempdir();
    let cache = t.path().join("cache");
    let dest = format!("docker://{}/auth:1", reg.host());
    let creds = format!("{USER}:{PASSWORD}");

    let mut a = build_args(std::slice::from_ref(&dest), &cache, None);
    a.extend(s(&["--creds", &creds]));
    let first = nixoci(&a, &[]).ok();
    let digest = first["manifest_digest"].as_str().unwrap().to_owned();
    assert_eq!(reg.digest_of("auth:1").as_deref(), Some(digest.as_str()));
    assert_eq!(reg.copy_back("auth:1", &t.path().join("back")), digest);

    // Another image to the same tag with a wrong password: refused, tag unchanged.
    let other = other_spec(t.path(), "other");
    let mut a = build_args(std::slice::from_ref(&dest), &cache, Some(&other));
    a.extend(s(&["--creds", &format!("{USER}:wrong-{PASSWORD}")]));
    let e = nixoci(&a, &[]).fails();
    assert!(e.contains(&reg.host()) && e.contains("refused the credentials"), "{e}");
    assert_eq!(reg.digest_of("auth:1").as_deref(), Some(digest.as_str()));
    // No credentials at all: the error says where to put them.
    let e = nixoci(&build_args(std::slice::from_ref(&dest), &cache, Some(&other)), &[]).fails();
    assert!(e.contains(&reg.host()) && e.contains("--creds"), "{e}");
    assert_eq!(reg.digest_of("auth:1").as_deref(), Some(digest.as_str()));

    // Auth files: --authfile, $REGISTRY_AUTH_FILE, then a credential helper.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&creds);
    let authfile = t.path().join("auth.json");
    fs::write(&authfile, format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, reg.host())).unwrap();
    let mut a = build_args(std::slice::from_ref(&dest), &cache, None);
    a.extend(s(&["--authfile", &authfile.display().to_string()]));
    let r = nixoci(&a, &[]).ok();
    assert_eq!(stat(&r, "bytes_uploaded"), 0);
    let a = build_args(&[format!("docker://{}/auth:2", reg.host())], &cache, None);
    nixoci(&a, &[("REGISTRY_AUTH_FILE", &authfile.display().to_string())]).ok();
    assert_eq!(reg.digest_of("auth:2").as_deref(), Some(digest.as_str()));

    let bin = t.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-nixoci-test");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n\
             [ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\n",
            reg.host()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let helper_auth = t.path().join("helper.json");
    fs::write(&helper_auth, format!(r#"{{"credHelpers":{{"{}":"nixoci-test"}}}}"#, reg.host())).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut a = build_args(&[format!("docker://{}/auth:3", reg.host())], &cache, None);
    a.extend(s(&["--authfile", &helper_auth.display().to_string()]));
    nixoci(&a, &[("PATH", &path)]).ok();
    assert_eq!(reg.digest_of("auth:3").as_deref(), Some(digest.as_str()));

    // copy with credentials, both ways.
    let oci = format!("oci:{}:c", t.path().join("copied").display());
    nixoci(&s(&["copy", "--creds", &creds, &dest, &oci]), &[]).ok();
    assert_eq!(oci_manifest_digest(&t.path().join("copied"), "c"), digest);
    let back = format!("docker://{}/auth-copy:1", reg.host());
    nixoci(&s(&["copy", "--creds", &creds, &oci, &back]), &[]).ok();
    assert_eq!(reg.digest_of("auth-copy:1").as_deref(), Some(digest.as_str()));
}

/// Token (bearer) auth, as GHCR, Docker Hub and Harbor do it: the `WWW-Authenticate`
/// challenge leads to the token endpoint with basic credentials and the push scope (plus
/// `repository:FROM:pull` for a mount); a token that the registry refuses is refreshed; a wrong
/// password fails clearly; neither the password nor any token is ever printed.
#[test]
fn bearer_token_auth() {
    require_tools!("docker-registry", "skopeo", "openssl");
    let tokens = TokenServer::start();
    let reg = Registry::start(tokens.setup());
    let t = tempdir();
    let cache = t.path().join("cache");
    let creds = format!("{USER}:{PASSWORD}");
    let dest = format!("docker://{}/team/app:1", reg.host());
    let mut a = build_args(std::slice::from_ref(&dest), &cache, None);
    a.extend(s(&["--creds", &creds]));
    let run = nixoci(&a, &[]);
    let out = run.out.clone();
    let first = run.ok();
    let ours: Vec<String> = tokens.log.lock().unwrap().requests.clone();
    assert!(ours.len() >= 2 && ours.iter().all(|r| r == "repository:team/app:pull,push"), "token requests: {ours:?}");
    let digest = first["manifest_digest"].as_str().unwrap().to_owned();
    assert_eq!(reg.digest_of("team/app:1").as_deref(), Some(digest.as_str()));
    assert_eq!(reg.copy_back("team/app:1", &t.path().join("back")), digest);
    {
        let l = tokens.log.lock().unwrap();
        // The first token granted nothing: the registry said 401 and the client refreshed it.
        for tok in &l.tokens {
            for stream in [&out.stdout, &out.stderr] {
                assert!(!String::from_utf8_lossy(stream).contains(tok.as_str()), "a token was printed");
            }
        }
    }
    // A mount from another repository asks for both scopes in one token.
    let copy_dest = format!("docker://{}/team/app-copy:1", reg.host());
    let m = nixoci(&s(&["copy", "--creds", &creds, "--mount-from", "team/app", &dest, &copy_dest]), &[]).ok();
    assert_eq!(stat(&m, "blobs_mounted"), first["layers"].as_array().unwrap().len() as u64 + 1);
    assert!(
        tokens
            .log
            .lock()
            .unwrap()
            .requests
            .iter()
            .any(|r| r == "repository:team/app-copy:pull,push repository:team/app:pull"),
        "{:?}",
        tokens.log.lock().unwrap().requests
    );
    assert_eq!(reg.digest_of("team/app-copy:1").as_deref(), Some(digest.as_str()));
    // Wrong password: the token endpoint refuses; the error names the registry.
    let other = other_spec(t.path(), "other");
    let mut a = build_args(std::slice::from_ref(&dest), &cache, Some(&other));
    a.extend(s(&["--creds", &format!("{USER}:wrong-{PASSWORD}")]));
    let e = nixoci(&a, &[]).fails();
    assert!(e.contains(&reg.host()) && e.contains("refused the credentials"), "{e}");
    assert_eq!(reg.digest_of("team/app:1").as_deref(), Some(digest.as_str()));
}

/// TLS with a private CA: --cert-dir works; without it the certificate is refused clearly and
/// nothing is pushed; --tls-verify=false works.
#[test]
fn tls_with_private_ca() {
    require_tools!("docker-registry", "skopeo", "openssl");
    let reg = Registry::start(Setup::Tls);
    let t = tempdir();
    let cache = t.path().join("cache");
    let mut a = build_args(&[format!("docker://{}/tls:1", reg.host())], &cache, None);
    a.extend(s(&["--cert-dir", &reg.ca_dir().display().to_string()]));
    let first = nixoci(&a, &[]).ok();
    let digest = first["manifest_digest"].as_str().unwrap().to_owned();
    assert_eq!(reg.digest_of("tls:1").as_deref(), Some(digest.as_str()));
    assert_eq!(reg.copy_back("tls:1", &t.path().join("back")), digest);

    let e = nixoci(&build_args(&[format!("docker://{}/tls:untrusted", reg.host())], &cache, None), &[]).fails();
    assert!(e.contains(&format!("the certificate of {} is signed by an untrusted issuer", reg.host())), "{e}");
    assert!(e.contains("--cert-dir DIR") && e.contains("--tls-verify=false"), "{e}");
    assert_eq!(reg.digest_of("tls:untrusted"), None);

    let mut a = build_args(&[format!("docker://{}/tls:insecure", reg.host())], &cache, None);
    a.push("--tls-verify=false".into());
    nixoci(&a, &[]).ok();
    assert_eq!(reg.digest_of("tls:insecure").as_deref(), Some(digest.as_str()));

    // Reading over TLS: copy back into an OCI layout.
    let oci = format!("oci:{}:c", t.path().join("copied").display());
    nixoci(
        &s(&[
            "copy",
            "--cert-dir",
            &reg.ca_dir().display().to_string(),
            &format!("docker://{}/tls:1", reg.host()),
            &oci,
        ]),
        &[],
    )
    .ok();
    assert_eq!(oci_manifest_digest(&t.path().join("copied"), "c"), digest);
}

/// Docker's recipe for a self-signed registry certificate, exactly (a certificate that is its own
/// CA, which webpki alone refuses): with it in --cert-dir, build → push → `skopeo inspect` agree
/// on the digest, and reading works; the same registry with the certificate not in the trust
/// directory, a certificate for another host name, and an expired one are refused, each with a
/// message that names the problem and the way out, and nothing is pushed.
#[test]
fn tls_self_signed_docker_recipe() {
    require_tools!("docker-registry", "skopeo", "openssl");
    let t = tempdir();
    let cache = t.path().join("cache");
    let certs = t.path().join("recipe");
    common::registry::docker_recipe_cert(&certs, "IP:127.0.0.1", "127.0.0.1");
    let reg = Registry::start(Setup::TlsCert(certs.clone()));
    let dest = |tag: &str| vec![format!("docker://{}/selfsigned:{tag}", reg.host())];
    let cert_dir = |d: &Path| s(&["--cert-dir", &d.display().to_string()]);

    let mut a = build_args(&dest("1"), &cache, None);
    a.extend(cert_dir(&reg.ca_dir()));
    let pushed = nixoci(&a, &[]).ok();
    let digest = pushed["manifest_digest"].as_str().unwrap().to_owned();
    assert_eq!(reg.digest_of("selfsigned:1").as_deref(), Some(digest.as_str()), "skopeo inspect --cert-dir");
    let oci = format!("oci:{}:c", t.path().join("copied").display());
    let mut a = s(&["copy", &dest("1")[0], &oci]);
    a.extend(cert_dir(&reg.ca_dir()));
    nixoci(&a, &[]).ok();
    assert_eq!(oci_manifest_digest(&t.path().join("copied"), "c"), digest);

    // Not in the trust directory: another self-signed certificate there, or none at all.
    let other = t.path().join("other");
    common::registry::docker_recipe_cert(&other, "DNS:other.example", "other.example");
    for extra in [cert_dir(&other.join("certs")), Vec::new()] {
        let mut a = build_args(&dest("untrusted"), &cache, None);
        a.extend(extra);
        let e = nixoci(&a, &[]).fails();
        assert!(e.contains(&format!("the certificate of {} is self-signed and not trusted", reg.host())), "{e}");
        assert!(e.contains("--cert-dir DIR") && e.contains("--tls-verify=false"), "{e}");
        assert!(!e.contains("CaUsedAsEndEntity"), "{e}");
    }
    assert_eq!(reg.digest_of("selfsigned:untrusted"), None);

    // A certificate for another host name, trusted: refused for its name.
    let wrong = Registry::start(Setup::TlsCert(other.clone()));
    let mut a = build_args(&[format!("docker://{}/selfsigned:wrong", wrong.host())], &cache, None);
    a.extend(cert_dir(&other.join("certs")));
    let e = nixoci(&a, &[]).fails();
    assert!(
        e.contains(&format!("the certificate of {} is for another host name (other.example)", wrong.host())),
        "{e}"
    );
    assert!(e.contains("--tls-verify=false"), "{e}");

    // Expired (and trusted): refused as expired, its date named.
    let expired = t.path().join("expired");
    common::registry::expired_cert(&expired);
    let old = Registry::start(Setup::TlsCert(expired.clone()));
    let mut a = build_args(&[format!("docker://{}/selfsigned:expired", old.host())], &cache, None);
    a.extend(cert_dir(&expired.join("certs")));
    let e = nixoci(&a, &[]).fails();
    assert!(e.contains(&format!("the certificate of {} expired on Thu, 02 Jan 2020", old.host())), "{e}");

    // --tls-verify=false still takes anything.
    let mut a = build_args(&[format!("docker://{}/selfsigned:insecure", old.host())], &cache, None);
    a.push("--tls-verify=false".into());
    nixoci(&a, &[]).ok();
}

/// CI behind a proxy: a CONNECT proxy (test code, with basic credentials) is the only way to the
/// registry's name `registry.test` (TLS, so HTTPS through a tunnel). With `HTTPS_PROXY` set the
/// push goes through it (tunnels counted) and verifies; its password is never printed; wrong
/// proxy credentials fail clearly; with `NO_PROXY` naming the registry nothing goes through it;
/// a loopback address is never proxied.
#[test]
fn https_proxy_and_no_proxy() {
    require_tools!("docker-registry", "skopeo", "openssl");
    let t = tempdir();
    let cache = t.path().join("cache");
    let certs = t.path().join("certs");
    common::registry::docker_recipe_cert(&certs, "DNS:registry.test,IP:127.0.0.1", "registry.test");
    let reg = Registry::start(Setup::TlsCert(certs));
    let proxy = ConnectProxy::start(&["registry.test"], Some(("proxy-user", PASSWORD)));
    let with_creds = format!("http://proxy-user:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let named = format!("registry.test:{}", reg.port);
    let args = |host: &str, tag: &str| {
        let mut a = build_args(&[format!("docker://{host}/px:{tag}")], &cache, None);
        a.extend(s(&["--cert-dir", &reg.ca_dir().display().to_string(), "--retry-times", "0"]));
        a
    };

    let pushed = nixoci(&args(&named, "1"), &[("HTTPS_PROXY", &with_creds)]).ok();
    let digest = pushed["manifest_digest"].as_str().unwrap().to_owned();
    let tunnels = proxy.tunnels.lock().unwrap().clone();
    assert!(!tunnels.is_empty() && tunnels.iter().all(|t| *t == named), "{tunnels:?}");
    assert_eq!(reg.digest_of("px:1").as_deref(), Some(digest.as_str()));
    // Lowercase works too, and reading goes through it as well.
    let before = proxy.tunnel_count();
    let oci = format!("oci:{}:c", t.path().join("copied").display());
    let mut a = s(&["copy", &format!("docker://{named}/px:1"), &oci]);
    a.extend(s(&["--cert-dir", &reg.ca_dir().display().to_string()]));
    nixoci(&a, &[("https_proxy", &with_creds)]).ok();
    assert_eq!(oci_manifest_digest(&t.path().join("copied"), "c"), digest);
    assert!(proxy.tunnel_count() > before);

    // Wrong proxy credentials: refused by the proxy, said so, the password not shown.
    let wrong = format!("http://proxy-user:wrong-{PASSWORD}@127.0.0.1:{}", proxy.port);
    let refused = proxy.refused.load(std::sync::atomic::Ordering::Relaxed);
    let e = nixoci(&args(&named, "2"), &[("HTTPS_PROXY", &wrong)]).fails();
    assert!(e.contains(&named) && e.contains("the proxy refused the credentials in HTTPS_PROXY"), "{e}");
    assert!(e.contains("gave up after 1 attempts") || !e.contains("gave up"), "not retried: {e}");
    assert!(proxy.refused.load(std::sync::atomic::Ordering::Relaxed) > refused);

    // NO_PROXY names the registry: no tunnel, so the name does not even resolve.
    for no in [named.as_str(), "registry.test", ".test", "*"] {
        let before = proxy.tunnel_count();
        let e = nixoci(&args(&named, "3"), &[("HTTPS_PROXY", &with_creds), ("NO_PROXY", no)]).fails();
        assert!(e.contains(&format!("cannot reach {named}")), "NO_PROXY={no}: {e}");
        assert_eq!(proxy.tunnel_count(), before, "NO_PROXY={no}");
    }
    // Another name in NO_PROXY: proxied as before.
    nixoci(&args(&named, "4"), &[("HTTPS_PROXY", &with_creds), ("NO_PROXY", "other.test,10.0.0.0/8")]).ok();

    // Loopback is never proxied.
    let before = proxy.tunnel_count();
    nixoci(&args(&reg.host(), "5"), &[("HTTPS_PROXY", &with_creds)]).ok();
    assert_eq!(proxy.tunnel_count(), before);
    assert_eq!(reg.digest_of("px:5").as_deref(), Some(digest.as_str()));
}

/// A registry that requires a client certificate: `*.cert` + `*.key` in --cert-dir are presented
/// (and skopeo agrees on the digest); without them the handshake is refused and nothing is pushed.
#[test]
fn tls_client_certificate() {
    require_tools!("docker-registry", "skopeo", "openssl");
    let reg = Registry::start(Setup::TlsClientCert);
    let t = tempdir();
    let cache = t.path().join("cache");
    let mut a = build_args(&[format!("docker://{}/mtls:1", reg.host())], &cache, None);
    a.extend(s(&["--cert-dir", &reg.ca_dir().display().to_string()]));
    let digest = nixoci(&a, &[]).ok()["manifest_digest"].as_str().unwrap().to_owned();
    assert_eq!(reg.digest_of("mtls:1").as_deref(), Some(digest.as_str()));
    // The CA alone: trusted server, but no client certificate to show.
    let ca_only = t.path().join("ca-only");
    fs::create_dir_all(&ca_only).unwrap();
    fs::copy(reg.ca_dir().join("ca.crt"), ca_only.join("ca.crt")).unwrap();
    let mut a = build_args(&[format!("docker://{}/mtls:2", reg.host())], &cache, None);
    a.extend(s(&["--cert-dir", &ca_only.display().to_string(), "--retry-times", "0"]));
    let e = nixoci(&a, &[]).fails();
    assert!(e.contains(&reg.host()) && e.contains("wants a client certificate"), "{e}");
    assert!(e.contains("gave up after 1 attempts") || !e.contains("gave up"), "not retried: {e}");
    assert_eq!(reg.digest_of("mtls:2"), None);
}

/// Nothing listens: a clear error naming the host, quickly (retries bounded).
#[test]
fn registry_down_fails_clearly() {
    let port = free_port();
    let t = tempdir();
    let mut a = build_args(&[format!("docker://127.0.0.1:{port}/down:1")], &t.path().join("cache"), None);
    a.extend(s(&["--retry-times", "1"]));
    let started = Instant::now();
    let e = nixoci(&a, &[]).fails();
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(e.contains("gave up after 2 attempts"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// The Nix test closure (real /nix/store paths, every file type): pushed and verified; then
/// variant 2 (one leaf changed) uploads only the layers that changed; a no-change re-push
/// uploads nothing.
#[test]
fn nix_test_closure_push_and_update() {
    require_tools!("docker-registry", "skopeo");
    let Some(v1) = common::nix_closure(test_name!(), 1) else {
        return;
    };
    let Some(v2) = common::nix_closure(test_name!(), 2) else {
        return;
    };
    let reg = Registry::start(Setup::Plain);
    let t = tempdir();
    let cache = t.path().join("cache");
    let args = |c: &common::NixClosure, tag: &str| {
        let mut a = s(&["build", "--closure"]);
        a.push(c.closure_json().display().to_string());
        a.extend(s(&["--image"]));
        a.push(common::nix_image_toml(c, &t.path().join(tag)).display().to_string());
        a.extend(s(&["--cache-dir", &cache.display().to_string(), "-o"]));
        a.push(format!("docker://{}/nix:{tag}", reg.host()));
        a
    };
    fs::create_dir_all(t.path().join("v1")).unwrap();
    fs::create_dir_all(t.path().join("v2")).unwrap();
    let started = Instant::now();
    let first = nixoci(&args(v1, "v1"), &[]).ok();
    let first_secs = started.elapsed().as_secs_f64();
    let digest = first["manifest_digest"].as_str().unwrap().to_owned();
    assert_eq!(reg.digest_of("nix:v1").as_deref(), Some(digest.as_str()));
    assert_eq!(reg.copy_back("nix:v1", &t.path().join("back")), digest);

    let started = Instant::now();
    let again = nixoci(&args(v1, "v1"), &[]).ok();
    let again_secs = started.elapsed().as_secs_f64();
    assert_eq!(stat(&again, "bytes_uploaded"), 0);
    assert_eq!(stat(&again, "bytes_read"), 0);
    eprintln!(
        "Nix test closure: first push {first_secs:.2}s ({} bytes), no-change re-push {again_secs:.2}s",
        stat(&first, "bytes_uploaded")
    );

    // Variant 2: only the layers whose paths changed (and the config) go up.
    let second = nixoci(&args(v2, "v2"), &[]).ok();
    let old: std::collections::BTreeSet<&str> =
        first["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    let changed =
        second["layers"].as_array().unwrap().iter().filter(|l| !old.contains(l["digest"].as_str().unwrap())).count()
            as u64;
    assert!(changed >= 1);
    assert_eq!(stat(&second, "blobs_uploaded"), changed + 1, "{second:#}");
    let d2 = second["manifest_digest"].as_str().unwrap();
    assert_eq!(reg.digest_of("nix:v2").as_deref(), Some(d2));
}
