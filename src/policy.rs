//! Image policies: the gate CI runs before it publishes (`nixoci check`, `nixoci build --policy`).
//!
//! A policy file is TOML whose top-level keys are rules; any may be absent, an unknown key is an
//! error naming the file and line:
//!
//! ```toml
//! max_layers = 100
//! max_layer_size = "10GiB"      # each layer blob as stored and pulled (compressed)
//! max_total_size = "40GiB"      # all layer blobs together
//! forbid = ["gcc-*", "*-dev"]   # globs on store path names (the part after `<hash>-`)
//! require = ["python3-*"]       # each glob must match at least one store path
//! non_root_user = true          # the config's User is set and does not resolve to uid 0
//! no_setuid = true              # no setuid/setgid file in any layer (tar headers)
//! no_world_writable = true      # no o+w entry, except sticky directories such as /tmp 1777
//! ```
//!
//! Judging is split from reading: [`ImageFacts`] is what the rules look at, gathered either from an
//! image read through a transport ([`facts_of`]) or, in a build, from the listed layers before any
//! byte is written ([`LayerFacts::from_entries`]); [`Policy::evaluate`] is a pure function of the
//! facts. Store paths come from the `org.nixos.nixoci.store-paths` layer annotations, or from the
//! tar headers (`nix/store/<hash>-<name>/…`) for layers without them. Layers are read only when a
//! rule needs them, and never extracted.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

use crate::closure::StorePath;
use crate::config_format::{Format, Located};
use crate::image::{ANNOTATION_GROUP, ANNOTATION_STORE_PATHS};
use crate::tarball::{Content, Entry, Kind};
use crate::transport::source::SourceImage;

pub use crate::size::Size;
pub use crate::size::human as human_size;

/// The file as written, before globs are compiled. `G` is a glob: `Spanned<String>` from TOML
/// (errors give its line), `String` from JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile<G> {
    max_layers: Option<u64>,
    max_layer_size: Option<Size>,
    max_total_size: Option<Size>,
    #[serde(default = "Vec::new")]
    forbid: Vec<G>,
    #[serde(default = "Vec::new")]
    require: Vec<G>,
    #[serde(default)]
    non_root_user: bool,
    #[serde(default)]
    no_setuid: bool,
    #[serde(default)]
    no_world_writable: bool,
}

/// A glob on store path names, with its source text.
#[derive(Debug, Clone)]
pub struct NameGlob {
    pub pattern: String,
    matcher: GlobMatcher,
}

impl NameGlob {
    pub fn new(pattern: &str) -> Result<Self> {
        let matcher = Glob::new(pattern).with_context(|| format!("invalid glob {pattern:?}"))?.compile_matcher();
        Ok(Self { pattern: pattern.to_owned(), matcher })
    }

    pub fn matches(&self, path: &StorePath) -> bool {
        self.matcher.is_match(path.name())
    }
}

/// A loaded policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub max_layers: Option<u64>,
    pub max_layer_size: Option<u64>,
    pub max_total_size: Option<u64>,
    pub forbid: Vec<NameGlob>,
    pub require: Vec<NameGlob>,
    pub non_root_user: bool,
    pub no_setuid: bool,
    pub no_world_writable: bool,
}

impl Policy {
    pub fn load(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading policy {}", file.display()))?;
        Self::parse(&text, file)
    }

    /// Parses a policy, TOML or JSON (by `file`'s name or the text: [`crate::config_format`]);
    /// `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        match Format::detect(&file.display().to_string(), text) {
            Format::Toml => Self::from_raw(Format::Toml.parse::<PolicyFile<toml::Spanned<String>>>(text), text, file),
            Format::Json => Self::from_raw(Format::Json.parse::<PolicyFile<String>>(text), text, file),
        }
    }

    fn from_raw<G: Located>(raw: Result<PolicyFile<G>>, text: &str, file: &Path) -> Result<Self> {
        let raw = raw.with_context(|| format!("in policy {}", file.display()))?;
        let globs = |list: &[G]| -> Result<Vec<NameGlob>> {
            list.iter()
                .map(|g| {
                    let at = match g.line(text) {
                        Some(line) => format!("in policy {}, line {line}", file.display()),
                        None => format!("in policy {}", file.display()),
                    };
                    NameGlob::new(g.value()).context(at)
                })
                .collect()
        };
        Ok(Policy {
            source: file.to_owned(),
            max_layers: raw.max_layers,
            max_layer_size: raw.max_layer_size.map(|s| s.0),
            max_total_size: raw.max_total_size.map(|s| s.0),
            forbid: globs(&raw.forbid)?,
            require: globs(&raw.require)?,
            non_root_user: raw.non_root_user,
            no_setuid: raw.no_setuid,
            no_world_writable: raw.no_world_writable,
        })
    }

    /// Whether a rule needs every tar header.
    fn needs_headers(&self) -> bool {
        self.no_setuid || self.no_world_writable
    }

    fn needs_paths(&self) -> bool {
        !self.forbid.is_empty() || !self.require.is_empty()
    }

    /// Whether the user must be resolved through the image's `/etc/passwd`.
    pub fn needs_passwd(&self, user: Option<&str>) -> bool {
        self.non_root_user && matches!(user.map(parse_user), Some(UserSpec::Name(n)) if n != "root")
    }

    /// Judges `facts`; pure.
    pub fn evaluate(&self, facts: &ImageFacts) -> Verdict {
        let mut rules = Vec::new();
        if let Some(max) = self.max_layers {
            let n = facts.layers.len() as u64;
            rules.push(RuleResult::new(
                "max_layers",
                n <= max,
                format!("{n} layers, at most {max} allowed"),
                Vec::new(),
            ));
        }
        if let Some(max) = self.max_layer_size {
            let offenders: Vec<String> = facts
                .layers
                .iter()
                .enumerate()
                .filter(|(_, l)| l.size > max)
                .map(|(i, l)| format!("layer {} ({}): {}", i + 1, l.label(), human_size(l.size)))
                .collect();
            let largest = facts.layers.iter().map(|l| l.size).max().unwrap_or(0);
            let detail = format!("largest layer {}, at most {} allowed", human_size(largest), human_size(max));
            rules.push(RuleResult::new("max_layer_size", offenders.is_empty(), detail, offenders));
        }
        if let Some(max) = self.max_total_size {
            let total: u64 = facts.layers.iter().map(|l| l.size).sum();
            let detail = format!("{} in all layers, at most {} allowed", human_size(total), human_size(max));
            rules.push(RuleResult::new("max_total_size", total <= max, detail, Vec::new()));
        }
        let paths: BTreeSet<&StorePath> = facts.layers.iter().flat_map(|l| &l.store_paths).collect();
        if !self.forbid.is_empty() {
            let offenders: Vec<String> = paths
                .iter()
                .filter_map(|p| {
                    let hits: Vec<&str> =
                        self.forbid.iter().filter(|g| g.matches(p)).map(|g| g.pattern.as_str()).collect();
                    (!hits.is_empty()).then(|| format!("{p} (matches {})", hits.join(", ")))
                })
                .collect();
            let detail = if offenders.is_empty() {
                format!("none of {} store paths matches {}", paths.len(), list_patterns(&self.forbid))
            } else {
                format!("{} of {} store paths are forbidden", offenders.len(), paths.len())
            };
            rules.push(RuleResult::new("forbid", offenders.is_empty(), detail, offenders));
        }
        if !self.require.is_empty() {
            let missing: Vec<String> = self
                .require
                .iter()
                .filter(|g| !paths.iter().any(|p| g.matches(p)))
                .map(|g| format!("no store path matches {}", g.pattern))
                .collect();
            let detail = if missing.is_empty() {
                format!("every one of {} is present", list_patterns(&self.require))
            } else {
                format!("{} of {} required globs match nothing", missing.len(), self.require.len())
            };
            rules.push(RuleResult::new("require", missing.is_empty(), detail, missing));
        }
        if self.non_root_user {
            let (ok, detail) = judge_user(facts.user.as_deref(), facts.passwd.as_deref());
            rules.push(RuleResult::new("non_root_user", ok, detail, Vec::new()));
        }
        if self.no_setuid {
            let offenders: Vec<String> = facts.layers.iter().flat_map(|l| l.setuid.iter().cloned()).collect();
            let detail = if offenders.is_empty() {
                "no setuid or setgid file".to_owned()
            } else {
                format!("{} setuid/setgid files", offenders.len())
            };
            rules.push(RuleResult::new("no_setuid", offenders.is_empty(), detail, offenders));
        }
        if self.no_world_writable {
            let offenders: Vec<String> = facts.layers.iter().flat_map(|l| l.world_writable.iter().cloned()).collect();
            let detail = if offenders.is_empty() {
                "no world-writable entry (sticky directories allowed)".to_owned()
            } else {
                format!("{} world-writable entries", offenders.len())
            };
            rules.push(RuleResult::new("no_world_writable", offenders.is_empty(), detail, offenders));
        }
        Verdict {
            image: facts.reference.clone(),
            policy: self.source.display().to_string(),
            passed: rules.iter().all(|r| r.passed),
            rules,
        }
    }
}

fn list_patterns(globs: &[NameGlob]) -> String {
    globs.iter().map(|g| g.pattern.as_str()).collect::<Vec<_>>().join(", ")
}

enum UserSpec<'a> {
    None,
    Uid(u64),
    Name(&'a str),
}

/// The user part of a config `User` (`name`, `uid`, `name:group`, `uid:gid`).
fn parse_user(user: &str) -> UserSpec<'_> {
    let u = user.split(':').next().unwrap_or("").trim();
    if u.is_empty() {
        UserSpec::None
    } else if let Ok(n) = u.parse() {
        UserSpec::Uid(n)
    } else {
        UserSpec::Name(u)
    }
}

fn judge_user(user: Option<&str>, passwd: Option<&str>) -> (bool, String) {
    match user.map(parse_user).unwrap_or(UserSpec::None) {
        UserSpec::None => (false, "no User is set: the container runs as root".to_owned()),
        UserSpec::Uid(0) => (false, format!("User {:?} is uid 0 (root)", user.unwrap_or_default())),
        UserSpec::Uid(n) => (true, format!("runs as uid {n}")),
        UserSpec::Name("root") => (false, "User is root".to_owned()),
        UserSpec::Name(name) => {
            let Some(passwd) = passwd else {
                return (false, format!("User {name:?} cannot be resolved: the image has no /etc/passwd"));
            };
            let uid = passwd.lines().find_map(|l| {
                let mut f = l.split(':');
                (f.next() == Some(name)).then(|| f.nth(1).and_then(|u| u.parse::<u64>().ok()))?
            });
            match uid {
                Some(0) => (false, format!("User {name:?} has uid 0 in /etc/passwd")),
                Some(n) => (true, format!("runs as {name} (uid {n})")),
                None => (false, format!("User {name:?} is not in the image's /etc/passwd")),
            }
        }
    }
}

/// One rule's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleResult {
    pub rule: String,
    pub passed: bool,
    pub detail: String,
    pub offenders: Vec<String>,
}

impl RuleResult {
    fn new(rule: &str, passed: bool, detail: String, offenders: Vec<String>) -> Self {
        Self { rule: rule.to_owned(), passed, detail, offenders }
    }
}

/// Every rule's outcome for one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub image: String,
    pub policy: String,
    pub passed: bool,
    pub rules: Vec<RuleResult>,
}

impl Verdict {
    /// A table for people: one line per rule, offenders indented below (at most `max_offenders`
    /// per rule; 0 shows them all).
    pub fn render(&self, max_offenders: usize) -> String {
        let mut out = format!("policy {} on {}\n", self.policy, self.image);
        for r in &self.rules {
            let _ = writeln!(out, "  {}  {:<18} {}", if r.passed { "PASS" } else { "FAIL" }, r.rule, r.detail);
            let shown = if max_offenders == 0 { r.offenders.len() } else { max_offenders.min(r.offenders.len()) };
            for o in &r.offenders[..shown] {
                let _ = writeln!(out, "          {o}");
            }
            if shown < r.offenders.len() {
                let _ = writeln!(out, "          … and {} more (--json lists all)", r.offenders.len() - shown);
            }
        }
        let failed = self.rules.iter().filter(|r| !r.passed).count();
        if self.rules.is_empty() {
            out.push_str("result: PASS (the policy has no rules)\n");
        } else if failed == 0 {
            let _ = writeln!(out, "result: PASS ({} rules)", self.rules.len());
        } else {
            let _ = writeln!(out, "result: FAIL ({failed} of {} rules failed)", self.rules.len());
        }
        out
    }

    /// An error for a build that this verdict refuses, with every rule's outcome.
    pub fn to_error(&self) -> anyhow::Error {
        anyhow!("the image fails policy {}; nothing was written:\n{}", self.policy, self.render(10).trim_end())
    }
}

/// What the rules look at.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    /// How the image is named in reports.
    pub reference: String,
    /// The config's `User`.
    pub user: Option<String>,
    /// The image's `/etc/passwd` (the topmost layer's), when a rule needed it.
    pub passwd: Option<String>,
    pub layers: Vec<LayerFacts>,
}

/// What the rules look at in one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerFacts {
    /// The blob's size as stored and pulled.
    pub size: u64,
    /// The layer group's name, when known.
    pub group: Option<String>,
    pub store_paths: Vec<StorePath>,
    /// `/path (mode 4755)` for each setuid or setgid file.
    pub setuid: Vec<String>,
    /// `/path (mode 0666)` for each world-writable entry that is not a sticky directory.
    pub world_writable: Vec<String>,
}

impl LayerFacts {
    /// Facts of a listed layer (a build's, before it is written): its store paths and `entries`.
    pub fn from_entries(size: u64, group: &str, store_paths: Vec<StorePath>, entries: &[Entry]) -> Self {
        let mut facts = Self { size, group: Some(group.to_owned()), store_paths, ..Self::default() };
        for e in entries {
            let kind = match e.kind {
                Kind::Dir => EntryKind::Dir,
                Kind::File { .. } => EntryKind::File,
                Kind::Symlink { .. } => EntryKind::Symlink,
            };
            facts.judge_entry(&e.path, kind, e.mode);
        }
        facts
    }

    fn label(&self) -> String {
        crate::image::layer_label(&self.store_paths, self.group.as_deref())
    }

    fn judge_entry(&mut self, path: &str, kind: EntryKind, mode: u32) {
        let shown = || {
            format!(
                "/{} (mode {:04o})",
                path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/'),
                mode & 0o7777
            )
        };
        if kind == EntryKind::File && mode & 0o6000 != 0 {
            self.setuid.push(shown());
        }
        let sticky_dir = kind == EntryKind::Dir && mode & 0o1000 != 0;
        if kind != EntryKind::Symlink && mode & 0o002 != 0 && !sticky_dir {
            self.world_writable.push(shown());
        }
    }
}

/// The /etc/passwd of a build's listed layers, if its customisation layer writes one.
pub fn passwd_of_entries<'a>(layers: impl IntoIterator<Item = &'a [Entry]>) -> Option<String> {
    let mut found = None;
    for entries in layers {
        for e in entries {
            if let (true, Kind::File { content: Content::Inline(bytes), .. }) = (e.path == "etc/passwd", &e.kind) {
                found = Some(String::from_utf8_lossy(bytes).into_owned());
            }
        }
    }
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Dir,
    File,
    Symlink,
    Other,
}

/// Gathers what `policy` needs from `img`, reading layers only when a rule needs them.
pub fn facts_of(img: &SourceImage, policy: &Policy) -> Result<ImageFacts> {
    let user = img.config.config().as_ref().and_then(|c| c.user().clone()).filter(|u| !u.is_empty());
    let read_all = policy.needs_headers() || policy.needs_passwd(user.as_deref());
    let mut facts = ImageFacts { reference: img.reference.clone(), user, passwd: None, layers: Vec::new() };
    for (i, l) in img.layers.iter().enumerate() {
        let group = l.annotations.get(ANNOTATION_GROUP).cloned();
        let annotated: Option<Vec<StorePath>> = l
            .annotations
            .get(ANNOTATION_STORE_PATHS)
            .map(|text| {
                text.lines()
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| StorePath::parse(s.trim()))
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| {
                        format!(
                            "{}: layer {} ({}): annotation {ANNOTATION_STORE_PATHS}",
                            img.reference,
                            i + 1,
                            l.digest
                        )
                    })
            })
            .transpose()?;
        // A nixoci layer without the store-paths annotation (the customisation layer) holds none.
        let paths_known = annotated.is_some() || group.is_some();
        let mut lf = LayerFacts {
            size: l.size,
            group,
            store_paths: annotated.clone().unwrap_or_default(),
            ..LayerFacts::default()
        };
        if read_all || (policy.needs_paths() && !paths_known) {
            let scan = scan_layer(img, i)?;
            lf.setuid = scan.setuid;
            lf.world_writable = scan.world_writable;
            if annotated.is_none() {
                lf.store_paths = scan.store_paths;
            }
            match scan.passwd {
                Passwd::Unchanged => {}
                Passwd::Removed => facts.passwd = None,
                Passwd::Written(text) => facts.passwd = Some(text),
            }
        }
        facts.layers.push(lf);
    }
    Ok(facts)
}

enum Passwd {
    Unchanged,
    Removed,
    Written(String),
}

struct LayerScan {
    store_paths: Vec<StorePath>,
    setuid: Vec<String>,
    world_writable: Vec<String>,
    passwd: Passwd,
}

/// Reads one layer's tar headers (and `/etc/passwd`'s content, which is small).
fn scan_layer(img: &SourceImage, i: usize) -> Result<LayerScan> {
    crate::inspect::read_layer_verified(img, i, |tar| scan_entries(img, i, tar)).map(|(scan, _)| scan)
}

fn scan_entries(img: &SourceImage, i: usize, tar: &mut dyn Read) -> Result<LayerScan> {
    const PASSWD_LIMIT: u64 = 4 << 20;
    let mut ar = tar::Archive::new(tar);
    let mut facts = LayerFacts::default();
    let mut paths = BTreeSet::new();
    let mut passwd = Passwd::Unchanged;
    for entry in ar.entries().context("reading the layer as a tar")? {
        let mut entry = entry.context("reading the layer as a tar")?;
        let path = entry.path().context("reading a tar entry's name")?.to_string_lossy().into_owned();
        let clean = path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_owned();
        let h = entry.header();
        let mode = h.mode().with_context(|| format!("reading the mode of /{clean}"))?;
        let kind = match h.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            t if t.is_file() || t.is_hard_link() => EntryKind::File,
            _ => EntryKind::Other,
        };
        facts.judge_entry(&clean, kind, mode);
        if let Some(rest) = clean.strip_prefix("nix/store/") {
            let base = rest.split('/').next().unwrap_or_default();
            match StorePath::from_base_name(base) {
                Ok(p) => {
                    paths.insert(p);
                }
                Err(e) => tracing::debug!("{}: layer {}: /{clean} is not in a store path: {e}", img.reference, i + 1),
            }
        }
        if clean == "etc/.wh.passwd" || clean == "etc/.wh..wh..opq" || clean == ".wh.etc" {
            passwd = Passwd::Removed;
        }
        if clean == "etc/passwd" && kind == EntryKind::File && entry.size() <= PASSWD_LIMIT {
            let mut text = String::new();
            entry.read_to_string(&mut text).context("reading /etc/passwd")?;
            passwd = Passwd::Written(text);
        }
    }
    Ok(LayerScan {
        store_paths: paths.into_iter().collect(),
        setuid: facts.setuid,
        world_writable: facts.world_writable,
        passwd,
    })
}

/// Checks `img` against `policy`.
pub fn check(img: &SourceImage, policy: &Policy) -> Result<Verdict> {
    let facts = facts_of(img, policy)?;
    Ok(policy.evaluate(&facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(name: &str) -> StorePath {
        StorePath::from_base_name(&format!("{}-{name}", "0".repeat(32))).unwrap()
    }

    fn policy(text: &str) -> Policy {
        Policy::parse(text, Path::new("p.toml")).unwrap()
    }

    fn facts() -> ImageFacts {
        let entries = vec![
            Entry::dir("tmp", 0o1777),
            Entry::dir("var/tmp", 0o777),
            Entry {
                path: "bin/su".into(),
                kind: Kind::File { size: 0, content: Content::Inline(vec![]) },
                mode: 0o4755,
                uid: 0,
                gid: 0,
            },
            Entry {
                path: "etc/passwd".into(),
                kind: Kind::File {
                    size: 0,
                    content: Content::Inline(
                        b"root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\nboss:x:0:0::/:/bin/sh\n".to_vec(),
                    ),
                },
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            Entry { path: "etc/l".into(), kind: Kind::Symlink { target: "x".into() }, mode: 0o777, uid: 0, gid: 0 },
        ];
        ImageFacts {
            reference: "oci:x".into(),
            user: Some("app".into()),
            passwd: passwd_of_entries([entries.as_slice()]),
            layers: vec![
                LayerFacts {
                    size: 3 << 30,
                    group: Some("auto".into()),
                    store_paths: vec![sp("python3-3.11.2"), sp("gcc-12.2.0")],
                    ..Default::default()
                },
                LayerFacts::from_entries(1000, "customisation", vec![], &entries),
            ],
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("10GiB".parse::<Size>().unwrap(), Size(10 << 30));
        assert_eq!("500MB".parse::<Size>().unwrap(), Size(500_000_000));
        assert_eq!("1.5G".parse::<Size>().unwrap(), Size(3 << 29));
        assert_eq!("42".parse::<Size>().unwrap(), Size(42));
        assert!("10 parsecs".parse::<Size>().is_err());
        assert!("GiB".parse::<Size>().is_err());
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn every_rule_passes_and_fails() {
        let f = facts();
        let v = policy(
            "max_layers = 2\nmax_layer_size = \"4GiB\"\nmax_total_size = \"4GiB\"\nforbid = [\"*-dev\"]\nrequire = [\"python3-*\"]\nnon_root_user = true",
        )
        .evaluate(&f);
        assert!(v.passed, "{}", v.render(0));
        let v = policy(
            "max_layers = 1\nmax_layer_size = \"1GiB\"\nmax_total_size = \"1GiB\"\nforbid = [\"gcc-*\"]\nrequire = [\"torch-*\"]\nno_setuid = true\nno_world_writable = true",
        )
        .evaluate(&f);
        assert!(!v.passed);
        assert!(v.rules.iter().all(|r| !r.passed), "{}", v.render(0));
        let get = |n: &str| v.rules.iter().find(|r| r.rule == n).unwrap();
        assert_eq!(get("forbid").offenders, [format!("{} (matches gcc-*)", sp("gcc-12.2.0"))]);
        assert_eq!(get("require").offenders, ["no store path matches torch-*"]);
        assert_eq!(get("no_setuid").offenders, ["/bin/su (mode 4755)"]);
        assert_eq!(get("no_world_writable").offenders, ["/var/tmp (mode 0777)"], "sticky /tmp is allowed");
        assert_eq!(get("max_layer_size").offenders.len(), 1);
        assert!(v.render(0).contains("FAIL  forbid"));
        assert!(v.to_error().to_string().contains("nothing was written"));
    }

    #[test]
    fn users_resolve_through_passwd() {
        let p = policy("non_root_user = true");
        let mut f = facts();
        for (user, ok) in [
            (None, false),
            (Some("root"), false),
            (Some("0:0"), false),
            (Some("1000"), true),
            (Some("app:app"), true),
            (Some("boss"), false),
            (Some("ghost"), false),
        ] {
            f.user = user.map(str::to_owned);
            assert_eq!(p.evaluate(&f).passed, ok, "{user:?}");
        }
        f.user = Some("app".into());
        f.passwd = None;
        assert!(!p.evaluate(&f).passed);
    }

    #[test]
    fn json_policies_have_the_same_schema() {
        let t = policy("max_layers = 3\nmax_total_size = \"1GiB\"\nforbid = [\"gcc-*\"]\nnon_root_user = true\n");
        let j = Policy::parse(
            r#"{"max_layers": 3, "max_total_size": "1GiB", "forbid": ["gcc-*"], "non_root_user": true}"#,
            Path::new("/nix/store/x-policy"),
        )
        .unwrap();
        assert_eq!(
            (j.max_layers, j.max_total_size, j.non_root_user),
            (t.max_layers, t.max_total_size, t.non_root_user)
        );
        assert_eq!(j.forbid[0].pattern, "gcc-*");
        let err = format!("{:#}", Policy::parse(r#"{"max_layrs": 4}"#, Path::new("p.json")).unwrap_err());
        assert!(err.contains("p.json") && err.contains("unknown field `max_layrs`"), "{err}");
        let err = format!("{:#}", Policy::parse(r#"{"require": ["a["]}"#, Path::new("p.json")).unwrap_err());
        assert!(err.contains("in policy p.json") && err.contains("a["), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_globs_name_file_and_line() {
        let err = format!("{:#}", Policy::parse("max_layers = 3\nmax_layrs = 4\n", Path::new("pol.toml")).unwrap_err());
        assert!(err.contains("pol.toml") && err.contains("line 2") && err.contains("max_layrs"), "{err}");
        let err = format!(
            "{:#}",
            Policy::parse("\nforbid = [\n  \"ok\",\n  \"a[\",\n]\n", Path::new("pol.toml")).unwrap_err()
        );
        assert!(err.contains("pol.toml, line 4") && err.contains("a["), "{err}");
        let err =
            format!("{:#}", Policy::parse("max_total_size = \"3 lightyears\"", Path::new("pol.toml")).unwrap_err());
        assert!(err.contains("lightyears"), "{err}");
        assert!(policy("").evaluate(&facts()).passed);
    }
}
