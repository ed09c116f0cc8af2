//! One registry, one client: TLS, scheme detection, authentication. Every request goes through
//! the one retry loop, [`with_retry`].
//!
//! Blocking `reqwest` on the build's threads: each push worker sends one request at a time, and
//! reqwest runs its own small runtime thread. No async code leaks out of this module.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::Url;
use reqwest::blocking::Response;
use reqwest::header::{AUTHORIZATION, HeaderValue, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};

use super::auth::{self, Challenge, Credentials, TokenReply};
use super::error::{RegistryError, error_body};
use super::proxy::{self, ProxyEnv};
use super::reference::{RegistryOptions, RegistryRef, RetryPolicy, api_host, is_loopback};
use super::request::{self, Body, Progress, Req};
use super::retry::{Failure, parse_retry_after, with_retry};
use super::secret::Secret;
use super::tls;

/// A connected registry: its scheme is known and its auth challenge recorded.
pub struct Client {
    http: reqwest::blocking::Client,
    /// As the user wrote it (with port): for messages.
    pub host: String,
    /// `https://HOST/` or, for loopback or `--tls-verify=false`, possibly `http://HOST/`.
    pub base: Url,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    pub retry: RetryPolicy,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope set, with their expiry.
    tokens: HashMap<String, (Secret<String>, Instant)>,
}

impl Client {
    /// Finds credentials, builds the TLS configuration and pings `/v2/`.
    pub fn connect(r: &RegistryRef) -> Result<Self> {
        let opts = &r.options;
        let http = http_client(&r.host, opts)?;
        let found = auth::find(&r.host, &r.repo, opts.creds.as_ref(), opts.authfile.as_deref())?;
        match &found {
            Some(f) => tracing::info!("credentials for {} from {}", r.host, f.source),
            None => tracing::info!("no credentials for {}: anonymous", r.host),
        }
        let api = api_host(&r.host);
        let base =
            Url::parse(&format!("https://{api}/")).with_context(|| format!("{r}: {:?} is not a valid host", r.host))?;
        let mut client = Client {
            http,
            host: r.host.clone(),
            base,
            creds: found.map(|f| f.credentials),
            auth: Mutex::default(),
            retry: opts.retry,
        };
        client.ping(opts.insecure || is_loopback(&r.host))?;
        Ok(client)
    }

    /// Whether credentials were found.
    pub fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    /// `GET /v2/` over HTTPS, then (when allowed) plain HTTP; records the auth challenge.
    fn ping(&mut self, allow_http: bool) -> Result<(), RegistryError> {
        let https = self.base.clone();
        let mut http = https.clone();
        let _ = http.set_scheme("http");
        let (base, resp) = with_retry(self.retry, |_| {
            let err = match self.execute(&request::ping(&https, &self.host), None) {
                Ok(resp) => return Ok((https.clone(), resp)),
                Err(e) => e,
            };
            if allow_http
                && let Ok(resp) = self.execute(&request::ping(&http, &self.host), None)
                && looks_like_registry(&resp)
            {
                tracing::info!("{}: no TLS ({err}); using plain HTTP", self.host);
                return Ok((http.clone(), resp));
            }
            Err(err.into())
        })?;
        self.adopt_ping(base, resp);
        Ok(())
    }

    fn adopt_ping(&mut self, base: Url, resp: Response) {
        self.base = base;
        if resp.status().as_u16() == 401 {
            let challenge = pick_challenge(&resp);
            tracing::debug!("{} asks for {:?} auth", self.host, challenge.as_ref().map(|c| &c.scheme));
            self.lock_auth().challenge = challenge;
        }
    }

    fn lock_auth(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks that the credentials open `scopes` (a wrong password fails here, before any work).
    pub fn check_access(&self, scopes: &[String], probe: &Req) -> Result<(), RegistryError> {
        let challenge = self.lock_auth().challenge.clone();
        match challenge.as_ref().map(|c| c.scheme.as_str()) {
            Some("bearer") => self.authorization(scopes, false).map(|_| ()),
            Some(_) => self.send(probe).and_then(|resp| match resp.status().as_u16() {
                401 | 403 => Err(self.error_from(probe, resp)),
                _ => Ok(()),
            }),
            None => Ok(()),
        }
    }

    /// Sends `req`, retrying connection errors, 5xx and 429 with backoff. Other statuses are
    /// returned for the caller to judge (a HEAD's 404 is an answer, not an error).
    pub fn send(&self, req: &Req) -> Result<Response, RegistryError> {
        with_retry(self.retry, |_| self.transient_status(req, self.send_once(req)?))
    }

    /// `resp`, or a failure worth retrying when its status is 5xx, 408 or 429.
    pub fn transient_status(&self, req: &Req, resp: Response) -> Result<Response, Failure> {
        if is_retryable(resp.status().as_u16()) {
            let retry_after = retry_after(&resp);
            Err(Failure { error: self.error_from(req, resp), retry_after })
        } else {
            Ok(resp)
        }
    }

    /// One attempt, authenticated. A 401 adopts the server's challenge or refreshes the token
    /// and tries once more; a second 401 is an [`RegistryError::Auth`].
    pub fn send_once(&self, req: &Req) -> Result<Response, RegistryError> {
        let auth = self.authorization(&req.scopes, false)?;
        let resp = self.execute(req, auth.as_ref())?;
        if resp.status().as_u16() != 401 {
            return Ok(resp);
        }
        let offered = pick_challenge(&resp);
        let again = {
            let mut st = self.lock_auth();
            match (&st.challenge, offered) {
                (_, Some(ch)) if ch.scheme == "bearer" => {
                    st.tokens.remove(&scope_key(&req.scopes));
                    st.challenge = Some(ch);
                    true
                }
                (old, Some(ch)) if old.as_ref().map(|o| &o.scheme) != Some(&ch.scheme) => {
                    st.challenge = Some(ch);
                    self.creds.is_some()
                }
                _ => false,
            }
        };
        if !again {
            return Err(self.error_from(req, resp));
        }
        let auth = self.authorization(&req.scopes, true)?;
        let resp = self.execute(req, auth.as_ref())?;
        if resp.status().as_u16() == 401 {
            return Err(self.error_from(req, resp));
        }
        Ok(resp)
    }

    /// The `Authorization` value for `scopes`, fetching a bearer token when needed.
    fn authorization(&self, scopes: &[String], refresh: bool) -> Result<Option<Secret<String>>, RegistryError> {
        let challenge = self.lock_auth().challenge.clone();
        let Some(ch) = challenge else {
            return Ok(None);
        };
        match ch.scheme.as_str() {
            "basic" => Ok(match &self.creds {
                Some(Credentials::Basic { username, password }) => Some(auth::basic_header(username, password)),
                _ => None,
            }),
            "bearer" => {
                let key = scope_key(scopes);
                if !refresh
                    && let Some((t, until)) = self.lock_auth().tokens.get(&key)
                    && Instant::now() + Duration::from_secs(15) < *until
                {
                    return Ok(Some(bearer(t)));
                }
                let (token, ttl) = self.fetch_token(&ch, scopes)?;
                let value = bearer(&token);
                self.lock_auth().tokens.insert(key, (token, Instant::now() + ttl));
                Ok(Some(value))
            }
            _ => Ok(None),
        }
    }

    /// Asks the challenge's realm for a token covering `scopes`.
    fn fetch_token(&self, ch: &Challenge, scopes: &[String]) -> Result<(Secret<String>, Duration), RegistryError> {
        let realm = ch.param("realm").and_then(|r| Url::parse(r).ok()).ok_or_else(|| RegistryError::Status {
            host: self.host.clone(),
            what: "authenticating".into(),
            status: 401,
            body: format!("unusable bearer challenge (realm {:?})", ch.param("realm")),
        })?;
        let service = ch.param("service");
        let (req, auth) = match &self.creds {
            Some(Credentials::IdentityToken(t)) => {
                (request::oauth_token(&realm, service, scopes, &self.host, t.expose()), None)
            }
            Some(Credentials::Basic { username, password }) => {
                (request::token(&realm, service, scopes, &self.host), Some(auth::basic_header(username, password)))
            }
            None => (request::token(&realm, service, scopes, &self.host), None),
        };
        let resp = with_retry(self.retry, |_| self.transient_status(&req, self.execute(&req, auth.as_ref())?))?;
        if !resp.status().is_success() {
            return Err(self.error_from(&req, resp));
        }
        let bytes = read_limited(resp, 1 << 20).map_err(|e| self.io_error(&req, e))?;
        serde_json::from_slice::<TokenReply>(&bytes).ok().and_then(TokenReply::into_token).ok_or_else(|| {
            RegistryError::Status {
                host: self.host.clone(),
                what: req.what.clone(),
                status: 200,
                body: "the token endpoint answered without a token".into(),
            }
        })
    }

    /// Sends once, unauthenticated or with `auth`; maps transport failures.
    fn execute(&self, req: &Req, auth: Option<&Secret<String>>) -> Result<Response, RegistryError> {
        let mut b = self.http.request(req.method.clone(), req.url.clone());
        for (k, v) in &req.headers {
            b = b.header(k, v);
        }
        if let Some(a) = auth {
            let mut value = HeaderValue::from_str(a.expose()).map_err(|_| RegistryError::Status {
                host: self.host.clone(),
                what: req.what.clone(),
                status: 0,
                body: "credentials hold characters that cannot go in a header".into(),
            })?;
            value.set_sensitive(true);
            b = b.header(AUTHORIZATION, value);
        }
        if let Some(t) = req.timeout {
            b = b.timeout(t);
        }
        b = match &req.body {
            Body::Empty => b,
            Body::Bytes(bytes) => b.body(bytes.to_vec()),
            Body::File { path, offset, len, progress } => {
                let open = || -> std::io::Result<_> {
                    let mut f = File::open(path)?;
                    f.seek(SeekFrom::Start(*offset))?;
                    Ok(f)
                };
                let f = open().map_err(|e| RegistryError::Io {
                    what: format!("{}: reading {}", req.what, path.display()),
                    source: e,
                })?;
                let reader = Counting {
                    inner: BufReader::with_capacity(256 * 1024, f).take(*len),
                    position: *offset,
                    progress: progress.clone(),
                };
                b.body(reqwest::blocking::Body::sized(reader, *len))
            }
        };
        tracing::debug!("{} {}", req.method, redact_query(&req.url));
        let resp = b.send().map_err(|e| self.connect_error(req, e))?;
        tracing::debug!("{} {} → {}", req.method, redact_query(&req.url), resp.status());
        Ok(resp)
    }

    fn connect_error(&self, req: &Req, e: reqwest::Error) -> RegistryError {
        let e = e.without_url();
        if let Some(refusal) = tls::find_refusal(&e) {
            return RegistryError::Connect {
                host: self.host.clone(),
                what: req.what.clone(),
                message: refusal.to_string(),
                permanent: true,
            };
        }
        let message = error_chain(&e);
        let lower = message.to_lowercase();
        let tls = lower.contains("certificate") || lower.contains("corrupt message") || lower.contains("handshake");
        let proxy_auth = lower.contains("proxy authorization required");
        // The server refused our side of the handshake: it wants a (other) client certificate.
        let client_cert = lower.contains("fatal alert")
            && ["badcertificate", "certificaterequired", "unknownca", "certificateunknown"]
                .iter()
                .any(|a| lower.contains(a));
        let message = if proxy_auth {
            format!(
                "{message}: the proxy refused the credentials in HTTPS_PROXY/HTTP_PROXY (http://USER:PASS@HOST:PORT)"
            )
        } else if client_cert {
            format!(
                "{message}: the registry wants a client certificate it trusts; put it and its key (NAME.cert and \
                 NAME.key) in --cert-dir DIR"
            )
        } else {
            message
        };
        RegistryError::Connect {
            host: self.host.clone(),
            what: req.what.clone(),
            message,
            permanent: tls || proxy_auth || client_cert,
        }
    }

    pub fn io_error(&self, req: &Req, e: std::io::Error) -> RegistryError {
        RegistryError::Io { what: format!("{} ({})", req.what, self.host), source: e }
    }

    /// The error for an unexpected answer, with the server's body.
    pub fn error_from(&self, req: &Req, resp: Response) -> RegistryError {
        let status = resp.status().as_u16();
        let body = read_limited(resp, 64 * 1024).map(|b| error_body(&b)).unwrap_or_default();
        if status == 401 || status == 403 {
            RegistryError::Auth {
                host: self.host.clone(),
                what: req.what.clone(),
                status,
                body,
                had_credentials: self.creds.is_some(),
            }
        } else {
            RegistryError::Status { host: self.host.clone(), what: req.what.clone(), status, body }
        }
    }

    /// `resp` if its status is one of `ok`, else the error.
    pub fn expect(&self, req: &Req, resp: Response, ok: &[u16]) -> Result<Response, RegistryError> {
        if ok.contains(&resp.status().as_u16()) { Ok(resp) } else { Err(self.error_from(req, resp)) }
    }

    /// The `Location` header, resolved against the request URL.
    pub fn location(&self, req: &Req, resp: &Response) -> Result<Url, RegistryError> {
        resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).and_then(|l| resp.url().join(l).ok()).ok_or_else(
            || RegistryError::Status {
                host: self.host.clone(),
                what: req.what.clone(),
                status: resp.status().as_u16(),
                body: "the answer has no usable Location header".into(),
            },
        )
    }
}

/// A reader that publishes how far it got.
struct Counting<R> {
    inner: R,
    position: u64,
    progress: Option<Progress>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position += n as u64;
        if let Some(p) = &self.progress {
            p.position.store(self.position, Ordering::Relaxed);
            p.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

fn bearer(token: &Secret<String>) -> Secret<String> {
    Secret::new(format!("Bearer {}", token.expose()))
}

fn scope_key(scopes: &[String]) -> String {
    scopes.join(" ")
}

fn is_retryable(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

pub fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers().get(RETRY_AFTER)?.to_str().ok().and_then(parse_retry_after)
}

/// A registry answers `/v2/` with 200 or 401, or at least names its API version.
fn looks_like_registry(resp: &Response) -> bool {
    matches!(resp.status().as_u16(), 200 | 401) || resp.headers().contains_key("docker-distribution-api-version")
}

/// The bearer challenge if offered, else basic.
fn pick_challenge(resp: &Response) -> Option<Challenge> {
    let all: Vec<Challenge> = resp
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(auth::parse_challenges)
        .collect();
    all.iter().find(|c| c.scheme == "bearer").or_else(|| all.iter().find(|c| c.scheme == "basic")).cloned()
}

/// Reads at most `limit` bytes of a response body.
pub fn read_limited(resp: Response, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    resp.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

/// `a: b: c` from an error and its sources, without repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    // A proxy URL in an error may hold its credentials.
    proxy::redact_userinfo(&parts.join(": "))
}

/// A URL without its query (upload URLs carry server state that is noise in logs).
fn redact_query(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.to_string()
}

/// The HTTP client: rustls configured by [`tls::client_config`] (system roots, the registry's
/// trust directory, a client certificate).
fn http_client(host: &str, opts: &RegistryOptions) -> Result<reqwest::blocking::Client> {
    let mut b = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls::client_config(host, opts)?)
        .user_agent(concat!("nixoci/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        // Bounds every wait for a response head and every body read; uploads set their own.
        .timeout(Duration::from_secs(120))
        .tcp_keepalive(Duration::from_secs(30))
        .pool_max_idle_per_host(32);
    // Our own reading of the proxy variables (reqwest's differs from Go's for loopback and ports).
    let proxies = ProxyEnv::from_env()?;
    if let Some(p) = Url::parse(&format!("https://{}/", api_host(host))).ok().and_then(|u| proxies.for_url(&u)) {
        tracing::info!("{host}: through the proxy {}", proxy::redacted(&p));
    }
    b = if proxies.is_set() { b.proxy(reqwest::Proxy::custom(move |url| proxies.for_url(url))) } else { b.no_proxy() };
    b.build().context("setting up the HTTP client")
}
