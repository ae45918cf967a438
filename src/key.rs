//! The host a request goes to: the key of per-host state.

use std::fmt;

use http::uri::{Authority, Scheme};
use http::{header, Request, Uri};

/// The host a request goes to: scheme, host and port, with the scheme's
/// default port filled in and the host in lower case.
///
/// It is the one key of every per-host state in this crate: the request
/// limit of [`PerHostLimitLayer`](crate::PerHostLimitLayer) and, with the
/// `hyper-util` feature, the connection cap of `GuardedConnector`, so that a
/// request and the connection it is sent on count against the same host.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    scheme: Box<str>,
    host: Box<str>,
    port: u16,
}

impl HostKey {
    /// The key of an absolute URI, or `None` when it has no host, or no port
    /// and a scheme whose default port is unknown.
    pub fn from_uri(uri: &Uri) -> Option<Self> {
        let scheme = uri.scheme().unwrap_or(&Scheme::HTTP);
        Self::new(scheme, uri.authority()?)
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
        let scheme = scheme.as_str().to_ascii_lowercase();
        let port = match authority.port_u16() {
            Some(port) => port,
            None => default_port(&scheme)?,
        };
        let host = authority.host();
        if host.is_empty() {
            return None;
        }
        Some(HostKey {
            scheme: scheme.into_boxed_str(),
            host: host.to_ascii_lowercase().into_boxed_str(),
            port,
        })
    }

    /// The scheme, in lower case.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host, in lower case (an IPv6 address keeps its brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, the scheme's default if the URI named none.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
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
