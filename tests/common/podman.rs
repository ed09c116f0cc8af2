//! A private podman (LAB.md) for tests that load and run images.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use super::run_ok_str;

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

    /// The environment that points podman (or nixoci's `smoke`, which runs it) at this one.
    pub fn envs(&self) -> Vec<(&'static str, std::path::PathBuf)> {
        let d = self.dir.path();
        vec![
            ("CONTAINERS_CONF", d.join("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", d.join("storage.conf")),
            ("TMPDIR", d.to_owned()),
        ]
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.envs(self.envs());
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
