//! NAR hashes in every spelling Nix prints them: SRI (`sha256-<base64>`), `sha256:<nix32>`,
//! `sha256:<hex>`, or bare hex (closureInfo's `registration`).

use std::fmt;

use anyhow::{Result, bail};

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A SHA-256 NAR hash. Displays as SRI.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NarHash(pub [u8; 32]);

impl NarHash {
    pub fn parse(s: &str) -> Result<Self> {
        let digest = if let Some(b64) = s.strip_prefix("sha256-") {
            decode_base64(b64)
        } else {
            let body = s.strip_prefix("sha256:").unwrap_or(s);
            match body.len() {
                64 => hex::decode(body).ok(),
                52 => decode_nix32(body),
                44 => decode_base64(body),
                _ => None,
            }
        };
        match digest.and_then(|d| <[u8; 32]>::try_from(d).ok()) {
            Some(d) => Ok(Self(d)),
            None => bail!("unrecognised NAR hash {s:?} (expected sha256 as SRI, nix32 or hex)"),
        }
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256-{}", encode_base64(&self.0))
    }
}

impl fmt::Debug for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn decode_nix32(s: &str) -> Option<Vec<u8>> {
    let len = s.len() * 5 / 8;
    let mut out = vec![0u8; len];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = NIX32.iter().position(|&x| x == c)? as u16;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let v = digit << j;
        *out.get_mut(i)? |= v as u8;
        let hi = (v >> 8) as u8;
        if i + 1 < len {
            out[i + 1] |= hi;
        } else if hi != 0 {
            return None;
        }
    }
    Some(out)
}

/// Standard base64, as leniently as Nix reads it: padded or not, and ignoring the unused low bits
/// of the last character (hand-written hashes such as `sha256-BBB…B=` set them).
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    base64::Engine::decode(&B64, s).ok()
}

fn encode_base64(data: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_lenient_as_nix() {
        let padded = NarHash::parse("sha256-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=").unwrap();
        assert_eq!(NarHash::parse("sha256-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB").unwrap(), padded);
        assert_eq!(padded.to_string(), "sha256-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=");
    }

    // The NAR hash of one path as printed by `nix path-info --json` (SRI), by
    // `nix-store -q --hash` (nix32) and in closureInfo's registration (hex).
    const SRI: &str = "sha256-AivTWHjbI5km6uA8asoMuzC8UzPoXd0XuwGzbexzo/0=";
    const NIX32: &str = "sha256:1zd3fgn6vcq1pcbxspg86d9vqc5v1k56lg70x8k9j8yvg1cd6aq2";
    const HEX: &str = "022bd35878db239926eae03c6aca0cbb30bc5333e85ddd17bb01b36dec73a3fd";

    #[test]
    fn all_spellings_agree() {
        let a = NarHash::parse(SRI).unwrap();
        assert_eq!(a.to_hex(), HEX);
        assert_eq!(NarHash::parse(HEX).unwrap(), a);
        assert_eq!(NarHash::parse(&format!("sha256:{HEX}")).unwrap(), a);
        assert_eq!(NarHash::parse(NIX32).unwrap(), a);
        assert_eq!(a.to_string(), SRI);
    }

    #[test]
    fn rejects_garbage() {
        assert!(NarHash::parse("md5:abc").is_err());
        assert!(NarHash::parse("sha256-!!!").is_err());
    }
}
