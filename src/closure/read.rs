//! Readers for every closure shape Nix produces (DESIGN.md §4), detected from the content.
//!
//! - `nix path-info --json --recursive`: an array of objects (Nix ≤ 2.18, Lix); an object keyed by
//!   full store path, `null` for invalid paths (2.19–2.32); `{version, storeDir, info: {basename: …}}`
//!   (2.33+, references as base names).
//! - `exportReferencesGraph`: the classic text file (path, deriver, count, references…) and the
//!   structured-attrs JSON `{"closure": [{path, narHash, narSize, references}]}`, alone or as the
//!   whole `.attrs.json` Nix gives the builder (its `exportReferencesGraph` names the graphs).
//! - A closureInfo output directory: `store-paths` and `registration`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::{Closure, NarHash, PathInfo, StorePath};

/// Reads `--closure FILE`, whatever its shape.
pub fn closure_file(file: &Path) -> Result<Closure> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading closure file {}", file.display()))?;
    let closure = parse(&text).with_context(|| format!("reading closure file {}", file.display()))?;
    if closure.is_empty() {
        bail!("closure file {} lists no store path", file.display());
    }
    Ok(closure)
}

/// Reads `--closure-info DIR` (nixpkgs' closureInfo output).
pub fn closure_info(dir: &Path) -> Result<Closure> {
    let file = dir.join("registration");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading closureInfo registration {}", file.display()))?;
    let closure = parse_registration(&text).with_context(|| format!("reading {}", file.display()))?;
    let listed = dir.join("store-paths");
    if let Ok(paths) = std::fs::read_to_string(&listed) {
        for (n, line) in paths.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let p = StorePath::parse(line.trim()).with_context(|| format!("{}:{}", listed.display(), n + 1))?;
            if closure.get(&p).is_none() {
                bail!("{}:{}: {p} is not in the registration", listed.display(), n + 1);
            }
        }
    }
    if closure.is_empty() {
        bail!("closureInfo {} lists no store path", dir.display());
    }
    Ok(closure)
}

/// Asks Nix for the closure of `roots` (`nix path-info --json --recursive`).
pub fn from_nix(roots: &[String]) -> Result<Closure> {
    let output = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "path-info", "--json", "--recursive"])
        .args(roots)
        .output()
        .map_err(|e| {
            anyhow!("running `nix path-info` for {}: {e} (is Nix installed? without it, pass --closure FILE or --closure-info DIR)", roots.join(" "))
        })?;
    if !output.status.success() {
        bail!(
            "`nix path-info --json --recursive {}` failed: {}",
            roots.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8(output.stdout).context("`nix path-info` printed invalid UTF-8")?;
    parse(&text).context("reading the output of `nix path-info`")
}

/// Parses any closure text: JSON shapes or the classic exportReferencesGraph text.
pub fn parse(text: &str) -> Result<Closure> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let value: Value = serde_json::from_str(text).context("invalid JSON")?;
        parse_json(&value)
    } else {
        parse_graph(text)
    }
}

fn parse_json(value: &Value) -> Result<Closure> {
    let infos: Vec<PathInfo> = match value {
        Value::Array(items) => items.iter().map(|v| path_info(None, v)).collect::<Result<_>>()?,
        Value::Object(map)
            if map.contains_key("info") && (map.contains_key("version") || map.contains_key("storeDir")) =>
        {
            let info = map["info"].as_object().ok_or_else(|| anyhow!("\"info\" is not an object"))?;
            info.iter().map(|(k, v)| path_info(Some(k), v)).collect::<Result<_>>()?
        }
        Value::Object(map) if map.get("exportReferencesGraph").is_some_and(Value::is_object) => {
            // A whole `.attrs.json` of a structured-attrs derivation: its `exportReferencesGraph`
            // names the attributes holding the graphs; several graphs are merged.
            let mut seen = BTreeSet::new();
            let mut infos = Vec::new();
            for name in map["exportReferencesGraph"].as_object().into_iter().flat_map(|o| o.keys()) {
                let items = map
                    .get(name)
                    .and_then(Value::as_array)
                    .ok_or_else(|| anyhow!("exportReferencesGraph names {name:?}, which is not an array here"))?;
                for item in items {
                    let info = path_info(None, item).with_context(|| format!("in {name:?}"))?;
                    if seen.insert(info.path.clone()) {
                        infos.push(info);
                    }
                }
            }
            infos
        }
        Value::Object(map) if map.len() == 1 && map.values().all(Value::is_array) => {
            // structured-attrs exportReferencesGraph: {"closure": [...]}, whatever the attribute name
            let items = map.values().next().and_then(Value::as_array).expect("one array value, matched above");
            items.iter().map(|v| path_info(None, v)).collect::<Result<_>>()?
        }
        Value::Object(map) => map.iter().map(|(k, v)| path_info(Some(k), v)).collect::<Result<_>>()?,
        _ => bail!("expected a JSON array or object of store path information"),
    };
    Closure::new(infos)
}

fn path_info(key: Option<&str>, v: &Value) -> Result<PathInfo> {
    let obj = match v {
        Value::Object(o) => o,
        Value::Null => bail!("store path {} is not valid (Nix reports it as null: is it built?)", key.unwrap_or("?")),
        _ => bail!("expected an object for store path {}", key.unwrap_or("?")),
    };
    let path_str = match (obj.get("path").and_then(Value::as_str), key) {
        (Some(p), _) => p,
        (None, Some(k)) => k,
        (None, None) => bail!("an entry has no \"path\": {}", short(v)),
    };
    let path = StorePath::parse(path_str)?;
    if obj.get("valid") == Some(&Value::Bool(false)) {
        bail!("store path {path} is not valid (is it built?)");
    }
    let nar_hash = match obj.get("narHash") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(NarHash::parse(s).with_context(|| format!("store path {path}"))?),
        // 2.33+ may spell hashes as {"algorithm": "sha256", "hash": "…", …}
        Some(Value::Object(h)) => {
            let s = h
                .get("hash")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("store path {path}: narHash object without \"hash\""))?;
            Some(NarHash::parse(s).with_context(|| format!("store path {path}"))?)
        }
        Some(other) => bail!("store path {path}: unexpected narHash {other}"),
    };
    let nar_size = match obj.get("narSize") {
        None | Some(Value::Null) => None,
        Some(n) => Some(n.as_u64().ok_or_else(|| anyhow!("store path {path}: narSize {n} is not a size"))?),
    };
    let references = match obj.get("references") {
        None | Some(Value::Null) => BTreeSet::new(),
        Some(Value::Array(refs)) => refs
            .iter()
            .map(|r| {
                let s = r.as_str().ok_or_else(|| anyhow!("store path {path}: reference {r} is not a string"))?;
                StorePath::parse(s).with_context(|| format!("store path {path}: bad reference"))
            })
            .collect::<Result<_>>()?,
        Some(other) => bail!("store path {path}: references must be an array, not {}", short(other)),
    };
    Ok(PathInfo { path, nar_hash, nar_size, references })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

/// The classic exportReferencesGraph file: blocks of path, deriver, count, references.
fn parse_graph(text: &str) -> Result<Closure> {
    let mut lines = text.lines().enumerate().map(|(n, l)| (n + 1, l));
    let mut infos = Vec::new();
    while let Some((n, line)) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let path = StorePath::parse(line).with_context(|| format!("line {n}"))?;
        let _deriver = lines.next().ok_or_else(|| anyhow!("line {n}: {path} ends before its deriver line"))?;
        let (cn, count) = lines.next().ok_or_else(|| anyhow!("line {n}: {path} ends before its reference count"))?;
        let count: usize =
            count.trim().parse().with_context(|| format!("line {cn}: reference count {count:?} of {path}"))?;
        let mut references = BTreeSet::new();
        for _ in 0..count {
            let (rn, r) = lines
                .next()
                .ok_or_else(|| anyhow!("line {cn}: {path} lists {count} references, the file ends first"))?;
            references.insert(StorePath::parse(r).with_context(|| format!("line {rn}"))?);
        }
        infos.push(PathInfo { path, nar_hash: None, nar_size: None, references });
    }
    Closure::new(infos)
}

/// closureInfo's `registration` (`nix-store --dump-db`): path, NAR hash, NAR size, deriver,
/// count, references.
fn parse_registration(text: &str) -> Result<Closure> {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut infos = Vec::new();
    let take = |i: &mut usize, what: &str, path: &StorePath| -> Result<(usize, &str)> {
        let line = lines.get(*i).ok_or_else(|| anyhow!("{path}: the file ends before its {what}"))?;
        *i += 1;
        Ok((*i, *line))
    };
    while i < lines.len() {
        if lines[i].trim().is_empty() {
            i += 1;
            continue;
        }
        let path = StorePath::parse(lines[i]).with_context(|| format!("line {}", i + 1))?;
        i += 1;
        let (hn, hash) = take(&mut i, "NAR hash", &path)?;
        let nar_hash = NarHash::parse(hash.trim()).with_context(|| format!("line {hn}"))?;
        let (sn, size) = take(&mut i, "NAR size", &path)?;
        let nar_size: u64 = size.trim().parse().with_context(|| format!("line {sn}: NAR size {size:?}"))?;
        take(&mut i, "deriver", &path)?;
        let (cn, count) = take(&mut i, "reference count", &path)?;
        let count: usize = count.trim().parse().with_context(|| format!("line {cn}: reference count {count:?}"))?;
        let mut references = BTreeSet::new();
        for _ in 0..count {
            let (rn, r) = take(&mut i, "references", &path)?;
            references.insert(StorePath::parse(r).with_context(|| format!("line {rn}"))?);
        }
        infos.push(PathInfo { path, nar_hash: Some(nar_hash), nar_size: Some(nar_size), references });
    }
    Closure::new(infos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/0c7mkyx2ra1ph9nd61mcvy0kh8lsaxhr-app";
    const B: &str = "/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-lib";
    const SRI: &str = "sha256-AivTWHjbI5km6uA8asoMuzC8UzPoXd0XuwGzbexzo/0=";
    const HEX: &str = "022bd35878db239926eae03c6aca0cbb30bc5333e85ddd17bb01b36dec73a3fd";

    fn check(c: &Closure) {
        assert_eq!(c.len(), 2);
        let a = c.get(&StorePath::parse(A).unwrap()).unwrap();
        assert_eq!(a.references.iter().map(|r| r.to_string()).collect::<Vec<_>>(), [B]);
        assert_eq!(c.roots().len(), 1);
    }

    #[test]
    fn array_shape() {
        let text = format!(
            r#"[{{"path":"{A}","narHash":"{SRI}","narSize":10,"references":["{A}","{B}"],"deriver":null}},
               {{"path":"{B}","narHash":"{SRI}","narSize":20,"references":[]}}]"#
        );
        let c = parse(&text).unwrap();
        check(&c);
        assert_eq!(c.nar_size(&StorePath::parse(B).unwrap()), 20);
    }

    #[test]
    fn keyed_object_shape_and_null() {
        let text = format!(
            r#"{{"{A}":{{"narHash":"sha256:{HEX}","narSize":1,"references":["{B}"]}},"{B}":{{"narSize":2,"references":[]}}}}"#
        );
        check(&parse(&text).unwrap());
        let bad = format!(r#"{{"{A}":null}}"#);
        let err = format!("{:#}", parse(&bad).unwrap_err());
        assert!(err.contains(A) && err.contains("not valid"), "{err}");
    }

    #[test]
    fn versioned_shape_with_base_names() {
        let (a, b) = (&A[11..], &B[11..]);
        let text = format!(
            r#"{{"version":2,"storeDir":"/nix/store","info":{{"{a}":{{"narHash":{{"algorithm":"sha256","format":"base16","hash":"{HEX}"}},"narSize":1,"references":["{b}"]}},"{b}":{{"narHash":"{SRI}","narSize":2,"references":[]}}}}}}"#
        );
        check(&parse(&text).unwrap());
    }

    #[test]
    fn structured_attrs_shape() {
        let text = format!(
            r#"{{"closure":[{{"path":"{A}","narHash":"sha256:{HEX}","narSize":1,"references":["{B}"]}},{{"path":"{B}","narSize":1,"references":[]}}]}}"#
        );
        check(&parse(&text).unwrap());
    }

    #[test]
    fn whole_attrs_json_of_a_structured_attrs_derivation() {
        let entry = |p: &str, refs: &str| {
            format!(r#"{{"path":"{p}","narHash":"sha256:{HEX}","narSize":1,"references":[{refs}]}}"#)
        };
        let text = format!(
            r#"{{"args":["-c","x"],"builder":"/bin/sh","exportReferencesGraph":{{"app":["{A}"],"lib":["{B}"]}},
               "app":[{},{}],"lib":[{}],"name":"n","outputs":{{"out":"/nix/store/2a9p07z77phvv2hf6gm9f28syp39f1ag-n"}},"system":"x86_64-linux"}}"#,
            entry(A, &format!("\"{B}\"")),
            entry(B, ""),
            entry(B, "")
        );
        check(&parse(&text).unwrap());
        let err = format!("{:#}", parse(r#"{"exportReferencesGraph":{"g":["/nix/store/x"]},"name":"n"}"#).unwrap_err());
        assert!(err.contains("\"g\""), "{err}");
    }

    #[test]
    fn graph_text_shape() {
        let text = format!("{A}\n\n2\n{A}\n{B}\n{B}\n/nix/store/2a9p07z77phvv2hf6gm9f28syp39f1ag-lib.drv\n0\n");
        check(&parse(&text).unwrap());
        let err = format!("{:#}", parse(&format!("{A}\n\n3\n{B}\n")).unwrap_err());
        assert!(err.contains("lists 3 references"), "{err}");
    }

    #[test]
    fn registration_shape() {
        let text = format!("{A}\n{HEX}\n10\n\n2\n{A}\n{B}\n{B}\n{HEX}\n20\n\n0\n");
        let c = parse_registration(&text).unwrap();
        check(&c);
        assert_eq!(c.get(&StorePath::parse(A).unwrap()).unwrap().nar_hash.unwrap().to_hex(), HEX);
    }

    #[test]
    fn truncated_json_says_where() {
        let err = format!("{:#}", parse(&format!("[{{\"path\":\"{A}\",")).unwrap_err());
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn long_multibyte_values_are_shortened_without_panicking() {
        let text = format!(r#"[{{"comment":"{}{}"}}]"#, "a".repeat(61), "é".repeat(40));
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("no \"path\""), "{err}");
    }

    #[test]
    fn invalid_name_is_named() {
        let err = format!("{:#}", parse(r#"[{"path":"/nix/store/tooshort-x","references":[]}]"#).unwrap_err());
        assert!(err.contains("/nix/store/tooshort-x"), "{err}");
    }
}
