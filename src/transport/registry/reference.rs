//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`, and the registry options that travel with it.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};

use super::auth::Credentials;
use crate::blob::Digest;

/// An image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// As the user wrote it (`docker.io` for Docker Hub), with its port if any.
    pub host: String,
    /// `library/alpine`, `acme/comfyui`.
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
    /// How to reach the registry: credentials, TLS, retries.
    pub options: Arc<RegistryOptions>,
}

/// How to talk to registries; the CLI fills it from `--creds`, `--cert-dir`, … (skopeo's flags).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistryOptions {
    /// `--creds USER:PASS`: used instead of any auth file.
    pub creds: Option<Credentials>,
    /// `--authfile FILE`: the only auth file read (else `$REGISTRY_AUTH_FILE`, the containers
    /// and docker locations).
    pub authfile: Option<PathBuf>,
    /// `--cert-dir DIR`: `*.crt` CA certificates, `*.cert` + `*.key` client certificate.
    pub cert_dir: Option<PathBuf>,
    /// `--tls-verify=false`: accept any certificate, and fall back to plain HTTP.
    pub insecure: bool,
    /// `--mount-from REPO`: try a cross-repository mount from this repository (same registry)
    /// before uploading a blob.
    pub mount_from: Option<String>,
    /// Retries of a failed request (connection error, 5xx, 429).
    pub retry: RetryPolicy,
}

/// How often and how long a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// No new attempt starts after this long since the first.
    pub max_total: Duration,
    /// The first backoff; each next one doubles, up to `max_delay`, with jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 5,
            max_total: Duration::from_secs(300),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RegistryRef {
    /// Parses what follows `docker:`, i.e. `//HOST[:PORT]/REPO[:TAG|@DIGEST]`, normalised as docker
    /// does (`reference.ParseNormalizedNamed`): a first component that is not a host (no `.` or
    /// `:`, not `localhost`, no uppercase letter) means Docker Hub, `index.docker.io` is
    /// `docker.io`, and a Docker Hub name of one component is in `library/`. The API of Docker
    /// Hub is served from `registry-1.docker.io` ([`Self::api_host`]).
    pub fn parse(s: &str) -> Result<Self> {
        let whole = format!("docker:{s}");
        let Some(rest) = s.strip_prefix("//") else {
            bail!("{whole:?}: a registry reference is docker://HOST[:PORT]/REPO[:TAG|@DIGEST]");
        };
        let (name, digest) = match rest.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|e| anyhow::anyhow!("{whole:?}: {e}"))?)),
            None => (rest, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_owned())),
            _ => (name, None),
        };
        if let Some(t) = &tag {
            super::super::check_tag(&whole, t)?;
        }
        let (host, repo) = split_host(name);
        // Docker Hub as docker names it: `docker.io`, `library/` for official images.
        let host = if host.eq_ignore_ascii_case("index.docker.io") { "docker.io".to_owned() } else { host };
        let repo = if host == "docker.io" && !repo.contains('/') { format!("library/{repo}") } else { repo };
        if host.is_empty() || repo.is_empty() {
            bail!("{whole:?}: a registry reference is docker://HOST[:PORT]/REPO[:TAG|@DIGEST]");
        }
        check_repo(&whole, &repo)?;
        Ok(Self { host, repo, tag, digest, options: Arc::default() })
    }

    /// The host the API is served from (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        api_host(&self.host)
    }

    /// The tag or digest to PUT or GET the manifest at: the digest if given, else the tag.
    pub fn manifest_reference(&self) -> Option<String> {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Some(d.to_string()),
            (None, Some(t)) => Some(t.clone()),
            (None, None) => None,
        }
    }

    /// `host/repo`, for messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.host, self.repo)
    }

    pub fn with_options(mut self, options: Arc<RegistryOptions>) -> Self {
        self.options = options;
        self
    }
}

/// docker's `splitDockerDomain`: `(host, rest)`, `docker.io` when the first component is no host.
fn split_host(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((h, r))
            if h.contains('.') || h.contains(':') || h == "localhost" || h.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (h.to_owned(), r.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    }
}

pub(crate) fn api_host(host: &str) -> &str {
    if host == "docker.io" || host == "index.docker.io" { "registry-1.docker.io" } else { host }
}

/// Repository names: lowercase components `[a-z0-9]+([._-][a-z0-9]+)*` joined by `/`.
fn check_repo(whole: &str, repo: &str) -> Result<()> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if repo.len() > 255 || !repo.split('/').all(component_ok) {
        bail!(
            "{whole:?}: {repo:?} is not a valid repository name (lowercase letters, digits and ._- separators, components joined by /)"
        );
    }
    Ok(())
}

/// Whether `host` (with or without a port) is a loopback address: `localhost`, 127.0.0.0/8,
/// `::1`. Like docker, such registries may be spoken to over plain HTTP.
pub fn is_loopback(host: &str) -> bool {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
            _ => host,
        }
    };
    bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_references() {
        let r = RegistryRef::parse("//127.0.0.1:5000/acme/comfyui:1.4").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "acme/comfyui", Some("1.4"))
        );
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/acme/comfyui:1.4");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = RegistryRef::parse(&format!("//ghcr.io/acme/x@{d}")).unwrap();
        assert_eq!(r.digest.as_ref().map(|d| d.to_string()), Some(d.clone()));
        assert_eq!(r.manifest_reference(), Some(d));
        assert_eq!(r.tag, None);
        let r = RegistryRef::parse("//alpine").unwrap();
        assert_eq!((r.host.as_str(), r.repo.as_str()), ("docker.io", "library/alpine"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = RegistryRef::parse("//localhost/app").unwrap();
        assert_eq!((r.host.as_str(), r.repo.as_str()), ("localhost", "app"));
        let r = RegistryRef::parse("//[::1]:5000/app:v1").unwrap();
        assert_eq!(r.host, "[::1]:5000");
        for bad in [
            "127.0.0.1:5000/x",
            "//127.0.0.1:5000/",
            "//h.io/Upper",
            "//h.io/x:bad tag",
            "//h.io/x@sha256:12",
            "//h.io/a//b",
        ] {
            assert!(RegistryRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_hub_normalisation_table() {
        // (reference, host, repository, API host, tag)
        let table: &[(&str, &str, &str, &str, Option<&str>)] = &[
            ("//alpine", "docker.io", "library/alpine", "registry-1.docker.io", None),
            ("//alpine:3.20", "docker.io", "library/alpine", "registry-1.docker.io", Some("3.20")),
            ("//acme/x", "docker.io", "acme/x", "registry-1.docker.io", None),
            ("//acme/x:1", "docker.io", "acme/x", "registry-1.docker.io", Some("1")),
            ("//acme/team/x", "docker.io", "acme/team/x", "registry-1.docker.io", None),
            ("//docker.io/acme/x", "docker.io", "acme/x", "registry-1.docker.io", None),
            ("//docker.io/alpine", "docker.io", "library/alpine", "registry-1.docker.io", None),
            ("//docker.io/library/alpine:edge", "docker.io", "library/alpine", "registry-1.docker.io", Some("edge")),
            ("//index.docker.io/alpine", "docker.io", "library/alpine", "registry-1.docker.io", None),
            ("//index.docker.io/acme/x", "docker.io", "acme/x", "registry-1.docker.io", None),
            // Not Docker Hub: hosts by a dot, a port, `localhost`, or an uppercase letter.
            (
                "//registry-1.docker.io/library/alpine",
                "registry-1.docker.io",
                "library/alpine",
                "registry-1.docker.io",
                None,
            ),
            ("//ghcr.io/acme/x:1", "ghcr.io", "acme/x", "ghcr.io", Some("1")),
            ("//ghcr.io/x", "ghcr.io", "x", "ghcr.io", None),
            ("//localhost/x", "localhost", "x", "localhost", None),
            ("//localhost:5000/x", "localhost:5000", "x", "localhost:5000", None),
            ("//reg:5000/x", "reg:5000", "x", "reg:5000", None),
            ("//Reg/x", "Reg", "x", "Reg", None),
        ];
        for (input, host, repo, api, tag) in table {
            let r = RegistryRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e:#}"));
            assert_eq!(
                (r.host.as_str(), r.repo.as_str(), r.api_host(), r.tag.as_deref()),
                (*host, *repo, *api, *tag),
                "{input}"
            );
        }
        for bad in ["//Acme", "//docker.io/Acme/x", "//acme/X"] {
            assert!(RegistryRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "localhost:5000", "127.0.0.1", "127.1.2.3:80", "[::1]:5000", "::1"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1:5000", "ghcr.io", "localhost.evil.com", "[::2]:5000"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
