//! Platforms (`os/architecture[/variant]`, the OCI spelling) and the build-time check that the
//! binaries of an image are for the platform it declares.
//!
//! The check is cheap: while a store path is listed, each regular file of at least 20 bytes is
//! opened and its first 20 bytes read; only files starting with `\x7fELF` are looked at further,
//! and of those only `e_machine` (bytes 18–19, in the byte order `EI_DATA` names). An ELF file whose
//! machine is not the declared architecture's fails the build before anything is written, naming
//! the store path and the file. Architectures this table does not know are not checked; store
//! paths the image spec lists in `foreign_elf` neither.
//!
//! With a layer cache, the ELF machines found in a store path are remembered under
//! `CACHE/elf/<key>` (key: store path + NAR hash, as layer keys), so a rebuild whose layers all
//! come from the cache does not read the first page of every file again.

use std::fmt;
use std::fs::File;
use std::io::Read;

use anyhow::{Context, Result, anyhow, bail};
use oci_spec::image::{Arch, Os, PlatformBuilder};

use crate::closure::StorePath;
use crate::tarball::{Content, Entry, Kind};

/// An image's platform, as in an image config and in an index descriptor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/amd64`, `linux/arm64/v8`, or a bare architecture (`arm64`, os linux).
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let p = match parts.as_slice() {
            [arch] => Platform { os: "linux".into(), architecture: (*arch).into(), variant: None },
            [os, arch] => Platform { os: (*os).into(), architecture: (*arch).into(), variant: None },
            [os, arch, variant] => {
                Platform { os: (*os).into(), architecture: (*arch).into(), variant: Some((*variant).into()) }
            }
            _ => bail!("{s:?} is not a platform: use OS/ARCH or OS/ARCH/VARIANT (e.g. linux/arm64)"),
        };
        if p.os.is_empty() || p.architecture.is_empty() || p.variant.as_deref() == Some("") {
            bail!("{s:?} is not a platform: use OS/ARCH or OS/ARCH/VARIANT (e.g. linux/arm64)");
        }
        Ok(p)
    }

    /// The platform an image config declares.
    pub fn of_config(c: &oci_spec::image::ImageConfiguration) -> Self {
        Platform {
            os: c.os().to_string(),
            architecture: c.architecture().to_string(),
            variant: c.variant().clone().filter(|v| !v.is_empty()),
        }
    }

    /// The platform of an index descriptor (`None` when it has none).
    pub fn of_descriptor(d: &oci_spec::image::Descriptor) -> Option<Self> {
        d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone().filter(|v| !v.is_empty()),
        })
    }

    /// Whether an index entry for `other` serves a request for `self`: same os and architecture,
    /// and the same variant when `self` names one.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }

    pub fn to_oci(&self) -> Result<oci_spec::image::Platform> {
        let mut b = PlatformBuilder::default()
            .architecture(Arch::from(self.architecture.as_str()))
            .os(Os::from(self.os.as_str()));
        if let Some(v) = &self.variant {
            b = b.variant(v.clone());
        }
        Ok(b.build()?)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// ELF `e_machine` values of the OCI architectures (GOARCH spelling).
const MACHINES: [(&str, u16, &str); 7] = [
    ("amd64", 62, "EM_X86_64"),
    ("arm64", 183, "EM_AARCH64"),
    ("arm", 40, "EM_ARM"),
    ("386", 3, "EM_386"),
    ("ppc64le", 21, "EM_PPC64"),
    ("s390x", 22, "EM_S390"),
    ("riscv64", 243, "EM_RISCV"),
];

/// The ELF machine of an OCI architecture, if this table knows it.
pub fn elf_machine(architecture: &str) -> Option<u16> {
    MACHINES.iter().find(|m| m.0 == architecture).map(|m| m.1)
}

/// `arm64 (e_machine 183, EM_AARCH64)`, or just the number for machines outside the table.
fn describe_machine(machine: u16) -> String {
    match MACHINES.iter().find(|m| m.1 == machine) {
        Some((arch, n, name)) => format!("{arch} (e_machine {n}, {name})"),
        None => format!("e_machine {machine}"),
    }
}

/// The `e_machine` of an ELF file from its first 20 bytes; `None` when they are not an ELF header.
pub fn machine_of_header(head: &[u8]) -> Option<u16> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return None;
    }
    let bytes = [head[18], head[19]];
    match head[5] {
        1 => Some(u16::from_le_bytes(bytes)),
        2 => Some(u16::from_be_bytes(bytes)),
        _ => None,
    }
}

/// The ELF check of one build: the declared architecture's machine, and the store paths
/// (`foreign_elf` globs on their names) whose ELF files are not checked.
pub struct ElfCheck {
    architecture: String,
    machine: Option<u16>,
    skip: globset::GlobSet,
    memo: Option<std::path::PathBuf>,
}

impl ElfCheck {
    /// Checks against `architecture` (unknown architectures: nothing is checked), skipping store
    /// paths whose name matches one of `foreign_elf`.
    pub fn new(architecture: &str, foreign_elf: &[String]) -> Result<Self> {
        let mut b = globset::GlobSetBuilder::new();
        for g in foreign_elf {
            b.add(globset::Glob::new(g).with_context(|| format!("foreign_elf: invalid glob {g:?}"))?);
        }
        Ok(Self {
            architecture: architecture.to_owned(),
            machine: elf_machine(architecture),
            skip: b.build().context("foreign_elf")?,
            memo: None,
        })
    }

    /// Remembers each store path's ELF machines in `dir` (keyed by store path and NAR hash).
    pub fn with_memo(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.memo = dir;
        self
    }

    fn memo_file(
        &self,
        store_path: &StorePath,
        nar_hash: Option<&crate::closure::NarHash>,
    ) -> Option<std::path::PathBuf> {
        let dir = self.memo.as_ref()?;
        let key = format!("nixoci-elf-v1\n{store_path}\n{}", nar_hash?.to_hex());
        Some(dir.join(crate::blob::Digest::of(key.as_bytes()).hex()))
    }

    /// As [`check`](Self::check), reading the files only when the memo does not know the
    /// store path (and when it knows a foreign machine there, to name the file).
    pub fn check_memo(
        &self,
        entries: &[Entry],
        store_path: &StorePath,
        nar_hash: Option<&crate::closure::NarHash>,
    ) -> Result<()> {
        let Some(want) = self.machine else {
            return Ok(());
        };
        if self.skip.is_match(store_path.name()) {
            return Ok(());
        }
        let memo = self.memo_file(store_path, nar_hash);
        if let Some(known) = memo.as_ref().and_then(|m| std::fs::read_to_string(m).ok()) {
            let machines: Vec<u16> = known.split_whitespace().filter_map(|m| m.parse().ok()).collect();
            if machines.iter().all(|m| *m == want) {
                return Ok(());
            }
        }
        let machines = machines_of(entries, store_path)?;
        if let Some(m) = memo {
            let text: Vec<String> = machines.iter().map(|(m, _)| m.to_string()).collect();
            let stored = std::fs::create_dir_all(m.parent().unwrap_or(&m))
                .map_err(anyhow::Error::from)
                .and_then(|()| crate::atomic::atomic_write_bytes(&m, text.join(" ").as_bytes()));
            if let Err(e) = stored {
                tracing::debug!("not remembering the ELF machines of {store_path}: {e:#}");
            }
        }
        match machines.into_iter().find(|(m, _)| *m != want) {
            Some((m, file)) => Err(self.mismatch(&file, store_path, m)),
            None => Ok(()),
        }
    }

    /// Checks every ELF file among `entries` (the listing of `store_path`).
    pub fn check(&self, entries: &[Entry], store_path: &StorePath) -> Result<()> {
        self.check_memo(entries, store_path, None)
    }

    fn mismatch(&self, image_path: &str, store_path: &StorePath, machine: u16) -> anyhow::Error {
        let architecture = &self.architecture;
        anyhow!(
            "/{} (in store path {store_path}) is an ELF file for {}, but the image's architecture is \
             {architecture}: build the image for the binaries' platform (set `architecture` in the image \
             spec) or the closure for {architecture}; if the store path is meant to hold foreign binaries, \
             list it in the image spec's `foreign_elf` (e.g. foreign_elf = [\"{}\"])",
            image_path.trim_start_matches('/'),
            describe_machine(machine),
            store_path.name()
        )
    }
}

/// The ELF machines (EM_NONE left out) among `entries`, each with the first file that has it
/// (its path in the image), in order of first appearance.
fn machines_of(entries: &[Entry], store_path: &StorePath) -> Result<Vec<(u16, String)>> {
    let mut found: Vec<(u16, String)> = Vec::new();
    let mut head = [0u8; 20];
    for e in entries {
        let Kind::File { size, content: Content::Disk(file) } = &e.kind else {
            continue;
        };
        if *size < 20 {
            continue;
        }
        let mut f = File::open(file).with_context(|| format!("reading {} (of {store_path})", file.display()))?;
        f.read_exact(&mut head).with_context(|| format!("reading {} (of {store_path})", file.display()))?;
        match machine_of_header(&head) {
            // EM_NONE: no machine (some data files are ELF containers).
            Some(m) if m != 0 && !found.iter().any(|(k, _)| *k == m) => found.push((m, e.path.clone())),
            _ => {}
        }
    }
    Ok(found)
}

/// Checks every ELF file among `entries` (the listing of `store_path`) against `architecture`.
/// Unknown architectures are not checked.
pub fn check_elf(entries: &[Entry], store_path: &StorePath, architecture: &str) -> Result<()> {
    ElfCheck::new(architecture, &[])?.check(entries, store_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(machine: u16, big_endian: bool) -> Vec<u8> {
        let mut h = b"\x7fELF\x02".to_vec();
        h.push(if big_endian { 2 } else { 1 });
        h.resize(18, 0);
        h.extend(if big_endian { machine.to_be_bytes() } else { machine.to_le_bytes() });
        h
    }

    #[test]
    fn machine_from_both_byte_orders() {
        assert_eq!(machine_of_header(&header(183, false)), Some(183));
        assert_eq!(machine_of_header(&header(22, true)), Some(22));
        assert_eq!(machine_of_header(b"#!/bin/sh\necho hello world"), None);
        assert_eq!(machine_of_header(&header(62, false)[..19]), None);
    }

    #[test]
    fn platforms_parse_and_print() {
        assert_eq!(Platform::parse("arm64").unwrap().to_string(), "linux/arm64");
        assert_eq!(Platform::parse("linux/arm/v7").unwrap().to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux/").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
        let want = Platform::parse("linux/arm64").unwrap();
        assert!(want.matches(&Platform::parse("linux/arm64/v8").unwrap()));
        assert!(!Platform::parse("linux/arm64/v8").unwrap().matches(&want));
    }

    #[test]
    fn mislabelled_elf_names_path_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let sp = StorePath::parse("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-busybox-1.35").unwrap();
        let root = dir.path().join(sp.base_name());
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let mut elf = header(183, false);
        elf.resize(64, 0);
        std::fs::write(root.join("bin/busybox"), &elf).unwrap();
        std::fs::write(root.join("bin/script"), b"#!/bin/sh\nexec busybox sh \"$@\"\n").unwrap();
        let mut entries = Vec::new();
        crate::tarball::list_store_path(dir.path(), &sp, &mut entries).unwrap();
        check_elf(&entries, &sp, "arm64").unwrap();
        check_elf(&entries, &sp, "mips64le").unwrap();
        let err = check_elf(&entries, &sp, "amd64").unwrap_err().to_string();
        assert!(err.contains(&format!("{sp}/bin/busybox (in store path {sp}) is an ELF file")), "{err}");
        assert!(err.contains("arm64 (e_machine 183, EM_AARCH64)"), "{err}");
        assert!(err.contains("architecture is amd64"), "{err}");
        assert!(err.contains(r#"foreign_elf = ["busybox-1.35"]"#), "{err}");
        ElfCheck::new("amd64", &["busybox-*".to_owned()]).unwrap().check(&entries, &sp).unwrap();
        assert!(ElfCheck::new("amd64", &["busybox-[".to_owned()]).is_err());

        // The memo: the machines are remembered per store path and NAR hash; a known-good store
        // path is not read again, a known-bad one is (to name the file).
        let memo = dir.path().join("memo");
        let nar = crate::closure::NarHash::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let arm = ElfCheck::new("arm64", &[]).unwrap().with_memo(Some(memo.clone()));
        arm.check_memo(&entries, &sp, Some(&nar)).unwrap();
        let files: Vec<_> = std::fs::read_dir(&memo).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1);
        assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), "183");
        std::fs::remove_file(root.join("bin/busybox")).unwrap();
        arm.check_memo(&entries, &sp, Some(&nar)).unwrap(); // from the memo: the file is not opened
        assert!(arm.check_memo(&entries, &sp, None).is_err(), "without a NAR hash the files are read");
        std::fs::write(root.join("bin/busybox"), &elf).unwrap();
        let amd = ElfCheck::new("amd64", &[]).unwrap().with_memo(Some(memo));
        let err = amd.check_memo(&entries, &sp, Some(&nar)).unwrap_err().to_string();
        assert!(err.contains("bin/busybox (in store path"), "{err}");
    }
}
