//! What the proxy knows about each Redis command, in one table: whether pooled mode may send it
//! on a shared connection (and if not, why it pins), what it does to the connection that a move
//! must carry (state, a transaction, subscriptions, MONITOR, the reply mode), whether it blocks
//! (and which argument decides it, where one does), and whether it writes. The framer
//! (`resp/request.rs`) looks a request's name up once and acts on its row; the session's carry
//! (`session/carry.rs`), the proxy's own authentication (`session/gate.rs`) and the re-issue of a
//! blocking command (`session/compose.rs`) read the same rows. Pure: no I/O.
//!
//! The rows are a hand list (`table.rs`, Redis 7.0's commands); what a server says of its own
//! commands (`COMMAND INFO` flags) is learned at connect where it answers (`learned.rs`) and is
//! what `writes` and `blocks` report then. A command the table does not name pins its client in
//! pooled mode: a new or rare command costs a dedicated connection, never a wrong answer.

mod learned;
mod table;

pub use learned::{Learned, Rows};

/// Why a client was pinned (the label of `sentinel_proxy_pinned_sessions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// MULTI, WATCH, EXEC, DISCARD, UNWATCH.
    Transaction,
    /// SUBSCRIBE and the rest of the pub/sub connection commands.
    PubSub,
    Monitor,
    /// A command that may block the connection (BLPOP, XREAD … BLOCK, WAIT …).
    Blocking,
    /// SELECT to a database other than 0.
    Select,
    /// AUTH or HELLO.
    Auth,
    /// CLIENT (all but SETINFO, SETNAME, GETNAME): tracking, reply modes, ids, lists.
    Client,
    /// CLIENT SETNAME and GETNAME: answered by the proxy itself in pooled mode, from the client's
    /// own name (`session/pooled/local.rs`), so they never pin there. On a connection lent for a
    /// span they make it the client's own (the name is then the server's).
    Name,
    /// READONLY, READWRITE, ASKING.
    ReadMode,
    /// SYNC, PSYNC, REPLCONF.
    Replication,
    /// RESET or QUIT.
    Reset,
    /// An inline (telnet-style) command.
    Inline,
    /// A command pooled mode does not know to be connection-free.
    Unknown,
    /// A request larger than pooled mode keeps whole (it is streamed on a connection of its own
    /// instead of being held until its end arrives).
    Large,
    /// CLIENT MAINT_NOTIFICATIONS (redis-py 8 sends it at connect): a server that knows it
    /// sends the connection push notifications from then on, one that does not answers an
    /// error and nothing changes. Borrowed for its answer: kept only if it worked.
    Notifications,
}

impl Pin {
    pub const ALL: [Pin; 15] = [
        Pin::Transaction,
        Pin::PubSub,
        Pin::Monitor,
        Pin::Blocking,
        Pin::Select,
        Pin::Auth,
        Pin::Client,
        Pin::Name,
        Pin::ReadMode,
        Pin::Replication,
        Pin::Reset,
        Pin::Inline,
        Pin::Unknown,
        Pin::Large,
        Pin::Notifications,
    ];

    /// A span of one request that changes only the client's own connection state (AUTH, HELLO,
    /// SELECT, CLIENT MAINT_NOTIFICATIONS), answered at once.
    pub fn sets_state(self) -> bool {
        matches!(self, Pin::Auth | Pin::Select | Pin::Notifications)
    }

    /// Pinned only for a span: the client borrows a connection and gives it back once the span
    /// is over (a transaction, a blocking call, the answer to AUTH, HELLO or SELECT) and the
    /// connection is in a state a pool can share (as it found it, or with only its user,
    /// protocol or database changed: the client then goes to the pool of that state).
    pub fn spans(self) -> bool {
        matches!(
            self,
            Pin::Transaction | Pin::Blocking | Pin::Auth | Pin::Select | Pin::Notifications
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Pin::Transaction => "transaction",
            Pin::PubSub => "pubsub",
            Pin::Monitor => "monitor",
            Pin::Blocking => "blocking",
            Pin::Select => "select",
            Pin::Auth => "auth",
            Pin::Client => "client",
            Pin::Name => "name",
            Pin::ReadMode => "read_mode",
            Pin::Replication => "replication",
            Pin::Reset => "reset",
            Pin::Inline => "inline",
            Pin::Unknown => "unknown",
            Pin::Large => "large",
            Pin::Notifications => "notifications",
        }
    }
}

/// Pooled mode: may the command go on a connection shared with other clients?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Its effect and its answer do not depend on, or change, the connection it runs on (data
    /// commands, server-wide commands). One that blocks still pins (`Blocks`).
    Share,
    Pin(Pin),
    /// EVAL, EVALSHA, FCALL and their read-only forms: shared, on a connection that carries
    /// scripts (`session/pool.rs`: each shared connection has a twin for scripts). A script that
    /// runs long holds its connection, and Redis answers other connections `-BUSY` (and takes
    /// `SCRIPT KILL` on them): a client that sends no script never queues behind one.
    Script,
    /// Decided by the first argument ([`by_argument`]): SELECT 0 and CLIENT SETINFO share.
    ByArgument,
}

/// Connection state a move replays, one slot each (the last that worked wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Auth,
    Hello,
    Db,
    Name,
    LibName,
    LibVersion,
    NoEvict,
    NoTouch,
    /// CLIENT MAINT_NOTIFICATIONS.
    Notifications,
}

impl Slot {
    pub const COUNT: usize = 9;

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the command does to the connection, beyond its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Sets connection state (replayed after a move if it worked).
    State(Slot),
    /// CLIENT: decided by the subcommand ([`client_sub`]).
    Client,
    Multi,
    /// EXEC or DISCARD: the transaction (and any WATCH) is over.
    Exec,
    Watch,
    Unwatch,
    /// Enters pub/sub mode.
    Subscribe,
    /// Answered with push frames only in RESP3.
    Unsubscribe,
    Monitor,
    /// Redis answers it and closes; nothing after it runs.
    Quit,
    /// Back to a fresh connection.
    Reset,
    /// A replication stream follows (SYNC, PSYNC).
    Replication,
}

/// Where a blocking command's timeout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The last argument, in seconds (BLPOP, BLMOVE …).
    Last,
    /// The first argument, in seconds (BLMPOP, BZMPOP).
    First,
    /// After the blocking option, in milliseconds (XREAD … BLOCK ms).
    AfterOption,
}

/// An option that makes a command block: looked for among the arguments from `from` on, up to
/// `until` (where keys begin, so a key of that name is not taken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOption {
    pub word: &'static [u8],
    pub from: usize,
    pub until: &'static [u8],
}

/// `XREAD [COUNT n] [BLOCK ms] STREAMS …`
pub const BLOCK_OPTION: BlockOption = BlockOption {
    word: b"BLOCK",
    from: 1,
    until: b"STREAMS",
};
/// `XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS …`: the group and consumer names
/// come first and are not options.
pub const BLOCK_OPTION_GROUP: BlockOption = BlockOption {
    word: b"BLOCK",
    from: 4,
    until: b"STREAMS",
};

/// Whether a command may block its connection until data arrives or its timeout passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    Never,
    /// Always; a move re-issues it on the new master with what is left of its timeout.
    Always(Timeout),
    /// Only with this option (XREAD, XREADGROUP); re-issued like the others.
    Option(BlockOption),
    /// Blocks, but means nothing on another node (WAIT, WAITAOF): never re-issued.
    Wait,
}

/// One command's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Upper case.
    pub name: &'static [u8],
    pub pool: Pool,
    pub effect: Effect,
    pub blocks: Blocks,
    /// It writes (the hand list's view; a server's own is in [`Learned`]).
    pub writes: bool,
}

/// The row of the command named `name` (upper case), if the table has one.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    index_of(name).map(at)
}

/// Where the row of `name` (upper case) is: a small number for a tracker to keep instead of a
/// reference (every session has one; see [`at`]). On the byte path, once per request: a name
/// of up to 16 bytes, as nearly all are, goes straight to the few rows of its first letter and
/// length ([`BUCKETS`]) and is compared as one integer; a longer one is searched by name.
#[inline]
pub fn index_of(name: &[u8]) -> Option<u16> {
    if name.len() > KEY_LEN {
        let i = table::TABLE.binary_search_by(|s| s.name.cmp(name)).ok()?;
        return u16::try_from(i).ok();
    }
    let mut buf = [0u8; KEY_LEN];
    buf[..name.len()].copy_from_slice(name);
    index_of_packed(&buf, name.len())
}

/// [`index_of`] for a name kept in a 16-byte buffer (its first `len` bytes; what follows them
/// need not be zero), as the request tracker keeps it: no copy.
#[inline]
pub fn index_of_packed(buf: &[u8; KEY_LEN], len: usize) -> Option<u16> {
    let b = bucket(buf.get(..len)?)?;
    // The bytes past `len` masked off: the same length and the same integer, the same name.
    let key = u128::from_be_bytes(*buf) & (u128::MAX << ((KEY_LEN - len) * 8));
    let (from, to) = (BUCKETS.start[b] as usize, BUCKETS.start[b + 1] as usize);
    BUCKETS.rows[from..to]
        .iter()
        .copied()
        .find(|&r| BUCKETS.keys[r as usize] == key)
}

/// Names are compared as integers up to this many bytes.
const KEY_LEN: usize = 16;
/// One bucket per first letter (A to Z) and length (1 to 16).
const BUCKET_COUNT: usize = 26 * KEY_LEN;

/// A name's bucket: its first letter and its length (none for a name that starts otherwise or
/// is empty or too long: the table has no such name).
const fn bucket(name: &[u8]) -> Option<usize> {
    if name.is_empty() || name.len() > KEY_LEN || !name[0].is_ascii_uppercase() {
        return None;
    }
    Some((name[0] - b'A') as usize * KEY_LEN + name.len() - 1)
}

/// The first 16 bytes of a name, zero-padded, as one integer (at compile time; `index_of` packs
/// the name it looks up the same way).
const fn key(name: &[u8]) -> u128 {
    let mut buf = [0u8; KEY_LEN];
    let mut j = 0;
    while j < name.len() && j < KEY_LEN {
        buf[j] = name[j];
        j += 1;
    }
    u128::from_be_bytes(buf)
}

/// The table's rows grouped by bucket (built at compile time).
struct Buckets {
    /// Where each bucket's rows begin in `rows` (and the last one ends).
    start: [u16; BUCKET_COUNT + 1],
    /// Row numbers, bucket after bucket.
    rows: [u16; table::TABLE.len()],
    /// Each row's name as an integer ([`key`]).
    keys: [u128; table::TABLE.len()],
    /// Each row's [`traits`].
    traits: [u8; table::TABLE.len()],
}

static BUCKETS: Buckets = {
    const N: usize = table::TABLE.len();
    let mut start = [0u16; BUCKET_COUNT + 1];
    let mut keys = [0u128; N];
    let mut traits = [0u8; N];
    let mut i = 0;
    while i < N {
        let name = table::TABLE[i].name;
        keys[i] = key(name);
        traits[i] = traits_for(&table::TABLE[i]);
        if let Some(b) = bucket(name) {
            start[b + 1] += 1;
        }
        i += 1;
    }
    let mut b = 0;
    while b < BUCKET_COUNT {
        start[b + 1] += start[b];
        b += 1;
    }
    let mut rows = [u16::MAX; N];
    let mut filled = [0u16; BUCKET_COUNT];
    let mut i = 0;
    while i < N {
        if let Some(b) = bucket(table::TABLE[i].name) {
            rows[(start[b] + filled[b]) as usize] = i as u16;
            filled[b] += 1;
        }
        i += 1;
    }
    Buckets {
        start,
        rows,
        keys,
        traits,
    }
};

/// What the request tracker asks of a row on every request, as bits of one byte per row (a
/// small table next to the index, not the rows themselves: the byte path touches a few cache
/// lines, not the whole table).
pub mod traits {
    /// A move may have to carry it (`resp::CaptureKind`): it sets connection state, is part of
    /// a transaction or subscriptions, or blocks and can be re-issued.
    pub const CAPTURED: u8 = 1;
    /// It blocks only with an option (`Blocks::Option`): its arguments are scanned for it.
    pub const BLOCK_OPTION: u8 = 2;
    /// Nothing to note when it completes: no effect on the connection, never blocks.
    pub const PLAIN: u8 = 4;
    /// Pooled mode shares it by its name alone (`Pool::Share`).
    pub const SHARE: u8 = 8;
    /// A script (`Pool::Script`).
    pub const SCRIPT: u8 = 16;
}

/// The traits ([`traits`]) of the row at `index`.
#[inline]
pub fn traits_of(index: u16) -> u8 {
    BUCKETS.traits[index as usize]
}

const fn traits_for(s: &Spec) -> u8 {
    let mut t = 0;
    let effect_captured = matches!(
        s.effect,
        Effect::State(_)
            | Effect::Client
            | Effect::Multi
            | Effect::Exec
            | Effect::Watch
            | Effect::Unwatch
            | Effect::Reset
            | Effect::Subscribe
    );
    if effect_captured || matches!(s.blocks, Blocks::Always(_) | Blocks::Option(_)) {
        t |= traits::CAPTURED;
    }
    if matches!(s.blocks, Blocks::Option(_)) {
        t |= traits::BLOCK_OPTION;
    }
    if matches!(s.effect, Effect::None) && matches!(s.blocks, Blocks::Never) {
        t |= traits::PLAIN;
    }
    if matches!(s.pool, Pool::Share) {
        t |= traits::SHARE;
    }
    if matches!(s.pool, Pool::Script) {
        t |= traits::SCRIPT;
    }
    t
}

/// The row at `index` (from [`index_of`]).
#[inline]
pub fn at(index: u16) -> &'static Spec {
    &table::TABLE[index as usize]
}

/// The row of `name` in any case.
pub fn lookup_any_case(name: &[u8]) -> Option<&'static Spec> {
    let mut buf = [0u8; 32];
    let up = buf.get_mut(..name.len())?;
    up.copy_from_slice(name);
    up.make_ascii_uppercase();
    lookup(up)
}

/// Every row (for tests and for learning from a server).
pub fn all() -> &'static [Spec] {
    table::TABLE
}

/// Pooled mode, for a command whose row says `ByArgument`: SELECT 0 (every shared connection
/// is on db 0) and CLIENT SETINFO (library name and version, which Redis only shows in CLIENT
/// LIST; clients send it at connect) share; other SELECTs and CLIENT subcommands pin (SELECT
/// and CLIENT MAINT_NOTIFICATIONS only for their answer: `Pin::spans`).
pub fn by_argument(name: &[u8], first: &[u8]) -> Option<Pin> {
    match name {
        b"SELECT" if first == b"0" => None,
        b"SELECT" => Some(Pin::Select),
        b"CLIENT" if first == b"SETINFO" => None,
        b"CLIENT" if first == b"SETNAME" || first == b"GETNAME" => Some(Pin::Name),
        b"CLIENT" if is_maint_notifications(first) => Some(Pin::Notifications),
        _ => Some(Pin::Client),
    }
}

/// `MAINT_NOTIFICATIONS`, whole, or as the request framer keeps a word longer than its 16
/// bytes (`resp/request.rs`: the first byte zeroed, the next 15 kept): no other CLIENT
/// subcommand is that long.
fn is_maint_notifications(sub: &[u8]) -> bool {
    sub == b"MAINT_NOTIFICATIONS"
        || (sub.len() == 16 && sub[0] == 0 && &sub[1..] == b"AINT_NOTIFICATI")
}

/// What a CLIENT subcommand (upper case; `arg` its first argument, upper case) does to the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSub {
    Other,
    /// CLIENT REPLY ON/OFF/SKIP.
    Reply(ReplyMode),
    State(Slot),
    Tracking,
}

/// `CLIENT REPLY …`'s mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    Skip,
    /// Anything else: Redis answers an error and changes nothing.
    Invalid,
}

pub fn client_sub(sub: &[u8], arg: &[u8]) -> ClientSub {
    match sub {
        b"REPLY" => ClientSub::Reply(match arg {
            b"ON" => ReplyMode::On,
            b"OFF" => ReplyMode::Off,
            b"SKIP" => ReplyMode::Skip,
            _ => ReplyMode::Invalid,
        }),
        b"SETNAME" => ClientSub::State(Slot::Name),
        b"SETINFO" if arg == b"LIB-NAME" => ClientSub::State(Slot::LibName),
        b"SETINFO" => ClientSub::State(Slot::LibVersion),
        b"NO-EVICT" => ClientSub::State(Slot::NoEvict),
        b"NO-TOUCH" => ClientSub::State(Slot::NoTouch),
        b"TRACKING" => ClientSub::Tracking,
        _ if is_maint_notifications(sub) => ClientSub::State(Slot::Notifications),
        _ => ClientSub::Other,
    }
}

/// The state slot of a whole command (its arguments, any case), if it sets connection state.
pub fn state_slot(args: &[&[u8]]) -> Option<Slot> {
    let up = |x: &[u8]| x.to_ascii_uppercase();
    let name = args.first()?;
    match lookup_any_case(name)?.effect {
        Effect::State(slot) => Some(slot),
        Effect::Client => {
            match client_sub(&up(args.get(1)?), &up(args.get(2).unwrap_or(&&b""[..]))) {
                ClientSub::State(Slot::LibName | Slot::LibVersion) if args.len() < 3 => None,
                ClientSub::State(slot) => Some(slot),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Where the timeout of the blocking command `args` is (index, and whether in seconds), if it
/// has one.
pub fn timeout_at(args: &[&[u8]]) -> Option<(usize, bool)> {
    let spec = lookup_any_case(args.first()?)?;
    match spec.blocks {
        Blocks::Always(Timeout::Last) => Some((args.len().checked_sub(1)?, true)),
        Blocks::Always(Timeout::First) => Some((1, true)),
        Blocks::Always(Timeout::AfterOption) | Blocks::Never | Blocks::Wait => None,
        Blocks::Option(o) => option_at(args, o).map(|i| (i + 1, false)),
    }
}

/// The index of the blocking option `o` in `args`, if it is there.
pub fn option_at(args: &[&[u8]], o: BlockOption) -> Option<usize> {
    args.iter()
        .enumerate()
        .skip(o.from)
        .take_while(|(_, a)| !a.eq_ignore_ascii_case(o.until))
        .find(|(_, a)| a.eq_ignore_ascii_case(o.word))
        .map(|(i, _)| i)
}

/// `AUTH [user] password`, parsed: the user (`default` when not given) and the password.
pub fn auth_args<'a>(args: &[&'a [u8]]) -> Result<(&'a [u8], &'a [u8]), &'static str> {
    match args {
        [_, password] => Ok((b"default", password)),
        [_, user, password] => Ok((user, password)),
        _ => Err("wrong number of arguments for 'auth' command"),
    }
}

/// `HELLO [protover [AUTH user password] [SETNAME name]]`, split into its login (if it has
/// one) and the rest of the command, AUTH taken out.
pub struct Hello<'a> {
    pub login: Option<(&'a [u8], &'a [u8])>,
    pub rest: Vec<&'a [u8]>,
}

pub fn hello<'a>(args: &[&'a [u8]]) -> Result<Hello<'a>, &'static str> {
    let mut rest = Vec::with_capacity(args.len());
    let mut login = None;
    let mut i = 0;
    while i < args.len() {
        if i >= 2 && args[i].eq_ignore_ascii_case(b"AUTH") {
            let (Some(user), Some(password)) = (args.get(i + 1), args.get(i + 2)) else {
                return Err("Syntax error in HELLO option 'auth'");
            };
            login = Some((*user, *password));
            i += 3;
            continue;
        }
        rest.push(args[i]);
        i += 1;
    }
    Ok(Hello { login, rest })
}

/// The protocol version a HELLO asks for (its first argument), if it names one.
pub fn hello_version<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    args.get(1).copied()
}

#[cfg(test)]
mod tests;
