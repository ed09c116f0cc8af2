//! The Nix test closure (`scripts/nix-test-closure`), built once per test process, and an image
//! spec for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{NIX_TOOLS, have_tools, repo, target_dir};

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
