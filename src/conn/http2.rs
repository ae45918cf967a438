//! HTTP/2 frame headers read off one direction of a connection: enough to
//! see a stream open or reset and a `GOAWAY` arrive, and no more.
//!
//! Only the 9-byte frame header is read (RFC 9113 §4.1: a 24-bit payload
//! length, the type, the flags, a reserved bit and the 31-bit stream id),
//! and of a payload only the first 4 bytes of a `GOAWAY` (its last stream
//! id) or of a `RST_STREAM` (its error code). No HPACK, no validation: hyper's h2 reads the frames for real, and
//! ends the connection on anything malformed; what the reader sees of a
//! stream of frames that h2 accepts is exact.

/// The frame types the reader acts on (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;

/// The `END_STREAM` flag of `DATA` and `HEADERS`.
const END_STREAM: u8 = 0x1;

/// The client's connection preface (RFC 9113 §3.4), which comes before its
/// first frame.
pub(crate) const PREFACE_LEN: usize = 24;

/// What a run of bytes showed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Streams opened in these bytes: `HEADERS` frames on a stream id
    /// above every one before (not the trailers or interim heads of open
    /// streams).
    pub(crate) opened: u32,
    /// Streams that ended in these bytes, as far as the client's response
    /// goes: read off the server, a frame with `END_STREAM` or a
    /// `RST_STREAM`; off the client, a `RST_STREAM`.
    pub(crate) ended: u32,
    /// A `GOAWAY` whose last stream id was read in these bytes: the last
    /// one, if there were several.
    pub(crate) goaway: Option<u32>,
    /// `RST_STREAM` frames with another error code than `CANCEL` (0x8), read
    /// whole in these bytes. Off the client these are the resets h2 writes
    /// by itself (for frames of streams it forgot, or that broke a rule),
    /// the ones its limit on a connection's resets counts; a response body
    /// dropped early is reset with `CANCEL`.
    pub(crate) errors: u32,
}

/// The error code of a `RST_STREAM` that cancels a stream (RFC 9113 §7).
const CANCEL: u32 = 0x8;

/// Where the reader is in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Bytes of the client's preface still to skip.
    Preface(usize),
    /// Bytes of a frame header read so far (into `head`).
    Header(usize),
    /// The first 4 bytes of the payload of a frame of the given type read
    /// so far (into `head`), and the payload bytes after them: a
    /// `GOAWAY`'s last stream id, or a `RST_STREAM`'s error code.
    Word(u8, usize, u32),
    /// Payload bytes of the current frame still to skip.
    Payload(u32),
}

/// Reads frame headers off the bytes of one direction, fed in order.
#[derive(Clone, Debug)]
pub(crate) struct Frames {
    at: At,
    head: [u8; 9],
    /// The highest stream id a `HEADERS` frame was seen on.
    last_stream: u32,
    /// The frames are the server's.
    server: bool,
}

impl Frames {
    /// The highest stream id a `HEADERS` frame was seen on (0: none).
    pub(crate) fn last_stream(&self) -> u32 {
        self.last_stream
    }

    /// A reader of what the client writes: the preface, then frames.
    pub(crate) fn client() -> Self {
        Frames {
            at: At::Preface(PREFACE_LEN),
            head: [0; 9],
            last_stream: 0,
            server: false,
        }
    }

    /// A reader of what the server sends: frames from the first byte.
    pub(crate) fn server() -> Self {
        Frames {
            at: At::Header(0),
            head: [0; 9],
            last_stream: 0,
            server: true,
        }
    }

    /// Reads `bytes`, the next of the direction.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Seen {
        let mut seen = Seen::default();
        while !bytes.is_empty() {
            match self.at {
                At::Preface(left) => {
                    let take = left.min(bytes.len());
                    bytes = &bytes[take..];
                    self.at = match left - take {
                        0 => At::Header(0),
                        left => At::Preface(left),
                    };
                }
                At::Header(have) => {
                    let take = (9 - have).min(bytes.len());
                    self.head[have..have + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let have = have + take;
                    if have < 9 {
                        self.at = At::Header(have);
                        continue;
                    }
                    let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                    let kind = self.head[3];
                    let stream = u32::from_be_bytes([
                        self.head[5],
                        self.head[6],
                        self.head[7],
                        self.head[8],
                    ]) & 0x7fff_ffff;
                    if kind == HEADERS && stream > self.last_stream {
                        self.last_stream = stream;
                        seen.opened = seen.opened.saturating_add(1);
                    }
                    let flags = self.head[4];
                    let ends = stream != 0
                        && (kind == RST_STREAM
                            || (self.server
                                && matches!(kind, DATA | HEADERS)
                                && flags & END_STREAM != 0));
                    if ends {
                        seen.ended = seen.ended.saturating_add(1);
                    }
                    self.at = match (kind, len) {
                        (GOAWAY | RST_STREAM, len) if len >= 4 => At::Word(kind, 0, len - 4),
                        (_, 0) => At::Header(0),
                        (_, len) => At::Payload(len),
                    };
                }
                At::Word(kind, have, rest) => {
                    let take = (4 - have).min(bytes.len());
                    self.head[have..have + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let have = have + take;
                    if have < 4 {
                        self.at = At::Word(kind, have, rest);
                        continue;
                    }
                    let word = u32::from_be_bytes([
                        self.head[0],
                        self.head[1],
                        self.head[2],
                        self.head[3],
                    ]);
                    if kind == GOAWAY {
                        seen.goaway = Some(word & 0x7fff_ffff);
                    } else if word != CANCEL {
                        seen.errors = seen.errors.saturating_add(1);
                    }
                    self.at = match rest {
                        0 => At::Header(0),
                        rest => At::Payload(rest),
                    };
                }
                At::Payload(left) => {
                    let take = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    bytes = &bytes[take..];
                    // `take` is at most `left`, a u32.
                    let left = left.saturating_sub(u32::try_from(take).unwrap_or(u32::MAX));
                    self.at = match left {
                        0 => At::Header(0),
                        left => At::Payload(left),
                    };
                }
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn goaway(last: u32, code: u32, debug: &[u8]) -> Vec<u8> {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(debug);
        frame(GOAWAY, 0, 0, &payload)
    }

    /// A client's bytes: preface, SETTINGS, two HEADERS with a DATA between.
    fn client_bytes() -> Vec<u8> {
        let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        b.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        b.extend(frame(HEADERS, 0x4, 1, &[0x82, 0x86, 0x84]));
        b.extend(frame(0x0, 0x1, 1, &[7; 300]));
        b.extend(frame(HEADERS, 0x5, 3, &[0x82]));
        b
    }

    #[test]
    fn streams_opened_are_counted_whatever_the_split() {
        let mut bytes = client_bytes();
        // Trailers of stream 1 open no stream.
        bytes.extend(frame(HEADERS, 0x5, 1, &[0x40]));
        for step in 1..=bytes.len() {
            let mut frames = Frames::client();
            let opened: u32 = bytes.chunks(step).map(|c| frames.feed(c).opened).sum();
            assert_eq!(opened, 2, "chunks of {step}");
        }
    }

    #[test]
    fn a_goaway_gives_its_last_stream_id_whatever_the_split() {
        let mut bytes = frame(0x4, 0, 0, &[]);
        bytes.extend(frame(HEADERS, 0x4, 1, &[0x88]));
        bytes.extend(frame(0x0, 0x1, 1, b"hello"));
        bytes.extend(goaway(0x8000_0000 | 199, 0, b"bye"));
        bytes.extend(frame(0x6, 0, 0, &[0; 8]));
        for step in 1..=bytes.len() {
            let mut frames = Frames::server();
            let mut ids = Vec::new();
            let mut headers = 0;
            for chunk in bytes.chunks(step) {
                let seen = frames.feed(chunk);
                headers += seen.opened;
                ids.extend(seen.goaway);
            }
            // The reserved bit is not part of the id.
            assert_eq!((ids, headers), (vec![199], 1), "chunks of {step}");
        }
    }

    #[test]
    fn streams_end_with_the_servers_end_stream_or_a_reset() {
        let mut server = frame(HEADERS, 0x4, 1, &[0x88]);
        server.extend(frame(DATA, 0x1, 1, b"done"));
        server.extend(frame(HEADERS, 0x5, 3, &[0x88]));
        server.extend(frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
        // Flags on the connection's stream 0 end nothing.
        server.extend(frame(0x6, 0x1, 0, &[0; 8]));
        let mut frames = Frames::server();
        assert_eq!(frames.feed(&server).ended, 3);
        // The client's END_STREAM ends its half only; its reset ends all.
        let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        client.extend(frame(HEADERS, 0x5, 7, &[0x82]));
        client.extend(frame(RST_STREAM, 0, 7, &[0, 0, 0, 8]));
        let mut frames = Frames::client();
        let seen = frames.feed(&client);
        assert_eq!((seen.opened, seen.ended, frames.last_stream()), (1, 1, 7));
    }

    #[test]
    fn resets_other_than_cancel_are_counted_whatever_the_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(HEADERS, 0x5, 1, &[0x82]));
        // The client's cancel of a body it dropped, then h2's own resets
        // of frames of streams it forgot (STREAM_CLOSED, PROTOCOL_ERROR).
        bytes.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        bytes.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 5]));
        bytes.extend(frame(0x0, 0, 3, &[1; 40]));
        bytes.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 1]));
        bytes.extend(frame(HEADERS, 0x5, 5, &[0x82]));
        for step in 1..=bytes.len() {
            let mut frames = Frames::client();
            let (mut ended, mut errors, mut opened) = (0, 0, 0);
            for chunk in bytes.chunks(step) {
                let seen = frames.feed(chunk);
                ended += seen.ended;
                errors += seen.errors;
                opened += seen.opened;
            }
            assert_eq!((ended, errors, opened), (3, 2, 2), "chunks of {step}");
        }
    }

    #[test]
    fn a_short_goaway_payload_is_skipped() {
        // h2 rejects it; the reader only must not lose its place.
        let mut bytes = frame(GOAWAY, 0, 0, &[1, 2]);
        bytes.extend(goaway(5, 0, b""));
        let mut frames = Frames::server();
        assert_eq!(frames.feed(&bytes).goaway, Some(5));
    }

    #[test]
    fn a_large_frame_is_skipped_without_reading_it() {
        let mut frames = Frames::server();
        // A header announcing the largest length, then its payload
        // in pieces, then a GOAWAY.
        assert_eq!(
            frames.feed(&[0xff, 0xff, 0xff, 0x0, 0, 0, 0, 0, 1]),
            Seen::default()
        );
        let piece = vec![0u8; 1 << 20];
        for _ in 0..15 {
            assert_eq!(frames.feed(&piece), Seen::default());
        }
        let mut rest = vec![0u8; (1 << 24) - 1 - (15 << 20)];
        rest.extend(goaway(9, 0, b""));
        assert_eq!(frames.feed(&rest).goaway, Some(9));
    }
}
