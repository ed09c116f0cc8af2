//! Config, manifest and index: built with `oci-spec` types, serialised once to canonical JSON;
//! those exact bytes are hashed, written and pushed.

pub mod nix_db;
pub mod spec;

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use canon_json::CanonJsonSerialize;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
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

/// How a layer is named in progress lines and reports: `python3.14-torch-2.10.0`, `hello-1.0 +3`,
/// or its group when it holds no store path.
pub fn layer_label(paths: &[crate::closure::StorePath], group: Option<&str>) -> String {
    match paths {
        [] => group.map_or_else(|| "(no store paths)".to_owned(), str::to_owned),
        [one] => one.name().to_owned(),
        [first, rest @ ..] => format!("{} +{}", first.name(), rest.len()),
    }
}

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
    pub platform: crate::platform::Platform,
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

/// Manifest annotation: when the image was made (from the epoch, like the config's `created`).
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// Manifest annotation: the image built on (`build --from`), as named.
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
/// Manifest annotation: the manifest digest of the image built on.
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// The image config: what the image spec asks for, over what the `base` image's config had
/// (`build --from`), plus rootfs diff_ids and history.
///
/// Inheritance, as with dockerTools' `fromImage`: the base's `Env` first, ours replacing a
/// variable of the same name; `Entrypoint`, `Cmd`, `WorkingDir`, `User` and `ExposedPorts` ours
/// when the spec gives them, else the base's (but an entrypoint of ours drops the base's `Cmd`,
/// as docker does); `Labels` merged, ours winning; the base's
/// `Volumes` and `StopSignal` kept; the base's history entries first.
pub fn config(
    spec: &ImageSpec,
    layers: &[LayerDesc],
    epoch: u64,
    base: Option<&ImageConfiguration>,
) -> Result<JsonBlob> {
    let created = rfc3339(epoch);
    let inherited = base.and_then(|b| b.config().clone()).unwrap_or_default();
    let or_base = |ours: &[String], theirs: &Option<Vec<String>>| {
        if ours.is_empty() { theirs.clone().unwrap_or_default() } else { ours.to_vec() }
    };
    let mut cfg = ConfigBuilder::default();
    let entrypoint = or_base(&spec.entrypoint, inherited.entrypoint());
    if !entrypoint.is_empty() {
        cfg = cfg.entrypoint(entrypoint);
    }
    // As docker does: an entrypoint of ours resets the base's Cmd (it was the base entrypoint's
    // arguments).
    let cmd = if spec.entrypoint.is_empty() { or_base(&spec.cmd, inherited.cmd()) } else { spec.cmd.clone() };
    if !cmd.is_empty() {
        cfg = cfg.cmd(cmd);
    }
    let env = spec.effective_env_over(inherited.env().as_deref().unwrap_or_default());
    if !env.is_empty() {
        cfg = cfg.env(env);
    }
    if let Some(w) = spec.workdir.clone().or_else(|| inherited.working_dir().clone()) {
        cfg = cfg.working_dir(w);
    }
    if let Some(u) = spec.user.clone().or_else(|| inherited.user().clone()) {
        cfg = cfg.user(u);
    }
    let mut labels: HashMap<String, String> = inherited.labels().clone().unwrap_or_default();
    labels.extend(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !labels.is_empty() {
        cfg = cfg.labels(labels);
    }
    let ports = or_base(&spec.exposed_ports, inherited.exposed_ports());
    if !ports.is_empty() {
        cfg = cfg.exposed_ports(ports);
    }
    if let Some(v) = inherited.volumes() {
        cfg = cfg.volumes(v.clone());
    }
    if let Some(s) = inherited.stop_signal() {
        cfg = cfg.stop_signal(s.clone());
    }
    // The base's layers come first; its history is kept when it accounts for them.
    let n_base = base.map_or(0, |b| b.rootfs().diff_ids().len());
    let base_history = base.map(|b| base_history(b, n_base)).transpose()?.unwrap_or_default();
    let ours = layers
        .iter()
        .skip(n_base)
        .map(|l| {
            let what = if l.group == CUSTOM_GROUP {
                "nixoci: customisation layer".to_owned()
            } else {
                format!("nixoci: group {}, {} store path(s)", l.group, l.paths.len())
            };
            HistoryBuilder::default().created(created.clone()).created_by(what).build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let history: Vec<_> = base_history.into_iter().chain(ours).collect();
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(layers.iter().map(|l| l.blob.diff_id.to_string()).collect::<Vec<_>>())
        .build()?;
    let platform = spec.platform();
    let mut config = ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(platform.architecture.as_str()))
        .os(Os::from(platform.os.as_str()))
        .config(cfg.build()?)
        .rootfs(rootfs)
        .history(history)
        .build()?;
    config.set_variant(platform.variant);
    JsonBlob::of(&config)
}

/// The base's history when its non-empty entries match its `n_layers` layers (as image tools
/// require); else one entry per base layer, so the new history still lines up with the layers.
fn base_history(base: &ImageConfiguration, n_layers: usize) -> Result<Vec<oci_spec::image::History>> {
    let history = base.history().clone().unwrap_or_default();
    if history.iter().filter(|h| h.empty_layer() != Some(true)).count() == n_layers {
        return Ok(history);
    }
    (0..n_layers)
        .map(|i| {
            let mut h = HistoryBuilder::default().created_by(format!("layer {} of the base image", i + 1));
            if let Some(c) = base.created() {
                h = h.created(c.clone());
            }
            Ok(h.build()?)
        })
        .collect()
}

/// The OCI manifest for `layers` (already compressed as they will be stored), with
/// `annotations` (none: no `annotations` field).
pub fn manifest(config: &JsonBlob, layers: &[LayerDesc], annotations: &BTreeMap<String, String>) -> Result<JsonBlob> {
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
            ann.extend(l.blob.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
            descriptor(MediaType::from(l.blob.media_type.as_str()), &l.blob.digest, l.blob.size, Some(ann))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layer_descs);
    if !annotations.is_empty() {
        manifest =
            manifest.annotations(annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>());
    }
    JsonBlob::of(&manifest.build()?)
}

/// The manifest annotations of a build: `org.opencontainers.image.created` from the epoch, the
/// base's name and digest with `--from`, then the image spec's (`annotations`, `--annotation`),
/// which win.
pub fn annotations(spec: &ImageSpec, epoch: u64, base: Option<&crate::base::Base>) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([(ANNOTATION_CREATED.to_owned(), rfc3339(epoch))]);
    if let Some(b) = base {
        if let Some(name) = &b.name {
            a.insert(ANNOTATION_BASE_NAME.to_owned(), name.clone());
        }
        a.insert(ANNOTATION_BASE_DIGEST.to_owned(), b.manifest_digest().to_string());
    }
    a.extend(spec.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    a
}

/// Assembles config and manifest; `layers` start with the base's when there is one.
pub fn assemble(
    spec: &ImageSpec,
    layers: Vec<LayerDesc>,
    epoch: u64,
    base: Option<&crate::base::Base>,
) -> Result<Image> {
    let config = config(spec, &layers, epoch, base.map(crate::base::Base::config))?;
    let manifest = manifest(&config, &layers, &annotations(spec, epoch, base))?;
    Ok(Image { config, manifest, layers, platform: spec.platform() })
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

/// The descriptor of `image`'s manifest in an index, with its platform, the manifest's own
/// annotations and the optional ref name.
pub fn manifest_descriptor(image: &Image, ref_name: Option<&str>) -> Result<Descriptor> {
    let platform = image.platform.to_oci()?;
    #[derive(serde::Deserialize)]
    struct Annotated {
        annotations: Option<HashMap<String, String>>,
    }
    let mut ann =
        serde_json::from_slice::<Annotated>(&image.manifest.bytes).ok().and_then(|m| m.annotations).unwrap_or_default();
    if let Some(r) = ref_name {
        ann.insert("org.opencontainers.image.ref.name".to_owned(), r.to_owned());
    }
    let ann = (!ann.is_empty()).then_some(ann);
    let mut d = descriptor(
        MediaType::from(image.manifest_media_type().as_str()),
        &image.manifest.digest,
        image.manifest.bytes.len() as u64,
        ann,
    )?;
    d.set_platform(Some(platform));
    Ok(d)
}

/// Per-platform images and the image index over them, as written to a destination.
#[derive(Debug, Clone)]
pub struct IndexImage {
    /// The index's exact bytes (and digest).
    pub index: JsonBlob,
    /// Its `mediaType` (an OCI image index, or a Docker manifest list copied as it is).
    pub media_type: String,
    pub images: Vec<Image>,
}

impl IndexImage {
    /// The descriptor of the index itself in a layout's `index.json`, with the optional ref name.
    pub fn descriptor(&self, ref_name: Option<&str>) -> Result<Descriptor> {
        let ann = ref_name.map(|r| HashMap::from([("org.opencontainers.image.ref.name".to_owned(), r.to_owned())]));
        descriptor(MediaType::from(self.media_type.as_str()), &self.index.digest, self.index.bytes.len() as u64, ann)
    }
}

/// What a destination receives: one image, or an index with its images.
#[derive(Debug, Clone, Copy)]
pub enum Top<'a> {
    Image(&'a Image),
    Index(&'a IndexImage),
}

impl<'a> Top<'a> {
    /// Every image written (one, or the index's).
    pub fn images(&self) -> &'a [Image] {
        match *self {
            Top::Image(i) => std::slice::from_ref(i),
            Top::Index(x) => &x.images,
        }
    }

    /// The JSON blobs written: configs, manifests, and the index.
    pub fn json_blobs(&self) -> Vec<&'a JsonBlob> {
        let mut out: Vec<&JsonBlob> = self.images().iter().flat_map(|i| [&i.config, &i.manifest]).collect();
        if let Top::Index(x) = *self {
            out.push(&x.index);
        }
        out
    }

    /// The entry of a layout's `index.json` that names what was written.
    pub fn descriptor(&self, ref_name: Option<&str>) -> Result<Descriptor> {
        match *self {
            Top::Image(i) => manifest_descriptor(i, ref_name),
            Top::Index(x) => x.descriptor(ref_name),
        }
    }
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
        let a = config(&spec, &[], 1, None).unwrap();
        for _ in 0..20 {
            assert_eq!(config(&spec, &[], 1, None).unwrap(), a);
        }
        let text = String::from_utf8(a.bytes).unwrap();
        assert!(text.contains(r#""Labels":{"a":"1","b":"2","c":"3"}"#), "{text}");
    }

    fn base_config(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    /// A one-byte layer of `group`.
    fn layer(group: &str) -> LayerDesc {
        LayerDesc {
            blob: BlobInfo {
                digest: Digest::of(group.as_bytes()),
                size: 1,
                diff_id: Digest::of(b"t"),
                uncompressed_size: 1,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                annotations: Default::default(),
            },
            group: group.into(),
            paths: vec![],
        }
    }

    /// The config of `spec` over `base`: its one layer, then one of ours.
    fn config_of(spec: &str, base: &ImageConfiguration) -> serde_json::Value {
        let spec: ImageSpec = toml::from_str(spec).unwrap();
        let layers = vec![layer("base"), layer("auto")];
        serde_json::from_slice(&config(&spec, &layers, 1, Some(base)).unwrap().bytes).unwrap()
    }

    const BASE: &str = r#"{"architecture":"amd64","os":"linux",
        "config":{"Env":["PATH=/bin","LANG=C","TZ=UTC"],"Entrypoint":["/entry"],"Cmd":["/bin/sh"],
                  "WorkingDir":"/w","User":"bob","ExposedPorts":{"80/tcp":{}},"Labels":{"a":"base","b":"base"},
                  "StopSignal":"SIGTERM"},
        "rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},
        "history":[{"created_by":"base step"},{"created_by":"base config","empty_layer":true}]}"#;

    #[test]
    fn a_bare_spec_inherits_the_whole_base_config() {
        let c = config_of("", &base_config(BASE));
        let cfg = &c["config"];
        assert_eq!(cfg["Env"], serde_json::json!(["PATH=/bin", "LANG=C", "TZ=UTC"]));
        assert_eq!(cfg["Entrypoint"], serde_json::json!(["/entry"]));
        assert_eq!(cfg["Cmd"], serde_json::json!(["/bin/sh"]));
        assert_eq!((cfg["WorkingDir"].as_str(), cfg["User"].as_str()), (Some("/w"), Some("bob")));
        assert_eq!(cfg["ExposedPorts"], serde_json::json!({"80/tcp": {}}));
        assert_eq!(cfg["StopSignal"], "SIGTERM");
        let history: Vec<&str> =
            c["history"].as_array().unwrap().iter().map(|h| h["created_by"].as_str().unwrap()).collect();
        assert_eq!(history, ["base step", "base config", "nixoci: group auto, 0 store path(s)"]);
    }

    #[test]
    fn ours_win_by_variable_key_and_field() {
        let spec = r#"
            env = ["LANG=C.UTF-8", "APP=1"]
            cmd = ["serve"]
            user = "app"
            workdir = "/app"
            exposed_ports = ["8188/tcp"]
            labels = { b = "ours", c = "ours" }
        "#;
        let c = config_of(spec, &base_config(BASE));
        let cfg = &c["config"];
        assert_eq!(cfg["Env"], serde_json::json!(["PATH=/bin", "LANG=C.UTF-8", "TZ=UTC", "APP=1"]));
        assert_eq!(cfg["Entrypoint"], serde_json::json!(["/entry"]), "kept: the spec gives none");
        assert_eq!(cfg["Cmd"], serde_json::json!(["serve"]));
        assert_eq!((cfg["WorkingDir"].as_str(), cfg["User"].as_str()), (Some("/app"), Some("app")));
        assert_eq!(cfg["ExposedPorts"], serde_json::json!({"8188/tcp": {}}));
        assert_eq!(cfg["Labels"], serde_json::json!({"a": "base", "b": "ours", "c": "ours"}));
    }

    #[test]
    fn our_entrypoint_drops_the_base_cmd_and_gpu_extends_the_merged_env() {
        let c = config_of("entrypoint = [\"/app\"]\ngpu = true", &base_config(BASE));
        let cfg = &c["config"];
        assert_eq!(cfg["Entrypoint"], serde_json::json!(["/app"]));
        assert!(cfg.get("Cmd").is_none_or(|c| c.is_null()), "{cfg}");
        let env: Vec<&str> = cfg["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert_eq!(&env[..3], ["PATH=/bin", "LANG=C", "TZ=UTC"]);
        assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=all"), "{env:?}");
    }

    #[test]
    fn a_base_history_that_does_not_match_its_layers_is_replaced() {
        // Two layers, one history entry: image tools would refuse the result.
        let base = base_config(&BASE.replace(
            r#""diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]"#,
            r#""diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000","sha256:1111111111111111111111111111111111111111111111111111111111111111"]"#,
        ));
        let spec: ImageSpec = toml::from_str("").unwrap();
        // A layers-file group may not be called "base"; the base's layers are known by position.
        let layers = vec![layer("base"), layer("base"), layer("auto")];
        let c: serde_json::Value =
            serde_json::from_slice(&config(&spec, &layers, 1, Some(&base)).unwrap().bytes).unwrap();
        let history: Vec<&str> =
            c["history"].as_array().unwrap().iter().map(|h| h["created_by"].as_str().unwrap()).collect();
        assert_eq!(
            history,
            ["layer 1 of the base image", "layer 2 of the base image", "nixoci: group auto, 0 store path(s)"]
        );
    }
}
