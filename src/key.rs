//! The host a request goes to: the key of per-host state.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use http::uri::{Authority, Scheme};
use http::{header, Request, Uri};

/// The host a request goes to: scheme, host and port, with the scheme's
/// default port filled in and the host in lower case.
///
/// It is the one key of every per-host state in this crate: the request
/// limit of [`PerHostLimitLayer`](crate::PerHostLimitLayer) and, with the
/// `hyper-util` feature, the connection cap of `GuardedConnector`, so that a
/// request and the connection it is sent on count against the same host.
#[derive(Clone)]
pub struct HostKey {
    /// `scheme://host:port`, in lower case: one allocation, shared by clones.
    repr: Arc<str>,
    /// The hash of `repr`, keyed per process (so hosts a peer names cannot
    /// be chosen to collide), computed once: per-host maps look a key up
    /// several times per request.
    hash: u64,
    /// Offsets in `repr` (a key longer than 64 KiB is not made).
    scheme_len: u16,
    host_end: u16,
    port: u16,
}

impl HostKey {
    /// The key of an absolute URI, or `None` when it has no host, or no port
    /// and a scheme whose default port is unknown.
    #[inline]
    pub fn from_uri(uri: &Uri) -> Option<Self> {
        let scheme = uri.scheme().unwrap_or(&Scheme::HTTP);
        let authority = uri.authority()?;
        // The layers of one request each look its key up, and a client's
        // requests mostly go to the hosts it just sent to: the last keys
        // made on this thread, by the URI's own scheme and authority, save
        // the parse, the hash and the allocation.
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some(key) = last.find_key(scheme, authority.as_str()) {
                return Some(key);
            }
            let key = Self::new(scheme, authority)?;
            last.remember(scheme, authority.as_str(), &key);
            Some(key)
        })
    }

    /// The key of a request: from its URI, falling back to its `Host` header
    /// (with the URI's scheme, or `http`) for a request in origin form.
    pub fn from_request<B>(req: &Request<B>) -> Option<Self> {
        if let Some(key) = Self::from_uri(req.uri()) {
            return Some(key);
        }
        let host = req.headers().get(header::HOST)?.to_str().ok()?;
        let authority: Authority = host.parse().ok()?;
        Self::new(req.uri().scheme().unwrap_or(&Scheme::HTTP), &authority)
    }

    fn new(scheme: &Scheme, authority: &Authority) -> Option<Self> {
        let scheme = scheme.as_str();
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        // An IPv6 literal has many spellings (`[::1]`, `[0:0::1]`,
        // `[0000::0001]`): one key, in the canonical form (RFC 5952).
        let canonical;
        let host = match host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        {
            Some(ip) => {
                canonical = format!("[{ip}]");
                canonical.as_str()
            }
            None => host,
        };
        let port = match authority.port_u16() {
            Some(port) => port,
            None => default_port(scheme)?,
        };
        // "scheme://host:port", lower case, built on the stack: one
        // allocation, for the `Arc`.
        let mut port_digits = [0u8; 5];
        let port_at = port_digits.len() - {
            let mut n = port;
            let mut len = 0;
            loop {
                len += 1;
                port_digits[port_digits.len() - len] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break len;
                }
            }
        };
        let parts: [&[u8]; 5] = [
            scheme.as_bytes(),
            b"://",
            host.as_bytes(),
            b":",
            &port_digits[port_at..],
        ];
        let mut buf = [0u8; 128];
        let mut heap = Vec::new();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let out: &mut [u8] = if len <= buf.len() {
            &mut buf[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        let mut at = 0;
        for part in parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out.make_ascii_lowercase();
        let host_end = scheme.len() + 3 + host.len();
        // Scheme and authority are ASCII once parsed by `http`.
        let repr = std::str::from_utf8(out).ok()?;
        Some(HostKey {
            hash: hash_of(repr),
            repr: Arc::from(repr),
            scheme_len: u16::try_from(scheme.len()).ok()?,
            host_end: u16::try_from(host_end).ok()?,
            port,
        })
    }

    /// The scheme, in lower case.
    pub fn scheme(&self) -> &str {
        self.repr
            .get(..usize::from(self.scheme_len))
            .unwrap_or_default()
    }

    /// The host, in lower case (an IPv6 address keeps its brackets).
    pub fn host(&self) -> &str {
        let start = usize::from(self.scheme_len) + 3;
        self.repr
            .get(start..usize::from(self.host_end))
            .unwrap_or_default()
    }

    /// The port, the scheme's default if the URI named none.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `scheme://host:port`, the key's own allocation (shared, not copied).
    #[cfg(feature = "reqwest")]
    pub(crate) fn shared_str(&self) -> Arc<str> {
        self.repr.clone()
    }
}

/// The last few values a thread remembered, the oldest given up first:
/// the per-thread memories of host keys (here), of their limits' gates
/// (`limit::registry`) and of their retry budgets (`retry::budget`).
pub(crate) struct Recent<T, const N: usize> {
    entries: [Option<T>; N],
    /// The entry the next new value replaces.
    next: usize,
}

impl<T, const N: usize> Recent<T, N> {
    pub(crate) const fn new() -> Self {
        Recent {
            entries: [const { None }; N],
            next: 0,
        }
    }

    /// The first value `is` accepts.
    pub(crate) fn find(&self, is: impl Fn(&T) -> bool) -> Option<&T> {
        self.entries.iter().flatten().find(|value| is(value))
    }

    /// The first value `is` accepts, to change.
    pub(crate) fn find_mut(&mut self, is: impl Fn(&T) -> bool) -> Option<&mut T> {
        self.entries.iter_mut().flatten().find(|value| is(value))
    }

    /// Puts `value` in place of the value `same` accepts, or else of the
    /// oldest; returns the value replaced (for the caller to drop where it
    /// likes).
    pub(crate) fn put(&mut self, value: T, same: impl Fn(&T) -> bool) -> Option<T> {
        let at = match self
            .entries
            .iter()
            .position(|e| e.as_ref().is_some_and(&same))
        {
            Some(at) => at,
            None => {
                let at = self.next;
                self.next = (at + 1) % N.max(1);
                at
            }
        };
        self.entries.get_mut(at).and_then(|e| e.replace(value))
    }
}

/// Keys a thread made last, by the scheme and authority they were made
/// from, exactly as written.
type Last = Recent<Remembered, LAST_KEYS>;

/// A key and what it was made from: the scheme (compared as `http`
/// compares schemes: the common ones without looking at bytes) and the
/// authority as written.
struct Remembered {
    scheme: Scheme,
    authority: Box<str>,
    key: HostKey,
}

/// Keys remembered per thread.
const LAST_KEYS: usize = 4;

thread_local! {
    static LAST: std::cell::RefCell<Last> = const { std::cell::RefCell::new(Last::new()) };
}

impl Last {
    fn find_key(&self, scheme: &Scheme, authority: &str) -> Option<HostKey> {
        let found = self.find(|r| {
            r.authority.len() == authority.len()
                // Schemes equal as `http` compares them (the common ones
                // by kind, others ignoring case) make one key: the key is
                // in lower case.
                && r.scheme == *scheme
                && *r.authority == *authority
        });
        found.map(|r| r.key.clone())
    }

    /// Remembers a key just made (not found: it replaces the oldest).
    fn remember(&mut self, scheme: &Scheme, authority: &str, key: &HostKey) {
        let remembered = Remembered {
            scheme: scheme.clone(),
            authority: authority.into(),
            key: key.clone(),
        };
        self.put(remembered, |_| false);
    }
}

fn hash_of(repr: &str) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).hash_one(repr)
}

impl PartialEq for HostKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.repr, &other.repr) || self.repr == other.repr)
    }
}

impl Eq for HostKey {}

impl Hash for HostKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for HostKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HostKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.repr.cmp(&other.repr)
    }
}

/// A hasher for maps keyed by [`HostKey`], whose hash is already computed.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `HostKey`; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `BuildHasher` of [`KeyHasher`].
pub(crate) type BuildKeyHasher = std::hash::BuildHasherDefault<KeyHasher>;

/// A value remembered per host after the host's own state is gone, by the
/// 64-bit hash of its key (so a few bytes a host whatever its name; two
/// hosts whose hashes collide would share a value), for at most `max`
/// hosts: past that, an arbitrary one is forgotten.
#[derive(Debug)]
pub(crate) struct HostMemo<V> {
    map: std::collections::HashMap<u64, V, BuildKeyHasher>,
    max: usize,
}

impl<V> HostMemo<V> {
    pub(crate) fn new(max: usize) -> Self {
        HostMemo {
            map: Default::default(),
            max,
        }
    }

    pub(crate) fn get(&self, key: &HostKey) -> Option<&V> {
        self.map.get(&key.hash)
    }

    pub(crate) fn get_mut(&mut self, key: &HostKey) -> Option<&mut V> {
        self.map.get_mut(&key.hash)
    }

    pub(crate) fn remove(&mut self, key: &HostKey) -> Option<V> {
        self.map.remove(&key.hash)
    }

    /// Remembers `value` for `key`, forgetting another host if full.
    pub(crate) fn insert(&mut self, key: &HostKey, value: V) {
        self.make_room(key.hash);
        self.map.insert(key.hash, value);
    }

    /// The value of the host `memo` stands for, made by `make` (another
    /// host forgotten if full) when there is none.
    pub(crate) fn get_or_insert_with(&mut self, memo: MemoKey, make: impl FnOnce() -> V) -> &mut V {
        self.make_room(memo.0);
        self.map.entry(memo.0).or_insert_with(make)
    }

    /// Forgets an arbitrary host when full and `hash` is not remembered.
    fn make_room(&mut self, hash: u64) {
        if self.map.len() >= self.max && !self.map.contains_key(&hash) {
            if let Some(old) = self.map.keys().next().copied() {
                self.map.remove(&old);
            }
        }
    }
}

/// What a [`HostMemo`] knows a host by: its key's hash, 8 bytes to keep
/// (no clone of the key's allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemoKey(u64);

impl HostKey {
    /// The key's [`MemoKey`].
    pub(crate) fn memo(&self) -> MemoKey {
        MemoKey(self.hash)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    let is = |name: &str| scheme.eq_ignore_ascii_case(name);
    if is("http") || is("ws") {
        Some(80)
    } else if is("https") || is("wss") {
        Some(443)
    } else {
        None
    }
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr)
    }
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> Option<String> {
        HostKey::from_uri(&uri.parse().unwrap()).map(|k| k.to_string())
    }

    #[test]
    fn the_keys_a_thread_remembers_are_told_apart_by_scheme_and_authority() {
        // "http" + "sa.example" and "https" + "a.example" read the same
        // once joined: the remembered keys must not mix them up.
        for _ in 0..3 {
            assert_eq!(
                key("http://sa.example/").as_deref(),
                Some("http://sa.example:80")
            );
            assert_eq!(
                key("https://a.example/").as_deref(),
                Some("https://a.example:443")
            );
            assert_eq!(
                key("http://A.example:80/").as_deref(),
                Some("http://a.example:80")
            );
        }
        // More hosts than are remembered, in turn: each still right.
        for round in 0..3 {
            for i in 0..(LAST_KEYS * 2) {
                assert_eq!(
                    key(&format!("http://h{i}.example:{}/", 8000 + i)),
                    Some(format!("http://h{i}.example:{}", 8000 + i)),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn a_thread_memory_replaces_the_same_value_or_else_the_oldest() {
        let mut recent = Recent::<(u8, u8), 3>::new();
        for n in 0..3 {
            assert_eq!(recent.put((n, 0), |v| v.0 == n), None);
        }
        // The same value's entry is replaced, the oldest kept.
        assert_eq!(recent.put((1, 1), |v| v.0 == 1), Some((1, 0)));
        assert_eq!(recent.find(|v| v.0 == 1), Some(&(1, 1)));
        // A new value replaces the oldest: 0, then 1.
        assert_eq!(recent.put((3, 0), |v| v.0 == 3), Some((0, 0)));
        assert_eq!(recent.put((4, 0), |v| v.0 == 4), Some((1, 1)));
        assert_eq!(recent.find(|v| v.0 == 0), None);
        assert_eq!(recent.find(|v| v.0 == 2), Some(&(2, 0)));
    }

    #[test]
    fn default_ports_are_filled_in() {
        assert_eq!(
            key("http://Example.COM/x").as_deref(),
            Some("http://example.com:80")
        );
        assert_eq!(
            key("https://example.com").as_deref(),
            Some("https://example.com:443")
        );
        assert_eq!(
            key("HTTPS://example.com:8443/").as_deref(),
            Some("https://example.com:8443")
        );
        assert_eq!(
            key("http://[::1]:3000/").as_deref(),
            Some("http://[::1]:3000")
        );
        assert_eq!(
            key("http://example.com"),
            key("http://example.com:80/other")
        );
    }

    #[test]
    fn every_spelling_of_a_host_is_one_key() {
        for uri in [
            "http://example.com/",
            "http://EXAMPLE.com:80/",
            "http://u@Example.Com:080/",
            "http://u:p@example.com:0080/x",
        ] {
            assert_eq!(key(uri).as_deref(), Some("http://example.com:80"), "{uri}");
        }
        for uri in [
            "http://[::1]/",
            "http://[0:0:0:0:0:0:0:1]:80/",
            "http://[0000::0001]:080/",
            "http://u@[0::1]/",
        ] {
            assert_eq!(key(uri).as_deref(), Some("http://[::1]:80"), "{uri}");
        }
        assert_eq!(
            key("http://[2001:DB8:0:0::1]/").as_deref(),
            Some("http://[2001:db8::1]:80")
        );
    }

    #[test]
    fn unknown_scheme_without_port_has_no_key() {
        assert_eq!(key("foo://example.com/"), None);
        assert_eq!(
            key("foo://example.com:1/").as_deref(),
            Some("foo://example.com:1")
        );
        assert_eq!(key("/only/a/path"), None);
    }

    #[test]
    fn host_header_is_the_fallback() {
        let req = Request::get("/path")
            .header(header::HOST, "Backend:8080")
            .body(())
            .unwrap();
        assert_eq!(
            HostKey::from_request(&req)
                .map(|k| k.to_string())
                .as_deref(),
            Some("http://backend:8080")
        );
        let req = Request::get("http://a.example/")
            .header(header::HOST, "b.example")
            .body(())
            .unwrap();
        assert_eq!(HostKey::from_request(&req).unwrap().host(), "a.example");
        let req = Request::get("/")
            .header(header::HOST, "bad host")
            .body(())
            .unwrap();
        assert!(HostKey::from_request(&req).is_none());
    }
}
