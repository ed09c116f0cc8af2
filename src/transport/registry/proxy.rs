//! `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, read as the Go clients (skopeo, podman, docker:
//! `golang.org/x/net/http/httpproxy`) and curl read them, so that CI behind a proxy works the
//! same for all of them.
//!
//! - `HTTPS_PROXY` (else `https_proxy`) for `https://` registries, `HTTP_PROXY` (else
//!   `http_proxy`) for plain HTTP ones; `ALL_PROXY` (curl) when neither is set. `HTTP_PROXY` is
//!   ignored under CGI (`REQUEST_METHOD` set), as Go does. A value without a scheme is
//!   `http://` (`proxy:3128`). An `https://` proxy is spoken to over TLS.
//! - Loopback registries (`localhost`, 127.0.0.0/8, `::1`) are never proxied (Go's rule).
//! - `NO_PROXY` (else `no_proxy`): entries separated by commas (or spaces); `*` means no proxy at
//!   all; an IP address or CIDR block matches those addresses; `example.com` matches it and its
//!   subdomains, `.example.com` and `*.example.com` only subdomains; `host:port` only that port.
//! - Credentials in the proxy URL (`http://user:pass@proxy:3128`) go in `Proxy-Authorization`
//!   and are never printed: messages show the proxy as [`redacted`].

use std::net::IpAddr;

use anyhow::{Result, bail};
use reqwest::Url;

use super::reference::is_loopback;

/// The proxy settings of the environment.
#[derive(Debug, Clone, Default)]
pub struct ProxyEnv {
    https: Option<Url>,
    http: Option<Url>,
    no_proxy: Vec<NoProxyEntry>,
    /// `NO_PROXY=*`.
    none: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    Ip(IpAddr),
    /// Address and prefix length.
    Cidr(IpAddr, u8),
    /// Lowercase, without a leading `.`/`*.`; `exact` is false for `.example.com`.
    Domain {
        name: String,
        exact: bool,
        port: Option<u16>,
    },
}

impl ProxyEnv {
    /// From the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// From a variable lookup (tests pass a table).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let either = |upper: &str, lower: &str| var(upper).or_else(|| var(lower));
        let all = either("ALL_PROXY", "all_proxy");
        let https = either("HTTPS_PROXY", "https_proxy").or_else(|| all.clone());
        let cgi = var("REQUEST_METHOD").is_some();
        let http = if cgi { None } else { either("HTTP_PROXY", "http_proxy").or(all) };
        let mut env = ProxyEnv {
            https: https.map(|v| parse_proxy("HTTPS_PROXY", &v)).transpose()?,
            http: http.map(|v| parse_proxy("HTTP_PROXY", &v)).transpose()?,
            ..Default::default()
        };
        for entry in either("NO_PROXY", "no_proxy").unwrap_or_default().split([',', ' ']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                env.none = true;
            } else if let Some(e) = parse_no_proxy(entry) {
                env.no_proxy.push(e);
            }
        }
        Ok(env)
    }

    /// The proxy for a request to `url`, if any.
    pub fn for_url(&self, url: &Url) -> Option<Url> {
        let proxy = match url.scheme() {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }?;
        let host = url.host_str()?;
        let port = url.port_or_known_default();
        if self.none || is_loopback(host) || self.excluded(host, port) {
            return None;
        }
        Some(proxy.clone())
    }

    /// Whether any proxy is configured (for messages).
    pub fn is_set(&self) -> bool {
        self.https.is_some() || self.http.is_some()
    }

    fn excluded(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.no_proxy.iter().any(|e| match (e, ip) {
            (NoProxyEntry::Ip(a), Some(ip)) => *a == ip,
            (NoProxyEntry::Cidr(net, bits), Some(ip)) => in_cidr(ip, *net, *bits),
            (NoProxyEntry::Domain { name, exact, port: want }, _) => {
                let port_ok = want.is_none() || *want == port;
                let name_ok = (*exact && host == *name) || host.ends_with(&format!(".{name}"));
                port_ok && name_ok
            }
            _ => false,
        })
    }
}

/// A proxy URL; `proxy:3128` means `http://proxy:3128`. The value is never put in an error: it
/// may hold a password.
fn parse_proxy(var: &str, value: &str) -> Result<Url> {
    let v = value.trim();
    let with_scheme = if v.contains("://") { v.to_owned() } else { format!("http://{v}") };
    let Ok(url) = Url::parse(&with_scheme) else {
        bail!("{var} is not a valid proxy URL (http://[USER:PASS@]HOST:PORT)");
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("{var}: only http:// and https:// proxies are supported, not {}", redacted(&url));
    }
    Ok(url)
}

fn parse_no_proxy(entry: &str) -> Option<NoProxyEntry> {
    let e = entry.to_ascii_lowercase();
    if let Some((addr, bits)) = e.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        return (bits <= max).then_some(NoProxyEntry::Cidr(addr, bits));
    }
    let bare = e.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(NoProxyEntry::Ip(ip));
    }
    // `host:port`, `[v6]:port`.
    let (host, port) = match e.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse().ok()),
        _ => (e.as_str(), None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        // An address with a port: treat as the address (ports on IPs are rare in NO_PROXY).
        return Some(NoProxyEntry::Ip(ip));
    }
    let (name, exact) = if let Some(n) = host.strip_prefix("*.") {
        (n, false)
    } else if let Some(n) = host.strip_prefix('.') {
        (n, false)
    } else {
        (host, true)
    };
    (!name.is_empty()).then(|| NoProxyEntry::Domain { name: name.to_owned(), exact, port })
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits as u32) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits as u32) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// A proxy URL for messages: `http://***@proxy:3128` when it holds credentials.
pub fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_password(None);
        let _ = u.set_username("***");
    }
    u.to_string()
}

/// `s` with every URL's `user:pass@` replaced by `***@` (for error chains from the HTTP stack).
pub fn redact_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'').unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ProxyEnv::from_vars(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap()
    }

    fn via(e: &ProxyEnv, url: &str) -> Option<String> {
        e.for_url(&Url::parse(url).unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn proxies_by_scheme_like_go_and_curl() {
        let e = env(&[("HTTPS_PROXY", "http://p:3128"), ("http_proxy", "plain:8080")]);
        assert_eq!(via(&e, "https://ghcr.io/v2/").as_deref(), Some("http://p:3128/"));
        assert_eq!(via(&e, "http://reg.example:5000/v2/").as_deref(), Some("http://plain:8080/"));
        // Uppercase first; lowercase when it is the only one.
        let e = env(&[("https_proxy", "http://low:1"), ("HTTPS_PROXY", "http://up:1")]);
        assert_eq!(via(&e, "https://ghcr.io/").as_deref(), Some("http://up:1/"));
        // ALL_PROXY (curl) as the fallback; CGI ignores HTTP_PROXY.
        let e = env(&[("ALL_PROXY", "http://all:1")]);
        assert_eq!(via(&e, "https://ghcr.io/").as_deref(), Some("http://all:1/"));
        let e = env(&[("HTTP_PROXY", "http://p:1"), ("REQUEST_METHOD", "GET")]);
        assert_eq!(via(&e, "http://reg.example/"), None);
        assert_eq!(via(&env(&[]), "https://ghcr.io/"), None);
    }

    #[test]
    fn loopback_is_never_proxied() {
        let e = env(&[("HTTPS_PROXY", "http://p:3128"), ("HTTP_PROXY", "http://p:3128")]);
        for u in ["https://127.0.0.1:5000/", "http://localhost:5000/", "https://[::1]:5000/", "http://127.9.9.9/"] {
            assert_eq!(via(&e, u), None, "{u}");
        }
    }

    #[test]
    fn no_proxy_table() {
        let cases: &[(&str, &str, bool)] = &[
            // (NO_PROXY, URL, proxied?)
            ("registry.test", "https://registry.test:5000/", false),
            ("registry.test", "https://a.registry.test/", false),
            ("registry.test", "https://xregistry.test/", true),
            (".example.com", "https://example.com/", true),
            (".example.com", "https://r.example.com/", false),
            ("*.example.com", "https://r.example.com/", false),
            ("*.example.com", "https://example.com/", true),
            ("registry.test:5000", "https://registry.test:5000/", false),
            ("registry.test:5000", "https://registry.test:6000/", true),
            ("registry.test:443", "https://registry.test/", false),
            ("10.0.0.0/8", "https://10.1.2.3:5000/", false),
            ("10.0.0.0/8", "https://11.1.2.3/", true),
            ("192.168.1.5", "https://192.168.1.5:5000/", false),
            ("[2001:db8::1]", "https://[2001:db8::1]:5000/", false),
            ("2001:db8::/32", "https://[2001:db8::7]/", false),
            ("other.test, REGISTRY.TEST", "https://registry.test/", false),
            ("other.test registry.test", "https://registry.test/", false),
            ("*", "https://anything.example/", false),
            ("", "https://registry.test/", true),
        ];
        for (no, url, proxied) in cases {
            let e = env(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", no)]);
            assert_eq!(via(&e, url).is_some(), *proxied, "NO_PROXY={no:?} {url}");
        }
        let e = env(&[("HTTPS_PROXY", "http://p:3128"), ("no_proxy", "registry.test")]);
        assert_eq!(via(&e, "https://registry.test/"), None);
    }

    #[test]
    fn credentials_are_never_shown() {
        let e = env(&[("HTTPS_PROXY", "http://user:s3cret@p:3128")]);
        let url = e.for_url(&Url::parse("https://ghcr.io/").unwrap()).unwrap();
        assert_eq!(url.password(), Some("s3cret"), "kept for Proxy-Authorization");
        assert_eq!(redacted(&url), "http://***@p:3128/");
        assert_eq!(
            redact_userinfo("error connecting to http://user:s3cret@p:3128/: refused; see https://ghcr.io/v2/"),
            "error connecting to http://***@p:3128/: refused; see https://ghcr.io/v2/"
        );
        let err = ProxyEnv::from_vars(|k| (k == "HTTPS_PROXY").then(|| "http://u:s3cret@[bad".to_owned())).unwrap_err();
        assert!(!format!("{err:#}").contains("s3cret"), "{err:#}");
        let err =
            ProxyEnv::from_vars(|k| (k == "HTTPS_PROXY").then(|| "socks5://u:s3cret@p:1".to_owned())).unwrap_err();
        assert!(!format!("{err:#}").contains("s3cret") && format!("{err:#}").contains("socks5://***@p:1"), "{err:#}");
    }
}
