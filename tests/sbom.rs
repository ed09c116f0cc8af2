//! SBOMs (`nixoci sbom`, `build --sbom`) and OCI 1.1 referrers, with the real tools: the Nix test
//! closure compared with `nix path-info -r`, the Python closure's dist-info packages, the reference
//! validators (spdx-tools' `pyspdxtools`, cyclonedx-python-lib's JSON schema validator, installed
//! by `scripts/sbom-validators` into a venv under target/), and a real `docker-registry` (CNCF
//! distribution 2.8: no referrers API, so the `sha256-<hex>` referrers tag) on 127.0.0.1.
//!
//! Run: `cargo test --test sbom` (tools: nix-bin, gcc, jq, patchelf, python3.11 + python3-venv,
//! docker-registry, skopeo; PyPI reachable for the validators on first run).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::registry::{Registry, Setup};
use common::*;
use serde_json::Value;

const SPDX: &str = "application/spdx+json";
const CDX: &str = "application/vnd.cyclonedx+json";

/// The validators' venv, made once (None, after a SKIP note, when it cannot be made outside CI).
fn validators(test: &str) -> Option<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = DIR.get_or_init(|| {
        let dir = target_dir().join("sbom-validators");
        let out = output(Command::new(repo().join("scripts/sbom-validators")).arg(&dir));
        if out.status.success() {
            Ok(dir)
        } else {
            Err(format!("scripts/sbom-validators failed:\n{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    match r {
        Ok(d) => Some(d.clone()),
        Err(e) if in_ci() => panic!("{test}: {e}"),
        Err(e) => {
            eprintln!("SKIP (validators) {test}: {e}");
            None
        }
    }
}

/// Runs both reference validators; panics with their output when a document is invalid.
fn validate(test: &str, spdx: &Path, cdx: &Path) {
    let Some(v) = validators(test) else { return };
    run_ok(Command::new(v.join("bin/pyspdxtools")).arg("-i").arg(spdx));
    run_ok(Command::new(v.join("bin/validate-cyclonedx")).arg(cdx));
}

fn json_file(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `nixoci sbom ARGS… --format F -o FILE` with SOURCE_DATE_EPOCH=1700000000; returns the bytes.
fn sbom(args: &[&str], format: &str, out: &Path) -> Vec<u8> {
    run_ok(
        nixoci()
            .arg("sbom")
            .args(args)
            .args(["--format", format, "-o"])
            .arg(out)
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    );
    fs::read(out).unwrap()
}

/// SPDX packages by SPDXID.
fn spdx_packages(doc: &Value) -> BTreeMap<String, Value> {
    doc["packages"].as_array().unwrap().iter().map(|p| (p["SPDXID"].as_str().unwrap().to_owned(), p.clone())).collect()
}

fn purl_of(spdx_pkg: &Value) -> &str {
    spdx_pkg["externalRefs"].as_array().unwrap().iter().find(|r| r["referenceType"] == "purl").unwrap()
        ["referenceLocator"]
        .as_str()
        .unwrap()
}

/// store path → (NAR hash hex, references without itself), from `nix path-info -r` and
/// `nix hash to-base16`.
fn nix_path_info(c: &NixClosure) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let nix = |args: &[&str]| {
        run_ok_str(
            Command::new("nix")
                .args(args)
                .env("NIX_CONF_DIR", c.dir.join("nix-conf"))
                .env_remove("NIX_PATH")
                .env_remove("NIX_REMOTE"),
        )
    };
    let infos: Value = serde_json::from_str(&nix(&["path-info", "--json", "--recursive", &c.root])).unwrap();
    let infos = infos.as_array().expect("Nix 2.8 prints an array");
    let sri: Vec<&str> = infos.iter().map(|i| i["narHash"].as_str().unwrap()).collect();
    let mut args = vec!["hash", "to-base16", "--type", "sha256"];
    args.extend(sri.iter().copied());
    let hex: Vec<String> = nix(&args).lines().map(str::to_owned).collect();
    assert_eq!(hex.len(), infos.len());
    infos
        .iter()
        .zip(hex)
        .map(|(i, h)| {
            let path = i["path"].as_str().unwrap().to_owned();
            let refs = i["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned());
            let refs = refs.filter(|r| *r != path).collect();
            (path, (h, refs))
        })
        .collect()
}

#[test]
fn nix_closure_sbom_matches_nix_path_info_and_validates() {
    let Some(c) = nix_closure(test_name!(), 1) else { return };
    let t = tempdir();
    let closure = c.closure_json();
    let closure = closure.to_str().unwrap();
    let (spdx, cdx) = (t.path().join("a.spdx.json"), t.path().join("a.cdx.json"));
    let spdx_bytes = sbom(&["--closure", closure], "spdx", &spdx);
    let cdx_bytes = sbom(&["--closure", closure], "cyclonedx", &cdx);
    assert_eq!(sbom(&["--closure", closure], "spdx", &t.path().join("b")), spdx_bytes, "SPDX bytes are reproducible");
    assert_eq!(sbom(&["--closure", closure], "cyclonedx", &t.path().join("c")), cdx_bytes, "CycloneDX too");
    validate(test_name!(), &spdx, &cdx);

    let want = nix_path_info(c);
    assert_eq!(want.len(), c.store_paths.len());

    // SPDX: one package per store path, its NAR hash, its references as DEPENDS_ON.
    let doc = json_file(&spdx);
    assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z", "SOURCE_DATE_EPOCH is the creation time");
    let packages = spdx_packages(&doc);
    let mut by_path = BTreeMap::new();
    for (id, p) in packages.iter().filter(|(id, _)| id.starts_with("SPDXRef-Nix-")) {
        let path = p["packageFileName"].as_str().unwrap().to_owned();
        let name = path.split_once('-').unwrap().1;
        let joined = match p["versionInfo"].as_str() {
            Some(v) => format!("{}-{v}", p["name"].as_str().unwrap()),
            None => p["name"].as_str().unwrap().to_owned(),
        };
        assert_eq!(joined, name, "parseDrvName splits {path} into name and version");
        assert!(purl_of(p).starts_with("pkg:nix/"), "{p}");
        assert_eq!(p["checksums"][0]["algorithm"], "SHA256");
        by_path.insert(id.clone(), (path, p["checksums"][0]["checksumValue"].as_str().unwrap().to_owned()));
    }
    let mut got: BTreeMap<String, (String, BTreeSet<String>)> =
        by_path.values().map(|(path, hash)| (path.clone(), (hash.clone(), BTreeSet::new()))).collect();
    for r in doc["relationships"].as_array().unwrap().iter().filter(|r| r["relationshipType"] == "DEPENDS_ON") {
        let from = &by_path[r["spdxElementId"].as_str().unwrap()].0;
        let to = &by_path[r["relatedSpdxElement"].as_str().unwrap()].0;
        got.get_mut(from).unwrap().1.insert(to.clone());
    }
    assert_eq!(got, want, "SPDX packages, NAR hashes and DEPENDS_ON = nix path-info -r");
    let described: Vec<&str> = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "DESCRIBES")
        .map(|r| by_path[r["relatedSpdxElement"].as_str().unwrap()].0.as_str())
        .collect();
    assert_eq!(described, [c.root.as_str()], "the document describes the closure's root");

    // CycloneDX: the same, as components, hashes and dependencies.
    let doc = json_file(&cdx);
    assert_eq!(doc["metadata"]["timestamp"], "2023-11-14T22:13:20Z");
    let mut got = BTreeMap::new();
    for comp in doc["components"].as_array().unwrap() {
        let r = comp["bom-ref"].as_str().unwrap().to_owned();
        got.insert(r, (comp["hashes"][0]["content"].as_str().unwrap().to_owned(), BTreeSet::new()));
    }
    for d in doc["dependencies"].as_array().unwrap() {
        if let Some((_, refs)) = got.get_mut(d["ref"].as_str().unwrap()) {
            refs.extend(d["dependsOn"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()));
        }
    }
    assert_eq!(got, want, "CycloneDX components, hashes and dependencies = nix path-info -r");
}

/// The Python closure (scripts/python-closure), built once per run (a second build is a no-op).
fn python_closure() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-closure");
        run_ok(Command::new(repo().join("scripts/python-closure")).arg(&dir));
        dir
    })
    .clone()
}

#[test]
fn python_packages_are_found_by_their_dist_info_with_pypi_purls() {
    if !have_tools(test_name!(), &["nix-build", "nix", "patchelf", "jq", "/usr/bin/python3.11"]) {
        return;
    }
    let dir = python_closure();
    let closure = dir.join("closure.json");
    let closure = closure.to_str().unwrap();
    let t = tempdir();
    let (spdx, cdx) = (t.path().join("py.spdx.json"), t.path().join("py.cdx.json"));
    sbom(&["--closure", closure, "--store-root", "/nix/store"], "spdx", &spdx);
    sbom(&["--closure", closure, "--store-root", "/nix/store"], "cyclonedx", &cdx);
    validate(test_name!(), &spdx, &cdx);

    let want: BTreeMap<&str, (&str, &str, &str)> = BTreeMap::from([
        ("pkg:pypi/nixoci-greet@1.0", ("nixoci-greet", "1.0", "-python3.11-nixoci-greet-1.0")),
        ("pkg:pypi/nixoci-calc@0.2", ("nixoci-calc", "0.2", "-python3.11-nixoci-calc-0.2")),
    ]);
    // CycloneDX: exactly these two pypi components (the venv-style env's symlinks to them are
    // not counted again), each naming the store path that holds it.
    let doc = json_file(&cdx);
    let pypi: Vec<&Value> = doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["purl"].as_str().unwrap().starts_with("pkg:pypi/"))
        .collect();
    assert_eq!(pypi.len(), 2, "{pypi:?}");
    for c in pypi {
        let (name, version, path_suffix) = want[c["purl"].as_str().unwrap()];
        assert_eq!((c["name"].as_str().unwrap(), c["version"].as_str().unwrap()), (name, version));
        let holder = c["properties"].as_array().unwrap().iter().find(|p| p["name"] == "nixoci:store-path").unwrap();
        assert!(holder["value"].as_str().unwrap().ends_with(path_suffix), "{c}");
    }
    // SPDX: the same purls, each package CONTAINed by its store path's package.
    let doc = json_file(&spdx);
    let packages = spdx_packages(&doc);
    let contains: BTreeMap<&str, &str> = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "CONTAINS")
        .map(|r| (r["relatedSpdxElement"].as_str().unwrap(), r["spdxElementId"].as_str().unwrap()))
        .collect();
    let mut seen = BTreeSet::new();
    for (id, p) in &packages {
        let purl = purl_of(p);
        if !purl.starts_with("pkg:pypi/") {
            continue;
        }
        let (name, version, path_suffix) = want[purl];
        assert_eq!((p["name"].as_str().unwrap(), p["versionInfo"].as_str().unwrap()), (name, version));
        let holder = &packages[contains[id.as_str()]];
        assert!(holder["packageFileName"].as_str().unwrap().ends_with(path_suffix), "{holder}");
        seen.insert(purl.to_owned());
    }
    assert_eq!(seen, want.keys().map(|k| k.to_string()).collect());
}

/// The status code of a plain `GET path` to the registry on 127.0.0.1:`port`.
fn get_status(port: u16, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/vnd.oci.image.index.v1+json\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{head}"))
}

fn skopeo_raw(image: &str) -> Value {
    let out = run_ok(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", image]));
    serde_json::from_slice(&out).unwrap()
}

/// The artifact types of the referrers an index lists, after checking each manifest (read with
/// skopeo) is an OCI 1.1 artifact about `subject`.
fn check_referrers_index(index: &Value, repo: &str, subject: &str) -> BTreeSet<String> {
    let mut types = BTreeSet::new();
    for d in index["manifests"].as_array().unwrap() {
        let m = skopeo_raw(&format!("docker://{repo}@{}", d["digest"].as_str().unwrap()));
        assert_eq!(m["subject"]["digest"], subject, "{m}");
        assert_eq!(m["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
        assert_eq!(m["config"]["size"], 2);
        assert_eq!(m["artifactType"], d["artifactType"]);
        assert_eq!(m["layers"][0]["mediaType"], d["artifactType"]);
        types.insert(d["artifactType"].as_str().unwrap().to_owned());
    }
    types
}

fn nixoci_json(args: &[&str]) -> Value {
    serde_json::from_slice(&run_ok(nixoci().args(args))).unwrap()
}

#[test]
fn build_sbom_attaches_referrers_to_layouts_and_registries_and_copy_carries_them() {
    require_tools!("docker-registry", "skopeo");
    let Some(c) = nix_closure(test_name!(), 1) else { return };
    let reg = Registry::start(Setup::Plain);
    let t = tempdir();
    let closure = c.closure_json();
    let closure = closure.to_str().unwrap();
    let layout = t.path().join("built");
    let oci_ref = format!("oci:{}:v1", layout.display());
    let repo = format!("{}/t/app", reg.host());
    let docker_ref = format!("docker://{repo}:v1");
    let built = build(&["--closure", closure, "--sbom", "spdx,cyclonedx", "-o", &oci_ref, "-o", &docker_ref]);
    let subject = built.manifest_digest.clone();

    // The registry has no referrers API: the artifacts are listed under the referrers tag.
    assert_eq!(get_status(reg.port, &format!("/v2/t/app/referrers/{subject}")), 404, "distribution 2.8 lacks the API");
    let tag = format!("docker://{repo}:sha256-{}", subject.strip_prefix("sha256:").unwrap());
    let index = skopeo_raw(&tag);
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(check_referrers_index(&index, &repo, &subject), BTreeSet::from([SPDX.into(), CDX.into()]));

    // The layout lists them in index.json beside the image, which stays the one image to read.
    let idx = json_file(&layout.join("index.json"));
    let artifacts: Vec<&Value> =
        idx["manifests"].as_array().unwrap().iter().filter(|m| m.get("artifactType").is_some()).collect();
    assert_eq!(artifacts.len(), 2, "{idx}");
    // build --json names them: the same two artifacts in both destinations.
    let sboms = built.json["sboms"].as_array().unwrap();
    assert_eq!(sboms.len(), 4, "{sboms:?}");
    let in_layout: BTreeSet<&str> = artifacts.iter().map(|a| a["digest"].as_str().unwrap()).collect();
    let in_registry: BTreeSet<&str> =
        index["manifests"].as_array().unwrap().iter().map(|a| a["digest"].as_str().unwrap()).collect();
    for s in sboms {
        let d = s["digest"].as_str().unwrap();
        assert!(in_layout.contains(d) && in_registry.contains(d), "{s}");
    }
    let skopeo_digest = run_ok_str(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", &oci_ref]));
    assert_eq!(skopeo_digest.trim(), subject, "skopeo still reads the image from the layout");

    // `nixoci sbom IMAGE` fetches the attached documents: the same from both places, the same
    // as computing them again with the image's layers, and valid.
    let (spdx, cdx) = (t.path().join("reg.spdx.json"), t.path().join("reg.cdx.json"));
    let from_reg = sbom(&[&docker_ref], "spdx", &spdx);
    let cdx_from_reg = sbom(&[&docker_ref], "cyclonedx", &cdx);
    validate(test_name!(), &spdx, &cdx);
    assert_eq!(sbom(&[&oci_ref], "spdx", &t.path().join("l.spdx")), from_reg);
    let recomputed = run_ok(nixoci().args(["sbom", &oci_ref, "--closure", closure, "--format", "spdx"]));
    assert_eq!(recomputed, [from_reg.as_slice(), b"\n"].concat(), "build --sbom = sbom IMAGE --closure");
    // Every package names the layer holding it, as the image's layer annotations say.
    let image = Layout::new(&layout).image(Some("v1"));
    let doc: Value = serde_json::from_slice(&from_reg).unwrap();
    for p in
        doc["packages"].as_array().unwrap().iter().filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-Nix-"))
    {
        let path = p["packageFileName"].as_str().unwrap();
        let layer = p["annotations"][0]["comment"].as_str().unwrap().strip_prefix("org.nixos.nixoci.layers=").unwrap();
        let holder = image
            .layers
            .iter()
            .find(|l| l.annotation("org.nixos.nixoci.store-paths").is_some_and(|a| a.lines().any(|x| x == path)))
            .unwrap_or_else(|| panic!("no layer holds {path}"));
        assert_eq!(layer, holder.descriptor["digest"].as_str().unwrap(), "{path}");
    }

    // inspect lists them.
    let ins = nixoci_json(&["inspect", &docker_ref, "--json"]);
    let types: BTreeSet<&str> =
        ins["referrers"].as_array().unwrap().iter().map(|r| r["artifactType"].as_str().unwrap()).collect();
    assert_eq!(types, BTreeSet::from([SPDX, CDX]));

    // copy carries them: docker → oci, oci → oci, oci → docker (another repository), and a second
    // copy finds them there.
    let copied = t.path().join("copied");
    let to_oci = format!("oci:{}:x", copied.display());
    assert_eq!(nixoci_json(&["copy", "-q", "--json", &docker_ref, &to_oci])["referrers"], 2);
    assert_eq!(sbom(&[&to_oci], "cyclonedx", &t.path().join("c.cdx")), cdx_from_reg);
    let again = format!("oci:{}:y", t.path().join("again").display());
    assert_eq!(nixoci_json(&["copy", "-q", "--json", &to_oci, &again])["referrers"], 2);
    let other = format!("{}/t/other", reg.host());
    let to_docker = format!("docker://{other}:x");
    assert_eq!(nixoci_json(&["copy", "-q", "--json", &again, &to_docker])["referrers"], 2);
    let tag = format!("docker://{other}:sha256-{}", subject.strip_prefix("sha256:").unwrap());
    assert_eq!(check_referrers_index(&skopeo_raw(&tag), &other, &subject), BTreeSet::from([SPDX.into(), CDX.into()]));
    assert_eq!(nixoci_json(&["copy", "-q", "--json", &again, &to_docker])["referrers"], 0, "already there");
    assert_eq!(sbom(&[&to_docker], "spdx", &t.path().join("o.spdx")), from_reg);
}

#[test]
fn sbom_of_an_image_without_one_fails_clearly_and_attach_adds_it() {
    let Some(c) = nix_closure(test_name!(), 1) else { return };
    let t = tempdir();
    let closure = c.closure_json();
    let closure = closure.to_str().unwrap();
    let image = format!("oci:{}:plain", t.path().join("plain").display());
    build(&["--closure", closure, "-o", &image]);
    let out = output(nixoci().args(["sbom", &image, "--format", "cyclonedx"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("has no cyclonedx SBOM attached") && err.contains("--closure"), "{err}");
    let computed = run_ok(nixoci().args(["sbom", &image, "--closure", closure, "--format", "cyclonedx", "--attach"]));
    let fetched = run_ok(nixoci().args(["sbom", &image, "--format", "cyclonedx"]));
    assert_eq!(fetched, computed, "the attached document is the one computed");
    let ins = nixoci_json(&["inspect", &image, "--json"]);
    assert_eq!(ins["referrers"].as_array().unwrap().len(), 1, "{ins}");
    // Attaching again changes nothing.
    run_ok(nixoci().args(["sbom", &image, "--closure", closure, "--format", "cyclonedx", "--attach"]));
    assert_eq!(nixoci_json(&["inspect", &image, "--json"])["referrers"], ins["referrers"]);
}
