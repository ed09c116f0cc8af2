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
//! load`), bounded by the load timeout (the command is killed when it runs out); decide whether
//! GPU checks can run (device nodes, and for podman a CDI spec); then run each check: `create --rm
//! --pull never --entrypoint CMD IMAGE ARGS…` (not timed: a large image takes a while to set up),
//! then `start --attach`, bounded by the check's timeout, capturing its output; judge it: exit
//! status 0 and `expect_stdout` found. A check that outruns its timeout has its container removed
//! (`podman rm -f -t 0` / `docker rm -f`). Results render as a table, as JSON and as JUnit XML.
//!
//! Files: `format.rs` the checks file, `runtime.rs` podman/docker (GPU access, loading, the bounded
//! process runner, containers), `report.rs` the results and their renderings; this file the order
//! of the steps and the judging of each check.

mod format;
mod report;
mod runtime;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

pub use format::{Check, Checks, Timeout};
pub use report::{CheckResult, SmokeReport, Status, xml_escape};
pub use runtime::{CDI_DIRS, CDI_HOWTO, Captured, GpuAccess, Runtime, detect_gpu, find_cdi_spec, run_captured};

use crate::progress::Reporter;
use crate::transport::ImageRef;
use crate::transport::source::SourceImage;
use runtime::ContainerRun;

/// How long loading or pulling the image may take by default: multi-GB images over a slow link.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

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
    /// How long `load`/`pull` of the image may take before it is killed (`--load-timeout`).
    pub load_timeout: Duration,
}

/// Runs `checks` in containers of `image`.
pub fn run(image: &ImageRef, checks: &Checks, opts: &SmokeOptions, reporter: &dyn Reporter) -> Result<SmokeReport> {
    let started = Instant::now();
    let rt = opts.runtime;
    runtime::probe_runtime(rt)?;
    let gpu = gpu_access(checks, opts, reporter)?;
    let src = SourceImage::open(image)?;
    let image_id = runtime::ensure_loaded(rt, image, &src, opts.load_timeout, reporter)?;
    let mut results = Vec::with_capacity(checks.check.len());
    for (i, check) in checks.check.iter().enumerate() {
        let result = match skip_reason(check, gpu.as_ref(), opts.gpu) {
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

/// Whether GPU checks can run (None when none will be tried); fails under `--gpu` when they cannot.
fn gpu_access(checks: &Checks, opts: &SmokeOptions, reporter: &dyn Reporter) -> Result<Option<GpuAccess>> {
    if opts.gpu == GpuMode::Off || !checks.check.iter().any(|c| c.gpu) {
        return Ok(None);
    }
    let access = detect_gpu(opts.runtime);
    if opts.gpu == GpuMode::Require && !access.available {
        bail!("--gpu: no GPU can be reached: {}", access.detail);
    }
    if !access.available {
        reporter.note(&format!("GPU checks will be skipped: {}", access.detail));
    }
    Ok(Some(access))
}

/// Why `check` is skipped, if it is.
fn skip_reason(check: &Check, gpu: Option<&GpuAccess>, mode: GpuMode) -> Option<String> {
    match (gpu, check.gpu, mode) {
        (_, false, _) => None,
        (_, true, GpuMode::Off) => Some("a GPU check, skipped by --cpu".to_owned()),
        (Some(a), true, _) if !a.available => Some(format!("a GPU check, and no GPU can be reached: {}", a.detail)),
        _ => None,
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Runs one check in a container and judges it.
fn run_check(rt: Runtime, image_id: &str, check: &Check, index: usize, gpu_args: &[String]) -> Result<CheckResult> {
    let (status, message, c) = match runtime::run_in_container(rt, image_id, check, index, gpu_args)? {
        ContainerRun::NotCreated { why, captured } => {
            (Status::Failed, format!("{} could not create the container: {why}", rt.program()), captured)
        }
        ContainerRun::Ran(c) => {
            let (status, message) = judge(check, &c, rt);
            (status, message, c)
        }
    };
    Ok(CheckResult {
        name: check.name.clone(),
        status,
        gpu: check.gpu,
        command: check.command.clone(),
        seconds: round_ms(c.elapsed),
        exit_code: c.exit_code,
        message,
        stdout: c.stdout,
        stderr: c.stderr,
    })
}

/// A check's verdict from its run: exit status 0 (the runtime's own codes 125–127 explained) and
/// `expect_stdout` found.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
