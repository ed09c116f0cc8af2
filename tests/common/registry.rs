//! The registry the tests push to: a real CNCF distribution registry (`docker-registry`) on
//! 127.0.0.1, one per test on a free port, in several setups (plain HTTP, htpasswd bcrypt basic
//! auth, bearer tokens from [`super::tokens::TokenServer`], TLS with a CA made by openssl, with a
//! required client certificate, or with a given certificate such as Docker's self-signed recipe),
//! with skopeo as the independent check.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::tokens::{ISSUER, SERVICE};
use super::{output, run_ok, tempdir};

pub const USER: &str = "ci-user";
/// Grepped for in every output: it must never appear.
pub const PASSWORD: &str = "Pa55-w0rd-never-printed-7f3a";

#[derive(Clone, PartialEq, Eq)]
pub enum Setup {
    Plain,
    Basic,
    Tls,
    /// TLS with `domain.crt` and `domain.key` of this directory (see [`docker_recipe_cert`]);
    /// `certs/` beside them is the trust directory.
    TlsCert(PathBuf),
    /// [`Setup::Tls`] that also requires a client certificate signed by the same CA;
    /// [`Registry::ca_dir`] holds `ca.crt`, `client.cert` and `client.key`.
    TlsClientCert,
    /// Token auth: the registry trusts tokens signed by the key whose certificate is `bundle`.
    Bearer {
        realm: String,
        bundle: PathBuf,
    },
}

/// A running `docker-registry`; killed when dropped.
pub struct Registry {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub setup: Setup,
}

impl Registry {
    pub fn start(setup: Setup) -> Registry {
        let dir = tempdir();
        let d = dir.path();
        let mut extra = String::new();
        let mut tls = String::new();
        if setup == Setup::Basic {
            let out = run_ok(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
            fs::write(d.join("htpasswd"), out).unwrap();
            extra = format!("auth: {{htpasswd: {{realm: nixoci-test, path: {}}}}}\n", d.join("htpasswd").display());
        }
        if let Setup::Bearer { realm, bundle } = &setup {
            extra = format!(
                "auth: {{token: {{realm: \"{realm}\", service: {SERVICE}, issuer: {ISSUER}, rootcertbundle: {}}}}}\n",
                bundle.display()
            );
        }
        if let Setup::TlsCert(c) = &setup {
            tls = format!(
                ", tls: {{certificate: {}, key: {}}}",
                c.join("domain.crt").display(),
                c.join("domain.key").display()
            );
        }
        if setup == Setup::Tls {
            make_certs(d);
            tls = format!(
                ", tls: {{certificate: {}, key: {}}}",
                d.join("server.crt").display(),
                d.join("server.key").display()
            );
        }
        if setup == Setup::TlsClientCert {
            make_certs(d);
            make_client_cert(d);
            tls = format!(
                ", tls: {{certificate: {}, key: {}, clientcas: [{}]}}",
                d.join("server.crt").display(),
                d.join("server.key").display(),
                d.join("ca.crt").display()
            );
        }
        for _attempt in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog: {{level: info, accesslog: {{disabled: true}}}}\n\
                 storage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n  \
                 maintenance: {{uploadpurging: {{enabled: false}}}}\n\
                 http: {{addr: 127.0.0.1:{port}, secret: test-only-secret{tls}}}\n{extra}",
                d.join("data").display()
            );
            fs::write(d.join("config.yml"), config).unwrap();
            let log = fs::File::create(d.join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(d.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting docker-registry");
            let deadline = Instant::now() + Duration::from_secs(10);
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false; // port taken or bad config: try another port
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break true;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not listen in 10 s:\n{}",
                        fs::read_to_string(d.join("registry.log")).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                return Registry { child, port, dir, setup };
            }
            let _ = child.wait();
            eprintln!("docker-registry exited:\n{}", fs::read_to_string(d.join("registry.log")).unwrap_or_default());
        }
        panic!("could not start docker-registry");
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A directory in skopeo's `--cert-dir` layout with our CA.
    pub fn ca_dir(&self) -> PathBuf {
        match &self.setup {
            Setup::TlsCert(c) => c.join("certs"),
            Setup::TlsClientCert => self.dir.path().join("ca-client"),
            _ => self.dir.path().join("ca"),
        }
    }

    /// skopeo's flags to reach this registry (`src`/`dest`/none prefix).
    pub fn skopeo_flags(&self, prefix: &str) -> Vec<String> {
        let p = if prefix.is_empty() { String::new() } else { format!("{prefix}-") };
        let mut v = match self.setup {
            Setup::Tls | Setup::TlsCert(_) | Setup::TlsClientCert => {
                vec![format!("--{p}cert-dir={}", self.ca_dir().display())]
            }
            _ => vec![format!("--{p}tls-verify=false")],
        };
        if matches!(self.setup, Setup::Basic | Setup::Bearer { .. }) {
            v.push(format!("--{p}creds={USER}:{PASSWORD}"));
        }
        v
    }

    /// `skopeo inspect` of `repo:tag`: the manifest digest, or `None` when it is absent.
    pub fn digest_of(&self, repo_tag: &str) -> Option<String> {
        let out = output(
            Command::new("skopeo")
                .arg("inspect")
                .args(self.skopeo_flags(""))
                .arg(format!("docker://{}/{repo_tag}", self.host())),
        );
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("skopeo inspect JSON");
        Some(v["Digest"].as_str().expect("Digest").to_owned())
    }

    /// `skopeo copy` back into an OCI layout (skopeo verifies every blob's digest); the
    /// manifest digest it wrote.
    pub fn copy_back(&self, repo_tag: &str, into: &Path) -> String {
        run_ok(
            Command::new("skopeo")
                .arg("copy")
                // Keep uncompressed layers as they are (skopeo compresses them for oci: otherwise).
                .arg("--dest-oci-accept-uncompressed-layers")
                .args(self.skopeo_flags("src"))
                .arg(format!("docker://{}/{repo_tag}", self.host()))
                .arg(format!("oci:{}:t", into.display())),
        );
        oci_manifest_digest(into, "t")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA and a server certificate it signed for IP 127.0.0.1 (ECDSA P-256: quick to make).
pub fn make_certs(d: &Path) {
    let ssl = |args: &[&str]| {
        run_ok(Command::new("openssl").args(args).current_dir(d));
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=nixoci test CA",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    fs::create_dir_all(d.join("ca")).unwrap();
    fs::copy(d.join("ca.crt"), d.join("ca/ca.crt")).unwrap();
}

/// A client certificate signed by [`make_certs`]' CA: `d/ca-client/` holds `ca.crt`,
/// `client.cert` and `client.key` (the containers `certs.d` layout).
pub fn make_client_cert(d: &Path) {
    let ssl = |args: &[&str]| {
        run_ok(Command::new("openssl").args(args).current_dir(d));
    };
    ssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=nixoci test client",
    ]);
    fs::write(d.join("client-ext.cnf"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n").unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.crt",
        "-days",
        "2",
        "-extfile",
        "client-ext.cnf",
    ]);
    let dir = d.join("ca-client");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(d.join("ca.crt"), dir.join("ca.crt")).unwrap();
    fs::copy(d.join("client.crt"), dir.join("client.cert")).unwrap();
    fs::copy(d.join("client.key"), dir.join("client.key")).unwrap();
}

/// Docker's documented recipe for a self-signed registry certificate, exactly
/// (<https://distribution.github.io/distribution/about/deploying/>), answering openssl's questions
/// on stdin with CN = `cn`: `domain.crt` and `domain.key` in `d`, and `d/certs/ca.crt` (where
/// docker's docs copy it) as the trust directory. The certificate is its own CA (`CA:TRUE`).
pub fn docker_recipe_cert(d: &Path, san: &str, cn: &str) {
    fs::create_dir_all(d.join("certs")).unwrap();
    let mut child = Command::new("openssl")
        .current_dir(d)
        .args(["req", "-newkey", "rsa:4096", "-nodes", "-sha256", "-keyout", "domain.key", "-x509", "-days", "365"])
        .args(["-out", "domain.crt", "-addext", &format!("subjectAltName = {san}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    // Country, state, locality, organisation, unit: empty ('.'); common name; email: empty.
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), format!(".\n.\n.\n.\n.\n{cn}\n.\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "openssl req (docker's recipe) failed");
    let text = run_ok(Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(d.join("domain.crt")));
    assert!(String::from_utf8_lossy(&text).contains("CA:TRUE"), "the recipe's certificate is a CA certificate");
    fs::copy(d.join("domain.crt"), d.join("certs/ca.crt")).unwrap();
}

/// A self-signed certificate for IP 127.0.0.1 that expired in 2020 (`openssl ca` with explicit
/// dates), laid out like [`docker_recipe_cert`].
pub fn expired_cert(d: &Path) {
    fs::create_dir_all(d.join("db")).unwrap();
    fs::create_dir_all(d.join("certs")).unwrap();
    fs::write(d.join("db/index"), "").unwrap();
    fs::write(d.join("db/serial"), "01\n").unwrap();
    fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = db/index\nnew_certs_dir = db\nserial = db/serial\n\
         default_md = sha256\npolicy = p\ncopy_extensions = copy\nunique_subject = no\n[p]\ncommonName = supplied\n",
    )
    .unwrap();
    let ssl = |args: &[&str]| {
        run_ok(Command::new("openssl").args(args).current_dir(d));
    };
    ssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "domain.key"]);
    ssl(&[
        "req",
        "-new",
        "-key",
        "domain.key",
        "-out",
        "domain.csr",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName = IP:127.0.0.1",
    ]);
    ssl(&[
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-selfsign",
        "-keyfile",
        "domain.key",
        "-in",
        "domain.csr",
        "-out",
        "domain.crt",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200102000000Z",
    ]);
    fs::copy(d.join("domain.crt"), d.join("certs/ca.crt")).unwrap();
}

pub fn oci_manifest_digest(dir: &Path, tag: &str) -> String {
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}
