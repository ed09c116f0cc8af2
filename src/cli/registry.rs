//! Registry options shared by `build` and `copy` (skopeo's spelling).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::ArgAction;

use nixoci::transport::ImageRef;
use nixoci::transport::registry::{Credentials, RegistryOptions, RetryPolicy, Secret};

const HEADING: &str = "Registry options (docker://)";

#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// USER:PASSWORD, instead of the credentials in an auth file.
    #[arg(long, help_heading = HEADING, value_name = "USER:PASS", value_parser = secret)]
    pub creds: Option<Secret<String>>,
    /// Read credentials from this file only [default: $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json,
    /// ~/.docker/config.json, with their credential helpers].
    #[arg(long, help_heading = HEADING, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// CA certificates (*.crt) and client certificate (*.cert + *.key) for TLS
    /// [default: /etc/containers/certs.d/HOST, /etc/docker/certs.d/HOST].
    #[arg(long, help_heading = HEADING, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Verify certificates and require HTTPS (loopback registries may use plain HTTP anyway).
    /// --tls-verify=false accepts any certificate and plain HTTP.
    #[arg(long, help_heading = HEADING, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: bool,
    /// Before uploading a blob the registry lacks, try to mount it from this repository of the
    /// same registry (e.g. the previous release's).
    #[arg(long, help_heading = HEADING, value_name = "REPO")]
    pub mount_from: Option<String>,
    /// Retries of a failed request (connection error, HTTP 5xx, 429), with backoff; at most 5
    /// minutes per request.
    #[arg(long, help_heading = HEADING, value_name = "N", default_value_t = 5)]
    pub retry_times: u32,
}

/// Kept secret from the start: clap echoes a value its parser refuses, so `--creds` is parsed
/// later, by [`RegistryArgs::options`], with an error that does not repeat it.
pub(super) fn secret(s: &str) -> Result<Secret<String>, String> {
    Ok(Secret::new(s.to_owned()))
}

impl RegistryArgs {
    pub fn options(&self) -> Result<Arc<RegistryOptions>> {
        let creds = match &self.creds {
            Some(s) => Some(
                s.expose().parse::<Credentials>().map_err(|_| anyhow::anyhow!("--creds: expected USER:PASSWORD"))?,
            ),
            None => None,
        };
        Ok(Arc::new(RegistryOptions {
            creds,
            authfile: self.authfile.clone(),
            cert_dir: self.cert_dir.clone(),
            insecure: !self.tls_verify,
            mount_from: self.mount_from.clone(),
            retry: RetryPolicy { retries: self.retry_times, ..RetryPolicy::default() },
        }))
    }

    /// The options for reading the `--from` base: `--from-creds` instead of `--creds` (whose
    /// credentials are the destination's, and must not be sent to another registry), no mount;
    /// auth files, certificates and TLS settings as for the destinations.
    pub fn base_options(&self, from_creds: Option<&Secret<String>>) -> Result<Arc<RegistryOptions>> {
        let creds = match from_creds {
            Some(s) => Some(
                s.expose()
                    .parse::<Credentials>()
                    .map_err(|_| anyhow::anyhow!("--from-creds: expected USER:PASSWORD"))?,
            ),
            None => None,
        };
        Ok(Arc::new(RegistryOptions { creds, mount_from: None, ..(*self.options()?).clone() }))
    }

    /// `refs` with these options where they are registry references.
    pub fn apply(&self, refs: Vec<ImageRef>) -> Result<Vec<ImageRef>> {
        let options = self.options()?;
        Ok(refs.into_iter().map(|r| r.with_registry_options(&options)).collect())
    }
}
