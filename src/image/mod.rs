//! Config, manifest and index: built with `oci-spec` types, serialised once to canonical JSON;
//! those exact bytes are hashed, written and pushed.

pub mod nix_db;
pub mod spec;

use std::collections::HashMap;

use anyhow::{Context, Result};
use canon_json::CanonJsonSerialize;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use serde::Serialize;

use crate::blob::{BlobInfo, Digest};
use crate::closure::StorePath;
pub use spec::ImageSpec;

/// Annotation on each layer descriptor: the store paths inside, one full path per line.
pub const ANNOTATION_STORE_PATHS: &str = "org.nixos.nixoci.store-paths";
/// Annotation on each layer descriptor: the layer group's name.
pub const ANNOTATION_GROUP: &str = "org.nixos.nixoci.group";
/// The group name of the customisation layer.
pub const CUSTOM_GROUP: &str = "customisation";

/// A built layer: its blob and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerDesc {
    #[serde(flatten)]
    pub blob: BlobInfo,
    pub group: String,
    pub paths: Vec<StorePath>,
}

/// A JSON document and its digest: the bytes are final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonBlob {
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

impl JsonBlob {
    fn of<T: Serialize>(value: &T) -> Result<Self> {
        let bytes = value.to_canon_json_vec().context("serialising JSON")?;
        Ok(Self { digest: Digest::of(&bytes), bytes })
    }
}

/// An assembled image: config and manifest bytes plus its layers.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: JsonBlob,
    pub manifest: JsonBlob,
    pub layers: Vec<LayerDesc>,
    pub architecture: String,
}

impl Image {
    /// The manifest's `mediaType` (an OCI image manifest unless the bytes say otherwise, e.g. a
    /// Docker v2 schema 2 manifest copied from a registry).
    pub fn manifest_media_type(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Typed {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        serde_json::from_slice::<Typed>(&self.manifest.bytes)
            .ok()
            .and_then(|t| t.media_type)
            .unwrap_or_else(|| MediaType::ImageManifest.to_string())
    }
}

/// `1970-01-01T00:00:01Z` for epoch 1.
pub fn rfc3339(epoch: u64) -> String {
    let (days, secs) = ((epoch / 86_400) as i64, epoch % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The image config: what the image spec asks for, plus rootfs diff_ids and history.
pub fn config(spec: &ImageSpec, layers: &[LayerDesc], epoch: u64) -> Result<JsonBlob> {
    let created = rfc3339(epoch);
    let mut cfg = ConfigBuilder::default();
    if !spec.entrypoint.is_empty() {
        cfg = cfg.entrypoint(spec.entrypoint.clone());
    }
    if !spec.cmd.is_empty() {
        cfg = cfg.cmd(spec.cmd.clone());
    }
    let env = spec.effective_env();
    if !env.is_empty() {
        cfg = cfg.env(env);
    }
    if let Some(w) = &spec.workdir {
        cfg = cfg.working_dir(w.clone());
    }
    if let Some(u) = &spec.user {
        cfg = cfg.user(u.clone());
    }
    if !spec.labels.is_empty() {
        cfg = cfg.labels(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>());
    }
    if !spec.exposed_ports.is_empty() {
        cfg = cfg.exposed_ports(spec.exposed_ports.clone());
    }
    let history = layers
        .iter()
        .map(|l| {
            let what = if l.group == CUSTOM_GROUP {
                "nixoci: customisation layer".to_owned()
            } else {
                format!("nixoci: group {}, {} store path(s)", l.group, l.paths.len())
            };
            HistoryBuilder::default().created(created.clone()).created_by(what).build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(layers.iter().map(|l| l.blob.diff_id.to_string()).collect::<Vec<_>>())
        .build()?;
    let config = ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(spec.architecture.as_str()))
        .os(Os::Linux)
        .config(cfg.build()?)
        .rootfs(rootfs)
        .history(history)
        .build()?;
    JsonBlob::of(&config)
}

/// The OCI manifest for `layers` (already compressed as they will be stored).
pub fn manifest(config: &JsonBlob, layers: &[LayerDesc]) -> Result<JsonBlob> {
    let config_desc = descriptor(MediaType::ImageConfig, &config.digest, config.bytes.len() as u64, None)?;
    let layer_descs = layers
        .iter()
        .map(|l| {
            let mut ann = HashMap::new();
            ann.insert(ANNOTATION_GROUP.to_owned(), l.group.clone());
            if !l.paths.is_empty() {
                ann.insert(
                    ANNOTATION_STORE_PATHS.to_owned(),
                    l.paths.iter().map(|p| p.full()).collect::<Vec<_>>().join("\n"),
                );
            }
            descriptor(MediaType::from(l.blob.media_type.as_str()), &l.blob.digest, l.blob.size, Some(ann))
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layer_descs)
        .build()?;
    JsonBlob::of(&manifest)
}

/// Assembles config and manifest.
pub fn assemble(spec: &ImageSpec, layers: Vec<LayerDesc>, epoch: u64) -> Result<Image> {
    let config = config(spec, &layers, epoch)?;
    let manifest = manifest(&config, &layers)?;
    Ok(Image { config, manifest, layers, architecture: spec.architecture.clone() })
}

pub fn descriptor(
    media_type: MediaType,
    digest: &Digest,
    size: u64,
    annotations: Option<HashMap<String, String>>,
) -> Result<Descriptor> {
    let mut d = DescriptorBuilder::default()
        .media_type(media_type)
        .digest(oci_spec::image::Digest::try_from(digest.as_str())?)
        .size(size);
    if let Some(a) = annotations {
        d = d.annotations(a);
    }
    Ok(d.build()?)
}

/// The descriptor of `image`'s manifest in an index, with its platform and optional ref name.
pub fn manifest_descriptor(image: &Image, ref_name: Option<&str>) -> Result<Descriptor> {
    let platform =
        PlatformBuilder::default().architecture(Arch::from(image.architecture.as_str())).os(Os::Linux).build()?;
    let ann = ref_name.map(|r| HashMap::from([("org.opencontainers.image.ref.name".to_owned(), r.to_owned())]));
    let mut d = descriptor(
        MediaType::from(image.manifest_media_type().as_str()),
        &image.manifest.digest,
        image.manifest.bytes.len() as u64,
        ann,
    )?;
    d.set_platform(Some(platform));
    Ok(d)
}

/// An index holding `manifests`, as canonical JSON.
pub fn index(manifests: Vec<Descriptor>) -> Result<JsonBlob> {
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()?;
    JsonBlob::of(&index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(1), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn json_is_canonical_and_stable() {
        let spec: ImageSpec =
            toml::from_str("labels = { b = \"2\", a = \"1\", c = \"3\" }\nexposed_ports = [\"2/tcp\", \"1/tcp\"]")
                .unwrap();
        let a = config(&spec, &[], 1).unwrap();
        for _ in 0..20 {
            assert_eq!(config(&spec, &[], 1).unwrap(), a);
        }
        let text = String::from_utf8(a.bytes).unwrap();
        assert!(text.contains(r#""Labels":{"a":"1","b":"2","c":"3"}"#), "{text}");
    }
}
