//! The server → client side: [`ReplyTracker`] (see the module doc of `resp`).

use super::{NumStep, memchr_nl, number_byte};

/// Aggregate nesting followed without allocating; deeper replies (Lua can nest thousands deep)
/// spill into a vector that lives only as long as such a reply.
const INLINE_DEPTH: usize = 32;

/// Tracks the server → client byte stream. See the module doc.
#[derive(Debug, Clone)]
pub struct ReplyTracker {
    state: RepState,
    num: i64,
    neg: bool,
    digits: u8,
    len_kind: u8,
    bulk_left: u64,
    top_kind: u8,
    /// Remaining elements per open aggregate; the top bit marks an attribute. The first
    /// `INLINE_DEPTH` levels live here, deeper ones in `deep`.
    stack: [u32; INLINE_DEPTH],
    deep: Vec<u32>,
    depth: usize,
    err_prefix: [u8; 12],
    err_len: u8,
    err_top: bool,
    /// Complete top-level replies (not pushes or attributes).
    pub replies: u64,
    /// Complete push frames (RESP3 out-of-band data).
    pub pushes: u64,
    /// Top-level error replies (`-…` or `!…`).
    pub errors: u64,
    /// A top-level `-READONLY` or `-MASTERDOWN` error was seen.
    pub saw_not_master: bool,
    /// Whether the last complete top-level reply was an error.
    pub last_error: bool,
    frame_done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RepState {
    Type,
    Line,
    Len,
    Bulk,
}

const ATTR_FLAG: u32 = 1 << 31;

/// A server reply stream that is not RESP: the session cannot track it and must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyError;

impl Default for ReplyTracker {
    fn default() -> Self {
        ReplyTracker::new()
    }
}

impl ReplyTracker {
    pub fn new() -> ReplyTracker {
        ReplyTracker {
            state: RepState::Type,
            num: 0,
            neg: false,
            digits: 0,
            len_kind: 0,
            bulk_left: 0,
            top_kind: 0,
            stack: [0; INLINE_DEPTH],
            deep: Vec::new(),
            depth: 0,
            err_prefix: [0; 12],
            err_len: 0,
            err_top: false,
            replies: 0,
            pushes: 0,
            errors: 0,
            saw_not_master: false,
            last_error: false,
            frame_done: false,
        }
    }

    /// True when no reply is partly received.
    pub fn at_reply_boundary(&self) -> bool {
        self.state == RepState::Type && self.depth == 0
    }

    pub fn feed(&mut self, buf: &[u8]) -> Result<(), ReplyError> {
        self.feed_until(buf, false, u64::MAX).map(|_| ())
    }

    /// Feed bytes up to the end of the reply that makes `replies` reach `until` (pooled mode:
    /// where one client's replies end and the next client's begin): returns how many were taken.
    pub fn feed_replies(&mut self, buf: &[u8], until: u64) -> Result<usize, ReplyError> {
        self.feed_until(buf, false, until)
    }

    /// Feed bytes up to the end of the next top-level frame (a reply or a push): returns how many
    /// were taken. A frame ended there if `at_reply_boundary()`; otherwise all of `buf` was taken.
    pub fn feed_frame(&mut self, buf: &[u8]) -> Result<usize, ReplyError> {
        self.feed_until(buf, true, u64::MAX)
    }

    fn feed_until(&mut self, buf: &[u8], one_frame: bool, until: u64) -> Result<usize, ReplyError> {
        let mut i = 0;
        self.frame_done = false;
        while i < buf.len() {
            if (one_frame && self.frame_done) || self.replies >= until {
                return Ok(i);
            }
            match self.state {
                RepState::Type => {
                    let b = buf[i];
                    i += 1;
                    if self.depth == 0 {
                        self.top_kind = b;
                    }
                    match b {
                        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {
                            self.err_top = b == b'-' && self.depth == 0;
                            self.err_len = 0;
                            self.state = RepState::Line;
                        }
                        b'$' | b'=' | b'!' | b'*' | b'~' | b'>' | b'%' | b'|' => {
                            self.len_kind = b;
                            self.num = 0;
                            self.neg = false;
                            self.digits = 0;
                            self.state = RepState::Len;
                        }
                        _ => return Err(ReplyError),
                    }
                }
                RepState::Line => match memchr_nl(&buf[i..]) {
                    Some(pos) => {
                        if self.err_top {
                            self.note_error(&buf[i..i + pos]);
                        }
                        i += pos + 1;
                        self.state = RepState::Type;
                        self.element_done();
                    }
                    None => {
                        if self.err_top {
                            self.note_error(&buf[i..]);
                        }
                        i = buf.len();
                    }
                },
                RepState::Len => {
                    let b = buf[i];
                    i += 1;
                    match number_byte(&mut self.num, &mut self.neg, &mut self.digits, b) {
                        NumStep::More => {}
                        NumStep::Bad => return Err(ReplyError),
                        NumStep::Done(n) => self.length_done(n)?,
                    }
                }
                RepState::Bulk => {
                    let take = self.bulk_left.min((buf.len() - i) as u64);
                    self.bulk_left -= take;
                    i += take as usize;
                    if self.bulk_left == 0 {
                        self.state = RepState::Type;
                        self.element_done();
                    }
                }
            }
        }
        Ok(i)
    }

    fn length_done(&mut self, n: i64) -> Result<(), ReplyError> {
        self.state = RepState::Type;
        match self.len_kind {
            b'$' | b'=' | b'!' => {
                if n < 0 {
                    self.element_done();
                } else {
                    self.bulk_left = n as u64 + 2;
                    self.state = RepState::Bulk;
                }
            }
            kind => {
                let count = if kind == b'%' || kind == b'|' {
                    n.saturating_mul(2)
                } else {
                    n
                };
                if count <= 0 {
                    // An empty attribute decorates what follows and is no element itself.
                    if kind != b'|' {
                        self.element_done();
                    }
                    return Ok(());
                }
                if count >= ATTR_FLAG as i64 {
                    return Err(ReplyError);
                }
                let flag = if kind == b'|' { ATTR_FLAG } else { 0 };
                self.push_level(count as u32 | flag);
            }
        }
        Ok(())
    }

    /// One element finished: count it into its parent, closing finished aggregates.
    fn element_done(&mut self) {
        loop {
            if self.depth == 0 {
                match self.top_kind {
                    b'>' => self.pushes += 1,
                    b'|' => return, // an attribute: the reply it decorates follows
                    b'-' | b'!' => {
                        self.replies += 1;
                        self.errors += 1;
                        self.last_error = true;
                    }
                    _ => {
                        self.replies += 1;
                        self.last_error = false;
                    }
                }
                self.frame_done = true;
                return;
            }
            let top = self.top_level();
            let left = (*top & !ATTR_FLAG) - 1;
            let attr = *top & ATTR_FLAG;
            *top = left | attr;
            if left > 0 {
                return;
            }
            self.pop_level();
            if attr != 0 {
                // An attribute is not an element of its parent; at top level it is no reply.
                return;
            }
        }
    }

    fn push_level(&mut self, level: u32) {
        if self.depth < INLINE_DEPTH {
            self.stack[self.depth] = level;
        } else {
            self.deep.push(level);
        }
        self.depth += 1;
    }

    fn top_level(&mut self) -> &mut u32 {
        match self.depth {
            d if d <= INLINE_DEPTH => &mut self.stack[d - 1],
            _ => self.deep.last_mut().expect("deep levels past INLINE_DEPTH"),
        }
    }

    fn pop_level(&mut self) {
        self.depth -= 1;
        if self.depth >= INLINE_DEPTH {
            self.deep.pop();
            if self.depth == INLINE_DEPTH {
                // A deep reply is over: give its memory back.
                self.deep = Vec::new();
            }
        }
    }

    fn note_error(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let len = self.err_len as usize;
            if len >= self.err_prefix.len() {
                break;
            }
            self.err_prefix[len] = b;
            self.err_len += 1;
        }
        let p = &self.err_prefix[..self.err_len as usize];
        if p.starts_with(b"READONLY") || p.starts_with(b"MASTERDOWN") {
            self.saw_not_master = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(chunks: &[&[u8]]) -> ReplyTracker {
        let mut t = ReplyTracker::new();
        for c in chunks {
            t.feed(c).unwrap();
        }
        t
    }

    /// Found by the property test: an empty attribute inside an aggregate was counted as one of
    /// its elements, closing the aggregate (and the reply) one element early.
    #[test]
    fn an_empty_attribute_is_not_an_element() {
        let t = rep(&[b"*1\r\n|0\r\n+OK\r\n"]);
        assert_eq!((t.replies, t.at_reply_boundary()), (1, true));
        let t = rep(&[b"*2\r\n|0\r\n+a\r\n"]);
        assert_eq!((t.replies, t.at_reply_boundary()), (0, false));
        let t = rep(&[b"|0\r\n+OK\r\n"]);
        assert_eq!(t.replies, 1);
    }

    #[test]
    fn frames_one_at_a_time() {
        let stream: &[u8] = b"+OK\r\n>2\r\n$1\r\na\r\n:1\r\n-ERR x\r\n";
        let mut t = ReplyTracker::new();
        let n = t.feed_frame(stream).unwrap();
        assert_eq!((n, t.replies, t.last_error), (5, 1, false));
        let m = t.feed_frame(&stream[n..]).unwrap();
        assert_eq!((m, t.pushes), (15, 1));
        let k = t.feed_frame(&stream[n + m..]).unwrap();
        assert_eq!((k, t.replies, t.last_error), (8, 2, true));
        let mut t = ReplyTracker::new();
        assert_eq!(t.feed_frame(b"$5\r\nhel").unwrap(), 7);
        assert!(!t.at_reply_boundary());
    }

    #[test]
    fn replies_resp2_and_resp3() {
        let stream: &[u8] = b"+OK\r\n-ERR x\r\n:12\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*-1\r\n*0\r\n%1\r\n+k\r\n,1.5\r\n~2\r\n#t\r\n_\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n=8\r\ntxt:abcd\r\n(123\r\n!3\r\nerr\r\n";
        let whole = rep(&[stream]);
        assert_eq!(whole.replies, 14);
        assert_eq!(whole.pushes, 1);
        assert_eq!(whole.errors, 2);
        assert!(whole.at_reply_boundary());
        for cut in 0..stream.len() {
            let t = rep(&[&stream[..cut], &stream[cut..]]);
            assert_eq!((t.replies, t.pushes), (14, 1), "cut at {cut}");
        }
        let mut bytewise = ReplyTracker::new();
        for b in stream {
            bytewise.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(bytewise.replies, 14);
    }

    #[test]
    fn attributes_inside_aggregates_are_not_elements() {
        let t = rep(&[b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n"]);
        assert_eq!(t.replies, 1);
        assert!(t.at_reply_boundary());
    }

    #[test]
    fn not_master_errors_are_flagged() {
        assert!(
            rep(&[b"-READONLY You can't write against a read only replica.\r\n"]).saw_not_master
        );
        assert!(rep(&[b"-MASTER", b"DOWN Link with MASTER is down\r\n"]).saw_not_master);
        assert!(!rep(&[b"-ERR wrong\r\n", b"$8\r\nREADONLY\r\n"]).saw_not_master);
        assert!(!rep(&[b"*1\r\n-READONLY nested\r\n"]).saw_not_master);
    }

    #[test]
    fn garbage_replies_are_errors() {
        assert_eq!(ReplyTracker::new().feed(b"hello"), Err(ReplyError));
        assert_eq!(ReplyTracker::new().feed(b"$abc\r\n"), Err(ReplyError));
    }

    /// What Redis sends for `EVAL "local a = {}; local b = {a}; a[1] = b; return a" 0`: arrays
    /// nested thousands deep, closed by an error. It is one reply, followed exactly.
    #[test]
    fn replies_of_any_depth() {
        for depth in [31, 32, 33, 5000] {
            let mut stream = b"*1\r\n".repeat(depth);
            stream.extend_from_slice(b"-ERR reached lua stack limit\r\n+OK\r\n");
            let whole = rep(&[&stream]);
            assert_eq!((whole.replies, whole.errors), (2, 0), "depth {depth}");
            assert!(whole.at_reply_boundary() && whole.deep.capacity() == 0);
            let mut bytewise = ReplyTracker::new();
            for b in &stream {
                bytewise.feed(std::slice::from_ref(b)).unwrap();
            }
            assert_eq!(bytewise.replies, 2);
        }
        let t = rep(&[&b"*2\r\n".repeat(40), b":1\r\n"]);
        assert_eq!((t.replies, t.depth), (0, 40));
    }
}
