//! The few commands and frames the proxy composes or looks into itself, on the rare paths where a
//! session is carried to a new master (`carry.rs`, `migrate.rs`): the arguments of a captured
//! command, a blocking command with what is left of its timeout, and what a
//! frame of a subscribed connection is (a subscription confirmation, the proxy's marker, or
//! anything else). Pure: no sockets.

use std::time::Duration;

use crate::command;
use crate::resp::encode_command as encode;

/// A frame of a subscribed connection, as far as the proxy cares.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame<'a> {
    /// `(p|s)subscribe` / `(p|s)unsubscribe` confirmation; the channel is `None` for the
    /// `unsubscribe` Redis sends when nothing was subscribed.
    Confirmation {
        subscribe: bool,
        set: u8,
        channel: Option<&'a [u8]>,
    },
    /// The answer to the proxy's own `PING <token>`.
    Marker,
    Other,
}

/// The arguments of a multibulk request as the request tracker re-encodes it.
pub(super) fn args(cmd: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = cmd;
    let line = |r: &[u8]| -> Option<(usize, usize)> {
        let nl = r.iter().position(|&b| b == b'\n')?;
        let n = std::str::from_utf8(r.get(1..nl.checked_sub(1)?)?)
            .ok()?
            .parse()
            .ok()?;
        Some((n, nl + 1))
    };
    let Some((n, used)) = line(rest) else {
        return out;
    };
    rest = &rest[used..];
    for _ in 0..n {
        let Some((len, used)) = line(rest) else {
            break;
        };
        let Some(arg) = rest.get(used..used + len) else {
            break;
        };
        out.push(arg);
        rest = rest.get(used + len + 2..).unwrap_or(&[]);
    }
    out
}

/// The blocking command `cmd` with its timeout reduced by `elapsed` (never to 0, which means
/// forever: to the smallest timeout instead). A command without a timeout (XREAD without BLOCK)
/// or with 0 is unchanged.
pub(super) fn with_timeout_left(cmd: &[u8], elapsed: Duration) -> Vec<u8> {
    let parts = args(cmd);
    if parts.is_empty() {
        return cmd.to_vec();
    }
    // Where the timeout is, and whether it is in seconds (a float) or milliseconds (the
    // command table knows).
    let at = command::timeout_at(&parts);
    let mut a: Vec<Vec<u8>> = parts.into_iter().map(|x| x.to_vec()).collect();
    if let Some((i, seconds)) = at
        && let Some(t) = a.get(i).and_then(|t| std::str::from_utf8(t).ok())
        && let Ok(t) = t.parse::<f64>()
        && t > 0.0
    {
        let total = if seconds { t } else { t / 1000.0 };
        let left = (total - elapsed.as_secs_f64()).max(0.001);
        a[i] = if seconds {
            format!("{left:.3}").into_bytes()
        } else {
            format!("{}", (left * 1000.0).ceil() as u64).into_bytes()
        };
    }
    let refs: Vec<&[u8]> = a.iter().map(|x| x.as_slice()).collect();
    let mut out = Vec::new();
    encode(&mut out, &refs);
    out
}

pub(super) fn looks_like_confirmation(frame: &[u8]) -> bool {
    frame.len() > 8 && (frame[0] == b'*' || frame[0] == b'>') && frame[1] == b'3'
}

/// Read a `$<len>\r\n<data>\r\n` (or a null) at the start of `b`: (data, rest).
fn bulk(b: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    if let Some(rest) = b.strip_prefix(b"_\r\n") {
        return Some((None, rest));
    }
    let b = b.strip_prefix(b"$")?;
    let nl = b.iter().position(|&c| c == b'\n')?;
    let n: i64 = std::str::from_utf8(b.get(..nl.checked_sub(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    let rest = &b[nl + 1..];
    if n < 0 {
        return Some((None, rest));
    }
    let n = n as usize;
    Some((Some(rest.get(..n)?), rest.get(n + 2..)?))
}

/// What a complete frame of a subscribed connection is. `token`: the proxy's own PING marker
/// (empty: none expected).
pub(super) fn parse_frame<'a>(frame: &'a [u8], token: &[u8]) -> Frame<'a> {
    if !token.is_empty() {
        // `PING <token>` answers `*2 pong <token>` while subscribed (RESP2) and a bulk string
        // otherwise.
        let marker = match frame.first() {
            Some(b'*') => frame
                .strip_prefix(b"*2\r\n$4\r\npong\r\n")
                .and_then(bulk)
                .is_some_and(|(d, _)| d == Some(token)),
            Some(b'$') => bulk(frame).is_some_and(|(d, _)| d == Some(token)),
            _ => false,
        };
        if marker {
            return Frame::Marker;
        }
    }
    let Some(body) = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))
    else {
        return Frame::Other;
    };
    let Some((Some(kind), rest)) = bulk(body) else {
        return Frame::Other;
    };
    let (subscribe, set) = match kind {
        b"subscribe" => (true, b'c'),
        b"psubscribe" => (true, b'p'),
        b"ssubscribe" => (true, b's'),
        b"unsubscribe" => (false, b'c'),
        b"punsubscribe" => (false, b'p'),
        b"sunsubscribe" => (false, b's'),
        _ => return Frame::Other,
    };
    match bulk(rest) {
        Some((channel, rest)) if rest.first() == Some(&b':') => Frame::Confirmation {
            subscribe,
            set,
            channel,
        },
        _ => Frame::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(a: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, a);
        v
    }

    #[test]
    fn frames_are_recognised() {
        assert_eq!(
            parse_frame(b"*2\r\n$4\r\npong\r\n$3\r\ntok\r\n", b"tok"),
            Frame::Marker
        );
        assert_eq!(parse_frame(b"$3\r\ntok\r\n", b"tok"), Frame::Marker);
        assert_eq!(parse_frame(b"$3\r\ntok\r\n", b"other"), Frame::Other);
        assert_eq!(
            parse_frame(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n", b""),
            Frame::Confirmation {
                subscribe: false,
                set: b'c',
                channel: None
            }
        );
        assert_eq!(
            parse_frame(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n", b""),
            Frame::Other
        );
    }

    #[test]
    fn timeouts_are_cut_by_the_time_spent() {
        assert_eq!(
            with_timeout_left(&cmd(&[b"BLPOP", b"q", b"0"]), Duration::from_secs(9)),
            cmd(&[b"BLPOP", b"q", b"0"]),
            "0 is forever"
        );
        assert_eq!(
            with_timeout_left(
                &cmd(&[b"BRPOP", b"a", b"b", b"2.5"]),
                Duration::from_secs(1)
            ),
            cmd(&[b"BRPOP", b"a", b"b", b"1.500"])
        );
        assert_eq!(
            with_timeout_left(
                &cmd(&[b"XREAD", b"BLOCK", b"5000", b"STREAMS", b"s", b"$"]),
                Duration::from_secs(2)
            ),
            cmd(&[b"XREAD", b"BLOCK", b"3000", b"STREAMS", b"s", b"$"])
        );
        assert_eq!(
            with_timeout_left(
                &cmd(&[b"BLMPOP", b"1", b"1", b"q", b"LEFT"]),
                Duration::from_secs(5)
            ),
            cmd(&[b"BLMPOP", b"0.001", b"1", b"q", b"LEFT"])
        );
        assert_eq!(args(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), [&b"GET"[..], b"k"]);
    }
}
