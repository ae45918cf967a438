//! An HTTP/2 server (h2c, prior knowledge) that sheds load by refusing
//! streams (`REFUSED_STREAM`), built on the `h2` crate so that it can.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use super::servers::{listen, Server};

/// Refuses one stream in `every` (1: all of them) with `REFUSED_STREAM`,
/// answers the others `200` with 2 bytes. Every stream counts in
/// [`Stats::requests`](crate::Stats::requests): attempts, as the server
/// saw them.
///
/// With `every` above 1, a request that carries an `x-id` is refused at
/// most once: by the count alone, a request resent at the cadence of the
/// other streams lands on every `every`-th stream again and again (seen:
/// one request refused 6 times running, past any client's resends), a
/// refusal rate of 100 % for that request rather than one in `every`.
pub async fn serve_refusing(every: usize) -> Server {
    let every = every.max(1);
    let refused = Arc::new(Mutex::new(HashSet::<Vec<u8>>::new()));
    listen(move |stream, stats| {
        let refused = refused.clone();
        async move {
            let Ok(mut conn) = h2::server::handshake(stream).await else {
                return;
            };
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                let n = stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
                let again = every > 1
                    && request.headers().get("x-id").is_some_and(|id| {
                        let mut refused = refused.lock().unwrap_or_else(PoisonError::into_inner);
                        let seen = refused.contains(id.as_bytes());
                        if !seen && n % every == 0 {
                            refused.insert(id.as_bytes().to_vec());
                        }
                        seen
                    });
                if n % every == 0 && !again {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                let response = http::Response::new(());
                if let Ok(mut body) = respond.send_response(response, false) {
                    let _ = body.send_data(bytes::Bytes::from_static(b"ok"), true);
                }
            }
        }
    })
    .await
}
