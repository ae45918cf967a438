//! What one HTTP/1 connection is doing, read off the bytes that cross it.
//!
//! The connection's IO wrapper feeds every byte hyper writes and reads into
//! a [`Tracker`], which follows the framing of each exchange (request head
//! and body, interim 1xx responses, final response head and body) the way
//! RFC 9112 frames messages. So the connection knows exactly when it is idle
//! (both messages of its last exchange complete), whether a response to the
//! current request has begun (1xx included), how many exchanges it
//! completed, and when it stopped being HTTP/1 (an upgrade, a `CONNECT`
//! tunnel, an HTTP/2 preface, or bytes it cannot frame).
//!
//! The tracker never fails and never guesses: bytes it cannot frame make the
//! connection [`Phase::Unknown`] for good, and every policy built on it
//! (idle retirement, stale retries) treats an unknown connection as busy and
//! never retries on it.

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
use super::keep_alive::KeepAlive;
use super::Phase;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes of one message head the tracker buffers (hyper's own
/// default read buffer limit is about 400 KiB); a longer head is
/// [`Phase::Unknown`].
const MAX_HEAD: usize = 512 * 1024;

/// Header fields parsed per head; a head with more is [`Phase::Unknown`]
/// (hyper refuses more than 100 by default).
const MAX_HEADERS: usize = 128;

/// What one call to the tracker changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Nothing the connection's owner acts on.
    None,
    /// A new exchange began: the first bytes of a request were written.
    Started,
    /// The exchange completed: the connection is idle.
    Completed,
    /// The connection was upgraded (101, or a `CONNECT` tunnel opened).
    Upgraded,
    /// The connection became HTTP/2 or unknown.
    Left,
}

/// How a message body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `remaining` bytes left (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
}

/// Where a chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far, and whether a digit was read.
    Size(u64, bool),
    /// In a chunk extension, up to the end of the line.
    Extension(u64),
    /// After the `\r` of a size line.
    SizeLf(u64),
    /// In chunk data: bytes left.
    Data(u64),
    /// After chunk data: expecting `\r`.
    DataCr,
    /// After chunk data's `\r`: expecting `\n`.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer line, up to its end.
    TrailerLine,
    /// After the `\r` of the final empty line.
    EndLf,
}

/// One side of the current exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Nothing of this message yet.
    Before,
    /// Inside the head.
    Head,
    /// Inside the body.
    Body(Framing),
    /// Bytes that break the body's framing.
    Broken,
    /// The message is complete.
    Done,
}

/// Follows the exchanges of one HTTP/1 connection. See the module docs.
#[derive(Debug)]
pub(crate) struct Tracker {
    phase: Phase,
    request: Side,
    response: Side,
    /// The current request was `HEAD` (its response has no body).
    head_request: bool,
    /// The current request was `CONNECT` (a 2xx opens a tunnel).
    connect_request: bool,
    /// Bytes of a head not yet complete.
    buf: Vec<u8>,
    completed: u64,
    /// The `Keep-Alive` header of the last final response.
    keep_alive: Option<KeepAlive>,
    /// A request or a final response said the connection ends after it
    /// (`Connection: close`, or an HTTP/1.0 response without
    /// `Connection: keep-alive`).
    closing: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    /// A tracker for a new connection.
    pub(crate) fn new() -> Self {
        Tracker {
            phase: Phase::Idle,
            request: Side::Before,
            response: Side::Before,
            head_request: false,
            connect_request: false,
            buf: Vec::new(),
            completed: 0,
            keep_alive: None,
            closing: false,
        }
    }

    /// The `Keep-Alive` header of the last final response, if it had one.
    pub(crate) fn keep_alive(&self) -> Option<KeepAlive> {
        self.keep_alive
    }

    /// Whether a request or a final response said the connection ends
    /// after its exchange.
    pub(crate) fn closing(&self) -> bool {
        self.closing
    }

    /// What the connection is doing now.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Exchanges completed on the connection.
    pub(crate) fn completed(&self) -> u64 {
        self.completed
    }

    /// `bytes` were written to the peer (only what the IO accepted).
    pub(crate) fn wrote(&mut self, mut bytes: &[u8]) -> Event {
        let mut event = Event::None;
        while !bytes.is_empty() && self.is_http1() {
            if self.phase == Phase::Idle {
                // hyper does not pipeline: the first byte written on an idle
                // connection starts the next request.
                self.request = Side::Head;
                self.response = Side::Before;
                self.head_request = false;
                self.connect_request = false;
                self.buf.clear();
                self.phase = Phase::Requesting;
                event = Event::Started;
            }
            let used = match self.request {
                Side::Head => self.request_head(bytes),
                Side::Body(framing) => {
                    let (used, next) = body(framing, bytes);
                    if next == Side::Broken {
                        return self.leave(Phase::Unknown);
                    }
                    self.request = next;
                    used
                }
                // A request has no close-delimited body; bytes past its end
                // are bytes the tracker cannot place.
                Side::Before | Side::Broken | Side::Done => {
                    return self.leave(Phase::Unknown);
                }
            };
            bytes = &bytes[used.min(bytes.len())..];
            if let Some(e) = self.after_step() {
                event = e;
            }
        }
        event
    }

    /// `bytes` were read from the peer.
    pub(crate) fn read(&mut self, mut bytes: &[u8]) -> Event {
        let mut event = Event::None;
        while !bytes.is_empty() && self.is_http1() {
            if self.phase == Phase::Idle {
                // Bytes no request asked for: hyper closes such a
                // connection; nothing more is known of it.
                return self.leave(Phase::Unknown);
            }
            self.phase = Phase::Responding;
            if self.response == Side::Before {
                self.response = Side::Head;
                self.buf.clear();
            }
            let used = match self.response {
                Side::Head => self.response_head(bytes),
                Side::Body(framing) => {
                    let (used, next) = body(framing, bytes);
                    if next == Side::Broken {
                        // Malformed chunking: hyper fails the body.
                        return self.leave(Phase::Unknown);
                    }
                    self.response = next;
                    used
                }
                Side::Before | Side::Broken | Side::Done => return self.leave(Phase::Unknown),
            };
            bytes = &bytes[used.min(bytes.len())..];
            if let Some(e) = self.after_step() {
                event = e;
            }
        }
        event
    }

    fn is_http1(&self) -> bool {
        self.phase.is_http1()
    }

    fn leave(&mut self, phase: Phase) -> Event {
        self.phase = phase;
        self.buf = Vec::new();
        Event::Left
    }

    /// Settles the phase after a step of either side.
    fn after_step(&mut self) -> Option<Event> {
        if !self.is_http1() {
            return Some(if self.phase == Phase::Upgraded {
                Event::Upgraded
            } else {
                Event::Left
            });
        }
        if self.request == Side::Done && self.response == Side::Done {
            self.phase = Phase::Idle;
            self.request = Side::Before;
            self.response = Side::Before;
            self.completed = self.completed.saturating_add(1);
            return Some(Event::Completed);
        }
        if self.phase == Phase::Requesting && self.request == Side::Done {
            self.phase = Phase::Awaiting;
        }
        None
    }

    /// Feeds `bytes` to the request head; returns how many it used.
    fn request_head(&mut self, bytes: &[u8]) -> usize {
        if self.completed == 0 {
            // The first request of a connection may be HTTP/2's preface.
            let seen = self.buf.len();
            let have = (seen + bytes.len()).min(H2_PREFACE.len());
            let mut prefix = self.buf.clone();
            prefix.extend_from_slice(&bytes[..have.saturating_sub(seen).min(bytes.len())]);
            if H2_PREFACE.starts_with(&prefix) {
                if prefix.len() == H2_PREFACE.len() {
                    self.leave(Phase::Http2);
                    return bytes.len();
                }
                self.buf = prefix;
                return bytes.len();
            }
        }
        let (used, head) = match take_head(&mut self.buf, bytes, parse_request) {
            Step::Partial => return bytes.len(),
            Step::Invalid => {
                self.leave(Phase::Unknown);
                return bytes.len();
            }
            Step::Complete(used, head) => (used, head),
        };
        self.head_request = head.method == Method::Head;
        self.connect_request = head.method == Method::Connect;
        self.closing |= head.close;
        self.request = match head.framing {
            // A request without framing headers has no body (RFC 9112 §6.3).
            None | Some(Framing::Length(0)) => Side::Done,
            Some(framing) => Side::Body(framing),
        };
        if head.invalid_framing {
            self.leave(Phase::Unknown);
        }
        used
    }

    /// Feeds `bytes` to the response head; returns how many it used.
    fn response_head(&mut self, bytes: &[u8]) -> usize {
        let (used, head) = match take_head(&mut self.buf, bytes, parse_response) {
            Step::Partial => return bytes.len(),
            Step::Invalid => {
                self.leave(Phase::Unknown);
                return bytes.len();
            }
            Step::Complete(used, head) => (used, head),
        };
        let status = head.status;
        if status == 101 || (self.connect_request && (200..300).contains(&status)) {
            self.phase = Phase::Upgraded;
            self.buf = Vec::new();
            return used;
        }
        if (100..200).contains(&status) {
            // Interim: the final response's head comes next.
            self.response = Side::Before;
            return used;
        }
        self.keep_alive = head.keep_alive;
        self.closing |= head.close;
        if self.head_request || status == 204 || status == 304 {
            self.response = Side::Done;
            return used;
        }
        match head.framing {
            _ if head.invalid_framing => {
                self.leave(Phase::Unknown);
            }
            Some(Framing::Length(0)) => self.response = Side::Done,
            Some(framing) => self.response = Side::Body(framing),
            // Delimited by the connection's close: nothing after it.
            None => {
                self.leave(Phase::Unknown);
            }
        }
        used
    }
}

/// A request method that changes how the response is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Head,
    Connect,
    Other,
}

/// What the tracker needs of a message head.
#[derive(Clone, Copy, Debug)]
struct Head {
    method: Method,
    status: u16,
    framing: Option<Framing>,
    /// Conflicting or malformed framing headers.
    invalid_framing: bool,
    /// A response's `Keep-Alive` header.
    keep_alive: Option<KeepAlive>,
    /// The message ends its connection.
    close: bool,
}

enum Step {
    Partial,
    Invalid,
    /// Bytes of the new input the head used, and the head.
    Complete(usize, Head),
}

enum Parsed {
    Partial,
    Invalid,
    Complete(usize, Head),
}

/// Finds a complete head in `buf` followed by `bytes`, parsing in place
/// when `buf` is empty and the head is whole in `bytes`.
fn take_head(buf: &mut Vec<u8>, bytes: &[u8], parse: fn(&[u8]) -> Parsed) -> Step {
    if buf.is_empty() {
        match parse(bytes) {
            Parsed::Complete(n, head) => return Step::Complete(n, head),
            Parsed::Invalid => return Step::Invalid,
            Parsed::Partial => {}
        }
    }
    let before = buf.len();
    if before.saturating_add(bytes.len()) > MAX_HEAD {
        return Step::Invalid;
    }
    buf.extend_from_slice(bytes);
    if before == 0 {
        // Parsed above: still partial.
        return Step::Partial;
    }
    match parse(buf) {
        Parsed::Complete(n, head) => {
            buf.clear();
            Step::Complete(n.saturating_sub(before), head)
        }
        Parsed::Invalid => Step::Invalid,
        Parsed::Partial => Step::Partial,
    }
}

fn parse_request(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => {
            let method = match req.method {
                Some(m) if m.eq_ignore_ascii_case("HEAD") => Method::Head,
                Some(m) if m.eq_ignore_ascii_case("CONNECT") => Method::Connect,
                _ => Method::Other,
            };
            let mut head = framing_of(req.headers);
            head.method = method;
            Parsed::Complete(n, head)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

fn parse_response(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => {
            let mut head = framing_of(res.headers);
            head.status = res.code.unwrap_or(0);
            if res.version == Some(0) {
                // HTTP/1.0 keeps a connection only when it says so.
                head.close = !connection_has(res.headers, "keep-alive");
            }
            head.keep_alive = KeepAlive::parse(
                res.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("keep-alive"))
                    .map(|h| h.value),
            );
            Parsed::Complete(n, head)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

/// Whether a `Connection` field of `headers` lists `token`.
fn connection_has(headers: &[httparse::Header<'_>], token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The body framing a head's fields say (RFC 9112 §6.1–6.3).
fn framing_of(headers: &[httparse::Header<'_>]) -> Head {
    let mut head = Head {
        method: Method::Other,
        status: 0,
        framing: None,
        invalid_framing: false,
        keep_alive: None,
        close: connection_has(headers, "close"),
    };
    let mut length: Option<u64> = None;
    let mut encoded = false;
    let mut chunked_last = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            let Ok(value) = std::str::from_utf8(h.value) else {
                head.invalid_framing = true;
                continue;
            };
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                chunked_last = coding.eq_ignore_ascii_case("chunked");
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value).ok().and_then(|v| {
                // A list of equal values is one length (RFC 9110 §8.6).
                let mut values = v.split(',').map(|n| n.trim().parse::<u64>());
                let first = values.next()?.ok()?;
                values.all(|n| n == Ok(first)).then_some(first)
            });
            match (parsed, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => head.invalid_framing = true,
            }
        }
    }
    if encoded {
        // Transfer-Encoding overrides Content-Length.
        // Without `chunked` last, a response is delimited by the close.
        if chunked_last {
            head.framing = Some(Framing::Chunked(Chunk::Size(0, false)));
        }
    } else if let Some(n) = length {
        head.framing = Some(Framing::Length(n));
    }
    head
}

/// Feeds `bytes` to a body framed by `framing`: how many it used, and where
/// the body is then.
fn body(framing: Framing, bytes: &[u8]) -> (usize, Side) {
    match framing {
        Framing::Length(left) => {
            let take = u64::try_from(bytes.len()).unwrap_or(u64::MAX).min(left);
            let left = left - take;
            // `take` is at most `bytes.len()`.
            let used = usize::try_from(take).unwrap_or(bytes.len());
            if left == 0 {
                (used, Side::Done)
            } else {
                (used, Side::Body(Framing::Length(left)))
            }
        }
        Framing::Chunked(state) => chunked(state, bytes),
    }
}

/// Runs the chunked decoder over `bytes` until the body ends or the bytes do.
fn chunked(mut state: Chunk, bytes: &[u8]) -> (usize, Side) {
    let mut at = 0;
    while at < bytes.len() {
        if let Chunk::Data(left) = state {
            let avail = u64::try_from(bytes.len() - at).unwrap_or(u64::MAX);
            let take = avail.min(left);
            at += usize::try_from(take).unwrap_or(0);
            state = if left == take {
                Chunk::DataCr
            } else {
                Chunk::Data(left - take)
            };
            continue;
        }
        let b = bytes[at];
        at += 1;
        state = match state {
            Chunk::Size(size, digits) => match hex(b) {
                Some(d) => match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                    Some(size) => Chunk::Size(size, true),
                    None => return (at, Side::Broken),
                },
                None if !digits => return (at, Side::Broken),
                None => match b {
                    b'\r' => Chunk::SizeLf(size),
                    b'\n' => after_size(size),
                    b';' | b' ' | b'\t' => Chunk::Extension(size),
                    _ => return (at, Side::Broken),
                },
            },
            Chunk::Extension(size) => match b {
                b'\r' => Chunk::SizeLf(size),
                b'\n' => after_size(size),
                _ => Chunk::Extension(size),
            },
            Chunk::SizeLf(size) => match b {
                b'\n' => after_size(size),
                _ => return (at, Side::Broken),
            },
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                b'\n' => Chunk::Size(0, false),
                _ => return (at, Side::Broken),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size(0, false),
                _ => return (at, Side::Broken),
            },
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                b'\n' => return (at, Side::Done),
                _ => Chunk::TrailerLine,
            },
            Chunk::TrailerLine => match b {
                b'\n' => Chunk::TrailerStart,
                _ => Chunk::TrailerLine,
            },
            Chunk::EndLf => match b {
                b'\n' => return (at, Side::Done),
                _ => return (at, Side::Broken),
            },
            // Handled above.
            Chunk::Data(left) => Chunk::Data(left),
        };
    }
    (at, Side::Body(Framing::Chunked(state)))
}

fn after_size(size: u64) -> Chunk {
    if size == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data(size)
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    /// Feeds `bytes` one byte at a time; returns the events that were not
    /// `None`.
    fn read_bytewise(t: &mut Tracker, bytes: &[u8]) -> Vec<Event> {
        bytes
            .chunks(1)
            .map(|b| t.read(b))
            .filter(|e| *e != Event::None)
            .collect()
    }

    #[test]
    fn exchanges_with_content_length_complete_and_count() {
        let mut t = Tracker::new();
        assert_eq!(t.phase(), Phase::Idle);
        assert_eq!(t.wrote(GET), Event::Started);
        assert_eq!(t.phase(), Phase::Awaiting);
        assert_eq!(
            t.read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel"),
            Event::None
        );
        assert_eq!(t.phase(), Phase::Responding);
        assert_eq!(t.read(b"lo"), Event::Completed);
        assert_eq!((t.phase(), t.completed()), (Phase::Idle, 1));
        assert_eq!(t.wrote(GET), Event::Started);
        assert_eq!(t.phase(), Phase::Awaiting);
        assert_eq!(t.completed(), 1);
    }

    #[test]
    fn the_last_final_response_says_keep_alive() {
        let mut t = Tracker::new();
        t.wrote(GET);
        t.read(b"HTTP/1.1 100 Continue\r\nkeep-alive: timeout=9\r\n\r\n");
        assert_eq!(t.keep_alive(), None, "an interim response's header");
        t.read(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=3\r\ncontent-length: 0\r\n\r\n");
        let ka = t.keep_alive().unwrap();
        assert_eq!(
            (ka.timeout, ka.max),
            (Some(std::time::Duration::from_secs(5)), Some(3))
        );
        t.wrote(GET);
        t.read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(t.keep_alive(), None);
    }

    #[test]
    fn a_close_said_by_either_side_is_seen() {
        let mut t = Tracker::new();
        t.wrote(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n");
        t.read(b"HTTP/1.1 100 Continue\r\nconnection: close\r\n\r\n");
        assert!(!t.closing(), "an interim response's header");
        t.read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n");
        assert!(!t.closing());
        t.wrote(b"GET / HTTP/1.1\r\nconnection: Upgrade, Close\r\n\r\n");
        assert!(t.closing(), "a request's token, any case, in a list");

        let mut t = Tracker::new();
        t.wrote(b"GET / HTTP/1.1\r\n\r\n");
        t.read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        assert!(t.closing());

        let mut t = Tracker::new();
        t.wrote(b"GET / HTTP/1.1\r\n\r\n");
        t.read(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(t.closing(), "HTTP/1.0 without keep-alive");

        let mut t = Tracker::new();
        t.wrote(b"GET / HTTP/1.1\r\n\r\n");
        t.read(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n");
        assert!(!t.closing(), "HTTP/1.0 with keep-alive");
    }

    #[test]
    fn a_head_split_anywhere_is_found() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: b\r\n\r\nabc";
        for cut in 1..response.len() {
            let mut t = Tracker::new();
            t.wrote(GET);
            assert_eq!(t.read(&response[..cut]), Event::None, "cut {cut}");
            assert_eq!(t.read(&response[cut..]), Event::Completed, "cut {cut}");
        }
        let mut t = Tracker::new();
        t.wrote(GET);
        assert_eq!(read_bytewise(&mut t, response), vec![Event::Completed]);
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let response: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
            5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: y\r\n\r\n";
        let mut t = Tracker::new();
        t.wrote(GET);
        assert_eq!(t.read(response), Event::Completed);
        let mut t = Tracker::new();
        t.wrote(GET);
        assert_eq!(read_bytewise(&mut t, response), vec![Event::Completed]);
        // The last chunk's empty line split from the rest.
        let mut t = Tracker::new();
        t.wrote(GET);
        assert_eq!(
            t.read(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r"),
            Event::None
        );
        assert_eq!(t.phase(), Phase::Responding);
        assert_eq!(t.read(b"\n"), Event::Completed);
    }

    #[test]
    fn bodiless_responses_end_at_their_head() {
        for (request, response) in [
            (
                &b"HEAD / HTTP/1.1\r\n\r\n"[..],
                &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"[..],
            ),
            (GET, b"HTTP/1.1 204 No Content\r\n\r\n"),
            (
                GET,
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            ),
            (GET, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        ] {
            let mut t = Tracker::new();
            t.wrote(request);
            assert_eq!(t.read(response), Event::Completed);
        }
    }

    #[test]
    fn interim_responses_are_response_bytes() {
        let mut t = Tracker::new();
        t.wrote(GET);
        t.read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        // A PUT with a body, answered `100 Continue` while it is written.
        assert_eq!(
            t.wrote(b"PUT /x HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n"),
            Event::Started
        );
        assert!(t.phase().unanswered());
        assert_eq!(t.read(b"HTTP/1.1 100 Continue\r\n\r\n"), Event::None);
        assert_eq!(t.phase(), Phase::Responding);
        assert!(!t.phase().unanswered());
        // More of the body is written: the same exchange.
        assert_eq!(t.wrote(b"01234"), Event::None);
        assert_eq!(t.phase(), Phase::Responding);
        assert_eq!(t.wrote(b"56789"), Event::None);
        assert_eq!(
            t.read(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Event::Completed
        );
        assert_eq!(t.completed(), 2);
    }

    #[test]
    fn an_early_response_waits_for_the_request_body() {
        let mut t = Tracker::new();
        t.wrote(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n");
        assert_eq!(t.phase(), Phase::Requesting);
        assert_eq!(
            t.read(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n"),
            Event::None
        );
        assert_eq!(t.phase(), Phase::Responding);
        assert_eq!(t.wrote(b"0\r\n\r\n"), Event::Completed);
        assert_eq!((t.phase(), t.completed()), (Phase::Idle, 1));
    }

    #[test]
    fn upgrades_and_tunnels_leave_http() {
        let mut t = Tracker::new();
        t.wrote(b"GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n");
        assert_eq!(
            t.read(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: foo\r\n\r\nraw bytes"),
            Event::Upgraded
        );
        assert_eq!(t.phase(), Phase::Upgraded);
        assert_eq!(t.read(b"HTTP/1.1 200 OK\r\n\r\n"), Event::None);
        assert_eq!(t.wrote(GET), Event::None);
        assert_eq!(t.phase(), Phase::Upgraded);

        let mut t = Tracker::new();
        t.wrote(b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n");
        assert_eq!(t.read(b"HTTP/1.1 200 OK\r\n\r\n"), Event::Upgraded);
        // A refused tunnel is an ordinary response.
        let mut t = Tracker::new();
        t.wrote(b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n");
        assert_eq!(
            t.read(b"HTTP/1.1 407 Auth\r\ncontent-length: 0\r\n\r\n"),
            Event::Completed
        );
    }

    #[test]
    fn an_http2_preface_is_no_request() {
        let mut t = Tracker::new();
        // Not known to be the preface yet.
        assert_eq!(t.wrote(&H2_PREFACE[..5]), Event::Started);
        assert_eq!(t.phase(), Phase::Requesting);
        assert_eq!(t.wrote(&H2_PREFACE[5..]), Event::Left);
        assert_eq!((t.phase(), t.completed()), (Phase::Http2, 0));
        assert!(!t.phase().unanswered());
        // A request that merely starts like the preface.
        let mut t = Tracker::new();
        assert_eq!(t.wrote(b"P"), Event::Started);
        assert_eq!(t.wrote(b"UT / HTTP/1.1\r\n\r\n"), Event::None);
        assert_eq!(t.phase(), Phase::Awaiting);
    }

    #[test]
    fn what_cannot_be_framed_is_unknown_for_good() {
        // TLS bytes (a GuardedConnector inside a TLS connector).
        let mut t = Tracker::new();
        assert_eq!(t.wrote(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Event::Left);
        assert_eq!(t.phase(), Phase::Unknown);
        assert_eq!(t.read(b"HTTP/1.1 200 OK\r\n\r\n"), Event::None);
        assert_eq!(t.phase(), Phase::Unknown);
        // A response delimited by the close.
        let mut t = Tracker::new();
        t.wrote(GET);
        assert_eq!(t.read(b"HTTP/1.1 200 OK\r\n\r\nbody"), Event::Left);
        assert_eq!(t.phase(), Phase::Unknown);
        // Bytes nobody asked for.
        let mut t = Tracker::new();
        assert_eq!(t.read(b"HTTP/1.1 408 Timeout\r\n\r\n"), Event::Left);
        // A chunk size that overflows, conflicting lengths.
        let mut t = Tracker::new();
        t.wrote(GET);
        t.read(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(t.read(b"fffffffffffffffff\r\n"), Event::Left);
        let mut t = Tracker::new();
        t.wrote(GET);
        assert_eq!(
            t.read(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            Event::Left
        );
        // A head longer than any hyper reads.
        let mut t = Tracker::new();
        t.wrote(GET);
        t.read(b"HTTP/1.1 200 OK\r\n");
        let line = vec![b'a'; 1024];
        for _ in 0..(MAX_HEAD / 1024) {
            t.read(&line);
        }
        assert_eq!(t.phase(), Phase::Unknown);
    }
}
