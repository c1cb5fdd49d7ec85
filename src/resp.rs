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

/// Aggregate nesting followed without allocating; deeper replies (Lua can nest thousands deep)
/// spill into a vector that lives only as long as such a reply.
const INLINE_DEPTH: usize = 32;
/// Bytes of an argument kept for recognising commands (command names and sub-commands are short).
const NAME_LEN: usize = 16;
/// Redis's own limit for one inline command line.
const MAX_INLINE: usize = 64 * 1024;
/// Redis's limit for the number of arguments.
const MAX_ARGS: i64 = i32::MAX as i64;
/// Captured requests longer than this are recorded without their bytes (they cannot be carried).
const MAX_CAPTURE: usize = 64 * 1024;

/// What a captured request is to a session that may have to carry it to another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureKind {
    /// AUTH, HELLO, SELECT, CLIENT SETNAME/SETINFO/NO-EVICT/NO-TOUCH: replayed if it worked.
    State,
    /// CLIENT TRACKING.
    Tracking,
    /// MULTI, and a command queued after it.
    Multi,
    Queued,
    /// EXEC or DISCARD: the transaction (and any WATCH) is over.
    Exec,
    Watch,
    Unwatch,
    /// A blocking command (BLPOP, BLMOVE, XREAD…), outside MULTI.
    Blocking,
    /// SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE (the session's subscriptions come from the
    /// confirmations; this marks where they start).
    Subscribe,
    /// RESET: back to a fresh connection.
    Reset,
}

/// A request a session may have to carry: its kind, the replies expected before it (counted like
/// `expected_replies`), whether a reply answers it (then reply number `before + 1` does), and its
/// bytes in `captured_bytes` re-encoded as a multibulk (`None`: inline or too large, so it
/// cannot be carried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub kind: CaptureKind,
    pub before: u64,
    pub answered: bool,
    pub bytes: Option<(u32, u32)>,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    Start,
    Inline,
    MultibulkLen,
    ArgType,
    ArgLen,
    ArgData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    SkipNext,
}

/// Tracks the client → server byte stream. See the module doc.
#[derive(Debug, Clone)]
pub struct RequestTracker {
    state: ReqState,
    num: i64,
    neg: bool,
    digits: u32,
    args_left: i64,
    arg_index: u32,
    data_left: u64,
    inline_len: usize,
    inline_word: u32,
    inline_in_word: bool,
    names: [[u8; NAME_LEN]; 3],
    name_lens: [u8; 3],
    max_bulk: u64,
    reply_mode: ReplyMode,
    /// Complete requests seen.
    pub requests: u64,
    /// Replies the server owes for all complete requests so far.
    pub expected_replies: u64,
    /// `expected_replies` value at the most recent blocking command.
    pub blocking_seq: u64,
    /// Between MULTI (or WATCH) and EXEC/DISCARD (or UNWATCH).
    pub in_transaction: bool,
    /// Between MULTI and EXEC/DISCARD: commands are queued.
    pub multi: bool,
    /// Between WATCH and EXEC/DISCARD/UNWATCH.
    pub watching: bool,
    /// The connection speaks RESP3 (told by the session once HELLO 3 succeeded): subscribe
    /// commands are then answered with push frames, not replies.
    pub resp3: bool,
    /// SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE seen: replies arrive without requests from now on.
    pub pubsub: bool,
    /// MONITOR seen.
    pub monitor: bool,
    /// `QUIT` seen: Redis answers it, closes, and runs nothing sent after it, so nothing after it
    /// is counted.
    pub quit: bool,
    /// `SYNC` or `PSYNC` seen: what follows is a replication stream (an RDB payload without a
    /// trailing CRLF, then commands), not replies; the session must stop tracking.
    pub replication: bool,
    /// Requests a session may have to carry (see [`Captured`]), oldest first; the session takes
    /// them after each `feed`. Empty for most sessions.
    pub captured: Vec<Captured>,
    pub captured_bytes: Vec<u8>,
    capture: Vec<u8>,
    capturing: bool,
    capture_overflow: bool,
}

impl RequestTracker {
    pub fn new(max_bulk: u64) -> RequestTracker {
        RequestTracker {
            state: ReqState::Start,
            num: 0,
            neg: false,
            digits: 0,
            args_left: 0,
            arg_index: 0,
            data_left: 0,
            inline_len: 0,
            inline_word: 0,
            inline_in_word: false,
            names: [[0; NAME_LEN]; 3],
            name_lens: [0; 3],
            max_bulk,
            reply_mode: ReplyMode::On,
            requests: 0,
            expected_replies: 0,
            blocking_seq: 0,
            in_transaction: false,
            multi: false,
            watching: false,
            resp3: false,
            pubsub: false,
            monitor: false,
            quit: false,
            replication: false,
            captured: Vec::new(),
            captured_bytes: Vec::new(),
            capture: Vec::new(),
            capturing: false,
            capture_overflow: false,
        }
    }

    /// True when no request is partly received.
    pub fn at_request_boundary(&self) -> bool {
        self.state == ReqState::Start
    }

    /// Feed bytes. On a protocol error, returns it with the number of bytes of `buf` that belong
    /// to complete requests before the error (those may still be forwarded).
    pub fn feed(&mut self, buf: &[u8]) -> Result<(), (ProtocolError, usize)> {
        let mut i = 0;
        let mut last_complete = 0;
        while i < buf.len() && !self.quit && !self.replication {
            let b = buf[i];
            match self.state {
                ReqState::Start => {
                    self.reset_request();
                    if b == b'*' {
                        self.state = ReqState::MultibulkLen;
                        self.start_number();
                        i += 1;
                    } else {
                        self.state = ReqState::Inline;
                    }
                }
                ReqState::Inline => {
                    i += 1;
                    self.inline_len += 1;
                    if b == b'\n' {
                        self.finish_inline();
                        last_complete = i;
                        continue;
                    }
                    if self.inline_len > MAX_INLINE {
                        return Err((ProtocolError::TooBigInline, last_complete));
                    }
                    if b == b'"' || b == b'\'' {
                        // Quoted inline arguments: rare (telnet users); recognising names
                        // inside them is not worth a full parser. Treat as an ordinary command.
                        self.inline_in_word = true;
                        continue;
                    }
                    if b == b' ' || b == b'\t' || b == b'\r' {
                        if self.inline_in_word {
                            self.inline_word += 1;
                        }
                        self.inline_in_word = false;
                    } else {
                        self.inline_in_word = true;
                        self.push_name_byte(self.inline_word as usize, b);
                    }
                }
                ReqState::MultibulkLen | ReqState::ArgLen => {
                    i += 1;
                    match self.number_byte(b) {
                        NumStep::More => {}
                        NumStep::Bad => {
                            return Err((
                                if self.state == ReqState::MultibulkLen {
                                    ProtocolError::InvalidMultibulkLength
                                } else {
                                    ProtocolError::InvalidBulkLength
                                },
                                last_complete,
                            ));
                        }
                        NumStep::Done(n) => {
                            if self.state == ReqState::MultibulkLen {
                                if n > MAX_ARGS {
                                    return Err((
                                        ProtocolError::InvalidMultibulkLength,
                                        last_complete,
                                    ));
                                }
                                if n <= 0 {
                                    // Redis ignores `*0` / `*-1`: no command, no reply.
                                    self.state = ReqState::Start;
                                    last_complete = i;
                                } else {
                                    self.args_left = n;
                                    self.state = ReqState::ArgType;
                                }
                            } else {
                                if n < 0 || n as u64 > self.max_bulk {
                                    return Err((ProtocolError::InvalidBulkLength, last_complete));
                                }
                                self.data_left = n as u64 + 2;
                                self.state = ReqState::ArgData;
                                if self.capturing {
                                    self.capture_arg_header(n as usize);
                                }
                            }
                        }
                    }
                }
                ReqState::ArgType => {
                    if b != b'$' {
                        return Err((ProtocolError::ExpectedDollar(b), last_complete));
                    }
                    i += 1;
                    self.state = ReqState::ArgLen;
                    self.start_number();
                }
                ReqState::ArgData => {
                    let take = (self.data_left.min((buf.len() - i) as u64)) as usize;
                    let data = &buf[i..i + take];
                    // The last two bytes of an argument are its CRLF.
                    let payload_left = self.data_left.saturating_sub(2) as usize;
                    let payload = &data[..take.min(payload_left)];
                    let idx = self.arg_index as usize;
                    if idx < 3 {
                        // Only a name's first bytes matter (one more marks it as too long): a
                        // large value costs nothing here.
                        let room = (NAME_LEN + 1).saturating_sub(self.name_lens[idx] as usize);
                        for &c in &payload[..payload.len().min(room)] {
                            self.push_name_byte(idx, c);
                        }
                    }
                    if self.capturing {
                        self.capture_bytes(data);
                    }
                    self.data_left -= take as u64;
                    i += take;
                    if self.data_left == 0 {
                        if self.arg_index == 0 {
                            self.capturing = self.multi || self.is_captured_name();
                            if self.capturing {
                                self.capture.clear();
                                self.capture_overflow = false;
                                self.capture_arg_header_first();
                            }
                        }
                        self.arg_index += 1;
                        self.args_left -= 1;
                        if self.args_left == 0 {
                            self.finish_multibulk();
                            self.state = ReqState::Start;
                            last_complete = i;
                        } else {
                            self.state = ReqState::ArgType;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn reset_request(&mut self) {
        self.name_lens = [0; 3];
        self.arg_index = 0;
        self.inline_len = 0;
        self.inline_word = 0;
        self.inline_in_word = false;
        self.capturing = false;
    }

    fn start_number(&mut self) {
        self.num = 0;
        self.neg = false;
        self.digits = 0;
    }

    fn number_byte(&mut self, b: u8) -> NumStep {
        number_byte(&mut self.num, &mut self.neg, &mut self.digits, b)
    }

    fn push_name_byte(&mut self, idx: usize, b: u8) {
        if idx < 3 {
            let len = self.name_lens[idx] as usize;
            if len < NAME_LEN {
                self.names[idx][len] = b.to_ascii_uppercase();
                self.name_lens[idx] += 1;
            } else {
                // Longer than any name we look for: make it match nothing.
                self.names[idx][0] = 0;
            }
        }
    }

    fn name(&self, idx: usize) -> &[u8] {
        &self.names[idx][..self.name_lens[idx] as usize]
    }

    fn is_captured_name(&self) -> bool {
        matches!(
            self.name(0),
            b"AUTH"
                | b"HELLO"
                | b"SELECT"
                | b"CLIENT"
                | b"MULTI"
                | b"EXEC"
                | b"DISCARD"
                | b"WATCH"
                | b"UNWATCH"
                | b"RESET"
                | b"SUBSCRIBE"
                | b"PSUBSCRIBE"
                | b"SSUBSCRIBE"
        ) || is_blocking(self.name(0))
    }

    fn capture_arg_header_first(&mut self) {
        // Re-encode as `*N\r\n$len\r\narg0\r\n`; N is known (args_left counts the rest).
        let n = self.args_left;
        let name_len = self.name_lens[0] as usize;
        if self.names[0][0] == 0 {
            // Longer than the name buffer: its bytes were not kept.
            self.capture_overflow = true;
        }
        let mut hdr = [0u8; 64];
        let mut w = Writer::new(&mut hdr);
        w.byte(b'*');
        w.num(n as u64);
        w.bytes(b"\r\n$");
        w.num(name_len as u64);
        w.bytes(b"\r\n");
        let used = w.len;
        self.capture.extend_from_slice(&hdr[..used]);
        let name = self.names[0];
        self.capture.extend_from_slice(&name[..name_len]);
        self.capture.extend_from_slice(b"\r\n");
    }

    fn capture_arg_header(&mut self, len: usize) {
        let mut hdr = [0u8; 32];
        let mut w = Writer::new(&mut hdr);
        w.byte(b'$');
        w.num(len as u64);
        w.bytes(b"\r\n");
        let used = w.len;
        self.capture_bytes_raw(&hdr[..used]);
    }

    fn capture_bytes(&mut self, data: &[u8]) {
        self.capture_bytes_raw(data);
    }

    fn capture_bytes_raw(&mut self, data: &[u8]) {
        if self.capture_overflow {
            return;
        }
        if self.capture.len() + data.len() > MAX_CAPTURE {
            // Still recorded (its reply must be matched), without bytes.
            self.capture_overflow = true;
            self.capture = Vec::new();
            return;
        }
        self.capture.extend_from_slice(data);
    }

    fn finish_multibulk(&mut self) {
        let captured = self.capturing;
        self.capturing = false;
        self.complete(true, captured);
    }

    fn finish_inline(&mut self) {
        if self.inline_in_word {
            self.inline_word += 1;
        }
        if self.inline_word == 0 {
            // An empty line: Redis runs nothing and sends nothing.
            self.state = ReqState::Start;
            return;
        }
        self.state = ReqState::Start;
        self.complete(false, false);
    }

    /// A whole request was received: update reply accounting and modes.
    fn complete(&mut self, multibulk: bool, captured: bool) {
        self.requests += 1;
        let (names, lens) = (self.names, self.name_lens);
        let name = |i: usize| &names[i][..lens[i] as usize];
        let (n0, n1, n2) = (name(0), name(1), name(2));
        let mut expects = match self.reply_mode {
            ReplyMode::On => true,
            ReplyMode::Off => false,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                false
            }
        };
        let mut blocking = false;
        let mut kind = None;
        // Redis queues these in MULTI (SYNC is refused there; the tracker still takes it as the
        // start of a replication stream, which only makes the session a byte pipe).
        let queued = self.multi
            && !matches!(
                n0,
                b"EXEC"
                    | b"DISCARD"
                    | b"MULTI"
                    | b"WATCH"
                    | b"QUIT"
                    | b"RESET"
                    | b"SYNC"
                    | b"PSYNC"
            );
        match n0 {
            _ if queued => {
                kind = Some(CaptureKind::Queued);
                if matches!(n0, b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE") {
                    // Subscribed once EXEC runs it.
                    self.pubsub = true;
                }
            }
            b"CLIENT" if n1 == b"REPLY" => match n2 {
                b"OFF" => {
                    self.reply_mode = ReplyMode::Off;
                    expects = false;
                }
                b"SKIP" => {
                    if self.reply_mode != ReplyMode::Off {
                        self.reply_mode = ReplyMode::SkipNext;
                    }
                    expects = false;
                }
                b"ON" => {
                    self.reply_mode = ReplyMode::On;
                    expects = true;
                }
                _ => {}
            },
            b"CLIENT" if matches!(n1, b"SETNAME" | b"SETINFO" | b"NO-EVICT" | b"NO-TOUCH") => {
                kind = Some(CaptureKind::State)
            }
            b"CLIENT" if n1 == b"TRACKING" => kind = Some(CaptureKind::Tracking),
            b"AUTH" | b"HELLO" | b"SELECT" => kind = Some(CaptureKind::State),
            b"RESET" => {
                // Redis's RESET: out of MULTI/WATCH, pub/sub, MONITOR, tracking and
                // `CLIENT REPLY OFF`, back to db 0, RESP2, the default user and no name. Nothing
                // is left to replay, and it is answered whatever the reply mode was.
                self.reply_mode = ReplyMode::On;
                expects = true;
                self.in_transaction = false;
                self.multi = false;
                self.watching = false;
                self.pubsub = false;
                self.monitor = false;
                self.resp3 = false;
                kind = Some(CaptureKind::Reset);
            }
            b"QUIT" => self.quit = true,
            b"SYNC" | b"PSYNC" => self.replication = true,
            b"MULTI" => {
                self.multi = true;
                kind = Some(CaptureKind::Multi);
            }
            b"WATCH" => {
                self.watching = true;
                kind = Some(CaptureKind::Watch);
            }
            b"EXEC" | b"DISCARD" => {
                self.multi = false;
                self.watching = false;
                kind = Some(CaptureKind::Exec);
            }
            b"UNWATCH" => {
                self.watching = false;
                kind = Some(CaptureKind::Unwatch);
            }
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" => {
                self.pubsub = true;
                kind = Some(CaptureKind::Subscribe);
                if self.resp3 {
                    // Answered with push frames only.
                    expects = false;
                }
            }
            b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE" if self.resp3 => expects = false,
            b"MONITOR" => self.monitor = true,
            b"WAIT" | b"WAITAOF" => blocking = true,
            _ if is_blocking(n0) => {
                blocking = true;
                kind = Some(CaptureKind::Blocking);
            }
            _ => {}
        }
        self.in_transaction = self.multi || self.watching;
        let before = self.expected_replies;
        if expects {
            self.expected_replies += 1;
            if blocking {
                self.blocking_seq = self.expected_replies;
            }
        }
        if let Some(kind) = kind {
            let bytes = (multibulk && captured && !self.capture_overflow).then(|| {
                let start = self.captured_bytes.len() as u32;
                self.captured_bytes.extend_from_slice(&self.capture);
                (start, self.captured_bytes.len() as u32)
            });
            self.captured.push(Captured {
                kind,
                before,
                answered: expects,
                bytes,
            });
        }
        self.capture.clear();
    }
}

/// Commands that may block the connection until data arrives or their timeout passes, and that a
/// session can re-issue elsewhere (WAIT and WAITAOF block too, but mean nothing on another node).
fn is_blocking(name: &[u8]) -> bool {
    matches!(
        name,
        b"BLPOP"
            | b"BRPOP"
            | b"BRPOPLPUSH"
            | b"BLMOVE"
            | b"BLMPOP"
            | b"BZPOPMIN"
            | b"BZPOPMAX"
            | b"BZMPOP"
            | b"XREAD"
            | b"XREADGROUP"
    )
}

/// Tracks the server → client byte stream. See the module doc.
#[derive(Debug, Clone)]
pub struct ReplyTracker {
    state: RepState,
    num: i64,
    neg: bool,
    digits: u32,
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
        self.feed_until(buf, false).map(|_| ())
    }

    /// Feed bytes up to the end of the next top-level frame (a reply or a push): returns how many
    /// were taken. A frame ended there if `at_reply_boundary()`; otherwise all of `buf` was taken.
    pub fn feed_frame(&mut self, buf: &[u8]) -> Result<usize, ReplyError> {
        self.feed_until(buf, true)
    }

    fn feed_until(&mut self, buf: &[u8], one_frame: bool) -> Result<usize, ReplyError> {
        let mut i = 0;
        self.frame_done = false;
        while i < buf.len() {
            if one_frame && self.frame_done {
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

enum NumStep {
    More,
    Done(i64),
    Bad,
}

/// One byte of a `<digits>\r\n` length line.
fn number_byte(num: &mut i64, neg: &mut bool, digits: &mut u32, b: u8) -> NumStep {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 512 * 1024 * 1024;

    fn req(chunks: &[&[u8]]) -> RequestTracker {
        let mut t = RequestTracker::new(MAX);
        for c in chunks {
            t.feed(c).unwrap();
        }
        t
    }

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

    /// Feeding a stream whole and byte by byte gives the same result.
    fn every_split_req(stream: &[u8]) -> RequestTracker {
        let whole = req(&[stream]);
        let mut bytewise = RequestTracker::new(MAX);
        for b in stream {
            bytewise.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(whole.requests, bytewise.requests);
        assert_eq!(whole.expected_replies, bytewise.expected_replies);
        assert_eq!(whole.captured, bytewise.captured);
        assert_eq!(whole.captured_bytes, bytewise.captured_bytes);
        for cut in 0..stream.len() {
            let t = req(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(t.expected_replies, whole.expected_replies, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn pipelined_multibulk_and_inline_requests() {
        let t = every_split_req(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n\r\n");
        assert_eq!(t.requests, 3);
        assert_eq!(t.expected_replies, 3, "the empty inline line gets no reply");
        assert!(t.at_request_boundary());
        let partial = req(&[b"*2\r\n$3\r\nGET\r\n$1\r"]);
        assert!(!partial.at_request_boundary());
        assert_eq!(partial.requests, 0);
    }

    #[test]
    fn client_reply_modes() {
        let t = every_split_req(
            b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$3\r\nOFF\r\n*1\r\n$4\r\nPING\r\n*3\r\n$6\r\nclient\r\n$5\r\nreply\r\n$2\r\non\r\n*1\r\n$4\r\nPING\r\n",
        );
        assert_eq!(t.requests, 4);
        assert_eq!(t.expected_replies, 2, "ON and the last PING");
        let t = every_split_req(b"CLIENT REPLY SKIP\r\nPING\r\nPING\r\n");
        assert_eq!(t.expected_replies, 1);
    }

    #[test]
    fn modes_and_blocking() {
        let t = every_split_req(b"MULTI\r\nSET a 1\r\n");
        assert!(t.in_transaction);
        let t = every_split_req(b"MULTI\r\nSET a 1\r\nEXEC\r\n");
        assert!(!t.in_transaction);
        assert!(every_split_req(b"WATCH a\r\n").in_transaction);
        assert!(every_split_req(b"*2\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n").pubsub);
        assert!(every_split_req(b"MONITOR\r\n").monitor);
        let t = every_split_req(b"GET a\r\nBLPOP q 0\r\n");
        assert_eq!((t.expected_replies, t.blocking_seq), (2, 2));
    }

    #[test]
    fn requests_to_carry_are_captured() {
        let t = every_split_req(
            b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n*2\r\n$6\r\nselect\r\n$1\r\n3\r\n*1\r\n$4\r\nPING\r\n*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$3\r\napp\r\n",
        );
        assert_eq!(
            t.captured_bytes,
            b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$3\r\napp\r\n"
        );
        let befores: Vec<_> = t.captured.iter().map(|c| (c.kind, c.before)).collect();
        assert_eq!(
            befores,
            [
                (CaptureKind::State, 0),
                (CaptureKind::State, 1),
                (CaptureKind::State, 3)
            ]
        );
        // Inline: recorded without bytes (it cannot be replayed faithfully).
        let t = every_split_req(b"SELECT 3\r\n");
        assert_eq!(t.captured[0].bytes, None);
        // Everything queued in MULTI is captured; a long command name too.
        let t = every_split_req(
            b"*1\r\n$5\r\nMULTI\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$20\r\nGEORADIUSBYMEMBER_RO\r\n*1\r\n$4\r\nEXEC\r\n",
        );
        let kinds: Vec<_> = t
            .captured
            .iter()
            .map(|c| (c.kind, c.bytes.is_some()))
            .collect();
        assert_eq!(
            kinds,
            [
                (CaptureKind::Multi, true),
                (CaptureKind::Queued, true),
                (CaptureKind::Queued, false),
                (CaptureKind::Exec, true)
            ]
        );
        // RESP3 subscribe commands are answered with pushes, not replies.
        let mut t = RequestTracker::new(MAX);
        t.resp3 = true;
        t.feed(b"SUBSCRIBE a b\r\nPING\r\n").unwrap();
        assert_eq!(t.expected_replies, 1);
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
    fn protocol_errors_like_redis() {
        let mut t = RequestTracker::new(MAX);
        assert_eq!(
            t.feed(b"PING\r\n*1\r\nfoo\r\n"),
            Err((ProtocolError::ExpectedDollar(b'f'), 6))
        );
        let mut t = RequestTracker::new(MAX);
        assert_eq!(
            t.feed(b"*x\r\n"),
            Err((ProtocolError::InvalidMultibulkLength, 0))
        );
        let mut t = RequestTracker::new(1024);
        assert_eq!(
            t.feed(b"*2\r\n$3\r\nSET\r\n$2000\r\n"),
            Err((ProtocolError::InvalidBulkLength, 0))
        );
        let mut t = RequestTracker::new(MAX);
        let long = vec![b'a'; MAX_INLINE + 10];
        assert_eq!(t.feed(&long), Err((ProtocolError::TooBigInline, 0)));
        assert_eq!(
            ProtocolError::ExpectedDollar(b'f').message(),
            "expected '$', got 'f'"
        );
        // `*0` and `*-1` are ignored, as Redis does.
        let t = every_split_req(b"*0\r\n*-1\r\nPING\r\n");
        assert_eq!(t.expected_replies, 1);
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

    #[test]
    fn quit_ends_the_stream_and_reset_clears_state() {
        let t = every_split_req(b"GET a\r\nQUIT\r\nSET a 1\r\nGET a\r\n");
        assert!(t.quit);
        assert_eq!((t.requests, t.expected_replies), (2, 2));
        let t = every_split_req(
            b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\nMULTI\r\nCLIENT TRACKING on\r\nCLIENT REPLY OFF\r\nSUBSCRIBE c\r\nRESET\r\nPING\r\n",
        );
        assert_eq!(t.captured.last().map(|c| c.kind), Some(CaptureKind::Reset));
        assert!(!t.in_transaction && !t.pubsub);
        assert_eq!(
            t.expected_replies, 7,
            "SELECT, MULTI, then +QUEUED for what MULTI queues (CLIENT REPLY OFF only takes effect \
             at EXEC), then RESET and PING"
        );
    }

    #[test]
    fn sync_starts_a_replication_stream() {
        let t = every_split_req(b"PING\r\nSYNC\r\nREPLCONF ACK 0\r\n");
        assert!(t.replication);
        assert_eq!(t.requests, 2);
        assert!(req(&[b"*3\r\n$5\r\nPSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n"]).replication);
    }
}
