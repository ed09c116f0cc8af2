//! Which store paths each layer holds: its tar, its annotation and `--json` agree, and the image
//! holds the closure once.

use std::collections::BTreeSet;

use super::{Built, Image, TarEntry, full_store_path, tar_entries};

pub const STORE_PATHS_ANNOTATION: &str = "org.nixos.nixoci.store-paths";

/// The store paths an annotation value names (a JSON array, or a list split on whitespace or commas).
pub fn parse_store_paths_annotation(value: &str) -> BTreeSet<String> {
    let v = value.trim();
    if v.starts_with('[') {
        let list: Vec<String> = serde_json::from_str(v).unwrap_or_else(|e| panic!("annotation {v:?}: {e}"));
        list.iter().map(|p| full_store_path(p)).collect()
    } else {
        v.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(full_store_path).collect()
    }
}

/// The top-level store paths (`/nix/store/<base>`) a layer tar holds.
pub fn store_paths_in_tar(entries: &[TarEntry]) -> BTreeSet<String> {
    entries
        .iter()
        .filter_map(|e| e.path.strip_prefix("nix/store/"))
        .map(|rest| format!("/nix/store/{}", rest.split('/').next().unwrap()))
        .collect()
}

/// Checks that every layer holding store paths is annotated with exactly those paths, that the
/// layers agree with `--json`, and that together they hold `expected` once each.
pub fn check_store_layers(image: &Image, built: &Built, expected: &BTreeSet<String>) {
    assert_eq!(image.manifest_digest, built.manifest_digest, "--json manifest_digest vs the layout");
    assert_eq!(image.config_digest, built.config_digest, "--json config_digest vs the layout");
    assert_eq!(image.layers.len(), built.layers.len(), "--json layer count vs the manifest");
    let json_paths = built.layer_paths();
    let mut all = BTreeSet::new();
    for (i, (layer, j)) in image.layers.iter().zip(&built.layers).enumerate() {
        assert_eq!(layer.descriptor["digest"], j["digest"], "layer {i}: --json digest");
        assert_eq!(layer.descriptor["size"], j["size"], "layer {i}: --json size");
        assert_eq!(layer.diff_id, j["diff_id"].as_str().unwrap(), "layer {i}: --json diff_id");
        assert_eq!(layer.media_type, j["media_type"].as_str().unwrap(), "layer {i}: --json media_type");
        let entries = tar_entries(&layer.tar);
        let in_tar = store_paths_in_tar(&entries);
        let listed: BTreeSet<String> = json_paths[i].iter().cloned().collect();
        if in_tar.is_empty() {
            assert!(listed.is_empty(), "layer {i} holds no store path but --json lists {listed:?}");
            continue;
        }
        // A slice of one huge path may repeat a path across layers; ours are small, so no slices.
        assert_eq!(in_tar, listed, "layer {i}: store paths in the tar vs --json paths");
        let annotation = layer.annotation(STORE_PATHS_ANNOTATION).unwrap_or_else(|| {
            panic!("layer {i} holds store paths but has no {STORE_PATHS_ANNOTATION} annotation: {:#}", layer.descriptor)
        });
        assert_eq!(
            parse_store_paths_annotation(annotation),
            listed,
            "layer {i}: {STORE_PATHS_ANNOTATION} annotation {annotation:?}"
        );
        for p in listed {
            assert!(all.insert(p.clone()), "store path {p} is in two layers");
        }
    }
    assert_eq!(&all, expected, "store paths of the image vs the closure");
}
