//! Running commands: the built `nixoci` in a clean environment, and tools, with their output
//! shown when they fail.

use std::process::{Command, Output, Stdio};

use super::bin;
use super::target_dir;

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
