//! TLS for registries: rustls with the system's roots plus the certificates the user trusts for
//! the registry (`--cert-dir`, else `/etc/containers/certs.d/HOST` or `/etc/docker/certs.d/HOST`),
//! and the one exception the Go clients (skopeo, podman, docker) make.
//!
//! **Self-signed server certificates.** Docker's documented recipe (`openssl req -newkey rsa:4096
//! -nodes -sha256 -keyout domain.key -x509 -days 365 -out domain.crt -addext "subjectAltName =
//! IP:…"`) makes a certificate that is its own CA (`CA:TRUE`). webpki refuses a CA certificate as
//! a server's (`CaUsedAsEndEntity`), even when it is a trusted root. So [`Verifier`] first runs the
//! normal verification and, only when it fails for want of an issuer (`CaUsedAsEndEntity`,
//! `UnknownIssuer`), accepts the presented certificate if it is byte for byte one that the user put
//! in the trust directory *of this registry*; its host name is then checked as usual, and its
//! dates were already checked: webpki checks validity before basic constraints and before looking
//! for an issuer (`check_issuer_independent_properties`; `tests/registry.rs` holds an expired
//! certificate to this). System roots and other hosts are unaffected: each registry gets its own
//! client and trust directory.
//!
//! **Errors.** Every refusal becomes a [`Refusal`] that says which problem it is (untrusted
//! issuer, self-signed and not trusted, another host name, expired, not yet valid) and what to do
//! (`--cert-dir DIR` holding the `.crt`, or `--tls-verify=false`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use super::reference::RegistryOptions;

/// The trust directories for `host`: `--cert-dir`, else those of containers and docker that exist.
pub fn trust_dirs(host: &str, opts: &RegistryOptions) -> Result<Vec<PathBuf>> {
    match &opts.cert_dir {
        Some(d) => {
            if !d.is_dir() {
                bail!("--cert-dir {}: not a directory", d.display());
            }
            Ok(vec![d.clone()])
        }
        None => Ok(default_dirs(host).into_iter().filter(|d| d.is_dir()).collect()),
    }
}

fn default_dirs(host: &str) -> Vec<PathBuf> {
    ["/etc/containers/certs.d", "/etc/docker/certs.d"].iter().map(|d| Path::new(d).join(host)).collect()
}

/// The rustls configuration for one registry.
pub fn client_config(host: &str, opts: &RegistryOptions) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let dirs = trust_dirs(host, opts)?;
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("system certificates: {e}");
    }
    roots.add_parsable_certificates(native.certs);
    let mut trusted: Vec<CertificateDer<'static>> = Vec::new();
    let mut client_auth = None;
    for dir in &dirs {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading certificate directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for p in &names {
            match p.extension().and_then(|e| e.to_str()) {
                Some("crt") => {
                    let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    let certs = CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| format!("{}: not a PEM certificate", p.display()))?;
                    if certs.is_empty() {
                        bail!("{}: holds no PEM certificate", p.display());
                    }
                    for c in certs {
                        roots.add(c.clone()).with_context(|| format!("{}: not a usable certificate", p.display()))?;
                        trusted.push(c);
                    }
                }
                Some("cert") => {
                    let key = p.with_extension("key");
                    let pem = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    let chain = CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| format!("{}: not a PEM certificate", p.display()))?;
                    let key_pem = std::fs::read(&key)
                        .with_context(|| format!("client certificate {} has no key {}", p.display(), key.display()))?;
                    let key = PrivateKeyDer::from_pem_slice(&key_pem)
                        .with_context(|| format!("{}: not a PEM private key", key.display()))?;
                    client_auth = Some((chain, key));
                }
                _ => {}
            }
        }
    }
    let inner = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("setting up certificate verification")?,
        )
    };
    let verifier = Verifier {
        inner,
        trusted,
        host: host.to_owned(),
        trust: describe_trust(host, opts.cert_dir.as_deref()),
        insecure: opts.insecure,
        provider: provider.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).context("using the client certificate"),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `--cert-dir DIR`, or the default directories, for messages.
fn describe_trust(host: &str, cert_dir: Option<&Path>) -> String {
    match cert_dir {
        Some(d) => format!("--cert-dir {}", d.display()),
        None => {
            let d = default_dirs(host);
            format!("{} or {}", d[0].display(), d[1].display())
        }
    }
}

/// The verifier: webpki, plus the certificates trusted for this registry accepted as they are.
#[derive(Debug)]
struct Verifier {
    /// `None` when there is no root at all (no system roots, no trust directory).
    inner: Option<Arc<WebPkiServerVerifier>>,
    /// Every certificate of the trust directories.
    trusted: Vec<CertificateDer<'static>>,
    host: String,
    trust: String,
    /// `--tls-verify=false`: accept anything.
    insecure: bool,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    fn refuse(&self, problem: Problem) -> rustls::Error {
        let r = Refusal { host: self.host.clone(), trust: self.trust.clone(), problem };
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
    }

    /// The user's own certificate for this registry: accepted if it names the host.
    fn accept_trusted(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_name(&parsed, server_name).map_err(|e| self.translate(e, end_entity))?;
        tracing::debug!("{}: the server's certificate is one trusted in {}", self.host, self.trust);
        Ok(ServerCertVerified::assertion())
    }

    fn translate(&self, e: rustls::Error, end_entity: &CertificateDer<'_>) -> rustls::Error {
        let rustls::Error::InvalidCertificate(ce) = &e else {
            return e;
        };
        let problem = match ce {
            CertificateError::UnknownIssuer if self_signed(end_entity) => Problem::SelfSigned,
            CertificateError::UnknownIssuer => Problem::UntrustedIssuer,
            CertificateError::Other(o) if ca_used_as_end_entity(o) => Problem::SelfSigned,
            CertificateError::NotValidForName => Problem::WrongName { presented: Vec::new() },
            CertificateError::NotValidForNameContext { presented, .. } => {
                Problem::WrongName { presented: presented.iter().map(|p| plain_name(p)).collect() }
            }
            CertificateError::Expired => Problem::Expired { not_after: None },
            CertificateError::ExpiredContext { not_after, .. } => Problem::Expired { not_after: Some(*not_after) },
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => Problem::NotYetValid,
            other => Problem::Other(format!("{other:?}")),
        };
        self.refuse(problem)
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(inner) = &self.inner else {
            if self.trusted.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
                return self.accept_trusted(end_entity, server_name);
            }
            return Err(self.translate(CertificateError::UnknownIssuer.into(), end_entity));
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(ce))
                if issuer_problem(&ce) && self.trusted.iter().any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                self.accept_trusted(end_entity, server_name)
            }
            Err(e) => Err(self.translate(e, end_entity)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.insecure {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.insecure {
            return Ok(HandshakeSignatureValid::assertion());
        }
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `other.example` from webpki's `DnsName("other.example")`, `10.0.0.1` from `IpAddress(10.0.0.1)`.
fn plain_name(presented: &str) -> String {
    if let (Some(a), Some(b)) = (presented.find('"'), presented.rfind('"'))
        && a < b
    {
        return presented[a + 1..b].to_owned();
    }
    match presented.split_once('(') {
        Some((kind, rest)) if kind.bytes().all(|b| b.is_ascii_alphabetic()) => {
            rest.strip_suffix(')').unwrap_or(rest).to_owned()
        }
        _ => presented.to_owned(),
    }
}

/// The failures for want of an issuer, after which a trusted certificate is accepted as it is.
fn issuer_problem(e: &CertificateError) -> bool {
    match e {
        CertificateError::UnknownIssuer => true,
        CertificateError::Other(o) => ca_used_as_end_entity(o),
        _ => false,
    }
}

fn ca_used_as_end_entity(o: &OtherError) -> bool {
    matches!(o.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity))
}

fn self_signed(cert: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.issuer() == c.subject())
}

/// A refused server certificate: what is wrong with it, and what to do.
#[derive(Debug)]
pub struct Refusal {
    pub host: String,
    /// Where trusted certificates are looked for (for the message).
    pub trust: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Self-signed, and not in the trust directory.
    SelfSigned,
    /// Signed by an authority that is neither a system root nor in the trust directory.
    UntrustedIssuer,
    /// Issued for other names.
    WrongName {
        presented: Vec<String>,
    },
    Expired {
        not_after: Option<UnixTime>,
    },
    NotYetValid,
    Other(String),
}

const ESCAPE: &str = "or, for a registry you trust on a network you trust, --tls-verify=false";

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (host, trust) = (&self.host, &self.trust);
        match &self.problem {
            Problem::SelfSigned => write!(
                f,
                "the certificate of {host} is self-signed and not trusted: it is not in {trust}; \
                 put that certificate (a .crt file) in a directory and pass --cert-dir DIR, {ESCAPE}"
            ),
            Problem::UntrustedIssuer => write!(
                f,
                "the certificate of {host} is signed by an untrusted issuer (neither a system root nor in \
                 {trust}); put the issuer's CA certificate (a .crt file) in a directory and pass --cert-dir DIR, \
                 {ESCAPE}"
            ),
            Problem::WrongName { presented } => {
                let names = if presented.is_empty() { "no usable names".to_owned() } else { presented.join(", ") };
                write!(
                    f,
                    "the certificate of {host} is for another host name ({names}); address the registry by a \
                     name the certificate holds, or give it a certificate for {host} (its subjectAltName), {ESCAPE}"
                )
            }
            Problem::Expired { not_after } => {
                let when = not_after
                    .map(|t| format!(" on {}", httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t.as_secs()))))
                    .unwrap_or_default();
                write!(
                    f,
                    "the certificate of {host} expired{when}; renew it (and the copy in --cert-dir DIR), {ESCAPE}"
                )
            }
            Problem::NotYetValid => {
                write!(f, "the certificate of {host} is not valid yet (check this machine's clock), {ESCAPE}")
            }
            Problem::Other(e) => write!(
                f,
                "the certificate of {host} was refused ({e}); check it, and that its CA certificate (a .crt \
                 file) is in --cert-dir DIR, {ESCAPE}"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The [`Refusal`] somewhere in an error chain (reqwest → hyper → io::Error → io::Error →
/// rustls::Error).
pub fn find_refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // io::Error's source() skips the error it wraps: look inside, through nested io::Errors.
        let mut inner: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(candidate) = inner {
            if let Some(r) = candidate.downcast_ref::<Refusal>() {
                return Some(r);
            }
            if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) =
                candidate.downcast_ref::<rustls::Error>()
                && let Some(r) = o.0.downcast_ref::<Refusal>()
            {
                return Some(r);
            }
            inner = candidate
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as &(dyn std::error::Error + 'static));
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_in_plain_words() {
        assert_eq!(plain_name(r#"DnsName("other.example")"#), "other.example");
        assert_eq!(plain_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(plain_name("odd"), "odd");
    }

    #[test]
    fn refusals_say_which_problem_and_what_to_do() {
        let r = |problem| Refusal { host: "reg:5000".into(), trust: "--cert-dir /c".into(), problem }.to_string();
        let s = r(Problem::SelfSigned);
        assert!(s.contains("self-signed and not trusted") && s.contains("--cert-dir /c"), "{s}");
        assert!(r(Problem::UntrustedIssuer).contains("untrusted issuer"));
        assert!(
            r(Problem::WrongName { presented: vec!["a.example".into()] }).contains("another host name (a.example)")
        );
        let s = r(Problem::Expired { not_after: Some(UnixTime::since_unix_epoch(Duration::from_secs(1_577_923_200))) });
        assert!(s.contains("expired on Thu, 02 Jan 2020 00:00:00 GMT"), "{s}");
        for p in [Problem::SelfSigned, Problem::UntrustedIssuer, Problem::NotYetValid, Problem::Other("x".into())] {
            let s = r(p);
            assert!(s.contains("--tls-verify=false") && s.starts_with("the certificate of reg:5000"), "{s}");
        }
    }
}
