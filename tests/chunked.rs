//! zstd:chunked layers (issue 13) with the real tools: the Nix test closure built with
//! `--compression zstd:chunked`, checked by our own layout reader (digests, diff_ids equal to
//! plain zstd's), `skopeo copy`, `podman load` + `run`, and — converted to gzip by skopeo, which
//! decodes our stream with Go's zstd reader, since Debian's umoci 0.4.7 and oci-image-tool refuse
//! every `tar+zstd` layer — `oci-image-tool validate` and `umoci unpack` with a rootfs equal to
//! the store; and the real partial pull: podman 4.3
//! with the overlay driver and `enable_partial_images`, release 2 (one leaf bumped:
//! `NIXOCI_TEST_VARIANT=2`) pulled from a loopback `docker-registry` after release 1, the bytes
//! fetched counted from the registry's access log.
//!
//! Tools: nix (the test closure), skopeo, podman, runc, umoci, oci-image-tool, docker-registry. Under CI a missing tool
//! fails the test.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const CHUNKED_KEYS: [&str; 5] = [
    "io.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-position",
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.github.containers.zstd-chunked.manifest-position",
    "io.github.containers.zstd-chunked.tarsplit-position",
];

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn nix_args(c: &NixClosure, spec: &Path) -> Vec<String> {
    vec!["--closure".into(), c.closure_json().display().to_string(), "--image".into(), spec.display().to_string()]
}

/// The TOC of a chunked layer blob, found through its descriptor's (new) annotations.
fn toc(descriptor: &Value, blob: &[u8]) -> Value {
    let pos = descriptor["annotations"]["io.github.containers.zstd-chunked.manifest-position"].as_str().unwrap();
    let v: Vec<usize> = pos.split(':').map(|n| n.parse().unwrap()).collect();
    assert_eq!(v[3], 1, "manifest type");
    let z = &blob[v[0]..v[0] + v[1]];
    assert_eq!(
        sha256_digest(z),
        descriptor["annotations"]["io.github.containers.zstd-chunked.manifest-checksum"].as_str().unwrap()
    );
    let json = zstd::decode_all(z).unwrap();
    assert_eq!(json.len(), v[2]);
    serde_json::from_slice(&json).unwrap()
}

#[test]
fn chunked_layers_are_valid_reproducible_and_run_in_podman() {
    require_tools!("skopeo", "podman", "runc", "umoci", "oci-image-tool");
    let Some(c) = nix_closure(test_name!(), 1) else { return };
    let tmp = tempdir();
    let d = tmp.path();
    let spec = nix_image_toml(c, d);
    let cache = d.join("cache");
    let out = d.join("out");
    let run = |args: &[&str]| {
        let mut cmd = nixoci();
        cmd.arg("build").args(nix_args(c, &spec)).args(args).arg("--json");
        build_with(&mut cmd)
    };
    // Plain zstd first into the same cache: the chunked build must not take its entries.
    let plain = run(&["--compression", "zstd", "--cache-dir", cache.to_str().unwrap(), "-o", &oci(&out, "zstd")]);
    // A docker-archive beside it: the same config (its tars carry the root entry too).
    let docker = d.join("docker.tar");
    let docker_out = format!("docker-archive:{}:localhost/chunked-docker:1", docker.display());
    let cache_arg = cache.to_str().unwrap();
    let chunked =
        run(&["--compression", "zstd:chunked", "--cache-dir", cache_arg, "-o", &oci(&out, "c"), "-o", &docker_out]);
    let again = run(&["--compression", "zstd:chunked", "--cache-dir", cache_arg, "-o", &oci(&d.join("again"), "c")]);
    assert_eq!(again.manifest_digest, chunked.manifest_digest, "a rebuild from the cache (annotations included)");
    let jobs1 = run(&["--compression", "zstd:chunked", "--no-cache", "--jobs", "1", "-o", &oci(&d.join("j1"), "c")]);
    let jobs4 = run(&["--compression", "zstd:chunked", "--no-cache", "--jobs", "4", "-o", &oci(&d.join("j4"), "c")]);
    assert_eq!(chunked.manifest_digest, jobs1.manifest_digest, "cached vs fresh");
    assert_eq!(jobs1.manifest_digest, jobs4.manifest_digest, "--jobs 1 vs 4");
    assert_ne!(plain.manifest_digest, chunked.manifest_digest);

    let layout = Layout::new(&out);
    let a = layout.image(Some("zstd"));
    let b = layout.image(Some("c"));
    assert_eq!(a.layers.len(), b.layers.len());
    for (l, p) in b.layers.iter().zip(&a.layers) {
        // The tar is plain zstd's after one leading entry for the layer's root.
        assert_eq!(l.tar[512..], p.tar[..], "layer {}", l.descriptor["digest"]);
        let root = tar_entries(&l.tar[..512].iter().copied().chain([0u8; 1024]).collect::<Vec<_>>());
        assert_eq!((root.len(), root[0].path.trim_start_matches("./"), root[0].mode), (1, "", 0o755));
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
        for k in CHUNKED_KEYS {
            assert!(l.annotation(k).is_some(), "layer {} lacks {k}", l.descriptor["digest"]);
        }
        assert!(p.annotation(CHUNKED_KEYS[0]).is_none(), "plain zstd layers carry no TOC annotation");
        // Every regular file's frames decompress alone to content with the TOC's digest.
        let blob = layout.blob(&l.descriptor);
        let toc = toc(&l.descriptor, &blob);
        for e in toc["entries"].as_array().unwrap() {
            if e["type"] == "reg" && e["digest"].is_string() {
                let (o, end) = (e["offset"].as_u64().unwrap() as usize, e["endOffset"].as_u64().unwrap() as usize);
                let content = zstd::decode_all(&blob[o..end]).unwrap();
                assert_eq!(sha256_digest(&content), e["digest"].as_str().unwrap(), "{}", e["name"]);
                assert_eq!(content.len() as u64, e["size"].as_u64().unwrap());
            }
        }
    }

    // inspect says which layers are chunked and what their TOCs hold.
    let text = run_ok_str(nixoci().args(["inspect", &oci(&out, "c")]));
    assert_eq!(text.matches("tar+zstd:chunked").count(), b.layers.len(), "{text}");
    let json: Value = serde_json::from_slice(&run_ok(nixoci().args(["inspect", "--json", &oci(&out, "c")]))).unwrap();
    let files: u64 = json["layers"].as_array().unwrap().iter().map(|l| l["chunked"]["files"].as_u64().unwrap()).sum();
    assert!(files > 10, "TOC summaries count the closure's files: {json:#}");
    let plain_json: Value =
        serde_json::from_slice(&run_ok(nixoci().args(["inspect", "--json", &oci(&out, "zstd")]))).unwrap();
    assert!(plain_json["layers"][0].get("chunked").is_none());

    // skopeo copies it (verifying every digest); podman loads and runs it.
    let archive = d.join("c.tar");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &oci(&out, "c"),
        &format!("oci-archive:{}:localhost/chunked:1", archive.display()),
    ]));
    let podman = Podman::new();
    podman.load(&archive);
    assert_eq!(podman.run("localhost/chunked:1", &[]), c.expected_hello);
    podman.load(&docker);
    assert_eq!(podman.run("localhost/chunked-docker:1", &[]), c.expected_hello);

    // Debian's umoci and oci-image-tool refuse any tar+zstd media type (plain zstd too), so skopeo
    // recompresses to gzip: it reads every layer as one zstd stream (TOC and footer frames
    // included) and checks its digest; then both tools take the result, and the unpacked rootfs
    // is the store, file by file.
    let gz = d.join("gzip");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-compress-format", "gzip"])
            .arg(oci(&out, "c"))
            .arg(oci(&gz, "c")),
    );
    let converted = Layout::new(&gz).image(Some("c"));
    assert_eq!(converted.layers.len(), b.layers.len());
    assert!(converted.layers.iter().all(|l| l.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"));
    run_ok(Command::new("oci-image-tool").args(["validate", "--type", "image"]).arg(&gz));
    let bundle = d.join("bundle");
    run_ok(
        Command::new("umoci").args(["unpack", "--rootless", "--image"]).arg(format!("{}:c", gz.display())).arg(&bundle),
    );
    let mut problems = Vec::new();
    for p in &c.store_paths {
        compare_store_path(Path::new(p), &bundle.join("rootfs").join(p.trim_start_matches('/')), &mut problems);
    }
    assert!(problems.is_empty(), "umoci's rootfs differs from the store:\n  {}", problems.join("\n  "));
}

// ---- the partial pull ------------------------------------------------------------------------------

/// A `docker-registry` on 127.0.0.1 with its access log on; killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        let dir = tempdir();
        let d = dir.path();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            fs::write(
                d.join("config.yml"),
                format!(
                    "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\n\
                     storage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n  \
                     maintenance: {{uploadpurging: {{enabled: false}}}}\n\
                     http: {{addr: 127.0.0.1:{port}, secret: test-only-secret}}\n",
                    d.join("data").display()
                ),
            )
            .unwrap();
            let log = d.join("registry.log");
            let f = fs::File::create(&log).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(d.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .expect("starting docker-registry");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self { child, port, log, _dir: dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start docker-registry");
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Access-log lines so far.
    fn access_log(&self) -> Vec<String> {
        fs::read_to_string(&self.log).unwrap().lines().filter(|l| l.contains("\" 20")).map(str::to_owned).collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes sent for each blob GET in access-log `lines` (the 10th field), by digest.
fn blob_bytes(lines: &[String]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 9
            && f[5] == "\"GET"
            && let Some((_, digest)) = f[6].split_once("/blobs/")
        {
            *out.entry(digest.to_owned()).or_insert(0) += f[9].parse::<u64>().unwrap_or(0);
        }
    }
    out
}

/// A private podman on the overlay driver, partial pulls on (LAB.md), or vfs with them off.
struct Storage {
    dir: tempfile::TempDir,
}

impl Storage {
    fn new(partial: bool) -> Self {
        let dir = tempfile::Builder::new().prefix("nxc").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        fs::write(
            d.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\nnetns = \"none\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n",
        )
        .unwrap();
        let storage = if partial {
            "driver = \"overlay\"\n[storage.options]\npull_options = {enable_partial_images = \"true\", \
             use_hard_links = \"false\", ostree_repos = \"\"}\n"
        } else {
            "driver = \"vfs\"\n"
        };
        let root = format!("graphroot = \"{}/root\"\nrunroot = \"{}/run\"\n", d.display(), d.display());
        fs::write(d.join("storage.conf"), format!("[storage]\n{root}{storage}")).unwrap();
        Self { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.path().join("storage.conf"))
            .env("TMPDIR", self.dir.path());
        c
    }

    /// `podman pull` with debug logging; returns its output.
    fn pull(&self, image: &str) -> String {
        let out = output(self.cmd().args(["--log-level=debug", "pull", "--tls-verify=false", image]));
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "podman pull {image} failed:\n{text}");
        text
    }

    /// The image's root filesystem (`podman image mount`): `nix/` as path → type, mode, hash.
    fn rootfs(&self, image: &str) -> BTreeMap<String, String> {
        let dir = run_ok_str(self.cmd().args(["image", "mount", image]));
        let snap = snapshot(&Path::new(dir.trim()).join("nix"));
        run_ok(self.cmd().args(["image", "unmount", image]));
        snap
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // overlay leaves mounts: unmount and reset before the directory goes.
        let quiet = |args: &[&str]| {
            let _ = self.cmd().args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(&["rm", "-a", "-f"]);
        quiet(&["image", "unmount", "-a", "-f"]);
        quiet(&["system", "reset", "-f"]);
    }
}

/// Every regular file (content digest, size, compressed size, layer digest, name) and every chunk
/// (digest, compressed size) across the TOCs of an image in the registry.
type Contents = (Value, Vec<(String, u64, u64, String, String)>, Vec<(String, u64)>);

fn toc_files(reg: &Registry, tag: &str) -> Contents {
    let get = |path: &str, accept: &str| -> Vec<u8> {
        run_ok(Command::new("curl").args([
            "-sf",
            "-H",
            &format!("Accept: {accept}"),
            &format!("http://{}{path}", reg.host()),
        ]))
    };
    let manifest: Value =
        serde_json::from_slice(&get(&format!("/v2/nx/manifests/{tag}"), "application/vnd.oci.image.manifest.v1+json"))
            .unwrap();
    let (mut files, mut chunks) = (Vec::new(), Vec::new());
    for l in manifest["layers"].as_array().unwrap() {
        let blob = get(&format!("/v2/nx/blobs/{}", l["digest"].as_str().unwrap()), "*/*");
        let toc = toc(l, &blob);
        let entries = toc["entries"].as_array().unwrap();
        let mut file_end = 0;
        for (i, e) in entries.iter().enumerate() {
            let offset = e["offset"].as_u64().unwrap_or(0);
            if e["type"] == "reg" && e["digest"].is_string() {
                file_end = e["endOffset"].as_u64().unwrap();
                files.push((
                    e["digest"].as_str().unwrap().to_owned(),
                    e["size"].as_u64().unwrap(),
                    file_end - offset,
                    l["digest"].as_str().unwrap().to_owned(),
                    e["name"].as_str().unwrap().to_owned(),
                ));
            }
            if (e["type"] == "reg" && e["digest"].is_string()) || e["type"] == "chunk" {
                // A chunk ends where the next chunk of its file starts, else where the file ends.
                let end = match entries.get(i + 1) {
                    Some(n) if n["type"] == "chunk" => n["offset"].as_u64().unwrap(),
                    _ => file_end,
                };
                let digest = e["chunkDigest"].as_str().or(e["digest"].as_str()).unwrap().to_owned();
                chunks.push((digest, end - offset));
            }
        }
    }
    (manifest, files, chunks)
}

#[test]
fn podman_partial_pull_fetches_only_changed_files() {
    require_tools!("docker-registry", "podman", "runc", "curl");
    let Some(c1) = nix_closure(test_name!(), 1) else { return };
    let Some(c2) = nix_closure(test_name!(), 2) else { return };
    let tmp = tempdir();
    let reg = Registry::start();
    for (v, c) in [(1, c1), (2, c2)] {
        let dir = tmp.path().join(format!("v{v}"));
        fs::create_dir_all(&dir).unwrap();
        let spec = nix_image_toml(c, &dir);
        let mut cmd = nixoci();
        cmd.arg("build").args(nix_args(c, &spec)).args([
            "--compression",
            "zstd:chunked",
            "--no-cache",
            "--tls-verify=false",
            "-o",
            &format!("docker://{}/nx:{v}", reg.host()),
            "--json",
        ]);
        build_with(&mut cmd);
    }
    let (m1, files1, chunks1) = toc_files(&reg, "1");
    let (m2, files2, chunks2) = toc_files(&reg, "2");
    let old_chunks: HashSet<&str> = chunks1.iter().map(|c| c.0.as_str()).collect();
    let mut seen = HashSet::new();
    let changed_chunks: u64 =
        chunks2.iter().filter(|c| !old_chunks.contains(c.0.as_str()) && seen.insert(c.0.as_str())).map(|c| c.1).sum();
    let old: HashSet<&str> = files1.iter().map(|f| f.0.as_str()).collect();
    let mut seen = HashSet::new();
    let changed: Vec<_> = files2.iter().filter(|f| !old.contains(f.0.as_str()) && seen.insert(f.0.as_str())).collect();
    let changed_bytes: u64 = changed.iter().map(|f| f.1).sum();
    let changed_compressed: u64 = changed.iter().map(|f| f.2).sum();
    let old_layers: HashSet<&str> =
        m1["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    let new_layers: BTreeMap<&str, u64> = m2["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| !old_layers.contains(l["digest"].as_str().unwrap()))
        .map(|l| (l["digest"].as_str().unwrap(), l["size"].as_u64().unwrap()))
        .collect();
    let whole: u64 = new_layers.values().sum();
    assert!(!new_layers.is_empty() && !changed.is_empty(), "release 2 changes layers and files");

    // nixoci diff's estimate, before any pull: it reads only the TOCs (range requests).
    let before_diff = reg.access_log().len();
    let diff: Value = serde_json::from_slice(&run_ok(nixoci().args([
        "diff",
        "--tls-verify=false",
        "--json",
        &format!("docker://{}/nx:1", reg.host()),
        &format!("docker://{}/nx:2", reg.host()),
    ])))
    .unwrap();
    let whole_gets: Vec<_> = reg.access_log()[before_diff..]
        .iter()
        .filter(|l| {
            l.contains("/blobs/") && l.contains("\" 200 ") && !l.contains(m2["config"]["digest"].as_str().unwrap())
        })
        .filter(|l| !l.contains(m1["config"]["digest"].as_str().unwrap()))
        .cloned()
        .collect();
    assert!(whole_gets.is_empty(), "diff fetched whole layer blobs: {whole_gets:#?}");
    let estimate = diff["partial_pull"]["by_chunks_bytes"].as_u64().unwrap();
    assert_eq!(diff["partial_pull"]["chunked_layers"].as_u64().unwrap(), new_layers.len() as u64);
    assert_eq!(diff["download_bytes"].as_u64().unwrap(), whole);

    let partial = Storage::new(true);
    partial.pull(&format!("{}/nx:1", reg.host()));
    let before = reg.access_log().len();
    let log = partial.pull(&format!("{}/nx:2", reg.host()));
    let partial_pulls = log.matches("Retrieved partial blob").count();
    assert!(partial_pulls > 0, "podman did no partial pull:\n{log}");
    let fetched = blob_bytes(&reg.access_log()[before..]);
    let layer_bytes: u64 = fetched.iter().filter(|(d, _)| new_layers.contains_key(d.as_str())).map(|(_, n)| n).sum();
    eprintln!(
        "release 2 after 1: {} new layers, {whole} bytes whole; {partial_pulls} partial pulls fetched \
         {layer_bytes} bytes of them; {} changed files, {changed_bytes} bytes ({changed_compressed} \
         compressed; new chunks {changed_chunks} compressed); nixoci diff estimated {estimate}",
        new_layers.len(),
        changed.len()
    );
    assert!(layer_bytes < whole, "a partial pull fetches less than the whole layers ({layer_bytes} vs {whole})");
    // podman 4.3 takes unchanged chunks of a changed file from local storage too (the chunks
    // of `hello`, whose only change is the data path it embeds): the new chunks are the floor.
    assert!(layer_bytes >= changed_chunks, "every new chunk must be fetched ({layer_bytes} < {changed_chunks})");
    assert!(
        estimate.abs_diff(layer_bytes) * 10 <= layer_bytes,
        "nixoci diff's estimate {estimate} is within 10 % of what podman fetched ({layer_bytes})"
    );
    // A re-hashed large file (the links' share/big-with-reference.txt: 2 MB that embed the data
    // leaf's path once) costs its reference region, not the file: its other chunks are local.
    let big = files2.iter().find(|f| f.4.ends_with("/share/big-with-reference.txt")).expect("the big file");
    assert!(!old.contains(big.0.as_str()), "variant 2 changes the big file (the path it embeds)");
    let big_layer = fetched.get(&big.3).copied().unwrap_or(0);
    assert!(big_layer * 4 < big.2, "its layer cost {big_layer} bytes where the file alone is {} compressed", big.2);

    // It runs, and its root filesystem is the one a whole-layer pull gives.
    let image = format!("{}/nx:2", reg.host());
    let out = run_ok_str(partial.cmd().args(["run", "--rm", "--pull", "never", &image]));
    assert_eq!(out, c2.expected_hello);
    let whole_pull = Storage::new(false);
    whole_pull.pull(&image);
    let (a, b) = (partial.rootfs(&image), whole_pull.rootfs(&image));
    assert!(a.len() > 20, "the rootfs holds the closure: {a:?}");
    if a != b {
        let diff: Vec<_> = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).take(10).collect();
        panic!("the partially pulled rootfs differs from the whole-layer pull: {diff:?}");
    }
}
