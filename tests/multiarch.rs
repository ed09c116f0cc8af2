//! Multi-arch images: `nixoci index` over an amd64 and an arm64 image built from real closures —
//! Debian's busybox-static for amd64 and for arm64 (`apt-get download busybox-static:arm64`, laid
//! out as a store path by `scripts/arm64-closure`) — written to `oci:`, `oci-archive:` and a
//! loopback `docker-registry`, read back by skopeo (`inspect --raw`, `copy --override-arch`) and
//! podman (`pull --arch`, and `run --arch arm64` where qemu is registered with binfmt_misc);
//! `copy`, `inspect` and `diff` of the index; the ELF check refusing a mislabelled image.
//!
//! Tools: apt-get (with the arm64 package lists: `dpkg --add-architecture arm64 && apt-get
//! update`, which scripts/test does), dpkg-deb, python3, skopeo, podman + runc, docker-registry;
//! qemu-user-static for running the arm64 image.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::registry::{Registry, Setup};
use common::*;
use serde_json::Value;

/// Where the downloaded .debs are kept between runs.
fn deb_dir() -> PathBuf {
    target_dir().join("multiarch-debs")
}

/// The busybox-static .deb of Debian architecture `arch`, downloaded once (None, with a SKIP note
/// outside CI, when apt cannot get it).
fn busybox_deb(test: &str, arch: &str) -> Option<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = deb_dir();
    fs::create_dir_all(&dir).unwrap();
    let find = || {
        fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(&format!("_{arch}.deb")))
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let out = output(Command::new("apt-get").args(["download", &format!("busybox-static:{arch}")]).current_dir(&dir));
    match find() {
        Some(p) if out.status.success() => Some(p),
        _ => {
            let why = format!(
                "apt-get download busybox-static:{arch} failed (for arm64: dpkg --add-architecture arm64 && apt-get update):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if in_ci() {
                panic!("{test}: {why}");
            }
            eprintln!("SKIP {test}: {why}");
            None
        }
    }
}

/// A closure dir made by scripts/arm64-closure: `closure.json`, `store/`, `image.json`.
struct Closure {
    dir: PathBuf,
    store_path: String,
}

fn closure(test: &str, t: &Path, arch: &str) -> Option<Closure> {
    let deb = busybox_deb(test, arch)?;
    let dir = t.join(arch);
    let out = run_ok_str(Command::new(repo().join("scripts/arm64-closure")).arg(&dir).arg(arch).arg(&deb));
    Some(Closure { dir, store_path: out.trim().to_owned() })
}

impl Closure {
    /// `nixoci build` of this closure with `spec` (default: its image.json) to `dest`.
    fn build(&self, spec: Option<&Path>, dest: &str) -> std::process::Output {
        let spec = spec.map_or_else(|| self.dir.join("image.json"), Path::to_path_buf);
        output(
            nixoci()
                .args(["build", "--json", "-q", "--closure"])
                .arg(self.dir.join("closure.json"))
                .arg("--store-root")
                .arg(self.dir.join("store"))
                .arg("--image")
                .arg(spec)
                .args(["-o", dest]),
        )
    }

    fn build_ok(&self, dest: &str) -> Value {
        let out = self.build(None, dest);
        assert!(out.status.success(), "build failed:\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap()
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    run_ok(Command::new("skopeo").args(args))
}

/// Whether the kernel runs aarch64 binaries through qemu (binfmt_misc), for `podman run --arch arm64`.
fn arm64_runs() -> bool {
    Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists()
        && fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_ok_and(|s| s.starts_with("enabled"))
}

#[test]
fn an_index_of_amd64_and_arm64_images_through_layouts_archives_and_a_registry() {
    require_tools!("apt-get", "dpkg-deb", "python3", "skopeo", "podman", "runc", "docker-registry");
    let name = test_name!();
    let t = tempdir();
    let Some(amd) = closure(name, t.path(), "amd64") else { return };
    let Some(arm) = closure(name, t.path(), "arm64") else { return };
    let p = |s: &str| t.path().join(s).display().to_string();

    // Two builds: each config says its platform.
    let built_amd = amd.build_ok(&format!("oci:{}:1.0", p("amd")));
    let built_arm = arm.build_ok(&format!("oci:{}:1.0", p("arm")));
    let digest = |b: &Value, k: &str| b[k].as_str().unwrap().to_owned();
    let (amd_manifest, arm_manifest) = (digest(&built_amd, "manifest_digest"), digest(&built_arm, "manifest_digest"));
    let (amd_config, arm_config) = (digest(&built_amd, "config_digest"), digest(&built_arm, "config_digest"));
    let arm_cfg = json(&blob(&t.path().join("arm"), &arm_config));
    assert_eq!((arm_cfg["architecture"].as_str(), arm_cfg["os"].as_str()), (Some("arm64"), Some("linux")));
    assert_eq!(json(&blob(&t.path().join("amd"), &amd_config))["architecture"], "amd64");

    // The index in an oci: layout: index.json names the index, tagged; the index lists both.
    let multi = t.path().join("multi");
    let out = run_ok(nixoci().args([
        "index",
        "--json",
        "-q",
        &format!("oci:{}:1.0", multi.display()),
        &format!("oci:{}:1.0", p("arm")),
        &format!("oci:{}:1.0", p("amd")),
    ]));
    let report = json(&out);
    let index_digest = report["index_digest"].as_str().unwrap().to_owned();
    let top = json(&fs::read(multi.join("index.json")).unwrap());
    let entry = &top["manifests"][0];
    assert_eq!(top["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(entry["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(entry["digest"], index_digest.as_str());
    assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], "1.0");
    let index_bytes = blob(&multi, &index_digest);
    assert_eq!(sha256_digest(&index_bytes), index_digest, "the index blob hashes to its digest");
    assert_eq!(entry["size"].as_u64(), Some(index_bytes.len() as u64));
    let index = json(&index_bytes);
    let listed: Vec<(String, String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["os"].as_str().unwrap().to_owned(),
                m["platform"]["architecture"].as_str().unwrap().to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("linux".into(), "amd64".into(), amd_manifest.clone()),
            ("linux".into(), "arm64".into(), arm_manifest.clone())
        ],
        "sorted by platform, the builds' manifests"
    );
    for d in [&amd_manifest, &arm_manifest, &amd_config, &arm_config] {
        assert!(multi.join("blobs/sha256").join(&d[7..]).is_file(), "{d} carried");
    }
    for m in index["manifests"].as_array().unwrap() {
        let manifest = json(&blob(&multi, m["digest"].as_str().unwrap()));
        for l in manifest["layers"].as_array().unwrap() {
            let b = blob(&multi, l["digest"].as_str().unwrap());
            assert_eq!(sha256_digest(&b), l["digest"].as_str().unwrap(), "layer carried intact");
        }
    }
    // Deterministic: the other order gives the same bytes.
    let again = t.path().join("again");
    run_ok(nixoci().args([
        "index",
        "-q",
        &format!("oci:{}:1.0", again.display()),
        &format!("oci:{}:1.0", p("amd")),
        &format!("oci:{}:1.0", p("arm")),
    ]));
    assert_eq!(blob(&again, &index_digest), index_bytes);
    // skopeo reads it and picks the arm64 manifest.
    let multi_ref = format!("oci:{}:1.0", multi.display());
    assert_eq!(skopeo(&["inspect", "--raw", &multi_ref]), index_bytes);
    let picked = t.path().join("picked");
    skopeo(&["copy", "-q", "--override-arch", "arm64", &multi_ref, &format!("oci:{}:x", picked.display())]);
    assert_eq!(json(&fs::read(picked.join("index.json")).unwrap())["manifests"][0]["digest"], arm_manifest.as_str());

    // skopeo copying the whole index (--all) writes the same index: same digest.
    let all = t.path().join("all");
    skopeo(&["copy", "-q", "--all", &multi_ref, &format!("oci:{}:1.0", all.display())]);
    assert_eq!(json(&fs::read(all.join("index.json")).unwrap())["manifests"][0]["digest"], index_digest.as_str());

    // oci-archive: the same index.
    let tar = p("multi.tar");
    run_ok(nixoci().args(["index", "-q", &format!("oci-archive:{tar}:1.0"), &multi_ref]));
    assert_eq!(skopeo(&["inspect", "--raw", &format!("oci-archive:{tar}:1.0")]), index_bytes);

    // A registry: each manifest by digest, the index at the tag.
    let reg = Registry::start(Setup::Plain);
    let url = format!("docker://{}/nixoci/multi:1.0", reg.host());
    let pushed = json(&run_ok(nixoci().args(["index", "--json", "-q", &url, &multi_ref])));
    assert_eq!(pushed["index_digest"], index_digest.as_str());
    assert_eq!(skopeo(&["inspect", "--tls-verify=false", "--raw", &url]), index_bytes);
    for (arch, manifest) in [("arm64", &arm_manifest), ("amd64", &amd_manifest)] {
        let got = json(&skopeo(&["inspect", "--tls-verify=false", "--override-arch", arch, &url]));
        assert_eq!(got["Architecture"], arch);
        let raw = skopeo(&["inspect", "--tls-verify=false", "--override-arch", arch, "--raw", &url]);
        // --raw gives the index; the picked manifest is fetched by digest.
        assert_eq!(raw, index_bytes);
        let by_digest = skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{}/nixoci/multi@{manifest}", reg.host()),
        ]);
        assert_eq!(sha256_digest(&by_digest), *manifest);
    }
    let from_reg = t.path().join("from-reg");
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--override-arch",
        "arm64",
        &url,
        &format!("oci:{}:x", from_reg.display()),
    ]);
    assert_eq!(json(&fs::read(from_reg.join("index.json")).unwrap())["manifests"][0]["digest"], arm_manifest.as_str());

    // podman pulls each platform's image by --arch (image ID = config digest).
    let podman = Podman::new();
    let pref = format!("{}/nixoci/multi:1.0", reg.host());
    let pull = |arch: &str| {
        run_ok(podman.cmd().args(["pull", "-q", "--tls-verify=false", "--arch", arch, &pref]));
        run_ok_str(podman.cmd().args(["image", "inspect", "--format", "{{.Id}} {{.Architecture}}", &pref]))
    };
    assert_eq!(pull("arm64").trim(), format!("{} arm64", &arm_config[7..]));
    if arm64_runs() {
        let out = run_ok_str(podman.cmd().args(["run", "--rm", "--pull", "never", "--arch", "arm64", &pref]));
        assert_eq!(out.trim(), "aarch64", "the arm64 busybox ran under qemu");
    } else {
        let why = "qemu-aarch64 is not registered with binfmt_misc (scripts/test registers it where it can)";
        eprintln!("NOTE {name}: not running the arm64 image: {why}");
    }
    assert_eq!(pull("amd64").trim(), format!("{} amd64", &amd_config[7..]));
    assert_eq!(run_ok_str(podman.cmd().args(["run", "--rm", "--pull", "never", &pref])).trim(), "x86_64");

    // copy: the whole index from the registry (bytes unchanged), or one platform.
    let copied = t.path().join("copied");
    let c = json(&run_ok(nixoci().args(["copy", "--json", "-q", &url, &format!("oci:{}:2.0", copied.display())])));
    assert_eq!(c["manifest_digest"], index_digest.as_str());
    assert_eq!(c["platforms"].as_array().unwrap().len(), 2);
    assert_eq!(blob(&copied, &index_digest), index_bytes);
    let top = json(&fs::read(copied.join("index.json")).unwrap());
    assert_eq!(top["manifests"][0]["digest"], index_digest.as_str());
    assert_eq!(skopeo(&["inspect", "--raw", &format!("oci:{}:2.0", copied.display())]), index_bytes);
    let one = t.path().join("one");
    let c = json(&run_ok(nixoci().args([
        "copy",
        "--json",
        "-q",
        "--platform",
        "linux/arm64",
        &url,
        &format!("oci:{}:1", one.display()),
    ])));
    assert_eq!(c["manifest_digest"], arm_manifest.as_str());
    assert_eq!(json(&fs::read(one.join("index.json")).unwrap())["manifests"][0]["digest"], arm_manifest.as_str());
    let err = output(nixoci().args(["copy", "--platform", "linux/s390x", &url, &format!("oci:{}", p("none"))]));
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("no linux/s390x manifest (it has: linux/amd64, linux/arm64)")
    );
    // An index copied registry → registry keeps its digest.
    let url2 = format!("docker://{}/nixoci/copy:3", reg.host());
    run_ok(nixoci().args(["copy", "-q", &url, &url2]));
    assert_eq!(skopeo(&["inspect", "--tls-verify=false", "--raw", &url2]), index_bytes);

    // inspect: one section per platform; diff: per platform pair.
    let text = run_ok_str(nixoci().args(["inspect", &url]));
    assert!(text.contains(&format!("DIGEST       {index_digest}")), "{text}");
    let amd_at = text.find("== linux/amd64 ==").expect(&text);
    let arm_at = text.find("== linux/arm64 ==").expect(&text);
    assert!(amd_at < arm_at);
    assert!(text[amd_at..arm_at].contains(&amd.store_path), "{text}");
    assert!(text[arm_at..].contains(&arm.store_path), "{text}");
    let ins = json(&run_ok(nixoci().args(["inspect", "--json", &multi_ref])));
    assert_eq!(ins["platforms"][1]["platform"], "linux/arm64");
    assert_eq!(ins["platforms"][1]["image"]["manifest_digest"], arm_manifest.as_str());
    let d = json(&run_ok(nixoci().args(["diff", "--json", &multi_ref, &format!("oci:{}:1.0", p("arm"))])));
    assert_eq!(d["removed"], serde_json::json!(["linux/amd64"]));
    assert_eq!(d["platforms"][0]["platform"], "linux/arm64");
    assert_eq!(d["platforms"][0]["diff"]["identical"], true);
    let text = run_ok_str(nixoci().args(["diff", &multi_ref, &format!("oci-archive:{tar}:1.0")]));
    assert!(text.contains("== linux/amd64 ==") && text.contains("== linux/arm64 =="), "{text}");
}

#[test]
fn a_mislabelled_image_is_refused_before_anything_is_written() {
    require_tools!("apt-get", "dpkg-deb", "python3");
    let name = test_name!();
    let t = tempdir();
    let Some(arm) = closure(name, t.path(), "arm64") else { return };
    let Some(amd) = closure(name, t.path(), "amd64") else { return };
    for (c, declared, actual, machine) in
        [(&arm, "amd64", "arm64", "e_machine 183, EM_AARCH64"), (&amd, "arm64", "amd64", "e_machine 62, EM_X86_64")]
    {
        let mut spec = json(&fs::read(c.dir.join("image.json")).unwrap());
        spec["architecture"] = declared.into();
        let file = t.path().join(format!("mislabelled-{actual}.json"));
        fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
        let dest = t.path().join(format!("never-{actual}"));
        let out = c.build(Some(&file), &format!("oci:{}:1", dest.display()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a {actual} closure labelled {declared} was built");
        let want = format!(
            "{sp}/bin/busybox (in store path {sp}) is an ELF file for {actual} ({machine}), but the image's architecture is {declared}",
            sp = c.store_path
        );
        assert!(err.contains(&want), "error lacks {want:?}:\n{err}");
        assert!(!dest.exists(), "nothing written");
    }
    // A store path listed in `foreign_elf` is not checked.
    let mut spec = json(&fs::read(arm.dir.join("image.json")).unwrap());
    spec["architecture"] = "amd64".into();
    spec["foreign_elf"] = serde_json::json!(["busybox-static-*"]);
    let file = t.path().join("foreign.json");
    fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let out = arm.build(Some(&file), &format!("oci:{}:1", t.path().join("foreign").display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Correctly labelled, with a variant: the config and the index carry it.
    let mut spec = json(&fs::read(arm.dir.join("image.json")).unwrap());
    spec["variant"] = "v8".into();
    let file = t.path().join("v8.json");
    fs::write(&file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let layout = t.path().join("v8");
    let out = arm.build(Some(&file), &format!("oci:{}:1", layout.display()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let built = json(&out.stdout);
    let cfg = json(&blob(&layout, built["config_digest"].as_str().unwrap()));
    assert_eq!(cfg["variant"], "v8");
    let multi = t.path().join("multi");
    run_ok(nixoci().args([
        "index",
        "-q",
        &format!("oci:{}:1", multi.display()),
        &format!("oci:{}:1", layout.display()),
    ]));
    let top = json(&fs::read(multi.join("index.json")).unwrap());
    let index = json(&blob(&multi, top["manifests"][0]["digest"].as_str().unwrap()));
    assert_eq!(
        index["manifests"][0]["platform"],
        serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
    );
}

#[test]
fn one_image_per_platform_and_only_destinations_that_hold_an_index() {
    require_tools!("apt-get", "dpkg-deb", "python3");
    let name = test_name!();
    let t = tempdir();
    let Some(amd) = closure(name, t.path(), "amd64") else { return };
    let img = format!("oci:{}:1", t.path().join("amd").display());
    amd.build_ok(&img);
    let refused = |dest: String, images: &[&str], want: &str| {
        let out = output(nixoci().arg("index").arg(&dest).args(images));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "index {dest} should fail");
        assert!(err.contains(want), "error lacks {want:?}:\n{err}");
    };
    let dest = t.path().join("dup");
    refused(format!("oci:{}", dest.display()), &[&img, &img], "two images are for linux/amd64");
    assert!(!dest.exists(), "nothing written");
    refused(
        format!("docker-archive:{}", t.path().join("x.tar").display()),
        &[&img],
        "a docker-archive holds single images",
    );
    refused(
        "docker://127.0.0.1:1/r@sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        &[&img],
        "name a tag, not a digest",
    );
}
