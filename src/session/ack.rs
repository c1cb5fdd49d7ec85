//! Durable acknowledgements (`ack = replicas:N`), the rules: which replies wait for the master's
//! word that N replicas have what came before them, the `WAIT` the proxy sends for a batch of
//! writes, how its answer is read, and what a client is told when too few replicas confirmed.
//! Pure: `conn/acked.rs` applies these on a shared connection.
//!
//! A reply is held when it answers a write (the command table's `writes`, in the master's own
//! word where it listed its commands: `command::Rows`; a script or `FCALL` unless it is a
//! read-only form; `EXEC` of a transaction that queued a write), and so is every later reply of
//! the same client until the `WAIT` after it is answered, so a client's replies keep their order.
//! Other clients' replies pass at once: a read never waits behind another client's write.
//! When the `WAIT` answers N or more, the held replies go on as Redis gave them; otherwise
//! each held reply to a write that succeeded becomes `-NOREPLICAS …` (the master applied the
//! write: it may or may not survive a failover), and every other held reply (a read, an error)
//! goes on unchanged.

use std::sync::Arc;
use std::time::Duration;

use crate::command::{self, Effect, Rows};
use crate::resp::MARK_QUEUED;

/// The request the proxy sends after a batch of writes: `WAIT need timeout-ms`.
pub(super) fn wait_request(need: u32, timeout: Duration) -> Vec<u8> {
    let (n, t) = (need.to_string(), timeout.as_millis().max(1).to_string());
    format!(
        "*3\r\n$4\r\nWAIT\r\n${}\r\n{n}\r\n${}\r\n{t}\r\n",
        n.len(),
        t.len()
    )
    .into_bytes()
}

/// Turns the request tracker's marks (`RequestTracker::marks`: the command row each reply
/// answers) into whether the reply must wait for the replicas. Keeps the one piece of state a
/// transaction needs: whether a command it queued writes.
#[derive(Debug, Clone)]
pub(super) struct Marks {
    writes: Arc<Rows>,
    queued_write: bool,
}

impl Marks {
    pub(super) fn new(writes: Arc<Rows>) -> Marks {
        Marks {
            writes,
            queued_write: false,
        }
    }

    /// Whether the reply marked `mark` answers a write.
    pub(super) fn writes(&mut self, mark: u16) -> bool {
        if mark == u16::MAX {
            return true; // a command without a row: the safe answer
        }
        if mark & MARK_QUEUED != 0 {
            // `+QUEUED`: nothing ran yet; EXEC's reply tells.
            self.queued_write |= self.writes.has(mark & !MARK_QUEUED);
            return false;
        }
        let spec = command::at(mark);
        match spec.effect {
            Effect::Multi => {
                self.queued_write = false;
                false
            }
            // EXEC or DISCARD: only an EXEC of a transaction that queued a write.
            Effect::Exec => std::mem::take(&mut self.queued_write) && spec.name == b"EXEC",
            _ => self.writes.has(mark),
        }
    }
}

/// What the master answered to a `WAIT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// At least the replicas asked for have everything before it.
    Acked,
    /// Fewer did within the timeout.
    Short(i64),
    /// Not a count (an error: the master was demoted, or the connection's user may not WAIT).
    Failed(String),
    /// The proxy could not ask (no connection, no master, a switch came between: `barrier.rs`).
    Lost(String),
}

/// Read the whole reply to a `WAIT`.
pub(super) fn verdict(reply: &[u8], need: u32) -> Verdict {
    let line = reply.strip_suffix(b"\r\n").unwrap_or(reply);
    match line.split_first() {
        Some((b':', n)) => match std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
        {
            Some(n) if n >= i64::from(need) => Verdict::Acked,
            Some(n) => Verdict::Short(n),
            None => Verdict::Failed("an unreadable count".into()),
        },
        Some((b'-' | b'!', text)) => {
            let text = String::from_utf8_lossy(text);
            Verdict::Failed(text.lines().next().unwrap_or_default().to_string())
        }
        _ => Verdict::Failed("an unexpected reply".into()),
    }
}

/// The error a client gets instead of a write's reply when the replicas did not confirm it:
/// Redis's own `-NOREPLICAS` code and first words, then what happened, on one line.
pub(super) fn refusal(verdict: &Verdict, need: u32, timeout: Duration) -> Vec<u8> {
    let why = match verdict {
        Verdict::Acked => String::new(),
        Verdict::Short(n) => format!(
            "{n} of {need} replicas confirmed it within {} ms",
            timeout.as_millis()
        ),
        Verdict::Failed(e) => format!("the master answered WAIT with: {}", clean(e)),
        Verdict::Lost(e) => format!("the proxy could not ask the master: {}", clean(e)),
    };
    format!(
        "-NOREPLICAS Not enough good replicas to write: {why}. The master applied the write; a failover may lose it (sentinel-proxy ack = replicas:{need})\r\n"
    )
    .into_bytes()
}

/// One line of printable text (an error quoted inside another).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Whether a whole reply is an error (then the write did not happen: it goes on as it is).
pub(super) fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-' | b'!'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::index_of;

    fn mark(name: &str) -> u16 {
        index_of(name.as_bytes()).unwrap()
    }

    #[test]
    fn writes_scripts_and_transactions_are_held_reads_are_not() {
        let mut m = Marks::new(Arc::new(Rows::written_by_hand()));
        for (name, writes) in [
            ("SET", true),
            ("GET", false),
            ("INCR", true),
            ("EVAL", true),
            ("EVAL_RO", false),
            ("FCALL", true),
            ("FCALL_RO", false),
            ("DEL", true),
            ("EXISTS", false),
        ] {
            assert_eq!(m.writes(mark(name)), writes, "{name}");
        }
        assert!(
            m.writes(u16::MAX),
            "a command without a row counts as a write"
        );
        // MULTI, SET queued, GET queued, EXEC: only EXEC's reply waits.
        let tx = [
            mark("MULTI"),
            mark("SET") | MARK_QUEUED,
            mark("GET") | MARK_QUEUED,
            mark("EXEC"),
        ];
        let held: Vec<bool> = tx.iter().map(|&t| m.writes(t)).collect();
        assert_eq!(held, [false, false, false, true]);
        // A transaction of reads, and one discarded after a write: nothing waits.
        for tx in [
            [mark("MULTI"), mark("GET") | MARK_QUEUED, mark("EXEC")],
            [mark("MULTI"), mark("SET") | MARK_QUEUED, mark("DISCARD")],
        ] {
            assert!(tx.iter().all(|&t| !m.writes(t)));
        }
    }

    #[test]
    fn the_servers_word_on_writes_stands() {
        let learned = crate::command::Learned::from_entries([
            (&b"GET"[..], vec![&b"write"[..]]),
            (&b"SET"[..], vec![&b"readonly"[..]]),
        ]);
        let mut m = Marks::new(Arc::new(learned.write_rows()));
        assert!(m.writes(mark("GET")));
        assert!(!m.writes(mark("SET")));
        assert!(m.writes(mark("INCR")), "not listed: the hand list stands");
    }

    #[test]
    fn wait_answers_are_read_as_redis_gives_them() {
        assert_eq!(
            wait_request(1, Duration::from_millis(1500)),
            b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$4\r\n1500\r\n"
        );
        assert_eq!(verdict(b":2\r\n", 2), Verdict::Acked);
        assert_eq!(verdict(b":3\r\n", 2), Verdict::Acked);
        assert_eq!(verdict(b":0\r\n", 1), Verdict::Short(0));
        let demoted = b"-ERR WAIT cannot be used with replica instances.\r\n";
        assert!(matches!(verdict(demoted, 1), Verdict::Failed(e) if e.starts_with("ERR WAIT")));
        assert!(matches!(verdict(b"+OK\r\n", 1), Verdict::Failed(_)));
        let r = refusal(&Verdict::Short(0), 1, Duration::from_secs(1));
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("-NOREPLICAS Not enough good replicas to write"));
        assert!(text.contains("0 of 1 replicas confirmed it within 1000 ms"));
        assert!(text.contains("applied the write"));
        assert_eq!(text.matches("\r\n").count(), 1, "one line: {text:?}");
        let r = refusal(
            &Verdict::Failed("ERR a\rb".into()),
            1,
            Duration::from_secs(1),
        );
        assert_eq!(String::from_utf8(r).unwrap().matches('\r').count(), 1);
        assert!(is_error(b"-ERR x\r\n") && is_error(b"!5\r\nERR x\r\n") && !is_error(b"+OK\r\n"));
    }
}
