//! An HTTP/2 server (h2c, prior knowledge) that sheds load by refusing
//! streams (`REFUSED_STREAM`), built on the `h2` crate so that it can.

use std::sync::atomic::Ordering;

use super::servers::{listen, Server};

/// Refuses one stream in `every` (1: all of them) with `REFUSED_STREAM`,
/// answers the others `200` with 2 bytes. Every stream counts in
/// [`Stats::requests`](crate::Stats::requests): attempts, as the server
/// saw them.
pub async fn serve_refusing(every: usize) -> Server {
    let every = every.max(1);
    listen(move |stream, stats| async move {
        let Ok(mut conn) = h2::server::handshake(stream).await else {
            return;
        };
        while let Some(Ok((_request, mut respond))) = conn.accept().await {
            let n = stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
            if n % every == 0 {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                continue;
            }
            let response = http::Response::new(());
            if let Ok(mut body) = respond.send_response(response, false) {
                let _ = body.send_data(bytes::Bytes::from_static(b"ok"), true);
            }
        }
    })
    .await
}
