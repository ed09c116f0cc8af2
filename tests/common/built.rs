//! `nixoci build --json`: running it and checking the JSON document it prints.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::process::Command;

use serde_json::Value;

use super::{assert_digest_syntax, describe, full_store_path, nixoci, output};

/// What `nixoci build --json` printed.
#[derive(Debug, Clone)]
pub struct Built {
    pub json: Value,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<Value>,
    pub stderr: String,
}

impl Built {
    /// Store paths (full `/nix/store/…` form) of every layer, in layer order.
    pub fn layer_paths(&self) -> Vec<Vec<String>> {
        self.layers
            .iter()
            .map(|l| {
                l["paths"]
                    .as_array()
                    .map(|a| a.iter().map(|p| full_store_path(p.as_str().expect("path string"))).collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    pub fn all_paths(&self) -> BTreeSet<String> {
        self.layer_paths().into_iter().flatten().collect()
    }
}

/// `nixoci build ARGS --json`; panics unless it succeeds and prints the documented JSON.
pub fn build<S: AsRef<OsStr>>(args: &[S]) -> Built {
    let mut cmd = nixoci();
    cmd.arg("build").args(args).arg("--json");
    build_with(&mut cmd)
}

/// Runs a prepared `nixoci build … --json` command.
pub fn build_with(cmd: &mut Command) -> Built {
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        panic!("`{}` failed ({}):\n{stderr}", describe(cmd), out.status);
    }
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("`{}`: --json printed no JSON document ({e}):\n{}", describe(cmd), String::from_utf8_lossy(&out.stdout))
    });
    let s =
        |k: &str| json[k].as_str().unwrap_or_else(|| panic!("--json output lacks string {k:?}: {json:#}")).to_string();
    let manifest_digest = s("manifest_digest");
    let config_digest = s("config_digest");
    for d in [&manifest_digest, &config_digest] {
        assert_digest_syntax(d);
    }
    let layers = json["layers"].as_array().unwrap_or_else(|| panic!("--json lacks layers: {json:#}")).clone();
    for l in &layers {
        for k in ["digest", "diff_id", "media_type"] {
            assert!(l[k].is_string(), "--json layer lacks {k:?}: {l:#}");
        }
        assert!(l["size"].is_u64(), "--json layer lacks size: {l:#}");
        assert!(l["paths"].is_array(), "--json layer lacks paths: {l:#}");
        assert!(l.get("group").is_some(), "--json layer lacks group: {l:#}");
        assert_digest_syntax(l["digest"].as_str().unwrap());
        assert_digest_syntax(l["diff_id"].as_str().unwrap());
    }
    Built { json, manifest_digest, config_digest, layers, stderr }
}
