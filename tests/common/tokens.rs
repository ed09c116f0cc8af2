//! A token server for bearer auth (as GHCR, Docker Hub and Harbor do it), on 127.0.0.1.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::registry::{PASSWORD, Setup, USER};
use super::{run_ok, tempdir};

pub const SERVICE: &str = "nixoci-test-registry";
pub const ISSUER: &str = "nixoci-test-issuer";

#[derive(Default)]
pub struct TokenLog {
    /// Scopes of each token request, in order (`-` for a refused one).
    pub requests: Vec<String>,
    /// Tokens handed out (grepped for in outputs: they are secrets too).
    pub tokens: Vec<String>,
}

/// A token endpoint (RS256 JWTs signed with openssl) on 127.0.0.1: checks basic credentials,
/// grants what is asked, except that the first token it issues grants nothing (so the client
/// must refresh it after the registry's 401).
pub struct TokenServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<TokenLog>>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    pub fn start() -> TokenServer {
        let dir = tempdir();
        run_ok(Command::new("openssl").current_dir(dir.path()).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "token.key",
            "-out",
            "token.crt",
            "-days",
            "2",
            "-subj",
            "/CN=nixoci test token issuer",
        ]));
        let der = run_ok(Command::new("openssl").current_dir(dir.path()).args([
            "x509",
            "-in",
            "token.crt",
            "-outform",
            "DER",
        ]));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(TokenLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, st, key) = (log.clone(), stop.clone(), dir.path().join("token.key"));
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((c, _)) => {
                        let _ = answer_token(c, &key, &der, &l);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TokenServer { port, dir, log, stop, thread: Some(thread) }
    }

    pub fn setup(&self) -> Setup {
        Setup::Bearer {
            realm: format!("http://127.0.0.1:{}/token", self.port),
            bundle: self.dir.path().join("token.crt"),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn answer_token(c: TcpStream, key: &Path, cert_der: &[u8], log: &Mutex<TokenLog>) -> std::io::Result<()> {
    use base64::Engine as _;
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(c.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || head.len() > 65536 {
            break;
        }
        head.push_str(&line);
    }
    let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let query = target.split_once('?').map(|x| x.1).unwrap_or("");
    let scopes: Vec<String> = query.split('&').filter_map(|kv| kv.strip_prefix("scope=")).map(percent_decode).collect();
    let b64 = base64::engine::general_purpose::STANDARD;
    let want = format!("Basic {}", b64.encode(format!("{USER}:{PASSWORD}")));
    let authorized = head
        .lines()
        .any(|l| l.split_once(':').is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == want));
    let mut c = c;
    if !authorized {
        log.lock().unwrap().requests.push("-".into());
        let body = r#"{"details":"wrong credentials"}"#;
        write!(
            c,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let first = log.lock().unwrap().tokens.is_empty();
    let access: Vec<Value> = if first {
        Vec::new()
    } else {
        scopes
            .iter()
            .filter_map(|s| {
                let mut p = s.split(':');
                let (t, name, actions) = (p.next()?, p.next()?, p.next()?);
                Some(serde_json::json!({"type": t, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [b64.encode(cert_der)]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
        "iat": now, "jti": format!("{now}-{}", scopes.len()), "access": access,
    });
    let signing_input = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
    let input_file = key.with_file_name(format!("input-{}", std::process::id()));
    fs::write(&input_file, &signing_input)?;
    let sig = run_ok(Command::new("openssl").args(["dgst", "-sha256", "-binary", "-sign"]).arg(key).arg(&input_file));
    let token = format!("{signing_input}.{}", url.encode(sig));
    {
        let mut l = log.lock().unwrap();
        l.requests.push(scopes.join(" "));
        l.tokens.push(token.clone());
    }
    let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
    write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}
