//! Smoke tests (`nixoci smoke`): run each check of a checks file as a command in a container of
//! the image, with podman or docker, on the GPU when the check asks for it.
//!
//! ```toml
//! [[check]]
//! name = "torch sees the GPU"
//! command = ["python3", "-c", "import torch; print(torch.cuda.is_available())"]
//! expect_stdout = "True"      # optional: a substring of stdout
//! timeout = "60s"             # optional, default 60s: the container is removed when it runs out
//! gpu = true                  # optional, default false
//! env = ["CUDA_VISIBLE_DEVICES=0"]   # optional
//! ```
//!
//! Steps: open the image through its transport (which verifies it and gives its config digest,
//! the image ID runtimes use); make sure the runtime has it (`podman image exists`, else `podman
//! load -i` for archives or `podman pull oci:DIR:TAG` for layout dirs; docker likewise with `docker
//! load`); decide whether GPU checks can run (device nodes, and for podman a CDI spec); then run
//! each check: `create --rm --pull never --entrypoint CMD IMAGE ARGS…` (not timed: a large image
//! takes a while to set up), then `start --attach`, bounded by the check's timeout, capturing its
//! output; judge it: exit status 0 and `expect_stdout` found. A check that outruns its timeout has
//! its container removed (`podman rm -f -t 0` / `docker rm -f`). Results render as a table, as JSON
//! and as JUnit XML.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::progress::Reporter;
use crate::transport::ImageRef;
use crate::transport::source::SourceImage;

/// Output kept per stream and check (the end of it).
const OUTPUT_LIMIT: usize = 64 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where podman looks for CDI specs (`nvidia-ctk cdi generate` writes them).
pub const CDI_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];
/// How to make the CDI spec podman needs for `--device nvidia.com/gpu=all`.
pub const CDI_HOWTO: &str = "generate it with `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` \
(NVIDIA Container Toolkit), then check `nvidia-ctk cdi list` shows nvidia.com/gpu=all";

/// A duration written as `"30s"`, `"2m"`, `"1m30s"`, `"500ms"`, `"1h"`, or an integer of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DurationRepr")]
pub struct Timeout(pub Duration);

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Int(u64),
    Str(String),
}

impl TryFrom<DurationRepr> for Timeout {
    type Error = String;
    fn try_from(r: DurationRepr) -> Result<Self, String> {
        match r {
            DurationRepr::Int(n) => Ok(Timeout(Duration::from_secs(n))),
            DurationRepr::Str(s) => s.parse(),
        }
    }
}

impl std::str::FromStr for Timeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("duration {s:?} is not like \"30s\", \"2m\", \"1m30s\" or \"500ms\"");
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let n_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            let u_end = rest[n_end..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| n_end + i);
            let n: u64 = rest[..n_end].parse().map_err(|_| bad())?;
            let d = match &rest[n_end..u_end] {
                "ms" => Duration::from_millis(n),
                "s" | "" => Duration::from_secs(n),
                "m" | "min" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                _ => return Err(bad()),
            };
            total += d;
            rest = &rest[u_end..];
        }
        if total.is_zero() {
            return Err(format!("duration {s:?} is zero"));
        }
        Ok(Timeout(total))
    }
}

/// One check of a checks file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    /// The program and its arguments, run as the container's entrypoint.
    pub command: Vec<String>,
    /// A substring stdout must contain.
    pub expect_stdout: Option<String>,
    #[serde(default)]
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub gpu: bool,
    /// `KEY=VALUE` strings added to the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
}

impl Check {
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0)
    }
}

/// A checks file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    #[serde(default)]
    pub check: Vec<Check>,
}

impl Checks {
    /// Reads a checks file, TOML or JSON (see [`crate::config_format`]).
    pub fn load(file: &Path) -> Result<Self> {
        let (text, format) = crate::config_format::read(file, "checks file")?;
        Self::parse_as(&text, format).with_context(|| format!("in checks file {}", file.display()))
    }

    /// Parses checks TOML.
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_as(text, crate::config_format::Format::Toml)
    }

    fn parse_as(text: &str, format: crate::config_format::Format) -> Result<Self> {
        let checks: Checks = format.parse(text)?;
        if checks.check.is_empty() {
            bail!("no [[check]] in it");
        }
        let mut names = BTreeSet::new();
        for c in &checks.check {
            if c.name.trim().is_empty() {
                bail!("a check has an empty name");
            }
            if !names.insert(c.name.as_str()) {
                bail!("two checks are named {:?}", c.name);
            }
            if c.command.first().is_none_or(|p| p.is_empty()) {
                bail!("check {:?}: command is empty", c.name);
            }
            if let Some(e) = c.env.iter().find(|e| !e.contains('=')) {
                bail!("check {:?}: env entry {e:?} must be KEY=VALUE", c.name);
            }
        }
        Ok(checks)
    }
}

/// The container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Podman,
    Docker,
}

impl Runtime {
    pub fn program(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
        }
    }

    /// Arguments to remove a container now, killing it.
    fn force_remove(self, name: &str) -> Vec<String> {
        match self {
            Runtime::Podman => vec!["rm".into(), "-f".into(), "-t".into(), "0".into(), name.into()],
            Runtime::Docker => vec!["rm".into(), "-f".into(), name.into()],
        }
    }
}

/// What to do with checks marked `gpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuMode {
    /// Run them when a GPU can be reached, report them skipped otherwise.
    #[default]
    Auto,
    /// Run them; fail before running anything if no GPU can be reached (`--gpu`).
    Require,
    /// Skip them (`--cpu`).
    Off,
}

#[derive(Debug, Clone)]
pub struct SmokeOptions {
    pub runtime: Runtime,
    pub gpu: GpuMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    TimedOut,
    Skipped,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Passed => "PASS",
            Status::Failed => "FAIL",
            Status::TimedOut => "TIMEOUT",
            Status::Skipped => "SKIP",
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Status::Failed | Status::TimedOut)
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub status: Status,
    pub gpu: bool,
    pub command: Vec<String>,
    pub seconds: f64,
    pub exit_code: Option<i32>,
    /// Why it failed or was skipped; empty when it passed.
    pub message: String,
    pub stdout: String,
    pub stderr: String,
}

/// Whether GPU checks can run here, and how.
#[derive(Debug, Clone, Serialize)]
pub struct GpuAccess {
    pub available: bool,
    pub detail: String,
    #[serde(skip)]
    run_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SmokeReport {
    pub image: String,
    pub runtime: Runtime,
    /// What the checks ran (the image ID, or the name the runtime loaded it as).
    pub image_id: String,
    pub gpu: Option<GpuAccess>,
    pub passed: bool,
    pub seconds: f64,
    pub checks: Vec<CheckResult>,
}

/// Runs `checks` in containers of `image`.
pub fn run(image: &ImageRef, checks: &Checks, opts: &SmokeOptions, reporter: &dyn Reporter) -> Result<SmokeReport> {
    let started = Instant::now();
    let rt = opts.runtime;
    probe_runtime(rt)?;
    let gpu = if opts.gpu != GpuMode::Off && checks.check.iter().any(|c| c.gpu) {
        let access = detect_gpu(rt);
        if opts.gpu == GpuMode::Require && !access.available {
            bail!("--gpu: no GPU can be reached: {}", access.detail);
        }
        if !access.available {
            reporter.note(&format!("GPU checks will be skipped: {}", access.detail));
        }
        Some(access)
    } else {
        None
    };
    let src = SourceImage::open(image)?;
    let image_id = ensure_loaded(rt, image, &src, reporter)?;
    let mut results = Vec::with_capacity(checks.check.len());
    for (i, check) in checks.check.iter().enumerate() {
        let skip = match (&gpu, check.gpu, opts.gpu) {
            (_, false, _) => None,
            (_, true, GpuMode::Off) => Some("a GPU check, skipped by --cpu".to_owned()),
            (Some(a), true, _) if !a.available => Some(format!("a GPU check, and no GPU can be reached: {}", a.detail)),
            _ => None,
        };
        let result = match skip {
            Some(message) => CheckResult {
                name: check.name.clone(),
                status: Status::Skipped,
                gpu: check.gpu,
                command: check.command.clone(),
                seconds: 0.0,
                exit_code: None,
                message,
                stdout: String::new(),
                stderr: String::new(),
            },
            None => {
                let gpu_args = gpu.as_ref().filter(|_| check.gpu).map(|a| a.run_args.as_slice()).unwrap_or_default();
                run_check(rt, &image_id, check, i, gpu_args)?
            }
        };
        reporter.note(&format!("{:<7} {} ({:.1}s)", result.status.word(), result.name, result.seconds));
        results.push(result);
    }
    Ok(SmokeReport {
        image: image.to_string(),
        runtime: rt,
        image_id,
        gpu,
        passed: !results.iter().any(|r| r.status.is_failure()),
        seconds: round_ms(started.elapsed()),
        checks: results,
    })
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn probe_runtime(rt: Runtime) -> Result<()> {
    let out = Command::new(rt.program()).arg("--version").stdin(Stdio::null()).output().with_context(|| {
        format!("cannot run {}: is it installed and on PATH? (--runtime podman|docker)", rt.program())
    })?;
    if !out.status.success() {
        bail!("`{} --version` failed: {}", rt.program(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Decides whether GPU checks can run: NVIDIA device nodes, and for podman a CDI spec naming
/// `nvidia.com/gpu` (podman reaches GPUs only through CDI).
pub fn detect_gpu(rt: Runtime) -> GpuAccess {
    detect_gpu_in(rt, &["/dev/nvidiactl", "/dev/nvidia0"].map(PathBuf::from), &CDI_DIRS.map(PathBuf::from))
}

fn detect_gpu_in(rt: Runtime, device_nodes: &[PathBuf], cdi_dirs: &[PathBuf]) -> GpuAccess {
    let devices: Vec<&PathBuf> = device_nodes.iter().filter(|p| p.exists()).collect();
    if devices.is_empty() {
        return GpuAccess {
            available: false,
            detail: "no NVIDIA device (/dev/nvidiactl, /dev/nvidia0) on this host".into(),
            run_args: vec![],
        };
    }
    match rt {
        Runtime::Docker => GpuAccess {
            available: true,
            detail: format!(
                "{} present; docker gets it with --gpus all (needs the NVIDIA Container Toolkit)",
                devices[0].display()
            ),
            run_args: vec!["--gpus".into(), "all".into()],
        },
        Runtime::Podman => match find_cdi_spec(cdi_dirs) {
            Some(spec) => GpuAccess {
                available: true,
                detail: format!("{} present, CDI spec {}", devices[0].display(), spec.display()),
                run_args: vec!["--device".into(), "nvidia.com/gpu=all".into()],
            },
            None => GpuAccess {
                available: false,
                detail: format!(
                    "{} is present but podman has no CDI spec for nvidia.com/gpu (looked in {}): {CDI_HOWTO}",
                    devices[0].display(),
                    CDI_DIRS.join(", ")
                ),
                run_args: vec![],
            },
        },
    }
}

/// The first CDI spec (`*.yaml`, `*.yml`, `*.json`) in `dirs` that declares `nvidia.com/gpu`.
pub fn find_cdi_spec(dirs: &[PathBuf]) -> Option<PathBuf> {
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if !["yaml", "yml", "json"].contains(&ext) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            // `kind: nvidia.com/gpu` in YAML, `"kind": "nvidia.com/gpu"` in JSON.
            if text.contains("nvidia.com/gpu") {
                return Some(f);
            }
        }
    }
    None
}

/// Makes sure the runtime has the image; returns what to run it by.
fn ensure_loaded(rt: Runtime, image: &ImageRef, src: &SourceImage, reporter: &dyn Reporter) -> Result<String> {
    let id = src.config_digest.hex().to_owned();
    if has_image(rt, &id) {
        return Ok(id);
    }
    let load = |args: &[&str]| -> Result<String> {
        reporter.note(&format!("loading {image} into {}", rt.program()));
        let out = Command::new(rt.program())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} {}", rt.program(), args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "`{} {}` failed ({}): {}",
                rt.program(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut _packed = None;
    let output = match (rt, image) {
        (Runtime::Podman, ImageRef::OciDir { dir, tag }) => {
            // podman names an image pulled from `oci:PATH` after PATH, and refuses a PATH that is
            // not a valid repository name (upper case, `.tmpXyZ`): pull through a lowercase link.
            let link = LowercaseLink::new(dir)?;
            let src =
                format!("oci:{}{}", link.path.display(), tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default());
            let out = load(&["pull", "-q", &src])?;
            if has_image(rt, &id) {
                // Rename it from the temporary path to something a person recognises.
                let quiet = |args: &[&str]| {
                    Command::new(rt.program())
                        .args(args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                };
                let _ = quiet(&["untag", &id]);
                let _ = quiet(&["tag", &id, &format!("localhost/nixoci-smoke:{}", &id[..12])]);
            }
            out
        }
        (_, ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file, .. }) => {
            load(&["load", "-i", &path_arg(file)?])?
        }
        (Runtime::Docker, ImageRef::OciDir { dir, .. }) => {
            // docker load reads archives only: pack the layout (docker ≥ 25 reads OCI archives).
            let tmp = pack_dir(dir)?;
            let out = load(&["load", "-i", &path_arg(tmp.path())?])?;
            _packed = Some(tmp);
            out
        }
        // The runtime pulls with its own credentials and TLS settings (podman: auth.json, certs.d).
        (Runtime::Podman, ImageRef::Registry(r)) => load(&["pull", "-q", &r.to_string()])?,
        (Runtime::Docker, ImageRef::Registry(r)) => {
            let name = r.to_string();
            load(&["pull", "-q", name.trim_start_matches("docker://")])?
        }
        (_, ImageRef::Stdout) => {
            bail!("`-` is a destination only: name the image to test with oci:, oci-archive: or docker-archive:")
        }
    };
    if has_image(rt, &id) {
        return Ok(id);
    }
    // docker with the containerd image store names images by manifest digest: use what load said.
    let loaded = output.lines().rev().find_map(|l| {
        let l = l.trim();
        ["Loaded image: ", "Loaded image(s): ", "Loaded image ID: "]
            .iter()
            .find_map(|p| l.strip_prefix(p))
            .map(|s| s.split(',').next().unwrap_or(s).trim().to_owned())
    });
    match loaded {
        Some(name) if has_image(rt, &name) => Ok(name),
        _ => bail!(
            "{} loaded {image} but has no image with its config digest {} (load said: {})",
            rt.program(),
            src.config_digest,
            output.trim()
        ),
    }
}

/// A symlink to `target` at a path podman accepts as a repository name; removed on drop.
struct LowercaseLink {
    path: PathBuf,
}

impl LowercaseLink {
    fn new(target: &Path) -> Result<Self> {
        let target = std::fs::canonicalize(target).with_context(|| format!("reading {}", target.display()))?;
        let valid = |p: &Path| {
            p.to_str().is_some_and(|s| {
                s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"/._-".contains(&b))
            })
        };
        let tmp = std::env::temp_dir();
        let base = if valid(&tmp) { tmp } else { PathBuf::from("/tmp") };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!("nixoci-smoke-{}-{nanos:x}", std::process::id()));
        std::os::unix::fs::symlink(&target, &path)
            .with_context(|| format!("linking {} to {}", path.display(), target.display()))?;
        Ok(Self { path })
    }
}

impl Drop for LowercaseLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str().map(str::to_owned).with_context(|| format!("{} is not UTF-8", p.display()))
}

fn has_image(rt: Runtime, reference: &str) -> bool {
    let args: &[&str] = match rt {
        Runtime::Podman => &["image", "exists", reference],
        Runtime::Docker => &["image", "inspect", "--format", "{{.Id}}", reference],
    };
    Command::new(rt.program())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An OCI layout directory packed into a temporary tar (an oci-archive).
fn pack_dir(dir: &Path) -> Result<tempfile::NamedTempFile> {
    let tmp = tempfile::Builder::new()
        .prefix("nixoci-smoke-")
        .suffix(".tar")
        .tempfile()
        .context("creating a temporary archive")?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).with_context(|| format!("packing {} into a tar", dir.display()))?;
    b.into_inner()
        .context("writing the temporary archive")?
        .into_inner()
        .map_err(|e| e.into_error())
        .context("writing the temporary archive")?;
    Ok(tmp)
}

/// What one bounded process run gave.
#[derive(Debug)]
pub struct Captured {
    /// `None` when it timed out (or was killed by a signal).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `cmd` with its output captured (the last [`OUTPUT_LIMIT`] bytes of each stream); after
/// `timeout`, calls `on_timeout` (which should stop what the process started) and kills it.
pub fn run_captured(mut cmd: Command, timeout: Duration, on_timeout: &mut dyn FnMut()) -> Result<Captured> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let mut truncated = false;
            if let Some(mut r) = r {
                let mut buf = [0u8; 8192];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * OUTPUT_LIMIT {
                        kept.drain(..kept.len() - OUTPUT_LIMIT);
                        truncated = true;
                    }
                }
            }
            if kept.len() > OUTPUT_LIMIT {
                kept.drain(..kept.len() - OUTPUT_LIMIT);
                truncated = true;
            }
            let text = String::from_utf8_lossy(&kept).into_owned();
            if truncated { format!("[… earlier output dropped …]\n{text}") } else { text }
        })
    };
    let out_t = pipe(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err_t = pipe(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for the container")? {
            break s;
        }
        if started.elapsed() >= timeout {
            timed_out = true;
            on_timeout();
            let _ = child.kill();
            break child.wait().context("waiting for the container")?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Captured { exit_code: if timed_out { None } else { status.code() }, timed_out, stdout, stderr, elapsed })
}

/// How long creating a container may take (with vfs storage it copies the whole image).
const CREATE_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs one check: `create` (not counted in its timeout: a large image takes a while to set up),
/// then `start --attach`, bounded by the check's timeout.
fn run_check(rt: Runtime, image_id: &str, check: &Check, index: usize, gpu_args: &[String]) -> Result<CheckResult> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("nixoci-smoke-{}-{index}-{nanos:x}", std::process::id());
    let mut stop = || {
        let _ = Command::new(rt.program())
            .args(rt.force_remove(&name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    let mut create = Command::new(rt.program());
    create.args(["create", "--rm", "--pull", "never", "--name", &name]);
    create.args(gpu_args);
    for e in &check.env {
        create.args(["--env", e]);
    }
    create.arg(format!("--entrypoint={}", check.command[0]));
    create.arg(image_id);
    create.args(&check.command[1..]);
    tracing::debug!("check {:?}: {create:?}", check.name);
    let created = run_captured(create, CREATE_TIMEOUT, &mut stop)?;
    let result = |status, message, c: Captured| CheckResult {
        name: check.name.clone(),
        status,
        gpu: check.gpu,
        command: check.command.clone(),
        seconds: round_ms(c.elapsed),
        exit_code: c.exit_code,
        message,
        stdout: c.stdout,
        stderr: c.stderr,
    };
    if created.exit_code != Some(0) {
        stop();
        let last = created.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
        let why = if created.timed_out { format!("timed out after {CREATE_TIMEOUT:?}") } else { last };
        return Ok(result(Status::Failed, format!("{} could not create the container: {why}", rt.program()), created));
    }
    let mut start = Command::new(rt.program());
    start.args(["start", "--attach", &name]);
    let c = run_captured(start, check.timeout(), &mut stop)?;
    if c.timed_out || c.exit_code.is_none_or(|code| code >= 125) {
        // Killed before --rm could act, or never started: make sure it is gone.
        stop();
    }
    let (status, message) = judge(check, &c, rt);
    Ok(result(status, message, c))
}

fn judge(check: &Check, c: &Captured, rt: Runtime) -> (Status, String) {
    if c.timed_out {
        return (Status::TimedOut, format!("timed out after {:?}; the container was removed", check.timeout()));
    }
    match c.exit_code {
        Some(0) => {}
        // The runtime's own codes: it could not create or start the container, or the command.
        Some(code @ (125..=127)) => {
            let last = c.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let not_found = last.contains("not found") || last.contains("no such file");
            let what = match code {
                125 if not_found => {
                    format!("{:?} was not found in the image (is it on the image's PATH?)", check.command[0])
                }
                125 => format!("{} could not run the container", rt.program()),
                126 => format!("{:?} could not be executed in the image", check.command[0]),
                _ => format!("{:?} was not found in the image (is it on the image's PATH?)", check.command[0]),
            };
            return (Status::Failed, format!("exit status {code}: {what}: {last}"));
        }
        Some(code) => return (Status::Failed, format!("exit status {code}")),
        None => return (Status::Failed, "killed by a signal".to_owned()),
    }
    match &check.expect_stdout {
        Some(want) if !c.stdout.contains(want.as_str()) => {
            (Status::Failed, format!("stdout does not contain {want:?}"))
        }
        _ => (Status::Passed, String::new()),
    }
}

impl SmokeReport {
    /// A table for people; failed checks show their message and the end of their output.
    pub fn render(&self) -> String {
        let mut out = format!("smoke {} with {} ({})\n", self.image, self.runtime.program(), short(&self.image_id));
        if let Some(g) = &self.gpu {
            let _ = writeln!(
                out,
                "GPU: {}",
                if g.available { g.detail.clone() } else { format!("unavailable: {}", g.detail) }
            );
        }
        let width = self.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0).max(5);
        let _ = writeln!(out, "  {:<7}  {:<width$}  {:>7}  DETAIL", "STATUS", "CHECK", "SECONDS");
        for c in &self.checks {
            let line = format!("  {:<7}  {:<width$}  {:>7.2}  {}", c.status.word(), c.name, c.seconds, c.message);
            let _ = writeln!(out, "{}", line.trim_end());
            if c.status.is_failure() {
                for (label, text) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
                    let lines: Vec<&str> = text.lines().collect();
                    if lines.is_empty() {
                        continue;
                    }
                    let _ = writeln!(out, "           {label}:");
                    for l in &lines[lines.len().saturating_sub(15)..] {
                        let _ = writeln!(out, "             {l}");
                    }
                }
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        let _ = writeln!(
            out,
            "result: {} ({} passed, {} failed, {} timed out, {} skipped; {:.1}s)",
            if self.passed { "PASS" } else { "FAIL" },
            count(Status::Passed),
            count(Status::Failed),
            count(Status::TimedOut),
            count(Status::Skipped),
            self.seconds
        );
        out
    }

    /// JUnit XML: one `<testsuite>` named after the image, one `<testcase>` per check, with
    /// `<failure>` (message and output), `<skipped>`, and the captured `<system-out>`/`<system-err>`.
    pub fn junit_xml(&self) -> String {
        let count = |f: &dyn Fn(Status) -> bool| self.checks.iter().filter(|c| f(c.status)).count();
        let (tests, failures, skipped) =
            (self.checks.len(), count(&|s| s.is_failure()), count(&|s| s == Status::Skipped));
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"nixoci smoke\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">",
            self.seconds
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">",
            xml_escape(&self.image),
            self.seconds
        );
        for c in &self.checks {
            let _ = write!(
                x,
                "    <testcase name=\"{}\" classname=\"nixoci.smoke\" time=\"{:.3}\">",
                xml_escape(&c.name),
                c.seconds
            );
            match c.status {
                Status::Passed => {}
                Status::Skipped => {
                    let _ = write!(x, "\n      <skipped message=\"{}\"/>", xml_escape(&c.message));
                }
                Status::Failed | Status::TimedOut => {
                    let kind = if c.status == Status::TimedOut { "timeout" } else { "failed" };
                    let body = format!(
                        "command: {}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        c.command.join(" "),
                        c.message,
                        c.stdout,
                        c.stderr
                    );
                    let _ = write!(
                        x,
                        "\n      <failure message=\"{}\" type=\"{kind}\">{}</failure>",
                        xml_escape(&c.message),
                        xml_escape(&body)
                    );
                }
            }
            if !c.stdout.is_empty() {
                let _ = write!(x, "\n      <system-out>{}</system-out>", xml_escape(&c.stdout));
            }
            if !c.stderr.is_empty() {
                let _ = write!(x, "\n      <system-err>{}</system-err>", xml_escape(&c.stderr));
            }
            if c.status != Status::Passed || !c.stdout.is_empty() || !c.stderr.is_empty() {
                x.push_str("\n    ");
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }
}

fn short(id: &str) -> &str {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) { &id[..12] } else { id }
}

pub use crate::markup::escape as xml_escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!("30s".parse::<Timeout>().unwrap().0, Duration::from_secs(30));
        assert_eq!("1m30s".parse::<Timeout>().unwrap().0, Duration::from_secs(90));
        assert_eq!("500ms".parse::<Timeout>().unwrap().0, Duration::from_millis(500));
        assert_eq!("2".parse::<Timeout>().unwrap().0, Duration::from_secs(2));
        for bad in ["", "s", "3 weeks", "0s", "1.5s"] {
            assert!(bad.parse::<Timeout>().is_err(), "{bad}");
        }
    }

    #[test]
    fn checks_file_is_validated() {
        let c = Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"true\"]\ntimeout = \"2s\"\ngpu = true").unwrap();
        assert_eq!(c.check[0].timeout(), Duration::from_secs(2));
        assert!(c.check[0].gpu);
        let err =
            Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"true\"]\nexpect = \"x\"").unwrap_err().to_string();
        assert!(err.contains("expect") && err.contains("line 4"), "{err}");
        assert!(Checks::parse("[[check]]\nname = \"a\"\ncommand = []").is_err());
        assert!(
            Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"x\"]\n[[check]]\nname = \"a\"\ncommand = [\"y\"]")
                .is_err()
        );
        assert!(Checks::parse("").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("checks.json");
        std::fs::write(&file, r#"{"check": [{"name": "a", "command": ["true"], "timeout": "2s", "gpu": true}]}"#)
            .unwrap();
        assert_eq!(Checks::load(&file).unwrap(), c);
        std::fs::write(&file, r#"{"check": [{"name": "a", "command": ["true"], "expect": "x"}]}"#).unwrap();
        let err = format!("{:#}", Checks::load(&file).unwrap_err());
        assert!(err.contains("checks.json") && err.contains("unknown field `expect`"), "{err}");
    }

    #[test]
    fn captured_run_times_out_and_keeps_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let c = run_captured(cmd, Duration::from_secs(10), &mut || {}).unwrap();
        assert_eq!(
            (c.exit_code, c.stdout.as_str(), c.stderr.as_str(), c.timed_out),
            (Some(3), "out\n", "err\n", false)
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let mut called = false;
        let c = run_captured(cmd, Duration::from_millis(300), &mut || called = true).unwrap();
        assert!(c.timed_out && called && c.exit_code.is_none());
        assert!(c.elapsed < Duration::from_secs(5));
        assert_eq!(c.stdout, "started\n");
    }

    #[test]
    fn judging() {
        let check = Checks::parse("[[check]]\nname = \"a\"\ncommand = [\"py\"]\nexpect_stdout = \"ok\"")
            .unwrap()
            .check
            .remove(0);
        let cap = |code, out: &str, err: &str| Captured {
            exit_code: code,
            timed_out: false,
            stdout: out.into(),
            stderr: err.into(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(judge(&check, &cap(Some(0), "all ok\n", ""), Runtime::Podman).0, Status::Passed);
        assert_eq!(judge(&check, &cap(Some(0), "nope\n", ""), Runtime::Podman).1, "stdout does not contain \"ok\"");
        assert_eq!(judge(&check, &cap(Some(1), "ok", ""), Runtime::Podman).1, "exit status 1");
        let (s, m) = judge(&check, &cap(Some(127), "", "Error: executable file `py` not found\n"), Runtime::Podman);
        assert!(s == Status::Failed && m.contains("not found in the image") && m.contains("`py`"), "{m}");
    }

    #[test]
    fn junit_is_escaped_and_counts_right() {
        let r = |name: &str, status, message: &str, stdout: &str| CheckResult {
            name: name.into(),
            status,
            gpu: false,
            command: vec!["x".into()],
            seconds: 1.5,
            exit_code: Some(1),
            message: message.into(),
            stdout: stdout.into(),
            stderr: String::new(),
        };
        let report = SmokeReport {
            image: "oci:a&b".into(),
            runtime: Runtime::Podman,
            image_id: "x".into(),
            gpu: None,
            passed: false,
            seconds: 3.0,
            checks: vec![
                r("ok <1>", Status::Passed, "", "fine"),
                r("bad", Status::Failed, "stdout does not contain \"y\"", "got <x> & \u{1b}[0m"),
                r("slow", Status::TimedOut, "timed out after 2s", ""),
                r("gpu", Status::Skipped, "a GPU check, skipped by --cpu", ""),
            ],
        };
        let x = report.junit_xml();
        assert!(x.contains("tests=\"4\" failures=\"2\" errors=\"0\" skipped=\"1\""), "{x}");
        assert!(x.contains("name=\"ok &lt;1&gt;\""), "{x}");
        assert!(x.contains("<failure message=\"stdout does not contain &quot;y&quot;\" type=\"failed\">"), "{x}");
        assert!(x.contains("got &lt;x&gt; &amp; \u{FFFD}[0m"), "{x}");
        assert!(x.contains("type=\"timeout\""), "{x}");
        assert!(x.contains("<skipped message=\"a GPU check, skipped by --cpu\"/>"), "{x}");
        assert!(!x.contains('\u{1b}'));
        assert!(report.render().contains("result: FAIL (1 passed, 1 failed, 1 timed out, 1 skipped"));
    }

    #[test]
    fn gpu_access_needs_devices_and_for_podman_a_cdi_spec() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("nvidia0");
        let cdi = d.path().join("cdi");
        std::fs::create_dir(&cdi).unwrap();
        let none = detect_gpu_in(Runtime::Podman, std::slice::from_ref(&dev), std::slice::from_ref(&cdi));
        assert!(!none.available && none.detail.contains("no NVIDIA device"), "{}", none.detail);
        std::fs::write(&dev, "").unwrap();
        let no_spec = detect_gpu_in(Runtime::Podman, std::slice::from_ref(&dev), std::slice::from_ref(&cdi));
        assert!(!no_spec.available, "{}", no_spec.detail);
        assert!(
            no_spec.detail.contains("no CDI spec")
                && no_spec.detail.contains("nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"),
            "{}",
            no_spec.detail
        );
        let docker = detect_gpu_in(Runtime::Docker, std::slice::from_ref(&dev), std::slice::from_ref(&cdi));
        assert!(docker.available && docker.run_args == ["--gpus", "all"]);
        std::fs::write(cdi.join("nvidia.yaml"), "kind: nvidia.com/gpu\n").unwrap();
        let podman = detect_gpu_in(Runtime::Podman, std::slice::from_ref(&dev), std::slice::from_ref(&cdi));
        assert!(podman.available && podman.run_args == ["--device", "nvidia.com/gpu=all"], "{}", podman.detail);
    }

    #[test]
    fn cdi_spec_is_found_only_when_it_names_nvidia_gpus() {
        let d = tempfile::tempdir().unwrap();
        let dirs = [d.path().join("missing"), d.path().to_owned()];
        assert_eq!(find_cdi_spec(&dirs), None);
        std::fs::write(d.path().join("other.yaml"), "kind: vendor.com/fpga\n").unwrap();
        assert_eq!(find_cdi_spec(&dirs), None);
        std::fs::write(d.path().join("nvidia.yaml"), "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n").unwrap();
        assert_eq!(find_cdi_spec(&dirs), Some(d.path().join("nvidia.yaml")));
    }
}
