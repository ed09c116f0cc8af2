//! Image references in skopeo's spelling, and the writers for each destination.
//!
//! `oci:DIR[:TAG]`, `oci-archive:FILE[:REF]`, `docker-archive:FILE[:REF]`,
//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` (a registry, [`registry`]), and `-` (a
//! docker-archive on stdout). Every file destination is written to a temporary sibling and renamed
//! into place, so a failed or killed build leaves it as it was.

pub mod archive;
pub mod oci_dir;
pub mod registry;
pub mod source;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};

/// Where an image is written or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    OciDir {
        dir: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    /// A docker-archive on stdout, for `| podman load`.
    Stdout,
    /// `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`.
    Registry(registry::RegistryRef),
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self> {
        if s == "-" {
            return Ok(ImageRef::Stdout);
        }
        let Some((transport, rest)) = s.split_once(':') else {
            bail!(
                "{s:?} is not an image reference: use oci:DIR[:TAG], oci-archive:FILE[:REF], docker-archive:FILE[:REF], docker://HOST/REPO[:TAG] or - (stdout)"
            );
        };
        if rest.is_empty() {
            bail!("{s:?}: missing the path after {transport}:");
        }
        Ok(match transport {
            "oci" => {
                let (dir, tag) = split_ref(rest, true);
                if let Some(t) = &tag {
                    check_tag(s, t)?;
                }
                ImageRef::OciDir { dir, tag }
            }
            "oci-archive" => {
                let (file, reference) = split_ref(rest, false);
                ImageRef::OciArchive { file, reference }
            }
            "docker-archive" => {
                let (file, reference) = split_ref(rest, false);
                ImageRef::DockerArchive { file, reference }
            }
            "docker" => ImageRef::Registry(registry::RegistryRef::parse(rest)?),
            other => {
                bail!("{s:?}: unknown transport {other:?} (use oci:, oci-archive:, docker-archive:, docker:// or -)")
            }
        })
    }

    /// The file or directory this reference writes, if any.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            ImageRef::OciDir { dir, .. } => Some(dir),
            ImageRef::OciArchive { file, .. } | ImageRef::DockerArchive { file, .. } => Some(file),
            ImageRef::Stdout | ImageRef::Registry(_) => None,
        }
    }

    /// The tag this reference names: an `oci:` tag, a registry tag, or the tag of an archive's
    /// reference (`file.tar:localhost/app:1.0` → `1.0`).
    pub fn tag(&self) -> Option<&str> {
        match self {
            ImageRef::OciDir { tag, .. } => tag.as_deref(),
            ImageRef::Registry(r) => r.tag.as_deref(),
            ImageRef::OciArchive { reference, .. } | ImageRef::DockerArchive { reference, .. } => {
                reference.as_deref().and_then(tag_of)
            }
            ImageRef::Stdout => None,
        }
    }

    /// Gives a registry reference the options (credentials, TLS, retries) to reach it with;
    /// other references are returned as they are.
    pub fn with_registry_options(self, options: &Arc<registry::RegistryOptions>) -> Self {
        match self {
            ImageRef::Registry(r) => ImageRef::Registry(r.with_options(options.clone())),
            other => other,
        }
    }
}

/// The tag of an image name: `localhost/app:1.0` → `1.0`; none for `app`, `host:5000/app` or a
/// digest reference (`app@sha256:…`).
pub fn tag_of(name: &str) -> Option<&str> {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains('@') {
        return None;
    }
    last.split_once(':').map(|(_, t)| t)
}

/// `app` → `app:latest`; a name with a tag or a digest is returned as it is.
pub fn with_default_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if tag_of(name).is_some() || last.contains('@') { name.to_owned() } else { format!("{name}:latest") }
}

/// Splits `PATH[:REF]`. For a tag (oci:), what follows the last colon must look like a tag; for a
/// reference (archives), it is everything after the first colon (`file.tar:localhost/app:1.0`).
fn split_ref(rest: &str, tag_only: bool) -> (PathBuf, Option<String>) {
    let split = if tag_only { rest.rsplit_once(':') } else { rest.split_once(':') };
    // A tag never holds '/': `oci:a:b/c` is the directory `a:b/c`.
    let is_ref = |path: &str, r: &str| !(path.is_empty() || r.is_empty() || tag_only && r.contains('/'));
    match split {
        Some((path, r)) if is_ref(path, r) => (PathBuf::from(path), Some(r.to_owned())),
        _ => (PathBuf::from(rest), None),
    }
}

fn check_tag(s: &str, tag: &str) -> Result<()> {
    let ok = tag.len() <= 128
        && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        bail!("{s:?}: {tag:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})");
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with = |f: &mut fmt::Formatter<'_>, t: &str, p: &Path, r: &Option<String>| match r {
            Some(r) => write!(f, "{t}:{}:{r}", p.display()),
            None => write!(f, "{t}:{}", p.display()),
        };
        match self {
            ImageRef::OciDir { dir, tag } => with(f, "oci", dir, tag),
            ImageRef::OciArchive { file, reference } => with(f, "oci-archive", file, reference),
            ImageRef::DockerArchive { file, reference } => with(f, "docker-archive", file, reference),
            ImageRef::Stdout => f.write_str("-"),
            ImageRef::Registry(r) => r.fmt(f),
        }
    }
}

/// Where blobs are staged for writing `outputs`: beside the first local destination (the same
/// filesystem, so blobs can be hard-linked into an `oci:` layout; `.` for a bare file name), else
/// the temporary directory (every destination is a registry).
pub fn staging_parent<'a>(outputs: impl IntoIterator<Item = &'a ImageRef>) -> PathBuf {
    match outputs.into_iter().find_map(ImageRef::local_path) {
        Some(p) => match p.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        },
        None => std::env::temp_dir(),
    }
}

/// Fails unless files can be made in `dir` (or, when it does not exist yet, in its nearest
/// existing ancestor, where it would be created). Creates nothing that stays behind.
pub(crate) fn check_writable(dir: &Path, dest: &ImageRef) -> Result<()> {
    let mut at = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    while !at.exists() {
        at = match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    if !at.is_dir() {
        bail!("cannot write {dest}: {} is not a directory", at.display());
    }
    tempfile::tempfile_in(at)
        .map_err(|e| anyhow::anyhow!("cannot write {dest}: {} is not writable: {e}", at.display()))?;
    Ok(())
}

/// The directory that holds `dest`, created if missing.
pub(crate) fn parent_dir(dest: &Path) -> Result<PathBuf> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| anyhow::anyhow!("cannot write {}: creating {}: {e}", dest.display(), parent.display()))?;
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_skopeo_spellings() {
        assert_eq!(
            ImageRef::parse("oci:out:1.4").unwrap(),
            ImageRef::OciDir { dir: "out".into(), tag: Some("1.4".into()) }
        );
        assert_eq!(ImageRef::parse("oci:/a/b").unwrap(), ImageRef::OciDir { dir: "/a/b".into(), tag: None });
        assert_eq!(
            ImageRef::parse("oci-archive:x.tar:localhost/app:1").unwrap(),
            ImageRef::OciArchive { file: "x.tar".into(), reference: Some("localhost/app:1".into()) }
        );
        assert_eq!(
            ImageRef::parse("docker-archive:x.tar").unwrap(),
            ImageRef::DockerArchive { file: "x.tar".into(), reference: None }
        );
        assert_eq!(ImageRef::parse("-").unwrap(), ImageRef::Stdout);
        assert!(ImageRef::parse("out").is_err());
        assert!(ImageRef::parse("oci:out:bad tag").is_err());
        assert!(ImageRef::parse("ftp:x").is_err());
        let r = ImageRef::parse("docker://127.0.0.1:5000/app:1.4").unwrap();
        assert!(matches!(&r, ImageRef::Registry(x) if x.repo == "app"));
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/app:1.4");
        assert!(ImageRef::parse("docker:app").is_err());
        assert_eq!(ImageRef::parse("oci:out:1.4").unwrap().to_string(), "oci:out:1.4");
    }

    #[test]
    fn tags_of_names_and_references() {
        for (name, tag, tagged) in [
            ("app", None, "app:latest"),
            ("localhost/app:1.0", Some("1.0"), "localhost/app:1.0"),
            ("host:5000/app", None, "host:5000/app:latest"),
            ("host:5000/app:2", Some("2"), "host:5000/app:2"),
            ("app@sha256:abc", None, "app@sha256:abc"),
        ] {
            assert_eq!(tag_of(name), tag, "{name}");
            assert_eq!(with_default_tag(name), tagged, "{name}");
        }
        let tag = |s: &str| ImageRef::parse(s).unwrap().tag().map(str::to_owned);
        assert_eq!(tag("oci:out:1.4").as_deref(), Some("1.4"));
        assert_eq!(tag("oci-archive:x.tar:localhost/app:1").as_deref(), Some("1"));
        assert_eq!(tag("docker-archive:x.tar:app").as_deref(), None);
        assert_eq!(tag("docker://127.0.0.1:5000/app:1.4").as_deref(), Some("1.4"));
        assert_eq!(tag("-"), None);
    }
}
