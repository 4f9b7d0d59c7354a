//! Client-chosen message ids: a random per-client prefix and a counter, so every send
//! carries an id and a resend after a reconnect is idempotent on the server.

use std::sync::atomic::{AtomicU64, Ordering};

/// Generates ids unique across processes: `<13 base-36 random chars>-<counter>`.
#[derive(Debug)]
pub(crate) struct IdGen {
    prefix: String,
    next: AtomicU64,
}

impl IdGen {
    pub(crate) fn new() -> Self {
        Self { prefix: base36(fastrand::u64(..)), next: AtomicU64::new(1) }
    }

    /// A fresh id (at most 30 bytes, far below the 128-byte limit).
    pub(crate) fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}", self.prefix, base36(n))
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(13);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The current time as RFC 3339 UTC with milliseconds, like the server's timestamps.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_short() {
        let (a, b) = (IdGen::new(), IdGen::new());
        let ids: std::collections::HashSet<String> = (0..1000).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|i| i.len() <= 30));
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn timestamps_look_like_the_servers() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-11-26T06:13:12.541Z".len(), "{t}");
        assert!(t.ends_with('Z'));
    }
}
