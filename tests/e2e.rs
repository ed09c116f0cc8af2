//! End-to-end tests: the built `nixoci` binary against a real Nix closure (built by
//! `scripts/nix-test-closure`, cached under `target/nix-test-closure`), the shipped example, and
//! the real tools: oci-image-tool, umoci, skopeo, podman (runc, private settings).
//!
//! Run: `cargo test --test e2e` (as root, with the LAB.md packages installed). Under `CI=1` a missing
//! tool fails the test that needs it; elsewhere that test prints SKIP and passes.
//!
//! Golden digests of the example live in `tests/golden/example-digests.txt`; when it is missing the
//! test writes it and fails, asking for it to be committed.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// `--closure CLOSURE.json --image IMAGE.toml` for the Nix test closure.
fn nix_args(c: &NixClosure, spec: &Path) -> Vec<String> {
    vec!["--closure".into(), s(&c.closure_json()), "--image".into(), s(spec)]
}

fn with<I: IntoIterator<Item = S>, S: Into<String>>(mut base: Vec<String>, more: I) -> Vec<String> {
    base.extend(more.into_iter().map(Into::into));
    base
}

fn closure_set(c: &NixClosure) -> BTreeSet<String> {
    c.store_paths.iter().cloned().collect()
}

fn check_all_layers(image: &Image, media_type: &str, epoch: u64) {
    for (i, l) in image.layers.iter().enumerate() {
        assert_eq!(l.media_type, media_type, "layer {i} media type");
        check_tar_rules(&format!("layer {i} ({})", l.descriptor["digest"]), &tar_entries(&l.tar), epoch);
    }
}

/// The config that `nix_image_toml` asks for.
fn check_nix_config(config: &Value, c: &NixClosure) {
    let cfg = &config["config"];
    assert_eq!(cfg["Cmd"], serde_json::json!([format!("{}/bin/hello", c.hello)]), "Cmd: {cfg:#}");
    assert!(cfg["Entrypoint"].is_null() || cfg["Entrypoint"] == serde_json::json!([]), "Entrypoint: {cfg:#}");
    let env: Vec<&str> = cfg["Env"].as_array().expect("Env").iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&format!("PATH={}/bin", c.root).as_str()), "Env: {env:?}");
    assert!(env.contains(&"GREETING=nixoci e2e"), "Env: {env:?}");
    assert_eq!(cfg["WorkingDir"], "/home/app");
    assert_eq!(cfg["User"], "1000:1000");
    assert_eq!(cfg["Labels"]["org.opencontainers.image.title"], "nixoci-e2e");
    assert_eq!(cfg["Labels"]["org.example.empty"], "");
    let ports: BTreeSet<&str> =
        cfg["ExposedPorts"].as_object().expect("ExposedPorts").keys().map(String::as_str).collect();
    assert_eq!(ports, BTreeSet::from(["8080/tcp", "9090/udp"]));
    assert_eq!(
        config["created"].as_str().map(|c| c.starts_with("1970-01-01T00:00:01")),
        Some(true),
        "created: {config:#}"
    );
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) {
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(bundle),
    );
}

// ---------------------------------------------------------------------------------------------------
// The Nix closure image: validators, rootfs, podman
// ---------------------------------------------------------------------------------------------------

#[test]
fn nix_closure_gzip_layout_passes_validators() {
    require_tools!("oci-image-tool", "umoci", "skopeo");
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    let layout = t.path().join("oci");
    let built =
        build(&with(nix_args(c, &spec), ["--compression".into(), "gzip".into(), "-o".into(), oci(&layout, "e2e")]));

    let image = Layout::new(&layout).image(Some("e2e"));
    check_all_layers(&image, MT_LAYER_GZIP, 1);
    check_store_layers(&image, &built, &closure_set(c));
    check_nix_config(&image.config, c);

    run_ok(Command::new("oci-image-tool").args(["validate", "--type", "image"]).arg(&layout));
    umoci_unpack(&layout, "e2e", &t.path().join("bundle"));

    let inspect: Value =
        serde_json::from_slice(&run_ok(Command::new("skopeo").arg("inspect").arg(oci(&layout, "e2e")))).unwrap();
    assert_eq!(inspect["Digest"], built.manifest_digest.as_str(), "skopeo inspect: {inspect:#}");
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(built.layers.len()));
    let other = t.path().join("copy");
    run_ok(Command::new("skopeo").args(["copy", "--quiet"]).arg(oci(&layout, "e2e")).arg(oci(&other, "e2e")));
    let copied = Layout::new(&other).image(Some("e2e"));
    assert_eq!(copied.manifest_digest, built.manifest_digest, "skopeo copy oci→oci changed the manifest");
}

#[test]
fn nix_closure_rootfs_matches_the_store() {
    require_tools!("umoci");
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    let layout = t.path().join("oci");
    let built = build(&with(nix_args(c, &spec), ["-o".into(), oci(&layout, "e2e")]));
    let bundle = t.path().join("bundle");
    umoci_unpack(&layout, "e2e", &bundle);
    let rootfs = bundle.join("rootfs");
    let in_image = |p: &str| rootfs.join(p.trim_start_matches('/'));

    // Every store path, compared file by file with /nix/store; nothing else in /nix/store.
    let mut problems = Vec::new();
    for p in &c.store_paths {
        compare_store_path(Path::new(p), &in_image(p), &mut problems);
    }
    assert!(problems.is_empty(), "the rootfs differs from the store:\n  {}", problems.join("\n  "));
    let listed: BTreeSet<String> = fs::read_dir(rootfs.join("nix/store"))
        .unwrap()
        .map(|e| format!("/nix/store/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(listed, closure_set(c), "/nix/store of the image holds exactly the closure");

    // The nasty cases, one by one (compare_store_path covers them; these say which broke).
    let links = c.path_named("-nixoci-test-links");
    let data = c.path_named("-nixoci-test-data");
    let l = |rel: &str| in_image(&format!("{links}/{rel}"));
    assert_eq!(fs::read_link(l("share/doc/rel-same-dir")).unwrap(), Path::new("real.txt"));
    assert_eq!(fs::read_link(l("lib/rel-dir")).unwrap(), Path::new("../share"));
    assert_eq!(fs::read_to_string(l("lib/rel-up")).unwrap(), "real file\n", "relative symlink resolves in the rootfs");
    assert_eq!(fs::read_link(l("share/abs-file")).unwrap(), Path::new(&format!("{data}/share/greeting.txt")));
    assert_eq!(fs::read_link(l("share/dangling")).unwrap(), Path::new("does-not-exist"));
    let long_target = fs::read_link(l("share/long-target")).unwrap();
    assert!(long_target.as_os_str().len() > 500, "long symlink target kept whole");
    for hl in ["share/hl-a", "share/hl-b"] {
        let m = fs::symlink_metadata(l(hl)).unwrap();
        assert!(m.is_file() && m.nlink() == 1, "{hl}: the hardlink must become a plain regular file");
        assert_eq!(fs::read_to_string(l(hl)).unwrap(), "hardlinked content\n");
    }
    assert_eq!(fs::metadata(l("share/empty-file")).unwrap().len(), 0);
    assert_eq!(fs::read_dir(l("share/empty-subdir")).unwrap().count(), 0);
    assert!(l("share/name with spaces.txt").is_file());
    assert!(l("share/ünïcödé-ñame.txt").is_file());
    assert_eq!(fs::read_to_string(l("share/self-path")).unwrap().trim(), links, "self-reference");
    assert_eq!(fs::metadata(l("bin/tool")).unwrap().permissions().mode() & 0o7777, 0o555);
    assert_eq!(fs::metadata(l("share/plain")).unwrap().permissions().mode() & 0o7777, 0o444);

    let long = c.store_paths.iter().find(|p| p.contains("-nixoci-test-long-name-")).unwrap();
    assert_eq!(base_name(long).len(), 33 + 180, "the 180-character store path name");
    let long_file = "f".to_string() + &"y".repeat(145) + ".txt";
    assert!(in_image(&format!("{long}/{long_file}")).is_file(), "150-character file name");
    let deep: Vec<PathBuf> =
        walk(&in_image(long)).into_iter().map(|(p, _)| p).filter(|p| p.ends_with(&long_file)).collect();
    assert!(
        deep.iter().any(|p| p.strip_prefix(&rootfs).unwrap().as_os_str().len() > 256 + 256),
        "a path longer than 512 characters: {deep:?}"
    );

    let single_file = in_image(c.path_named("-nixoci-test-single-file"));
    let m = fs::symlink_metadata(&single_file).unwrap();
    assert!(m.is_file() && m.permissions().mode() & 0o7777 == 0o444, "single-file output");
    let m = fs::symlink_metadata(in_image(c.path_named("-nixoci-test-single-exec"))).unwrap();
    assert!(m.is_file() && m.permissions().mode() & 0o7777 == 0o555, "single executable output");
    let sym = in_image(c.path_named("-nixoci-test-single-symlink"));
    assert_eq!(
        fs::read_link(&sym).unwrap(),
        Path::new(c.path_named("-nixoci-test-single-file")),
        "single-symlink output"
    );
    let empty = in_image(c.path_named("-nixoci-test-empty-dir"));
    assert!(empty.is_dir() && fs::read_dir(&empty).unwrap().count() == 0, "empty-directory output");

    // The image spec's files.
    assert_eq!(fs::symlink_metadata(rootfs.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777, "/tmp 1777");
    assert_eq!(fs::read_to_string(rootfs.join("etc/motd")).unwrap(), "built by the nixoci e2e tests\n");
    assert_eq!(fs::read_link(rootfs.join("bin/hello")).unwrap(), Path::new(&format!("{}/bin/hello", c.hello)));
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("app:x:1000:1000:") && l.ends_with(":/home/app:/sbin/nologin")),
        "/etc/passwd:\n{passwd}"
    );
    assert!(passwd.lines().any(|l| l.starts_with("root:x:0:0:")), "/etc/passwd:\n{passwd}");
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("app:x:1000:")), "/etc/group:\n{group}");

    // Ownership is in the tar headers (umoci --rootless does not chown).
    let image = Layout::new(&layout).image(Some("e2e"));
    let custom: Vec<TarEntry> =
        image.layers.iter().flat_map(|l| tar_entries(&l.tar)).filter(|e| !e.path.starts_with("nix")).collect();
    let entry = |p: &str| custom.iter().find(|e| e.path == p).unwrap_or_else(|| panic!("/{p} is in no layer"));
    let home = entry("home/app");
    assert_eq!((home.uid, home.gid, home.mode & 0o7777), (1000, 1000, 0o755), "/home/app");
    let profile = entry("home/app/.profile");
    assert_eq!((profile.uid, profile.gid, profile.mode & 0o7777), (1000, 1000, 0o600), "/home/app/.profile");
    let tmp = entry("tmp");
    assert_eq!((tmp.uid, tmp.gid, tmp.mode & 0o7777), (0, 0, 0o1777), "/tmp");
    assert_eq!(entry("etc/motd").mode & 0o7777, 0o644);
    assert!(built.layers.iter().any(|l| l["paths"].as_array().unwrap().is_empty()), "a customisation layer");
}

#[test]
fn nix_closure_runs_in_podman_from_every_archive_kind() {
    require_tools!("podman", "runc");
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    let oa = t.path().join("image.oci.tar");
    let da = t.path().join("image.docker.tar");
    let built = build(&with(
        nix_args(c, &spec),
        [
            "-o".to_string(),
            format!("oci-archive:{}:localhost/nixoci-e2e/oci-archive:1", oa.display()),
            "-o".to_string(),
            format!("docker-archive:{}:localhost/nixoci-e2e/docker-archive:1", da.display()),
        ],
    ));
    check_docker_archive(&da, &built, "localhost/nixoci-e2e/docker-archive:1");
    check_oci_archive(&oa, &built, t.path());

    let podman = Podman::new();
    let hello = format!("{}/bin/hello", c.hello);
    let via_env = format!("{}/bin/hello", c.root);
    for (file, name) in [(&oa, "localhost/nixoci-e2e/oci-archive:1"), (&da, "localhost/nixoci-e2e/docker-archive:1")] {
        let loaded = podman.load(file);
        assert!(loaded.contains(name), "podman load -i {}: {loaded}", file.display());
        assert_eq!(podman.run(name, &[&hello]), c.expected_hello, "podman run {name} {hello}");
        assert_eq!(podman.run(name, &[]), c.expected_hello, "podman run {name} (the image's cmd, as 1000:1000)");
        assert_eq!(podman.run(name, &[&via_env]), c.expected_hello, "podman run {name} {via_env} (absolute symlink)");
    }

    // nixoci build … -o - | podman load
    let mut cmd = nixoci();
    cmd.arg("build").args(nix_args(c, &spec)).args(["-q", "-o", "-"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut producer = cmd.spawn().expect("spawning nixoci");
    let load = podman.cmd().arg("load").stdin(producer.stdout.take().unwrap()).output().expect("running podman load");
    let produced = producer.wait_with_output().unwrap();
    assert!(produced.status.success(), "nixoci -o - failed: {}", String::from_utf8_lossy(&produced.stderr));
    assert!(load.status.success(), "podman load from stdin failed: {}", String::from_utf8_lossy(&load.stderr));
    let id = built.config_digest.strip_prefix("sha256:").unwrap();
    assert_eq!(podman.run(id, &[&hello]), c.expected_hello, "podman run of the image loaded from -o -");
}

/// docker-archive: manifest.json names the config and layers; layers hash to the diff_ids.
fn check_docker_archive(file: &Path, built: &Built, name: &str) {
    let t = tempdir();
    run_ok(Command::new("tar").arg("-xf").arg(file).arg("-C").arg(t.path()));
    let manifest = read_json(&t.path().join("manifest.json"));
    let m = &manifest.as_array().expect("manifest.json is an array")[0];
    assert!(m["RepoTags"].as_array().unwrap().iter().any(|r| r == name), "RepoTags: {m:#}");
    let config = fs::read(t.path().join(m["Config"].as_str().unwrap())).unwrap();
    assert_eq!(sha256_digest(&config), built.config_digest, "docker-archive config vs --json config_digest");
    let layers = m["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), built.layers.len());
    for (l, j) in layers.iter().zip(&built.layers) {
        let data = fs::read(t.path().join(l.as_str().unwrap())).unwrap();
        let tar = if data.starts_with(&[0x1f, 0x8b]) { decompress(MT_LAYER_GZIP, &data) } else { data };
        assert_eq!(sha256_digest(&tar), j["diff_id"].as_str().unwrap(), "docker-archive layer {l} vs diff_id");
    }
}

/// oci-archive: the tar of an OCI layout; same image as --json says.
fn check_oci_archive(file: &Path, built: &Built, tmp: &Path) -> Image {
    let dir = tmp.join(format!("unpacked-{}", file.file_name().unwrap().to_string_lossy()));
    fs::create_dir_all(&dir).unwrap();
    run_ok(Command::new("tar").arg("-xf").arg(file).arg("-C").arg(&dir));
    let image = Layout::new(&dir).image(None);
    assert_eq!(image.manifest_digest, built.manifest_digest, "oci-archive manifest vs --json");
    image
}

#[test]
fn nix_closure_zstd_image() {
    require_tools!("skopeo", "podman", "runc");
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    let layout = t.path().join("oci");
    let oa = t.path().join("zstd.tar");
    let built = build(&with(
        nix_args(c, &spec),
        [
            "--compression".to_string(),
            "zstd".to_string(),
            "-o".to_string(),
            oci(&layout, "z"),
            "-o".to_string(),
            format!("oci-archive:{}:localhost/nixoci-e2e/zstd:1", oa.display()),
        ],
    ));
    let image = Layout::new(&layout).image(Some("z"));
    check_all_layers(&image, MT_LAYER_ZSTD, 1);
    check_store_layers(&image, &built, &closure_set(c));
    check_oci_archive(&oa, &built, t.path());
    run_ok(
        Command::new("skopeo").args(["copy", "--quiet"]).arg(oci(&layout, "z")).arg(oci(&t.path().join("copy"), "z")),
    );
    assert_eq!(Layout::new(t.path().join("copy")).image(Some("z")).manifest_digest, built.manifest_digest);

    let podman = Podman::new();
    podman.load(&oa);
    assert_eq!(podman.run("localhost/nixoci-e2e/zstd:1", &[&format!("{}/bin/hello", c.hello)]), c.expected_hello);

    // A level, and an uncompressed build of the same closure: same diff_ids, other digests.
    let l19 = build(&with(nix_args(c, &spec), ["--compression", "zstd:19", "-o", &oci(&layout, "z19")]));
    let none = build(&with(nix_args(c, &spec), ["--compression", "none", "-o", &oci(&layout, "none")]));
    let diff_ids = |b: &Built| b.layers.iter().map(|l| l["diff_id"].clone()).collect::<Vec<_>>();
    assert_eq!(diff_ids(&l19), diff_ids(&built), "diff_ids do not depend on the compression");
    assert_eq!(diff_ids(&none), diff_ids(&built), "diff_ids do not depend on the compression");
    check_all_layers(&Layout::new(&layout).image(Some("z19")), MT_LAYER_ZSTD, 1);
    check_all_layers(&Layout::new(&layout).image(Some("none")), MT_LAYER_TAR, 1);
}

// ---------------------------------------------------------------------------------------------------
// Reproducibility
// ---------------------------------------------------------------------------------------------------

#[test]
fn reproducible_across_runs_and_jobs() {
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    let args = |dir: &str, extra: &[&str]| {
        with(
            nix_args(c, &spec),
            extra.iter().map(|x| x.to_string()).chain(["-o".into(), oci(&t.path().join(dir), "r")]),
        )
    };
    let first = build(&args("a", &[]));
    let second = build(&args("b", &[]));
    let jobs1 = build(&args("c", &["--jobs", "1"]));
    let jobs7 = build(&args("d", &["--jobs", "7"]));
    for (what, b) in [("a second run", &second), ("--jobs 1", &jobs1), ("--jobs 7", &jobs7)] {
        assert_eq!(b.manifest_digest, first.manifest_digest, "{what} gave another image");
    }
    assert_eq!(snapshot(&t.path().join("a")), snapshot(&t.path().join("b")), "two runs wrote different layouts");
    assert_eq!(snapshot(&t.path().join("a")), snapshot(&t.path().join("c")), "--jobs 1 wrote a different layout");

    // SOURCE_DATE_EPOCH sets every mtime and `created`.
    let mut cmd = nixoci();
    cmd.arg("build").args(args("e", &[])).arg("--json").env("SOURCE_DATE_EPOCH", "1700000000");
    let epoch = build_with(&mut cmd);
    assert_ne!(epoch.manifest_digest, first.manifest_digest, "SOURCE_DATE_EPOCH must change the image");
    let image = Layout::new(t.path().join("e")).image(Some("r"));
    check_all_layers(&image, MT_LAYER_GZIP, 1700000000);
    assert!(
        image.config["created"].as_str().unwrap().starts_with("2023-11-14T22:13:20"),
        "created: {}",
        image.config["created"]
    );
    let mut cmd = nixoci();
    cmd.arg("build").args(args("f", &[])).arg("--json").env("SOURCE_DATE_EPOCH", "1700000000");
    assert_eq!(build_with(&mut cmd).manifest_digest, epoch.manifest_digest);
}

/// Builds from `/nix/store` and from `store` (via --store-root) must give the same image.
fn build_from_store_root(c: &NixClosure, spec: &Path, store: &Path, out: &Path, umask: Option<&str>) -> Built {
    let mut cmd = match umask {
        Some(u) => {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(format!("umask {u} && exec \"$0\" \"$@\"")).arg(bin());
            sh.env_remove("SOURCE_DATE_EPOCH").env("NO_COLOR", "1");
            sh
        }
        None => nixoci(),
    };
    cmd.arg("build").args(nix_args(c, spec)).arg("--store-root").arg(store).args(["-o", &oci(out, "r"), "--json"]);
    build_with(&mut cmd)
}

#[test]
fn reproducible_from_a_perturbed_store_copy() {
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    let baseline = build(&with(nix_args(c, &spec), ["-o".into(), oci(&t.path().join("base"), "r")]));

    let store = t.path().join("store");
    copy_store_paths(&c.store_paths, Path::new("/nix/store"), &store, true);
    // Other mtimes, other owners, group/other write bits, writable directories.
    run_ok(Command::new("find").arg(&store).args(["-exec", "touch", "-h", "-d", "2001-02-03 04:05:06", "{}", "+"]));
    let mut n = 0;
    for (p, m) in walk(&store) {
        if m.file_type().is_symlink() {
            continue;
        }
        n += 1;
        let mode = m.permissions().mode() & 0o7777;
        let new_mode = if m.is_dir() {
            // writable directories, some sticky or setgid
            mode | 0o755 | [0, 0o1000, 0o2000][n % 3]
        } else if mode & 0o100 != 0 {
            // executables: setuid, or owner-only
            [mode | 0o4000, 0o700, mode | 0o022][n % 3]
        } else {
            // plain files: group/other-writable, owner-only, or unreadable (root reads anyway)
            [mode | 0o622, 0o600, 0o000][n % 3]
        };
        fs::set_permissions(&p, fs::Permissions::from_mode(new_mode)).unwrap();
        if n % 3 == 0 {
            std::os::unix::fs::lchown(&p, Some(1234), Some(5678)).unwrap();
        }
    }
    let perturbed = build_from_store_root(c, &spec, &store, &t.path().join("copy"), Some("077"));
    assert_eq!(
        perturbed.manifest_digest, baseline.manifest_digest,
        "a store copy with other mtimes/modes (setuid, sticky, 0600, 0000…)/owners, under umask 077"
    );
    let perturbed1 = build(&with(
        nix_args(c, &spec),
        ["--store-root".into(), s(&store), "--jobs".into(), "1".into(), "-o".into(), oci(&t.path().join("copy1"), "r")],
    ));
    assert_eq!(perturbed1.manifest_digest, baseline.manifest_digest, "the same with --jobs 1");
}

#[test]
fn reproducible_whether_hardlinked_or_not() {
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    let baseline = build(&with(nix_args(c, &spec), ["-o".into(), oci(&t.path().join("base"), "r")]));

    // cp -r breaks the closure's own hardlink (hl-a, hl-b).
    let plain = t.path().join("plain");
    copy_store_paths(&c.store_paths, Path::new("/nix/store"), &plain, false);
    let links = base_name(c.path_named("-nixoci-test-links"));
    assert_eq!(fs::metadata(plain.join(links).join("share/hl-a")).unwrap().nlink(), 1);
    let b1 = build_from_store_root(c, &spec, &plain, &t.path().join("o1"), None);
    assert_eq!(b1.manifest_digest, baseline.manifest_digest, "a store copy without hardlinks");

    // Every duplicate file hardlinked together, across store paths (like nix-store --optimise).
    let optimised = t.path().join("optimised");
    copy_store_paths(&c.store_paths, Path::new("/nix/store"), &optimised, true);
    let made = hardlink_duplicates(&optimised);
    assert!(made > 0, "the test closure has duplicate files to hardlink");
    let b2 = build_from_store_root(c, &spec, &optimised, &t.path().join("o2"), None);
    assert_eq!(b2.manifest_digest, baseline.manifest_digest, "a hardlink-optimised store copy ({made} links)");
}

#[test]
fn every_closure_input_shape_gives_the_same_image() {
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    let out = |n: &str| ["-o".to_string(), oci(&t.path().join(n), "r")];
    let image = ["--image".to_string(), s(&spec)];
    let json = build(&with(nix_args(c, &spec), out("json")));
    let attrs =
        build(&with(with(vec!["--closure".into(), s(&c.dir.join("closure.attrs.json"))], image.clone()), out("attrs")));
    let info =
        build(&with(with(vec!["--closure-info".into(), s(&c.dir.join("closure-info"))], image.clone()), out("info")));
    let graph = build(&with(with(vec!["--closure".into(), s(&c.dir.join("graph"))], image.clone()), out("graph")));
    assert_eq!(attrs.manifest_digest, json.manifest_digest, "structured-attrs exportReferencesGraph vs path-info JSON");
    assert_eq!(info.manifest_digest, json.manifest_digest, "closureInfo vs path-info JSON");
    // The text graph has no NAR sizes, so its layering may differ; its store paths may not.
    assert_eq!(graph.all_paths(), closure_set(c), "the text graph gives every store path");
    assert_eq!(json.all_paths(), closure_set(c));

    // ROOT given on the command line: nixoci asks `nix path-info` itself.
    let mut cmd = nixoci();
    cmd.arg("build")
        .arg(&c.root)
        .args(image)
        .args(out("root"))
        .arg("--json")
        .env("NIX_CONF_DIR", c.dir.join("nix-conf"))
        .env_remove("NIX_PATH")
        .env_remove("NIX_REMOTE");
    assert_eq!(build_with(&mut cmd).manifest_digest, json.manifest_digest, "nixoci build ROOT vs --closure");
}

#[test]
fn max_layers_is_a_limit_on_every_layer() {
    let Some(c) = nix_closure(test_name!(), 1) else {
        return;
    };
    let t = tempdir();
    let spec = nix_image_toml(c, t.path());
    for n in [2usize, 5, 100] {
        let dir = t.path().join(format!("m{n}"));
        let b = build(&with(nix_args(c, &spec), ["--max-layers".into(), n.to_string(), "-o".into(), oci(&dir, "m")]));
        assert!(b.layers.len() <= n, "--max-layers {n} gave {} layers", b.layers.len());
        let image = Layout::new(&dir).image(Some("m"));
        check_store_layers(&image, &b, &closure_set(c));
        if n == 100 {
            assert_eq!(b.layers.len(), c.store_paths.len() + 1, "one layer per store path + the customisation layer");
        }
    }
    let dir = t.path().join("noimage");
    let b = build(&[
        "--closure".into(),
        s(&c.closure_json()),
        "--max-layers".into(),
        "3".into(),
        "-o".into(),
        oci(&dir, "m"),
    ]);
    assert!(b.layers.len() <= 3);
    check_store_layers(&Layout::new(&dir).image(Some("m")), &b, &closure_set(c));
}

#[test]
fn variant_closure_changes_only_the_changed_paths() {
    let Some(c1) = nix_closure(test_name!(), 1) else {
        return;
    };
    let Some(c2) = nix_closure(test_name!(), 2) else {
        return;
    };
    let a: BTreeSet<_> = closure_set(c1);
    let b: BTreeSet<_> = closure_set(c2);
    let changed: BTreeSet<&str> = a.symmetric_difference(&b).map(|p| p.split_once('-').unwrap().1).collect();
    assert_eq!(
        changed,
        BTreeSet::from(["nixoci-test-data", "nixoci-test-links", "nixoci-test-hello-1.0", "nixoci-test-env"]),
        "NIXOCI_TEST_VARIANT=2 changes the data leaf and its dependents only"
    );
    let t = tempdir();
    let spec2 = nix_image_toml(c2, t.path());
    let b1 = build(&[
        "--closure".into(),
        s(&c1.closure_json()),
        "--max-layers".into(),
        "100".into(),
        "-o".into(),
        oci(&t.path().join("v1"), "v"),
    ]);
    let b2 = build(&with(
        nix_args(c2, &spec2),
        ["--max-layers".into(), "100".into(), "-o".into(), oci(&t.path().join("v2"), "v")],
    ));
    let digests = |b: &Built| -> BTreeSet<String> {
        b.layers
            .iter()
            .filter(|l| !l["paths"].as_array().unwrap().is_empty())
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let shared = digests(&b1).intersection(&digests(&b2)).count();
    assert_eq!(shared, a.intersection(&b).count(), "a layer per unchanged store path is shared between the variants");
}

// ---------------------------------------------------------------------------------------------------
// The shipped example: golden digests, validators, podman
// ---------------------------------------------------------------------------------------------------

const GOLDEN: &str = "tests/golden/example-digests.txt";

#[test]
fn example_golden_digests() {
    let t = tempdir();
    let mut got = Vec::new();
    for compression in ["gzip", "zstd", "none", "zstd:chunked"] {
        let dir = t.path().join(compression);
        let b = build(&with(
            example_args(),
            ["--compression".into(), compression.into(), "-o".into(), oci(&dir, "golden")],
        ));
        let image = Layout::new(&dir).image(Some("golden"));
        assert_eq!(image.manifest_digest, b.manifest_digest);
        let mt = match compression {
            "gzip" => MT_LAYER_GZIP,
            "zstd" | "zstd:chunked" => MT_LAYER_ZSTD,
            _ => MT_LAYER_TAR,
        };
        check_all_layers(&image, mt, 1);
        got.push(format!("{compression} {}", b.manifest_digest));
    }
    let got = got.join("\n") + "\n";
    let golden = repo().join(GOLDEN);
    match fs::read_to_string(&golden) {
        Ok(want) => {
            let want: String = want
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(
                got, want,
                "the example's manifest digests changed (left: now, right: {GOLDEN}). If the change is intended \
                 (format version, new defaults), delete {GOLDEN}, rerun, and commit the new file"
            );
        }
        Err(_) => {
            fs::create_dir_all(golden.parent().unwrap()).unwrap();
            let mut f = fs::File::create(&golden).unwrap();
            writeln!(
                f,
                "# Manifest digests of `nixoci build` of examples/hello (see tests/e2e.rs example_golden_digests)."
            )
            .unwrap();
            write!(f, "{got}").unwrap();
            panic!("{GOLDEN} was missing: written now; check and commit it, then rerun:\n{got}");
        }
    }
}

#[test]
fn example_closure_json_matches_its_store_tree() {
    require_tools!("nix-store");
    let closure = read_json(&example_dir().join("closure.json"));
    for info in closure.as_array().unwrap() {
        let path = info["path"].as_str().unwrap();
        let dir = example_dir().join("store").join(base_name(path));
        let nar = run_ok(Command::new("nix-store").arg("--dump").arg(&dir));
        let hash = format!("sha256-{}", base64_encode(&sha2_digest(&nar)));
        assert_eq!(info["narHash"], hash.as_str(), "narHash of {path}: rerun scripts/make-example");
        assert_eq!(info["narSize"], nar.len() as u64, "narSize of {path}");
    }
}

fn sha2_digest(data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).to_vec()
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn example_passes_validators_and_runs_in_podman() {
    require_tools!("oci-image-tool", "umoci", "skopeo", "podman", "runc");
    let t = tempdir();
    let layout = t.path().join("oci");
    let oa = t.path().join("hello.tar");
    let built = build(&with(
        example_args(),
        [
            "-o".to_string(),
            oci(&layout, "1.0"),
            "-o".to_string(),
            format!("oci-archive:{}:localhost/nixoci-example:1.0", oa.display()),
        ],
    ));
    let image = Layout::new(&layout).image(Some("1.0"));
    let closure = read_json(&example_dir().join("closure.json"));
    let paths: BTreeSet<String> =
        closure.as_array().unwrap().iter().map(|i| i["path"].as_str().unwrap().to_string()).collect();
    check_store_layers(&image, &built, &paths);
    run_ok(Command::new("oci-image-tool").args(["validate", "--type", "image"]).arg(&layout));
    umoci_unpack(&layout, "1.0", &t.path().join("bundle"));
    run_ok(Command::new("skopeo").arg("inspect").arg(oci(&layout, "1.0")));

    let podman = Podman::new();
    podman.load(&oa);
    let expected = fs::read_to_string(example_dir().join("expected-output.txt")).unwrap();
    assert_eq!(
        podman.run("localhost/nixoci-example:1.0", &[]),
        expected,
        "podman run of the example (entrypoint, as user app)"
    );
}

// ---------------------------------------------------------------------------------------------------
// Bad input: non-zero exit, a message naming the culprit, destinations untouched
// ---------------------------------------------------------------------------------------------------

/// Runs with a time limit (a fifo must not hang the build).
fn output_with_timeout(cmd: &mut Command, limit: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`{}` did not finish in {limit:?}; stderr:\n{}",
                describe(cmd),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn top_level(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// `nixoci build INPUT_ARGS -o oci:EXISTING:new -o oci:ABSENT:new -o oci-archive:ABSENT.tar (+ extra
/// destinations)` must fail, name every culprit on stderr, and leave the destinations as they were.
fn assert_rejected(what: &str, input_args: Vec<String>, extra_dests: &[String], culprits: &[&str]) {
    let t = tempdir();
    let outs = t.path().join("outs");
    fs::create_dir(&outs).unwrap();
    let existing = outs.join("existing");
    build(&with(example_args(), ["-o".to_string(), oci(&existing, "old")]));
    let before = snapshot(&existing);
    let index_before = fs::read(existing.join("index.json")).unwrap();
    let listing_before = top_level(&outs);

    let mut cmd = nixoci();
    cmd.arg("build").args(&input_args).args([
        "-o".to_string(),
        oci(&existing, "new"),
        "-o".to_string(),
        oci(&outs.join("absent"), "new"),
        "-o".to_string(),
        format!("oci-archive:{}", outs.join("absent.tar").display()),
    ]);
    for d in extra_dests {
        cmd.args(["-o", d]);
    }
    let out = output_with_timeout(&mut cmd, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: `{}` succeeded; stderr:\n{stderr}", describe(&cmd));
    assert_ne!(out.status.code(), Some(101), "{what}: nixoci panicked:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: nixoci panicked:\n{stderr}");
    for c in culprits {
        assert!(stderr.contains(c), "{what}: the error does not name {c:?}:\n{stderr}");
    }
    assert_eq!(
        fs::read(existing.join("index.json")).unwrap(),
        index_before,
        "{what}: index.json of the existing layout changed"
    );
    assert_eq!(snapshot(&existing), before, "{what}: the existing layout changed");
    assert_eq!(top_level(&outs), listing_before, "{what}: files appeared beside the destinations");
}

fn example_closure() -> Vec<Value> {
    read_json(&example_dir().join("closure.json")).as_array().unwrap().clone()
}

/// The example's arguments, with its closure JSON replaced by `closure` (written into `dir`).
fn example_with_closure(dir: &Path, closure: &[u8]) -> (Vec<String>, PathBuf) {
    let file = dir.join("closure.json");
    fs::write(&file, closure).unwrap();
    let mut args = example_args();
    args[1] = s(&file);
    (args, file)
}

#[test]
fn rejects_truncated_closure_json() {
    let t = tempdir();
    let full = fs::read(example_dir().join("closure.json")).unwrap();
    let (args, file) = example_with_closure(t.path(), &full[..full.len() / 2]);
    assert_rejected("truncated closure JSON", args, &[], &[&s(&file)]);
    let missing = t.path().join("no-such-closure.json");
    let mut args = example_args();
    args[1] = s(&missing);
    assert_rejected("missing closure file", args, &[], &[&s(&missing)]);
}

#[test]
fn rejects_dangling_reference() {
    let t = tempdir();
    let mut closure = example_closure();
    let dangling = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-missing-dependency-1.0";
    closure[0]["references"].as_array_mut().unwrap().push(dangling.into());
    let (args, _) = example_with_closure(t.path(), &serde_json::to_vec(&closure).unwrap());
    assert_rejected("dangling reference", args, &[], &[dangling]);
}

#[test]
fn rejects_store_path_missing_on_disk() {
    let t = tempdir();
    let closure = example_closure();
    let paths: Vec<String> = closure.iter().map(|i| i["path"].as_str().unwrap().to_string()).collect();
    let gone = paths.iter().find(|p| p.ends_with("-hello-greeting-1.0")).unwrap().clone();
    let store = t.path().join("store");
    let kept: Vec<String> = paths.iter().filter(|p| **p != gone).cloned().collect();
    copy_store_paths(&kept, &example_dir().join("store"), &store, true);
    let mut args = example_args();
    args[3] = s(&store);
    assert_rejected("store path missing on disk", args, &[], &[base_name(&gone)]);
}

#[test]
fn rejects_invalid_store_path_names() {
    let t = tempdir();
    let bad_names = [
        "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-bad-hash-letters", // e is not nix-base32
        "/nix/store/0123456789abcdfghijklmnpqrsvwxy-short-hash",        // 31 characters
        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-bad name",         // space in the name
        "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-",                 // empty name
        "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-other-store",      // not under /nix/store
    ];
    for (i, bad) in bad_names.iter().enumerate() {
        let mut closure = example_closure();
        let mut entry = closure[0].clone();
        entry["path"] = (*bad).into();
        entry["references"] = serde_json::json!([]);
        closure.push(entry);
        let dir = t.path().join(i.to_string());
        fs::create_dir(&dir).unwrap();
        let (args, _) = example_with_closure(&dir, &serde_json::to_vec(&closure).unwrap());
        assert_rejected(&format!("invalid store path {bad:?}"), args, &[], &[bad]);
    }
}

#[test]
fn rejects_fifo_in_store_path() {
    let t = tempdir();
    let paths: Vec<String> = example_closure().iter().map(|i| i["path"].as_str().unwrap().to_string()).collect();
    let store = t.path().join("store");
    copy_store_paths(&paths, &example_dir().join("store"), &store, true);
    let greeting = paths.iter().find(|p| p.ends_with("-hello-greeting-1.0")).unwrap();
    let fifo = store.join(base_name(greeting)).join("share/a-fifo");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let mut args = example_args();
    args[3] = s(&store);
    assert_rejected("a fifo in a store path", args, &[], &["share/a-fifo"]);
}

#[test]
fn rejects_unwritable_destinations() {
    // We run as root: a 0555 directory would not stop us. A path below a regular file does.
    let t = tempdir();
    let file = t.path().join("regular-file");
    fs::write(&file, "not a directory\n").unwrap();
    for dest in [
        format!("oci:{}:new", file.join("sub").display()),
        format!("oci-archive:{}", file.join("sub.tar").display()),
        format!("docker-archive:{}", file.join("sub.tar").display()),
    ] {
        assert_rejected(
            &format!("unwritable destination {dest}"),
            example_args(),
            std::slice::from_ref(&dest),
            &[&s(&file)],
        );
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), "not a directory\n");
}

#[test]
fn rejects_two_stdout_destinations() {
    // stdout can carry one archive; two would be concatenated into a stream no loader reads whole.
    let out = output(nixoci().arg("build").args(example_args()).args(["-q", "-o", "-", "-o", "-"]));
    assert!(!out.status.success(), "-o - twice was accepted ({} bytes on stdout)", out.stdout.len());
    assert!(out.stdout.is_empty(), "-o - twice: nothing may be written");
}

#[test]
fn rejects_bad_image_spec() {
    let t = tempdir();
    let spec = t.path().join("bad-image.toml");
    fs::write(&spec, "entrypoint = [\"/bin/x\"]\nno_such_key = 1\n").unwrap();
    let mut args = example_args();
    args[5] = s(&spec);
    assert_rejected("an unknown key in the image spec", args, &[], &[&s(&spec), "no_such_key"]);
}

// ---------------------------------------------------------------------------------------------------
// Output streams
// ---------------------------------------------------------------------------------------------------

#[test]
fn quiet_prints_nothing_and_json_is_alone_on_stdout() {
    let t = tempdir();
    let out = output(nixoci().arg("build").args(example_args()).args(["-q", "-o", &oci(&t.path().join("q"), "q")]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "-q: stdout {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stderr.is_empty(), "-q: stderr {:?}", String::from_utf8_lossy(&out.stderr));
    let out = output(nixoci().arg("build").args(example_args()).args(["--json", "-o", &oci(&t.path().join("j"), "j")]));
    assert!(out.status.success());
    serde_json::from_slice::<Value>(&out.stdout).expect("--json: stdout is exactly one JSON document");
    // -o - writes the archive alone on stdout: a docker-archive tar.
    let out = output(nixoci().arg("build").args(example_args()).args(["-q", "-o", "-"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<String> = tar::Archive::new(&out.stdout[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "manifest.json"), "-o - is a docker-archive: {names:?}");
}

// ---------------------------------------------------------------------------------------------------
// Destinations that already exist; and the harness's own checks, proven to catch corruption
// ---------------------------------------------------------------------------------------------------

#[test]
fn oci_dir_keeps_earlier_tags() {
    let t = tempdir();
    let dir = t.path().join("oci");
    let gzip = build(&with(example_args(), ["-o".to_string(), oci(&dir, "a")]));
    // (not zstd: Debian's oci-image-tool rejects zstd layers)
    let plain = build(&with(
        example_args(),
        ["--compression".to_string(), "none".to_string(), "-o".to_string(), oci(&dir, "b")],
    ));
    let layout = Layout::new(&dir);
    assert_eq!(layout.image(Some("a")).manifest_digest, gzip.manifest_digest, "tag a survives adding b");
    assert_eq!(layout.image(Some("b")).manifest_digest, plain.manifest_digest);
    // Re-using a tag moves it: still one manifest per tag, and the other tag is untouched.
    let level1 = build(&with(
        example_args(),
        ["--compression".to_string(), "gzip:1".to_string(), "-o".to_string(), oci(&dir, "a")],
    ));
    assert_ne!(level1.manifest_digest, gzip.manifest_digest, "gzip:1 gives other bytes than gzip:6");
    assert_eq!(layout.image(Some("a")).manifest_digest, level1.manifest_digest, "tag a moved");
    assert_eq!(layout.image(Some("b")).manifest_digest, plain.manifest_digest, "tag b untouched");
    if have_tools(test_name!(), &["oci-image-tool"]) {
        run_ok(Command::new("oci-image-tool").args(["validate", "--type", "image"]).arg(&dir));
    }
}

/// Several builds into one layout at once: every build that reports success has its tag in
/// index.json (a read-modify-write of index.json without a lock loses tags).
#[test]
fn oci_dir_concurrent_writers_lose_no_tag() {
    let t = tempdir();
    let dir = t.path().join("oci");
    for round in ["absent", "existing"] {
        if round == "existing" {
            build(&with(example_args(), ["-o".to_string(), oci(&dir, "first")]));
        }
        let children: Vec<(String, std::process::Child)> = (1..=7)
            .map(|level| {
                let tag = format!("{round}-{level}");
                let mut cmd = nixoci();
                cmd.arg("build")
                    .args(example_args())
                    .args(["-q", "--compression", &format!("gzip:{level}"), "-o", &oci(&dir, &tag)])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                (tag, cmd.spawn().unwrap())
            })
            .collect();
        let succeeded: Vec<String> = children
            .into_iter()
            .filter_map(|(tag, child)| child.wait_with_output().unwrap().status.success().then_some(tag))
            .collect();
        // Refusing to write is allowed; reporting success and losing the tag is not.
        let ok = succeeded.len();
        let names: BTreeSet<String> = Layout::new(&dir).index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str().map(str::to_string))
            .collect();
        let lost: Vec<&String> = succeeded.iter().filter(|t| !names.contains(*t)).collect();
        assert!(ok > 0, "{round}: no concurrent build succeeded");
        assert!(
            lost.is_empty(),
            "{round} layout: builds exited 0 but their tags are missing from index.json: {lost:?}"
        );
    }
}

/// Rewrites a layout's manifest of `tag` with `edit`, re-hashing manifest and index (the result is
/// internally consistent except for what `edit` broke on purpose).
fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&Path, &mut Value)) {
    let layout = Layout::new(dir);
    let mut index = layout.index();
    let desc = index["manifests"][0].clone();
    let mut manifest: Value = serde_json::from_slice(&layout.blob(&desc)).unwrap();
    edit(dir, &mut manifest);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256_digest(&bytes);
    fs::write(layout.blob_path(&digest), &bytes).unwrap();
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = bytes.len().into();
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn caught<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Option<String> {
    std::panic::catch_unwind(f).err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[test]
fn harness_catches_corrupt_images() {
    let t = tempdir();
    let fresh = |name: &str| {
        let dir = t.path().join(name);
        build(&with(example_args(), ["-o".to_string(), oci(&dir, "x")]));
        dir
    };

    // A flipped byte in a layer blob.
    let dir = fresh("flip");
    let layout = Layout::new(&dir);
    let first = layout.image(None).layers[0].descriptor["digest"].as_str().unwrap().to_string();
    let blob = layout.blob_path(&first);
    let mut bytes = fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    fs::write(&blob, bytes).unwrap();
    let msg = caught(|| Layout::new(&dir).image(None)).expect("a corrupt blob must be caught");
    assert!(msg.contains("does not hash to its digest"), "{msg}");

    // A descriptor size that lies.
    let dir = fresh("size");
    rewrite_manifest(&dir, |_, m| {
        let size = m["layers"][0]["size"].as_u64().unwrap();
        m["layers"][0]["size"] = (size + 1).into();
    });
    let msg = caught(|| Layout::new(&dir).image(None)).expect("a wrong size must be caught");
    assert!(msg.contains("size differs"), "{msg}");

    // A config whose diff_id is wrong (podman would not notice).
    let dir = fresh("diffid");
    rewrite_manifest(&dir, |dir, m| {
        let layout = Layout::new(dir);
        let mut config: Value = serde_json::from_slice(&layout.blob(&m["config"])).unwrap();
        config["rootfs"]["diff_ids"][0] = sha256_digest(b"not the layer").into();
        let bytes = serde_json::to_vec(&config).unwrap();
        let digest = sha256_digest(&bytes);
        fs::write(layout.blob_path(&digest), &bytes).unwrap();
        m["config"]["digest"] = digest.into();
        m["config"]["size"] = bytes.len().into();
    });
    let msg = caught(|| Layout::new(&dir).image(None)).expect("a wrong diff_id must be caught");
    assert!(msg.contains("is not the config's diff_id"), "{msg}");

    // Tar rules: a group-writable store file, a wrong mtime, a hardlink entry.
    let mut tar = tar::Builder::new(Vec::new());
    for (path, kind, mode) in [
        ("nix/", tar::EntryType::Directory, 0o755),
        ("nix/store/", tar::EntryType::Directory, 0o755),
        ("nix/store/0123456789abcdfghijklmnpqrsvwxyz-x/", tar::EntryType::Directory, 0o555),
        ("nix/store/0123456789abcdfghijklmnpqrsvwxyz-x/f", tar::EntryType::Regular, 0o664),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(1);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        tar.append_data(&mut h, path, &[][..]).unwrap();
    }
    let entries = tar_entries(&tar.into_inner().unwrap());
    let msg = caught(|| check_tar_rules("hand-made", &entries, 1)).expect("mode 664 must be caught");
    assert!(msg.contains("mode 664"), "{msg}");
    let msg = caught(|| check_tar_rules("hand-made", &entries, 2)).expect("mtime must be caught");
    assert!(msg.contains("mtime 1"), "{msg}");
}
