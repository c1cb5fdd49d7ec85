//! A dedicated session's reads in flight, kept so that they can be sent again when the master
//! dies before answering them: a read changes nothing, so the next master can answer it and the
//! client need not see the loss. Sans-IO: the session tells it what it forwarded and what each
//! request was (the tracker's marks), and asks for the requests to send again.
//!
//! Only a run of requests that all read (the master's own `readonly` flag, as `COMMAND` gave it;
//! never a script, a transaction or a command the proxy does not know) is kept, from the moment
//! nothing is owed to the moment nothing is owed again; the bytes kept are the ones forwarded,
//! copied from the read buffer. A write among them, a run past `KEEP_MAX`, and nothing is kept
//! until the session is quiet again. An idle session keeps one small buffer (its capacity; past
//! `KEEP_CAPACITY` it is given back).

use std::sync::Arc;

use crate::Group;
use crate::command::Rows;
use crate::resp::MARK_QUEUED;

/// The most bytes of requests in flight kept (a pipeline past it is not sent again).
const KEEP_MAX: usize = 64 * 1024;

/// An idle session gives its buffer back past this capacity.
const KEEP_CAPACITY: usize = 4 * 1024;

pub(in crate::session) struct Again {
    reads: Arc<Rows>,
    /// The requests forwarded since `from` replies were owed, while `ok`.
    bytes: Vec<u8>,
    from: u64,
    /// Every request in `bytes` only reads, and `bytes` holds all since `from`.
    ok: bool,
    /// Every request completed since the last forward only reads.
    noted_reads: bool,
}

impl Again {
    /// For a session of `group`, once its master said which commands only read.
    pub(in crate::session) fn new(group: &Group) -> Option<Again> {
        let reads = group.commands.load().as_ref()?.reads.clone();
        Some(Again {
            reads,
            bytes: Vec::new(),
            from: 0,
            ok: false,
            noted_reads: true,
        })
    }

    /// A request was completed; `mark`: what it is (`RequestTracker`'s mark).
    pub(in crate::session) fn note(&mut self, mark: u16) {
        self.noted_reads &= mark & MARK_QUEUED == 0 && mark != u16::MAX && self.reads.has(mark);
    }

    /// `bytes` were forwarded (the requests noted since the last call, and maybe the start of
    /// one not complete yet); `quiet`: nothing was owed and no request was cut before them, when
    /// `owed` replies had been asked for.
    pub(in crate::session) fn forwarded(&mut self, bytes: &[u8], quiet: bool, owed: u64) {
        if quiet {
            self.bytes.clear();
            if self.bytes.capacity() > KEEP_CAPACITY {
                self.bytes = Vec::new();
            }
            self.from = owed;
            self.ok = true;
        }
        self.ok &= std::mem::replace(&mut self.noted_reads, true);
        if self.ok && self.bytes.len() + bytes.len() <= KEEP_MAX {
            self.bytes.extend_from_slice(bytes);
        } else {
            self.ok = false;
            self.bytes.clear();
        }
    }

    /// The master went away after answering `answered` replies of those asked for: the requests
    /// it did not answer, if all of them only read, and how many there are. Taken once.
    pub(in crate::session) fn take(&mut self, answered: u64) -> Option<(Vec<u8>, u64)> {
        if !std::mem::take(&mut self.ok) {
            return None;
        }
        let skip = answered.checked_sub(self.from)?;
        let at = after_requests(&self.bytes, skip)?;
        let rest = self.bytes[at..].to_vec();
        self.bytes.clear();
        let count = count_requests(&rest);
        Some((rest, count))
    }
}

/// Where the `n`th complete request in `buf` ends (requests the tracker already accepted:
/// multibulk or inline); `None` if `buf` holds fewer.
fn after_requests(buf: &[u8], n: u64) -> Option<usize> {
    let mut at = 0;
    for _ in 0..n {
        at += one_request(&buf[at..])?;
    }
    Some(at)
}

/// The complete requests in `buf` (a partial one at the end is not counted).
fn count_requests(buf: &[u8]) -> u64 {
    let (mut at, mut n) = (0, 0);
    while let Some(len) = one_request(&buf[at..]) {
        at += len;
        n += 1;
    }
    n
}

/// The length of the first request in `buf`, if it is whole.
fn one_request(buf: &[u8]) -> Option<usize> {
    let line = |from: usize| -> Option<(&[u8], usize)> {
        let end = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[from..from + end], from + end + 2))
    };
    let number = |s: &[u8]| -> Option<usize> { std::str::from_utf8(s).ok()?.parse().ok() };
    if buf.first() != Some(&b'*') {
        // Inline: up to the newline.
        return buf.iter().position(|&b| b == b'\n').map(|p| p + 1);
    }
    let (head, mut at) = line(0)?;
    let args = number(&head[1..])?;
    for _ in 0..args {
        let (len, next) = line(at)?;
        let len = number(len.strip_prefix(b"$")?)?;
        at = next + len + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command;

    fn again() -> Again {
        let ro: &[u8] = b"readonly";
        let w: &[u8] = b"write";
        let learned = crate::command::Learned::from_entries([
            (&b"GET"[..], vec![ro]),
            (&b"SET"[..], vec![w]),
        ]);
        Again {
            reads: Arc::new(learned.read_rows()),
            bytes: Vec::new(),
            from: 0,
            ok: false,
            noted_reads: true,
        }
    }

    const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";

    fn row(name: &str) -> u16 {
        command::index_of(name.as_bytes()).unwrap()
    }

    #[test]
    fn reads_in_flight_are_given_back_past_those_answered() {
        let mut a = again();
        a.note(row("GET"));
        a.note(row("GET"));
        // Two GETs and the start of a third.
        a.forwarded(&[GET, GET, b"*2\r\n$3\r\nG"].concat(), true, 10);
        a.note(row("GET"));
        a.forwarded(b"ET\r\n$1\r\na\r\n", false, 12);
        // The first answered, then the master died.
        let (bytes, n) = a.take(11).unwrap();
        assert_eq!((bytes, n), ([GET, GET].concat(), 2));
        assert!(a.take(11).is_none(), "once");
    }

    #[test]
    fn a_write_in_the_run_keeps_nothing_until_the_session_is_quiet() {
        let mut a = again();
        a.note(row("GET"));
        a.note(row("SET"));
        a.forwarded(&[GET, SET].concat(), true, 0);
        a.note(row("GET"));
        a.forwarded(GET, false, 2);
        assert!(a.take(1).is_none());
        a.note(row("GET"));
        a.forwarded(GET, true, 3);
        assert_eq!(a.take(3).unwrap(), (GET.to_vec(), 1));
        // A transaction's command, or one the table does not know, is no read.
        for mark in [row("GET") | MARK_QUEUED, u16::MAX] {
            a.note(mark);
            a.forwarded(GET, true, 4);
            assert!(a.take(4).is_none());
        }
    }

    #[test]
    fn requests_are_framed_as_the_tracker_accepted_them() {
        assert_eq!(one_request(GET), Some(GET.len()));
        assert_eq!(one_request(b"PING\r\nPING\r\n"), Some(6));
        assert_eq!(one_request(&SET[..SET.len() - 1]), None);
        assert_eq!(
            after_requests(&[GET, SET].concat(), 2),
            Some(GET.len() + SET.len())
        );
        assert_eq!(after_requests(GET, 2), None);
        assert_eq!(count_requests(&[GET, b"*1\r\n"].concat()), 1);
    }
}
