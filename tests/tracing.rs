//! What the guard tells `tracing`: fields recorded on the caller's span,
//! a debug event per response and one per connection closed, checked with
//! a minimal subscriber that keeps what it is given.
#![cfg(feature = "hyper-util")]

use poolguard_testkit as support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use poolguard::PoolGuard;
use tower::{Layer, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Field values as text, by name.
type Fields = HashMap<String, String>;

#[derive(Default)]
struct Kept {
    /// Fields recorded on spans, by span id.
    spans: HashMap<u64, Fields>,
    /// Each span's metadata, by id.
    metadata: HashMap<u64, &'static Metadata<'static>>,
    /// The spans entered, innermost last (one thread).
    entered: Vec<u64>,
    /// Events: their message and fields.
    events: Vec<Fields>,
}

#[derive(Clone, Default)]
struct Keeper {
    kept: Arc<Mutex<Kept>>,
    next: Arc<AtomicU64>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Keeper {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = Fields::new();
        span.record(&mut Collect(&mut fields));
        let mut kept = self.kept.lock().unwrap();
        kept.spans.insert(id, fields);
        kept.metadata.insert(id, span.metadata());
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut kept = self.kept.lock().unwrap();
        let fields = kept.spans.entry(span.into_u64()).or_default();
        values.record(&mut Collect(fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        self.kept.lock().unwrap().events.push(fields);
    }
    fn enter(&self, span: &Id) {
        self.kept.lock().unwrap().entered.push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut kept = self.kept.lock().unwrap();
        if let Some(at) = kept.entered.iter().rposition(|id| *id == span.into_u64()) {
            kept.entered.remove(at);
        }
    }
    fn current_span(&self) -> tracing_core::span::Current {
        let kept = self.kept.lock().unwrap();
        match kept.entered.last() {
            Some(id) => tracing_core::span::Current::new(Id::from_u64(*id), kept.metadata[id]),
            None => tracing_core::span::Current::none(),
        }
    }
}

#[test]
fn responses_and_closes_are_told_to_tracing() {
    let keeper = Keeper::default();
    let dispatch = tracing::Dispatch::new(keeper.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every task of the runtime, the connection's included, reports to the
    // keeper.
    let _default = tracing::dispatcher::set_default(&dispatch);
    runtime.block_on(async {
        let server = support::serve().await;
        let guard = PoolGuard::builder().build();
        let client = Client::builder(TokioExecutor::new())
            .build::<_, Empty<Bytes>>(guard.connector(HttpConnector::new()));
        let svc = guard.layer().layer(client);
        for path in ["/bytes/10", "/close/10"] {
            let span = tracing::info_span!(
                "request",
                poolguard.connection.reused = tracing::field::Empty,
                poolguard.connection.id = tracing::field::Empty,
                http.client.request.time_in_queue = tracing::field::Empty,
            );
            let req = http::Request::get(server.uri(path))
                .body(Empty::new())
                .unwrap();
            let response = tracing::Instrument::instrument(svc.clone().oneshot(req), span)
                .await
                .unwrap();
            response.into_body().collect().await.unwrap();
        }
        // The second response said `Connection: close`: let it close.
        for _ in 0..500 {
            if server.stats.open() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(server.stats.accepted(), 1);
    });
    let kept = keeper.kept.lock().unwrap();
    let spans: Vec<&Fields> = {
        let mut ids: Vec<&u64> = kept.spans.keys().collect();
        ids.sort();
        ids.into_iter().map(|id| &kept.spans[id]).collect()
    };
    let requests: Vec<&&Fields> = spans
        .iter()
        .filter(|f| f.contains_key("poolguard.connection.reused"))
        .collect();
    assert_eq!(
        requests.len(),
        2,
        "both request spans were recorded on: {spans:?}"
    );
    assert_eq!(requests[0]["poolguard.connection.reused"], "false");
    assert_eq!(requests[1]["poolguard.connection.reused"], "true");
    assert_eq!(requests[0]["poolguard.connection.id"], "1");
    assert_eq!(requests[1]["poolguard.connection.id"], "1");
    assert!(requests[0].contains_key("http.client.request.time_in_queue"));
    let responses = kept
        .events
        .iter()
        .filter(|e| e.get("message").is_some_and(|m| m == "poolguard: response"))
        .count();
    assert_eq!(responses, 2);
    let closes: Vec<&Fields> = kept
        .events
        .iter()
        .filter(|e| {
            e.get("message")
                .is_some_and(|m| m == "poolguard: connection closed")
        })
        .collect();
    assert_eq!(closes.len(), 1, "{:?}", kept.events);
    assert_eq!(closes[0]["reason"], "\"connection_close\"");
}
