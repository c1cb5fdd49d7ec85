//! The client → server side: [`RequestTracker`] (see the module doc of `resp`).

use super::{MAX_ARGS, NumStep, ProtocolError, Writer, number_byte};
use crate::command::{self, Blocks, ClientSub, Effect, Pin, ReplyMode as SubReply, Spec, traits};

/// Bytes of an argument kept for recognising commands (command names and sub-commands are short).
const NAME_LEN: usize = 16;
/// Redis's own limit for one inline command line.
const MAX_INLINE: usize = 64 * 1024;
/// Captured requests longer than this are recorded without their bytes (they cannot be carried).
const MAX_CAPTURE: usize = 64 * 1024;

/// What a request's arguments still decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Nothing (or nothing more).
    Off,
    /// Pooled mode: the name left whether it pins to its first argument (SELECT, CLIENT).
    ByArgument,
    /// Looking for the option that makes it block (`command::Blocks::Option`) …
    Looking,
    /// … and it was seen.
    Seen,
}

/// `RequestTracker::spec` when the request's command has no row.
const NO_SPEC: u16 = u16::MAX;
/// In a mark ([`RequestTracker::marks`]): the command was queued in a transaction.
pub const MARK_QUEUED: u16 = 0x8000;

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
    /// A dedicated session with `marking`: the mark of reply number `before + 1` (see
    /// [`RequestTracker::marks`]); not a request to carry.
    Mark(u16),
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

mod pooled;

pub use pooled::Mode;
use pooled::OpenTransaction;

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
    digits: u8,
    args_left: i64,
    arg_index: u8,
    data_left: u64,
    inline_len: u32,
    inline_word: u8,
    inline_in_word: bool,
    names: [[u8; NAME_LEN]; 3],
    name_lens: [u8; 3],
    max_bulk: u64,
    reply_mode: ReplyMode,
    /// Complete requests seen.
    pub requests: u64,
    /// Pooled mode: a script (EVAL, EVALSHA, FCALL and their read-only forms) completed since
    /// the session last took this (it goes on a connection for scripts: `command::Pool::Script`).
    pub scripts: bool,
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
    /// The bytes of `captured`'s requests; in pooled mode with `marking`, the marks instead
    /// (see [`RequestTracker::marks`]): pooled mode captures nothing, and every session holds
    /// a tracker, so the one buffer serves both.
    pub captured_bytes: Vec<u8>,
    /// Durable acknowledgements: note which command each reply answers (pooled mode:
    /// [`RequestTracker::marks`]; a dedicated session: [`CaptureKind::Mark`] in `captured`).
    pub marking: bool,
    /// Whose connection the stream goes on: the client's own, a pool's shared one, or one lent
    /// for a span ([`Mode`]).
    pub mode: Mode,
    /// Pooled mode: why `feed` stopped (see [`RequestTracker::pin_start`]); the tracker is not
    /// fed again after this. Lent: the first request that made the connection the client's own.
    pub pin: Option<Pin>,
    /// Offset in the buffer last fed just past its last complete request (or where it stopped).
    pub boundary: u32,
    /// Where the current request began in the buffer last fed (`u32::MAX`: in an earlier one).
    req_start: u32,
    /// The current request's row in the command table (`NO_SPEC`: none, or not known yet).
    spec: u16,
    /// What is still to be decided of the current request by its arguments (one enum, not
    /// flags: every session holds a tracker, and its size is counted).
    option: Scan,
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
            scripts: false,
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
            marking: false,
            mode: Mode::Own,
            pin: None,
            boundary: 0,
            req_start: u32::MAX,
            spec: NO_SPEC,
            option: Scan::Off,
            capture: Vec::new(),
            capturing: false,
            capture_overflow: false,
        }
    }

    /// Every request is answered (no `CLIENT REPLY OFF` or `SKIP` in force).
    pub fn replies_on(&self) -> bool {
        self.reply_mode == ReplyMode::On
    }

    /// True when no request is partly received.
    pub fn at_request_boundary(&self) -> bool {
        self.state == ReqState::Start
    }

    /// Feed bytes. On a protocol error, returns it with the number of bytes of `buf` that belong
    /// to complete requests before the error (those may still be forwarded).
    ///
    /// Pooled mode shares a transaction that arrives whole: `MULTI`, requests that share, then
    /// `EXEC` or `DISCARD`, all in this buffer (a client's pipelined transaction, as redis-py's
    /// `pipeline()` sends it). Anything else from `MULTI` on (its end not here yet, a request in
    /// it that would pin, bad input) stops at the `MULTI`: the client borrows a connection for it.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(), (ProtocolError, usize)> {
        let mut tx = None;
        let fed = self.feed_requests(buf, &mut tx);
        match tx {
            None => fed,
            Some(tx) => self.rewind(tx, fed),
        }
    }

    fn feed_requests(
        &mut self,
        buf: &[u8],
        tx: &mut Option<OpenTransaction>,
    ) -> Result<(), (ProtocolError, usize)> {
        let mut i = 0;
        let mut last_complete = 0;
        self.boundary = 0;
        if self.state != ReqState::Start {
            self.req_start = u32::MAX;
        }
        while i < buf.len() && !self.quit && !self.replication {
            let b = buf[i];
            match self.state {
                ReqState::Start => {
                    self.reset_request();
                    self.req_start = i as u32;
                    if self.mode != Mode::Own && b != b'*' {
                        if self.mode == Mode::Pool {
                            self.stop(Pin::Inline, last_complete);
                            return Ok(());
                        }
                        self.pin.get_or_insert(Pin::Inline);
                    }
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
                    if self.inline_len as usize > MAX_INLINE {
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
                            self.inline_word = self.inline_word.saturating_add(1);
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
                                if self.option == Scan::Looking && self.arg_index >= 3 {
                                    // Scanned words past the third share its slot.
                                    self.name_lens[2] = 0;
                                }
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
                    let looking = self.option == Scan::Looking;
                    let idx = (self.arg_index as usize).min(if looking { 2 } else { 3 });
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
                            self.look_up();
                        } else if self.option == Scan::Looking {
                            self.scan_word();
                        }
                        if self.mode != Mode::Own
                            && let Some(pin) = self.pins()
                        {
                            if self.mode == Mode::Pool {
                                match self.transaction_edge(pin) {
                                    Some(true) if tx.is_none() => {
                                        *tx = Some(OpenTransaction {
                                            start: self.req_start,
                                            before: last_complete as u32,
                                            requests: self.requests,
                                            replies: self.expected_replies,
                                            marks: self.captured_bytes.len() as u32,
                                        });
                                    }
                                    Some(false) if tx.is_some() => {}
                                    _ => {
                                        self.stop(pin, last_complete);
                                        return Ok(());
                                    }
                                }
                            }
                            if !pin.spans() {
                                self.pin.get_or_insert(pin);
                            }
                        }
                        if self.arg_index == 0 {
                            // Pooled mode has no carry: nothing to keep.
                            self.capturing =
                                self.mode != Mode::Pool && (self.multi || self.is_captured_name());
                            if self.capturing {
                                self.capture.clear();
                                self.capture_overflow = false;
                                self.capture_arg_header_first();
                            }
                        }
                        self.arg_index = self.arg_index.saturating_add(1);
                        self.args_left -= 1;
                        if self.args_left == 0 {
                            self.finish_multibulk();
                            self.state = ReqState::Start;
                            last_complete = i;
                            if tx.is_some() && !self.multi {
                                // Its EXEC or DISCARD: the whole transaction goes on.
                                *tx = None;
                            }
                        } else {
                            self.state = ReqState::ArgType;
                        }
                    }
                }
            }
        }
        self.boundary = last_complete as u32;
        Ok(())
    }

    /// The request's name just ended: its row, and whether to look for a blocking option.
    #[inline]
    fn look_up(&mut self) {
        let too_long = self.names[0][0] == 0 && self.name_lens[0] > 0;
        self.spec = match too_long {
            true => NO_SPEC,
            false => command::index_of_packed(&self.names[0], self.name_lens[0] as usize)
                .unwrap_or(NO_SPEC),
        };
        self.option = match self.traits() & traits::BLOCK_OPTION {
            0 => Scan::Off,
            _ => Scan::Looking,
        };
    }

    /// An argument ended while looking for the blocking option: is it the option, or where the
    /// options end?
    fn scan_word(&mut self) {
        let Some(Blocks::Option(o)) = self.spec().map(|s| s.blocks) else {
            self.option = Scan::Off;
            return;
        };
        if (self.arg_index as usize) < o.from {
            return;
        }
        let word = self.name((self.arg_index as usize).min(2));
        if word == o.word {
            self.option = Scan::Seen;
        } else if word == o.until {
            self.option = Scan::Off;
        }
    }

    /// `before`: the replies owed before this one (its number, counted from 0).
    fn mark(&mut self, mark: u16, before: u64) {
        if self.mode == Mode::Pool {
            self.captured_bytes.extend_from_slice(&mark.to_le_bytes());
        } else {
            // A dedicated session captures state requests' bytes in `captured_bytes`: its marks
            // go with its captures, in order (`CaptureKind::Mark`).
            self.captured.push(Captured {
                kind: CaptureKind::Mark(mark),
                before,
                answered: true,
                bytes: None,
            });
        }
    }

    /// Pooled mode with `marking`: one mark per reply owed for the requests completed since the
    /// marks were last cleared, in order: the row of the command it answers (`command::at`;
    /// `u16::MAX` for none), with [`MARK_QUEUED`] set for a command queued in a transaction (its
    /// reply is `+QUEUED`; `EXEC`'s reply carries its outcome).
    pub fn marks(&self) -> &[u8] {
        &self.captured_bytes
    }

    /// The marks, for the session to read while it goes on using the tracker; give the buffer
    /// back with [`RequestTracker::restore_marks`] (it keeps its capacity).
    pub fn take_marks(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.captured_bytes)
    }

    pub fn restore_marks(&mut self, mut marks: Vec<u8>) {
        marks.clear();
        self.captured_bytes = marks;
    }

    /// The current request's traits (`command::traits`; none without a row).
    #[inline]
    fn traits(&self) -> u8 {
        match self.spec {
            NO_SPEC => 0,
            i => command::traits_of(i),
        }
    }

    fn spec(&self) -> Option<&'static Spec> {
        (self.spec != NO_SPEC).then(|| command::at(self.spec))
    }

    fn reset_request(&mut self) {
        self.name_lens = [0; 3];
        self.spec = NO_SPEC;
        self.option = Scan::Off;
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

    /// Whether the request may have to be carried (`CaptureKind`): what changes connection
    /// state, a transaction, subscriptions, and blocking commands that can be re-issued.
    fn is_captured_name(&self) -> bool {
        self.traits() & traits::CAPTURED != 0
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
            self.inline_word = self.inline_word.saturating_add(1);
        }
        if self.inline_word == 0 {
            // An empty line: Redis runs nothing and sends nothing.
            self.state = ReqState::Start;
            return;
        }
        self.state = ReqState::Start;
        self.look_up();
        // An inline request's options are not scanned: one that may block is taken to.
        if self.option == Scan::Looking {
            self.option = Scan::Seen;
        }
        self.complete(false, false);
    }

    /// A whole request was received: update reply accounting and modes.
    fn complete(&mut self, multibulk: bool, captured: bool) {
        self.requests += 1;
        if self.mode != Mode::Own && self.traits() & traits::SCRIPT != 0 {
            self.scripts = true;
        }
        let mut expects = match self.reply_mode {
            ReplyMode::On => true,
            ReplyMode::Off => false,
            ReplyMode::SkipNext => {
                self.reply_mode = ReplyMode::On;
                false
            }
        };
        if self.traits() & traits::PLAIN != 0 && !self.multi {
            // Most requests (GET, SET …): nothing to note but the reply they are owed.
            self.expected_replies += u64::from(expects);
            if self.marking && expects {
                self.mark(self.spec, self.expected_replies - 1);
            }
            return;
        }
        let (names, lens) = (self.names, self.name_lens);
        let name = |i: usize| &names[i][..lens[i] as usize];
        let (n1, n2) = (name(1), name(2));
        let mut blocking = false;
        let mut kind = None;
        let spec = self.spec();
        let effect = spec.map_or(Effect::None, |s| s.effect);
        // Redis queues everything else in MULTI (SYNC is refused there; the tracker still takes
        // it as the start of a replication stream, which only makes the session a byte pipe).
        let queued = self.multi
            && !matches!(
                effect,
                Effect::Exec
                    | Effect::Multi
                    | Effect::Watch
                    | Effect::Quit
                    | Effect::Reset
                    | Effect::Replication
            );
        match effect {
            _ if queued => {
                kind = Some(CaptureKind::Queued);
                if effect == Effect::Subscribe {
                    // Subscribed once EXEC runs it.
                    self.pubsub = true;
                }
            }
            Effect::Client => match command::client_sub(n1, n2) {
                ClientSub::Reply(SubReply::Off) => {
                    self.reply_mode = ReplyMode::Off;
                    expects = false;
                }
                ClientSub::Reply(SubReply::Skip) => {
                    if self.reply_mode != ReplyMode::Off {
                        self.reply_mode = ReplyMode::SkipNext;
                    }
                    expects = false;
                }
                ClientSub::Reply(SubReply::On) => {
                    self.reply_mode = ReplyMode::On;
                    expects = true;
                }
                ClientSub::Reply(SubReply::Invalid) | ClientSub::Other => {}
                ClientSub::State(_) => kind = Some(CaptureKind::State),
                ClientSub::Tracking => kind = Some(CaptureKind::Tracking),
            },
            Effect::State(_) => kind = Some(CaptureKind::State),
            Effect::Reset => {
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
            Effect::Quit => self.quit = true,
            Effect::Replication => self.replication = true,
            Effect::Multi => {
                self.multi = true;
                kind = Some(CaptureKind::Multi);
            }
            Effect::Watch => {
                self.watching = true;
                kind = Some(CaptureKind::Watch);
            }
            Effect::Exec => {
                self.multi = false;
                self.watching = false;
                kind = Some(CaptureKind::Exec);
            }
            Effect::Unwatch => {
                self.watching = false;
                kind = Some(CaptureKind::Unwatch);
            }
            Effect::Subscribe => {
                self.pubsub = true;
                kind = Some(CaptureKind::Subscribe);
                if self.resp3 {
                    // Answered with push frames only.
                    expects = false;
                }
            }
            Effect::Unsubscribe if self.resp3 => expects = false,
            Effect::Monitor => self.monitor = true,
            Effect::Unsubscribe | Effect::None => match spec.map(|s| s.blocks) {
                Some(Blocks::Wait) => blocking = true,
                Some(Blocks::Always(_)) => {
                    blocking = true;
                    kind = Some(CaptureKind::Blocking);
                }
                Some(Blocks::Option(_)) if self.option == Scan::Seen => {
                    blocking = true;
                    kind = Some(CaptureKind::Blocking);
                }
                _ => {}
            },
        }
        self.in_transaction = self.multi || self.watching;
        let before = self.expected_replies;
        if expects && self.marking {
            let mark = match queued {
                true => self.spec | MARK_QUEUED,
                false => self.spec,
            };
            self.mark(mark, before);
        }
        if expects {
            self.expected_replies += 1;
            if blocking {
                self.blocking_seq = self.expected_replies;
            }
        }
        if let Some(kind) = kind
            && self.mode != Mode::Pool
        {
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

    fn pooled() -> RequestTracker {
        let mut t = RequestTracker::new(MAX);
        t.mode = Mode::Pool;
        t
    }

    /// A connection lent for a span: `feed` goes through everything (counting as a dedicated
    /// tracker does) and `pin` names the first request that makes the connection the client's
    /// own; transactions and blocking calls, what it was lent for, do not.
    #[test]
    fn a_lent_connection_notes_what_makes_it_the_clients_own() {
        let lent = |stream: &[u8]| {
            let mut t = RequestTracker::new(MAX);
            t.mode = Mode::Lent;
            t.feed(stream).unwrap();
            (t.pin, t.requests, t.expected_replies)
        };
        let span = b"*2\r\n$5\r\nWATCH\r\n$1\r\nk\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n\
            *1\r\n$5\r\nMULTI\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nEXEC\r\n\
            *3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n*1\r\n$7\r\nUNWATCH\r\n\
            *2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n";
        assert_eq!(lent(span), (None, 8, 8));
        // AUTH, HELLO and SELECT change what pool the client goes back to, not whether it does
        // (the carry says which: `Carry::pool_state`).
        let state = b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n*2\r\n$4\r\nAUTH\r\n$1\r\np\r\n\
            *2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
        assert_eq!(lent(&[&span[..], state].concat()), (None, 11, 11));
        for (then, why) in [
            (
                &b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$1\r\nn\r\n"[..],
                Pin::Name,
            ),
            (b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n", Pin::PubSub),
            (b"*1\r\n$7\r\nMONITOR\r\n", Pin::Monitor),
            (b"*1\r\n$8\r\nNOSUCHCM\r\n", Pin::Unknown),
            (b"PING\r\n", Pin::Inline),
        ] {
            let (pin, requests, _) = lent(&[&span[..], then, span].concat());
            assert_eq!(
                (pin, requests),
                (Some(why), 17),
                "{}",
                String::from_utf8_lossy(then)
            );
        }
    }

    /// Pooled mode shares a transaction that arrives whole, and stops at its MULTI otherwise.
    #[test]
    fn pooled_mode_shares_a_whole_transaction() {
        let r = |parts: &[&str]| {
            let mut out = format!("*{}\r\n", parts.len());
            for p in parts {
                out += &format!("${}\r\n{p}\r\n", p.len());
            }
            out.into_bytes()
        };
        let (set, get) = (r(&["SET", "k", "1"]), r(&["GET", "k"]));
        let (multi, incr, exec) = (r(&["MULTI"]), r(&["INCR", "k"]), r(&["EXEC"]));
        let whole = [&set[..], &multi, &incr, &incr, &exec].concat();
        // Whole, twice, and DISCARD: nothing pins, every request counted.
        let discard = [&multi[..], &incr, &r(&["DISCARD"])].concat();
        let stream = [&whole[..], &discard, &whole, &get].concat();
        let mut t = pooled();
        t.feed(&stream).unwrap();
        assert_eq!((t.pin, t.boundary as usize), (None, stream.len()));
        assert_eq!((t.requests, t.expected_replies), (14, 14));
        // Then the next one in the same tracker, cut before its EXEC: it pins at its MULTI.
        t.feed(&[&get[..], &multi, &incr].concat()).unwrap();
        assert_eq!(t.pin, Some(Pin::Transaction));
        assert_eq!(
            (t.pin_start(), t.boundary as usize),
            (Some(get.len()), get.len())
        );
        assert_eq!((t.requests, t.expected_replies), (15, 15));

        // What makes a transaction pin at its MULTI: a request in it that pins, a nested MULTI,
        // an EXEC or MULTI with arguments, its end not in the same buffer.
        for inner in [
            r(&["SELECT", "2"]),
            r(&["WATCH", "k"]),
            r(&["BLPOP", "q", "0"]),
            r(&["MULTI"]),
            r(&["EXEC", "x"]),
            b"PING\r\n".to_vec(),
        ] {
            let mut t = pooled();
            t.feed(&[&set[..], &multi, &incr, &inner, &exec, &get].concat())
                .unwrap();
            assert_eq!(
                t.pin,
                Some(Pin::Transaction),
                "{}",
                String::from_utf8_lossy(&inner)
            );
            assert_eq!(
                (t.pin_start(), t.boundary as usize),
                (Some(set.len()), set.len())
            );
            assert_eq!((t.requests, t.expected_replies), (1, 1));
        }
        let mut t = pooled();
        t.feed(&[&set[..], &r(&["MULTI", "x"])].concat()).unwrap();
        assert_eq!(
            (t.pin, t.pin_start()),
            (Some(Pin::Transaction), Some(set.len()))
        );
        // MULTI itself cut across buffers: the pin is at a request begun in the earlier one.
        let mut t = pooled();
        t.feed(&multi[..5]).unwrap();
        t.feed(&[&multi[5..], &incr].concat()).unwrap();
        assert_eq!(
            (t.pin, t.pin_start(), t.boundary),
            (Some(Pin::Transaction), None, 0)
        );
        // Bad input in a transaction: only what came before the MULTI is valid.
        let mut t = pooled();
        let bad = [&set[..], &multi, &incr, b"*1\r\nx"].concat();
        assert_eq!(t.feed(&bad).unwrap_err().1, set.len());
    }

    /// With durable acks, each reply owed gets a mark: the row of the command it answers, a
    /// queued one flagged; a transaction rewound to its MULTI takes its marks back.
    #[test]
    fn pooled_mode_marks_what_each_reply_answers() {
        let mut t = pooled();
        t.marking = true;
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
        let get = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
        let multi = b"*1\r\n$5\r\nMULTI\r\n";
        let exec = b"*1\r\n$4\r\nEXEC\r\n";
        let row = |n: &str| command::index_of(n.as_bytes()).unwrap();
        let marks = |t: &RequestTracker| -> Vec<u16> {
            t.marks()
                .chunks(2)
                .map(|m| u16::from_le_bytes([m[0], m[1]]))
                .collect()
        };
        t.feed(&[&set[..], get, multi, set, exec, b"*1\r\n$4\r\nPING\r\n"].concat())
            .unwrap();
        assert_eq!(
            marks(&t),
            [
                row("SET"),
                row("GET"),
                row("MULTI"),
                row("SET") | MARK_QUEUED,
                row("EXEC"),
                row("PING")
            ]
        );
        assert_eq!(t.expected_replies, 6);
        let kept = t.take_marks();
        t.restore_marks(kept);
        assert!(t.marks().is_empty());
        // The transaction's end is not here: it is rewound, its marks with it.
        t.feed(&[&get[..], multi, set].concat()).unwrap();
        assert_eq!(marks(&t), [row("GET")]);
        // Without marking, nothing is kept.
        let mut t = pooled();
        t.feed(&[&set[..], get].concat()).unwrap();
        assert!(t.marks().is_empty());
    }

    /// A dedicated session's marks go with its captures, each with its reply's number.
    #[test]
    fn a_dedicated_sessions_marks_number_their_replies() {
        let mut t = RequestTracker::new(1 << 20);
        t.marking = true;
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
        let select = b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n";
        let multi = b"*1\r\n$5\r\nMULTI\r\n";
        let exec = b"*1\r\n$4\r\nEXEC\r\n";
        t.feed(&[&set[..], select, multi, set, exec].concat())
            .unwrap();
        let row = |n: &str| command::index_of(n.as_bytes()).unwrap();
        let marks: Vec<(u16, u64)> = t
            .captured
            .iter()
            .filter_map(|c| match c.kind {
                CaptureKind::Mark(m) => Some((m, c.before)),
                _ => None,
            })
            .collect();
        assert_eq!(
            marks,
            [
                (row("SET"), 0),
                (row("SELECT"), 1),
                (row("MULTI"), 2),
                (row("SET") | MARK_QUEUED, 3),
                (row("EXEC"), 4)
            ]
        );
        // SELECT is still captured for a move, with its bytes.
        let state = t
            .captured
            .iter()
            .find(|c| c.kind == CaptureKind::State)
            .unwrap();
        assert_eq!((state.before, state.bytes.is_some()), (1, true));
    }

    /// Pooled mode keeps nothing per request: a client's shared state commands (SELECT 0,
    /// CLIENT SETINFO) are never captured for a carry it does not have.
    #[test]
    fn pooled_mode_captures_nothing() {
        let mut t = pooled();
        let select = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n";
        let setinfo = b"*4\r\n$6\r\nCLIENT\r\n$7\r\nSETINFO\r\n$8\r\nLIB-NAME\r\n$1\r\nx\r\n";
        for _ in 0..100 {
            t.feed(select).unwrap();
            t.feed(setinfo).unwrap();
        }
        assert_eq!((t.pin, t.requests), (None, 200));
        assert!(t.captured.is_empty() && t.captured_bytes.is_empty());
    }

    /// Pooled mode: `feed` stops at the first request that pins, says where it begins, and
    /// counts only the requests before it.
    #[test]
    fn pooled_mode_stops_at_the_request_that_pins() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
        let multi = b"*1\r\n$5\r\nMULTI\r\n";
        let mut t = pooled();
        let stream = [&set[..], multi, set].concat();
        t.feed(&stream).unwrap();
        assert_eq!(t.pin, Some(Pin::Transaction));
        assert_eq!(t.pin_start(), Some(set.len()));
        assert_eq!(t.boundary as usize, set.len());
        assert_eq!((t.requests, t.expected_replies), (1, 1));

        // Shared requests: no stop, the boundary is after the last complete one.
        let mut t = pooled();
        t.feed(&[&set[..], &set[..5]].concat()).unwrap();
        assert_eq!((t.pin, t.boundary as usize), (None, set.len()));
        // The rest of a request begun in an earlier chunk: a pin there starts before this chunk.
        let mut t = pooled();
        t.feed(&multi[..6]).unwrap();
        assert_eq!((t.pin, t.boundary), (None, 0));
        t.feed(&multi[6..]).unwrap();
        assert_eq!(t.pin, Some(Pin::Transaction));
        assert_eq!(t.pin_start(), None);

        // SELECT 0 shares; SELECT 5 pins, decided at its argument.
        let mut t = pooled();
        t.feed(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n").unwrap();
        assert_eq!((t.pin, t.requests), (None, 1));
        t.feed(b"*2\r\n$6\r\nSELECT\r\n$1\r\n5\r\n").unwrap();
        assert_eq!((t.pin, t.pin_start()), (Some(Pin::Select), Some(0)));
        // CLIENT SETNAME stops the tracker where it begins (the session answers it); `resume`
        // tracks what follows it, counted after what came before.
        let mut t = pooled();
        let name = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$1\r\nn\r\n";
        t.feed(&[&b"*1\r\n$4\r\nPING\r\n"[..], name].concat())
            .unwrap();
        assert_eq!(
            (t.pin, t.pin_start(), t.boundary),
            (Some(Pin::Name), Some(14), 14)
        );
        t.resume();
        assert_eq!((t.pin, t.requests, t.expected_replies), (None, 1, 1));
        t.feed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
        assert_eq!(
            (t.pin, t.requests, t.expected_replies, t.boundary),
            (None, 2, 2, 20)
        );
        // CLIENT SETINFO shares, CLIENT ID pins; a lone CLIENT pins.
        let mut t = pooled();
        t.feed(b"*4\r\n$6\r\nclient\r\n$7\r\nsetinfo\r\n$8\r\nLIB-NAME\r\n$2\r\npy\r\n")
            .unwrap();
        assert_eq!(t.pin, None);
        t.feed(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n").unwrap();
        assert_eq!(t.pin, Some(Pin::Client));
        let mut t = pooled();
        t.feed(b"*1\r\n$6\r\nCLIENT\r\n").unwrap();
        assert_eq!(t.pin, Some(Pin::Unknown));

        // An inline command pins at its first byte; so does a name longer than any known.
        let mut t = pooled();
        t.feed(&[&set[..], b"PING\r\n"].concat()).unwrap();
        assert_eq!((t.pin, t.pin_start()), (Some(Pin::Inline), Some(set.len())));
        let mut t = pooled();
        t.feed(b"*1\r\n$20\r\nAVERYLONGCOMMANDNAME\r\n").unwrap();
        assert_eq!(t.pin, Some(Pin::Unknown));
    }

    fn multibulk(words: &str) -> Vec<u8> {
        let args: Vec<&[u8]> = words.split(' ').map(str::as_bytes).collect();
        let mut out = Vec::new();
        crate::resp::encode_command(&mut out, &args);
        out
    }

    /// XREAD and XREADGROUP block only with BLOCK among their options (before STREAMS): only
    /// then do they pin in pooled mode, count as blocking, and get captured for a re-issue.
    #[test]
    fn xread_blocks_only_with_its_block_option() {
        for (cmd, blocks) in [
            ("XREAD COUNT 10 STREAMS s 0", false),
            ("XREAD COUNT 10 BLOCK 100 STREAMS s $", true),
            ("xread block 0 streams s $", true),
            ("XREAD STREAMS BLOCK 0", false),
            ("XREADGROUP GROUP BLOCK c STREAMS s >", false),
            (
                "XREADGROUP GROUP g c COUNT 1 NOACK BLOCK 5 STREAMS s >",
                true,
            ),
            ("XREADGROUP GROUP g c COUNT 1 STREAMS s >", false),
        ] {
            let req = multibulk(cmd);
            let mut t = pooled();
            t.feed(&req).unwrap();
            assert_eq!(t.pin, blocks.then_some(Pin::Blocking), "{cmd}");
            assert_eq!(t.requests, u64::from(!blocks), "{cmd}");
            // Split anywhere, the same.
            for cut in 1..req.len() {
                let mut t = pooled();
                t.feed(&req[..cut]).unwrap();
                t.feed(&req[cut..]).unwrap();
                assert_eq!(t.pin, blocks.then_some(Pin::Blocking), "{cmd} cut at {cut}");
            }

            let mut t = RequestTracker::new(1 << 20);
            t.feed(&req).unwrap();
            assert_eq!(t.blocking_seq, u64::from(blocks), "{cmd}");
            let captured: Vec<CaptureKind> = t.captured.iter().map(|c| c.kind).collect();
            let want = if blocks {
                vec![CaptureKind::Blocking]
            } else {
                vec![]
            };
            assert_eq!(captured, want, "{cmd}");
        }
        // A request after it starts afresh.
        let mut t = RequestTracker::new(1 << 20);
        t.feed(
            &[
                multibulk("XREAD BLOCK 1 STREAMS s $"),
                multibulk("GET BLOCK"),
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            (t.blocking_seq, t.expected_replies, t.captured.len()),
            (1, 2, 1)
        );
    }
}
