//! External tools: finding them on PATH, and skipping (or, under CI, failing) a test that lacks one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::in_ci;

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
