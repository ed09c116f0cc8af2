//! SBOMs of a closure: SPDX 2.3 JSON ([`spdx`]) and CycloneDX 1.6 JSON ([`cyclonedx`]).
//!
//! **Packages.** Every store path is a package: its name and version split as Nix's
//! `parseDrvName` does ([`crate::diff::drv_name`]: the name ends at the first `-` followed by a
//! non-letter), its NAR hash as a SHA-256 checksum, its references as dependencies, and the
//! layer(s) holding it (digests) as an annotation/property. When the store tree can be read,
//! each store path's own `lib/python3*/site-packages/*.dist-info/METADATA` (real directories
//! and a regular file: a Python environment's symlinks into other store paths are not counted
//! twice) adds a Python package contained in the store path: `Name`, `Version`, and the license
//! from `License-Expression`, `License` or the `License ::` classifiers.
//!
//! **purls.** Python packages get `pkg:pypi/NAME@VERSION`, NAME normalised as PEP 503 says
//! (lowercase, runs of `-_.` → `-`), which is what the purl spec asks for pypi and what
//! syft, grype and trivy match vulnerabilities on. Store paths get
//! `pkg:nix/NAME@VERSION?outputhash=HASH` (HASH: the 32-character hash part of the store path):
//! `nix` is the type syft's Nix cataloger emits and grype and osv-scalibr map to Nix packages
//! (a `pkg:generic` purl would say nothing of where the package comes from, and scanners match
//! nothing on it either); the `outputhash` qualifier is the one syft uses, so two builds of the
//! same name and version stay apart. Neither spec nor scanners know a NAR hash: it goes in the
//! checksum fields, which both formats have.
//!
//! **Determinism.** Packages sorted by store path; the creation time is the build's epoch
//! (`SOURCE_DATE_EPOCH` or 1, never the clock); the SPDX `documentNamespace` and the CycloneDX
//! `serialNumber` are derived from the SHA-256 of the document written without them; the JSON
//! is canonical (sorted keys, no whitespace). The same closure gives the same bytes.

pub mod cyclonedx;
pub mod spdx;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};

use crate::blob::Digest;
use crate::closure::{Closure, NarHash, StorePath};

/// Artifact type (and blob media type) of an SPDX JSON SBOM.
pub const SPDX_MEDIA_TYPE: &str = "application/spdx+json";
/// Artifact type (and blob media type) of a CycloneDX JSON SBOM.
pub const CYCLONEDX_MEDIA_TYPE: &str = "application/vnd.cyclonedx+json";

/// The tool named as the SBOMs' creator.
pub fn tool_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// An SBOM format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    Spdx,
    CycloneDx,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Spdx, Format::CycloneDx];

    /// The OCI `artifactType` and blob media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Spdx => SPDX_MEDIA_TYPE,
            Format::CycloneDx => CYCLONEDX_MEDIA_TYPE,
        }
    }

    pub fn from_media_type(mt: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.media_type() == mt)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Spdx => "spdx",
            Format::CycloneDx => "cyclonedx",
        }
    }
}

impl FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "spdx" | "spdx-json" => Ok(Format::Spdx),
            "cyclonedx" | "cdx" | "cyclonedx-json" => Ok(Format::CycloneDx),
            other => bail!("unknown SBOM format {other:?} (expected spdx or cyclonedx)"),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Python distribution found in a store path (`*.dist-info/METADATA`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PythonDist {
    /// `Name` as written.
    pub name: String,
    pub version: String,
    /// An SPDX license expression made only of known identifiers, when the metadata gives one.
    pub license_expression: Option<String>,
    /// The license as the metadata writes it (`License-Expression`, else `License`, else the
    /// `License ::` classifiers joined by `; `).
    pub license_text: Option<String>,
    /// `lib/python3.11/site-packages/foo-1.0.dist-info`, relative to the store path.
    pub dist_info: String,
}

impl PythonDist {
    /// The PEP 503 normalised name: lowercase, runs of `-`, `_`, `.` become one `-`.
    pub fn normalized_name(&self) -> String {
        pep503(&self.name)
    }

    /// `pkg:pypi/NAME@VERSION`.
    pub fn purl(&self) -> String {
        format!("pkg:pypi/{}@{}", purl_encode(&self.normalized_name()), purl_encode(&self.version))
    }
}

/// One store path as a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub path: StorePath,
    /// Nix's `parseDrvName` of the store path name.
    pub name: String,
    pub version: Option<String>,
    pub nar_hash: Option<NarHash>,
    pub nar_size: Option<u64>,
    /// The store paths it refers to (itself left out).
    pub depends_on: BTreeSet<StorePath>,
    /// The layers holding it, by digest (several when a big path was split).
    pub layers: Vec<Digest>,
    pub python: Vec<PythonDist>,
}

impl Package {
    /// `pkg:nix/NAME@VERSION?outputhash=HASH`.
    pub fn purl(&self) -> String {
        let mut p = format!("pkg:nix/{}", purl_encode(&self.name));
        if let Some(v) = &self.version {
            p.push('@');
            p.push_str(&purl_encode(v));
        }
        p.push_str("?outputhash=");
        p.push_str(self.path.hash_part());
        p
    }
}

/// What an SBOM describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sbom {
    /// The document's name: the image reference, or the closure's roots.
    pub name: String,
    /// Creation time, seconds since 1970.
    pub epoch: u64,
    /// The closure's roots (paths nothing else refers to): what the document describes.
    pub roots: Vec<StorePath>,
    /// Sorted by store path.
    pub packages: Vec<Package>,
}

/// Where the inputs of [`Sbom::collect`] come from.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions<'a> {
    /// The directory holding the store path directories, to find Python dist-info; `None`:
    /// no Python packages are looked for.
    pub store_root: Option<&'a Path>,
    /// Which layers hold each store path.
    pub layers: BTreeMap<StorePath, Vec<Digest>>,
}

impl Sbom {
    /// The SBOM of `closure`.
    pub fn collect(name: &str, closure: &Closure, epoch: u64, opts: &CollectOptions) -> Result<Self> {
        let mut packages = Vec::with_capacity(closure.len());
        for info in closure.iter() {
            let (n, v) = crate::diff::drv_name(info.path.name());
            let python = match opts.store_root {
                Some(root) => python_dists(&root.join(info.path.base_name()))
                    .with_context(|| format!("looking for Python packages in {}", info.path))?,
                None => Vec::new(),
            };
            packages.push(Package {
                path: info.path.clone(),
                name: n.to_owned(),
                version: v.map(str::to_owned),
                nar_hash: info.nar_hash,
                nar_size: info.nar_size,
                depends_on: info.references.clone(),
                layers: opts.layers.get(&info.path).cloned().unwrap_or_default(),
                python,
            });
        }
        let roots = closure.roots().into_iter().cloned().collect();
        Ok(Self { name: name.to_owned(), epoch, roots, packages })
    }

    /// The document in `format`, as its final bytes.
    pub fn render(&self, format: Format) -> Result<Vec<u8>> {
        match format {
            Format::Spdx => spdx::render(self),
            Format::CycloneDx => cyclonedx::render(self),
        }
    }
}

/// The document name of a closure's SBOM: its roots' names (the same whichever command made it).
pub fn document_name(closure: &Closure) -> String {
    closure.roots().iter().map(|r| r.name()).collect::<Vec<_>>().join(" ")
}

/// The file name an SBOM artifact gives its document.
pub fn file_name(format: Format) -> &'static str {
    match format {
        Format::Spdx => "sbom.spdx.json",
        Format::CycloneDx => "sbom.cdx.json",
    }
}

/// Attaches `sbom` in each of `formats` to manifest `subject` of `dest` (an `oci:` layout or a
/// `docker://` repository) as OCI 1.1 referrers; returns the artifact digests.
/// An SBOM attached by `build --sbom`, as `--json` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachedSbom {
    pub destination: String,
    pub format: String,
    /// The artifact manifest's digest.
    pub digest: Digest,
}

/// `build --sbom`: the closure's SBOMs, with the layer of each store path, attached to each
/// output of the build that holds referrers (`oci:`, `docker://`); the others are noted.
pub fn attach_to_outputs(
    closure: &Closure,
    report: &crate::build::BuildReport,
    opts: &crate::build::BuildOptions,
    formats: &[Format],
    reporter: &dyn crate::progress::Reporter,
) -> Result<Vec<AttachedSbom>> {
    use crate::transport::ImageRef;
    let layers = layers_by_path(report.layers.iter().map(|l| (&l.blob.digest, l.paths.as_slice())));
    let collect = CollectOptions { store_root: Some(&opts.store_root), layers };
    let doc = Sbom::collect(&document_name(closure), closure, opts.epoch, &collect)?;
    let mut attached = Vec::new();
    for out in &opts.outputs {
        match out {
            ImageRef::OciDir { .. } | ImageRef::Registry(_) => {
                let digests = attach(&doc, formats, out, &report.manifest_digest, reporter)?;
                for (f, d) in formats.iter().zip(digests) {
                    reporter.note(&format!("{f} SBOM attached to {out} as {d}"));
                    attached.push(AttachedSbom { destination: out.to_string(), format: f.to_string(), digest: d });
                }
            }
            other => reporter.note(&format!(
                "note: {other} holds no referrers: no SBOM attached there (write one with `nixoci sbom --closure …`)"
            )),
        }
    }
    Ok(attached)
}

pub fn attach(
    sbom: &Sbom,
    formats: &[Format],
    dest: &crate::transport::ImageRef,
    subject: &Digest,
    reporter: &dyn crate::progress::Reporter,
) -> Result<Vec<Digest>> {
    let store = crate::referrers::Store::open(dest, true)?.ok_or_else(|| {
        anyhow::anyhow!("cannot attach an SBOM to {dest}: only oci: layouts and docker:// registries hold referrers")
    })?;
    let subject = store.subject(subject)?;
    let mut out = Vec::new();
    for &f in formats {
        let doc = sbom.render(f)?;
        let artifact = crate::referrers::Artifact::new(f.media_type(), &doc, file_name(f), &subject, sbom.epoch)?;
        store.attach(&artifact, reporter).with_context(|| format!("attaching the {f} SBOM to {dest}"))?;
        out.push(artifact.manifest.digest.clone());
    }
    Ok(out)
}

/// The layers of a build or an image by store path: `(layer digest, store paths in it)`.
pub fn layers_by_path<'a>(
    layers: impl IntoIterator<Item = (&'a Digest, &'a [StorePath])>,
) -> BTreeMap<StorePath, Vec<Digest>> {
    let mut map: BTreeMap<StorePath, Vec<Digest>> = BTreeMap::new();
    for (digest, paths) in layers {
        for p in paths {
            let v = map.entry(p.clone()).or_default();
            if !v.contains(digest) {
                v.push(digest.clone());
            }
        }
    }
    map
}

/// PEP 503: lowercase, runs of `-`, `_`, `.` become one `-`.
pub fn pep503(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Percent-encodes everything but the purl spec's unreserved characters (`A-Za-z0-9.-_~`).
pub fn purl_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The dist-infos directly inside `store_dir`: `lib/python3*/site-packages/*.dist-info/METADATA`,
/// every component a real directory and METADATA a regular file.
pub fn python_dists(store_dir: &Path) -> Result<Vec<PythonDist>> {
    match fs::symlink_metadata(store_dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{} does not exist (is --store-root right?)", store_dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", store_dir.display())),
    }
    let mut out = Vec::new();
    for py in real_dirs(&store_dir.join("lib"))?.into_iter().filter(|n| n.starts_with("python3")) {
        let rel_sp = format!("lib/{py}/site-packages");
        let sp = store_dir.join(&rel_sp);
        for d in real_dirs(&sp)?.into_iter().filter(|n| n.ends_with(".dist-info")) {
            let meta = sp.join(&d).join("METADATA");
            let Ok(m) = fs::symlink_metadata(&meta) else { continue };
            if !m.file_type().is_file() {
                continue;
            }
            let text = fs::read(&meta).with_context(|| format!("reading {}", meta.display()))?;
            let text = String::from_utf8_lossy(&text);
            if let Some(dist) = parse_metadata(&text, &format!("{rel_sp}/{d}")) {
                out.push(dist);
            } else {
                tracing::warn!("{}: no Name or Version; not listed as a Python package", meta.display());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Sorted names of the real (not symlinked) directories in `dir`; none when it is missing or
/// not a real directory.
fn real_dirs(dir: &Path) -> Result<Vec<String>> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => {}
        _ => return Ok(Vec::new()),
    }
    let mut names = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        if e.file_type().with_context(|| format!("reading {}", e.path().display()))?.is_dir() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Parses the header block of a core metadata file (RFC 822 style; continuation lines start
/// with whitespace; the body after the first blank line is the description).
pub fn parse_metadata(text: &str, dist_info: &str) -> Option<PythonDist> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let first = |k: &str| fields.iter().find(|(f, v)| f == k && !v.is_empty()).map(|(_, v)| v.clone());
    let name = first("name")?;
    let version = first("version")?;
    let classifiers: Vec<String> = fields
        .iter()
        .filter(|(f, _)| f == "classifier")
        .filter_map(|(_, v)| v.strip_prefix("License ::").map(|c| c.trim().to_owned()))
        .collect();
    let expression = first("license-expression");
    let license = first("license").filter(|l| !l.eq_ignore_ascii_case("UNKNOWN"));
    let license_expression = expression
        .as_deref()
        .and_then(spdx_expression)
        .or_else(|| license.as_deref().and_then(spdx_expression))
        .or_else(|| {
            let ids: BTreeSet<&str> = classifiers.iter().filter_map(|c| classifier_license(c)).collect();
            (!ids.is_empty() && ids.len() == classifiers.len())
                .then(|| ids.into_iter().collect::<Vec<_>>().join(" AND "))
        });
    let license_text = expression.or(license).or_else(|| (!classifiers.is_empty()).then(|| classifiers.join("; ")));
    Some(PythonDist { name, version, license_expression, license_text, dist_info: dist_info.to_owned() })
}

/// SPDX license identifiers we accept in an expression (the validators reject unknown ones, and
/// free text such as "BSD" or "Apache" names no exact license).
const KNOWN_LICENSES: &[&str] = &[
    "0BSD",
    "AFL-2.1",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "Apache-1.1",
    "Apache-2.0",
    "Artistic-2.0",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    "CC-BY-4.0",
    "EPL-1.0",
    "EPL-2.0",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "HPND",
    "ISC",
    "LGPL-2.0-or-later",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "MIT",
    "MIT-0",
    "MPL-2.0",
    "NCSA",
    "OpenSSL",
    "PSF-2.0",
    "Python-2.0",
    "Unicode-3.0",
    "Unlicense",
    "Zlib",
];

/// `text` when it is an SPDX expression of known identifiers (`MIT`, `Apache-2.0 OR MIT`,
/// `(BSD-3-Clause AND MIT)`, `GPL-2.0-or-later WITH Classpath-exception-2.0` is refused: its
/// exception is unknown here), written with each identifier's canonical case.
pub fn spdx_expression(text: &str) -> Option<String> {
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    let mut out = Vec::new();
    let mut want_id = true;
    let mut depth = 0i32;
    for tok in spaced.split_whitespace() {
        match tok {
            "(" if want_id => {
                depth += 1;
                out.push("(".to_owned());
            }
            ")" if !want_id && depth > 0 => {
                depth -= 1;
                out.push(")".to_owned());
            }
            t if !want_id && (t == "AND" || t == "OR") => {
                want_id = true;
                out.push(t.to_owned());
            }
            t if want_id => {
                let (base, plus) = t.strip_suffix('+').map_or((t, ""), |b| (b, "+"));
                let id = KNOWN_LICENSES.iter().find(|k| k.eq_ignore_ascii_case(base))?;
                out.push(format!("{id}{plus}"));
                want_id = false;
            }
            _ => return None,
        }
    }
    (!want_id && depth == 0 && !out.is_empty()).then(|| out.join(" ").replace("( ", "(").replace(" )", ")"))
}

/// The SPDX identifier of a `License ::` trove classifier that names exactly one license.
fn classifier_license(c: &str) -> Option<&'static str> {
    let last = c.rsplit("::").next()?.trim();
    Some(match last {
        "MIT License" => "MIT",
        "Apache Software License" if c.contains("Apache-2.0") => "Apache-2.0",
        "ISC License (ISCL)" => "ISC",
        "Mozilla Public License 2.0 (MPL 2.0)" => "MPL-2.0",
        "Python Software Foundation License" => "PSF-2.0",
        "The Unlicense (Unlicense)" => "Unlicense",
        "zlib/libpng License" => "Zlib",
        "Boost Software License 1.0 (BSL-1.0)" => "BSL-1.0",
        "GNU General Public License v2 or later (GPLv2+)" => "GPL-2.0-or-later",
        "GNU General Public License v3 or later (GPLv3+)" => "GPL-3.0-or-later",
        // "v2 or later" of the Library GPL: 2.0, whose "or later" includes 2.1.
        "GNU Lesser General Public License v2 or later (LGPLv2+)" => "LGPL-2.0-or-later",
        "GNU Lesser General Public License v3 or later (LGPLv3+)" => "LGPL-3.0-or-later",
        _ => return None,
    })
}

/// Hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Digest::of(bytes).hex().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::PathInfo;
    use crate::closure::testing::sp;

    #[test]
    fn pep503_and_purls() {
        assert_eq!(pep503("Nixoci_Greet"), "nixoci-greet");
        assert_eq!(pep503("zope.interface"), "zope-interface");
        assert_eq!(pep503("a__-.b"), "a-b");
        assert_eq!(purl_encode("1.0+cu128"), "1.0%2Bcu128");
        let p = Package {
            path: sp("python3.11-torch-2.10.0"),
            name: "python3.11-torch".into(),
            version: Some("2.10.0".into()),
            nar_hash: None,
            nar_size: None,
            depends_on: BTreeSet::new(),
            layers: vec![],
            python: vec![],
        };
        assert_eq!(p.purl(), format!("pkg:nix/python3.11-torch@2.10.0?outputhash={}", p.path.hash_part()));
    }

    #[test]
    fn metadata_fields_and_licenses() {
        let m = "Metadata-Version: 2.1\nName: Nixoci_Greet\nVersion: 1.0\nLicense: MIT\n\nbody: x\n";
        let d = parse_metadata(m, "x").unwrap();
        assert_eq!((d.name.as_str(), d.version.as_str()), ("Nixoci_Greet", "1.0"));
        assert_eq!(d.purl(), "pkg:pypi/nixoci-greet@1.0");
        assert_eq!(d.license_expression.as_deref(), Some("MIT"));
        let m = "Name: a\nVersion: 2\nLicense-Expression: apache-2.0 OR (MIT AND bsd-3-clause)\n";
        assert_eq!(
            parse_metadata(m, "x").unwrap().license_expression.as_deref(),
            Some("Apache-2.0 OR (MIT AND BSD-3-Clause)")
        );
        let m = "Name: a\nVersion: 2\nLicense: BSD\n    with extra words\n";
        let d = parse_metadata(m, "x").unwrap();
        assert_eq!((d.license_expression, d.license_text.as_deref()), (None, Some("BSD\nwith extra words")));
        let m = "Name: a\nVersion: 2\nClassifier: License :: OSI Approved :: MIT License\n";
        assert_eq!(parse_metadata(m, "x").unwrap().license_expression.as_deref(), Some("MIT"));
        assert!(parse_metadata("Name: a\n", "x").is_none());
        assert_eq!(spdx_expression("MIT AND"), None);
        assert_eq!(spdx_expression("(MIT"), None);
        assert_eq!(spdx_expression("GPL-2.0+"), None);
        assert_eq!(spdx_expression("GPL-2.0-or-later"), Some("GPL-2.0-or-later".into()));
    }

    #[test]
    fn dist_infos_found_but_not_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let sp_dir = t.path().join("pkg/lib/python3.11/site-packages");
        fs::create_dir_all(sp_dir.join("foo-1.0.dist-info")).unwrap();
        fs::write(sp_dir.join("foo-1.0.dist-info/METADATA"), "Name: foo\nVersion: 1.0\n").unwrap();
        fs::create_dir_all(t.path().join("env/lib/python3.11/site-packages")).unwrap();
        std::os::unix::fs::symlink(
            sp_dir.join("foo-1.0.dist-info"),
            t.path().join("env/lib/python3.11/site-packages/foo-1.0.dist-info"),
        )
        .unwrap();
        let found = python_dists(&t.path().join("pkg")).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].dist_info, "lib/python3.11/site-packages/foo-1.0.dist-info");
        assert!(python_dists(&t.path().join("env")).unwrap().is_empty());
        let err = python_dists(&t.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing") && err.contains("--store-root"), "{err}");
    }

    pub(crate) fn sample() -> Sbom {
        let a = PathInfo {
            path: sp("hello-2.12"),
            nar_hash: Some(NarHash([1; 32])),
            nar_size: Some(10),
            references: [sp("glibc-2.40-66")].into(),
        };
        let b = PathInfo {
            path: sp("glibc-2.40-66"),
            nar_hash: Some(NarHash([2; 32])),
            nar_size: Some(20),
            references: BTreeSet::new(),
        };
        let closure = Closure::new([a, b]).unwrap();
        let layer = Digest::of(b"layer");
        let opts = CollectOptions { store_root: None, layers: [(sp("glibc-2.40-66"), vec![layer])].into() };
        let mut s = Sbom::collect("test", &closure, 1, &opts).unwrap();
        s.packages[0].python.push(parse_metadata("Name: Foo.Bar\nVersion: 1.0\nLicense: MIT\n", "lib/x").unwrap());
        s
    }

    #[test]
    fn collect_splits_names_and_keeps_layers() {
        let s = sample();
        let hello = s.packages.iter().find(|p| p.name == "hello").unwrap();
        assert_eq!(hello.version.as_deref(), Some("2.12"));
        assert_eq!(hello.depends_on.len(), 1);
        let glibc = s.packages.iter().find(|p| p.name == "glibc").unwrap();
        assert_eq!(glibc.version.as_deref(), Some("2.40-66"));
        assert_eq!(glibc.layers, vec![Digest::of(b"layer")]);
        assert_eq!(s.roots, vec![sp("hello-2.12")]);
        for f in Format::ALL {
            let bytes = s.render(f).unwrap();
            assert_eq!(bytes, s.render(f).unwrap(), "{f} is deterministic");
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(v.is_object());
        }
    }
}
