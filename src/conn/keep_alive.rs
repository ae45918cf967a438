//! The `Keep-Alive` response header, and when a connection is to be
//! retired by it.

use std::time::Duration;

/// What a `Keep-Alive` response header advertises: how long the server
/// keeps an idle connection, and how many more requests it takes on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeepAlive {
    pub(crate) timeout: Option<Duration>,
    pub(crate) max: Option<u64>,
}

impl KeepAlive {
    /// Reads `Keep-Alive: timeout=N, max=M` (RFC 2068, as Apache and nginx
    /// send it) from the values of every `Keep-Alive` field. Unknown or
    /// malformed parameters are ignored; `None` when nothing was readable.
    pub(crate) fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<KeepAlive> {
        let mut ka = KeepAlive::default();
        for value in values {
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            for param in value.split(',') {
                let Some((name, n)) = param.split_once('=') else {
                    continue;
                };
                let Ok(n) = n.trim().trim_matches('"').parse::<u64>() else {
                    continue;
                };
                let name = name.trim();
                if name.eq_ignore_ascii_case("timeout") {
                    ka.timeout = Some(Duration::from_secs(n));
                } else if name.eq_ignore_ascii_case("max") {
                    ka.max = Some(n);
                }
            }
        }
        (ka != KeepAlive::default()).then_some(ka)
    }

    /// How long a connection may sit idle before poolguard retires it: the
    /// advertised timeout less a margin of a quarter of it, at most 1 s,
    /// for the next request to reach the server before its timer fires.
    pub(crate) fn retire_after(timeout: Duration) -> Duration {
        timeout.saturating_sub((timeout / 4).min(Duration::from_secs(1)))
    }
}

/// The limits a connection lives under, from the last `Keep-Alive` header
/// it received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Retire after sitting idle this long.
    pub(crate) idle: Option<Duration>,
    /// Retire once this many exchanges are complete.
    pub(crate) last: Option<u64>,
}

impl Limits {
    /// The limits after exchange number `completed` answered with `ka`:
    /// `max` counts the requests still allowed after this one (Apache
    /// counts down to 1, then says `Connection: close`). A header that
    /// leaves a limit out keeps the earlier one.
    pub(crate) fn update(self, completed: u64, ka: KeepAlive) -> Limits {
        Limits {
            idle: ka.timeout.map(KeepAlive::retire_after).or(self.idle),
            last: ka.max.map(|m| completed.saturating_add(m)).or(self.last),
        }
    }

    /// Whether any limit applies.
    pub(crate) fn any(self) -> bool {
        self.idle.is_some() || self.last.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Option<KeepAlive> {
        KeepAlive::parse([v.as_bytes()])
    }

    #[test]
    fn headers() {
        let ka = parse("timeout=5, max=100").unwrap();
        assert_eq!(ka.timeout, Some(Duration::from_secs(5)));
        assert_eq!(ka.max, Some(100));
        let ka = parse(" Timeout = \"2\" ").unwrap();
        assert_eq!((ka.timeout, ka.max), (Some(Duration::from_secs(2)), None));
        assert_eq!(parse("max=0").unwrap().max, Some(0));
        assert!(parse("timeout=soon, foo").is_none(), "nothing readable");
        assert!(KeepAlive::parse([]).is_none());
        let ka = KeepAlive::parse([&b"timeout=3"[..], b"max=7"]).unwrap();
        assert_eq!(
            (ka.timeout, ka.max),
            (Some(Duration::from_secs(3)), Some(7))
        );
        assert!(KeepAlive::parse([&[0xff, 0xfe][..]]).is_none());
        let huge = parse("timeout=18446744073709551615").unwrap();
        assert_eq!(huge.timeout, Some(Duration::from_secs(u64::MAX)));
    }

    #[test]
    fn retire_after_leaves_a_margin() {
        assert_eq!(
            KeepAlive::retire_after(Duration::from_secs(1)),
            Duration::from_millis(750)
        );
        assert_eq!(
            KeepAlive::retire_after(Duration::from_secs(60)),
            Duration::from_secs(59)
        );
        assert_eq!(KeepAlive::retire_after(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            KeepAlive::retire_after(Duration::MAX),
            Duration::MAX - Duration::from_secs(1)
        );
    }

    #[test]
    fn limits_count_down_from_the_exchange_that_set_them() {
        let l = Limits::default();
        assert!(!l.any());
        let ka = |t: Option<u64>, m: Option<u64>| KeepAlive {
            timeout: t.map(Duration::from_secs),
            max: m,
        };
        let l = l.update(1, ka(Some(5), Some(2)));
        assert_eq!(l.last, Some(3));
        assert_eq!(
            l.idle,
            Some(Duration::from_millis(3750) + Duration::from_millis(250))
        );
        // A later header without `max` keeps the count.
        let l = l.update(2, ka(Some(1), None));
        assert_eq!(
            (l.last, l.idle),
            (Some(3), Some(Duration::from_millis(750)))
        );
        assert_eq!(l.update(u64::MAX, ka(None, Some(5))).last, Some(u64::MAX));
    }
}
