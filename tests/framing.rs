//! One truth about HTTP/1 framing: what the guarded client gives its caller
//! is what bare hyper-util gives, whatever the server sends.
//!
//! Each case is one scripted response (`support::serve_script`), played
//! once to a bare hyper-util client and once to the guarded one (the same
//! client builder, inside `PoolGuard::connector` and under
//! `PoolGuard::layer`), each against a server of its own. The caller's
//! result (status, body bytes, trailers, or an error) must be the same,
//! the server must have seen the request's head exactly once (no request
//! is sent twice once response bytes went out), and a follow-up `GET`,
//! which the server leaves unanswered and closes its connection on when it
//! comes on the connection that carried the case (the stale race, made
//! certain), must be answered for the guarded client: retried on a new
//! connection.
//!
//! The named cases are the defects of the framing issue; the property test
//! draws random framings and split points.
#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Builder, Client};
use hyper_util::rt::TokioExecutor;
use poolguard::PoolGuard;
use proptest::prelude::*;
use support::{serve_script, Script, ScriptServer};
use tower::ServiceExt;

/// What a caller got for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Response {
        status: u16,
        body: Vec<u8>,
        trailers: Option<Vec<(String, String)>>,
    },
    /// The request or its body failed.
    Error,
    /// Nothing within the test's budget.
    Hung,
}

impl Got {
    fn ok(&self) -> bool {
        matches!(self, Got::Response { status: 200, body, .. } if body == b"ok")
    }
}

/// What one client made of a case.
#[derive(Debug)]
struct Run {
    /// The case's request.
    first: Got,
    /// The follow-up `GET /b`.
    follow_up: Got,
    /// Heads of the case's request the server received.
    first_sent: usize,
    /// Whether the follow-up's first attempt came on the case's
    /// connection (the server then left it unanswered).
    follow_up_reused: bool,
}

/// How long one request may take before it counts as hung.
const BUDGET: Duration = Duration::from_secs(10);

/// A pause between the case and the follow-up: hyper-util returns a
/// connection to its pool from a task, and the follow-up is to find it
/// there.
const BETWEEN: Duration = Duration::from_millis(40);

/// The case's request: `method` to `/a`, with a 3-byte body for `PUT`.
fn first_request(uri: http::Uri, method: &Method) -> Request<Full<Bytes>> {
    let body = if method == Method::PUT {
        Bytes::from_static(b"xyz")
    } else {
        Bytes::new()
    };
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    req
}

async fn got<B>(response: Result<http::Response<B>, poolguard::BoxError>) -> Got
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let Ok(response) = response else {
        return Got::Error;
    };
    let status = response.status().as_u16();
    let Ok(collected) = response.into_body().collect().await else {
        return Got::Error;
    };
    let trailers = collected.trailers().map(|t| {
        let mut t: Vec<_> = t
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        t.sort();
        t
    });
    Got::Response {
        status,
        body: collected.to_bytes().to_vec(),
        trailers,
    }
}

async fn within(fut: impl std::future::Future<Output = Got>) -> Got {
    tokio::time::timeout(BUDGET, fut).await.unwrap_or(Got::Hung)
}

fn follow_up_reused(server: &ScriptServer) -> bool {
    let heads = server.heads();
    let case_conn = heads.iter().find(|h| h.path() == "/a").map(|h| h.conn);
    heads
        .iter()
        .any(|h| h.path() == "/b" && Some(h.conn) == case_conn && h.nth > 1)
}

/// Plays `script` to a bare hyper-util client built by `config`.
async fn bare(script: &Script, method: &Method, config: fn(&mut Builder)) -> Run {
    let server = serve_script(script.clone()).await;
    let mut builder = Client::builder(TokioExecutor::new());
    config(&mut builder);
    let client = builder.build::<_, Full<Bytes>>(HttpConnector::new());
    let first = within(async {
        let r = client
            .request(first_request(server.uri("/a"), method))
            .await;
        got(r.map_err(Into::into)).await
    })
    .await;
    tokio::time::sleep(BETWEEN).await;
    let follow_up = within(async {
        let r = client
            .request(first_request(server.uri("/b"), &Method::GET))
            .await;
        got(r.map_err(Into::into)).await
    })
    .await;
    Run {
        first,
        follow_up,
        first_sent: server.sent("/a"),
        follow_up_reused: follow_up_reused(&server),
    }
}

/// Plays `script` to the guarded client: the same builder, inside the
/// guard's connector and under its layer.
async fn guarded(script: &Script, method: &Method, config: fn(&mut Builder)) -> Run {
    let server = serve_script(script.clone()).await;
    let guard = PoolGuard::builder().build();
    let mut builder = Client::builder(TokioExecutor::new());
    config(&mut builder);
    let client = builder.build::<_, Full<Bytes>>(guard.connector(HttpConnector::new()));
    let svc = tower::ServiceBuilder::new()
        .layer(guard.layer())
        .service(client);
    let first = within(async {
        let r = svc
            .clone()
            .oneshot(first_request(server.uri("/a"), method))
            .await;
        got(r).await
    })
    .await;
    tokio::time::sleep(BETWEEN).await;
    let follow_up = within(async {
        let r = svc
            .clone()
            .oneshot(first_request(server.uri("/b"), &Method::GET))
            .await;
        got(r).await
    })
    .await;
    Run {
        first,
        follow_up,
        first_sent: server.sent("/a"),
        follow_up_reused: follow_up_reused(&server),
    }
}

fn defaults(_: &mut Builder) {}

/// Plays `script` to both clients and checks what the module docs say.
/// Returns both runs for a case's own checks.
async fn differential(script: Script, method: Method, config: fn(&mut Builder)) -> (Run, Run) {
    let bare = bare(&script, &method, config).await;
    let guarded = guarded(&script, &method, config).await;
    let shown = String::from_utf8_lossy(&script.bytes()).into_owned();
    assert_eq!(
        guarded.first, bare.first,
        "{method} answered {shown:?}: the guarded caller got something else than bare hyper-util's"
    );
    assert_ne!(bare.first, Got::Hung, "bare hyper-util hung on {shown:?}");
    assert_eq!(
        (bare.first_sent, guarded.first_sent),
        (1, 1),
        "{method} answered {shown:?}: heads the server received (bare, guarded)"
    );
    assert!(
        guarded.follow_up.ok(),
        "after {shown:?}: the guarded follow-up got {:?} (its first attempt on the case's connection: {})",
        guarded.follow_up,
        guarded.follow_up_reused
    );
    (bare, guarded)
}

/// A case whose response hyper-util takes as complete and whose
/// connection it reuses: the follow-up comes on it, bare hyper-util fails
/// it (the premise), and the guarded client retries it.
async fn reused(script: Script, config: fn(&mut Builder)) {
    let (bare, guarded) = differential(script, Method::GET, config).await;
    assert!(
        bare.follow_up_reused && bare.follow_up == Got::Error,
        "premise: bare hyper-util reuses the connection and fails the follow-up: {bare:?}"
    );
    assert!(
        guarded.follow_up_reused,
        "premise: the guarded follow-up's first attempt was on the case's connection: {guarded:?}"
    );
    assert!(matches!(guarded.first, Got::Response { .. }));
}

/// A case whose response hyper-util rejects: both callers get an error,
/// and the server saw the request once.
async fn rejected(script: Script, method: Method) {
    let (bare, _) = differential(script, method, defaults).await;
    assert_eq!(bare.first, Got::Error, "premise: hyper-util rejects it");
}

fn headers(n: usize) -> String {
    (0..n).map(|i| format!("x-h{i}: v\r\n")).collect()
}

// ---- 1. A request sent twice after the server answered it in full.

#[tokio::test]
async fn heads_hyper_rejects_are_sent_once() {
    for (response, methods) in [
        // A signed length (the tracker's integer parse took `+2`).
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"[..],
            &[Method::GET, Method::PUT][..],
        ),
        // A status code below 100.
        (
            b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok",
            &[Method::GET, Method::PUT],
        ),
        // Chunked on HTTP/1.0.
        (
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            &[Method::GET],
        ),
    ] {
        for method in methods {
            rejected(Script::once(response), method.clone()).await;
        }
    }
}

#[tokio::test]
async fn more_headers_than_hyper_takes_are_rejected_once() {
    for n in [101, 110, 128] {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{}\r\nok",
            headers(n - 1)
        );
        rejected(Script::once(head.into_bytes()), Method::GET).await;
        let interim = format!(
            "HTTP/1.1 103 Early Hints\r\n{}\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            headers(n)
        );
        rejected(Script::once(interim.into_bytes()), Method::GET).await;
    }
    // 100 is hyper's limit, and within it.
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{}\r\nok",
        headers(99)
    );
    reused(Script::once(head.into_bytes()), defaults).await;
}

// ---- 2. A body silently truncated.

#[tokio::test]
async fn a_body_read_until_the_close_is_never_cut_short() {
    // hyper takes the coding after the last comma (none: not chunked), so
    // the body runs to the close; the server's Keep-Alive timeout of 1 s
    // must not make the guard end the connection under it.
    let script = Script {
        pieces: vec![
            (
                Duration::ZERO,
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\nkeep-alive: timeout=1\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            (Duration::from_millis(1100), b"more".to_vec()),
        ],
        close: true,
    };
    let (bare, _) = differential(script, Method::GET, defaults).await;
    assert!(
        matches!(&bare.first, Got::Response { body, .. } if body.len() == 19),
        "premise: hyper reads 19 bytes to the close: {bare:?}"
    );
}

#[tokio::test]
async fn trailers_hyper_rejects_fail_once() {
    // A trailer line ended by a bare `\n`, and a bare `\n` ending the
    // trailer section: hyper (since 1.13) fails the body.
    for trailers in ["x-t: a\ny: b\r\n\r\n", "x-t: a\r\n\n"] {
        let response = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n{trailers}"
        );
        rejected(Script::once(response.into_bytes()), Method::GET).await;
    }
}

// ---- 3. Requests lost where hyper reuses the connection.

#[tokio::test]
async fn chunked_wins_over_any_content_length() {
    for lengths in [
        "content-length: 3\r\ncontent-length: 4\r\n",
        "content-length: 3, 4\r\n",
        "content-length: abc\r\n",
        "content-length: +2\r\n",
    ] {
        let response = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{lengths}\r\n2\r\nok\r\n0\r\n\r\n"
        );
        reused(Script::once(response.into_bytes()), defaults).await;
    }
}

#[tokio::test]
async fn the_builders_parser_options_do_not_blind_the_guard() {
    reused(
        Script::once(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-folded: a\r\n  b\r\n\r\nok"[..]),
        |b| {
            b.http1_allow_obsolete_multiline_headers_in_responses(true);
        },
    )
    .await;
    reused(
        Script::once(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a : b\r\n\r\nok"[..]),
        |b| {
            b.http1_allow_spaces_after_header_name_in_responses(true);
        },
    )
    .await;
    reused(
        Script::once(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx@bad: b\r\n\r\nok"[..]),
        |b| {
            b.http1_ignore_invalid_headers_in_responses(true);
        },
    )
    .await;
    let many = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{}\r\nok",
        headers(150)
    );
    reused(Script::once(many.into_bytes()), |b| {
        b.http1_max_headers(200);
    })
    .await;
    let big = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: {}\r\n\r\nok",
        "a".repeat(600 * 1024)
    );
    reused(Script::once(big.into_bytes()), |b| {
        b.http1_max_buf_size(2 * 1024 * 1024);
    })
    .await;
}

// ---- The stale race itself, on well-framed responses.

#[tokio::test]
async fn a_follow_up_on_a_closed_connection_is_retried() {
    for response in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
    ] {
        reused(Script::once(response), defaults).await;
    }
}

// ---- Random framings and split points.

/// One random response and how it is written.
#[derive(Clone, Debug)]
struct Case {
    method: Method,
    interims: Vec<u16>,
    http10: bool,
    status: u16,
    upper: bool,
    framing: Framing,
    connection: Option<&'static str>,
    keep_alive_header: bool,
    /// Where the bytes are split (fractions of the length, in 1/1000).
    cuts: Vec<u16>,
    close_anyway: bool,
}

#[derive(Clone, Debug)]
enum Framing {
    Length {
        body: Vec<u8>,
        zeros: usize,
        repeated: u8,
    },
    Chunked {
        chunks: Vec<Vec<u8>>,
        zeros: usize,
        upper_hex: bool,
        extension: bool,
        trailers: Vec<(String, String)>,
        coding: &'static str,
        length: Option<&'static str>,
    },
    /// No framing header, or a coding that is not chunked: to the close.
    UntilClose {
        body: Vec<u8>,
        coding: Option<&'static str>,
    },
}

fn name(upper: bool, n: &str) -> String {
    if upper {
        n.split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-")
    } else {
        n.to_string()
    }
}

impl Case {
    fn bodiless(&self) -> bool {
        self.method == Method::HEAD || self.status == 204 || self.status == 304
    }

    fn script(&self) -> Script {
        let mut out = Vec::new();
        for code in &self.interims {
            out.extend_from_slice(
                format!("HTTP/1.1 {code} Interim\r\nx-i: {code}\r\n\r\n").as_bytes(),
            );
        }
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        out.extend_from_slice(format!("{version} {} Status\r\n", self.status).as_bytes());
        let h = |out: &mut Vec<u8>, n: &str, v: &str| {
            out.extend_from_slice(format!("{}: {v}\r\n", name(self.upper, n)).as_bytes());
        };
        if let Some(c) = self.connection {
            h(&mut out, "connection", c);
        }
        if self.keep_alive_header {
            h(&mut out, "keep-alive", "timeout=5, max=100");
        }
        let mut body = Vec::new();
        let mut until_close = false;
        match &self.framing {
            Framing::Length {
                body: b,
                zeros,
                repeated,
            } => {
                let n = format!("{}{}", "0".repeat(*zeros), b.len());
                match repeated {
                    0 => h(&mut out, "content-length", &n),
                    1 => h(&mut out, "content-length", &format!("{n}, {}", b.len())),
                    _ => {
                        h(&mut out, "content-length", &n);
                        h(&mut out, "content-length", &b.len().to_string());
                    }
                }
                body.extend_from_slice(b);
            }
            Framing::Chunked {
                chunks,
                zeros,
                upper_hex,
                extension,
                trailers,
                coding,
                length,
            } => {
                h(&mut out, "transfer-encoding", coding);
                // hyper reads the coding after the last comma: none, so the
                // body runs to the close.
                until_close = coding.ends_with(',');
                if let Some(l) = length {
                    h(&mut out, "content-length", l);
                }
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    let size = if *upper_hex {
                        format!("{:X}", c.len())
                    } else {
                        format!("{:x}", c.len())
                    };
                    body.extend_from_slice("0".repeat(*zeros).as_bytes());
                    body.extend_from_slice(size.as_bytes());
                    if *extension {
                        body.extend_from_slice(b";ext=\"v\"");
                    }
                    body.extend_from_slice(b"\r\n");
                    body.extend_from_slice(c);
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"0\r\n");
                for (n, v) in trailers {
                    body.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
                body.extend_from_slice(b"\r\n");
            }
            Framing::UntilClose { body: b, coding } => {
                if let Some(c) = coding {
                    h(&mut out, "transfer-encoding", c);
                }
                body.extend_from_slice(b);
                until_close = true;
            }
        }
        out.extend_from_slice(b"\r\n");
        if !self.bodiless() {
            out.extend_from_slice(&body);
        }
        let mut cuts: Vec<usize> = self
            .cuts
            .iter()
            .map(|c| (usize::from(*c) * out.len()) / 1000)
            .filter(|c| *c > 0 && *c < out.len())
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut pieces = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().chain(std::iter::once(out.len())) {
            let pause = if at == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(3)
            };
            pieces.push((pause, out[at..cut].to_vec()));
            at = cut;
        }
        Script {
            pieces,
            close: self.close_anyway || (until_close && !self.bodiless()),
        }
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(b'a'..=b'z', 0..max)
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        3 => (bytes(40), 0..3usize, 0..3u8).prop_map(|(body, zeros, repeated)| Framing::Length {
            body,
            zeros,
            repeated
        }),
        4 => (
            proptest::collection::vec(bytes(20), 0..4),
            0..3usize,
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(("x-t[a-c]", "[a-z]{0,5}"), 0..3),
            prop_oneof![Just("chunked"), Just("gzip, chunked"), Just("Chunked"), Just("chunked,")],
            prop_oneof![Just(None), Just(Some("7")), Just(Some("abc")), Just(Some("3, 4"))],
        )
            .prop_map(|(chunks, zeros, upper_hex, extension, trailers, coding, length)| {
                Framing::Chunked {
                    chunks,
                    zeros,
                    upper_hex,
                    extension,
                    trailers,
                    coding,
                    length,
                }
            }),
        1 => (bytes(30), prop_oneof![Just(None), Just(Some("gzip"))])
            .prop_map(|(body, coding)| Framing::UntilClose { body, coding }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![4 => Just(Method::GET), 1 => Just(Method::HEAD), 1 => Just(Method::PUT)],
        proptest::collection::vec(prop_oneof![Just(100u16), Just(102), Just(103)], 0..3),
        proptest::bool::weighted(0.2),
        prop_oneof![6 => Just(200u16), 1 => Just(204), 1 => Just(304), 1 => Just(404), 1 => Just(500)],
        any::<bool>(),
        framing(),
        prop_oneof![
            4 => Just(None),
            1 => Just(Some("close")),
            1 => Just(Some("keep-alive")),
            1 => Just(Some("Keep-Alive, Upgrade"))
        ],
        proptest::bool::weighted(0.3),
        proptest::collection::vec(1u16..1000, 0..4),
        proptest::bool::weighted(0.15),
    )
        .prop_map(
            |(
                method,
                interims,
                http10,
                status,
                upper,
                framing,
                connection,
                keep_alive_header,
                cuts,
                close_anyway,
            )| Case {
                method,
                interims,
                http10,
                status,
                upper,
                framing,
                connection,
                keep_alive_header,
                cuts,
                close_anyway,
            },
        )
}

fn cases() -> u32 {
    std::env::var("FRAMING_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48)
}

#[test]
fn random_framings_and_split_points_agree_with_hyper() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(case in case())| {
        let script = case.script();
        rt.block_on(async {
            differential(script, case.method.clone(), defaults).await;
        });
    });
}
