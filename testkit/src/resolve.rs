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
