//! RESP boundary tracking: pure, incremental, allocation-free state machines that watch the bytes
//! a session forwards (unchanged) and tell where requests and replies end.
//!
//! - [`RequestTracker`] reads the client → server stream (RESP multibulk and inline commands, as
//!   Redis parses them), counts the replies each request will produce (honouring
//!   `CLIENT REPLY OFF|SKIP|ON`), and notes the commands that change what a boundary means:
//!   MULTI/WATCH…EXEC, SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE, MONITOR, blocking commands. The requests a
//!   migrated session may have to carry to a new backend (connection state such as AUTH, HELLO,
//!   SELECT, CLIENT SETNAME/TRACKING; MULTI and what it queues; WATCH; blocking commands) are
//!   re-encoded into [`RequestTracker::captured`], each with the number of the reply that will
//!   say whether it worked; the session decides what to keep (`session/carry.rs`). `RESET` clears
//!   the modes, as Redis does; `QUIT` ends the stream (Redis runs nothing after it);
//!   `SYNC`/`PSYNC` turn the connection into a replication stream, which is no longer
//!   request/reply.
//! - [`ReplyTracker`] reads the server → client stream, RESP2 and RESP3 alike (type bytes do not
//!   overlap), counting complete top-level replies at any nesting depth; push frames (`>`) and
//!   attributes (`|`) are not replies. It flags `-READONLY`/`-MASTERDOWN` replies, which mean the
//!   node is no longer a usable master.
//!
//! A session is at a *request boundary* when every byte it forwarded belonged to complete
//! requests and every expected reply has arrived. Chunks can split the stream anywhere: feeding
//! the same bytes in any split gives the same counts (tested below).

mod reply;
mod request;

pub use reply::{ReplyError, ReplyTracker};
pub use request::{CaptureKind, Captured, MARK_QUEUED, Mode, RequestTracker};

/// Encode a command as a RESP multibulk of bulk strings, as clients send it: the one encoder of
/// the commands the proxy composes itself (its own queries, replays after a move, the gate).
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Redis's limit for the number of arguments.
const MAX_ARGS: i64 = i32::MAX as i64;

/// A request stream Redis itself would reject; the text follows `-ERR Protocol error: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    InvalidMultibulkLength,
    ExpectedDollar(u8),
    InvalidBulkLength,
    TooBigInline,
}

impl ProtocolError {
    pub fn message(&self) -> String {
        match self {
            ProtocolError::InvalidMultibulkLength => "invalid multibulk length".into(),
            ProtocolError::ExpectedDollar(b) => {
                format!("expected '$', got '{}'", char::from(*b).escape_default())
            }
            ProtocolError::InvalidBulkLength => "invalid bulk length".into(),
            ProtocolError::TooBigInline => "too big inline request".into(),
        }
    }
}

enum NumStep {
    More,
    Done(i64),
    Bad,
}

/// One byte of a `<digits>\r\n` length line.
fn number_byte(num: &mut i64, neg: &mut bool, digits: &mut u8, b: u8) -> NumStep {
    match b {
        b'0'..=b'9' => {
            *digits += 1;
            if *digits > 18 {
                return NumStep::Bad;
            }
            *num = *num * 10 + (b - b'0') as i64;
            NumStep::More
        }
        b'-' if *digits == 0 && !*neg => {
            *neg = true;
            NumStep::More
        }
        b'\r' => NumStep::More,
        b'\n' if *digits > 0 => NumStep::Done(if *neg { -*num } else { *num }),
        _ => NumStep::Bad,
    }
}

fn memchr_nl(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// Writes into a fixed buffer without allocating.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, len: 0 }
    }
    fn byte(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }
    fn bytes(&mut self, bs: &[u8]) {
        for &b in bs {
            self.byte(b);
        }
    }
    fn num(&mut self, mut n: u64) {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let digits = tmp;
        self.bytes(&digits[i..]);
    }
}
