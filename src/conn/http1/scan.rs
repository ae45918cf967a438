//! The common form of an HTTP/1 head, read without httparse.
//!
//! Nearly every head that crosses a connection has one form: a start line
//! of single spaces ending in CRLF, then fields `name: value` of token
//! names and visible ASCII values, each ending in CRLF, then CRLF. This
//! module reads that form alone, in one pass that hands each field to its
//! caller as it goes (a head is read twice otherwise: by httparse, then
//! its fields by the tracker), and checks eight value bytes at a time.
//!
//! It reads only what httparse (with a default `ParserConfig`, as hyper
//! parses) reads the same way, and gives up — `None` — on anything else:
//! leading empty lines, a bare LF, a missing reason phrase, white space
//! before a colon, a folded line, a control byte, a byte past ASCII, a
//! head not yet complete, or more fields than the caller takes. The
//! tracker then asks httparse, so the one truth stays httparse's; a
//! test checks the two agree on every head it generates.

/// Header name bytes: RFC 9110 `tchar` (httparse's `TOKEN_MAP`).
static TOKEN: [bool; 256] = {
    let mut map = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        map[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    map
};

/// Eight copies of `b`.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// The bytes of `w` (read little-endian) that are control bytes (below
/// 0x20, which takes in CR, LF and tab), DEL or past ASCII: the high bit
/// of each such byte. Exact up to the first such byte: a borrow or carry
/// between bytes starts only at a byte that is itself flagged, and runs
/// towards the later bytes.
#[inline]
fn special(w: u64) -> u64 {
    let below_space = w.wrapping_sub(splat(0x20)) & !w;
    let del_or_high = w.wrapping_add(splat(0x01)) | w;
    (below_space | del_or_high) & splat(0x80)
}

/// The end of the value that starts at `at`: the index of the CR of its
/// CRLF, with the value's bytes all tab or visible ASCII.
#[inline]
fn value_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        // Eight bytes at a time, to the first that needs a look.
        while let Some(chunk) = bytes.get(at..at.wrapping_add(8)) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            match special(u64::from_le_bytes(word)) {
                0 => at += 8,
                flags => {
                    // (`trailing_zeros` of a nonzero u64 is below 64.)
                    at += (flags.trailing_zeros() / 8) as usize;
                    break;
                }
            }
        }
        match *bytes.get(at)? {
            b'\r' => return (*bytes.get(at + 1)? == b'\n').then_some(at),
            b'\t' | b' '..=b'~' => at += 1,
            _ => return None,
        }
    }
}

/// The end of the token that starts at `at` (the index of its first
/// non-token byte), if it is not empty.
#[inline]
fn token_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    while TOKEN[usize::from(*bytes.get(at)?)] {
        at += 1;
    }
    (at > start).then_some(at)
}

/// Reads the fields that start at `at` up to the empty line that ends the
/// head, giving each (name, value without the white space around it) to
/// `field`: the head's length, or `None` if the block is not in the common
/// form, not complete, or holds more than `max` fields.
pub(super) fn fields<'a>(
    bytes: &'a [u8],
    mut at: usize,
    max: usize,
    mut field: impl FnMut(&'a [u8], &'a [u8]),
) -> Option<usize> {
    let mut count = 0usize;
    loop {
        if *bytes.get(at)? == b'\r' {
            return (*bytes.get(at + 1)? == b'\n').then_some(at + 2);
        }
        // (A line that starts with white space, a fold, has no name.)
        let colon = token_end(bytes, at)?;
        if *bytes.get(colon)? != b':' {
            return None;
        }
        let name = &bytes[at..colon];
        let mut start = colon + 1;
        while matches!(bytes.get(start)?, b' ' | b'\t') {
            start += 1;
        }
        let cr = value_end(bytes, start)?;
        let value = bytes.get(start..cr)?.trim_ascii_end();
        count += 1;
        if count > max {
            return None;
        }
        field(name, value);
        at = cr + 2;
    }
}

/// `HTTP/1.1` or `HTTP/1.0` at `at`: whether it is 1.1.
#[inline]
fn version(bytes: &[u8], at: usize) -> Option<bool> {
    match bytes.get(at..at.checked_add(8)?)? {
        b"HTTP/1.1" => Some(true),
        b"HTTP/1.0" => Some(false),
        _ => None,
    }
}

/// A response's status line: `HTTP/1.x SP 3DIGIT SP reason CRLF`, with a
/// reason of tabs and visible ASCII. Where its fields start, whether it is
/// HTTP/1.1, and the status code.
pub(super) fn status_line(bytes: &[u8]) -> Option<(usize, bool, u16)> {
    let http11 = version(bytes, 0)?;
    let [b' ', h, t, o, b' '] = *bytes.get(8..13)? else {
        return None;
    };
    let digit = |b: u8| b.is_ascii_digit().then(|| u16::from(b - b'0'));
    let code = digit(h)? * 100 + digit(t)? * 10 + digit(o)?;
    let cr = value_end(bytes, 13)?;
    Some((cr + 2, http11, code))
}

/// A request line: `method SP target SP HTTP/1.x CRLF`, with a token
/// method and a target of visible ASCII. Where its fields start, and the
/// method.
pub(super) fn request_line(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let space = token_end(bytes, 0)?;
    if *bytes.get(space)? != b' ' {
        return None;
    }
    let method = &bytes[..space];
    let mut at = space + 1;
    while matches!(bytes.get(at)?, b'!'..=b'~') {
        at += 1;
    }
    if at == space + 1 || *bytes.get(at)? != b' ' {
        return None;
    }
    version(bytes, at + 1)?;
    let end = at + 9;
    (bytes.get(end..end + 2)? == b"\r\n").then_some((end + 2, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each byte alone, against the word check.
    #[test]
    fn the_word_check_finds_the_first_special_byte() {
        let special_byte = |b: u8| !(b' '..=b'~').contains(&b);
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = b;
                let flags = special(u64::from_le_bytes(word));
                let first = (flags != 0).then(|| flags.trailing_zeros() / 8);
                assert_eq!(
                    first,
                    special_byte(b).then_some(at as u32),
                    "byte {b:#x} at {at}"
                );
            }
        }
        // The first of two, whatever the second borrows or carries.
        for x in (0..=255u8).filter(|&b| special_byte(b)) {
            for y in 0..=255u8 {
                let word = u64::from_le_bytes([b'a', x, y, b'a', b'a', b'a', b'a', b'a']);
                assert_eq!(special(word).trailing_zeros() / 8, 1, "{x:#x} {y:#x}");
            }
        }
    }

    #[test]
    fn the_common_form_is_read() {
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-empty:\r\nx-pad: \t a b \t\r\n\r\nhello";
        let (at, http11, code) = status_line(head).unwrap();
        assert_eq!((http11, code), (true, 200));
        let mut seen = Vec::new();
        let end = fields(head, at, 100, |n, v| seen.push((n, v))).unwrap();
        assert_eq!(&head[end..], b"hello");
        assert_eq!(
            seen,
            [
                (&b"content-length"[..], &b"5"[..]),
                (b"x-empty", b""),
                (b"x-pad", b"a b")
            ]
        );
        let (at, method) = request_line(b"GET /x?y HTTP/1.1\r\nhost: h\r\n\r\n").unwrap();
        assert_eq!((at, method), (19, &b"GET"[..]));
    }

    #[test]
    fn anything_else_is_left_to_httparse() {
        for head in [
            &b"\r\nHTTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 200\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\n\r\n",
            b"HTTP/1.1 200 \xc3\xa9\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a : b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: b\x7f\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: b\nx-b: c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: b\r\n\r",
            b"HTTP/1.1 200 OK\r\nx-a: b\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
        ] {
            let read = status_line(head).and_then(|(at, _, _)| fields(head, at, 100, |_, _| {}));
            assert_eq!(read, None, "{}", String::from_utf8_lossy(head));
        }
        assert_eq!(fields(b"a: 1\r\nb: 2\r\n\r\n", 0, 1, |_, _| {}), None);
        assert_eq!(request_line(b"GET  / HTTP/1.1\r\n"), None);
        assert_eq!(request_line(b"GET / HTTP/1.1\n"), None);
    }
}
