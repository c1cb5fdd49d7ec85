//! Property tests of the pure parsers on the byte path and the sentinel path:
//! - any split of a valid RESP stream into chunks gives the same boundaries and state as feeding
//!   it whole (the session sees TCP's arbitrary segmentation);
//! - arbitrary bytes never panic a tracker, the sentinel reply decoder or the event parser.
//!
//! The same parsers are fuzzed without these generators' shape by `fuzz/` (cargo-fuzz).

use proptest::prelude::*;
use sentinel_proxy::resp::{Mode, ReplyTracker, RequestTracker};
use sentinel_proxy::sentinel::{client, events};

const MAX_BULK: u64 = 512 * 1024 * 1024;

/// Command names that change the tracker's state, plus plain ones.
const NAMES: &[&str] = &[
    "GET",
    "SET",
    "PING",
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "UNSUBSCRIBE",
    "BLPOP",
    "BRPOPLPUSH",
    "XREAD",
    "WAIT",
    "AUTH",
    "SELECT",
    "HELLO",
    "CLIENT",
    "MONITOR",
    "QUIT",
    "RESET",
    "SYNC",
    "PSYNC",
    "EVAL",
    "set",
    "multi",
    "client",
];

fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One request: a multibulk command (binary-safe arguments) or an inline one.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(NAMES).prop_map(|n| n.as_bytes().to_vec());
    let arg = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        prop::sample::select(vec!["REPLY", "OFF", "ON", "SKIP", "SETNAME", "0", "3"])
            .prop_map(|s| s.as_bytes().to_vec()),
    ];
    let multi = (name.clone(), prop::collection::vec(arg, 0..4)).prop_map(|(n, mut args)| {
        args.insert(0, n);
        multibulk(&args)
    });
    let word = "[a-zA-Z0-9]{1,8}";
    let inline = (name, prop::collection::vec(word, 0..3)).prop_map(|(n, words)| {
        let mut line = n;
        for w in words {
            line.push(b' ');
            line.extend_from_slice(w.as_bytes());
        }
        line.extend_from_slice(b"\r\n");
        line
    });
    prop_oneof![4 => multi, 1 => inline]
}

/// One RESP2/RESP3 reply, nested up to a few levels.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let line = "[a-zA-Z0-9 ]{0,12}";
    let leaf = prop_oneof![
        line.prop_map(|s| format!("+{s}\r\n").into_bytes()),
        line.prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
            let mut out = format!("${}\r\n", b.len()).into_bytes();
            out.extend_from_slice(&b);
            out.extend_from_slice(b"\r\n");
            out
        }),
        Just(b"$-1\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
        Just(b"_\r\n".to_vec()),
        Just(b"#t\r\n".to_vec()),
        Just(b",3.25\r\n".to_vec()),
        Just(b"(3492890328409238509324850943850943825024385\r\n".to_vec()),
        Just(b"=15\r\ntxt:Some string\r\n".to_vec()),
        Just(b"!21\r\nSYNTAX invalid syntax\r\n".to_vec()),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        let elems = prop::collection::vec(inner, 0..5);
        (prop::sample::select(vec!['*', '~', '>', '%', '|']), elems).prop_map(|(kind, elems)| {
            // Maps and attributes count pairs: use an even number of elements.
            let (n, take) = match kind {
                '%' | '|' => (elems.len() / 2, elems.len() / 2 * 2),
                _ => (elems.len(), elems.len()),
            };
            let mut out = format!("{kind}{n}\r\n").into_bytes();
            for e in &elems[..take] {
                out.extend_from_slice(e);
            }
            if kind == '|' {
                // An attribute precedes the reply it annotates.
                out.extend_from_slice(b"+OK\r\n");
            }
            out
        })
    })
}

/// The command name of one generated request (multibulk or inline), upper-cased.
fn name_of(request: &[u8]) -> Vec<u8> {
    let name = match request.strip_prefix(b"*") {
        Some(rest) => {
            let mut lines = rest.split(|&b| b == b'\n');
            lines.next(); // the argument count
            lines.next(); // `$len`
            lines.next().unwrap_or_default()
        }
        None => request
            .split(|&b| b == b' ' || b == b'\r')
            .next()
            .unwrap_or_default(),
    };
    name.strip_suffix(b"\r")
        .unwrap_or(name)
        .to_ascii_uppercase()
}

/// Requests Redis runs of `requests`: none after QUIT (it closes) or SYNC/PSYNC (a replication
/// stream follows, not requests).
fn counted(requests: &[Vec<u8>]) -> u64 {
    let end = requests
        .iter()
        .position(|r| matches!(name_of(r).as_slice(), b"QUIT" | b"SYNC" | b"PSYNC"));
    end.map_or(requests.len(), |i| i + 1) as u64
}

/// The tracker's observable state.
fn req_state(t: &RequestTracker) -> impl PartialEq + std::fmt::Debug {
    (
        t.requests,
        t.expected_replies,
        t.at_request_boundary(),
        t.in_transaction,
        t.pubsub,
        t.monitor,
        t.blocking_seq,
        t.captured.clone(),
        t.captured_bytes.clone(),
        t.quit,
        t.replication,
    )
}

fn rep_state(t: &ReplyTracker) -> impl PartialEq + std::fmt::Debug {
    (
        t.replies,
        t.pushes,
        t.errors,
        t.saw_not_master,
        t.at_reply_boundary(),
    )
}

/// Cut `stream` at the given points (taken modulo its length, sorted).
fn chunks(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    at.windows(2).map(|w| stream[w[0]..w[1]].to_vec()).collect()
}

/// Feed `chunks` to a pooled-mode tracker the way `session/pooled.rs` does: the bytes it would
/// put on a shared connection, and the pin (why, where in the stream) if one stopped it.
fn pooled_feed(chunks: &[Vec<u8>]) -> (Vec<u8>, Option<(&'static str, usize)>) {
    let mut t = RequestTracker::new(MAX_BULK);
    t.mode = Mode::Pool;
    let (mut partial, mut forwarded, mut offset) = (Vec::new(), Vec::new(), 0);
    for c in chunks {
        t.feed(c).unwrap();
        let end = t.boundary as usize;
        if end > 0 {
            forwarded.append(&mut partial);
            forwarded.extend_from_slice(&c[..end]);
        }
        if let Some(pin) = t.pin {
            let at = match t.pin_start() {
                Some(i) => offset + i,
                None => offset - partial.len(),
            };
            return (forwarded, Some((pin.label(), at)));
        }
        partial.extend_from_slice(&c[end..]);
        offset += c.len();
    }
    (forwarded, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_boundaries_do_not_depend_on_the_split(
        requests in prop::collection::vec(request(), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream = requests.concat();
        let mut whole = RequestTracker::new(MAX_BULK);
        whole.feed(&stream).unwrap();
        let mut split = RequestTracker::new(MAX_BULK);
        for c in chunks(&stream, &cuts) {
            split.feed(&c).unwrap();
        }
        prop_assert_eq!(req_state(&whole), req_state(&split));
        prop_assert!(whole.at_request_boundary());
        // Every request is counted once, wherever the cuts fell.
        prop_assert_eq!(whole.requests, counted(&requests));
    }

    /// Pooled mode, fed as a pooled session feeds it (complete requests go on, the start of an
    /// incomplete one is kept): what goes on is exactly the stream up to the first request that
    /// pins. The pin is found at the same place wherever the cuts fell, but for a transaction:
    /// one that arrives whole shares, one cut across reads pins at its MULTI, never later.
    #[test]
    fn pooled_mode_forwards_exactly_the_requests_before_the_pin(
        requests in prop::collection::vec(request(), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream = requests.concat();
        let whole = pooled_feed(std::slice::from_ref(&stream));
        let split = pooled_feed(&chunks(&stream, &cuts));
        let end = |pin: Option<(&str, usize)>| pin.map_or(stream.len(), |(_, at)| at);
        let (whole_end, split_end) = (end(whole.1), end(split.1));
        prop_assert_eq!(&whole.0[..], &stream[..whole_end]);
        prop_assert_eq!(&split.0[..], &stream[..split_end]);
        prop_assert!(split_end <= whole_end);
        let transactions = requests
            .iter()
            .any(|r| r.windows(5).any(|w| w.eq_ignore_ascii_case(b"MULTI")));
        if !transactions {
            prop_assert_eq!(&whole, &split);
        }
    }

    #[test]
    fn reply_boundaries_do_not_depend_on_the_split(
        replies in prop::collection::vec(reply(), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream = replies.concat();
        let mut whole = ReplyTracker::new();
        whole.feed(&stream).unwrap();
        let mut split = ReplyTracker::new();
        for c in chunks(&stream, &cuts) {
            split.feed(&c).unwrap();
        }
        prop_assert_eq!(rep_state(&whole), rep_state(&split));
        prop_assert!(whole.at_reply_boundary());
        let pushes = replies.iter().filter(|r| r.starts_with(b">")).count() as u64;
        prop_assert_eq!(whole.pushes, pushes);
        prop_assert_eq!(whole.replies + whole.pushes, replies.len() as u64);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_trackers(
        data in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max_bulk in 0u64..64,
    ) {
        let mut req = RequestTracker::new(max_bulk);
        for c in chunks(&data, &cuts) {
            if let Err((_, valid)) = req.feed(&c) {
                // The valid prefix is within the chunk; the session forwards only that.
                prop_assert!(valid <= c.len());
                break;
            }
        }
        let mut rep = ReplyTracker::new();
        for c in chunks(&data, &cuts) {
            if rep.feed(&c).is_err() {
                break;
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_sentinel_parsers(
        data in prop::collection::vec(any::<u8>(), 0..512),
        text in ".{0,80}",
    ) {
        client::interpret_reply(&data);
        let _ = events::parse("+switch-master", &text);
        let _ = events::parse("+selected-slave", &text);
        let _ = events::parse("+odown", &text);
    }
}
