//! Harness of the end-to-end tests (`tests/e2e.rs`): running the built `nixoci`, the real Nix test
//! closure (`scripts/nix-test-closure`, built once per run), private podman settings, and our own
//! checks of OCI layouts and layer tars (digests, sizes, diff_ids, DESIGN.md §6 rules).
//!
//! Tools: a test that needs an external tool calls [`have_tools`] (through [`require_tools!`]). With
//! `CI` set, a missing tool is a failure; elsewhere the test prints a SKIP note and passes.
#![allow(dead_code)]

pub mod proxy;
pub mod registry;
pub mod tokens;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub const STORE_PATHS_ANNOTATION: &str = "org.nixos.nixoci.store-paths";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

// ---- where things are ----------------------------------------------------------------------------

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nixoci"))
}

/// `target/` (or `target/<triple>/`): the binary lives in `<that>/<profile>/nixoci`.
pub fn target_dir() -> PathBuf {
    bin().parent().and_then(Path::parent).expect("binary is in target/<profile>/").to_path_buf()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("nixoci-e2e.").tempdir().expect("creating a temporary directory")
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

// ---- tools -----------------------------------------------------------------------------------------

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// True when every tool is on PATH. Otherwise: panics under CI, prints a SKIP note elsewhere.
pub fn have_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| which(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    if in_ci() {
        panic!(
            "{test}: required tool(s) not found on PATH: {} (CI must install them: see LAB.md; \
             tests never skip under CI)",
            missing.join(", ")
        );
    }
    eprintln!("SKIP {test}: tool(s) not found on PATH: {} (under CI=1 this fails)", missing.join(", "));
    false
}

/// The current test function's name.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn f() {}
        let name = std::any::type_name_of_val(&f);
        name.strip_suffix("::f").unwrap_or(name)
    }};
}

/// `require_tools!("podman", "skopeo");` returns from the test (outside CI) when one is missing.
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+ $(,)?) => {
        if !common::have_tools($crate::test_name!(), &[$($tool),+]) {
            return;
        }
    };
}

/// The tools `scripts/nix-test-closure` needs.
pub const NIX_TOOLS: &[&str] = &["nix-build", "nix-store", "nix-instantiate", "nix", "gcc", "jq", "flock"];

// ---- running commands --------------------------------------------------------------------------------

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs and captures; panics only when the program cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output().unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)))
}

/// Runs; panics with both streams unless it exits 0. Returns stdout.
pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = output(cmd);
    if !out.status.success() {
        panic!(
            "`{}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}

pub fn run_ok_str(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd)).expect("UTF-8 output")
}

/// `nixoci` with an environment that does not leak into digests, and a layer cache of its own
/// (so every build really reads the store: a shared warm cache would make reproducibility
/// tests vacuous).
pub fn nixoci() -> Command {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cache = target_dir().join("test-caches").join(format!("{}-{n}", std::process::id()));
    let mut c = Command::new(bin());
    c.env("XDG_CACHE_HOME", cache).env_remove("SOURCE_DATE_EPOCH").env_remove("RUST_LOG").env("NO_COLOR", "1");
    c
}

/// What `nixoci build --json` printed.
#[derive(Debug, Clone)]
pub struct Built {
    pub json: Value,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<Value>,
    pub stderr: String,
}

impl Built {
    /// Store paths (full `/nix/store/…` form) of every layer, in layer order.
    pub fn layer_paths(&self) -> Vec<Vec<String>> {
        self.layers
            .iter()
            .map(|l| {
                l["paths"]
                    .as_array()
                    .map(|a| a.iter().map(|p| full_store_path(p.as_str().expect("path string"))).collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    pub fn all_paths(&self) -> BTreeSet<String> {
        self.layer_paths().into_iter().flatten().collect()
    }
}

/// `nixoci build ARGS --json`; panics unless it succeeds and prints the documented JSON.
pub fn build<S: AsRef<OsStr>>(args: &[S]) -> Built {
    let mut cmd = nixoci();
    cmd.arg("build").args(args).arg("--json");
    build_with(&mut cmd)
}

/// Runs a prepared `nixoci build … --json` command.
pub fn build_with(cmd: &mut Command) -> Built {
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        panic!("`{}` failed ({}):\n{stderr}", describe(cmd), out.status);
    }
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("`{}`: --json printed no JSON document ({e}):\n{}", describe(cmd), String::from_utf8_lossy(&out.stdout))
    });
    let s =
        |k: &str| json[k].as_str().unwrap_or_else(|| panic!("--json output lacks string {k:?}: {json:#}")).to_string();
    let manifest_digest = s("manifest_digest");
    let config_digest = s("config_digest");
    for d in [&manifest_digest, &config_digest] {
        assert_digest_syntax(d);
    }
    let layers = json["layers"].as_array().unwrap_or_else(|| panic!("--json lacks layers: {json:#}")).clone();
    for l in &layers {
        for k in ["digest", "diff_id", "media_type"] {
            assert!(l[k].is_string(), "--json layer lacks {k:?}: {l:#}");
        }
        assert!(l["size"].is_u64(), "--json layer lacks size: {l:#}");
        assert!(l["paths"].is_array(), "--json layer lacks paths: {l:#}");
        assert!(l.get("group").is_some(), "--json layer lacks group: {l:#}");
        assert_digest_syntax(l["digest"].as_str().unwrap());
        assert_digest_syntax(l["diff_id"].as_str().unwrap());
    }
    Built { json, manifest_digest, config_digest, layers, stderr }
}

pub fn assert_digest_syntax(d: &str) {
    let hex = d.strip_prefix("sha256:").unwrap_or_else(|| panic!("digest {d:?} is not sha256:…"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "digest {d:?} is not 64 lowercase hex digits"
    );
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// `/nix/store/x-y` from `x-y` or `/nix/store/x-y`.
pub fn full_store_path(p: &str) -> String {
    if p.starts_with("/nix/store/") { p.to_string() } else { format!("/nix/store/{p}") }
}

pub fn base_name(p: &str) -> &str {
    p.strip_prefix("/nix/store/").unwrap_or(p)
}

// ---- the Nix test closure ------------------------------------------------------------------------------

/// A closure built by `scripts/nix-test-closure` into the real /nix/store.
#[derive(Debug)]
pub struct NixClosure {
    pub dir: PathBuf,
    pub root: String,
    pub hello: String,
    pub expected_hello: String,
    /// Every store path, sorted.
    pub store_paths: Vec<String>,
}

impl NixClosure {
    pub fn closure_json(&self) -> PathBuf {
        self.dir.join("closure.json")
    }
    pub fn path_named(&self, suffix: &str) -> &str {
        self.store_paths
            .iter()
            .find(|p| p.ends_with(suffix))
            .unwrap_or_else(|| panic!("no store path ending in {suffix:?} in the test closure"))
    }
}

static NIX_CLOSURES: [OnceLock<Result<NixClosure, String>>; 2] = [OnceLock::new(), OnceLock::new()];

/// The Nix test closure (variant 1 or 2), built once per test process and cached across runs under
/// `target/nix-test-closure/vN` (the script's lock serialises concurrent test processes). Returns None
/// (after a SKIP note) outside CI when Nix or gcc is missing.
pub fn nix_closure(test: &str, variant: u8) -> Option<&'static NixClosure> {
    assert!(variant == 1 || variant == 2);
    if !have_tools(test, NIX_TOOLS) {
        return None;
    }
    let result = NIX_CLOSURES[variant as usize - 1].get_or_init(|| build_nix_closure(variant));
    match result {
        Ok(c) => Some(c),
        Err(e) => panic!("{test}: building the Nix test closure failed:\n{e}"),
    }
}

fn build_nix_closure(variant: u8) -> Result<NixClosure, String> {
    let base = target_dir().join("nix-test-closure");
    fs::create_dir_all(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    // The script locks DIR itself (flock), so concurrent test processes share one build.
    let dir = base.join(format!("v{variant}"));
    let started = std::time::Instant::now();
    let out = Command::new(repo().join("scripts/nix-test-closure"))
        .arg(&dir)
        .env("NIXOCI_TEST_VARIANT", variant.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running scripts/nix-test-closure: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/nix-test-closure {} exited with {}:\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("nix test closure v{variant} ready in {:.1} s", started.elapsed().as_secs_f64());
    let read = |f: &str| fs::read_to_string(dir.join(f)).map_err(|e| format!("reading {}: {e}", dir.join(f).display()));
    Ok(NixClosure {
        root: read("root")?.trim().to_string(),
        hello: read("hello")?.trim().to_string(),
        expected_hello: read("expected-hello-output")?,
        store_paths: read("closure-info/store-paths")?.lines().map(str::to_string).collect(),
        dir,
    })
}

/// An image spec for the Nix closure: cmd = hello, /tmp 1777, a home owned by 1000:1000, …
pub fn nix_image_toml(c: &NixClosure, dir: &Path) -> PathBuf {
    let file = dir.join("image.toml");
    let hello = &c.hello;
    let root = &c.root;
    fs::write(
        &file,
        format!(
            r#"cmd = ["{hello}/bin/hello"]
env = ["PATH={root}/bin", "GREETING=nixoci e2e"]
workdir = "/home/app"
user = "1000:1000"
labels = {{ "org.opencontainers.image.title" = "nixoci-e2e", "org.example.empty" = "" }}
exposed_ports = ["8080/tcp", "9090/udp"]

[[users]]
name = "root"
uid = 0
gid = 0
home = "/root"
shell = "/sbin/nologin"

[[users]]
name = "app"
uid = 1000
gid = 1000
home = "/home/app"
shell = "/sbin/nologin"

[[groups]]
name = "root"
gid = 0

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

[[files]]
path = "/etc/motd"
content = "built by the nixoci e2e tests\n"
mode = "0644"

[[files]]
path = "/home/app/.profile"
content = "export GREETING=hi\n"
uid = 1000
gid = 1000
mode = "0600"

[[symlinks]]
path = "/bin/hello"
target = "{hello}/bin/hello"
"#
        ),
    )
    .unwrap();
    file
}

// ---- the shipped example ------------------------------------------------------------------------------

pub fn example_dir() -> PathBuf {
    repo().join("examples/hello")
}

/// `--closure … --store-root … --image …` of examples/hello.
pub fn example_args() -> Vec<String> {
    let e = example_dir();
    vec![
        "--closure".into(),
        e.join("closure.json").display().to_string(),
        "--store-root".into(),
        e.join("store").display().to_string(),
        "--image".into(),
        e.join("image.toml").display().to_string(),
    ]
}

// ---- OCI layouts ---------------------------------------------------------------------------------------

pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One layer as found in a layout, checked against its descriptor and diff_id.
#[derive(Debug)]
pub struct Layer {
    pub descriptor: Value,
    pub media_type: String,
    pub diff_id: String,
    /// The uncompressed tar.
    pub tar: Vec<u8>,
}

impl Layer {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.descriptor["annotations"][key].as_str()
    }
}

/// An image read from an OCI layout directory with every digest, size and diff_id checked.
#[derive(Debug)]
pub struct Image {
    pub manifest_digest: String,
    pub manifest: Value,
    pub config_digest: String,
    pub config: Value,
    pub layers: Vec<Layer>,
}

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn index(&self) -> Value {
        read_json(&self.dir.join("index.json"))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap_or_else(|| panic!("bad digest {digest:?}"));
        self.dir.join("blobs").join(alg).join(hex)
    }

    /// Reads a blob and checks it against its descriptor (digest and size).
    pub fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = descriptor["digest"].as_str().unwrap_or_else(|| panic!("descriptor without digest: {descriptor}"));
        let size = descriptor["size"].as_u64().unwrap_or_else(|| panic!("descriptor without size: {descriptor}"));
        let path = self.blob_path(digest);
        let data = fs::read(&path).unwrap_or_else(|e| panic!("reading blob {}: {e}", path.display()));
        assert_eq!(sha256_digest(&data), digest, "blob {} does not hash to its digest", path.display());
        assert_eq!(data.len() as u64, size, "blob {digest}: size differs from its descriptor's");
        data
    }

    /// The manifest descriptor of `tag` (the only one when `tag` is None).
    pub fn manifest_descriptor(&self, tag: Option<&str>) -> Value {
        let index = self.index();
        assert_eq!(index["schemaVersion"], 2, "index.json schemaVersion");
        let manifests = index["manifests"].as_array().expect("index.json manifests");
        let found: Vec<&Value> = manifests
            .iter()
            .filter(|m| match tag {
                Some(t) => m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(t),
                None => true,
            })
            .collect();
        assert_eq!(found.len(), 1, "{} has {} manifests for {tag:?}: {index:#}", self.dir.display(), found.len());
        found[0].clone()
    }

    /// Reads and checks the whole image: `oci-layout`, manifest, config, every layer (blob digest,
    /// descriptor size, decompressed sha256 = config rootfs diff_id, media type).
    pub fn image(&self, tag: Option<&str>) -> Image {
        let layout = read_json(&self.dir.join("oci-layout"));
        assert_eq!(layout["imageLayoutVersion"], "1.0.0", "oci-layout of {}", self.dir.display());
        let desc = self.manifest_descriptor(tag);
        assert_eq!(desc["mediaType"], MT_MANIFEST, "index.json entry media type");
        let manifest_bytes = self.blob(&desc);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MT_MANIFEST, "manifest mediaType");
        assert_eq!(manifest["config"]["mediaType"], MT_CONFIG);
        let config_bytes = self.blob(&manifest["config"]);
        let config: Value = serde_json::from_slice(&config_bytes).expect("config JSON");
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .expect("config rootfs.diff_ids")
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect();
        let descs = manifest["layers"].as_array().expect("manifest layers");
        assert_eq!(descs.len(), diff_ids.len(), "manifest layers vs config diff_ids");
        if let Some(history) = config["history"].as_array() {
            let non_empty = history.iter().filter(|h| h["empty_layer"] != true).count();
            assert_eq!(non_empty, descs.len(), "config history entries (non-empty) vs layers");
        }
        let mut layers = Vec::new();
        for (i, d) in descs.iter().enumerate() {
            let blob = self.blob(d);
            let media_type = d["mediaType"].as_str().expect("layer mediaType").to_string();
            let tar = decompress(&media_type, &blob);
            assert_eq!(
                sha256_digest(&tar),
                diff_ids[i],
                "layer {i} ({}): sha256 of the decompressed blob is not the config's diff_id",
                d["digest"]
            );
            layers.push(Layer { descriptor: d.clone(), media_type, diff_id: diff_ids[i].clone(), tar });
        }
        Image {
            manifest_digest: desc["digest"].as_str().unwrap().to_string(),
            manifest,
            config_digest: sha256_digest(&config_bytes),
            config,
            layers,
        }
    }
}

pub fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match media_type {
        MT_LAYER_GZIP => {
            flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut out).expect("gunzip layer");
        }
        MT_LAYER_ZSTD => {
            zstd::stream::read::Decoder::new(blob).unwrap().read_to_end(&mut out).expect("unzstd layer");
        }
        MT_LAYER_TAR => out = blob.to_vec(),
        other => panic!("unexpected layer media type {other:?}"),
    }
    out
}

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Without a leading `./` or `/` and without a trailing `/`.
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Option<String>,
    pub data: Vec<u8>,
    pub pax_keys: Vec<String>,
}

pub fn tar_entries(tar_bytes: &[u8]) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut entries = Vec::new();
    for e in archive.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let raw = String::from_utf8(e.path_bytes().into_owned()).expect("UTF-8 tar path");
        let path = raw.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_string();
        let h = e.header().clone();
        let link = e.link_name_bytes().map(|l| String::from_utf8(l.into_owned()).expect("UTF-8 link"));
        let pax_keys = match e.pax_extensions() {
            Ok(Some(exts)) => exts.filter_map(|x| x.ok()).map(|x| x.key().unwrap_or("?").to_string()).collect(),
            _ => Vec::new(),
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("tar entry data");
        entries.push(TarEntry {
            path,
            kind: h.entry_type(),
            mode: h.mode().expect("tar mode"),
            uid: h.uid().expect("tar uid"),
            gid: h.gid().expect("tar gid"),
            mtime: h.mtime().expect("tar mtime"),
            link,
            data,
            pax_keys,
        });
    }
    entries
}

/// DESIGN.md §6 on one layer: sorted, parents first, no duplicates, mtime = epoch, no hardlinks or
/// special files, no xattrs, and under /nix: owner 0:0, dirs 0555 (/nix, /nix/store 0755), files
/// 0444/0555, symlinks 0777. A layer with store paths has /nix and /nix/store.
pub fn check_tar_rules(what: &str, entries: &[TarEntry], epoch: u64) {
    let mut problems = Vec::new();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut seen = BTreeSet::new();
    for p in &paths {
        if !seen.insert(*p) {
            problems.push(format!("{p}: listed twice"));
        }
        if let Some((parent, _)) = p.rsplit_once('/') {
            // The parent must come earlier (when the layer has it at all; it must for store paths).
            let has_parent = seen.contains(parent);
            if !has_parent && (parent == "nix" || parent == "nix/store" || parent.starts_with("nix/store/")) {
                problems.push(format!("{p}: its parent {parent} does not come before it"));
            }
        }
    }
    let bytewise = paths.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes());
    let by_component = paths.windows(2).all(|w| w[0].split('/').lt(w[1].split('/')));
    if !bytewise && !by_component {
        problems.push(format!("entries are not sorted: {paths:?}"));
    }
    let has_store = paths.iter().any(|p| p.starts_with("nix/store/"));
    if has_store {
        for p in ["nix", "nix/store"] {
            match entries.iter().find(|e| e.path == p) {
                Some(e) if e.kind == tar::EntryType::Directory && e.mode & 0o7777 == 0o755 => {}
                Some(e) => problems.push(format!("{p}: expected a 0755 directory, got {:?} {:o}", e.kind, e.mode)),
                None => problems.push(format!("{p}: missing from a layer with store paths")),
            }
        }
    }
    for e in entries {
        if e.mtime != epoch {
            problems.push(format!("{}: mtime {} (expected {epoch})", e.path, e.mtime));
        }
        if e.pax_keys.iter().any(|k| k.contains("xattr") || k.contains("acl")) {
            problems.push(format!("{}: has xattr/ACL records {:?}", e.path, e.pax_keys));
        }
        let in_store = e.path.starts_with("nix/store/");
        match e.kind {
            tar::EntryType::Directory | tar::EntryType::Regular | tar::EntryType::Symlink => {}
            other => {
                problems.push(format!("{}: entry type {other:?} (hardlinks and special files are not allowed)", e.path))
            }
        }
        if in_store {
            if (e.uid, e.gid) != (0, 0) {
                problems.push(format!("{}: owner {}:{} (store paths are 0:0)", e.path, e.uid, e.gid));
            }
            let mode = e.mode & 0o7777;
            let ok = match e.kind {
                tar::EntryType::Directory => mode == 0o555,
                tar::EntryType::Regular => mode == 0o444 || mode == 0o555,
                tar::EntryType::Symlink => mode == 0o777,
                _ => false,
            };
            if !ok {
                problems.push(format!("{}: {:?} with mode {mode:o}", e.path, e.kind));
            }
        }
    }
    assert!(problems.is_empty(), "{what} breaks the tar rules:\n  {}", problems.join("\n  "));
}

/// The store paths an annotation value names (a JSON array, or a list split on whitespace or commas).
pub fn parse_store_paths_annotation(value: &str) -> BTreeSet<String> {
    let v = value.trim();
    if v.starts_with('[') {
        let list: Vec<String> = serde_json::from_str(v).unwrap_or_else(|e| panic!("annotation {v:?}: {e}"));
        list.iter().map(|p| full_store_path(p)).collect()
    } else {
        v.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(full_store_path).collect()
    }
}

/// The top-level store paths (`/nix/store/<base>`) a layer tar holds.
pub fn store_paths_in_tar(entries: &[TarEntry]) -> BTreeSet<String> {
    entries
        .iter()
        .filter_map(|e| e.path.strip_prefix("nix/store/"))
        .map(|rest| format!("/nix/store/{}", rest.split('/').next().unwrap()))
        .collect()
}

/// Checks that every layer holding store paths is annotated with exactly those paths, that the
/// layers agree with `--json`, and that together they hold `expected` once each.
pub fn check_store_layers(image: &Image, built: &Built, expected: &BTreeSet<String>) {
    assert_eq!(image.manifest_digest, built.manifest_digest, "--json manifest_digest vs the layout");
    assert_eq!(image.config_digest, built.config_digest, "--json config_digest vs the layout");
    assert_eq!(image.layers.len(), built.layers.len(), "--json layer count vs the manifest");
    let json_paths = built.layer_paths();
    let mut all = BTreeSet::new();
    for (i, (layer, j)) in image.layers.iter().zip(&built.layers).enumerate() {
        assert_eq!(layer.descriptor["digest"], j["digest"], "layer {i}: --json digest");
        assert_eq!(layer.descriptor["size"], j["size"], "layer {i}: --json size");
        assert_eq!(layer.diff_id, j["diff_id"].as_str().unwrap(), "layer {i}: --json diff_id");
        assert_eq!(layer.media_type, j["media_type"].as_str().unwrap(), "layer {i}: --json media_type");
        let entries = tar_entries(&layer.tar);
        let in_tar = store_paths_in_tar(&entries);
        let listed: BTreeSet<String> = json_paths[i].iter().cloned().collect();
        if in_tar.is_empty() {
            assert!(listed.is_empty(), "layer {i} holds no store path but --json lists {listed:?}");
            continue;
        }
        // A slice of one huge path may repeat a path across layers; ours are small, so no slices.
        assert_eq!(in_tar, listed, "layer {i}: store paths in the tar vs --json paths");
        let annotation = layer.annotation(STORE_PATHS_ANNOTATION).unwrap_or_else(|| {
            panic!("layer {i} holds store paths but has no {STORE_PATHS_ANNOTATION} annotation: {:#}", layer.descriptor)
        });
        assert_eq!(
            parse_store_paths_annotation(annotation),
            listed,
            "layer {i}: {STORE_PATHS_ANNOTATION} annotation {annotation:?}"
        );
        for p in listed {
            assert!(all.insert(p.clone()), "store path {p} is in two layers");
        }
    }
    assert_eq!(&all, expected, "store paths of the image vs the closure");
}

// ---- podman ------------------------------------------------------------------------------------------

/// A private podman (LAB.md): its own storage (vfs) and run root under /tmp, runc, cgroupfs, no
/// network, low ulimits. Removed on drop.
pub struct Podman {
    pub dir: tempfile::TempDir,
}

impl Podman {
    pub fn new() -> Self {
        // runroot must be < 50 characters: keep it short, directly under /tmp.
        let dir = tempfile::Builder::new().prefix("nxp").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        fs::write(
            d.join("containers.conf"),
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             netns = \"none\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             runtime = \"runc\"\n",
        )
        .unwrap();
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}/root\"\nrunroot = \"{}/run\"\n",
                d.display(),
                d.display()
            ),
        )
        .unwrap();
        assert!(d.join("run").display().to_string().len() < 50);
        Self { dir }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.path().join("storage.conf"))
            .env("TMPDIR", self.dir.path());
        c
    }

    /// `podman load -i FILE`; returns what it printed.
    pub fn load(&self, file: &Path) -> String {
        run_ok_str(self.cmd().arg("load").arg("-i").arg(file))
    }

    /// `podman run --rm --pull never IMAGE ARGS…`; returns stdout.
    pub fn run(&self, image: &str, args: &[&str]) -> String {
        run_ok_str(self.cmd().args(["run", "--rm", "--pull", "never", image]).args(args))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Nothing keeps running (`run --rm` is synchronous); vfs leaves no mounts. Best effort only.
        let _ = self.cmd().args(["rm", "-a", "-f"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

// ---- directories ---------------------------------------------------------------------------------------

/// A recursive listing: relative path → type, mode, size and content hash (or link target).
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(rel, format!("l -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.insert(rel, format!("d {mode:o}"));
                walk(base, &p, out);
            } else if m.is_file() {
                out.insert(rel, format!("f {mode:o} {} {}", m.len(), sha256_hex(&fs::read(&p).unwrap())));
            } else {
                out.insert(rel, format!("? {:?}", m.file_type()));
            }
        }
    }
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// `cp -a` (or `cp -r`, which breaks hardlinks) of store paths from `from` into `to`.
pub fn copy_store_paths(paths: &[String], from: &Path, to: &Path, preserve: bool) {
    fs::create_dir_all(to).unwrap();
    for p in paths {
        let base = base_name(p);
        let mut cmd = Command::new("cp");
        cmd.arg(if preserve { "-a" } else { "-r" }).arg(from.join(base)).arg(to.join(base));
        run_ok(&mut cmd);
    }
}

/// Walks a tree without following symlinks: (path, metadata) of every entry below `dir`, and `dir`.
pub fn walk(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let m = fs::symlink_metadata(dir).unwrap();
    let is_dir = m.is_dir();
    out.push((dir.to_path_buf(), m));
    if is_dir {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            out.extend(walk(&p));
        }
    }
    out
}

/// Hardlinks together regular files of equal content and mode (what `nix-store --optimise` does).
/// Returns how many links it made.
pub fn hardlink_duplicates(dir: &Path) -> usize {
    let mut first: BTreeMap<(String, u32), PathBuf> = BTreeMap::new();
    let mut linked = 0;
    for (p, m) in walk(dir) {
        if !m.is_file() {
            continue;
        }
        let key = (sha256_hex(&fs::read(&p).unwrap()), m.permissions().mode() & 0o7777);
        match first.get(&key) {
            Some(orig) => {
                if fs::metadata(orig).unwrap().ino() != m.ino() {
                    fs::remove_file(&p).unwrap();
                    fs::hard_link(orig, &p).unwrap();
                    linked += 1;
                }
            }
            None => {
                first.insert(key, p);
            }
        }
    }
    linked
}

/// Compares a store path on disk with its copy in an unpacked rootfs: same tree, same file content,
/// same symlink targets, files 0444/0555 by their x bit, and no hardlinks (every file nlink 1).
pub fn compare_store_path(src: &Path, dst: &Path, problems: &mut Vec<String>) {
    let sm = fs::symlink_metadata(src).unwrap();
    let dm = match fs::symlink_metadata(dst) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("{}: missing from the rootfs ({e})", dst.display()));
            return;
        }
    };
    if sm.file_type().is_symlink() {
        if !dm.file_type().is_symlink() {
            problems.push(format!("{}: not a symlink", dst.display()));
        } else if fs::read_link(src).unwrap() != fs::read_link(dst).unwrap() {
            problems.push(format!(
                "{}: symlink target {:?} != {:?}",
                dst.display(),
                fs::read_link(dst).unwrap(),
                fs::read_link(src).unwrap()
            ));
        }
    } else if sm.is_file() {
        if !dm.is_file() {
            problems.push(format!("{}: not a regular file", dst.display()));
            return;
        }
        if fs::read(src).unwrap() != fs::read(dst).unwrap() {
            problems.push(format!("{}: content differs", dst.display()));
        }
        let want = if sm.permissions().mode() & 0o100 != 0 { 0o555 } else { 0o444 };
        let got = dm.permissions().mode() & 0o7777;
        if got != want {
            problems.push(format!("{}: mode {got:o}, expected {want:o}", dst.display()));
        }
        if dm.nlink() != 1 {
            problems.push(format!(
                "{}: has {} links (hardlinks must become separate files)",
                dst.display(),
                dm.nlink()
            ));
        }
    } else if sm.is_dir() {
        if !dm.is_dir() {
            problems.push(format!("{}: not a directory", dst.display()));
            return;
        }
        let names = |d: &Path| -> BTreeSet<std::ffi::OsString> {
            fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect()
        };
        let (a, b) = (names(src), names(dst));
        if a != b {
            problems.push(format!("{}: entries differ: on disk {a:?}, in the rootfs {b:?}", dst.display()));
        }
        for n in a.intersection(&b) {
            compare_store_path(&src.join(n), &dst.join(n), problems);
        }
    } else if sm.file_type().is_fifo() {
        problems.push(format!("{}: source is a fifo", src.display()));
    }
}
