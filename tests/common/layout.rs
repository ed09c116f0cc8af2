//! OCI layout directories read back with every digest, size and diff_id checked.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::sha256_digest;

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

pub fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One layer as found in a layout, checked against its descriptor and diff_id.
#[derive(Debug)]
pub struct Layer {
    pub descriptor: Value,
    pub media_type: String,
    pub diff_id: String,
    /// The uncompressed tar.
    pub tar: Vec<u8>,
}

impl Layer {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.descriptor["annotations"][key].as_str()
    }
}

/// An image read from an OCI layout directory with every digest, size and diff_id checked.
#[derive(Debug)]
pub struct Image {
    pub manifest_digest: String,
    pub manifest: Value,
    pub config_digest: String,
    pub config: Value,
    pub layers: Vec<Layer>,
}

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn index(&self) -> Value {
        read_json(&self.dir.join("index.json"))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap_or_else(|| panic!("bad digest {digest:?}"));
        self.dir.join("blobs").join(alg).join(hex)
    }

    /// Reads a blob and checks it against its descriptor (digest and size).
    pub fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let digest = descriptor["digest"].as_str().unwrap_or_else(|| panic!("descriptor without digest: {descriptor}"));
        let size = descriptor["size"].as_u64().unwrap_or_else(|| panic!("descriptor without size: {descriptor}"));
        let path = self.blob_path(digest);
        let data = fs::read(&path).unwrap_or_else(|e| panic!("reading blob {}: {e}", path.display()));
        assert_eq!(sha256_digest(&data), digest, "blob {} does not hash to its digest", path.display());
        assert_eq!(data.len() as u64, size, "blob {digest}: size differs from its descriptor's");
        data
    }

    /// The manifest descriptor of `tag` (the only one when `tag` is None).
    pub fn manifest_descriptor(&self, tag: Option<&str>) -> Value {
        let index = self.index();
        assert_eq!(index["schemaVersion"], 2, "index.json schemaVersion");
        let manifests = index["manifests"].as_array().expect("index.json manifests");
        let found: Vec<&Value> = manifests
            .iter()
            .filter(|m| match tag {
                Some(t) => m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(t),
                None => true,
            })
            .collect();
        assert_eq!(found.len(), 1, "{} has {} manifests for {tag:?}: {index:#}", self.dir.display(), found.len());
        found[0].clone()
    }

    /// Reads and checks the whole image: `oci-layout`, manifest, config, every layer (blob digest,
    /// descriptor size, decompressed sha256 = config rootfs diff_id, media type).
    pub fn image(&self, tag: Option<&str>) -> Image {
        let layout = read_json(&self.dir.join("oci-layout"));
        assert_eq!(layout["imageLayoutVersion"], "1.0.0", "oci-layout of {}", self.dir.display());
        let desc = self.manifest_descriptor(tag);
        assert_eq!(desc["mediaType"], MT_MANIFEST, "index.json entry media type");
        let manifest_bytes = self.blob(&desc);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MT_MANIFEST, "manifest mediaType");
        assert_eq!(manifest["config"]["mediaType"], MT_CONFIG);
        let config_bytes = self.blob(&manifest["config"]);
        let config: Value = serde_json::from_slice(&config_bytes).expect("config JSON");
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .expect("config rootfs.diff_ids")
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect();
        let descs = manifest["layers"].as_array().expect("manifest layers");
        assert_eq!(descs.len(), diff_ids.len(), "manifest layers vs config diff_ids");
        if let Some(history) = config["history"].as_array() {
            let non_empty = history.iter().filter(|h| h["empty_layer"] != true).count();
            assert_eq!(non_empty, descs.len(), "config history entries (non-empty) vs layers");
        }
        let mut layers = Vec::new();
        for (i, d) in descs.iter().enumerate() {
            let blob = self.blob(d);
            let media_type = d["mediaType"].as_str().expect("layer mediaType").to_string();
            let tar = decompress(&media_type, &blob);
            assert_eq!(
                sha256_digest(&tar),
                diff_ids[i],
                "layer {i} ({}): sha256 of the decompressed blob is not the config's diff_id",
                d["digest"]
            );
            layers.push(Layer { descriptor: d.clone(), media_type, diff_id: diff_ids[i].clone(), tar });
        }
        Image {
            manifest_digest: desc["digest"].as_str().unwrap().to_string(),
            manifest,
            config_digest: sha256_digest(&config_bytes),
            config,
            layers,
        }
    }
}

pub fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match media_type {
        MT_LAYER_GZIP => {
            flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut out).expect("gunzip layer");
        }
        MT_LAYER_ZSTD => {
            zstd::stream::read::Decoder::new(blob).unwrap().read_to_end(&mut out).expect("unzstd layer");
        }
        MT_LAYER_TAR => out = blob.to_vec(),
        other => panic!("unexpected layer media type {other:?}"),
    }
    out
}
