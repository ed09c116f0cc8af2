//! SPDX 2.3 JSON: one package per store path (`SPDXRef-Nix-<hash>`), one per Python
//! distribution inside it (`SPDXRef-Python-<hash>-<name>`, `CONTAINS`ed by its store path),
//! references as `DEPENDS_ON`, the closure's roots `DESCRIBES`d by the document.
//!
//! Per store path: `name`/`versionInfo` from `parseDrvName`, `packageFileName` the full store
//! path, the NAR hash as a `SHA256` checksum, a `purl` external reference, and the layers
//! holding it as an `OTHER` annotation (`org.nixos.nixoci.layers=sha256:…`).

use anyhow::{Context, Result};
use canon_json::CanonJsonSerialize;
use serde_json::{Value, json};

use super::{PythonDist, Sbom, sha256_hex, tool_version};
use crate::closure::StorePath;
use crate::image::rfc3339;

/// The annotation comment prefix naming the layers that hold a package.
pub const LAYERS_ANNOTATION: &str = "org.nixos.nixoci.layers=";

pub fn nix_id(p: &StorePath) -> String {
    format!("SPDXRef-Nix-{}", p.hash_part())
}

fn python_id(p: &StorePath, d: &PythonDist) -> String {
    // SPDX ids: letters, digits, `.` and `-`.
    let name: String =
        d.normalized_name().chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    format!("SPDXRef-Python-{}-{name}", p.hash_part())
}

pub fn render(sbom: &Sbom) -> Result<Vec<u8>> {
    let created = rfc3339(sbom.epoch);
    let tool = format!("Tool: nixoci-{}", tool_version());
    let mut packages = Vec::new();
    let mut relationships = Vec::new();
    for root in &sbom.roots {
        relationships.push(rel("SPDXRef-DOCUMENT", "DESCRIBES", &nix_id(root)));
    }
    for p in &sbom.packages {
        let id = nix_id(&p.path);
        let mut pkg = json!({
            "SPDXID": id,
            "name": p.name,
            "packageFileName": p.path.full(),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": p.purl(),
            }],
        });
        if let Some(v) = &p.version {
            pkg["versionInfo"] = json!(v);
        }
        if let Some(h) = &p.nar_hash {
            pkg["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": h.to_hex() }]);
            pkg["comment"] =
                json!(format!("NAR hash {h}{}", p.nar_size.map(|s| format!(", NAR size {s}")).unwrap_or_default()));
        }
        if !p.layers.is_empty() {
            let layers: Vec<&str> = p.layers.iter().map(|d| d.as_str()).collect();
            pkg["annotations"] = json!([{
                "annotationDate": created,
                "annotationType": "OTHER",
                "annotator": tool,
                "comment": format!("{LAYERS_ANNOTATION}{}", layers.join(",")),
            }]);
        }
        packages.push(pkg);
        for d in &p.python {
            let pid = python_id(&p.path, d);
            let mut py = json!({
                "SPDXID": pid,
                "name": d.name,
                "versionInfo": d.version,
                "packageFileName": format!("{}/{}", p.path.full(), d.dist_info),
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": d.license_expression.as_deref().unwrap_or("NOASSERTION"),
                "copyrightText": "NOASSERTION",
                "primaryPackagePurpose": "LIBRARY",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": d.purl(),
                }],
            });
            if let Some(t) = d.license_text.as_ref().filter(|_| d.license_expression.is_none()) {
                py["licenseComments"] = json!(format!("as the metadata writes it: {t}"));
            }
            packages.push(py);
            relationships.push(rel(&id, "CONTAINS", &pid));
        }
        for r in &p.depends_on {
            relationships.push(rel(&id, "DEPENDS_ON", &nix_id(r)));
        }
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": sbom.name,
        "creationInfo": { "created": created, "creators": [tool] },
        "packages": packages,
        "relationships": relationships,
    });
    let unnamed = doc.to_canon_json_vec().context("serialising the SPDX document")?;
    doc["documentNamespace"] = json!(format!("https://nixoci.invalid/spdx/{}", sha256_hex(&unnamed)));
    doc.to_canon_json_vec().context("serialising the SPDX document")
}

fn rel(a: &str, kind: &str, b: &str) -> Value {
    json!({ "spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_checksums_relationships() {
        let s = crate::sbom::tests::sample();
        let v: Value = serde_json::from_slice(&render(&s).unwrap()).unwrap();
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["creationInfo"]["created"], "1970-01-01T00:00:01Z");
        let pk = v["packages"].as_array().unwrap();
        assert_eq!(pk.len(), 3);
        let glibc = pk.iter().find(|p| p["name"] == "glibc").unwrap();
        assert_eq!(glibc["checksums"][0]["checksumValue"], "02".repeat(32));
        assert!(glibc["annotations"][0]["comment"].as_str().unwrap().starts_with(LAYERS_ANNOTATION));
        let py = pk.iter().find(|p| p["name"] == "Foo.Bar").unwrap();
        assert_eq!(py["externalRefs"][0]["referenceLocator"], "pkg:pypi/foo-bar@1.0");
        assert_eq!(py["licenseDeclared"], "MIT");
        let rels = v["relationships"].as_array().unwrap();
        assert!(rels.iter().any(|r| r["relationshipType"] == "DEPENDS_ON"));
        assert!(rels.iter().any(|r| r["relationshipType"] == "CONTAINS"));
        assert!(rels.iter().any(|r| r["relationshipType"] == "DESCRIBES"));
        assert!(v["documentNamespace"].as_str().unwrap().starts_with("https://nixoci.invalid/spdx/"));
    }
}
