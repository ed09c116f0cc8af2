//! The container runtime side of `nixoci smoke`: podman or docker, found on PATH; whether GPU
//! checks can reach a GPU (device nodes, and for podman a CDI spec); the image loaded or pulled
//! into the runtime by its config digest; and every runtime command run through one bounded
//! process runner ([`run_captured`]): `load`/`pull` under the load timeout, each check's `create`
//! and `start --attach` under theirs, the child killed (and a check's container removed) when it
//! runs out.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::format::{Check, Timeout};
use crate::progress::Reporter;
use crate::transport::ImageRef;
use crate::transport::source::SourceImage;

/// Output kept per stream and process run (the end of it).
const OUTPUT_LIMIT: usize = 64 * 1024;

/// How long creating a container may take (with vfs storage it copies the whole image).
const CREATE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where podman looks for CDI specs (`nvidia-ctk cdi generate` writes them).
pub const CDI_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];
/// How to make the CDI spec podman needs for `--device nvidia.com/gpu=all`.
pub const CDI_HOWTO: &str = "generate it with `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` \
(NVIDIA Container Toolkit), then check `nvidia-ctk cdi list` shows nvidia.com/gpu=all";

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

/// Whether GPU checks can run here, and how.
#[derive(Debug, Clone, Serialize)]
pub struct GpuAccess {
    pub available: bool,
    pub detail: String,
    /// What `create` needs to give the container the GPU.
    #[serde(skip)]
    pub(super) run_args: Vec<String>,
}

/// Fails, saying how to fix it, unless `RUNTIME --version` runs.
pub(super) fn probe_runtime(rt: Runtime) -> Result<()> {
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

/// Makes sure the runtime has the image; returns what to run it by. Loading or pulling it may
/// take up to `load_timeout`; after that the runtime's command is killed and this fails.
pub(super) fn ensure_loaded(
    rt: Runtime,
    image: &ImageRef,
    src: &SourceImage,
    load_timeout: Duration,
    reporter: &dyn Reporter,
) -> Result<String> {
    let id = src.config_digest.hex().to_owned();
    if has_image(rt, &id) {
        return Ok(id);
    }
    let output = load_image(&Loader { rt, image, timeout: load_timeout, reporter }, &id)?;
    if has_image(rt, &id) {
        return Ok(id);
    }
    // docker with the containerd image store names images by manifest digest: use what load said.
    match loaded_name(&output) {
        Some(name) if has_image(rt, &name) => Ok(name),
        _ => bail!(
            "{} loaded {image} but has no image with its config digest {} (load said: {})",
            rt.program(),
            src.config_digest,
            output.trim()
        ),
    }
}

/// Runs the runtime's `load` or `pull` of one image, bounded by a timeout.
struct Loader<'a> {
    rt: Runtime,
    image: &'a ImageRef,
    timeout: Duration,
    reporter: &'a dyn Reporter,
}

impl Loader<'_> {
    /// Runs `RUNTIME ARGS…`; returns its stdout. Fails naming the command when it fails or runs
    /// past the timeout (it is killed then).
    fn run(&self, args: &[&str]) -> Result<String> {
        let (rt, image) = (self.rt, self.image);
        self.reporter.note(&format!("loading {image} into {}", rt.program()));
        let command = format!("{} {}", rt.program(), args.join(" "));
        let mut cmd = Command::new(rt.program());
        cmd.args(args);
        let out = run_captured(cmd, self.timeout, &mut || {}).with_context(|| format!("running {command}"))?;
        if out.timed_out {
            bail!(
                "`{command}` did not finish loading {image} into {} within {}: it was killed (--load-timeout \
                 allows more time)",
                rt.program(),
                Timeout(self.timeout)
            );
        }
        if out.exit_code != Some(0) {
            let status = out.exit_code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit status: {c}"));
            bail!("`{command}` failed ({status}): {}", out.stderr.trim());
        }
        Ok(out.stdout)
    }
}

/// Loads or pulls the image by its transport; returns what the runtime printed.
fn load_image(loader: &Loader, id: &str) -> Result<String> {
    let rt = loader.rt;
    Ok(match (rt, loader.image) {
        (Runtime::Podman, ImageRef::OciDir { dir, tag }) => {
            // podman names an image pulled from `oci:PATH` after PATH, and refuses a PATH that is
            // not a valid repository name (upper case, `.tmpXyZ`): pull through a lowercase link.
            let link = LowercaseLink::new(dir)?;
            let src =
                format!("oci:{}{}", link.path.display(), tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default());
            let out = loader.run(&["pull", "-q", &src])?;
            if has_image(rt, id) {
                // Rename it from the temporary path to something a person recognises.
                let _ = quiet(rt, &["untag", id]);
                let _ = quiet(rt, &["tag", id, &format!("localhost/nixoci-smoke:{}", &id[..12])]);
            }
            out
        }
        (_, ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file, .. }) => {
            loader.run(&["load", "-i", &path_arg(file)?])?
        }
        (Runtime::Docker, ImageRef::OciDir { dir, .. }) => {
            // docker load reads archives only: pack the layout (docker ≥ 25 reads OCI archives).
            let packed = pack_dir(dir)?;
            loader.run(&["load", "-i", &path_arg(packed.path())?])?
        }
        // The runtime pulls with its own credentials and TLS settings (podman: auth.json, certs.d).
        (Runtime::Podman, ImageRef::Registry(r)) => loader.run(&["pull", "-q", &r.to_string()])?,
        (Runtime::Docker, ImageRef::Registry(r)) => {
            let name = r.to_string();
            loader.run(&["pull", "-q", name.trim_start_matches("docker://")])?
        }
        (_, ImageRef::Stdout) => {
            bail!("`-` is a destination only: name the image to test with oci:, oci-archive: or docker-archive:")
        }
    })
}

/// The image a `load` says it loaded (its last "Loaded image…" line).
fn loaded_name(output: &str) -> Option<String> {
    output.lines().rev().find_map(|l| {
        let l = l.trim();
        ["Loaded image: ", "Loaded image(s): ", "Loaded image ID: "]
            .iter()
            .find_map(|p| l.strip_prefix(p))
            .map(|s| s.split(',').next().unwrap_or(s).trim().to_owned())
    })
}

/// Runs `RUNTIME ARGS…` with no output.
fn quiet<S: AsRef<std::ffi::OsStr>>(rt: Runtime, args: &[S]) -> std::io::Result<std::process::ExitStatus> {
    Command::new(rt.program()).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status()
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
    quiet(rt, args).is_ok_and(|s| s.success())
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
    let pipe = |r: Option<Box<dyn Read + Send>>| std::thread::spawn(move || r.map(read_tail).unwrap_or_default());
    let out_t = pipe(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err_t = pipe(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let waiting = || format!("waiting for {}", cmd.get_program().to_string_lossy());
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().with_context(waiting)? {
            break s;
        }
        if started.elapsed() >= timeout {
            timed_out = true;
            on_timeout();
            let _ = child.kill();
            break child.wait().with_context(waiting)?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Captured { exit_code: if timed_out { None } else { status.code() }, timed_out, stdout, stderr, elapsed })
}

/// Reads `r` to its end; returns the last [`OUTPUT_LIMIT`] bytes as text, marked when earlier
/// output was dropped.
fn read_tail(mut r: Box<dyn Read + Send>) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut truncated = false;
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
    if kept.len() > OUTPUT_LIMIT {
        kept.drain(..kept.len() - OUTPUT_LIMIT);
        truncated = true;
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    if truncated { format!("[… earlier output dropped …]\n{text}") } else { text }
}

/// How running one check's command in a container went.
pub(super) enum ContainerRun {
    /// `create` failed or ran out of time; `why` says how (the last line of its stderr).
    NotCreated { why: String, captured: Captured },
    /// `start --attach` ran to its end or its timeout.
    Ran(Captured),
}

/// Runs one check's command in a new container of `image_id`: `create` (not counted in the
/// check's timeout: a large image takes a while to set up), then `start --attach`, bounded by the
/// check's timeout. A container that outruns it, or that never started, is removed.
pub(super) fn run_in_container(
    rt: Runtime,
    image_id: &str,
    check: &Check,
    index: usize,
    gpu_args: &[String],
) -> Result<ContainerRun> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("nixoci-smoke-{}-{index}-{nanos:x}", std::process::id());
    let mut stop = || {
        let _ = quiet(rt, &rt.force_remove(&name));
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
    if created.exit_code != Some(0) {
        stop();
        let last = created.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
        let why = if created.timed_out { format!("timed out after {CREATE_TIMEOUT:?}") } else { last };
        return Ok(ContainerRun::NotCreated { why, captured: created });
    }
    let mut start = Command::new(rt.program());
    start.args(["start", "--attach", &name]);
    let c = run_captured(start, check.timeout(), &mut stop)?;
    if c.timed_out || c.exit_code.is_none_or(|code| code >= 125) {
        // Killed before --rm could act, or never started: make sure it is gone.
        stop();
    }
    Ok(ContainerRun::Ran(c))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn only_the_end_of_long_output_is_kept() {
        let mut long = vec![b'a'; 3 * OUTPUT_LIMIT];
        long.extend_from_slice(b"the end\n");
        let text = read_tail(Box::new(std::io::Cursor::new(long)));
        assert!(text.starts_with("[… earlier output dropped …]\n") && text.ends_with("the end\n"));
        assert_eq!(text.len(), "[… earlier output dropped …]\n".len() + OUTPUT_LIMIT);
        assert_eq!(read_tail(Box::new(std::io::Cursor::new(b"short".to_vec()))), "short");
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
