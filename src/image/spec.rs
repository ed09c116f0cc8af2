//! The image spec (`--image FILE`): runtime config plus the customisation layer (users, groups,
//! directories, files, symlinks with their ownership written into tar headers).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::closure::Closure;
use crate::size::IntOrString;
use crate::tarball::{Content, Entry, Kind};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Default reference for archive outputs and tag for `oci:` when the destination names none,
    /// e.g. `localhost/comfyui:latest`.
    pub name: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings.
    #[serde(default)]
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// A user name, or `uid[:gid]`.
    pub user: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Manifest annotations (`org.opencontainers.image.source`, `.revision`, `.version`…), also
    /// on the manifest's descriptor in an OCI layout's index.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// The platform: `architecture` (GOARCH spelling: amd64, arm64, arm, 386, ppc64le, s390x,
    /// riscv64), checked at build time against every ELF file's machine ([`crate::platform`]);
    /// `os` (default linux) and `variant` (e.g. `v8`, `v7`) go into the config and the index.
    #[serde(default = "default_arch")]
    pub architecture: String,
    #[serde(default = "default_os")]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    /// Globs on store path names (the part after `<hash>-`) whose ELF files are not checked
    /// against `architecture`: store paths meant to hold foreign binaries (valgrind's 32-bit
    /// preload libraries, firmware, cross toolchains).
    #[serde(default)]
    pub foreign_elf: Vec<String>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub dirs: Vec<DirSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub symlinks: Vec<SymlinkSpec>,
    /// A GPU image: `LD_LIBRARY_PATH` gains the driver locations (see [`GPU_LIBRARY_PATH`]) and
    /// `NVIDIA_VISIBLE_DEVICES` / `NVIDIA_DRIVER_CAPABILITIES` are set unless `env` sets them.
    #[serde(default)]
    pub gpu: bool,
    /// Register every store path in a Nix database at `/nix/var/nix/db` (in the customisation
    /// layer), so `nix` works inside the container: see [`super::nix_db`].
    #[serde(default)]
    pub nix_db: bool,
}

/// Where a container runtime's GPU support puts the driver libraries (`libcuda.so.1`): CDI and the
/// NVIDIA container toolkit mount them at the host's locations (`/usr/lib/x86_64-linux-gnu` on
/// Debian/Ubuntu, `/usr/lib64` on RHEL/SUSE); Nix CUDA packages look in `/run/opengl-driver/lib`.
/// nixpkgs' glibc ignores `/etc/ld.so.cache`, so without this `LD_LIBRARY_PATH` a Nix-built torch
/// finds no `libcuda` inside the container.
pub const GPU_LIBRARY_PATH: [&str; 3] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/run/opengl-driver/lib"];

/// What `gpu = true` sets when `env` does not.
const GPU_ENV_DEFAULTS: [(&str, &str); 2] =
    [("NVIDIA_VISIBLE_DEVICES", "all"), ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")];

fn default_arch() -> String {
    "amd64".to_owned()
}

fn default_os() -> String {
    "linux".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub home: Option<String>,
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub gecos: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    #[serde(default)]
    pub members: Vec<String>,
}

/// A mode, as a string of octal digits (`"1777"`, `"0755"`). TOML integers are refused: `755`
/// would silently be decimal (0o1363), and `0o755` cannot be told from it once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "IntOrString")]
pub struct Mode(pub u32);

impl TryFrom<IntOrString> for Mode {
    type Error = String;
    fn try_from(r: IntOrString) -> Result<Self, String> {
        let m = match r {
            IntOrString::Int(n) => {
                return Err(format!("mode = {n}: write the mode as a string of octal digits, e.g. mode = \"0755\""));
            }
            IntOrString::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .map_err(|_| format!("mode {s:?} is not an octal number"))?,
        };
        if m > 0o7777 {
            return Err(format!("mode {m:o} is larger than 7777"));
        }
        Ok(Mode(m))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    pub path: String,
    #[serde(default)]
    pub uid: u64,
    #[serde(default)]
    pub gid: u64,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    pub content: String,
    #[serde(default)]
    pub uid: u64,
    #[serde(default)]
    pub gid: u64,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkSpec {
    pub path: String,
    pub target: String,
}

impl ImageSpec {
    /// The declared platform (os `linux` when unset).
    pub fn platform(&self) -> crate::platform::Platform {
        crate::platform::Platform {
            os: if self.os.is_empty() { "linux".to_owned() } else { self.os.clone() },
            architecture: self.architecture.clone(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }

    /// Reads an image spec, TOML or JSON (see [`crate::config_format`]).
    pub fn load(file: &Path) -> Result<Self> {
        let (text, format) = crate::config_format::read(file, "image spec")?;
        let spec: ImageSpec = format.parse(&text).with_context(|| format!("in image spec {}", file.display()))?;
        spec.validate().with_context(|| format!("in image spec {}", file.display()))?;
        Ok(spec)
    }

    fn validate(&self) -> Result<()> {
        crate::platform::ElfCheck::new(&self.architecture, &self.foreign_elf)?;
        for e in &self.env {
            if !e.contains('=') {
                bail!("env entry {e:?} must be KEY=VALUE");
            }
        }
        let mut seen = BTreeSet::new();
        for p in self
            .dirs
            .iter()
            .map(|d| &d.path)
            .chain(self.files.iter().map(|f| &f.path))
            .chain(self.symlinks.iter().map(|s| &s.path))
        {
            let rel = clean(p)?;
            if rel == "nix" || rel == "nix/store" || rel.starts_with("nix/store/") {
                bail!("{p}: the image spec cannot write into /nix/store (that is the closure's)");
            }
            let db = super::nix_db::DB_DIR;
            if self.nix_db && (rel == db || rel.starts_with(&format!("{db}/"))) {
                bail!("{p}: with nix_db = true, /{db} is written by nixoci");
            }
            if !seen.insert(rel) {
                bail!("{p} is defined twice");
            }
        }
        if (!self.users.is_empty() || !self.groups.is_empty())
            && seen.iter().any(|p| p == "etc/passwd" || p == "etc/group")
        {
            bail!(
                "/etc/passwd and /etc/group are written from [[users]] and [[groups]]; do not also list them in [[files]]"
            );
        }
        Ok(())
    }

    /// The config's environment: `env`, plus what `gpu = true` adds. `LD_LIBRARY_PATH` keeps its
    /// place and value in `env` with the driver directories appended (those not already there).
    pub fn effective_env(&self) -> Vec<String> {
        self.effective_env_over(&[])
    }

    /// [`Self::effective_env`] over a base image's `Env`: the base's variables first, each of
    /// `env` replacing the one of the same name in place or added after them; then what
    /// `gpu = true` adds.
    pub fn effective_env_over(&self, base: &[String]) -> Vec<String> {
        let key = |e: &String| e.split_once('=').map(|(k, _)| k.to_owned()).unwrap_or_default();
        let mut env = base.to_vec();
        for e in &self.env {
            match env.iter_mut().find(|x| key(x) == key(e)) {
                Some(x) => x.clone_from(e),
                None => env.push(e.clone()),
            }
        }
        if !self.gpu {
            return env;
        }
        match env.iter_mut().find(|e| key(e) == "LD_LIBRARY_PATH") {
            Some(e) => {
                let mut dirs: Vec<String> =
                    e["LD_LIBRARY_PATH=".len()..].split(':').filter(|d| !d.is_empty()).map(str::to_owned).collect();
                for d in GPU_LIBRARY_PATH {
                    if !dirs.iter().any(|x| x == d) {
                        dirs.push(d.to_owned());
                    }
                }
                *e = format!("LD_LIBRARY_PATH={}", dirs.join(":"));
            }
            None => env.push(format!("LD_LIBRARY_PATH={}", GPU_LIBRARY_PATH.join(":"))),
        }
        for (k, v) in GPU_ENV_DEFAULTS {
            if !env.iter().any(|e| key(e) == k) {
                env.push(format!("{k}={v}"));
            }
        }
        env
    }

    /// Whether the image needs a customisation layer at all.
    pub fn has_layer(&self) -> bool {
        !(!self.nix_db
            && self.users.is_empty()
            && self.groups.is_empty()
            && self.dirs.is_empty()
            && self.files.is_empty()
            && self.symlinks.is_empty())
    }

    /// The customisation layer's entries, normalised; missing parent directories are added (0755, root).
    /// Without the Nix database (`nix_db`), which needs the closure: see [`Self::layer_entries_for`].
    pub fn layer_entries(&self) -> Result<Vec<Entry>> {
        self.entries_with(Vec::new(), None)
    }

    /// The customisation layer's entries for an image of `closure` made at `epoch`: with
    /// `nix_db = true`, `/nix/var/nix/db` registering every path of it. On a base image
    /// (`build --from`): our users and groups are merged into the base's `/etc/passwd` and
    /// `/etc/group` ([`crate::base::merge_accounts`]), and missing parent directories are not
    /// added (the base's own, a 1777 `/tmp` say, must stay as they are; a runtime creates those
    /// the base lacks).
    pub fn layer_entries_for(
        &self,
        closure: &Closure,
        epoch: u64,
        base: Option<crate::base::OnBase<'_>>,
    ) -> Result<Vec<Entry>> {
        let db = if self.nix_db { super::nix_db::entries(closure, epoch)? } else { Vec::new() };
        self.entries_with(db, base)
    }

    fn entries_with(&self, mut entries: Vec<Entry>, base: Option<crate::base::OnBase<'_>>) -> Result<Vec<Entry>> {
        for d in &self.dirs {
            entries.push(Entry {
                path: clean(&d.path)?,
                kind: Kind::Dir,
                mode: d.mode.map_or(0o755, |m| m.0),
                uid: d.uid,
                gid: d.gid,
            });
        }
        for f in &self.files {
            let bytes = f.content.clone().into_bytes();
            entries.push(Entry {
                path: clean(&f.path)?,
                kind: Kind::File { size: bytes.len() as u64, content: Content::Inline(bytes) },
                mode: f.mode.map_or(0o644, |m| m.0),
                uid: f.uid,
                gid: f.gid,
            });
        }
        for s in &self.symlinks {
            entries.push(Entry {
                path: clean(&s.path)?,
                kind: Kind::Symlink { target: s.target.clone() },
                mode: 0o777,
                uid: 0,
                gid: 0,
            });
        }
        if !self.users.is_empty() || !self.groups.is_empty() {
            let merge = |theirs: Option<&String>, ours: &dyn Fn(bool) -> String, kind, file| match (theirs, base) {
                (Some(theirs), Some(b)) => crate::base::merge_accounts(theirs, &ours(false), kind, file, b.reference),
                _ => Ok(ours(true)),
            };
            let accounts = base.and_then(|b| b.accounts);
            let passwd = merge(
                accounts.and_then(|a| a.passwd.as_ref()),
                &|root| self.passwd(root),
                ("user", "uid"),
                "/etc/passwd",
            )?;
            let group = merge(
                accounts.and_then(|a| a.group.as_ref()),
                &|root| self.group(root),
                ("group", "gid"),
                "/etc/group",
            )?;
            entries.push(inline("etc/passwd", passwd));
            entries.push(inline("etc/group", group));
        }
        let have: BTreeSet<String> = entries.iter().map(|e| e.path.clone()).collect();
        let mut parents = BTreeSet::new();
        for e in entries.iter().filter(|_| base.is_none()) {
            let mut p = e.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if !have.contains(parent) {
                    parents.insert(parent.to_owned());
                }
                p = parent;
            }
        }
        entries.extend(parents.into_iter().map(|p| Entry::dir(p, 0o755)));
        crate::tarball::normalize(&mut entries)?;
        Ok(entries)
    }

    /// `/etc/passwd` of `users`, with a root line first unless `users` has uid 0 or `root` is
    /// false (the base image has its own).
    fn passwd(&self, root: bool) -> String {
        let mut out = String::new();
        if root && !self.users.iter().any(|u| u.uid == 0) {
            out.push_str("root:x:0:0:root:/root:/sbin/nologin\n");
        }
        for u in &self.users {
            let home = u.home.as_deref().unwrap_or("/var/empty");
            let shell = u.shell.as_deref().unwrap_or("/sbin/nologin");
            out.push_str(&format!(
                "{}:x:{}:{}:{}:{home}:{shell}\n",
                u.name,
                u.uid,
                u.gid,
                u.gecos.as_deref().unwrap_or("")
            ));
        }
        out
    }

    fn group(&self, root: bool) -> String {
        let mut out = String::new();
        if root && !self.groups.iter().any(|g| g.gid == 0) {
            out.push_str("root:x:0:\n");
        }
        for g in &self.groups {
            out.push_str(&format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")));
        }
        out
    }
}

fn inline(path: &str, content: String) -> Entry {
    let bytes = content.into_bytes();
    Entry {
        path: path.to_owned(),
        kind: Kind::File { size: bytes.len() as u64, content: Content::Inline(bytes) },
        mode: 0o644,
        uid: 0,
        gid: 0,
    }
}

/// `/a/b/` → `a/b`; refuses relative paths, `..` and empty components.
fn clean(p: &str) -> Result<String> {
    let Some(rel) = p.strip_prefix('/') else { bail!("{p:?} must be an absolute path") };
    let rel = rel.trim_end_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("{p:?} is not a clean absolute path");
    }
    Ok(rel.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
entrypoint = ["/bin/app"]
env = ["A=1"]
user = "app"
[[users]]
name = "app"
uid = 1000
gid = 1000
home = "/home/app"
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
mode = "0700"
[[symlinks]]
path = "/usr/bin/env"
target = "/nix/store/x/bin/env"
"#;

    #[test]
    fn layer_has_ownership_modes_and_parents() {
        let spec: ImageSpec = toml::from_str(SPEC).unwrap();
        spec.validate().unwrap();
        let e = spec.layer_entries().unwrap();
        let find = |p: &str| e.iter().find(|x| x.path == p).unwrap_or_else(|| panic!("{p} missing"));
        assert_eq!(find("tmp").mode, 0o1777);
        assert_eq!((find("home/app").uid, find("home/app").mode), (1000, 0o700));
        assert_eq!(find("home").mode, 0o755);
        assert_eq!(find("usr").kind, Kind::Dir);
        match &find("etc/passwd").kind {
            Kind::File { content: Content::Inline(b), .. } => {
                assert_eq!(
                    String::from_utf8_lossy(b),
                    "root:x:0:0:root:/root:/sbin/nologin\napp:x:1000:1000::/home/app:/sbin/nologin\n"
                )
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn gpu_sets_driver_paths_and_keeps_the_users_env() {
        let spec: ImageSpec = toml::from_str("gpu = true\nenv = [\"PATH=/bin\"]").unwrap();
        assert_eq!(
            spec.effective_env(),
            [
                "PATH=/bin",
                "LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/usr/lib64:/run/opengl-driver/lib",
                "NVIDIA_VISIBLE_DEVICES=all",
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility"
            ]
        );
        let spec: ImageSpec =
            toml::from_str("gpu = true\nenv = [\"LD_LIBRARY_PATH=/opt/lib:/usr/lib64\", \"NVIDIA_VISIBLE_DEVICES=0\"]")
                .unwrap();
        assert_eq!(
            spec.effective_env(),
            [
                "LD_LIBRARY_PATH=/opt/lib:/usr/lib64:/usr/lib/x86_64-linux-gnu:/run/opengl-driver/lib",
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility"
            ]
        );
        let spec: ImageSpec = toml::from_str("env = [\"A=1\"]").unwrap();
        assert_eq!(spec.effective_env(), ["A=1"]);
    }

    #[test]
    fn json_specs_load_like_toml() {
        let dir = tempfile::tempdir().unwrap();
        let toml_file = dir.path().join("image.toml");
        std::fs::write(&toml_file, SPEC).unwrap();
        let json = r#"{"entrypoint": ["/bin/app"], "env": ["A=1"], "user": "app", "workdir": null,
            "users": [{"name": "app", "uid": 1000, "gid": 1000, "home": "/home/app"}],
            "groups": [{"name": "app", "gid": 1000}],
            "dirs": [{"path": "/tmp", "mode": "1777"}, {"path": "/home/app", "uid": 1000, "gid": 1000, "mode": "0700"}],
            "symlinks": [{"path": "/usr/bin/env", "target": "/nix/store/x/bin/env"}]}"#;
        let json_file = dir.path().join("spec"); // no extension: detected from the content
        std::fs::write(&json_file, json).unwrap();
        assert_eq!(ImageSpec::load(&json_file).unwrap(), ImageSpec::load(&toml_file).unwrap());
        std::fs::write(&json_file, "{\"entrypoint\": [],\n \"entrypont\": []}").unwrap();
        let err = format!("{:#}", ImageSpec::load(&json_file).unwrap_err());
        assert!(err.contains("spec") && err.contains("unknown field `entrypont`") && err.contains("line 2"), "{err}");
        std::fs::write(&json_file, r#"{"dirs": [{"path": "/data", "mode": 493}]}"#).unwrap();
        let err = format!("{:#}", ImageSpec::load(&json_file).unwrap_err());
        assert!(err.contains("string of octal digits"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_paths_are_refused() {
        let err = toml::from_str::<ImageSpec>("entrypont = []").unwrap_err().to_string();
        assert!(err.contains("entrypont") && err.contains("line 1"), "{err}");
        let spec: ImageSpec = toml::from_str("[[dirs]]\npath = \"/nix/store/x\"").unwrap();
        assert!(spec.validate().is_err());
        let err = toml::from_str::<ImageSpec>("[[dirs]]\npath = \"/data\"\nmode = 755").unwrap_err().to_string();
        assert!(err.contains("string of octal digits"), "{err}");
        let spec: ImageSpec = toml::from_str("[[dirs]]\npath = \"/a/../b\"").unwrap();
        assert!(spec.validate().is_err());
    }
}
