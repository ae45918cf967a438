//! Raw HTTP/1.1 servers that break the rules: stale connections, resets,
//! partial responses, idle timeouts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::servers::{listen, Server};

/// A raw HTTP/1.1 server that answers a request with a 2-byte keep-alive
/// response, and closes the connection silently `after` it (a stale pooled
/// connection, from the client's side).
pub async fn serve_closing_idle(after: Duration) -> Server {
    serve_raw(move || {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            After::CloseLater(after),
        )
    })
    .await
}

/// What a [`serve_raw`] server does after writing a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Wait for the next request on the connection.
    KeepAlive,
    /// Close the connection (FIN).
    Close,
    /// Close the connection (FIN) after a pause, without saying so.
    CloseLater(Duration),
    /// Reset the connection (RST, with `SO_LINGER` 0).
    Reset,
    /// Wait for the next request, but close the connection (FIN, counted
    /// in `idle_closed`) if its first byte does not come within this time:
    /// a server's keep-alive idle timeout.
    IdleTimeout(Duration),
}

/// A request head as a [`serve_raw_with`] server read it.
#[derive(Debug)]
pub struct Head {
    /// The head, as text.
    pub text: String,
    /// The request's number on its connection, from 1.
    pub nth: usize,
}

impl Head {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The request method.
    pub fn method(&self) -> &str {
        self.text.split(' ').next().unwrap_or("")
    }
}

/// A raw HTTP/1.1 server that answers each request with the bytes
/// `respond` returns, then does what it says: a peer that breaks the rules.
pub async fn serve_raw<F>(respond: F) -> Server
where
    F: Fn() -> (Vec<u8>, After) + Send + Sync + 'static,
{
    serve_raw_with(move |_| respond()).await
}

/// A raw server whose `/redirect` answers `302` to `/final`, which answers
/// `ok` (with an `x-final: yes` header); connections kept alive.
pub async fn serve_redirecting() -> Server {
    serve_raw_with(|head: &Head| {
        let path = head.text.split(' ').nth(1).unwrap_or("/");
        let bytes: &[u8] = if path == "/redirect" {
            b"HTTP/1.1 302 Found\r\nlocation: /final\r\ncontent-length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nx-final: yes\r\ncontent-length: 2\r\n\r\nok"
        };
        (bytes.to_vec(), After::KeepAlive)
    })
    .await
}

/// [`serve_raw`], answering each request by its head.
pub async fn serve_raw_with<F>(respond: F) -> Server
where
    F: Fn(&Head) -> (Vec<u8>, After) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let respond = Arc::new(respond);
    listen(move |mut stream, stats| {
        let respond = respond.clone();
        async move {
            let mut buf = vec![0u8; 8192];
            let mut seen = Vec::new();
            let mut idle_timeout = None;
            let mut nth = 0;
            loop {
                // Read one request head, within the idle timeout if the
                // last response set one.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let read = match idle_timeout.take().filter(|_| seen.is_empty()) {
                        Some(limit) => {
                            match tokio::time::timeout(limit, stream.read(&mut buf)).await {
                                Ok(read) => read,
                                Err(_) => {
                                    stats.idle_closed.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                            }
                        }
                        None => stream.read(&mut buf).await,
                    };
                    match read {
                        Ok(0) | Err(_) => {
                            stats.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return;
                };
                nth += 1;
                let head = Head {
                    text: String::from_utf8_lossy(&seen[..end]).into_owned(),
                    nth,
                };
                seen.drain(..end + 4);
                // Skip the request body (Content-Length only).
                let body: usize = head
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while seen.len() < body {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                seen.drain(..body);
                stats.requests.fetch_add(1, Ordering::SeqCst);
                let (bytes, after) = respond(&head);
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
                match after {
                    After::KeepAlive => continue,
                    After::IdleTimeout(limit) => idle_timeout = Some(limit),
                    After::Close => return,
                    After::CloseLater(pause) => {
                        tokio::time::sleep(pause).await;
                        return;
                    }
                    After::Reset => {
                        let _ = stream.set_zero_linger();
                        return;
                    }
                }
            }
        }
    })
    .await
}
