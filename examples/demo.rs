//! poolguard's demo: the failure modes that make it necessary, each replayed
//! bare and guarded against the same loopback server, in one table.
//!
//! ```sh
//! cargo run --release --example demo --all-features
//! cargo run --release --example demo --all-features -- --scale 0.5 --only bursty
//! ```
//!
//! Flags: `--scale F` multiplies every request count (default 1.0);
//! `--only NAME` runs one workload: `drop-5b`, `drop-64k`, `read-64k`,
//! `bursty`, `flood`, `slow-100`, `crawler`, `stale`, `endless` (16 KiB chunks for
//! ever), `trickle` (a byte every 10 ms), and over
//! HTTP/2 and TLS `h2-flood` (h2c), `tls-h2-flood` (TLS, ALPN h2),
//! `h2-drop-64k` (TLS h2, bodies in 1 KiB frames dropped after the
//! headers), `h2-goaway` (h2c, a graceful `GOAWAY` every 100 streams),
//! `tls-drop-64k` (TLS HTTP/1.1); `--rounds N` repeats every workload N times, the
//! clients in a different order each round, and reports the median with the
//! spread (min–max) of req/s and the process's RSS growth during each run
//! (this is the loopback benchmark of BENCHMARKS.md). `--scaling` runs the
//! scaling series instead: concurrency 1, 10, 100 and 1000 to one host with
//! N = 10 (`conc-*`), and 1 to 10,000 hosts (`hosts-*`: names that all
//! resolve to one loopback server, each a host of its own to the clients).
//! `--client NAME` runs one client only (`hyper-util bare`, `hyper-util
//! guarded`, `reqwest bare`, `reqwest guarded`), for side-by-side runs of one
//! client over two workloads. `--versus` runs the early-drop comparison:
//! each guarded client dropping 64 KiB bodies after the headers and reading
//! them to the end, 10,000 requests each (times `--scale`), alternated
//! (which goes first changes every round) for `--rounds` pairs (default 5),
//! and prints the drop/read ratio of each pair with the median and spread.

use poolguard_testkit as support;
use support::Loopback;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::{BoxError, Metrics, PoolGuard, ReuseMetricsLayer};
use tower::{Layer, ServiceExt};

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
type Send_ = Arc<dyn Fn(usize) -> BoxFuture + Send + Sync>;

/// How the clients reach the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// HTTP/1.1 over plain TCP.
    Plain,
    /// HTTP/2 over plain TCP, with prior knowledge.
    H2c,
    /// TLS with a certificate made at start; the server offers `h2` by
    /// ALPN when `h2`, else only `http/1.1`.
    Tls { h2: bool },
}

/// What the caller does with a response body.
#[derive(Clone, Copy)]
enum Use {
    Read,
    Drop,
}

/// A workload: how many tasks send how many requests, pausing how long,
/// to which servers and paths.
struct Workload {
    name: &'static str,
    tasks: usize,
    requests: usize,
    pause_ms: u64,
    path: &'static str,
    usage: Use,
    hosts: usize,
    delay: Duration,
    bare_idle: usize,
    max_per_host: usize,
    /// Host names, all resolving to the one server (0: its address).
    names: usize,
    /// The pools' idle timeout (hyper-util's default 90 s when `None`).
    idle_timeout: Option<Duration>,
    /// A raw server that closes connections idle this long (the stale
    /// connection race), instead of the hyper server.
    server_idle_close: Option<Duration>,
    transport: Transport,
    /// HTTP/2: the server ends each connection gracefully after this many
    /// streams (0: never).
    goaway_after: usize,
}

struct Row {
    workload: &'static str,
    client: &'static str,
    requests: usize,
    errors: usize,
    accepts: usize,
    time_wait: Option<usize>,
    rps: f64,
    p50: Duration,
    p99: Duration,
    reuse: Option<f64>,
    /// Growth of the process's resident memory during the run.
    rss_kib: usize,
    /// CPU time of the whole process (clients and server) per request.
    cpu_per_request: Duration,
}

/// Client sockets in TIME_WAIT towards any of `ports` (Linux only).
fn time_wait_to(ports: &[u16]) -> Option<usize> {
    let mut count = 0;
    let mut readable = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else {
                continue;
            };
            let port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "06" && port.is_some_and(|p| ports.contains(&p)) {
                count += 1;
            }
        }
    }
    readable.then_some(count)
}

/// Runs `total` requests over `tasks` tasks; returns errors, latencies and
/// the wall time.
async fn drive(
    tasks: usize,
    total: usize,
    pause_ms: u64,
    send: Send_,
) -> (usize, Vec<Duration>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (send, next, errors, latencies) = (
            send.clone(),
            next.clone(),
            errors.clone(),
            latencies.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut rng = support::XorShift(0x9E37_79B9_7F4A_7C15_u64 ^ (t as u64 + 1));
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let begun = Instant::now();
                // Each request is bounded: nothing in the demo can hang.
                match tokio::time::timeout(Duration::from_secs(10), send(i)).await {
                    Ok(Ok(())) => mine.push(begun.elapsed()),
                    outcome => {
                        if std::env::var_os("DEMO_ERRORS").is_some() {
                            match outcome {
                                Ok(Err(e)) => eprintln!("request {i} failed: {e:?}"),
                                _ => eprintln!("request {i} timed out"),
                            }
                        }
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(rng.below(pause_ms))).await;
                }
            }
            if let Ok(mut all) = latencies.lock() {
                all.extend(mine);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let elapsed = start.elapsed();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    latencies.sort();
    (errors.load(Ordering::Relaxed), latencies, elapsed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn hyper_client<C>(connector: C, idle: usize, w: &Workload) -> Client<C, Empty<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_max_idle_per_host(idle);
    if w.transport == Transport::H2c {
        builder.http2_only(true);
    }
    if let Some(t) = w.idle_timeout {
        // The pool's reaper needs a timer to close idle connections.
        builder
            .pool_idle_timeout(t)
            .pool_timer(hyper_util::rt::TokioTimer::new());
    }
    builder.build(connector)
}

fn reqwest_client(idle: usize, w: &Workload, server: &support::Server) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(w.idle_timeout.unwrap_or(Duration::from_secs(90)))
        .dns_resolver(Loopback);
    match w.transport {
        Transport::Plain => builder,
        Transport::H2c => builder.http2_prior_knowledge(),
        // reqwest's defaults: rustls, ALPN offering h2 and http/1.1.
        Transport::Tls { .. } => {
            builder.tls_backend_preconfigured(server.client_tls(&[b"h2", b"http/1.1"]))
        }
    }
}

/// hyper-rustls trusting `server`'s certificate, offering h2 by ALPN too.
fn https(server: &support::Server) -> hyper_rustls::HttpsConnector<HttpConnector<Loopback>> {
    let mut http = HttpConnector::new_with_resolver(Loopback);
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(server.client_tls(&[]))
        .https_only()
        .enable_all_versions()
        .wrap_connector(http)
}

/// Sends through a tower service of hyper-util's kind, using each response
/// body as `usage` says.
fn hyper_send<S, B>(svc: S, urls: Arc<Vec<String>>, usage: Use) -> Send_
where
    S: tower::Service<http::Request<Empty<Bytes>>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Arc::new(move |i| {
        let (svc, uri) = (svc.clone(), urls[i % urls.len()].clone());
        Box::pin(async move {
            let req = http::Request::get(uri).body(Empty::new())?;
            let resp = svc.oneshot(req).await.map_err(Into::into)?;
            if let Use::Read = usage {
                resp.into_body().collect().await.map_err(Into::into)?;
            }
            Ok(())
        })
    })
}

fn urls(servers: &[support::Server], path: &str, names: usize) -> Arc<Vec<String>> {
    if names > 0 {
        let port = servers.first().map_or(0, |s| s.addr.port());
        return Arc::new(
            (0..names)
                .map(|i| format!("http://h{i}.test:{port}{path}"))
                .collect(),
        );
    }
    Arc::new(servers.iter().map(|s| s.url(path)).collect())
}

/// The four clients of one workload, as request senders.
fn senders(
    w: &Workload,
    servers: &[support::Server],
) -> Vec<(&'static str, Send_, Option<Metrics>)> {
    let urls = urls(servers, w.path, w.names);
    let usage = w.usage;
    let Some(server) = servers.first() else {
        return Vec::new();
    };
    let mut out: Vec<(&'static str, Send_, Option<Metrics>)> = Vec::new();

    // Bare hyper-util; a metrics layer (which changes nothing) reads reuse
    // from socket addresses.
    let metrics = Metrics::new();
    let reuse = ReuseMetricsLayer::new(metrics.clone());
    let bare = match w.transport {
        Transport::Tls { .. } => hyper_send(
            reuse.layer(hyper_client(https(server), w.bare_idle, w)),
            urls.clone(),
            usage,
        ),
        _ => hyper_send(
            reuse.layer(hyper_client(
                HttpConnector::new_with_resolver(Loopback),
                w.bare_idle,
                w,
            )),
            urls.clone(),
            usage,
        ),
    };
    out.push(("hyper-util bare", bare, Some(metrics)));

    let guard = PoolGuard::builder().max_per_host(w.max_per_host).build();
    let guarded = match w.transport {
        Transport::Tls { .. } => hyper_send(
            guard.layer().layer(hyper_client(
                guard.connector(https(server)),
                w.max_per_host,
                w,
            )),
            urls.clone(),
            usage,
        ),
        _ => hyper_send(
            guard.layer().layer(hyper_client(
                guard.connector(HttpConnector::new_with_resolver(Loopback)),
                w.max_per_host,
                w,
            )),
            urls.clone(),
            usage,
        ),
    };
    out.push(("hyper-util guarded", guarded, Some(guard.metrics().clone())));

    let client = reqwest_client(w.bare_idle, w, server)
        .build()
        .expect("reqwest client");
    let u = urls.clone();
    out.push((
        "reqwest bare",
        Arc::new(move |i| {
            let (client, url) = (client.clone(), u[i % u.len()].clone());
            Box::pin(async move {
                let resp = client.get(url).send().await?;
                if let Use::Read = usage {
                    resp.bytes().await?;
                }
                Ok(())
            })
        }),
        None,
    ));

    let guard = PoolGuard::builder().max_per_host(w.max_per_host).build();
    let client = guard.reqwest(
        reqwest_client(w.max_per_host, w, server)
            .connector_layer(guard.reqwest_connector_layer())
            .build()
            .expect("reqwest client"),
    );
    let u = urls;
    out.push((
        "reqwest guarded",
        Arc::new(move |i| {
            let (client, url) = (client.clone(), u[i % u.len()].clone());
            Box::pin(async move {
                let req = reqwest::Request::new(reqwest::Method::GET, url.parse()?);
                let resp = client.execute(req).await?;
                if let Use::Read = usage {
                    resp.bytes().await?;
                }
                Ok(())
            })
        }),
        Some(guard.metrics().clone()),
    ));
    out
}

async fn run(w: &Workload, round: usize, client: Option<&str>) -> Vec<Row> {
    let mut rows = Vec::new();
    let clients = 4;
    for k in 0..clients {
        // Alternate the order of the clients from round to round.
        let c = (k + round) % clients;
        // A fresh server (or servers) per client: its accept count is the
        // client's own.
        let mut servers = Vec::new();
        for _ in 0..w.hosts {
            servers.push(match w.server_idle_close {
                Some(idle) => {
                    support::serve_raw(move || {
                        (
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                            support::After::IdleTimeout(idle),
                        )
                    })
                    .await
                }
                None => {
                    let options = support::Options {
                        delay: w.delay,
                        http2: matches!(w.transport, Transport::H2c | Transport::Tls { h2: true }),
                        goaway_after: w.goaway_after,
                        ..Default::default()
                    };
                    match w.transport {
                        Transport::Tls { .. } => support::serve_tls_with(options).await,
                        _ => support::serve_with(options).await,
                    }
                }
            });
        }
        let (name, send, metrics) = senders(w, &servers).swap_remove(c);
        if client.is_some_and(|only| only != name) {
            continue;
        }
        eprint!("  {:<9} {:<19} ...", w.name, name);
        let rss_before = support::rss_kib();
        let cpu_before = support::cpu_time();
        let (errors, latencies, elapsed) = drive(w.tasks, w.requests, w.pause_ms, send).await;
        let cpu = support::cpu_time().saturating_sub(cpu_before);
        let rss = support::rss_kib().saturating_sub(rss_before);
        // Let closing connections reach TIME_WAIT before counting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ports: Vec<u16> = servers.iter().map(|s| s.addr.port()).collect();
        let accepts = servers.iter().map(|s| s.stats.accepted()).sum();
        let row = Row {
            workload: w.name,
            client: name,
            requests: w.requests,
            errors,
            accepts,
            time_wait: time_wait_to(&ports),
            rps: w.requests as f64 / elapsed.as_secs_f64(),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            reuse: metrics.map(|m| m.snapshot().reuse_rate()),
            rss_kib: rss,
            cpu_per_request: cpu / u32::try_from(w.requests.max(1)).unwrap_or(u32::MAX),
        };
        eprintln!(" {:.1} s", elapsed.as_secs_f64());
        rows.push(row);
    }
    rows.sort_by_key(|r| r.client);
    rows
}

fn workloads(scale: f64) -> Vec<Workload> {
    let n = |base: usize| ((base as f64 * scale).round() as usize).max(1);
    let base = Workload {
        name: "",
        tasks: 8,
        requests: n(2000),
        pause_ms: 0,
        path: "/bytes/5",
        usage: Use::Drop,
        hosts: 1,
        delay: Duration::ZERO,
        bare_idle: usize::MAX,
        max_per_host: 10,
        names: 0,
        idle_timeout: None,
        server_idle_close: None,
        transport: Transport::Plain,
        goaway_after: 0,
    };
    vec![
        Workload {
            name: "drop-5b",
            ..base
        },
        Workload {
            name: "drop-64k",
            path: "/bytes/65536",
            requests: n(2000),
            ..base
        },
        Workload {
            name: "read-64k",
            path: "/bytes/65536",
            usage: Use::Read,
            // The control: long enough for a ratio that noise does not hide.
            requests: n(10_000),
            ..base
        },
        Workload {
            name: "bursty",
            tasks: 100,
            requests: n(4000),
            pause_ms: 20,
            path: "/bytes/512",
            usage: Use::Read,
            bare_idle: 2,
            ..base
        },
        Workload {
            name: "flood",
            tasks: 1000,
            requests: n(5000),
            path: "/bytes/512",
            usage: Use::Read,
            delay: Duration::from_millis(5),
            ..base
        },
        Workload {
            name: "slow-100",
            tasks: 100,
            requests: n(1000),
            path: "/bytes/512",
            usage: Use::Read,
            delay: Duration::from_millis(20),
            ..base
        },
        Workload {
            name: "crawler",
            tasks: 64,
            requests: n(3000),
            path: "/bytes/2048",
            usage: Use::Read,
            hosts: 48,
            bare_idle: 1,
            max_per_host: 2,
            ..base
        },
        Workload {
            name: "stale",
            tasks: 8,
            requests: n(1500),
            pause_ms: 20,
            path: "/",
            usage: Use::Read,
            server_idle_close: Some(Duration::from_millis(10)),
            ..base
        },
        Workload {
            name: "endless",
            tasks: 8,
            requests: n(2000),
            path: "/endless",
            usage: Use::Drop,
            ..base
        },
        Workload {
            name: "trickle",
            tasks: 8,
            requests: n(2000),
            path: "/trickle",
            usage: Use::Drop,
            ..base
        },
        Workload {
            name: "h2-flood",
            tasks: 100,
            requests: n(10_000),
            path: "/bytes/512",
            usage: Use::Read,
            delay: Duration::from_millis(5),
            transport: Transport::H2c,
            ..base
        },
        Workload {
            name: "tls-h2-flood",
            tasks: 100,
            requests: n(10_000),
            path: "/bytes/512",
            usage: Use::Read,
            delay: Duration::from_millis(5),
            transport: Transport::Tls { h2: true },
            ..base
        },
        Workload {
            name: "h2-drop-64k",
            path: "/chunked/65536",
            requests: n(2000),
            transport: Transport::Tls { h2: true },
            ..base
        },
        Workload {
            name: "h2-goaway",
            tasks: 50,
            requests: n(5000),
            path: "/bytes/512",
            usage: Use::Read,
            transport: Transport::H2c,
            goaway_after: 100,
            ..base
        },
        Workload {
            name: "tls-drop-64k",
            path: "/bytes/65536",
            requests: n(2000),
            transport: Transport::Tls { h2: false },
            ..base
        },
    ]
}

/// The scaling series: concurrency to one host, and the number of hosts.
fn scaling(scale: f64) -> Vec<Workload> {
    let n = |base: usize| ((base as f64 * scale).round() as usize).max(1);
    let mut out = Vec::new();
    for (name, tasks) in [
        ("conc-1", 1),
        ("conc-10", 10),
        ("conc-100", 100),
        ("conc-1000", 1000),
    ] {
        out.push(Workload {
            name,
            tasks,
            requests: n(2000).max(2 * tasks),
            pause_ms: 0,
            path: "/bytes/512",
            usage: Use::Read,
            hosts: 1,
            delay: Duration::from_millis(1),
            bare_idle: usize::MAX,
            max_per_host: 10,
            names: 0,
            idle_timeout: None,
            server_idle_close: None,
            transport: Transport::Plain,
            goaway_after: 0,
        });
    }
    for (name, names) in [
        ("hosts-1", 1),
        ("hosts-10", 10),
        ("hosts-100", 100),
        ("hosts-1000", 1000),
        ("hosts-10000", 10_000),
    ] {
        out.push(Workload {
            name,
            tasks: 64,
            // Every host twice, round robin.
            requests: n(2000).max(2 * names),
            pause_ms: 0,
            path: "/bytes/512",
            usage: Use::Read,
            hosts: 1,
            delay: Duration::ZERO,
            bare_idle: usize::MAX,
            max_per_host: 2,
            names,
            // Idle connections close after 200 ms: 10,000 hosts' worth of
            // idle sockets (client and server side) would pass the
            // machine's open-file limit of 20,000.
            idle_timeout: Some(Duration::from_millis(200)),
            server_idle_close: None,
            transport: Transport::Plain,
            goaway_after: 0,
        });
    }
    out
}

/// The median row of each (workload, client) over the rounds, with the
/// spread of req/s.
fn summarize(rounds: Vec<Vec<Row>>) -> Vec<(Row, f64, f64)> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..first.len() {
        let mut same: Vec<&Row> = rounds.iter().filter_map(|r| r.get(i)).collect();
        same.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let (min, max) = (same[0].rps, same[same.len() - 1].rps);
        let m = same[same.len() / 2];
        let median = |f: &dyn Fn(&Row) -> f64| {
            let mut v: Vec<f64> = same.iter().map(|r| f(r)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        out.push((
            Row {
                workload: m.workload,
                client: m.client,
                requests: m.requests,
                errors: same.iter().map(|r| r.errors).max().unwrap_or(0),
                accepts: median(&|r| r.accepts as f64) as usize,
                time_wait: m.time_wait,
                rps: median(&|r| r.rps),
                p50: Duration::from_secs_f64(median(&|r| r.p50.as_secs_f64())),
                p99: Duration::from_secs_f64(median(&|r| r.p99.as_secs_f64())),
                reuse: m.reuse,
                rss_kib: median(&|r| r.rss_kib as f64) as usize,
                cpu_per_request: Duration::from_secs_f64(median(&|r| {
                    r.cpu_per_request.as_secs_f64()
                })),
            },
            min,
            max,
        ));
    }
    out
}

fn print_rounds(rows: &[(Row, f64, f64)], rounds: usize) {
    println!(
        "| workload | client | requests | errors (max) | accepts | req/s median | req/s min–max ({rounds} rounds) | p50 | p99 | reuse | RSS growth |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (r, min, max) in rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0}–{:.0} | {:.2} ms | {:.2} ms | {} | {} KiB |",
            r.workload,
            r.client,
            r.requests,
            r.errors,
            r.accepts,
            r.rps,
            min,
            max,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.reuse
                .map_or("-".to_owned(), |x| format!("{:.1} %", x * 100.0)),
            r.rss_kib,
        );
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| workload | client | requests | errors | accepts | TIME_WAIT | req/s | p50 | p99 | reuse |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            r.workload,
            r.client,
            r.requests,
            r.errors,
            r.accepts,
            r.time_wait.map_or("n/a".to_owned(), |n| n.to_string()),
            r.rps,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.reuse
                .map_or("-".to_owned(), |x| format!("{:.1} %", x * 100.0)),
        );
    }
}

#[tokio::main]
async fn main() {
    let mut scale = 1.0;
    let mut rounds = 1usize;
    let mut only: Option<String> = None;
    let mut client: Option<String> = None;
    let mut series = false;
    let mut versus = false;
    let mut svg: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--scale" => scale = args.next().and_then(|s| s.parse().ok()).unwrap_or(1.0),
            "--only" => only = args.next(),
            "--client" => client = args.next(),
            "--scaling" => series = true,
            "--versus" => versus = true,
            "--svg" => svg = args.next(),
            "--rounds" => rounds = args.next().and_then(|s| s.parse().ok()).unwrap_or(1).max(1),
            "-h" | "--help" => {
                println!("usage: demo [--scale F] [--rounds N] [--scaling] [--versus] [--svg FILE] [--client \"hyper-util guarded\"] [--only drop-5b|drop-64k|read-64k|bursty|flood|slow-100|crawler|stale|endless|trickle|h2-flood|tls-h2-flood|h2-drop-64k|h2-goaway|tls-drop-64k|conc-N|hosts-N]");
                return;
            }
            other => {
                eprintln!("unknown argument {other}; try --help");
                std::process::exit(2);
            }
        }
    }
    support::raise_nofile_limit();
    if versus {
        return drop_versus_read(scale, if rounds > 1 { rounds } else { 5 }, client).await;
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for round in 0..rounds {
        if rounds > 1 {
            eprintln!("round {} of {rounds}", round + 1);
        }
        let mut rows = Vec::new();
        let list = if series {
            scaling(scale)
        } else {
            workloads(scale)
        };
        for w in list {
            if only.as_deref().is_some_and(|o| o != w.name) {
                continue;
            }
            rows.extend(run(&w, round, client.as_deref()).await);
        }
        all.push(rows);
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    let rows: Vec<Row> = if rounds == 1 {
        let rows = all.swap_remove(0);
        print_table(&rows);
        rows
    } else {
        let summary = summarize(all);
        print_rounds(&summary, rounds);
        summary.into_iter().map(|(row, _, _)| row).collect()
    };
    if let Some(path) = svg {
        match chart::write(&path, &rows) {
            Ok(()) => eprintln!("chart written to {path}"),
            Err(e) => {
                eprintln!("chart not written: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Early drops against reading to the end, one guarded client at a time,
/// the two workloads alternated with equal request counts: prints each
/// pair's drop/read ratio of req/s, then the median and spread.
async fn drop_versus_read(scale: f64, pairs: usize, client: Option<String>) {
    let list = workloads(scale);
    let (Some(read), Some(drop)) = (
        list.iter().find(|w| w.name == "read-64k"),
        list.iter().find(|w| w.name == "drop-64k"),
    ) else {
        return;
    };
    let drop = Workload {
        requests: read.requests,
        ..*drop
    };
    println!(
        "| client | pair | drop req/s | read req/s | drop / read | CPU µs/request drop | read |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for name in ["hyper-util guarded", "reqwest guarded"] {
        if client.as_deref().is_some_and(|c| c != name) {
            continue;
        }
        let mut ratios = Vec::new();
        for pair in 0..pairs {
            let order = if pair % 2 == 0 {
                [&drop, read]
            } else {
                [read, &drop]
            };
            let mut rps = [0.0f64; 2];
            let mut cpu = [Duration::ZERO; 2];
            for w in order {
                let rows = run(w, 0, Some(name)).await;
                let slot = usize::from(w.name == "read-64k");
                rps[slot] = rows.first().map_or(0.0, |r| r.rps);
                cpu[slot] = rows.first().map_or(Duration::ZERO, |r| r.cpu_per_request);
            }
            let ratio = rps[0] / rps[1];
            println!(
                "| {name} | {} | {:.0} | {:.0} | {ratio:.3} | {:.1} | {:.1} |",
                pair + 1,
                rps[0],
                rps[1],
                cpu[0].as_secs_f64() * 1e6,
                cpu[1].as_secs_f64() * 1e6,
            );
            ratios.push(ratio);
        }
        ratios.sort_by(f64::total_cmp);
        summary.push((name, ratios));
    }
    println!();
    println!("| client | drop / read median | min–max ({pairs} pairs) |");
    println!("|---|---:|---:|");
    for (name, ratios) in summary {
        if let (Some(min), Some(max)) = (ratios.first(), ratios.last()) {
            println!(
                "| {name} | {:.3} | {min:.3}–{max:.3} |",
                ratios[ratios.len() / 2]
            );
        }
    }
}

/// The run as a chart: per workload, each client's dials (the server's
/// accepts) and req/s, on log scales.
mod chart {
    use super::Row;
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    const CLIENTS: [(&str, RGBColor); 4] = [
        ("hyper-util bare", RGBColor(0xd6, 0x27, 0x28)),
        ("hyper-util guarded", RGBColor(0x2c, 0xa0, 0x2c)),
        ("reqwest bare", RGBColor(0xff, 0x7f, 0x0e)),
        ("reqwest guarded", RGBColor(0x1f, 0x77, 0xb4)),
    ];

    pub fn write(path: &str, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
        let mut workloads: Vec<&str> = Vec::new();
        for r in rows {
            if !workloads.contains(&r.workload) {
                workloads.push(r.workload);
            }
        }
        let n = workloads.len().max(1);
        let width = (160 + 90 * n).max(800) as u32;
        let root = SVGBackend::new(path, (width, 760)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(380);
        type Value = fn(&Row) -> f64;
        let panels: [(_, &str, Value); 2] = [
            (
                top,
                "connections dialed (server accepts; log scale; lower is better)",
                |r| r.accepts as f64,
            ),
            (
                bottom,
                "requests per second (log scale; higher is better)",
                |r| r.rps,
            ),
        ];
        for (i, (area, title, value)) in panels.into_iter().enumerate() {
            let max = rows.iter().map(value).fold(1.0f64, f64::max);
            let mut chart = ChartBuilder::on(&area)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(if i == 1 { 70 } else { 40 })
                .y_label_area_size(70)
                // Headroom above the tallest bar for the legend.
                .build_cartesian_2d(0f64..n as f64, (0.8f64..max * 40.0).log_scale())?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_x_axis()
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()?;
            for (c, (client, color)) in CLIENTS.iter().enumerate() {
                let bars = rows.iter().filter(|r| r.client == *client).filter_map(|r| {
                    let w = workloads.iter().position(|w| *w == r.workload)?;
                    let x0 = w as f64 + 0.1 + 0.2 * c as f64;
                    Some(Rectangle::new(
                        [(x0, 0.8), (x0 + 0.18, value(r).max(0.8))],
                        color.filled(),
                    ))
                });
                let series = chart.draw_series(bars)?;
                if i == 0 {
                    series.label(*client).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
                }
            }
            if i == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.9))
                    .border_style(BLACK)
                    .draw()?;
            }
            // Workload names under the bars.
            let style = TextStyle::from(("sans-serif", 13).into_font())
                .pos(Pos::new(HPos::Center, VPos::Top));
            for (w, name) in workloads.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(w as f64 + 0.5, 0.8));
                root.draw(&Text::new(name.to_string(), (x, y + 6), style.clone()))?;
            }
        }
        root.present()?;
        Ok(())
    }
}
