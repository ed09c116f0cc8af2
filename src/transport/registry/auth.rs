//! Credentials (flags, auth files, credential helpers), `WWW-Authenticate` challenges, tokens.
//!
//! Credentials are looked up like podman and skopeo do: `--creds USER:PASS`; else `--authfile
//! FILE` alone; else the first of `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`
//! that knows the registry. In a file, `credHelpers[host]` wins, then an `auths` entry (the
//! longest match of `host` or `host/namespace…`), then `credsStore`. A helper is run as
//! `docker-credential-NAME get` with the server on stdin.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;

use super::secret::Secret;

/// What we authenticate with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: Secret<String>,
    },
    /// docker's `identitytoken`: an OAuth2 refresh token for the token endpoint.
    IdentityToken(Secret<String>),
}

impl FromStr for Credentials {
    type Err = anyhow::Error;
    /// `USER:PASS` (the password may contain colons).
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => {
                Ok(Credentials::Basic { username: u.to_owned(), password: Secret::new(p.to_owned()) })
            }
            _ => bail!("credentials must be USER:PASSWORD"),
        }
    }
}

/// Where credentials were found, for `-v` diagnostics (never the secret itself).
#[derive(Debug, Clone)]
pub struct Found {
    pub credentials: Credentials,
    pub source: String,
}

/// Finds credentials for `host` (as the user wrote it) and `repo`.
pub fn find(host: &str, repo: &str, explicit: Option<&Credentials>, authfile: Option<&Path>) -> Result<Option<Found>> {
    if let Some(c) = explicit {
        return Ok(Some(Found { credentials: c.clone(), source: "--creds".into() }));
    }
    let files = match authfile {
        Some(f) => {
            if !f.is_file() {
                bail!("auth file {} does not exist", f.display());
            }
            vec![f.to_owned()]
        }
        None => default_auth_files(),
    };
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let parsed: AuthFile =
            serde_json::from_str(&text).with_context(|| format!("parsing auth file {}", file.display()))?;
        if let Some(c) =
            parsed.lookup(host, repo).with_context(|| format!("credentials for {host} from {}", file.display()))?
        {
            return Ok(Some(Found { credentials: c.0, source: format!("{} ({})", file.display(), c.1) }));
        }
    }
    Ok(None)
}

fn default_auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut files = Vec::new();
    files.extend(env("REGISTRY_AUTH_FILE"));
    if let Some(run) = env("XDG_RUNTIME_DIR") {
        files.push(run.join("containers/auth.json"));
    }
    let config = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")));
    if let Some(c) = config {
        files.push(c.join("containers/auth.json"));
    }
    match env("DOCKER_CONFIG") {
        Some(d) => files.push(d.join("config.json")),
        None => files.extend(env("HOME").map(|h| h.join(".docker/config.json"))),
    }
    files
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthFile {
    fn lookup(&self, host: &str, repo: &str) -> Result<Option<(Credentials, String)>> {
        let keys = host_aliases(host);
        if let Some(helper) = keys.iter().find_map(|k| self.cred_helpers.get(*k)) {
            return Ok(helper_get(helper, host)?.map(|c| (c, format!("docker-credential-{helper}"))));
        }
        // The longest key that names this host, or this host and a namespace of the repo.
        let best = self
            .auths
            .iter()
            .filter_map(|(key, entry)| {
                let k = normalize_key(key);
                let (khost, kpath) = k.split_once('/').unwrap_or((k, ""));
                let host_ok = keys.contains(&khost);
                let path_ok = kpath.is_empty()
                    || repo == kpath
                    || repo.strip_prefix(kpath).is_some_and(|rest| rest.starts_with('/'));
                (host_ok && path_ok).then_some((kpath.len(), key, entry))
            })
            .max_by_key(|(len, ..)| *len);
        if let Some((_, key, entry)) = best
            && let Some(c) = entry.credentials(key)?
        {
            return Ok(Some((c, format!("auths[{key:?}]"))));
        }
        if let Some(store) = &self.creds_store {
            return Ok(helper_get(store, host)?.map(|c| (c, format!("docker-credential-{store}"))));
        }
        Ok(None)
    }
}

impl AuthEntry {
    fn credentials(&self, key: &str) -> Result<Option<Credentials>> {
        if let Some(t) = self.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken(Secret::new(t.clone()))));
        }
        if let Some(a) = self.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| anyhow!("auths[{key:?}].auth is not base64 of USER:PASSWORD"))?;
            return decoded
                .parse()
                .map(Some)
                .map_err(|_| anyhow!("auths[{key:?}].auth is not base64 of USER:PASSWORD"));
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() => {
                Ok(Some(Credentials::Basic { username: u.clone(), password: Secret::new(p.clone()) }))
            }
            _ => Ok(None),
        }
    }
}

/// The spellings of a host in auth files.
fn host_aliases(host: &str) -> Vec<&str> {
    if matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        vec![host]
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `http://h:5000/` → `h:5000`.
fn normalize_key(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let k = k.trim_end_matches('/');
    k.strip_suffix("/v1").or_else(|| k.strip_suffix("/v2")).unwrap_or(k)
}

/// `docker-credential-NAME get`; `None` when the helper has nothing for the server.
fn helper_get(name: &str, host: &str) -> Result<Option<Credentials>> {
    let server = if host_aliases(host).len() > 1 { "https://index.docker.io/v1/" } else { host };
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (named in an auth file)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child.wait_with_output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if msg.to_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        bail!("{program} get failed ({}): {}", out.status, msg.trim().chars().take(300).collect::<String>());
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        #[serde(default)]
        username: String,
        #[serde(default)]
        secret: String,
    }
    let r: Reply = serde_json::from_slice(&out.stdout)
        .map_err(|_| anyhow!("{program} get printed something other than its JSON reply"))?;
    if r.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if r.username == "<token>" {
        Credentials::IdentityToken(Secret::new(r.secret))
    } else {
        Credentials::Basic { username: r.username, password: Secret::new(r.secret) }
    }))
}

/// One `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `basic`, `bearer`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value: one or more `Scheme k=v, k="quoted \"v\""` challenges.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = value.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !b" \t,=".contains(&s[*i]) {
            *i += 1;
        }
        String::from_utf8_lossy(&s[start..*i]).into_owned()
    };
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            i += 1;
            continue;
        }
        // `k=v` continues the current challenge; a bare word starts a new one.
        let mut j = i;
        while j < s.len() && (s[j] == b' ' || s[j] == b'\t') {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' && !out.is_empty() {
            i = j + 1;
            while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
                i += 1;
            }
            let v = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1;
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), v);
            }
        } else {
            out.push(Challenge { scheme: word.to_ascii_lowercase(), params: BTreeMap::new() });
        }
    }
    out
}

/// A token endpoint's answer.
#[derive(Debug, serde::Deserialize)]
pub struct TokenReply {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenReply {
    /// The token and how long it lives (the spec's floor: 60 s).
    pub fn into_token(self) -> Option<(Secret<String>, std::time::Duration)> {
        let t = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let secs = self.expires_in.unwrap_or(60).max(60);
        Some((Secret::new(t), std::time::Duration::from_secs(secs)))
    }
}

/// `Basic base64(user:pass)`.
pub fn basic_header(username: &str, password: &Secret<String>) -> Secret<String> {
    let raw = format!("{username}:{}", password.expose());
    Secret::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:samalba/my-app:pull,push"));
        let c = parse_challenges(r#"Basic realm="Registry \"Realm\"", Bearer realm=x, error=insufficient_scope"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry \"Realm\""));
        assert_eq!(c[1].param("realm"), Some("x"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert_eq!(parse_challenges("Basic").len(), 1);
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn auth_file_lookup() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let file: AuthFile = serde_json::from_str(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"auth": "{}"}},
                "127.0.0.1:5000/team": {{"auth": "{}"}},
                "h.io": {{"username": "u3", "password": "p:3"}},
                "t.io": {{"identitytoken": "tok"}}
            }}}}"#,
            b64("hub:hubpass"),
            b64("any:anypass"),
            b64("team:teampass")
        ))
        .unwrap();
        let user = |host: &str, repo: &str| match file.lookup(host, repo).unwrap() {
            Some((Credentials::Basic { username, .. }, _)) => username,
            Some((Credentials::IdentityToken(_), _)) => "<token>".into(),
            None => "-".into(),
        };
        assert_eq!(user("docker.io", "library/alpine"), "hub");
        assert_eq!(user("127.0.0.1:5000", "app"), "any");
        assert_eq!(user("127.0.0.1:5000", "team/app"), "team");
        assert_eq!(user("127.0.0.1:5000", "teamx/app"), "any");
        assert_eq!(user("h.io", "x"), "u3");
        assert_eq!(user("t.io", "x"), "<token>");
        assert_eq!(user("other.io", "x"), "-");
        let bad: AuthFile = serde_json::from_str(r#"{"auths":{"h.io":{"auth":"!!"}}}"#).unwrap();
        assert!(bad.lookup("h.io", "x").is_err());
    }

    #[test]
    fn creds_flag_and_token_reply() {
        let c: Credentials = "u:p:q".parse().unwrap();
        assert_eq!(c, Credentials::Basic { username: "u".into(), password: Secret::new("p:q".into()) });
        assert!(!format!("{c:?}").contains("p:q"));
        assert!(":p".parse::<Credentials>().is_err());
        assert!("nopass".parse::<Credentials>().is_err());
        let r: TokenReply = serde_json::from_str(r#"{"access_token":"a","expires_in":10}"#).unwrap();
        let (t, ttl) = r.into_token().unwrap();
        assert_eq!((t.expose().as_str(), ttl.as_secs()), ("a", 60));
        assert_eq!(basic_header("u", &Secret::new("p".into())).expose(), "Basic dTpw");
    }
}
