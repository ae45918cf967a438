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
    for line in text
        .lines()
        .filter(|l| l.starts_with("poolguard_connections_closed{"))
    {
        println!("{line}");
    }

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
    // Each of the 50 `/close` answers closed its connection, and every
    // close the server saw is counted under some reason. A dial that raced
    // a connection coming back to hyper-util's pool can leave one more
    // connection, closed for another reason (`closed_idle`, seen in about
    // 1 run of 20): so not every close is a `connection_close`.
    assert_eq!(
        sample(text, "poolguard_connections_closed", &["connection_close"]),
        Some(50.0),
        "every Connection: close answer closed its connection"
    );
    let by_reason: f64 = text
        .lines()
        .filter(|l| l.starts_with("poolguard_connections_closed{") && l.contains(guard))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(by_reason, closed, "every close counted, with a reason");
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
