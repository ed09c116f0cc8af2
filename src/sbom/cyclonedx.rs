//! CycloneDX 1.6 JSON: one `library` component per store path (`bom-ref` = the full store path)
//! and one per Python distribution inside it (`bom-ref` = `<store path>#pypi:<name>`, which its
//! store path `dependsOn`), references as `dependencies`, the closure's roots as what the
//! document's own component (`metadata.component`, the image or closure) depends on.
//!
//! Per store path: `name`/`version` from `parseDrvName`, the NAR hash as a `SHA-256` hash, the
//! `pkg:nix` purl, and properties `nixoci:store-path`, `nixoci:nar-size`, `nixoci:layers`
//! (comma-separated layer digests).

use anyhow::{Context, Result};
use canon_json::CanonJsonSerialize;
use serde_json::{Value, json};

use super::{Sbom, sha256_hex, tool_version};
use crate::image::rfc3339;

/// The property naming the layers that hold a component.
pub const LAYERS_PROPERTY: &str = "nixoci:layers";
/// The property naming the store path of a component.
pub const STORE_PATH_PROPERTY: &str = "nixoci:store-path";
const DOCUMENT_REF: &str = "nixoci:subject";

pub fn render(sbom: &Sbom) -> Result<Vec<u8>> {
    let mut components = Vec::new();
    let mut dependencies = vec![json!({
        "ref": DOCUMENT_REF,
        "dependsOn": sbom.roots.iter().map(|r| r.full()).collect::<Vec<_>>(),
    })];
    for p in &sbom.packages {
        let r = p.path.full();
        let mut props = vec![prop(STORE_PATH_PROPERTY, &r)];
        if let Some(n) = p.nar_size {
            props.push(prop("nixoci:nar-size", &n.to_string()));
        }
        if !p.layers.is_empty() {
            props.push(prop(LAYERS_PROPERTY, &p.layers.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(",")));
        }
        let mut c = json!({
            "type": "library",
            "bom-ref": r,
            "name": p.name,
            "purl": p.purl(),
            "properties": props,
        });
        if let Some(v) = &p.version {
            c["version"] = json!(v);
        }
        if let Some(h) = &p.nar_hash {
            c["hashes"] = json!([{ "alg": "SHA-256", "content": h.to_hex() }]);
        }
        components.push(c);
        let mut depends: Vec<String> = p.depends_on.iter().map(|d| d.full()).collect();
        for d in &p.python {
            let pref = format!("{r}#pypi:{}", d.normalized_name());
            let mut c = json!({
                "type": "library",
                "bom-ref": pref,
                "name": d.name,
                "version": d.version,
                "purl": d.purl(),
                "properties": [prop(STORE_PATH_PROPERTY, &r), prop("nixoci:dist-info", &d.dist_info)],
            });
            if let Some(e) = &d.license_expression {
                c["licenses"] = json!([{ "expression": e }]);
            } else if let Some(t) = &d.license_text {
                c["licenses"] = json!([{ "license": { "name": t } }]);
            }
            components.push(c);
            depends.push(pref);
        }
        depends.sort();
        dependencies.push(json!({ "ref": r, "dependsOn": depends }));
    }
    let mut doc = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(sbom.epoch),
            "tools": { "components": [{ "type": "application", "name": "nixoci", "version": tool_version() }] },
            "component": { "type": "application", "bom-ref": DOCUMENT_REF, "name": sbom.name },
        },
        "components": components,
        "dependencies": dependencies,
    });
    let unnamed = doc.to_canon_json_vec().context("serialising the CycloneDX document")?;
    doc["serialNumber"] = json!(uuid_of(&sha256_hex(&unnamed)));
    doc.to_canon_json_vec().context("serialising the CycloneDX document")
}

fn prop(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value })
}

/// `urn:uuid:` from the first 128 bits of a hex hash, marked as an RFC 9562 version 8 (custom)
/// UUID with the RFC variant.
fn uuid_of(hex: &str) -> String {
    let h = hex.as_bytes();
    let s = |a: usize, b: usize| std::str::from_utf8(&h[a..b]).unwrap_or("0");
    let variant = ["8", "9", "a", "b"][usize::from_str_radix(s(16, 17), 16).unwrap_or(0) % 4];
    format!("urn:uuid:{}-{}-8{}-{variant}{}-{}", s(0, 8), s(8, 12), s(13, 16), s(17, 20), s(20, 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_hashes_dependencies() {
        let s = crate::sbom::tests::sample();
        let v: Value = serde_json::from_slice(&render(&s).unwrap()).unwrap();
        assert_eq!(v["specVersion"], "1.6");
        let sn = v["serialNumber"].as_str().unwrap();
        assert_eq!(sn.len(), "urn:uuid:".len() + 36, "{sn}");
        assert_eq!(&sn[23..24], "8", "{sn}");
        let comps = v["components"].as_array().unwrap();
        assert_eq!(comps.len(), 3);
        let glibc = comps.iter().find(|c| c["name"] == "glibc").unwrap();
        assert_eq!(glibc["hashes"][0]["content"], "02".repeat(32));
        let py = comps.iter().find(|c| c["name"] == "Foo.Bar").unwrap();
        assert_eq!(py["purl"], "pkg:pypi/foo-bar@1.0");
        assert_eq!(py["licenses"][0]["expression"], "MIT");
        let deps = v["dependencies"].as_array().unwrap();
        assert_eq!(deps.len(), 3);
    }
}
