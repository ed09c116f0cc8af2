//! Proxies on 127.0.0.1 (loopback only, bounded). [`Proxy`]: a reverse proxy in front of a
//! registry that counts upload bytes, requests and `Range`s, and injects faults (connections
//! dropped mid-request, responses cut mid-body, statuses such as 500 and 429, requests held until
//! the client is killed). [`ConnectProxy`]: a forward proxy for `HTTPS_PROXY` that counts tunnels.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Forward the head and this many body bytes, then close both connections.
    Drop(u64),
    /// Answer this status (with `Retry-After: 1` for 429) without forwarding.
    Status(u16),
    /// Take the request (its body too) and answer nothing until the client hangs up.
    Hold,
    /// Forward the request, then relay the response head and this many body bytes, then close.
    CutResponse(u64),
}

/// Fires on the `skip+1`-th request matching `method` and `path` (a substring).
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: &'static str,
    pub path: &'static str,
    pub skip: usize,
    pub action: Action,
}

#[derive(Default)]
pub struct ProxyLog {
    /// Body bytes of blob uploads (PATCH, and PUT to `/blobs/uploads/`).
    pub upload_bytes: AtomicU64,
    /// `METHOD /path` of every request, in order.
    pub requests: Mutex<Vec<String>>,
    /// `METHOD /path RANGE` of every request with a `Range` header, in order.
    pub ranges: Mutex<Vec<String>>,
    pub fired: Mutex<Vec<String>>,
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of `upstream` that stops when dropped.
pub struct Proxy {
    pub port: u16,
    pub log: Arc<ProxyLog>,
    pub faults: Arc<Mutex<Vec<Fault>>>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: u16, faults: Vec<Fault>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(ProxyLog::default());
        let faults = Arc::new(Mutex::new(faults));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, f, s) = (log.clone(), faults.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: stops when dropped, and in any case after 3 minutes.
            let deadline = Instant::now() + Duration::from_secs(180);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (l, f) = (l.clone(), f.clone());
                        std::thread::spawn(move || {
                            let _ = serve(client, upstream, &l, &f);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, log, faults, stop, thread: Some(thread) }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn upload_bytes(&self) -> u64 {
        self.log.upload_bytes.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.requests.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One client connection: parse each request head, apply a fault or forward it.
pub fn serve(client: TcpStream, upstream: u16, log: &ProxyLog, faults: &Mutex<Vec<Fault>>) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    {
        let (mut from, mut to) = (up.try_clone()?, client.try_clone()?);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let mut up_w = up.try_clone()?;
    let mut reader = BufReader::new(client.try_clone()?);
    let close = || {
        let _ = up.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
    };
    loop {
        // Not HTTP (a TLS hello): hang up, as a plain HTTP server would.
        match reader.fill_buf()?.first() {
            None => return Ok(()),
            Some(b) if !b.is_ascii_uppercase() => {
                close();
                return Ok(());
            }
            _ => {}
        }
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line)? == 0 || head.len() > 65536 {
                close();
                return Ok(());
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut words = text.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("").split('?').next().unwrap_or("").to_owned();
        let len: u64 = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        log.requests.lock().unwrap().push(format!("{method} {path}"));
        if let Some(range) = text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("range").then(|| v.trim().to_owned())
        }) {
            log.ranges.lock().unwrap().push(format!("{method} {path} {range}"));
        }
        let fault = {
            let mut fs = faults.lock().unwrap();
            match fs.iter().position(|f| f.method == method && path.contains(f.path)) {
                Some(i) if fs[i].skip > 0 => {
                    fs[i].skip -= 1;
                    None
                }
                Some(i) => Some(fs.remove(i)),
                None => None,
            }
        };
        let is_upload = method == "PATCH" || (method == "PUT" && path.contains("/blobs/uploads/"));
        match fault.map(|f| f.action) {
            Some(Action::Status(status)) => {
                std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
                let body = format!(
                    r#"{{"errors":[{{"code":"INJECTED","message":"fault injected by the test proxy ({status})"}}]}}"#
                );
                let retry = if status == 429 { "Retry-After: 1\r\n" } else { "" };
                let mut c = &client;
                write!(
                    c,
                    "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\n{retry}\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )?;
                c.flush()?;
                log.fired.lock().unwrap().push(format!("{status} {method} {path}"));
                std::thread::sleep(Duration::from_millis(50));
                close();
                return Ok(());
            }
            Some(Action::Hold) => {
                log.fired.lock().unwrap().push(format!("hold {method} {path}"));
                // Until the client goes away (its read timeout bounds a live one).
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                close();
                return Ok(());
            }
            Some(Action::CutResponse(after)) => {
                // A connection of its own, so the response can be cut where we like.
                std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
                let mut up2 = TcpStream::connect(("127.0.0.1", upstream))?;
                up2.set_read_timeout(Some(Duration::from_secs(60)))?;
                up2.write_all(&head)?;
                let mut from = BufReader::new(up2);
                let mut c = &client;
                loop {
                    let mut line = Vec::new();
                    if from.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    c.write_all(&line)?;
                    if line == b"\r\n" {
                        break;
                    }
                }
                let n = std::io::copy(&mut (&mut from).take(after), &mut c)?;
                c.flush()?;
                log.fired.lock().unwrap().push(format!("cut response after {n} body bytes: {method} {path}"));
                close();
                return Ok(());
            }
            Some(Action::Drop(after)) => {
                up_w.write_all(&head)?;
                let n = std::io::copy(&mut (&mut reader).take(after.min(len)), &mut up_w)?;
                if is_upload {
                    log.upload_bytes.fetch_add(n, Ordering::Relaxed);
                }
                log.fired.lock().unwrap().push(format!("drop after {n} bytes: {method} {path}"));
                close();
                return Ok(());
            }
            None => {
                up_w.write_all(&head)?;
                let n = std::io::copy(&mut (&mut reader).take(len), &mut up_w)?;
                if is_upload {
                    log.upload_bytes.fetch_add(n, Ordering::Relaxed);
                }
                if n < len {
                    close();
                    return Ok(());
                }
            }
        }
    }
}

/// A forward proxy on 127.0.0.1 that speaks only `CONNECT` (what clients send through
/// `HTTPS_PROXY` for `https://` URLs): it resolves the names in `hosts` (`registry.test` →
/// 127.0.0.1, the port kept), so a registry addressed by such a name is reachable through it and
/// nowhere else; it counts the tunnels it opens; with `credentials` it answers 407 unless the
/// request carries them in `Proxy-Authorization` (basic).
pub struct ConnectProxy {
    pub port: u16,
    /// `host:port` of every tunnel opened, in order.
    pub tunnels: Arc<Mutex<Vec<String>>>,
    /// Requests refused (407, or not CONNECT, or an unknown host).
    pub refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnectProxy {
    pub fn start(hosts: &[&str], credentials: Option<(&str, &str)>) -> ConnectProxy {
        use base64::Engine as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        let want = credentials
            .map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))));
        let (t, r, s) = (tunnels.clone(), refused.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (t, r, hosts, want) = (t.clone(), r.clone(), hosts.clone(), want.clone());
                        std::thread::spawn(move || {
                            let _ = tunnel(client, &hosts, want.as_deref(), &t, &r);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ConnectProxy { port, tunnels, refused, stop, thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn tunnel_count(&self) -> usize {
        self.tunnels.lock().unwrap().len()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tunnel(
    client: TcpStream,
    hosts: &[String],
    want: Option<&str>,
    tunnels: &Mutex<Vec<String>>,
    refused: &AtomicU64,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || head.len() > 65536 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("").to_ascii_lowercase());
    let auth = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("proxy-authorization").then(|| v.trim().to_owned())
    });
    let mut c = &client;
    let refuse = |c: &mut &TcpStream, status: &str| {
        refused.fetch_add(1, Ordering::Relaxed);
        let extra = if status.starts_with("407") { "Proxy-Authenticate: Basic realm=\"test\"\r\n" } else { "" };
        write!(c, "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    if method != "CONNECT" {
        return refuse(&mut c, "405 Only CONNECT");
    }
    if let Some(w) = want
        && auth.as_deref() != Some(w)
    {
        return refuse(&mut c, "407 Proxy Authentication Required");
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if hosts.iter().any(|x| x == h) => (h.to_owned(), p.parse::<u16>().unwrap_or(0)),
        _ => return refuse(&mut c, "502 Unknown Host"),
    };
    let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else {
        return refuse(&mut c, "502 Connection Refused");
    };
    tunnels.lock().unwrap().push(format!("{host}:{port}"));
    write!(c, "HTTP/1.1 200 Connection Established\r\n\r\n")?;
    c.flush()?;
    // Bytes the client sent after the head (none, in practice) go first.
    let buffered = reader.buffer().to_vec();
    let mut up_w = up.try_clone()?;
    up_w.write_all(&buffered)?;
    let (mut from, mut to) = (up.try_clone()?, client.try_clone()?);
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut client_r = client;
    let _ = std::io::copy(&mut client_r, &mut up_w);
    let _ = up_w.shutdown(Shutdown::Write);
    let _ = back.join();
    Ok(())
}
