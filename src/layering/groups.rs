//! Layer groups: the `layers/*.toml` format (DESIGN.md §5).
//!
//! ```toml
//! max_layers = 40            # optional; `--max-layers` overrides it
//! max_layer_size = "4GiB"    # optional; `--max-layer-size` overrides it
//!
//! [[group]]                  # bottom (most stable) first
//! name = "base-runtime"
//! match = ["glibc-*", "python3-3.*"]   # globs on store path names (the part after `<hash>-`)
//! split = "per-path"         # optional: start from one layer per path (default: one layer)
//! max_layers = 4             # optional: at most this many layers for the group, or
//!                            # a share of the store-layer budget: "10%" (rounded up, at least 1)
//! ```
//!
//! A path a group's globs name belongs to the first group that names it; a path no group names
//! follows the closure of the first group whose named paths reach it (through unnamed paths), so
//! a dependency never drags a path another group names into its own group ([`Groups::assign`]).
//! Paths no group claims form the `auto` partition, laid out last. Unknown keys are an
//! error naming the file and line; a glob that matches no store path is a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use crate::closure::{Closure, StorePath};
use crate::config_format::{Format, Located};

use crate::size::{IntOrString, parse_size};

/// The partition name of paths no group claims.
pub const AUTO_GROUP: &str = "auto";
/// Names a layers file may not use: they mean something else in plans and images.
/// Names the image gives layers of its own: the customisation layer's, and a `--from` base's.
const RESERVED: [&str; 3] = [AUTO_GROUP, "customisation", "base"];

/// How a group's paths start out before the budget is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMode {
    /// One layer for the whole group (more only where `max_layers` or the size cap allow/force).
    #[default]
    None,
    /// One layer per store path, merged by the packer only as far as the budget demands.
    PerPath,
}

/// A group's own layer limit: a number of layers, or a share of the store-layer budget (in
/// percent), so the limit grows and shrinks with `--max-layers`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerLimit {
    Layers(usize),
    Share(f64),
}

impl LayerLimit {
    /// The limit in layers under a budget of `store_layers`: a share is rounded up, at least 1.
    pub fn resolve(self, store_layers: usize) -> usize {
        match self {
            Self::Layers(n) => n,
            // The epsilon keeps 7.5 % of 40 at 3 despite binary floating point.
            Self::Share(pct) => ((pct * store_layers as f64 / 100.0 - 1e-9).ceil() as usize).max(1),
        }
    }

    /// `"10%"` or `"7.5%"`: a share above 0 and at most 100 percent.
    fn parse_share(text: &str) -> Option<Self> {
        let pct: f64 = text.trim().strip_suffix('%')?.trim_end().parse().ok()?;
        (pct.is_finite() && pct > 0.0 && pct <= 100.0).then_some(Self::Share(pct))
    }
}

/// A glob and the line of the layers file it came from (0 when built in code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub glob: String,
    pub line: usize,
}

/// One group of a layers file.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub patterns: Vec<Pattern>,
    pub split: SplitMode,
    pub max_layers: Option<LayerLimit>,
    matcher: GlobSet,
}

impl Group {
    /// A group from code (tests, callers that build groups themselves).
    pub fn new(name: &str, globs: &[&str], split: SplitMode, max_layers: Option<usize>) -> Result<Self> {
        Self::with_limit(name, globs, split, max_layers.map(LayerLimit::Layers))
    }

    /// A group from code whose limit may be a share of the budget.
    pub fn with_limit(name: &str, globs: &[&str], split: SplitMode, max_layers: Option<LayerLimit>) -> Result<Self> {
        let patterns = globs.iter().map(|g| Pattern { glob: (*g).to_owned(), line: 0 }).collect();
        Self::build(name.to_owned(), patterns, split, max_layers)
    }

    fn build(name: String, patterns: Vec<Pattern>, split: SplitMode, max_layers: Option<LayerLimit>) -> Result<Self> {
        let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        if !name_ok {
            bail!("group name {name:?} must be non-empty and use only [A-Za-z0-9._+-]");
        }
        if RESERVED.contains(&name.as_str()) {
            bail!("group name {name:?} is reserved");
        }
        if patterns.is_empty() {
            bail!("group {name:?} has an empty `match` list");
        }
        match max_layers {
            Some(LayerLimit::Layers(0)) => bail!("group {name:?}: max_layers must be at least 1"),
            Some(LayerLimit::Share(pct)) if !(pct.is_finite() && pct > 0.0 && pct <= 100.0) => {
                bail!("group {name:?}: max_layers must be a share above 0% and at most 100%")
            }
            _ => {}
        }
        let mut set = GlobSetBuilder::new();
        for p in &patterns {
            let glob = Glob::new(&p.glob).with_context(|| format!("group {name:?}: invalid glob {:?}", p.glob))?;
            set.add(glob);
        }
        let matcher = set.build().with_context(|| format!("group {name:?}: building its globs"))?;
        Ok(Self { name, patterns, split, max_layers, matcher })
    }

    /// Whether the store path name (after `<hash>-`) matches one of the group's globs.
    pub fn matches(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }

    /// The most layers the packer may leave this group with before the global budget applies,
    /// under a budget of `store_layers` (which a share of the budget is resolved against).
    pub(crate) fn limit(&self, store_layers: usize) -> usize {
        match (self.max_layers, self.split) {
            (Some(l), _) => l.resolve(store_layers),
            (None, SplitMode::None) => 1,
            (None, SplitMode::PerPath) => usize::MAX,
        }
    }
}

/// Ordered layer groups, bottom (most stable) first. Empty: everything is auto-layered.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    groups: Vec<Group>,
}

impl Groups {
    /// No groups: every path is auto-layered.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn new(groups: Vec<Group>) -> Result<Self> {
        let mut seen = BTreeSet::new();
        for g in &groups {
            if !seen.insert(g.name.as_str()) {
                bail!("group {:?} is defined twice", g.name);
            }
        }
        Ok(Self { groups })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The name of partition `i`: a group, or [`AUTO_GROUP`] for `i == len()`.
    pub fn partition_name(&self, i: usize) -> &str {
        self.groups.get(i).map_or(AUTO_GROUP, |g| g.name.as_str())
    }

    /// The layer limit of partition `i` before the global budget of `store_layers` (unlimited for
    /// `auto`).
    pub(crate) fn partition_limit(&self, i: usize, store_layers: usize) -> usize {
        self.groups.get(i).map_or(usize::MAX, |g| g.limit(store_layers))
    }

    /// Which partition each path of `closure` falls in (DESIGN.md §5):
    ///
    /// 1. a path some group's globs *name* belongs to the first group that names it, whatever
    ///    closure it also sits in (a kernel that depends on diffusers does not drag diffusers
    ///    into the kernels' group);
    /// 2. a path no group names belongs to the first group whose named paths reach it through
    ///    unnamed paths only: the walk stops at a path another group names, so what only
    ///    diffusers needs stays with diffusers even when a lower group's kernel refers to
    ///    diffusers;
    /// 3. the rest is `len()`, the [`AUTO_GROUP`] partition.
    pub fn assign<'a>(&self, closure: &'a Closure) -> BTreeMap<&'a StorePath, usize> {
        let named: BTreeMap<&StorePath, usize> =
            closure.iter().filter_map(|info| self.named_by(info.path.name()).map(|i| (&info.path, i))).collect();
        let mut out = named.clone();
        for i in 0..self.groups.len() {
            let mut stack: Vec<&StorePath> = named.iter().filter(|&(_, &g)| g == i).map(|(p, _)| *p).collect();
            let mut seen: BTreeSet<&StorePath> = stack.iter().copied().collect();
            while let Some(p) = stack.pop() {
                let Some(info) = closure.get(p) else { continue };
                for r in &info.references {
                    if named.contains_key(r) || !seen.insert(r) {
                        continue;
                    }
                    out.entry(r).or_insert(i);
                    stack.push(r);
                }
            }
        }
        for info in closure.iter() {
            out.entry(&info.path).or_insert(self.groups.len());
        }
        out
    }

    /// The index of the first group whose globs match the store path name `name`.
    pub fn named_by(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.matches(name))
    }

    /// Warnings about `closure`: globs that match no store path, groups left empty because
    /// lower groups claimed everything they match. `origin` prefixes each (`layers/x.toml`).
    pub fn warnings(&self, closure: &Closure, origin: &str) -> Vec<String> {
        let mut out = Vec::new();
        for g in &self.groups {
            for p in &g.patterns {
                let glob = Glob::new(&p.glob).map(|g| g.compile_matcher());
                let hit = glob.is_ok_and(|m| closure.iter().any(|i| m.is_match(i.path.name())));
                if !hit {
                    let at = if p.line > 0 { format!("{origin}:{}", p.line) } else { origin.to_owned() };
                    out.push(format!("{at}: glob {:?} of group {:?} matches no store path", p.glob, g.name));
                }
            }
        }
        let assigned = self.assign(closure);
        let used: BTreeSet<usize> = assigned.values().copied().collect();
        for (i, g) in self.groups.iter().enumerate() {
            let matches_something = closure.iter().any(|info| g.matches(info.path.name()));
            if matches_something && !used.contains(&i) {
                out.push(format!(
                    "{origin}: group {:?} is empty: the groups below it already claim every path it matches",
                    g.name
                ));
            }
        }
        out
    }
}

/// A parsed layers file: its groups and its budget defaults.
#[derive(Debug, Clone, Default)]
pub struct LayersFile {
    pub groups: Groups,
    pub max_layers: Option<u32>,
    pub max_layer_size: Option<u64>,
}

/// The file as written. `S` is a string that may know its line: `Spanned<String>` from TOML,
/// `String` from JSON ([`Located`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml<S> {
    max_layers: Option<u32>,
    max_layer_size: Option<IntOrString>,
    #[serde(default = "Vec::new")]
    group: Vec<GroupToml<S>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupToml<S> {
    name: S,
    #[serde(rename = "match")]
    patterns: Vec<S>,
    #[serde(default)]
    split: SplitMode,
    /// `max_layers = 4` or `max_layers = "10%"`.
    max_layers: Option<IntOrString>,
}

impl LayersFile {
    /// Reads and parses a layers file; errors name the file (and the line, for TOML errors).
    pub fn load(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading layers file {}", file.display()))?;
        Self::parse(&text, &file.display().to_string())
    }

    /// Parses the text of a layers file, TOML or JSON (by `origin`'s name or the text:
    /// [`crate::config_format`]); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        match Format::detect(origin, text) {
            Format::Toml => Self::from_raw(Format::Toml.parse::<FileToml<Spanned<String>>>(text), text, origin),
            Format::Json => Self::from_raw(Format::Json.parse::<FileToml<String>>(text), text, origin),
        }
    }

    fn from_raw<S: Located>(raw: Result<FileToml<S>>, text: &str, origin: &str) -> Result<Self> {
        let raw = raw.with_context(|| format!("in layers file {origin}"))?;
        let max_layer_size = match raw.max_layer_size {
            None => None,
            Some(IntOrString::Int(n)) => Some(n),
            Some(IntOrString::Str(s)) => {
                Some(parse_size(&s).with_context(|| format!("in layers file {origin}: max_layer_size"))?)
            }
        };
        if raw.max_layers == Some(0) {
            bail!("in layers file {origin}: max_layers must be at least 1");
        }
        let mut groups = Vec::new();
        for g in raw.group {
            let line = g.name.line(text);
            let patterns = g
                .patterns
                .into_iter()
                .map(|p| Pattern { line: p.line(text).unwrap_or(0), glob: p.into_value() })
                .collect();
            let at = || match line {
                Some(line) => format!("in layers file {origin}, line {line}"),
                None => format!("in layers file {origin}, group {:?}", g.name.value()),
            };
            let max_layers = match g.max_layers {
                None => None,
                Some(IntOrString::Int(n)) => Some(LayerLimit::Layers(n as usize)),
                Some(IntOrString::Str(t)) => {
                    let share = LayerLimit::parse_share(&t).with_context(|| {
                        format!(
                            "group {:?}: max_layers {t:?} is neither a number of layers nor a share of the \
                             budget such as \"10%\" (above 0, at most 100)",
                            g.name.value()
                        )
                    });
                    Some(share.with_context(at)?)
                }
            };
            let group = Group::build(g.name.value().to_owned(), patterns, g.split, max_layers).with_context(at)?;
            groups.push(group);
        }
        let groups = Groups::new(groups).with_context(|| format!("in layers file {origin}"))?;
        Ok(Self { groups, max_layers: raw.max_layers, max_layer_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::testing::info;

    const FILE: &str = r#"
max_layers = 40
max_layer_size = "4GiB"

[[group]]
name = "runtime"
match = ["glibc-*"]

[[group]]
name = "torch"
match = ["python3.14-torch-*", "nothing-*"]
split = "per-path"
max_layers = 3
"#;

    #[test]
    fn parses_and_reports_unmatched_globs_with_lines() {
        let f = LayersFile::parse(FILE, "layers/t.toml").unwrap();
        assert_eq!(f.max_layers, Some(40));
        assert_eq!(f.max_layer_size, Some(4 << 30));
        let g: Vec<_> = f.groups.iter().collect();
        assert_eq!(g[1].split, SplitMode::PerPath);
        assert_eq!(g[1].limit(40), 3);
        assert_eq!(g[0].limit(40), 1);
        assert_eq!(g[1].patterns[1].line, 11);
        let c =
            Closure::new([info("glibc-2.40", 10, &[]), info("python3.14-torch-2.10.0", 10, &["glibc-2.40"])]).unwrap();
        let w = f.groups.warnings(&c, "layers/t.toml");
        assert_eq!(w, vec![r#"layers/t.toml:11: glob "nothing-*" of group "torch" matches no store path"#]);
    }

    #[test]
    fn shares_of_the_budget_scale_with_it() {
        let text = "[[group]]\nname = \"a\"\nmatch = [\"x\"]\nmax_layers = \"10%\"\n\n[[group]]\nname = \"b\"\nmatch = [\"y\"]\nmax_layers = \" 7.5 %\"\n";
        let f = LayersFile::parse(text, "f.toml").unwrap();
        let g: Vec<_> = f.groups.iter().collect();
        assert_eq!(g[0].max_layers, Some(LayerLimit::Share(10.0)));
        let at = |i: usize, n: usize| g[i].limit(n);
        assert_eq!((at(0, 39), at(0, 40), at(0, 99), at(0, 100), at(0, 3)), (4, 4, 10, 10, 1));
        assert_eq!((at(1, 40), at(1, 99), at(1, 100), at(1, 1)), (3, 8, 8, 1));
        for bad in ["\"0%\"", "\"101%\"", "\"ten%\"", "\"10\"", "\"-5%\"", "\"nan%\""] {
            let text = format!("[[group]]\nname = \"a\"\nmatch = [\"x\"]\nmax_layers = {bad}\n");
            let err = format!("{:#}", LayersFile::parse(&text, "f.toml").unwrap_err());
            assert!(err.contains("f.toml") && err.contains("line 2") && err.contains("share of the"), "{bad}: {err}");
        }
        assert!(Group::with_limit("a", &["x"], SplitMode::None, Some(LayerLimit::Share(0.0))).is_err());
    }

    #[test]
    fn unknown_keys_name_file_and_line() {
        let text = "[[group]]\nname = \"a\"\nmatch = [\"x\"]\nsplt = \"per-path\"\n";
        let err = format!("{:#}", LayersFile::parse(text, "layers/bad.toml").unwrap_err());
        assert!(err.contains("layers/bad.toml") && err.contains("line 4") && err.contains("splt"), "{err}");
        let err = format!("{:#}", LayersFile::parse("max_layer = 3\n", "f.toml").unwrap_err());
        assert!(err.contains("line 1") && err.contains("max_layer"), "{err}");
        let err = format!(
            "{:#}",
            LayersFile::parse("[[group]]\nname = \"a\"\nmatch = [\"x\"]\nsplit = \"each\"\n", "f.toml").unwrap_err()
        );
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn json_has_the_same_schema_and_errors() {
        let json = r#"{"max_layers": 40, "max_layer_size": "4GiB", "group": [
            {"name": "runtime", "match": ["glibc-*"]},
            {"name": "torch", "match": ["python3.14-torch-*", "nothing-*"], "split": "per-path", "max_layers": 3}]}"#;
        let (t, j) =
            (LayersFile::parse(FILE, "t.toml").unwrap(), LayersFile::parse(json, "/nix/store/x-layers").unwrap());
        assert_eq!((j.max_layers, j.max_layer_size), (t.max_layers, t.max_layer_size));
        let names =
            |f: &LayersFile| f.groups.iter().map(|g| (g.name.clone(), g.split, g.limit(40))).collect::<Vec<_>>();
        assert_eq!(names(&j), names(&t));
        let globs = |f: &LayersFile| {
            f.groups.iter().flat_map(|g| g.patterns.iter().map(|p| p.glob.clone())).collect::<Vec<_>>()
        };
        assert_eq!(globs(&j), globs(&t));
        let err = format!(
            "{:#}",
            LayersFile::parse(r#"{"group": [{"name": "a", "match": ["x"], "splt": "per-path"}]}"#, "l.json")
                .unwrap_err()
        );
        assert!(err.contains("l.json") && err.contains("unknown field `splt`"), "{err}");
        let err =
            format!("{:#}", LayersFile::parse(r#"{"group": [{"name": "a", "match": ["["]}]}"#, "l.json").unwrap_err());
        assert!(err.contains("l.json") && err.contains("group \"a\"") && err.contains("invalid glob"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        for (text, want) in [
            ("[[group]]\nname = \"auto\"\nmatch = [\"x\"]\n", "reserved"),
            // The group a --from base's layers carry.
            ("[[group]]\nname = \"base\"\nmatch = [\"x\"]\n", "reserved"),
            ("[[group]]\nname = \"a b\"\nmatch = [\"x\"]\n", "must be non-empty"),
            ("[[group]]\nname = \"a\"\nmatch = []\n", "empty `match`"),
            ("[[group]]\nname = \"a\"\nmatch = [\"[\"]\n", "invalid glob"),
            ("[[group]]\nname = \"a\"\nmatch = [\"x\"]\n[[group]]\nname = \"a\"\nmatch = [\"y\"]\n", "defined twice"),
            ("max_layer_size = \"4 furlongs\"\n", "unknown unit"),
        ] {
            let err = format!("{:#}", LayersFile::parse(text, "f.toml").unwrap_err());
            assert!(err.contains(want) && err.contains("f.toml"), "{text:?}: {err}");
        }
    }

    #[test]
    fn lower_groups_claim_first_and_closures_follow() {
        // app -> lib -> base; group "lib" matches lib; group "app" matches app and lib.
        let c = Closure::new([
            info("base-1", 1, &[]),
            info("lib-1", 1, &["base-1"]),
            info("app-1", 1, &["lib-1"]),
            info("stray-1", 1, &[]),
        ])
        .unwrap();
        let groups = Groups::new(vec![
            Group::new("lib", &["lib-*"], SplitMode::None, None).unwrap(),
            Group::new("app", &["app-*", "lib-*"], SplitMode::None, None).unwrap(),
        ])
        .unwrap();
        let a = groups.assign(&c);
        let by_name: BTreeMap<&str, usize> = a.iter().map(|(p, i)| (p.name(), *i)).collect();
        assert_eq!(by_name["base-1"], 0, "pulled in by lib's closure");
        assert_eq!(by_name["lib-1"], 0);
        assert_eq!(by_name["app-1"], 1);
        assert_eq!(by_name["stray-1"], 2, "unclaimed: auto");
        assert_eq!(groups.partition_name(2), AUTO_GROUP);
    }

    /// The named rule on a graph shaped like the real one (DESIGN.md §5): each row is a store
    /// path, its references, and the group it must land in.
    #[test]
    fn a_named_path_stays_in_the_first_group_that_names_it() {
        #[rustfmt::skip]
        let table: &[(&str, &[&str], &str)] = &[
            // path                               references                                          group
            ("glibc-2.36",                        &[],                                                "runtime"),
            ("python3-3.11.2",                    &["glibc-2.36", "python3.11-libs"],                 "runtime"),
            ("python3.11-libs",                   &["glibc-2.36"],                                    "runtime"),
            ("python3.11-nvidia-cublas-cu12-12.8", &["glibc-2.36"],                                   "cuda-torch"),
            ("python3.11-torch-2.10.0",           &["python3.11-nvidia-cublas-cu12-12.8", "python3.11-numpy-2.2.6", "python3.11-sympy-1.14"], "cuda-torch"),
            ("python3.11-sympy-1.14",             &["python3.11-mpmath-1.3"],                         "cuda-torch"),
            ("python3.11-mpmath-1.3",             &[],                                                "cuda-torch"),
            // The kernel depends on diffusers: diffusers stays with the frameworks that name it.
            ("python3.11-nunchaku-1.0.2",         &["python3.11-torch-2.10.0", "python3.11-diffusers-0.31.0", "python3.11-kernel-helper-1"], "kernels"),
            ("python3.11-kernel-helper-1",        &[],                                                "kernels"),
            ("python3.11-diffusers-0.31.0",       &["python3.11-importlib-metadata-8", "python3.11-numpy-2.2.6"], "ml"),
            // Named by no group, reached by the kernel only through diffusers: it follows diffusers.
            ("python3.11-importlib-metadata-8",   &[],                                                "ml"),
            // Torch depends on numpy, a lower group's kernel reaches it too: the group naming it wins.
            ("python3.11-numpy-2.2.6",            &[],                                                "scientific"),
            ("python3.11-env",                    &["python3-3.11.2", "python3.11-nunchaku-1.0.2", "python3.11-diffusers-0.31.0", "python3.11-stray-1"], "app"),
            // Only the env reaches it: it follows the env's group.
            ("python3.11-stray-1",                &[],                                                "app"),
            ("lonely-1",                          &[],                                                AUTO_GROUP),
        ];
        let c = Closure::new(table.iter().map(|(p, refs, _)| info(p, 1, refs))).unwrap();
        let groups = Groups::new(vec![
            Group::new("runtime", &["glibc-*", "python3-3.*[0-9]"], SplitMode::None, None).unwrap(),
            Group::new("cuda-torch", &["python3*-torch-*", "python3*-nvidia-*"], SplitMode::PerPath, None).unwrap(),
            Group::new("kernels", &["python3*-nunchaku-*"], SplitMode::PerPath, None).unwrap(),
            Group::new("ml", &["python3*-diffusers-*", "python3*-torch-*"], SplitMode::PerPath, None).unwrap(),
            Group::new("scientific", &["python3*-numpy-*"], SplitMode::PerPath, None).unwrap(),
            Group::new("app", &["python3*-env"], SplitMode::PerPath, None).unwrap(),
        ])
        .unwrap();
        let assigned = groups.assign(&c);
        for (path, _, want) in table {
            let got = groups.partition_name(assigned[&crate::closure::testing::sp(path)]);
            assert_eq!(got, *want, "{path}");
        }
        assert_eq!(assigned.len(), table.len());
        assert_eq!(groups.named_by("python3.11-torch-2.10.0"), Some(1), "the first group naming it");
        assert_eq!(groups.named_by("python3.11-importlib-metadata-8"), None);
        assert!(groups.warnings(&c, "t.toml").is_empty(), "{:?}", groups.warnings(&c, "t.toml"));
    }
}
