//! The carry's rules, fed as a session feeds them.

use super::*;
use crate::resp::{ReplyTracker, RequestTracker};
use std::time::Duration;

/// Feed requests and their replies as a session does; returns the carry.
fn session(requests: &[u8], replies: &[u8]) -> Carry {
    let mut req = RequestTracker::new(1 << 20);
    req.feed(requests).unwrap();
    let mut c = Carry::new();
    c.capture(&req.captured, &req.captured_bytes);
    let mut rep = ReplyTracker::new();
    let mut rest = replies;
    while !rest.is_empty() {
        // As the session does: what is due resolves before the next frame is looked at.
        c.replies_done(rep.replies, rep.last_error);
        let n = rep.feed_frame(rest).unwrap();
        if c.inspecting {
            c.inspect(&rest[..n], rep.at_reply_boundary());
        }
        rest = &rest[n..];
        c.replies_done(rep.replies, rep.last_error);
    }
    c
}

fn cmd(a: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    encode(&mut v, a);
    v
}

#[test]
fn a_state_command_that_failed_is_not_replayed() {
    // redis-py's connect sequence against Redis 7.0, which has no CLIENT SETINFO.
    let c = session(
        &[
            cmd(&[b"HELLO", b"3"]),
            cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py"]),
            cmd(&[b"CLIENT", b"SETINFO", b"LIB-VER", b"5.0"]),
            cmd(&[b"SELECT", b"2"]),
            cmd(&[b"CLIENT", b"SETNAME", b"app"]),
        ]
        .concat(),
        b"%1\r\n+server\r\n+redis\r\n-ERR unknown subcommand 'SETINFO'\r\n-ERR unknown subcommand 'SETINFO'\r\n+OK\r\n+OK\r\n",
    );
    assert!(c.resp3);
    assert_eq!(c.why_not(u64::MAX), None);
    let p = c.plan(false, false, Instant::now());
    assert_eq!(
        p.bytes,
        [
            cmd(&[b"HELLO", b"3"]),
            cmd(&[b"SELECT", b"2"]),
            cmd(&[b"CLIENT", b"SETNAME", b"app"])
        ]
        .concat()
    );
    assert_eq!(p.replies, vec![false; 3]);
}

#[test]
fn a_carry_with_nothing_left_is_empty() {
    let c = session(
        &cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"x"]),
        b"-ERR unknown subcommand\r\n",
    );
    assert!(c.is_empty());
    assert!(!session(&cmd(&[b"SELECT", b"1"]), b"+OK\r\n").is_empty());
    assert!(!session(&cmd(&[b"SELECT", b"1"]), b"").is_empty());
}

#[test]
fn a_lent_name_is_re_created_but_is_no_state_of_the_connection() {
    let setname = |n: &[u8]| cmd(&[b"CLIENT", b"SETNAME", n]);
    let mut c = session(&cmd(&[b"SELECT", b"1"]), b"+OK\r\n");
    c.lend_name(setname(b"pooled"));
    assert!(!c.is_empty());
    assert_eq!(c.pool_state(), Some(vec![cmd(&[b"SELECT", b"1"])]));
    let p = c.plan(false, false, Instant::now());
    assert_eq!(
        p.bytes,
        [cmd(&[b"SELECT", b"1"]), setname(b"pooled")].concat()
    );
    // A name the client gave the connection itself wins.
    let mut c = session(&setname(b"own"), b"+OK\r\n");
    c.lend_name(setname(b"pooled"));
    assert_eq!(c.plan(false, false, Instant::now()).bytes, setname(b"own"));
    assert_eq!(c.pool_state(), None);
}

#[test]
fn the_last_state_of_each_kind_is_kept() {
    let c = session(
        b"*2\r\n$6\r\nSELECT\r\n$1\r\n1\r\n*2\r\n$6\r\nSELECT\r\n$2\r\n99\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n",
        b"+OK\r\n-ERR DB index is out of range\r\n+OK\r\n",
    );
    assert_eq!(
        c.plan(false, false, Instant::now()).bytes,
        cmd(&[b"SELECT", b"3"])
    );
    // An inline state command cannot be replayed.
    assert_eq!(
        session(b"SELECT 3\r\n", b"+OK\r\n").why_not(u64::MAX),
        Some("state")
    );
    // One whose reply has not come yet is not known.
    assert_eq!(
        session(b"SELECT 3\r\n", b"").why_not(u64::MAX),
        Some("pending")
    );
}

#[test]
fn subscriptions_come_from_confirmations() {
    let c = session(
        b"GET a\r\nSUBSCRIBE a b\r\nPSUBSCRIBE p*\r\nUNSUBSCRIBE b\r\n",
        b"$1\r\nx\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:3\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:2\r\n",
    );
    assert_eq!(c.kind(false), Kind::PubSub);
    let p = c.plan(false, false, Instant::now());
    assert_eq!(
        p.bytes,
        [cmd(&[b"SUBSCRIBE", b"a"]), cmd(&[b"PSUBSCRIBE", b"p*"])].concat()
    );
    assert_eq!(p.confirmations, 2);
    // RESP3: pushes, and an unsubscribe of nothing has a null channel.
    let mut c = Carry::new();
    c.inspecting = true;
    c.inspect(b">3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n", true);
    c.inspect(b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n", true);
    assert_eq!(c.subs.shard.len(), 1);
}

#[test]
fn what_a_subscribed_resp2_connection_cannot_run_is_not_kept() {
    let mut c = session(
        b"SUBSCRIBE a\r\n",
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
    );
    let mut req = RequestTracker::new(1 << 20);
    req.feed(&cmd(&[b"SELECT", b"5"])).unwrap();
    c.capture(&req.captured, &req.captured_bytes);
    c.replies_done(5, false); // a message frame passes: it answers nothing
    let p = c.plan(false, false, Instant::now());
    assert_eq!(p.bytes, cmd(&[b"SUBSCRIBE", b"a"]));
}

#[test]
fn transactions_and_watch() {
    let c = session(
        b"WATCH k\r\n*1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nNOPE\r\n",
        b"+OK\r\n+OK\r\n+QUEUED\r\n-ERR unknown command 'NOPE'\r\n",
    );
    assert_eq!(c.kind(false), Kind::Transaction);
    assert_eq!(c.why_not(u64::MAX), None);
    let p = c.plan(false, false, Instant::now());
    assert_eq!(p.replies, vec![false, false, false, false, false, true]);
    assert!(p.bytes.starts_with(&cmd(&[b"WATCH", BROKEN_WATCH_KEY])));
    assert!(p.bytes.ends_with(&cmd(&[b"NOPE"])));
    let c = session(b"MULTI\r\nSET a 1\r\n", b"+OK\r\n+QUEUED\r\n");
    assert_eq!(
        c.why_not(u64::MAX),
        Some("transaction"),
        "inline: not captured"
    );
    let c = session(
        b"*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nEXEC\r\n",
        b"+OK\r\n*0\r\n",
    );
    assert_eq!(c.kind(false), Kind::Plain);
}

#[test]
fn tracking_is_carried_without_redirect() {
    let on = cmd(&[b"CLIENT", b"TRACKING", b"on", b"BCAST"]);
    let c = session(&on, b"+OK\r\n");
    assert!(c.tracking_on());
    assert_eq!(c.plan(false, false, Instant::now()).bytes, on);
    let c = session(
        &cmd(&[b"CLIENT", b"TRACKING", b"on", b"REDIRECT", b"7"]),
        b"+OK\r\n",
    );
    assert_eq!(c.why_not(u64::MAX), Some("tracking_redirect"));
    let c = session(
        &[on.clone(), cmd(&[b"CLIENT", b"TRACKING", b"off"])].concat(),
        b"+OK\r\n+OK\r\n",
    );
    assert_eq!(c.kind(false), Kind::Plain);
}

#[test]
fn a_blocking_command_is_reissued_with_the_time_left() {
    let c = session(&cmd(&[b"BLPOP", b"q", b"10"]), b"");
    assert!(c.blocking_in_flight());
    let p = c.plan(false, true, Instant::now() + Duration::from_secs(4));
    assert!(p.reissued);
    let a = args(&p.bytes)
        .iter()
        .map(|a| a.to_vec())
        .collect::<Vec<_>>();
    let left: f64 = std::str::from_utf8(&a[2]).unwrap().parse().unwrap();
    assert!((5.9..=6.0).contains(&left), "{left}");
    // Answered: no longer in flight.
    let c = session(&cmd(&[b"BLPOP", b"q", b"10"]), b"*-1\r\n");
    assert!(!c.blocking_in_flight());
}

/// A live upgrade hands a session's carry to the successor as `Carried` (JSON): the successor
/// re-creates the same plan, and only a carry with nothing pending, open or uncarriable goes.
#[test]
fn a_carry_handed_to_a_successor_makes_the_same_plan() {
    let c = session(
        &[
            cmd(&[b"HELLO", b"3"]),
            cmd(&[b"SELECT", b"2"]),
            cmd(&[b"CLIENT", b"SETNAME", b"app"]),
            cmd(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST"]),
            cmd(&[b"SUBSCRIBE", b"a", b"b"]),
        ]
        .concat(),
        b"%1\r\n+server\r\n+redis\r\n+OK\r\n+OK\r\n+OK\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
    );
    let carried = c.export().expect("nothing pending");
    let json = serde_json::to_vec(&carried).unwrap();
    let back: Carried = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, carried);
    let d = Carry::import(&back);
    assert!(d.resp3 && d.tracking_on());
    assert_eq!(d.kind(false), Kind::PubSub);
    let now = Instant::now();
    let (p, q) = (c.plan(false, false, now), d.plan(false, false, now));
    assert_eq!(
        (p.bytes, p.replies, p.confirmations),
        (q.bytes, q.replies, q.confirmations)
    );

    // Not handed over: a transaction open, a state change still unanswered.
    let open = session(&cmd(&[b"MULTI"]), b"+OK\r\n");
    assert!(open.export().is_none());
    let pending = session(&cmd(&[b"SELECT", b"2"]), b"");
    assert!(pending.export().is_none());
}
