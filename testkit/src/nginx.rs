//! nginx (Debian's `nginx-light`), started by a test on loopback with its
//! own configuration, certificate and logs in a temporary directory, and
//! stopped by its process id.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the nginx of [`Nginx::start`] is set up with.
#[derive(Clone, Debug)]
pub struct NginxOptions {
    /// `keepalive_requests`: requests per connection before nginx ends it
    /// (a graceful `GOAWAY` over HTTP/2).
    pub keepalive_requests: usize,
    /// Serve HTTP/2 (ALPN `h2`, besides `http/1.1`).
    pub http2: bool,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions {
            keepalive_requests: 1000,
            http2: true,
        }
    }
}

/// A running nginx: TLS on `addr` (`/bytes/100` answers 100 bytes to any
/// method), `stub_status` on a plain port of its own.
pub struct Nginx {
    pub addr: SocketAddr,
    status: SocketAddr,
    child: Child,
    dir: PathBuf,
    pub root: rustls::pki_types::CertificateDer<'static>,
}

/// One line of the access log.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// The request's `x-id` header (`-` when none).
    pub id: String,
    /// nginx's connection serial number.
    pub connection: u64,
    pub status: u16,
}

/// The nginx binary: on the `PATH`, or Debian's `/usr/sbin/nginx` (not on
/// a plain user's `PATH`).
fn nginx_bin() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("nginx")
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

impl Nginx {
    /// Whether nginx is installed (`.ci/run` installs it).
    pub fn installed() -> bool {
        Command::new(nginx_bin())
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts nginx; waits until it accepts connections.
    pub fn start(options: NginxOptions) -> Nginx {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "poolguard-nginx-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let key = rcgen::KeyPair::generate().expect("key pair");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("certificate parameters");
        let cert = params.self_signed(&key).expect("certificate");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key");
        let (addr, status) = (free_port(), free_port());
        let d = dir.display();
        let http2 = if options.http2 { "http2 on;" } else { "" };
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    log_format pglog '$request_method $http_x_id $connection $status';
    access_log {d}/access.log pglog;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests {kr};
    keepalive_timeout 60s;
    server {{
        listen {addr} ssl;
        {http2}
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location /bytes/100 {{ return 200 "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"; }}
    }}
    server {{
        listen {status};
        location /status {{ stub_status; }}
    }}
}}
"#,
            kr = options.keepalive_requests,
        );
        // `http2 on` is nginx 1.25+; 1.22 (Debian 12) takes `listen ... http2`.
        let conf = if options.http2 && !supports_http2_directive() {
            conf.replace(
                &format!("listen {addr} ssl;"),
                &format!("listen {addr} ssl http2;"),
            )
            .replace("        http2 on;\n", "")
        } else {
            conf
        };
        std::fs::write(dir.join("nginx.conf"), conf).expect("config");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts (is nginx-light installed? .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() || TcpStream::connect(status).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 10 s: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            addr,
            status,
            child,
            dir,
            root: cert.der().clone(),
        }
    }

    /// `https://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    pub fn uri(&self, path: &str) -> http::Uri {
        self.url(path).parse().expect("valid uri")
    }

    /// A rustls client configuration trusting this nginx, offering `alpn`.
    pub fn client_tls(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        crate::client_tls(Some(&self.root), alpn)
    }

    /// Connections nginx accepted (`stub_status`), on both ports, this
    /// status request's own excluded.
    pub fn accepted(&self) -> u64 {
        let mut stream = TcpStream::connect(self.status).expect("status port");
        stream
            .write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("status request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("status response");
        // "Active connections: 1 \nserver accepts handled requests\n 12 12 40 \n..."
        let numbers = text
            .lines()
            .skip_while(|l| !l.contains("server accepts"))
            .nth(1)
            .expect("stub_status counters");
        let accepts: u64 = numbers
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("accepts");
        accepts.saturating_sub(1)
    }

    /// The access log so far (nginx writes each line as the request ends).
    pub fn log(&self) -> Vec<Logged> {
        let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                Some(Logged {
                    method: f.next()?.to_string(),
                    id: f.next()?.to_string(),
                    connection: f.next()?.parse().ok()?,
                    status: f.next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// How many times each `x-id` was logged.
    pub fn ids(&self) -> HashMap<String, usize> {
        let mut ids = HashMap::new();
        for line in self.log() {
            *ids.entry(line.id).or_default() += 1;
        }
        ids
    }

    /// TLS connections that carried a request (distinct connection numbers
    /// in the access log).
    pub fn connections_used(&self) -> usize {
        let mut seen: Vec<u64> = self.log().iter().map(|l| l.connection).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

/// Whether this nginx takes the `http2` directive (1.25.1 and later).
fn supports_http2_directive() -> bool {
    let Ok(out) = Command::new(nginx_bin()).arg("-v").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.split('/').nth(1).unwrap_or("").trim();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (major, minor, patch) >= (1, 25, 1)
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Stopped by its process id: the master (SIGTERM ends its workers).
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
