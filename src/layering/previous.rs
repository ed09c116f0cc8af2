//! The previous release's layers, which a new plan tries to keep.
//!
//! Built from what `nixoci plan --json` or `nixoci build --json` printed (`layers[]` with `group`
//! and `paths`), or from an image's layer annotations (`org.nixos.nixoci.group`,
//! `org.nixos.nixoci.store-paths` = newline-joined full store paths). Consecutive layers that
//! share a store path are the parts of one split layer and become one slot.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::closure::StorePath;

/// One slot of the previous image: a plan layer (all its build-time parts together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousLayer {
    pub group: String,
    /// Sorted, no duplicates.
    pub paths: Vec<StorePath>,
}

/// The previous image's store layers, bottom first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Previous {
    pub layers: Vec<PreviousLayer>,
    /// The cap the previous layers were split under, when known: split layers are only reusable
    /// under the same cap.
    pub max_layer_size: Option<u64>,
}

#[derive(Deserialize)]
struct Doc {
    layers: Vec<DocLayer>,
    #[serde(default)]
    max_layer_size: Option<u64>,
}

#[derive(Deserialize)]
struct DocLayer {
    #[serde(default)]
    group: String,
    #[serde(default)]
    paths: Vec<StorePath>,
}

impl Previous {
    /// Layers in image order, each its group and store paths. Layers with no store path (the
    /// customisation layer) are skipped; consecutive layers sharing a path are merged into one slot.
    pub fn from_layers(
        layers: impl IntoIterator<Item = (String, Vec<StorePath>)>,
        max_layer_size: Option<u64>,
    ) -> Self {
        let mut out: Vec<PreviousLayer> = Vec::new();
        let mut seen: BTreeSet<StorePath> = BTreeSet::new();
        for (group, paths) in layers {
            let mut set: BTreeSet<StorePath> = paths.into_iter().collect();
            if set.is_empty() {
                continue;
            }
            if let Some(last) = out.last_mut()
                && last.paths.iter().any(|p| set.contains(p))
            {
                set.extend(std::mem::take(&mut last.paths));
                last.paths = set.into_iter().collect();
                continue;
            }
            // A path in two separate slots is not something we wrote; keep its first slot.
            set.retain(|p| !seen.contains(p));
            if set.is_empty() {
                continue;
            }
            seen.extend(set.iter().cloned());
            out.push(PreviousLayer { group, paths: set.into_iter().collect() });
        }
        Self { layers: out, max_layer_size }
    }

    /// Parses `plan --json` or `build --json` output; `origin` names it in errors.
    pub fn from_plan_json(text: &str, origin: &str) -> Result<Self> {
        let doc: Doc = serde_json::from_str(text).with_context(|| {
            format!(
                "reading previous plan {origin}: expected the JSON of `nixoci plan --json` or `nixoci build --json`"
            )
        })?;
        let prev = Self::from_layers(doc.layers.into_iter().map(|l| (l.group, l.paths)), doc.max_layer_size);
        if prev.layers.is_empty() {
            bail!("previous plan {origin} has no store layers");
        }
        Ok(prev)
    }

    /// Reads a previous plan file (`--previous PLAN.json`).
    pub fn load(file: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading previous plan {}", file.display()))?;
        Self::from_plan_json(&text, &file.display().to_string())
    }

    /// From an image manifest's layer descriptors, bottom first: each the value of its
    /// `org.nixos.nixoci.group` and `org.nixos.nixoci.store-paths` annotations (if present).
    /// Layers without store paths (customisation, or layers nixoci did not make) are skipped.
    pub fn from_annotations<'a>(layers: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>) -> Result<Self> {
        let mut out = Vec::new();
        for (i, (group, paths)) in layers.into_iter().enumerate() {
            let paths = paths
                .unwrap_or("")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| StorePath::parse(l).with_context(|| format!("layer {} of the previous image", i + 1)))
                .collect::<Result<Vec<_>>>()?;
            out.push((group.unwrap_or("").to_owned(), paths));
        }
        Ok(Self::from_layers(out, None))
    }

    /// Every store path of the previous image.
    pub fn all_paths(&self) -> BTreeSet<&StorePath> {
        self.layers.iter().flat_map(|l| l.paths.iter()).collect()
    }
}

/// The key under which a path keeps its slot across releases: its name with the hash gone, the
/// version-like parts (those that start with a digit) dropped and `pythonX.Y` written `python`:
/// `python3.14-diffusers-0.31.0` → `python-diffusers`, `libcublas-13.0.0.19-lib` → `libcublas-lib`.
/// A bump keeps the key, so the new version lands in the old version's slot.
pub fn slot_key(name: &str) -> String {
    let parts: Vec<&str> = name
        .split('-')
        .filter(|s| !s.starts_with(|c: char| c.is_ascii_digit()))
        .map(|s| match s.strip_prefix("python") {
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') => "python",
            _ => s,
        })
        .collect();
    if parts.is_empty() { name.to_owned() } else { parts.join("-") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::testing::sp;

    #[test]
    fn keys_drop_versions() {
        assert_eq!(slot_key("python3.14-diffusers-0.31.0"), "python-diffusers");
        assert_eq!(slot_key("python3.15-diffusers-0.32.0"), "python-diffusers");
        assert_eq!(slot_key("python3-3.14.0"), "python");
        assert_eq!(slot_key("python3-3.14.0-env"), "python-env");
        assert_eq!(slot_key("libcublas-13.0.0.19-lib"), "libcublas-lib");
        assert_eq!(slot_key("cudnn-9.13.0.50-lib"), "cudnn-lib");
        assert_eq!(slot_key("python3.14-sageattention-2.2.0+cu130torch2.10.0"), "python-sageattention");
        assert_eq!(slot_key("0ad-0.27"), "0ad-0.27");
    }

    #[test]
    fn split_parts_become_one_slot_and_customisation_is_skipped() {
        let (a, b, c) = (sp("a"), sp("b"), sp("c"));
        let p = Previous::from_layers(
            [
                ("g".to_owned(), vec![a.clone()]),
                ("torch".to_owned(), vec![b.clone()]),
                ("torch".to_owned(), vec![b.clone()]),
                ("torch".to_owned(), vec![b.clone(), c.clone()]),
                ("customisation".to_owned(), vec![]),
            ],
            None,
        );
        assert_eq!(p.layers.len(), 2);
        let mut bc = vec![b, c];
        bc.sort();
        assert_eq!(p.layers[1].paths, bc);
    }

    #[test]
    fn reads_build_json_and_annotations() {
        let a = sp("python3.14-torch-2.10.0");
        let json = format!(
            r#"{{"manifest_digest":"sha256:x","layers":[{{"digest":"sha256:1","size":3,"group":"torch","paths":["{a}"]}},{{"group":"customisation","paths":[]}}]}}"#
        );
        let p = Previous::from_plan_json(&json, "v1.json").unwrap();
        assert_eq!(p.layers, vec![PreviousLayer { group: "torch".into(), paths: vec![a.clone()] }]);
        let full = a.to_string();
        let q =
            Previous::from_annotations([(Some("torch"), Some(full.as_str())), (Some("customisation"), None)]).unwrap();
        assert_eq!(q.layers, p.layers);
        let err = Previous::from_plan_json("{\"digest\": 1}", "x.json").unwrap_err();
        assert!(format!("{err:#}").contains("x.json"));
        assert!(Previous::from_annotations([(None, Some("/usr/bin/x"))]).is_err());
    }
}
