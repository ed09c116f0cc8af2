//! SHA-256 digests in OCI's `sha256:<hex>` spelling.

use sha2::{Digest as _, Sha256};

pub fn assert_digest_syntax(d: &str) {
    let hex = d.strip_prefix("sha256:").unwrap_or_else(|| panic!("digest {d:?} is not sha256:…"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "digest {d:?} is not 64 lowercase hex digits"
    );
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}
