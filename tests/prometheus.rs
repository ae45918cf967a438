//! The Prometheus example's output against the server's own counts: the
//! test runs the example's code (its `run`), in a binary of its own, since
//! the exporter is installed as the process's recorder.
#![cfg(all(feature = "metrics", feature = "hyper-util"))]

#[path = "../examples/prometheus.rs"]
mod example;

/// The value of the first sample line of `name` whose labels contain all
/// of `with` (exact series name: `name{` or `name `).
fn sample(text: &str, name: &str, with: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| with.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scraped_figures_agree_with_the_server() {
    let scraped = example::run(500).await.expect("the example runs");
    let text = &scraped.text;
    let guard = "poolguard_guard=\"example\"";
    println!(
        "server: {} accepted, {} open at the scrape",
        scraped.accepted, scraped.open
    );

    let opened = sample(text, "poolguard_connections_opened", &[guard]).expect("opened");
    assert_eq!(
        opened, scraped.accepted as f64,
        "dials = the server's accepts"
    );
    let idle = sample(
        text,
        "http_client_open_connections",
        &[
            "http_connection_state=\"idle\"",
            "server_address=\"127.0.0.1\"",
            guard,
        ],
    )
    .expect("the idle series");
    let active = sample(
        text,
        "http_client_open_connections",
        &["http_connection_state=\"active\"", guard],
    )
    .expect("the active series");
    assert_eq!(active, 0.0, "nothing in flight at the scrape");
    assert_eq!(
        idle, scraped.open as f64,
        "idle = what the server holds open"
    );
    let closed = (scraped.accepted - scraped.open) as f64;
    assert_eq!(
        sample(text, "poolguard_connections_closed", &["connection_close"]),
        Some(closed),
        "every close had the server's Connection: close"
    );
    assert_eq!(
        sample(text, "http_client_connection_duration_count", &[guard]),
        Some(closed)
    );
    assert!(
        sample(text, "http_client_request_time_in_queue_count", &[guard]).is_some_and(|n| n > 0.0)
    );
    assert_eq!(sample(text, "poolguard_requests", &[guard]), Some(500.0));
    assert_eq!(sample(text, "poolguard_responses", &[guard]), Some(500.0));
    // Described, with units.
    assert!(text.contains("# HELP http_client_open_connections"));
    assert!(text.contains("# TYPE http_client_connection_duration summary"));
}
