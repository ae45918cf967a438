//! A raw HTTP/1 server that plays one scripted response: the peer of the
//! framing tests, served alike to a bare and to a guarded client.
//!
//! The first request the server gets is answered with the script's bytes,
//! written in its pieces (each after its pause), and the connection then
//! closes or waits for the next request as the script says. Every other
//! request that is the first on its connection is answered
//! `200 OK` / `ok`. A request that arrives on a connection which already
//! carried one is read and left unanswered: the server closes the
//! connection at once, as a server whose keep-alive timer fired as the
//! request arrived does (the stale-connection race, made certain).
//!
//! Every request head is recorded with its connection and its place on
//! it: the ground truth of what was sent, and how often.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::servers::{listen, Server};

/// What a [`serve_script`] server answers to the first request it gets.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// The response's bytes, in pieces: each written after its pause.
    pub pieces: Vec<(Duration, Vec<u8>)>,
    /// Close the connection once the pieces are written (a body delimited
    /// by the close); otherwise wait for the next request on it.
    pub close: bool,
}

impl Script {
    /// The whole response written at once, the connection kept open.
    pub fn once(bytes: impl Into<Vec<u8>>) -> Script {
        Script {
            pieces: vec![(Duration::ZERO, bytes.into())],
            close: false,
        }
    }

    /// The same, the connection closed after it.
    pub fn closing(mut self) -> Script {
        self.close = true;
        self
    }

    /// All the bytes of the response.
    pub fn bytes(&self) -> Vec<u8> {
        self.pieces.iter().flat_map(|(_, p)| p.clone()).collect()
    }
}

/// A request head as a [`serve_script`] server read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenHead {
    /// The connection it came on, numbered from 1 in accept order.
    pub conn: usize,
    /// Its place on that connection, from 1.
    pub nth: usize,
    /// The request line and headers, as text.
    pub text: String,
}

impl SeenHead {
    /// The request target (path and query).
    pub fn path(&self) -> &str {
        self.text.split(' ').nth(1).unwrap_or("")
    }
}

/// A running [`serve_script`] server and what it saw.
pub struct ScriptServer {
    pub server: Server,
    heads: Arc<Mutex<Vec<SeenHead>>>,
}

impl ScriptServer {
    /// Every request head received so far, in order.
    pub fn heads(&self) -> Vec<SeenHead> {
        self.heads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many heads for `path` were received.
    pub fn sent(&self, path: &str) -> usize {
        self.heads().iter().filter(|h| h.path() == path).count()
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn uri(&self, path: &str) -> http::Uri {
        self.server.uri(path)
    }
}

/// The answer of every first request on a connection after the script's.
pub const PLAIN_OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Starts a scripted server on 127.0.0.1:0. See the module docs.
pub async fn serve_script(script: Script) -> ScriptServer {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let played = Arc::new(AtomicBool::new(false));
    let conns = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    let seen = heads.clone();
    let server = listen(move |mut stream, stats| {
        let (heads, played, script) = (seen.clone(), played.clone(), script.clone());
        let conn = conns.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut pending = Vec::new();
            let mut nth = 0;
            loop {
                let end = loop {
                    if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end;
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            stats.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                };
                nth += 1;
                let text = String::from_utf8_lossy(&pending[..end]).into_owned();
                pending.drain(..end + 4);
                // The request body (Content-Length only: the tests send
                // sized bodies).
                let body = text
                    .lines()
                    .skip(1)
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while pending.len() < body {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                pending.drain(..body);
                heads
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(SeenHead { conn, nth, text });
                stats.requests.fetch_add(1, Ordering::SeqCst);
                if nth > 1 {
                    // The stale race: the request arrived as the server
                    // closed the connection.
                    return;
                }
                if played.swap(true, Ordering::SeqCst) {
                    if stream.write_all(PLAIN_OK).await.is_err() {
                        return;
                    }
                    continue;
                }
                for (pause, piece) in &script.pieces {
                    if !pause.is_zero() {
                        tokio::time::sleep(*pause).await;
                    }
                    if stream.write_all(piece).await.is_err() {
                        return;
                    }
                    let _ = stream.flush().await;
                }
                if script.close {
                    return;
                }
            }
        }
    })
    .await;
    ScriptServer { server, heads }
}
