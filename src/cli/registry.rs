//! Registry options shared by `build` and `copy` (skopeo's spelling).

use std::path::PathBuf;
use std::sync::Arc;

use clap::ArgAction;

use nixoci::transport::ImageRef;
use nixoci::transport::registry::{Credentials, RegistryOptions, RetryPolicy};

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Registry options (docker://)")]
pub struct RegistryArgs {
    /// USER:PASSWORD, instead of the credentials in an auth file.
    #[arg(long, value_name = "USER:PASS", value_parser = parse_creds)]
    pub creds: Option<Credentials>,
    /// Read credentials from this file only [default: $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json,
    /// ~/.docker/config.json, with their credential helpers].
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// CA certificates (*.crt) and client certificate (*.cert + *.key) for TLS
    /// [default: /etc/containers/certs.d/HOST, /etc/docker/certs.d/HOST].
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Verify certificates and require HTTPS (loopback registries may use plain HTTP anyway).
    /// --tls-verify=false accepts any certificate and plain HTTP.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: bool,
    /// Before uploading a blob the registry lacks, try to mount it from this repository of the
    /// same registry (e.g. the previous release's).
    #[arg(long, value_name = "REPO")]
    pub mount_from: Option<String>,
    /// Retries of a failed request (connection error, HTTP 5xx, 429), with backoff; at most 5
    /// minutes per request.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retry_times: u32,
}

fn parse_creds(s: &str) -> Result<Credentials, String> {
    // The message must not echo the value: it may hold a password.
    s.parse().map_err(|_| "expected USER:PASSWORD".to_owned())
}

impl RegistryArgs {
    pub fn options(&self) -> Arc<RegistryOptions> {
        Arc::new(RegistryOptions {
            creds: self.creds.clone(),
            authfile: self.authfile.clone(),
            cert_dir: self.cert_dir.clone(),
            insecure: !self.tls_verify,
            mount_from: self.mount_from.clone(),
            retry: RetryPolicy {
                retries: self.retry_times,
                ..RetryPolicy::default()
            },
        })
    }

    /// `r` with these options if it is a registry reference.
    pub fn apply(&self, r: ImageRef) -> ImageRef {
        r.with_registry_options(&self.options())
    }
}
