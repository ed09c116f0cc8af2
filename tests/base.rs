//! `build --from IMAGE`: the Nix test closure on a base nixoci did not build — a busybox rootfs
//! (Debian's busybox-static) made into an OCI image by umoci — and the metadata CI pipelines stamp
//! (`--label`, `--annotation`). Real tools: umoci, skopeo, podman (runc, private settings).
//! Registry bases are tested in tests/registry.rs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// A busybox image made by umoci in `dir/base` (tag `1`): `/bin/sh` and `/bin/cat` are busybox,
/// `/etc/passwd` has root and bob (1001), the config sets `PATH`, `BASEVAR`, a `Cmd` and a label.
fn busybox_base(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::copy(which("busybox").expect("busybox (busybox-static)"), rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "id"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n")
        .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nbob:x:1001:\n").unwrap();
    let layout = dir.join("base");
    let img = format!("{}:1", layout.display());
    let umoci = |args: &[&str]| run_ok(Command::new("umoci").args(args));
    umoci(&["init", "--layout", &layout.display().to_string()]);
    umoci(&["new", "--image", &img]);
    umoci(&["insert", "--rootless", "--image", &img, &rootfs.display().to_string(), "/"]);
    umoci(&[
        "config",
        "--image",
        &img,
        "--config.env",
        "PATH=/bin",
        "--config.env",
        "BASEVAR=from-base",
        "--config.cmd",
        "/bin/sh",
        "--config.label",
        "org.example.base=busybox",
    ]);
    layout
}

/// `nix/store/…-hello/bin/hello`.
fn hello_rel(c: &NixClosure) -> String {
    format!("{}/bin/hello", c.hello.trim_start_matches('/'))
}

/// The base's manifest digest and its one layer's descriptor (umoci's manifest has no
/// mediaType, which `Layout::image` insists on).
fn base_manifest(layout: &Path) -> (String, Value) {
    let l = Layout::new(layout);
    let desc = l.manifest_descriptor(Some("1"));
    let manifest: Value = serde_json::from_slice(&l.blob(&desc)).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "umoci made one layer");
    (desc["digest"].as_str().unwrap().to_owned(), layers[0].clone())
}

#[test]
fn closure_on_a_busybox_base_runs_with_the_base_shell() {
    require_tools!("umoci", "busybox", "skopeo", "podman", "runc");
    let Some(c) = nix_closure(test_name!(), 1) else { return };
    let t = tempdir();
    let layout = busybox_base(t.path());
    let base_ref = format!("oci:{}:1", layout.display());
    let spec = nix_image_toml(c, t.path());
    let out = t.path().join("out");
    let (oa, da) = (t.path().join("img.tar"), t.path().join("img-docker.tar"));
    let args = |extra: &[String]| -> Vec<String> {
        let mut a = vec![
            "--closure".into(),
            c.closure_json().display().to_string(),
            "--image".into(),
            spec.display().to_string(),
            "--from".into(),
            base_ref.clone(),
            "--label".into(),
            "org.opencontainers.image.revision=abc123".into(),
            "--annotation".into(),
            "org.opencontainers.image.source=https://example.invalid/comfy".into(),
        ];
        a.extend(extra.iter().cloned());
        a
    };
    let built = build(&args(&[
        "-o".into(),
        format!("oci:{}:1", out.display()),
        "-o".into(),
        format!("oci-archive:{}:localhost/based:1", oa.display()),
        "-o".into(),
        format!("docker-archive:{}:localhost/based-docker:1", da.display()),
    ]));

    // The base's layer comes first, byte for byte: same digest, same blob.
    let (base_manifest, want) = base_manifest(&layout);
    let first = &built.layers[0];
    assert_eq!(first["digest"], want["digest"]);
    assert_eq!(first["group"], "base");
    let digest = want["digest"].as_str().unwrap();
    let blob = |dir: &Path| fs::read(dir.join("blobs/sha256").join(&digest[7..])).unwrap();
    assert!(blob(&layout) == blob(&out), "the base blob was copied, not remade");
    let image = Layout::new(&out).image(Some("1"));
    assert_eq!(image.manifest["layers"][0]["annotations"]["org.nixos.nixoci.group"], "base");
    // umoci checks every layer's digest, size and diff_id as it unpacks.
    let bundle = t.path().join("bundle");
    run_ok(
        Command::new("umoci").args(["unpack", "--rootless", "--image", &format!("{}:1", out.display())]).arg(&bundle),
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file() && bundle.join("rootfs").join(hello_rel(c)).is_file());

    // Config: the base's Env first (ours replace by name, then add), its history first, labels
    // merged.
    let config = &image.config["config"];
    let env: Vec<&str> = config["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(env[0], format!("PATH={}/bin", c.root), "ours replaces the base's PATH in place");
    assert_eq!(env[1], "BASEVAR=from-base");
    assert!(env.contains(&"GREETING=nixoci e2e"), "{env:?}");
    assert_eq!(config["Labels"]["org.example.base"], "busybox");
    assert_eq!(config["Labels"]["org.opencontainers.image.revision"], "abc123");
    let history = image.config["history"].as_array().unwrap();
    assert!(history[0]["created_by"].as_str().unwrap().starts_with("umoci"), "{history:?}");

    // Metadata as the tools CI uses see it.
    let inspect: Value = serde_json::from_str(&run_ok_str(
        Command::new("skopeo").args(["inspect", &format!("oci:{}:1", out.display())]),
    ))
    .unwrap();
    assert_eq!(inspect["Labels"]["org.opencontainers.image.revision"], "abc123");
    let raw: Value = serde_json::from_str(&run_ok_str(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci:{}:1", out.display()),
    ])))
    .unwrap();
    let ann = &raw["annotations"];
    assert_eq!(ann["org.opencontainers.image.source"], "https://example.invalid/comfy");
    assert_eq!(ann["org.opencontainers.image.created"], "1970-01-01T00:00:01Z");
    assert!(ann.get("org.opencontainers.image.base.name").is_none(), "a local path never enters the image: {ann}");
    assert_eq!(ann["org.opencontainers.image.base.digest"], base_manifest.as_str());
    let text = run_ok_str(nixoci().args(["inspect", &format!("oci:{}:1", out.display())]));
    assert!(
        text.lines()
            .any(|l| l.starts_with("BASE ") && l.ends_with(&format!(" {base_manifest} (its layers: group base)"))),
        "{text}"
    );
    // The customisation layer adds no parent directory over the base's (its /etc stays its own).
    let custom = image.layers.last().unwrap();
    let entries = tar_entries(&decompress(MT_LAYER_GZIP, &Layout::new(&out).blob(&custom.descriptor)));
    assert!(entries.iter().any(|e| e.path == "etc/passwd") && !entries.iter().any(|e| e.path == "etc"), "{entries:?}");
    assert!(text.contains("org.opencontainers.image.source"), "inspect shows the annotations:\n{text}");

    // podman: the base's /bin/sh runs the closure's program, from every archive kind.
    let podman = Podman::new();
    let hello = format!("{}/bin/hello", c.hello);
    for (file, name) in [(&oa, "localhost/based:1"), (&da, "localhost/based-docker:1")] {
        podman.load(file);
        let got = run_ok_str(
            podman
                .cmd()
                .args(["run", "--rm", "--pull", "never", "--entrypoint", "/bin/sh", name, "-c"])
                .arg(format!("exec {hello}")),
        );
        assert_eq!(got, c.expected_hello, "{name}");
        let passwd = run_ok_str(podman.cmd().args([
            "run",
            "--rm",
            "--pull",
            "never",
            "--entrypoint",
            "/bin/cat",
            name,
            "/etc/passwd",
        ]));
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\nbob:x:1001:"), "the base's users first:\n{passwd}");
        assert!(passwd.contains("\napp:x:1000:1000:"), "ours added:\n{passwd}");
    }
    // … and `-o - | podman load`.
    let mut producer = nixoci()
        .arg("build")
        .args(args(&["-o".into(), "-".into(), "-q".into()]))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let load = podman.cmd().arg("load").stdin(producer.stdout.take().unwrap()).output().unwrap();
    assert!(producer.wait().unwrap().success());
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let id = String::from_utf8_lossy(&load.stdout).lines().last().unwrap().rsplit(' ').next().unwrap().to_owned();
    let got = run_ok_str(
        podman
            .cmd()
            .args(["run", "--rm", "--pull", "never", "--entrypoint", "/bin/sh", &id, "-c"])
            .arg(format!("exec {hello}")),
    );
    assert_eq!(got, c.expected_hello);

    // Reproducible on a base: the same digest again, with one job and a cold cache, and from a
    // copy of the base at another path.
    let again = build(&args(&["-o".into(), format!("oci:{}:again", out.display()), "--jobs".into(), "1".into()]));
    assert_eq!(again.manifest_digest, built.manifest_digest);
    let copy = t.path().join("base-copy");
    run_ok(Command::new("cp").arg("-a").arg(&layout).arg(&copy));
    let mut copy_args = args(&["-o".into(), format!("oci:{}:copy", out.display())]);
    let at = copy_args.iter().position(|a| *a == base_ref).unwrap();
    copy_args[at] = format!("oci:{}:1", copy.display());
    assert_eq!(build(&copy_args).manifest_digest, built.manifest_digest, "the base's path is not in the image");

    // The base moves (a new config, same layer): diff says so, and its layer is still shared.
    run_ok(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:1", layout.display()),
        "--tag",
        "2",
        "--config.env",
        "BASEVAR=moved",
    ]));
    let moved_ref = format!("oci:{}:2", layout.display());
    let mut moved_args = args(&["-o".into(), format!("oci:{}:2", out.display())]);
    let at = moved_args.iter().position(|a| *a == base_ref).unwrap();
    moved_args[at] = moved_ref.clone();
    build(&moved_args);
    let d: Value = serde_json::from_str(&run_ok_str(nixoci().args([
        "diff",
        &format!("oci:{}:1", out.display()),
        &format!("oci:{}:2", out.display()),
        "--json",
    ])))
    .unwrap();
    let changes = d["config"].as_array().unwrap();
    let base_change = changes.iter().find(|c| c["field"] == "base image").expect("diff names the moved base");
    let moved_manifest = Layout::new(&layout).manifest_descriptor(Some("2"))["digest"].as_str().unwrap().to_owned();
    assert_eq!(base_change["old"], format!("- {base_manifest}"), "{base_change}");
    assert_eq!(base_change["new"], format!("- {moved_manifest}"), "{base_change}");
    assert!(changes.iter().any(|c| c["field"] == "env BASEVAR"), "{changes:?}");
    let shared: Vec<&str> =
        d["layers"]["shared"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert!(shared.contains(&digest), "the base layer is shared");
}

#[test]
fn a_base_of_another_platform_or_a_clashing_user_is_refused() {
    require_tools!("umoci", "busybox");
    let Some(c) = nix_closure(test_name!(), 1) else { return };
    let t = tempdir();
    let layout = busybox_base(t.path());
    let base_ref = format!("oci:{}:1", layout.display());
    let refused = |spec: &str, want: &[&str]| {
        let file = t.path().join("spec.toml");
        fs::write(&file, spec).unwrap();
        let dest = t.path().join("never");
        let out = output(nixoci().args(["build", "--closure"]).arg(c.closure_json()).args([
            "--image",
            &file.display().to_string(),
            "--from",
            &base_ref,
            "-o",
            &format!("oci:{}:1", dest.display()),
        ]));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "should fail: {spec}");
        for w in want {
            assert!(err.contains(w), "error lacks {w:?}:\n{err}");
        }
        assert!(!dest.exists(), "nothing written");
    };
    refused("architecture = \"arm64\"\n", &["--from", "is linux/amd64, the image being built is linux/arm64"]);
    // The policy gate counts the base's layer whatever the destinations (a docker-archive alone
    // too), and resolves the base's user through the base's /etc/passwd.
    let policy = t.path().join("policy.toml");
    fs::write(&policy, "max_layers = 2\nnon_root_user = true\n").unwrap();
    let spec = t.path().join("bare.toml");
    fs::write(&spec, "").unwrap();
    for dest in [
        format!("oci:{}:1", t.path().join("p-oci").display()),
        format!("docker-archive:{}", t.path().join("p.tar").display()),
    ] {
        let out = output(nixoci().args(["build", "--closure"]).arg(c.closure_json()).args([
            "--image",
            &spec.display().to_string(),
            "--from",
            &base_ref,
            "--policy",
            &policy.display().to_string(),
            "-o",
            &dest,
        ]));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{dest}: the policy must refuse it");
        let layers = c.store_paths.len().min(100) + 1;
        assert!(err.contains(&format!("{layers} layers")), "{dest}: the base's layer is counted:\n{err}");
        assert!(
            err.contains("no User is set") || err.contains("runs as root"),
            "{dest}: the base runs as root:\n{err}"
        );
    }
    refused(
        "[[users]]\nname = \"carl\"\nuid = 1001\ngid = 1001\n",
        &[
            "user carl (uid 1001) of the image spec clashes with the base image's user bob (uid 1001)",
            "/etc/passwd",
            &base_ref,
        ],
    );
}

#[test]
fn a_base_in_the_registry_is_mounted_not_uploaded() {
    use common::registry::{Registry, Setup};
    require_tools!("umoci", "busybox", "skopeo", "docker-registry");
    let Some(c) = nix_closure(test_name!(), 1) else { return };
    let t = tempdir();
    let layout = busybox_base(t.path());
    let (_, base_layer) = base_manifest(&layout);
    let reg = Registry::start(Setup::Plain);
    let host = reg.host();
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .args(reg.skopeo_flags("dest"))
            .arg(format!("oci:{}:1", layout.display()))
            .arg(format!("docker://{host}/acme/base:1")),
    );
    let spec = nix_image_toml(c, t.path());
    let archive = t.path().join("img-docker.tar");
    // The Nix test closure on the registry's base, into `outputs`.
    let build_on_base = |outputs: &[String]| {
        let mut args = vec![
            "--closure".to_owned(),
            c.closure_json().display().to_string(),
            "--image".into(),
            spec.display().to_string(),
            "--from".into(),
            format!("docker://{host}/acme/base:1"),
        ];
        args.extend(outputs.iter().flat_map(|o| ["-o".to_owned(), o.clone()]));
        build(&args)
    };
    let built = build_on_base(&[
        format!("docker://{host}/acme/app:1"),
        format!("docker-archive:{}:localhost/app:1", archive.display()),
    ]);
    let stats = &built.json["stats"];
    assert_eq!(built.layers[0]["digest"], base_layer["digest"], "the base's layer first, by digest");
    assert_eq!(stats["blobs_mounted"], 1, "the base's layer is mounted from acme/base: {stats}");
    let ours: u64 = built.layers[1..].iter().map(|l| l["size"].as_u64().unwrap()).sum();
    let uploaded = stats["bytes_uploaded"].as_u64().unwrap();
    assert!(uploaded < ours + 16 * 1024, "only our layers and the config were sent: {uploaded} bytes for {ours}");
    assert_eq!(reg.digest_of("acme/app:1").as_deref(), Some(built.manifest_digest.as_str()));
    let raw: Value = serde_json::from_str(&run_ok_str(
        Command::new("skopeo")
            .arg("inspect")
            .arg("--raw")
            .args(reg.skopeo_flags(""))
            .arg(format!("docker://{host}/acme/app:1")),
    ))
    .unwrap();
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.base.name"],
        format!("{host}/acme/base:1"),
        "a registry base is named"
    );
    // skopeo copies it back, verifying every blob, base included.
    assert_eq!(reg.copy_back("acme/app:1", &t.path().join("back")), built.manifest_digest);
    // The docker-archive got the base's layer decompressed, and its diff_id checked.
    let listing = run_ok_str(Command::new("tar").arg("-tf").arg(&archive));
    assert!(listing.lines().filter(|l| l.ends_with(".tar")).count() == built.layers.len(), "{listing}");

    // Into the base's own repository: nothing of the base is sent again (a HEAD finds it).
    let again = build_on_base(&[format!("docker://{host}/acme/base:with-app")]);
    assert_eq!(again.json["stats"]["blobs_mounted"], 0);
    assert!(again.json["stats"]["blobs_skipped"].as_u64().unwrap() >= 1, "{}", again.json["stats"]);
}
