//! `build --from IMAGE`: an image to build on (a distro base with a shell, NVIDIA's CUDA runtime
//! base, a company base image).
//!
//! The base's layers come first, taken by digest as they are: never re-tarred or re-compressed.
//! Writers get their bytes through [`Staged`] (in place for an `oci:` base, fetched once
//! otherwise), a registry destination skips or mounts them, and a docker-archive, whose layers
//! are uncompressed, gets each decompressed once ([`Base::uncompressed_layer`]). The base's
//! config is inherited by [`crate::image::config`]; its `/etc/passwd` and `/etc/group` are read
//! here ([`Base::accounts`]) when the image spec adds users or groups, so both can be merged.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use oci_spec::image::ImageConfiguration;

use crate::atomic::{AtomicFile, FILE_MODE, write_then_commit};
use crate::blob::{BlobInfo, Compression, Digest, HashWriter};
use crate::image::{ANNOTATION_STORE_PATHS, LayerDesc};
use crate::inspect::{LenientEnd, normalise, read_layer_verified};
use crate::platform::Platform;
use crate::transport::ImageRef;
use crate::transport::source::SourceImage;

/// The layer group of a base's layers (in annotations, `inspect` and `diff`).
pub const BASE_GROUP: &str = "base";

/// The base image, opened for reading.
pub struct Base {
    /// The reference as given (`oci:/tmp/base:1`), for messages.
    pub reference: String,
    /// How the manifest names it (`org.opencontainers.image.base.name`), when it has a name that
    /// means something elsewhere: `HOST/REPO:TAG` for a registry, an archive's image reference.
    /// A local path never enters the image: the same base at another path gives the same digest.
    pub name: Option<String>,
    pub source: SourceImage,
}

impl std::fmt::Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Base")
            .field("reference", &self.reference)
            .field("manifest", &self.source.manifest_digest)
            .finish()
    }
}

/// A base's `/etc/passwd` and `/etc/group`, as its layers leave them (`None`: absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// What the customisation layer must know of a `--from` base ([`crate::image::ImageSpec::layer_entries_for`]).
#[derive(Debug, Clone, Copy)]
pub struct OnBase<'a> {
    /// Names the base in errors.
    pub reference: &'a str,
    /// Its `/etc/passwd` and `/etc/group`, read when the image spec adds users or groups.
    pub accounts: Option<&'a Accounts>,
}

impl Base {
    /// Opens `r` (from an image index, its manifest for `platform`) and checks its platform is
    /// the image's (a variant, when both name one, included).
    pub fn open(r: &ImageRef, platform: &Platform) -> Result<Self> {
        let source = SourceImage::open_platform(r, platform)?;
        let actual = Platform {
            os: source.config.os().to_string(),
            architecture: source.config.architecture().to_string(),
            variant: source.config.variant().clone().filter(|v| !v.is_empty()),
        };
        if !platform.matches(&actual)
            || (actual.variant.is_some() && platform.variant.is_some() && actual.variant != platform.variant)
        {
            bail!(
                "the base image {r} is {actual}, the image being built is {platform}: pick the base's {platform} \
                 image, or set `architecture` (and `variant`) in the image spec"
            );
        }
        if source.config.rootfs().diff_ids().len() != source.layers.len() {
            bail!(
                "the base image {r} has {} layers but its config lists {} diff_ids",
                source.layers.len(),
                source.config.rootfs().diff_ids().len()
            );
        }
        let name = match r {
            ImageRef::Registry(reg) => Some(reg.to_string().trim_start_matches("docker://").to_owned()),
            ImageRef::OciArchive { reference, .. } | ImageRef::DockerArchive { reference, .. } => reference.clone(),
            ImageRef::OciDir { .. } | ImageRef::Stdout => None,
        };
        Ok(Self { reference: r.to_string(), name, source })
    }

    pub fn config(&self) -> &ImageConfiguration {
        &self.source.config
    }

    pub fn manifest_digest(&self) -> &Digest {
        &self.source.manifest_digest
    }

    pub fn layer_count(&self) -> usize {
        self.source.layers.len()
    }

    /// The base's layers as the new image lists them: same blobs, group [`BASE_GROUP`], store
    /// paths kept when the base says which it holds (a base nixoci built), Docker media types
    /// given their OCI names (the same bytes).
    pub fn layers(&self) -> Result<Vec<LayerDesc>> {
        let diff_ids = self.source.config.rootfs().diff_ids();
        self.source
            .layers
            .iter()
            .zip(diff_ids)
            .enumerate()
            .map(|(i, (l, diff_id))| {
                let media_type = oci_layer_type(&l.media_type).ok_or_else(|| {
                    anyhow!(
                        "layer {} of the base image {} has media type {}, which nixoci cannot carry",
                        i + 1,
                        self.reference,
                        l.media_type
                    )
                })?;
                let paths = match l.annotations.get(ANNOTATION_STORE_PATHS) {
                    Some(v) => v
                        .lines()
                        .map(|p| Ok(crate::closure::StorePath::parse(p)?))
                        .collect::<Result<Vec<_>>>()
                        .with_context(|| {
                            format!("layer {} of the base image {}: {ANNOTATION_STORE_PATHS}", i + 1, self.reference)
                        })?,
                    None => Vec::new(),
                };
                Ok(LayerDesc {
                    blob: BlobInfo {
                        digest: l.digest.clone(),
                        size: l.size,
                        diff_id: diff_id
                            .parse()
                            .with_context(|| format!("the base image {}'s config", self.reference))?,
                        uncompressed_size: 0,
                        media_type: media_type.to_owned(),
                        // The blob is the base's, byte for byte: its zstd:chunked TOC stays valid.
                        annotations: crate::chunked::blob_annotations(&l.annotations),
                    },
                    group: BASE_GROUP.to_owned(),
                    paths,
                })
            })
            .collect()
    }

    /// `/etc/passwd` and `/etc/group` as the base's layers leave them: the last layer writing a
    /// file wins, whiteouts remove it. Reads every layer's tar (decompressing it), so it is only
    /// asked when the image spec adds users or groups.
    pub fn accounts(&self) -> Result<Accounts> {
        let mut files: BTreeMap<&str, Option<String>> = BTreeMap::new();
        for i in 0..self.source.layers.len() {
            read_layer_verified(&self.source, i, |tar| {
                // Tars of other tools may lack their end blocks: read them as `inspect` does.
                let mut archive = tar::Archive::new(LenientEnd::new(tar));
                for entry in archive.entries()? {
                    let mut entry = entry?;
                    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                    let path = normalise(&raw);
                    match path {
                        "etc/.wh..wh..opq" => files.clear(),
                        "etc/.wh.passwd" => drop(files.insert("passwd", None)),
                        "etc/.wh.group" => drop(files.insert("group", None)),
                        ".wh.etc" => files.clear(),
                        "etc/passwd" | "etc/group" => {
                            let name = if path == "etc/passwd" { "passwd" } else { "group" };
                            let mut text = String::new();
                            entry.read_to_string(&mut text).with_context(|| format!("reading /{path}"))?;
                            files.insert(name, Some(text));
                        }
                        _ => {}
                    }
                }
                Ok(())
            })
            .with_context(|| format!("the base image {}", self.reference))?;
        }
        Ok(Accounts { passwd: files.remove("passwd").flatten(), group: files.remove("group").flatten() })
    }

    /// Layer `i` as an uncompressed tar file, for a docker-archive: the blob itself when it is
    /// uncompressed and on disk, else decompressed once into `dir` (its diff_id checked).
    pub fn uncompressed_layer(&self, i: usize, dir: &Path) -> Result<(PathBuf, u64)> {
        let l = &self.source.layers[i];
        let diff_id: Digest = self.source.config.rootfs().diff_ids()[i].parse()?;
        if oci_layer_type(&l.media_type) == Some(Compression::None.media_type().to_string().as_str())
            && let Some(p) = self.source.blob_file(&l.digest)
        {
            return Ok((p, l.size));
        }
        let dest = dir.join(format!("{}.tar", diff_id.hex()));
        if let Ok(m) = std::fs::metadata(&dest) {
            return Ok((dest, m.len()));
        }
        let what = || format!("decompressing layer {} of the base image {}", i + 1, self.reference);
        let size = write_then_commit(AtomicFile::new_in(dir)?, &dest, FILE_MODE, |w| {
            let mut hashed = HashWriter::new(w);
            std::io::copy(&mut self.source.open_layer_tar(i)?, &mut hashed).with_context(what)?;
            let (_, got, size) = hashed.finish();
            if got != diff_id {
                bail!("{}: its tar hashes to {got}, its config says {diff_id}", what());
            }
            Ok(size)
        })?;
        Ok((dest, size))
    }
}

/// A base in a repository of the same registry as a destination is mounted from there, not
/// uploaded (unless `--mount-from` already names a repository).
pub fn mount_from_base(outputs: Vec<ImageRef>, from: Option<&ImageRef>) -> Vec<ImageRef> {
    let Some(ImageRef::Registry(base)) = from else { return outputs };
    outputs
        .into_iter()
        .map(|o| match o {
            ImageRef::Registry(r) if r.host == base.host && r.options.mount_from.is_none() => {
                let options = crate::transport::registry::RegistryOptions {
                    mount_from: Some(base.repo.clone()),
                    ..(*r.options).clone()
                };
                ImageRef::Registry(r.with_options(std::sync::Arc::new(options)))
            }
            other => other,
        })
        .collect()
}

/// The OCI media type for a layer media type we can carry (Docker's names for the same bytes
/// are translated); `None` for foreign or unknown layers.
fn oci_layer_type(media_type: &str) -> Option<&'static str> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.oci.image.layer.v1.tar+zstd" => "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
            "application/vnd.oci.image.layer.v1.tar"
        }
        _ => return None,
    })
}

/// Merges the image spec's accounts file (`ours`: `name:x:id:…` lines) into the base's: the
/// base's lines are kept as they are, ours are added after them. An account of ours with the
/// name and id of one of the base's is that account (the base's line stays); one that shares
/// only the name or only the id clashes: an error naming both.
/// `kind` is `user`/`uid` or `group`/`gid`; `file` is `/etc/passwd` or `/etc/group`.
pub fn merge_accounts(base: &str, ours: &str, kind: (&str, &str), file: &str, base_name: &str) -> Result<String> {
    let fields = |line: &str| -> Option<(String, String)> {
        let mut f = line.split(':');
        let name = f.next()?.to_owned();
        let id = f.nth(1)?.to_owned();
        Some((name, id))
    };
    let theirs: Vec<(&str, (String, String))> = base
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| Some((l, fields(l)?)))
        .collect();
    let mut out = base.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for line in ours.lines().filter(|l| !l.is_empty()) {
        let Some((name, id)) = fields(line) else { continue };
        match theirs.iter().find(|(_, (n, i))| *n == name || *i == id) {
            // The same account (name and id) declared again: the base's line stays.
            Some((_, (n, i))) if *n == name && *i == id => {}
            Some((_, (n, i))) => bail!(
                "{} {name} ({} {id}) of the image spec clashes with the base image's {} {n} ({} {i}) in {file} of {base_name}",
                kind.0,
                kind.1,
                kind.0,
                kind.1
            ),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_merge_keeps_the_base_and_adds_ours() {
        let base = "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh";
        let ours = "root:x:0:0:root:/root:/sbin/nologin\napp:x:2000:2000::/var/empty:/sbin/nologin\n";
        let merged = merge_accounts(base, ours, ("user", "uid"), "/etc/passwd", "oci:base").unwrap();
        assert_eq!(
            merged,
            "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\napp:x:2000:2000::/var/empty:/sbin/nologin\n"
        );
    }

    #[test]
    fn accounts_clash_by_name_or_id_names_both() {
        let base = "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n";
        let err = merge_accounts(base, "app:x:1000:1000:::\n", ("user", "uid"), "/etc/passwd", "oci:base").unwrap_err();
        assert_eq!(
            err.to_string(),
            "user app (uid 1000) of the image spec clashes with the base image's user bob (uid 1000) in /etc/passwd of oci:base"
        );
        let err = merge_accounts("wheel:x:10:\n", "wheel:x:11:app\n", ("group", "gid"), "/etc/group", "b").unwrap_err();
        assert!(
            err.to_string()
                .contains("group wheel (gid 11) of the image spec clashes with the base image's group wheel (gid 10)"),
            "{err}"
        );
    }

    #[test]
    fn docker_media_types_get_oci_names() {
        assert_eq!(
            oci_layer_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some("application/vnd.oci.image.layer.v1.tar+gzip")
        );
        assert_eq!(oci_layer_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"), None);
    }
}
