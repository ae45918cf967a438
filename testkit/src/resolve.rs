//! A resolver that sends every name to 127.0.0.1, so that loopback servers
//! can be reached as hosts of their own.

/// Resolves every name to 127.0.0.1 (the port comes from the URI), for
/// hyper-util's `HttpConnector::new_with_resolver` and reqwest's
/// `dns_resolver`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Loopback;

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for Loopback {
    type Response = std::iter::Once<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(([127, 0, 0, 1], 0).into())))
    }
}

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(([127, 0, 0, 1], 0).into()));
        Box::pin(std::future::ready(Ok(addrs)))
    }
}

/// A resolver whose answer can be switched while clients use it: every
/// name resolves to the loopback address set last (the port comes from
/// the URI), as a host name moves from one backend to another.
#[derive(Clone, Debug)]
pub struct Switch(std::sync::Arc<std::sync::Mutex<std::net::IpAddr>>);

impl Switch {
    /// Answers `to` until [`set`](Switch::set).
    pub fn new(to: std::net::IpAddr) -> Self {
        Switch(std::sync::Arc::new(std::sync::Mutex::new(to)))
    }

    /// Answers `to` from now on.
    pub fn set(&self, to: std::net::IpAddr) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
    }

    fn now(&self) -> std::net::SocketAddr {
        let ip = *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (ip, 0).into()
    }
}

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for Switch {
    type Response = std::iter::Once<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(self.now())))
    }
}

impl reqwest::dns::Resolve for Switch {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(self.now()));
        Box::pin(std::future::ready(Ok(addrs)))
    }
}
