//! The layer cache and the parallel paths: same digests with and without the cache and for any
//! --jobs; warm rebuilds read nothing; damaged cache entries and blobs are detected and rebuilt.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A store of three paths, one of them big enough (9 MiB) to span several compression chunks.
fn make_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    let paths = [
        ("0c7mkyx2ra1ph9nd61mcvy0kh8lsaxhr-big-1.0", 9usize << 20),
        ("1b9p07z77phvv2hf6gm9f28syp39f1ag-small-1.0", 3000),
        ("2a9p07z77phvv2hf6gm9f28syp39f1ag-root", 10),
    ];
    let mut infos = Vec::new();
    for (i, (name, size)) in paths.iter().enumerate() {
        let p = store.join(name).join("lib");
        fs::create_dir_all(&p).unwrap();
        // Compressible but not trivial: text-like lines with varying numbers.
        let mut data = Vec::with_capacity(*size);
        let mut n = 0u64;
        while data.len() < *size {
            data.extend_from_slice(
                format!("line {n} value {} of {name}\n", n.wrapping_mul(2654435761) % 1000003).as_bytes(),
            );
            n += 1;
        }
        data.truncate(*size);
        fs::write(p.join("data"), &data).unwrap();
        let refs: Vec<String> = paths[..i].iter().map(|(n, _)| format!("/nix/store/{n}")).collect();
        let hash = format!(
            "sha256-{}",
            [
                "AivTWHjbI5km6uA8asoMuzC8UzPoXd0XuwGzbexzo/0=",
                "BivTWHjbI5km6uA8asoMuzC8UzPoXd0XuwGzbexzo/0=",
                "CivTWHjbI5km6uA8asoMuzC8UzPoXd0XuwGzbexzo/0="
            ][i]
        );
        infos.push(serde_json::json!({"path": format!("/nix/store/{name}"), "narHash": hash, "narSize": size + 400, "references": refs}));
    }
    let closure = dir.join("closure.json");
    fs::write(&closure, serde_json::to_vec(&infos).unwrap()).unwrap();
    closure
}

fn build(closure: &Path, cache: Option<&Path>, extra: &[&str]) -> Value {
    let mut cmd = Command::new(common::bin());
    cmd.args(["build", "--json", "-q", "--closure"])
        .arg(closure)
        .arg("--store-root")
        .arg(closure.parent().unwrap().join("store"));
    match cache {
        Some(c) => cmd.arg("--cache-dir").arg(c),
        None => cmd.arg("--no-cache"),
    };
    cmd.args(extra);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn digest(v: &Value) -> &str {
    v["manifest_digest"].as_str().unwrap()
}

#[test]
fn same_digests_for_any_jobs_with_and_without_cache() {
    let dir = common::tempdir();
    let closure = make_store(dir.path());
    for comp in ["gzip", "zstd"] {
        let mut seen = Vec::new();
        for jobs in ["1", "2", "8"] {
            let out = format!("oci:{}/{comp}-{jobs}", dir.path().display());
            seen.push(digest(&build(&closure, None, &["--compression", comp, "--jobs", jobs, "-o", &out])).to_owned());
        }
        let cache = dir.path().join(format!("cache-{comp}"));
        let out = format!("oci:{}/{comp}-cached", dir.path().display());
        seen.push(digest(&build(&closure, Some(&cache), &["--compression", comp, "-o", &out])).to_owned());
        let out = format!("oci-archive:{}/{comp}-cached.tar", dir.path().display());
        seen.push(digest(&build(&closure, Some(&cache), &["--compression", comp, "-o", &out])).to_owned());
        seen.dedup();
        assert_eq!(seen.len(), 1, "{comp}: digests differ across --jobs/cache: {seen:?}");
    }
}

#[test]
fn warm_rebuild_reads_nothing() {
    let dir = common::tempdir();
    let closure = make_store(dir.path());
    let cache = dir.path().join("cache");
    let out = format!("oci:{}/oci", dir.path().display());
    let cold = build(&closure, Some(&cache), &["-o", &out]);
    assert!(cold["stats"]["bytes_read"].as_u64().unwrap() > 9 << 20);
    assert_eq!(cold["stats"]["cache_hits"], 0);
    // Same destination: every blob is there already.
    let warm = build(&closure, Some(&cache), &["-o", &out]);
    assert_eq!(digest(&warm), digest(&cold));
    assert_eq!(warm["stats"]["bytes_read"], 0, "{warm:#}");
    assert_eq!(warm["stats"]["layers_built"], 0);
    assert_eq!(warm["stats"]["cache_hits"].as_u64().unwrap() as usize, cold["layers"].as_array().unwrap().len());
    // A new archive destination: the blobs come from the cache, still nothing read.
    let archive = format!("oci-archive:{}/a.tar", dir.path().display());
    let warm = build(&closure, Some(&cache), &["-o", &archive]);
    assert_eq!(warm["stats"]["bytes_read"], 0, "{warm:#}");
    assert_eq!(digest(&warm), digest(&cold));
}

#[test]
fn damaged_cache_is_detected_and_rebuilt() {
    let dir = common::tempdir();
    let closure = make_store(dir.path());
    let cache = dir.path().join("cache");
    let out = |n: &str| format!("oci-archive:{}/{n}.tar", dir.path().display());
    let cold = build(&closure, Some(&cache), &["-o", &out("cold")]);

    // Flip a byte in every cached blob: each must be detected and the layer rebuilt.
    for b in fs::read_dir(cache.join("blobs/sha256")).unwrap() {
        let p = b.unwrap().path();
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&p, bytes).unwrap();
    }
    let again = build(&closure, Some(&cache), &["-o", &out("blobs")]);
    assert_eq!(digest(&again), digest(&cold));
    assert_eq!(again["stats"]["cache_hits"], 0, "a damaged blob was trusted: {again:#}");

    // Garbage entries, and entries that lie about the digest.
    let entries: Vec<PathBuf> = fs::read_dir(cache.join("layers")).unwrap().map(|e| e.unwrap().path()).collect();
    for (i, e) in entries.iter().enumerate() {
        if i % 2 == 0 {
            fs::write(e, b"{ not json").unwrap();
        } else {
            let mut v: Value = serde_json::from_slice(&fs::read(e).unwrap()).unwrap();
            v["blob"]["digest"] = Value::String(format!("sha256:{}", "0".repeat(64)));
            fs::write(e, serde_json::to_vec(&v).unwrap()).unwrap();
        }
    }
    let again = build(&closure, Some(&cache), &["-o", &out("entries")]);
    assert_eq!(digest(&again), digest(&cold));
    assert_eq!(again["stats"]["cache_hits"], 0, "a damaged entry was trusted: {again:#}");
    // And the repaired cache works again.
    let warm = build(&closure, Some(&cache), &["-o", &out("warm")]);
    assert_eq!(warm["stats"]["bytes_read"], 0);
    assert_eq!(digest(&warm), digest(&cold));
}
