//! Telling a failure on a stale pooled connection from every other failure.

use std::error::Error;

use super::layer::Seen;

/// Records the connection a response came on, when the client's
/// connections cannot be seen (no [`GuardedConnector`](crate::GuardedConnector)):
/// by its socket address pair. Whether the pair was seen before (the
/// connection reused), if recorded.
pub(crate) fn record(seen: &Seen, extensions: &http::Extensions) -> Option<bool> {
    #[cfg(feature = "hyper-util")]
    {
        use hyper_util::client::legacy::connect::HttpInfo;

        use crate::conn::LinkHandle;

        if extensions.get::<LinkHandle>().is_some() {
            return None;
        }
        let info = extensions.get::<HttpInfo>()?;
        Some(seen.seen_before(info.local_addr(), info.remote_addr()))
    }
    #[cfg(not(feature = "hyper-util"))]
    {
        let _ = (seen, extensions);
        None
    }
}

/// What a request learns of the connection it goes out on.
#[cfg(feature = "hyper-util")]
pub(crate) type Capture = hyper_util::client::legacy::connect::CaptureConnection;
#[cfg(not(feature = "hyper-util"))]
pub(crate) type Capture = ();

/// Asks hyper-util to tell the request which connection it goes out on.
pub(crate) fn capture<B>(req: &mut http::Request<B>) -> Option<Capture> {
    #[cfg(feature = "hyper-util")]
    {
        Some(hyper_util::client::legacy::connect::capture_connection(req))
    }
    #[cfg(not(feature = "hyper-util"))]
    {
        let _ = req;
        None
    }
}

/// What a request learnt of its connection.
#[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
pub(crate) enum Learned {
    /// Not chosen yet.
    Pending,
    /// A tracked connection (its poison armed by now).
    #[cfg(feature = "hyper-util")]
    Link(std::sync::Arc<crate::conn::Link>),
    /// A connection the guard does not track.
    Untracked,
}

/// Once hyper-util chose the request's connection (a tracked one whose
/// `GOAWAY` poison is not armed yet), arms the poison with the connection
/// `capture` learned, so that a `GOAWAY` takes it out of hyper-util's pool
/// at once.
pub(crate) fn learn(capture: &Capture) -> Learned {
    #[cfg(feature = "hyper-util")]
    {
        let link = {
            let connected = capture.connection_metadata();
            let Some(connected) = connected.as_ref() else {
                return Learned::Pending;
            };
            match link_of(connected) {
                Some(link) => link,
                None => return Learned::Untracked,
            }
        };
        if !link.poison_armed() {
            let capture = capture.clone();
            link.arm_poison(Box::new(move || {
                if let Some(connected) = capture.connection_metadata().as_ref() {
                    connected.poison();
                }
            }));
        }
        Learned::Link(link)
    }
    #[cfg(not(feature = "hyper-util"))]
    {
        let _ = capture;
        Learned::Untracked
    }
}

/// What an error says of whether its request was processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
pub(crate) enum Unprocessed {
    /// Surely not: an HTTP/2 server refused its stream (`REFUSED_STREAM`),
    /// or hyper never sent it (hyper's "canceled", which hyper reports only
    /// with the request handed back unsent). Safe to send again whatever
    /// its method (RFC 9113 §8.7).
    Surely,
    /// It failed with the server's `GOAWAY`. h2 fails so the streams above
    /// the `GOAWAY`'s last stream id, which the server did not process;
    /// but hyper 1.x also fails a request it has just handed to h2 with the
    /// connection's `GOAWAY` when it next asks h2 for room, and that
    /// request's stream still goes out and may be processed (seen here: a
    /// server on loopback processed requests that failed so). Safe to send
    /// again only when sending twice is harmless: an idempotent request.
    GoAway,
}

/// Whether the request that failed with `error` was processed, as far as
/// the error tells.
pub(crate) fn unprocessed(error: &(dyn Error + 'static)) -> Option<Unprocessed> {
    #[cfg(feature = "hyper-util")]
    {
        let mut source = Some(error);
        // The connection hyper-util gave with the error, if any.
        let mut connected = None;
        while let Some(e) = source {
            if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                connected = e.connect_info();
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                if h2.is_library()
                    && h2.is_go_away()
                    && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
                {
                    // h2 ended the connection itself, at its limit on the
                    // resets it writes (`too_many_internal_resets`): the
                    // request may have reached the server, like one a
                    // server's `GOAWAY` failed.
                    return Some(Unprocessed::GoAway);
                }
                if !h2.is_remote() {
                    return None;
                }
                if h2.reason() == Some(h2::Reason::REFUSED_STREAM) && h2.is_reset() {
                    return Some(Unprocessed::Surely);
                }
                if !h2.is_go_away() {
                    return None;
                }
                // The connection's `GOAWAY` shows whether it was refused.
                let refused = connected
                    .and_then(link_of)
                    .is_some_and(|link| link.goaway_refused());
                return Some(if refused {
                    Unprocessed::Surely
                } else {
                    Unprocessed::GoAway
                });
            }
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_canceled)
            {
                return Some(Unprocessed::Surely);
            }
            if e.is::<super::Stranded>() {
                // Its connection ended without a word of it: never written.
                return Some(Unprocessed::Surely);
            }
            if e.is::<crate::Coalesced>() {
                // A dial held for another's HTTP/2 connection: the request
                // never went out.
                return Some(Unprocessed::Surely);
            }
            if crate::conn::Retired::is(e) {
                // The guard ended the idle connection with no byte of a
                // request on it.
                return Some(Unprocessed::Surely);
            }
            source = e.source();
        }
        None
    }
    #[cfg(not(feature = "hyper-util"))]
    {
        let _ = error;
        None
    }
}

/// The tracked connection behind `connected`, if a
/// [`GuardedConnector`](crate::GuardedConnector) made it.
#[cfg(feature = "hyper-util")]
fn link_of(
    connected: &hyper_util::client::legacy::connect::Connected,
) -> Option<std::sync::Arc<crate::conn::Link>> {
    let mut extras = http::Extensions::new();
    connected.get_extras(&mut extras);
    extras
        .remove::<crate::conn::LinkHandle>()
        .map(|handle| handle.link)
}

/// An HTTP/2 protocol NACK, as reqwest 0.13's retry reads one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "hyper-util"), allow(dead_code))]
pub(crate) enum Nack {
    /// The server refused the stream (`REFUSED_STREAM`): it sheds load.
    Refused,
    /// A graceful `GOAWAY` (`NO_ERROR`) failed the request: the
    /// connection turns over.
    GoAway,
}

/// Whether `error` is an HTTP/2 protocol NACK as reqwest 0.13's retry
/// reads one (and resends).
pub(crate) fn protocol_nack(error: &(dyn Error + 'static)) -> Option<Nack> {
    #[cfg(feature = "hyper-util")]
    {
        let mut source = Some(error);
        while let Some(e) = source {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                if !h2.is_remote() {
                    return None;
                }
                if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                    return Some(Nack::Refused);
                }
                if h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR) {
                    return Some(Nack::GoAway);
                }
                return None;
            }
            source = e.source();
        }
        None
    }
    #[cfg(not(feature = "hyper-util"))]
    {
        let _ = error;
        None
    }
}

/// Whether `error` is a failure on a connection that had served a request
/// before, with no byte of a response to this request: the one failure
/// [`RetryStale`](super::RetryStale) sends again. See the
/// [module docs](super) for how each client is read.
pub(crate) fn is_stale(error: &(dyn Error + 'static), seen: Option<&Seen>) -> bool {
    #[cfg(feature = "hyper-util")]
    {
        let mut source = Some(error);
        while let Some(e) = source {
            if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                return hyper_util_stale(e, seen);
            }
            source = e.source();
        }
        false
    }
    #[cfg(not(feature = "hyper-util"))]
    {
        let _ = (error, seen);
        false
    }
}

#[cfg(feature = "hyper-util")]
fn hyper_util_stale(error: &hyper_util::client::legacy::Error, seen: Option<&Seen>) -> bool {
    use hyper_util::client::legacy::connect::HttpInfo;

    use crate::conn::LinkHandle;

    if error.is_connect() {
        return false;
    }
    // Present when a connection was checked out for the request.
    let Some(connected) = error.connect_info() else {
        return false;
    };
    let hyper = hyper_error(error);
    let mut extras = http::Extensions::new();
    connected.get_extras(&mut extras);
    if let Some(link) = extras.get::<LinkHandle>() {
        // A `GuardedConnector`: the exchanges its IO followed decide. Not
        // written (hyper's "canceled") or written in part or whole, either
        // way unanswered, on a connection that had completed an exchange.
        return link.link.failed_unanswered_on_reused();
    }
    // Untracked (reqwest): reuse from the addresses seen on responses, and
    // "nothing came back" from hyper's error.
    let (Some(addrs), Some(info)) = (seen, extras.get::<HttpInfo>()) else {
        return false;
    };
    if connected.is_negotiated_h2() {
        return false;
    }
    let nothing_back =
        hyper.is_some_and(|e| e.is_canceled() || e.is_incomplete_message() || closed_by_peer(e));
    let (local, remote) = (info.local_addr(), info.remote_addr());
    let reused = addrs.contains(local, remote);
    // The connection is gone: a later one on the same local port is new.
    addrs.forget(local, remote);
    reused && nothing_back
}

/// The hyper error under hyper-util's.
#[cfg(feature = "hyper-util")]
fn hyper_error(error: &hyper_util::client::legacy::Error) -> Option<&hyper::Error> {
    error.source()?.downcast_ref::<hyper::Error>()
}

/// A reset or broken pipe under hyper's error.
#[cfg(feature = "hyper-util")]
fn closed_by_peer(error: &hyper::Error) -> bool {
    use std::io::ErrorKind::*;
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe);
        }
        source = e.source();
    }
    false
}
