//! What one HTTP/1 connection is doing, read off the bytes that cross it.
//!
//! The connection's IO wrapper feeds every byte hyper writes and reads into
//! a [`Tracker`], which follows each exchange (request head and body,
//! interim 1xx responses, final response head and body). So the connection
//! knows when it is idle, whether a response to the current request has
//! begun (1xx included), how many exchanges it completed, and when it
//! stopped being HTTP/1 (an upgrade, a `CONNECT` tunnel, an HTTP/2
//! preface, or bytes it cannot place).
//!
//! # One truth: hyper's
//!
//! The tracker never decides anything hyper decided otherwise:
//!
//! - **Requests are hyper's own bytes**, and hyper does not pipeline: it
//!   writes the next request on a connection only once it has read the
//!   whole response to the last. So the first byte of a request written
//!   after the last one ended says that hyper finished the exchange before
//!   it, whatever the tracker made of its response. Exchange boundaries,
//!   and so whether a connection was reused, come from there.
//! - **"Answered" is any byte read** after the request's first byte went
//!   out: no parse decides it, so no parser option can change it.
//! - **Responses are read as hyper reads them** with its defaults, to know
//!   when a connection is idle: httparse with a default `ParserConfig`
//!   (a head's common form is read in one pass by [`scan`], which reads
//!   only what httparse reads the same way and leaves the rest to it),
//!   at most 100 header fields and a head of at most hyper's read buffer
//!   limit (8 KiB + 400 KiB), hyper's status codes (100 to 999), its
//!   rules for `Transfer-Encoding` (the coding after the last comma of the
//!   last field is `chunked`, or the body runs to the close; never with
//!   HTTP/1.0), for `Content-Length` (digits only, every value equal), for
//!   1xx, 204, 304, `HEAD` and `CONNECT`, and its chunked decoder with its
//!   limits (chunk extensions, trailer count and size).
//! - **Where it is unsure, it decides nothing.** A response the tracker
//!   cannot frame as hyper would with its defaults (a head hyper may
//!   accept only with a builder option, a body delimited by the close, a
//!   head or chunk hyper rejects) leaves the exchange *unsure*: answered,
//!   never idle, so never retired and never retried, until hyper's next
//!   request says it ended. A client builder's parser options
//!   (`http1_allow_*`, `http1_ignore_invalid_headers_in_responses`,
//!   `http1_max_headers`, `http1_max_buf_size`, HTTP/0.9 responses) can
//!   only make hyper accept a head the tracker is unsure of, or reject one
//!   it took as complete, on a connection hyper then closes: neither makes
//!   the tracker call a connection idle while hyper still reads it.

use super::digits;
use super::keep_alive::KeepAlive;
use super::Phase;
use super::{list_has, visible};

mod scan;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes of one response head hyper buffers with its defaults
/// (`DEFAULT_MAX_BUFFER_SIZE`): a head that is still partial past it
/// fails, and one that ends past it may or may not, by how the reads
/// fell. Past it the tracker is unsure.
const MAX_HEAD: usize = 8192 + 4096 * 100;

/// Header fields hyper parses per head by default (`DEFAULT_MAX_HEADERS`);
/// also its limit of trailer fields.
const MAX_HEADERS: usize = 100;

/// Header fields of a request head the tracker reads (hyper writes as many
/// as its caller gives; more is [`Phase::Unknown`]).
const MAX_REQUEST_HEADERS: usize = 128;

/// hyper refuses a header name of 64 KiB or more.
const MAX_NAME: usize = 1 << 16;

/// hyper's limit of chunk extension bytes in one body.
const CHUNKED_EXTENSIONS_LIMIT: u64 = 16 * 1024;

/// hyper's limit of trailer bytes in one body.
const TRAILER_LIMIT: usize = 16 * 1024;

/// The longest body hyper reads by its length (`DecodedLength::MAX_LEN`).
const MAX_LENGTH: u64 = u64::MAX - 2;

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
    Chunked(Chunked),
}

/// A chunked decoder, as hyper's (`proto/h1/decode.rs`) steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunked {
    state: Chunk,
    /// The size of the chunk being read, or left of it.
    size: u64,
    /// Chunk extension bytes so far in this body.
    extensions: u64,
    /// Trailer fields so far.
    trailers: usize,
    /// Trailer bytes have begun (they are kept in the tracker's buffer,
    /// when checked).
    in_trailers: bool,
}

/// Where a chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a chunk size.
    Start,
    /// In a chunk size.
    Size,
    /// White space after the size.
    SizeLws,
    /// In a chunk extension, up to the `\r`.
    Extension,
    /// After the `\r` of a size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// After chunk data: expecting `\r`.
    DataCr,
    /// Expecting `\n`.
    DataLf,
    /// After the last chunk's size line, or a trailer line: `\r` ends the
    /// body, anything else starts a trailer line.
    EndCr,
    /// In a trailer line, up to its `\r`.
    Trailer,
    /// After a trailer line's `\r`.
    TrailerLf,
    /// After the final `\r`.
    EndLf,
}

/// What the tracker knows of one side of the current exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Nothing of this message yet.
    Before,
    /// Inside the head.
    Head,
    /// Inside the body.
    Body(Framing),
    /// The message is complete.
    Done,
    /// Response bytes the tracker cannot frame as hyper does: answered,
    /// never idle, until hyper's next request says the exchange ended.
    Unsure,
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
    /// The current request asked for an upgrade, or opens a tunnel: after
    /// it, hyper may write bytes that are no request.
    may_upgrade: bool,
    /// Bytes of a request head not yet complete.
    req_buf: Vec<u8>,
    /// Bytes of a response head not yet complete, or a response's
    /// trailers.
    res_buf: Vec<u8>,
    completed: u64,
    /// The `Keep-Alive` header of the last final response.
    keep_alive: Option<KeepAlive>,
    /// A request or a final response said the connection ends after it
    /// (`Connection: close`, or an HTTP/1.0 response without
    /// `Connection: keep-alive`), as hyper reads it.
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
            may_upgrade: false,
            req_buf: Vec::new(),
            res_buf: Vec::new(),
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

    /// A write failed before the IO accepted any byte of it. On an idle
    /// connection that is a request hyper began to send: it reached no
    /// server (and is unanswered).
    pub(crate) fn write_failed(&mut self) -> Event {
        if self.phase != Phase::Idle {
            return Event::None;
        }
        self.begin();
        Event::Started
    }

    /// A new exchange: hyper began to write its request.
    fn begin(&mut self) {
        self.request = Side::Head;
        self.response = Side::Before;
        self.head_request = false;
        self.connect_request = false;
        self.may_upgrade = false;
        self.keep_alive = None;
        self.req_buf.clear();
        self.res_buf.clear();
        self.phase = Phase::Requesting;
    }

    /// Whether the bytes written so far may still be the start of HTTP/2's
    /// preface (nothing but a prefix of it was written).
    pub(crate) fn maybe_http2(&self) -> bool {
        self.completed == 0
            && self.phase == Phase::Requesting
            && self.request == Side::Head
            && H2_PREFACE.starts_with(&self.req_buf)
    }

    /// `bytes` were written to the peer (only what the IO accepted).
    pub(crate) fn wrote(&mut self, mut bytes: &[u8]) -> Event {
        let mut event = Event::None;
        while !bytes.is_empty() && self.is_http1() {
            if self.phase == Phase::Idle {
                // hyper does not pipeline: the first byte written on an idle
                // connection starts the next request.
                self.begin();
                event = Event::Started;
            } else if self.request == Side::Done {
                // All of the request is written and its response has not
                // ended as the tracker reads it: a new request means that
                // hyper finished the exchange (it writes no other bytes),
                // unless the exchange could have handed the connection to
                // an upgrade, or no byte of a response came.
                if self.may_upgrade || self.response == Side::Before {
                    return self.leave(Phase::Unknown);
                }
                self.completed = self.completed.saturating_add(1);
                self.begin();
                event = Event::Started;
            }
            let used = match self.request {
                Side::Head => self.request_head(bytes),
                Side::Body(framing) => match body(framing, bytes, None) {
                    Some((used, next)) => {
                        self.request = next;
                        used
                    }
                    None => return self.leave(Phase::Unknown),
                },
                Side::Before | Side::Done | Side::Unsure => {
                    return self.leave(Phase::Unknown);
                }
            };
            bytes = bytes.get(used..).unwrap_or_default();
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
                self.res_buf.clear();
            }
            let used = match self.response {
                Side::Head => self.response_head(bytes),
                Side::Body(framing) => match body(framing, bytes, Some(&mut self.res_buf)) {
                    Some((used, next)) => {
                        self.response = next;
                        used
                    }
                    // hyper fails the body.
                    None => self.unsure(bytes.len()),
                },
                // Bytes after a response hyper ended, or of one the tracker
                // cannot frame.
                Side::Done | Side::Unsure | Side::Before => self.unsure(bytes.len()),
            };
            bytes = bytes.get(used..).unwrap_or_default();
            if let Some(e) = self.after_step() {
                event = e;
            }
        }
        event
    }

    /// The response is one the tracker cannot frame as hyper does: all of
    /// `n` bytes are used.
    fn unsure(&mut self, n: usize) -> usize {
        self.response = Side::Unsure;
        self.res_buf = Vec::new();
        n
    }

    fn is_http1(&self) -> bool {
        self.phase.is_http1()
    }

    fn leave(&mut self, phase: Phase) -> Event {
        self.phase = phase;
        self.req_buf = Vec::new();
        self.res_buf = Vec::new();
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
            let seen = self.req_buf.len();
            let take = H2_PREFACE.len().saturating_sub(seen).min(bytes.len());
            let mut prefix = self.req_buf.clone();
            prefix.extend_from_slice(&bytes[..take]);
            if H2_PREFACE.starts_with(&prefix) {
                if prefix.len() == H2_PREFACE.len() {
                    self.leave(Phase::Http2);
                    return bytes.len();
                }
                self.req_buf = prefix;
                return bytes.len();
            }
        }
        let (used, head) = match take_head(&mut self.req_buf, bytes, parse_request) {
            Step::Partial => return bytes.len(),
            Step::Unsure => {
                self.leave(Phase::Unknown);
                return bytes.len();
            }
            Step::Complete(used, head) => (used, head),
        };
        let RequestHead {
            method,
            framing,
            close,
            upgrade,
        } = head;
        self.head_request = method == Method::Head;
        self.connect_request = method == Method::Connect;
        self.may_upgrade = upgrade || self.connect_request;
        self.closing |= close;
        self.request = match framing {
            RequestFraming::None | RequestFraming::Length(0) => Side::Done,
            RequestFraming::Length(n) => Side::Body(Framing::Length(n)),
            RequestFraming::Chunked => Side::Body(Framing::Chunked(Chunked::new())),
            RequestFraming::Invalid => {
                self.leave(Phase::Unknown);
                return bytes.len();
            }
        };
        used
    }

    /// Feeds `bytes` to the response head; returns how many it used.
    fn response_head(&mut self, bytes: &[u8]) -> usize {
        let connect = self.connect_request;
        let head_request = self.head_request;
        let parse = |b: &[u8]| parse_response(b, head_request, connect);
        let (used, head) = match take_head(&mut self.res_buf, bytes, parse) {
            Step::Partial => return bytes.len(),
            Step::Unsure => return self.unsure(bytes.len()),
            Step::Complete(used, head) => (used, head),
        };
        match head.body {
            ResponseBody::Upgrade => {
                self.phase = Phase::Upgraded;
                self.req_buf = Vec::new();
                self.res_buf = Vec::new();
            }
            // Interim: the final response's head comes next.
            ResponseBody::Interim => self.response = Side::Before,
            ResponseBody::Empty => self.final_head(head, Side::Done),
            ResponseBody::Length(n) => self.final_head(head, Side::Body(Framing::Length(n))),
            ResponseBody::Chunked => {
                self.final_head(head, Side::Body(Framing::Chunked(Chunked::new())))
            }
            ResponseBody::Unsure => {
                self.final_head(head, Side::Unsure);
            }
        }
        used
    }

    fn final_head(&mut self, head: ResponseHead, next: Side) {
        self.keep_alive = head.keep_alive;
        self.closing |= !head.keep_alive_hyper;
        self.response = next;
    }
}

/// A request method that changes how the response is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Head,
    Connect,
    Other,
}

/// What the tracker needs of a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RequestHead {
    method: Method,
    framing: RequestFraming,
    /// `Connection: close`.
    close: bool,
    /// An `Upgrade` field: a `101` may hand the connection over.
    upgrade: bool,
}

/// How hyper framed a request it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestFraming {
    None,
    Length(u64),
    Chunked,
    /// Framing fields the tracker cannot follow.
    Invalid,
}

/// What the tracker needs of a response head, as hyper reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ResponseHead {
    body: ResponseBody,
    /// A final response's `Keep-Alive` header.
    keep_alive: Option<KeepAlive>,
    /// Whether hyper keeps the connection after this response (HTTP/1.1
    /// unless a `Connection` field says `close`; HTTP/1.0 only when one
    /// says `keep-alive`).
    keep_alive_hyper: bool,
}

/// How hyper reads the body of a response (`Client::decoder`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseBody {
    /// `101`, or a 2xx to `CONNECT`: the connection is handed over.
    Upgrade,
    /// `100`, `102` to `199`: skipped, the final head comes next.
    Interim,
    /// `204`, `304`, a response to `HEAD`, or a length of 0.
    Empty,
    Length(u64),
    Chunked,
    /// Delimited by the close, or framing hyper rejects.
    Unsure,
}

enum Step<H> {
    Partial,
    /// Not a head the tracker can read as hyper does.
    Unsure,
    /// Bytes of the new input the head used, and the head.
    Complete(usize, H),
}

#[cfg_attr(test, derive(Debug, PartialEq, Eq))]
enum Parsed<H> {
    Partial,
    Unsure,
    Complete(usize, H),
}

/// Finds a complete head in `buf` followed by `bytes`, parsing in place
/// when `buf` is empty and the head is whole in `bytes`. A head still
/// partial at [`MAX_HEAD`] bytes, or complete past it, is
/// [`Step::Unsure`] (so at most `MAX_HEAD` bytes are ever buffered).
fn take_head<H>(buf: &mut Vec<u8>, bytes: &[u8], parse: impl Fn(&[u8]) -> Parsed<H>) -> Step<H> {
    let before = buf.len();
    if before == 0 {
        match parse(bytes) {
            Parsed::Complete(n, _) if n > MAX_HEAD => return Step::Unsure,
            Parsed::Complete(n, head) => return Step::Complete(n, head),
            Parsed::Unsure => return Step::Unsure,
            Parsed::Partial if bytes.len() >= MAX_HEAD => return Step::Unsure,
            Parsed::Partial => {
                buf.extend_from_slice(bytes);
                return Step::Partial;
            }
        }
    }
    let room = MAX_HEAD.saturating_sub(before).min(bytes.len());
    buf.extend_from_slice(&bytes[..room]);
    match parse(buf) {
        Parsed::Complete(n, _) if n > MAX_HEAD => Step::Unsure,
        Parsed::Complete(n, head) => {
            buf.clear();
            Step::Complete(n.saturating_sub(before), head)
        }
        Parsed::Unsure => Step::Unsure,
        Parsed::Partial if buf.len() >= MAX_HEAD => Step::Unsure,
        Parsed::Partial => Step::Partial,
    }
}

/// Reads a request head: its common form in one pass ([`scan`]), any
/// other with httparse.
fn parse_request(bytes: &[u8]) -> Parsed<RequestHead> {
    let scanned = scan::request_line(bytes).and_then(|(at, method)| {
        let mut fields = Fields::new(true);
        let n = scan::fields(bytes, at, MAX_REQUEST_HEADERS, |name, value| {
            fields.add(name, value);
        })?;
        Some(Parsed::Complete(n, request_head(method, &fields)))
    });
    scanned.unwrap_or_else(|| parse_request_httparse(bytes))
}

fn parse_request_httparse(bytes: &[u8]) -> Parsed<RequestHead> {
    // Uninitialised: 4 KiB of empty fields written for every head cost
    // more than the parse of a short one.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        bytes,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => {
            let fields = Fields::read(req.headers, true);
            let method = req.method.unwrap_or_default().as_bytes();
            Parsed::Complete(n, request_head(method, &fields))
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Unsure,
    }
}

/// What a request head of `method` and `fields` tells the tracker.
fn request_head(method: &[u8], fields: &Fields<'_>) -> RequestHead {
    let method = if method.eq_ignore_ascii_case(b"HEAD") {
        Method::Head
    } else if method.eq_ignore_ascii_case(b"CONNECT") {
        Method::Connect
    } else {
        Method::Other
    };
    let framing = if let Some(coding) = fields.transfer_encoding {
        if is_chunked(coding) {
            RequestFraming::Chunked
        } else {
            RequestFraming::Invalid
        }
    } else {
        match fields.content_length {
            Length::None => RequestFraming::None,
            Length::Valid(n) => RequestFraming::Length(n),
            Length::Invalid => RequestFraming::Invalid,
        }
    };
    RequestHead {
        method,
        framing,
        close: fields.close,
        upgrade: fields.upgrade,
    }
}

/// Reads a response head as hyper's `Client::parse` and `Client::decoder`
/// do with their defaults.
fn parse_response(bytes: &[u8], head_request: bool, connect: bool) -> Parsed<ResponseHead> {
    let scanned = scan::status_line(bytes).and_then(|(at, http11, status)| {
        let mut fields = Fields::new(http11);
        let n = scan::fields(bytes, at, MAX_HEADERS, |name, value| {
            fields.add(name, value)
        })?;
        let keep_alive = match fields.keep_alive {
            KeepAliveFields::None => None,
            KeepAliveFields::One(value) => Some(value),
            // Gathered by httparse.
            KeepAliveFields::More => return None,
        };
        let read = || KeepAlive::parse(keep_alive);
        Some(response_head(
            n,
            status,
            http11,
            &fields,
            head_request,
            connect,
            read,
        ))
    });
    scanned.unwrap_or_else(|| parse_response_httparse(bytes, head_request, connect))
}

fn parse_response_httparse(
    bytes: &[u8],
    head_request: bool,
    connect: bool,
) -> Parsed<ResponseHead> {
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        bytes,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Too many fields, or bytes hyper takes only with an option of the
        // client builder (or never).
        Err(_) => return Parsed::Unsure,
    };
    let http11 = res.version == Some(1);
    let headers = &*res.headers;
    let fields = Fields::read(headers, http11);
    let read = || {
        KeepAlive::parse(
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("keep-alive"))
                .map(|h| h.value),
        )
    };
    let status = res.code.unwrap_or_default();
    response_head(n, status, http11, &fields, head_request, connect, read)
}

/// What a complete response head of `n` bytes tells the tracker, as
/// hyper's `Client::decoder` reads it; `keep_alive` reads its
/// `Keep-Alive` fields.
fn response_head(
    n: usize,
    status: u16,
    http11: bool,
    fields: &Fields<'_>,
    head_request: bool,
    connect: bool,
    keep_alive: impl FnOnce() -> Option<KeepAlive>,
) -> Parsed<ResponseHead> {
    // `StatusCode::from_u16`.
    if !(100..1000).contains(&status) || fields.long_name {
        return Parsed::Unsure;
    }
    let body = match status {
        101 => ResponseBody::Upgrade,
        100 | 102..=199 => ResponseBody::Interim,
        204 | 304 => ResponseBody::Empty,
        _ if head_request => ResponseBody::Empty,
        200..=299 if connect => ResponseBody::Upgrade,
        _ if fields.transfer_encoding.is_some() => {
            if !http11 {
                // hyper: "HTTP/1.0 cannot have Transfer-Encoding header".
                ResponseBody::Unsure
            } else if fields.transfer_encoding.is_some_and(is_chunked) {
                ResponseBody::Chunked
            } else {
                // Read until the close.
                ResponseBody::Unsure
            }
        }
        _ => match fields.content_length {
            Length::Valid(0) => ResponseBody::Empty,
            Length::Valid(n) if n <= MAX_LENGTH => ResponseBody::Length(n),
            // Read until the close, or rejected.
            Length::Valid(_) | Length::Invalid | Length::None => ResponseBody::Unsure,
        },
    };
    let interim = matches!(body, ResponseBody::Interim);
    Parsed::Complete(
        n,
        ResponseHead {
            body,
            keep_alive: match fields.keep_alive {
                _ if interim => None,
                KeepAliveFields::None => None,
                KeepAliveFields::One(_) | KeepAliveFields::More => keep_alive(),
            },
            keep_alive_hyper: fields.keep_alive_hyper,
        },
    )
}

/// What the fields of a head say about its framing and its connection,
/// read in one pass over them.
struct Fields<'a> {
    /// A field name of 64 KiB or more (hyper's `HeaderName` refuses it).
    long_name: bool,
    /// The value of the last `Transfer-Encoding` field, if any.
    transfer_encoding: Option<&'a [u8]>,
    /// What the `Content-Length` fields say.
    content_length: Length,
    /// A `Connection` field lists `close`.
    close: bool,
    /// hyper's keep-alive: HTTP/1.1 keeps the connection, HTTP/1.0 only
    /// with `keep-alive`; once a `Connection` field says `close`, nothing
    /// undoes it.
    keep_alive_hyper: bool,
    /// The `Keep-Alive` fields.
    keep_alive: KeepAliveFields<'a>,
    /// An `Upgrade` field is present.
    upgrade: bool,
}

/// The `Keep-Alive` fields of a head.
#[derive(Clone, Copy)]
enum KeepAliveFields<'a> {
    None,
    One(&'a [u8]),
    More,
}

impl<'a> Fields<'a> {
    /// No field yet, of a head of HTTP/1.1 (`http11`) or HTTP/1.0.
    fn new(http11: bool) -> Self {
        Fields {
            long_name: false,
            transfer_encoding: None,
            content_length: Length::None,
            close: false,
            keep_alive_hyper: http11,
            keep_alive: KeepAliveFields::None,
            upgrade: false,
        }
    }

    /// Reads `headers` of a head of HTTP/1.1 (`http11`) or HTTP/1.0.
    fn read(headers: &[httparse::Header<'a>], http11: bool) -> Self {
        let mut fields = Fields::new(http11);
        for h in headers {
            fields.add(h.name.as_bytes(), h.value);
        }
        fields
    }

    /// Reads the next field of the head.
    #[inline]
    fn add(&mut self, name: &[u8], value: &'a [u8]) {
        // Names compared by length first: most fields are none of these.
        match name.len() {
            7 if name.eq_ignore_ascii_case(b"upgrade") => self.upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                if self.close || list_has(value, "close") {
                    self.close = true;
                    self.keep_alive_hyper = false;
                } else if !self.keep_alive_hyper {
                    self.keep_alive_hyper = list_has(value, "keep-alive");
                }
            }
            10 if name.eq_ignore_ascii_case(b"keep-alive") => {
                self.keep_alive = match self.keep_alive {
                    KeepAliveFields::None => KeepAliveFields::One(value),
                    _ => KeepAliveFields::More,
                };
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                self.content_length = self.content_length.and(value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = Some(value);
            }
            n if n >= MAX_NAME => self.long_name = true,
            _ => {}
        }
    }
}

/// hyper's `is_chunked`, given the last `Transfer-Encoding` field's value:
/// the coding after its last comma is `chunked`.
fn is_chunked(last: &[u8]) -> bool {
    visible(last)
        .and_then(|v| v.rsplit(|&b| b == b',').next())
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// What the `Content-Length` fields of a head say.
#[derive(Clone, Copy)]
enum Length {
    None,
    Valid(u64),
    Invalid,
}

impl Length {
    /// hyper's `content_length_parse_all`, one field at a time: every
    /// value of every field, digits only, all equal.
    fn and(self, value: &[u8]) -> Length {
        match self {
            Length::Invalid => return self,
            // The common field: one value, digits only.
            Length::None => {
                if let Some(n) = digits(value) {
                    return Length::Valid(n);
                }
            }
            Length::Valid(_) => {}
        }
        let mut length = self;
        let Some(line) = visible(value) else {
            return Length::Invalid;
        };
        for v in line.split(|&b| b == b',') {
            let Some(n) = digits(v.trim_ascii()) else {
                return Length::Invalid;
            };
            length = match length {
                Length::None => Length::Valid(n),
                Length::Valid(m) if m == n => Length::Valid(m),
                Length::Valid(_) | Length::Invalid => return Length::Invalid,
            };
        }
        length
    }
}

/// Feeds `bytes` to a body framed by `framing`: how many it used, and where
/// the body is then; `None` when hyper would fail the body. `trailers`
/// keeps a chunked body's trailers to check them as hyper does (`None`:
/// a body hyper wrote, not checked).
fn body(framing: Framing, bytes: &[u8], trailers: Option<&mut Vec<u8>>) -> Option<(usize, Side)> {
    match framing {
        Framing::Length(left) => {
            let take = u64::try_from(bytes.len()).unwrap_or(u64::MAX).min(left);
            let left = left.saturating_sub(take);
            // `take` is at most `bytes.len()`.
            let used = usize::try_from(take).unwrap_or(bytes.len());
            Some(if left == 0 {
                (used, Side::Done)
            } else {
                (used, Side::Body(Framing::Length(left)))
            })
        }
        Framing::Chunked(mut decoder) => {
            let (used, done) = decoder.feed(bytes, trailers)?;
            Some(if done {
                (used, Side::Done)
            } else {
                (used, Side::Body(Framing::Chunked(decoder)))
            })
        }
    }
}

impl Chunked {
    fn new() -> Self {
        Chunked {
            state: Chunk::Start,
            size: 0,
            extensions: 0,
            trailers: 0,
            in_trailers: false,
        }
    }

    /// Steps over `bytes` as hyper's decoder does, until the body ends
    /// (`true`) or the bytes do: how many it used; `None` where hyper
    /// fails the body.
    fn feed(&mut self, bytes: &[u8], mut trailers: Option<&mut Vec<u8>>) -> Option<(usize, bool)> {
        let checked = trailers.is_some();
        let mut at = 0;
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            if self.state == Chunk::Data {
                let avail = u64::try_from(rest.len()).unwrap_or(u64::MAX);
                let take = avail.min(self.size);
                // `take` is at most `rest.len()`.
                at = at.saturating_add(usize::try_from(take).unwrap_or(rest.len()));
                self.size = self.size.saturating_sub(take);
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let b = rest[0];
            at = at.saturating_add(1);
            self.state = match self.state {
                Chunk::Start => {
                    self.size = hex(b)?;
                    Chunk::Size
                }
                Chunk::Size => match b {
                    b'\t' | b' ' => Chunk::SizeLws,
                    b';' => Chunk::Extension,
                    b'\r' => Chunk::SizeLf,
                    _ => {
                        self.size = self.size.checked_mul(16)?.checked_add(hex(b)?)?;
                        Chunk::Size
                    }
                },
                Chunk::SizeLws => match b {
                    b'\t' | b' ' => Chunk::SizeLws,
                    b';' => Chunk::Extension,
                    b'\r' => Chunk::SizeLf,
                    _ => return None,
                },
                Chunk::Extension => match b {
                    b'\r' => Chunk::SizeLf,
                    b'\n' if checked => return None,
                    _ => {
                        self.extensions = self.extensions.saturating_add(1);
                        if checked && self.extensions >= CHUNKED_EXTENSIONS_LIMIT {
                            return None;
                        }
                        Chunk::Extension
                    }
                },
                Chunk::SizeLf => match b {
                    b'\n' if self.size == 0 => Chunk::EndCr,
                    b'\n' => Chunk::Data,
                    _ => return None,
                },
                Chunk::DataCr => match b {
                    b'\r' => Chunk::DataLf,
                    _ => return None,
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::Start,
                    _ => return None,
                },
                Chunk::EndCr => {
                    if b == b'\r' {
                        self.trailer_byte(&mut trailers, b)?;
                        Chunk::EndLf
                    } else if b == b'\n' {
                        // A bare `\n` ending the trailers, or as a line of
                        // its own: hyper (since 1.13) fails the body.
                        return None;
                    } else {
                        if !self.in_trailers {
                            self.in_trailers = true;
                            if let Some(t) = trailers.as_deref_mut() {
                                t.clear();
                            }
                        }
                        self.trailer_byte(&mut trailers, b)?;
                        Chunk::Trailer
                    }
                }
                Chunk::Trailer => {
                    self.trailer_byte(&mut trailers, b)?;
                    match b {
                        b'\r' => Chunk::TrailerLf,
                        // A trailer line ended by a bare `\n`: hyper
                        // (since 1.13) fails the body.
                        b'\n' => return None,
                        _ => Chunk::Trailer,
                    }
                }
                Chunk::TrailerLf => match b {
                    b'\n' => {
                        if checked && self.trailers >= MAX_HEADERS {
                            return None;
                        }
                        self.trailers = self.trailers.saturating_add(1);
                        self.trailer_byte(&mut trailers, b)?;
                        Chunk::EndCr
                    }
                    _ => return None,
                },
                Chunk::EndLf => match b {
                    b'\n' => {
                        self.trailer_byte(&mut trailers, b)?;
                        if let Some(t) = trailers.as_deref() {
                            if self.in_trailers && !trailers_valid(t, self.trailers) {
                                return None;
                            }
                        }
                        return Some((at, true));
                    }
                    _ => return None,
                },
                // Handled above.
                Chunk::Data => Chunk::Data,
            };
        }
        Some((at, false))
    }

    /// Keeps a byte of the trailers, once they began; `None` past hyper's
    /// limit.
    fn trailer_byte(&self, trailers: &mut Option<&mut Vec<u8>>, b: u8) -> Option<()> {
        if let Some(t) = trailers.as_deref_mut().filter(|_| self.in_trailers) {
            t.push(b);
            if t.len() >= TRAILER_LIMIT {
                return None;
            }
        }
        Some(())
    }
}

/// Whether hyper takes `bytes` as `count` trailer fields
/// (`decode_trailers`).
fn trailers_valid(bytes: &[u8], count: usize) -> bool {
    let mut headers = vec![httparse::EMPTY_HEADER; count];
    match httparse::parse_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete((_, fields))) => fields.iter().all(|h| {
            http::HeaderName::from_bytes(h.name.as_bytes()).is_ok()
                && http::HeaderValue::from_bytes(h.value).is_ok()
        }),
        _ => false,
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
    use proptest::prelude::*;

    /// Pieces of heads: the common form, and each way out of it that
    /// httparse or hyper treat otherwise.
    fn head_pieces() -> impl Strategy<Value = Vec<u8>> {
        let start = prop::sample::select(vec![
            "HTTP/1.1 ",
            "HTTP/1.0 ",
            "HTTP/2.0 ",
            "http/1.1 ",
            "HTTP/1.1  ",
            "\r\nHTTP/1.1 ",
            "HTTP/1.1",
            "GET / HTTP/1.1\r\n",
            "HEAD /x?y=1 HTTP/1.1\r\n",
            "CONNECT h:1 HTTP/1.1\r\n",
            "GET  / HTTP/1.1\r\n",
            "GET / HTTP/1.0\n",
            "GET /é HTTP/1.1\r\n",
            "G@T / HTTP/1.1\r\n",
            "head / HTTP/1.1\r\n",
        ]);
        let code = prop::sample::select(vec![
            "200 OK\r\n",
            "204 No Content\r\n",
            "304 \r\n",
            "101 Switching\r\n",
            "100 Continue\r\n",
            "103 Hints\r\n",
            "099 Low\r\n",
            "999 High\r\n",
            "200\r\n",
            "200\n",
            "2x0 OK\r\n",
            "200 OK\n",
            "200 é\r\n",
            "200 a\tb\r\n",
            "200 a\x7fb\r\n",
            "404 Not Found\r\n",
            "",
        ]);
        let name = prop::sample::select(vec![
            "content-length",
            "Content-Length",
            "transfer-encoding",
            "Transfer-Encoding",
            "connection",
            "Connection",
            "keep-alive",
            "Keep-Alive",
            "upgrade",
            "x-a",
            "x a",
            "",
            "x-é",
            "host",
            "date",
        ]);
        let colon = prop::sample::select(vec![": ", ":", " : ", ":\t ", ":  ", " "]);
        let value = prop::sample::select(vec![
            "5",
            "0",
            " 5 \t",
            "5, 5",
            "5,6",
            "+2",
            "00002",
            "18446744073709551616",
            "chunked",
            "gzip, chunked",
            "chunked, gzip",
            " Chunked ",
            "close",
            "keep-alive",
            "Keep-Alive, Upgrade",
            "timeout=5, max=100",
            "",
            "a\tb",
            "é",
            "a\x7fb",
            "a\x00b",
            " \t",
            "h2c",
            "0123456789abcdef01234",
        ]);
        let end = prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n", "\r", "\r\n "]);
        let field =
            (name, colon, value, end).prop_map(|(n, c, v, e)| format!("{n}{c}{v}{e}").into_bytes());
        let last = prop::sample::select(vec!["\r\n", "\r\n", "\n", "", "\r"]);
        (
            start,
            code,
            prop::collection::vec(field, 0..8),
            last,
            any::<bool>(),
        )
            .prop_map(|(start, code, fields, last, body)| {
                let mut head = format!("{start}{code}").into_bytes();
                head.extend(fields.concat());
                head.extend_from_slice(last.as_bytes());
                if body {
                    head.extend_from_slice(b"2\r\nok");
                }
                head
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The one-pass reading of a head's common form gives what the
        /// tracker makes of httparse's, for every head, whole or cut.
        #[test]
        fn the_common_form_reads_as_httparse_reads(
            head in head_pieces(),
            cut in any::<prop::sample::Index>(),
            head_request in any::<bool>(),
            connect in any::<bool>(),
        ) {
            for bytes in [&head[..], &head[..cut.index(head.len() + 1)]] {
                prop_assert_eq!(
                    parse_response(bytes, head_request, connect),
                    parse_response_httparse(bytes, head_request, connect)
                );
                prop_assert_eq!(parse_request(bytes), parse_request_httparse(bytes));
            }
        }

        #[test]
        fn any_bytes_read_as_httparse_reads(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(parse_response(&bytes, false, false), parse_response_httparse(&bytes, false, false));
            prop_assert_eq!(parse_request(&bytes), parse_request_httparse(&bytes));
        }
    }

    #[test]
    fn field_counts_at_and_past_the_limits_read_as_httparse_reads() {
        for n in [99, 100, 101, 127, 128, 129] {
            let fields = "x-a: b\r\n".repeat(n);
            let response = format!("HTTP/1.1 200 OK\r\n{fields}content-length: 0\r\n\r\n");
            let request = format!("GET / HTTP/1.1\r\n{fields}\r\n");
            assert_eq!(
                parse_response(response.as_bytes(), false, false),
                parse_response_httparse(response.as_bytes(), false, false),
                "{n}"
            );
            assert_eq!(
                parse_request(request.as_bytes()),
                parse_request_httparse(request.as_bytes()),
                "{n}"
            );
        }
    }

    /// The heads hyper writes and the common servers send take the one
    /// pass (it is no stub that always leaves them to httparse).
    #[test]
    fn common_heads_take_the_one_pass() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nserver: nginx\r\ndate: Mon, 07 Dec 2026 09:00:00 GMT\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Mon, 07 Dec 2026 09:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nKeep-Alive: timeout=5, max=100\r\n\r\n",
        ] {
            let (at, _, _) = scan::status_line(head).unwrap();
            assert_eq!(scan::fields(head, at, MAX_HEADERS, |_, _| {}), Some(head.len()));
        }
        let request =
            b"POST /upload?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-length: 3\r\n\r\n";
        let (at, method) = scan::request_line(request).unwrap();
        assert_eq!(method, b"POST");
        assert_eq!(
            scan::fields(request, at, MAX_REQUEST_HEADERS, |_, _| {}),
            Some(request.len())
        );
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

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
    fn what_cannot_be_placed_is_unknown_for_good() {
        // TLS bytes (a GuardedConnector inside a TLS connector).
        let mut t = Tracker::new();
        assert_eq!(t.wrote(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Event::Left);
        assert_eq!(t.phase(), Phase::Unknown);
        assert_eq!(t.read(b"HTTP/1.1 200 OK\r\n\r\n"), Event::None);
        assert_eq!(t.phase(), Phase::Unknown);
        // Bytes nobody asked for.
        let mut t = Tracker::new();
        assert_eq!(t.read(b"HTTP/1.1 408 Timeout\r\n\r\n"), Event::Left);
        // A request after one that may have upgraded, unsure of its
        // response.
        let mut t = Tracker::new();
        t.wrote(b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n");
        t.read(b"HTTP/1.1 101 Switching\r\nx-a : b\r\n\r\n");
        assert_eq!(t.wrote(b"\x81\x00"), Event::Left);
        assert_eq!(t.phase(), Phase::Unknown);
    }

    /// Reads `response` to a GET on a new tracker.
    fn answered(response: &[u8]) -> Tracker {
        let mut t = Tracker::new();
        t.wrote(GET);
        t.read(response);
        t
    }

    #[test]
    fn what_hyper_rejects_or_reads_to_the_close_is_never_idle() {
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}content-length: 0\r\n\r\n",
            "x-a: b\r\n".repeat(100)
        );
        let interim = format!(
            "HTTP/1.1 103 Hints\r\n{}\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "x-a: b\r\n".repeat(101)
        );
        for response in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
            b"HTTP/1.1 200 OK\r\nx-a : b\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 0\r\n\r\n",
            // Chunks hyper's decoder refuses.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n 2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2 1\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: a\n\r\n",
            many.as_bytes(),
            interim.as_bytes(),
        ] {
            let t = answered(response);
            let shown = String::from_utf8_lossy(response);
            assert_eq!(t.phase(), Phase::Responding, "{shown}");
            assert_eq!(t.completed(), 0, "{shown}");
        }
        // A head longer than hyper buffers.
        let mut t = Tracker::new();
        t.wrote(GET);
        t.read(b"HTTP/1.1 200 OK\r\n");
        let line = vec![b'a'; 1024];
        for _ in 0..(MAX_HEAD / 1024 + 1) {
            t.read(&line);
        }
        assert_eq!(t.phase(), Phase::Responding);
        assert!(
            t.res_buf.len() <= MAX_HEAD,
            "buffered at most hyper's limit"
        );
    }

    #[test]
    fn framing_follows_hyper() {
        for response in [
            // Transfer-Encoding wins over any Content-Length, valid or not.
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: abc\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            // Equal lengths, leading zeros.
            b"HTTP/1.1 200 OK\r\ncontent-length: 002, 2\r\ncontent-length: 2\r\n\r\nok",
            // Chunk sizes with leading zeros, capitals, white space and
            // extensions; trailers.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0002 \t;a=\"b\"\r\nok\r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\nx-u: \r\n\r\n",
            // HTTP/1.0 with a length, interims, 204 and 304 with lengths.
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
            // Leading empty lines, as httparse skips them.
            b"\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ] {
            let shown = String::from_utf8_lossy(response);
            let mut t = answered(response);
            assert_eq!((t.phase(), t.completed()), (Phase::Idle, 1), "{shown}");
            let mut t2 = Tracker::new();
            t2.wrote(GET);
            assert_eq!(read_bytewise(&mut t2, response), vec![Event::Completed], "{shown}");
            assert_eq!(t.wrote(GET), Event::Started);
        }
    }

    #[test]
    fn hyper_keeps_or_closes_the_connection_as_it_says() {
        for (response, closing) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..], false),
            (b"HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n", true),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", true),
            (b"HTTP/1.0 200 OK\r\nconnection: x, Keep-Alive\r\ncontent-length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", true),
        ] {
            assert_eq!(answered(response).closing(), closing, "{}", String::from_utf8_lossy(response));
        }
    }

    #[test]
    fn hyper_s_next_request_ends_an_unsure_exchange() {
        // A head the tracker cannot read as hyper does by default, which
        // hyper takes with a builder option: the next request says the
        // exchange ended.
        let mut t = answered(b"HTTP/1.1 200 OK\r\nx-a : b\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!((t.phase(), t.completed()), (Phase::Responding, 0));
        assert!(!t.phase().unanswered());
        assert_eq!(t.wrote(GET), Event::Started);
        assert_eq!((t.phase(), t.completed()), (Phase::Awaiting, 1));
        assert!(t.phase().unanswered());
        // And the tracker follows the exchanges after it.
        assert_eq!(t.read(OK_RESPONSE), Event::Completed);
        assert_eq!((t.phase(), t.completed()), (Phase::Idle, 2));
        // A body the tracker reads longer than hyper did.
        let mut t = answered(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok");
        assert_eq!(t.wrote(GET), Event::Started);
        assert_eq!(t.completed(), 1);
        // A request with a body after an unsure one.
        let mut t = answered(b"HTTP/1.1 200 OK\r\nx@bad: b\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            t.wrote(b"PUT / HTTP/1.1\r\ncontent-length: 2\r\n\r\n"),
            Event::Started
        );
        assert_eq!(t.phase(), Phase::Requesting);
        t.wrote(b"ab");
        assert_eq!((t.phase(), t.completed()), (Phase::Awaiting, 1));
    }

    #[test]
    fn a_failed_write_on_an_idle_connection_starts_a_request() {
        let mut t = answered(OK_RESPONSE);
        assert_eq!(t.write_failed(), Event::Started);
        assert_eq!((t.phase(), t.completed()), (Phase::Requesting, 1));
        assert!(t.phase().unanswered());
        // Not while a request is under way.
        let mut t = Tracker::new();
        t.wrote(GET);
        t.read(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(t.write_failed(), Event::None);
        assert_eq!(t.phase(), Phase::Responding);
    }

    #[test]
    fn chunk_extensions_and_trailers_have_hyper_s_limits() {
        let mut t = answered(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        let ext = format!("1;{}\r\na\r\n", "e".repeat(8 * 1024));
        assert_eq!(t.read(ext.as_bytes()), Event::None);
        assert_eq!(t.read(ext.as_bytes()), Event::None);
        t.read(b"0\r\n\r\n");
        assert_eq!(t.phase(), Phase::Responding, "extensions over 16 KiB");
        let mut t = answered(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n");
        t.read("x-t: a\r\n".repeat(101).as_bytes());
        t.read(b"\r\n");
        assert_eq!(t.phase(), Phase::Responding, "more than 100 trailers");
        let mut t = answered(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n");
        t.read(format!("x-t: {}\r\n\r\n", "a".repeat(16 * 1024)).as_bytes());
        assert_eq!(t.phase(), Phase::Responding, "trailers over 16 KiB");
        let mut t = answered(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n");
        t.read("x-t: a\r\n".repeat(100).as_bytes());
        assert_eq!(t.read(b"\r\n"), Event::Completed, "100 trailers");
    }

    /// hyper (since 1.13) fails a chunked body whose trailer section has a
    /// line ended by a bare `\n`, or a bare `\n` where the section ends.
    #[test]
    fn trailer_lines_ended_by_a_bare_lf_fail_the_body() {
        for rest in [
            &b"x-t: a\ny: b\r\n\r\n"[..],
            b"x-t: a\n\r\n",
            b"\n",
            b"x-t: a\r\n\n",
        ] {
            let mut t = answered(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n");
            t.read(rest);
            t.read(b"\r\n\r\n");
            let shown = String::from_utf8_lossy(rest);
            assert_eq!(t.phase(), Phase::Responding, "{shown:?}");
            assert_eq!(t.completed(), 0, "{shown:?}");
        }
    }

    #[test]
    fn a_request_head_and_an_early_response_do_not_mix() {
        let mut t = Tracker::new();
        t.wrote(b"POST / HTTP/1.1\r\ncontent-len");
        t.read(b"HTTP/1.1 413 Too Large\r\ncontent-");
        t.wrote(b"gth: 2\r\n\r\nab");
        assert_eq!(t.read(b"length: 0\r\n\r\n"), Event::Completed);
        assert_eq!((t.phase(), t.completed()), (Phase::Idle, 1));
    }
}
