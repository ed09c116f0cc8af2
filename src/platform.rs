//! Platforms (`os/architecture[/variant]`, the OCI spelling) and the build-time check that the
//! binaries of an image are for the platform it declares.
//!
//! The check is cheap: while a store path is listed, each regular file of at least 20 bytes is
//! opened and its first 20 bytes read; only files starting with `\x7fELF` are looked at further,
//! and of those only `e_machine` (bytes 18–19, in the byte order `EI_DATA` names). An ELF file whose
//! machine is not the declared architecture's fails the build before anything is written, naming
//! the store path and the file. Architectures this table does not know are not checked.

use std::fmt;
use std::fs::File;
use std::io::Read;

use anyhow::{Context, Result, bail};
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

/// Checks every ELF file among `entries` (the listing of `store_path`) against `architecture`.
/// Unknown architectures are not checked.
pub fn check_elf(entries: &[Entry], store_path: &StorePath, architecture: &str) -> Result<()> {
    let Some(want) = elf_machine(architecture) else {
        return Ok(());
    };
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
            Some(m) if m != want && m != 0 => bail!(
                "/{} (in store path {store_path}) is an ELF file for {}, but the image's architecture is {architecture}: \
                 build the image for the binaries' platform (set `architecture` in the image spec) or build the \
                 closure for {architecture}",
                e.path.trim_start_matches('/'),
                describe_machine(m)
            ),
            _ => {}
        }
    }
    Ok(())
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
    }
}
