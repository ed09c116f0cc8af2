//! Errors a caller may branch on: HTTP status, authentication, TLS, digest mismatch.

use crate::blob::Digest;

/// What went wrong talking to a registry. Every variant names the host and what was being done
/// (`pushing blob sha256:… to 127.0.0.1:5000/app`), and carries the server's error body.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The server answered with an unexpected status.
    #[error("{what}: {host} answered {status}{}", body_suffix(.body))]
    Status {
        host: String,
        what: String,
        status: u16,
        /// The server's error body (registry error JSON flattened to `CODE: message`).
        body: String,
    },
    /// The credentials were refused, or none were given where they are needed.
    #[error("{what}: {host} refused the credentials ({status}){}{}", body_suffix(.body), hint(.had_credentials))]
    Auth { host: String, what: String, status: u16, body: String, had_credentials: bool },
    /// No connection: refused, timed out, DNS, TLS handshake.
    #[error("{what}: cannot reach {host}: {message}")]
    Connect {
        host: String,
        what: String,
        /// The error chain, flattened (it never holds credentials: they travel in headers).
        message: String,
        /// A certificate problem or a proxy that refused its credentials: not worth retrying.
        permanent: bool,
    },
    /// The server stored other bytes than we sent.
    #[error("{what}: {host} reports digest {actual}, expected {expected}")]
    DigestMismatch { host: String, what: String, expected: Digest, actual: String },
    /// A local file could not be read while sending it.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Attempts ran out; `last` is the final failure.
    #[error("{last} (gave up after {attempts} attempts in {secs:.0}s)")]
    GaveUp {
        attempts: u32,
        secs: f64,
        /// Shown in the message, so not a `source` (it would print twice).
        last: Box<RegistryError>,
    },
}

impl RegistryError {
    /// Whether another attempt may succeed: connection errors, 5xx, 429 (and 408).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connect { permanent, .. } => !permanent,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } | RegistryError::Auth { status, .. } => Some(*status),
            RegistryError::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() { String::new() } else { format!(": {body}") }
}

fn hint(had_credentials: &bool) -> &'static str {
    if *had_credentials {
        ""
    } else {
        " (no credentials found: give --creds USER:PASS or --authfile, or log in with `podman login` / `docker login`)"
    }
}

/// A server's error body as one readable line: the registry error document
/// (`{"errors":[{"code","message","detail"}]}`) as `CODE: message (detail); …`; other JSON
/// with an `error`, `message` or `details` string (token servers, proxies) as that string; an
/// HTML page as its title; other text trimmed. Whitespace runs become one space; at most 1000
/// characters.
pub fn error_body(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Doc {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: Option<serde_json::Value>,
    }
    let text = if let Ok(doc) = serde_json::from_slice::<Doc>(bytes)
        && !doc.errors.is_empty()
    {
        doc.errors
            .iter()
            .map(|e| {
                let mut s = match (e.code.is_empty(), e.message.is_empty()) {
                    (false, false) => format!("{}: {}", e.code, e.message),
                    (true, _) => e.message.clone(),
                    (false, true) => e.code.clone(),
                };
                match &e.detail {
                    Some(serde_json::Value::String(d)) if !d.is_empty() => {
                        s.push_str(&format!(" ({})", shorten(d, 300)))
                    }
                    Some(v @ serde_json::Value::Object(_)) | Some(v @ serde_json::Value::Array(_)) => {
                        let d = v.to_string();
                        if d.len() < 300 {
                            s.push_str(&format!(" ({d})"));
                        }
                    }
                    _ => {}
                }
                s
            })
            .collect::<Vec<_>>()
            .join("; ")
    } else if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(m) = ["error_description", "error", "message", "details", "detail"]
            .iter()
            .find_map(|k| o.get(*k).and_then(|v| v.as_str()).filter(|v| !v.trim().is_empty()))
    {
        m.to_owned()
    } else {
        let text = String::from_utf8_lossy(bytes);
        let lower = text.to_ascii_lowercase();
        match (lower.find("<title>"), lower.find("</title>")) {
            (Some(a), Some(b)) if a + 7 <= b && lower.trim_start().starts_with('<') => text[a + 7..b].to_owned(),
            _ => text.into_owned(),
        }
    };
    shorten(&text.split_whitespace().collect::<Vec<_>>().join(" "), 1000)
}

/// At most `max` characters, `…` marking a cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_registry_error_bodies() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"app","Action":"push"}]}]}"#;
        assert_eq!(
            error_body(body),
            r#"UNAUTHORIZED: authentication required ([{"Action":"push","Name":"app","Type":"repository"}])"#
        );
        assert_eq!(error_body(b"  oops\n"), "oops");
        assert_eq!(error_body(&[b'x'; 2000]).chars().count(), 1001);
        // Several errors, multi-line messages: one line.
        let body = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown\nto registry","detail":"sha256:ab"},{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
        assert_eq!(
            error_body(body),
            "MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:ab); DENIED: requested access to the resource is denied"
        );
        // Other JSON shapes (token servers, Harbor, proxies), HTML error pages, plain text.
        assert_eq!(error_body(br#"{"details":"wrong credentials"}"#), "wrong credentials");
        assert_eq!(error_body(br#"{"error":"invalid_grant","error_description":"bad token"}"#), "bad token");
        assert_eq!(
            error_body(b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\n<center>nginx</center></body></html>"),
            "502 Bad Gateway"
        );
        assert_eq!(error_body(b"line one\r\n  line two\n"), "line one line two");
        assert_eq!(error_body(br#"{"errors":[]}"#), r#"{"errors":[]}"#);
    }

    #[test]
    fn transient_errors() {
        let s = |status| RegistryError::Status { host: "h".into(), what: "w".into(), status, body: String::new() };
        assert!(s(500).is_transient() && s(503).is_transient() && s(429).is_transient());
        assert!(!s(404).is_transient() && !s(400).is_transient());
        assert_eq!(s(503).to_string(), "w: h answered 503", "no empty body suffix");
    }
}
