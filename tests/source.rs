//! Reading images back: every local transport gives the same config, layers verify, and
//! truncated or mis-digested input is refused with a clear error.

use std::io::Read;
use std::path::Path;

use nixoci::blob::Compression;
use nixoci::build::{BuildOptions, build};
use nixoci::closure::read::closure_file;
use nixoci::image::ImageSpec;
use nixoci::layering::{Budget, Groups, plan};
use nixoci::progress::Silent;
use nixoci::transport::ImageRef;
use nixoci::transport::source::SourceImage;

/// Builds examples/hello (its closure and image spec) from `store_root` into `outputs`.
fn try_build_example(store_root: &Path, outputs: Vec<ImageRef>) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let closure = closure_file(&root.join("closure.json")).unwrap();
    let spec = ImageSpec::load(&root.join("image.toml")).unwrap();
    let plan = plan(&closure, &Groups::none(), Budget::layers(10), None);
    let opts = BuildOptions {
        store_root: store_root.to_owned(),
        spec,
        compression: Compression::Gzip(6),
        jobs: 2,
        epoch: 1,
        outputs,
        cache_dir: None,
        policy: None,
        base: None,
    };
    build(&closure, &plan, &opts, None, &Silent).map(|_| ())
}

fn build_example(outputs: Vec<ImageRef>) {
    let store = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/store");
    try_build_example(&store, outputs).unwrap();
}

fn read_all_layers(img: &SourceImage) -> Vec<Vec<u8>> {
    (0..img.layers.len())
        .map(|i| {
            let mut v = Vec::new();
            img.open_layer_tar(i).unwrap().read_to_end(&mut v).unwrap();
            v
        })
        .collect()
}

#[test]
fn every_transport_reads_back_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let refs = [
        ImageRef::parse(&format!("oci:{}/oci:t", d.display())).unwrap(),
        ImageRef::parse(&format!("oci-archive:{}/o.tar", d.display())).unwrap(),
        ImageRef::parse(&format!("docker-archive:{}/d.tar", d.display())).unwrap(),
    ];
    build_example(refs.to_vec());
    let imgs: Vec<SourceImage> = refs.iter().map(|r| SourceImage::open(r).unwrap()).collect();
    assert_eq!(imgs[0].manifest_digest, imgs[1].manifest_digest);
    assert_eq!(imgs[0].config_digest, imgs[2].config_digest);
    let tars: Vec<_> = imgs.iter().map(read_all_layers).collect();
    assert_eq!(tars[0], tars[1]);
    assert_eq!(tars[0], tars[2]);
    assert!(imgs[0].layers.iter().any(|l| { l.annotations.contains_key(nixoci::image::ANNOTATION_STORE_PATHS) }));
}

#[test]
fn corrupt_and_truncated_blobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    build_example(vec![ImageRef::OciDir { dir: oci.clone(), tag: None }]);
    let r = ImageRef::OciDir { dir: oci.clone(), tag: None };
    let img = SourceImage::open(&r).unwrap();
    let l = &img.layers[0];
    let blob = oci.join("blobs/sha256").join(l.digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let mut sink = Vec::new();
    let err = img.open_blob(&l.digest, l.size).unwrap().read_to_end(&mut sink).unwrap_err().to_string();
    assert!(err.contains("does not match its digest"), "{err}");
    std::fs::write(&blob, &bytes[..10]).unwrap();
    let err = img.open_blob(&l.digest, l.size).unwrap().read_to_end(&mut sink).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");

    // A truncated archive is refused when it is opened.
    let archive = dir.path().join("o.tar");
    build_example(vec![ImageRef::OciArchive { file: archive.clone(), reference: None }]);
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
    let err =
        format!("{:#}", SourceImage::open(&ImageRef::OciArchive { file: archive, reference: None }).err().unwrap());
    assert!(err.contains("o.tar"), "{err}");
}

/// `check` reads layers for tar-header rules: a damaged layer must fail the check, not pass it.
#[test]
fn check_refuses_a_layer_that_does_not_match_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    build_example(vec![ImageRef::OciDir { dir: oci.clone(), tag: None }]);
    let r = ImageRef::OciDir { dir: oci.clone(), tag: None };
    let policy = nixoci::policy::Policy::parse("no_setuid = true\n", Path::new("p.toml")).unwrap();
    let img = SourceImage::open(&r).unwrap();
    assert!(nixoci::policy::check(&img, &policy).unwrap().passed);
    let blob = oci.join("blobs/sha256").join(img.layers[0].digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff; // inside the gzip trailer: the tar itself still reads
    std::fs::remove_file(&blob).unwrap(); // it may be hard-linked to a cache: do not write through
    std::fs::write(&blob, &bytes).unwrap();
    let err = format!("{:#}", nixoci::policy::check(&SourceImage::open(&r).unwrap(), &policy).unwrap_err());
    assert!(err.contains("layer 1") && err.contains("does not match its digest"), "{err}");
}

/// A build that fails leaves no trace: not even the parent directories of its destinations.
#[test]
fn failed_build_creates_no_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = vec![
        ImageRef::OciDir { dir: dir.path().join("a/b/oci"), tag: None },
        ImageRef::OciArchive { file: dir.path().join("c/x.tar"), reference: None },
    ];
    let err = format!("{:#}", try_build_example(&dir.path().join("no-such-store"), outputs).unwrap_err());
    assert!(err.contains("missing on disk"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
