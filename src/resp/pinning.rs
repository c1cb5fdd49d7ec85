//! Pooled mode's one decision about a request: may it go on a connection shared with other
//! clients, or does it pin its client to a connection of its own? Pure, decided from the command
//! name (and, for SELECT and CLIENT, the first argument).
//!
//! A command may share a connection when its effect and its answer do not depend on, or change,
//! the connection it runs on: data commands, server-wide commands. Everything else pins,
//! and so does every command this list does not name: a new or rare command costs a dedicated
//! connection, never a wrong answer.

/// Why a client was pinned (the label of `sentinel_proxy_pinned_sessions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// MULTI, WATCH, EXEC, DISCARD, UNWATCH.
    Transaction,
    /// SUBSCRIBE and the rest of the pub/sub connection commands.
    PubSub,
    Monitor,
    /// A command that may block the connection (BLPOP, XREAD, WAIT …).
    Blocking,
    /// EVAL, EVALSHA, FCALL and their read-only forms: a script that runs long makes Redis answer
    /// other connections `-BUSY` (and take `SCRIPT KILL`), which clients queued behind it on a
    /// shared connection would never get.
    Script,
    /// SELECT to a database other than 0.
    Select,
    /// AUTH or HELLO.
    Auth,
    /// CLIENT (all but SETINFO): names, tracking, reply modes, ids, lists.
    Client,
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
}

impl Pin {
    pub const ALL: [Pin; 14] = [
        Pin::Transaction,
        Pin::PubSub,
        Pin::Monitor,
        Pin::Blocking,
        Pin::Script,
        Pin::Select,
        Pin::Auth,
        Pin::Client,
        Pin::ReadMode,
        Pin::Replication,
        Pin::Reset,
        Pin::Inline,
        Pin::Unknown,
        Pin::Large,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Pin::Transaction => "transaction",
            Pin::PubSub => "pubsub",
            Pin::Monitor => "monitor",
            Pin::Blocking => "blocking",
            Pin::Script => "script",
            Pin::Select => "select",
            Pin::Auth => "auth",
            Pin::Client => "client",
            Pin::ReadMode => "read_mode",
            Pin::Replication => "replication",
            Pin::Reset => "reset",
            Pin::Inline => "inline",
            Pin::Unknown => "unknown",
            Pin::Large => "large",
        }
    }
}

/// What the command name (upper-cased) alone says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByName {
    Shared,
    Pin(Pin),
    /// Decided by the first argument (see [`by_argument`]).
    Argument,
}

pub fn by_name(name: &[u8]) -> ByName {
    use ByName::*;
    match name {
        b"SELECT" | b"CLIENT" => Argument,
        b"MULTI" | b"WATCH" | b"EXEC" | b"DISCARD" | b"UNWATCH" => Pin(self::Pin::Transaction),
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE"
        | b"SUNSUBSCRIBE" => Pin(self::Pin::PubSub),
        b"MONITOR" => Pin(self::Pin::Monitor),
        b"BLPOP" | b"BRPOP" | b"BRPOPLPUSH" | b"BLMOVE" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX"
        | b"BZMPOP" | b"XREAD" | b"XREADGROUP" | b"WAIT" | b"WAITAOF" => Pin(self::Pin::Blocking),
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            Pin(self::Pin::Script)
        }
        b"AUTH" | b"HELLO" => Pin(self::Pin::Auth),
        b"READONLY" | b"READWRITE" | b"ASKING" => Pin(self::Pin::ReadMode),
        b"SYNC" | b"PSYNC" | b"REPLCONF" => Pin(self::Pin::Replication),
        b"RESET" | b"QUIT" => Pin(self::Pin::Reset),
        _ if shared(name) => Shared,
        _ => Pin(self::Pin::Unknown),
    }
}

/// SELECT 0 (every shared connection is on db 0) and CLIENT SETINFO (library name and version,
/// which Redis only shows in CLIENT LIST; clients send it at connect) share; other SELECTs and
/// CLIENT subcommands pin.
pub fn by_argument(name: &[u8], first: &[u8]) -> Option<Pin> {
    match name {
        b"SELECT" if first == b"0" => None,
        b"SELECT" => Some(Pin::Select),
        b"CLIENT" if first == b"SETINFO" => None,
        _ => Some(Pin::Client),
    }
}

/// Commands whose effect and answer do not depend on the connection (Redis 7's table, less the
/// connection, blocking, transaction, pub/sub-mode and replication commands; DEBUG is left out:
/// some of its subcommands are about the connection).
fn shared(name: &[u8]) -> bool {
    matches!(
        name,
        // strings
        b"GET" | b"SET" | b"SETNX" | b"SETEX" | b"PSETEX" | b"GETSET" | b"GETEX" | b"GETDEL"
            | b"MGET" | b"MSET" | b"MSETNX" | b"APPEND" | b"STRLEN" | b"INCR" | b"INCRBY"
            | b"INCRBYFLOAT" | b"DECR" | b"DECRBY" | b"GETRANGE" | b"SETRANGE" | b"SUBSTR"
            | b"LCS"
            // bitmaps
            | b"SETBIT" | b"GETBIT" | b"BITCOUNT" | b"BITPOS" | b"BITOP" | b"BITFIELD"
            | b"BITFIELD_RO"
            // lists (non-blocking)
            | b"LPUSH" | b"RPUSH" | b"LPUSHX" | b"RPUSHX" | b"LPOP" | b"RPOP" | b"LLEN"
            | b"LRANGE" | b"LINDEX" | b"LSET" | b"LREM" | b"LTRIM" | b"LINSERT" | b"LPOS"
            | b"LMOVE" | b"RPOPLPUSH" | b"LMPOP"
            // hashes
            | b"HSET" | b"HSETNX" | b"HGET" | b"HMSET" | b"HMGET" | b"HDEL" | b"HLEN"
            | b"HSTRLEN" | b"HEXISTS" | b"HKEYS" | b"HVALS" | b"HGETALL" | b"HINCRBY"
            | b"HINCRBYFLOAT" | b"HSCAN" | b"HRANDFIELD"
            // sets
            | b"SADD" | b"SREM" | b"SMEMBERS" | b"SISMEMBER" | b"SMISMEMBER" | b"SCARD"
            | b"SPOP" | b"SRANDMEMBER" | b"SMOVE" | b"SINTER" | b"SINTERSTORE" | b"SINTERCARD"
            | b"SUNION" | b"SUNIONSTORE" | b"SDIFF" | b"SDIFFSTORE" | b"SSCAN"
            // sorted sets (non-blocking)
            | b"ZADD" | b"ZINCRBY" | b"ZREM" | b"ZCARD" | b"ZCOUNT" | b"ZSCORE" | b"ZMSCORE"
            | b"ZRANK" | b"ZREVRANK" | b"ZRANGE" | b"ZRANGESTORE" | b"ZREVRANGE"
            | b"ZRANGEBYSCORE" | b"ZREVRANGEBYSCORE" | b"ZRANGEBYLEX" | b"ZREVRANGEBYLEX"
            | b"ZLEXCOUNT" | b"ZREMRANGEBYRANK" | b"ZREMRANGEBYSCORE" | b"ZREMRANGEBYLEX"
            | b"ZPOPMIN" | b"ZPOPMAX" | b"ZMPOP" | b"ZUNION" | b"ZUNIONSTORE" | b"ZINTER"
            | b"ZINTERSTORE" | b"ZINTERCARD" | b"ZDIFF" | b"ZDIFFSTORE" | b"ZSCAN"
            | b"ZRANDMEMBER"
            // streams (XREAD and XREADGROUP may block: they pin)
            | b"XADD" | b"XLEN" | b"XRANGE" | b"XREVRANGE" | b"XDEL" | b"XTRIM" | b"XACK"
            | b"XCLAIM" | b"XAUTOCLAIM" | b"XPENDING" | b"XINFO" | b"XGROUP" | b"XSETID"
            // hyperloglog, geo
            | b"PFADD" | b"PFCOUNT" | b"PFMERGE" | b"GEOADD" | b"GEODIST" | b"GEOHASH"
            | b"GEOPOS" | b"GEORADIUS" | b"GEORADIUSBYMEMBER" | b"GEORADIUS_RO"
            | b"GEORADIUSBYMEMBER_RO" | b"GEOSEARCH" | b"GEOSEARCHSTORE"
            // keys
            | b"DEL" | b"UNLINK" | b"EXISTS" | b"TYPE" | b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT"
            | b"PEXPIREAT" | b"EXPIRETIME" | b"PEXPIRETIME" | b"TTL" | b"PTTL" | b"PERSIST"
            | b"KEYS" | b"SCAN" | b"RANDOMKEY" | b"RENAME" | b"RENAMENX" | b"DUMP" | b"RESTORE"
            | b"OBJECT" | b"TOUCH" | b"COPY" | b"SORT" | b"SORT_RO" | b"MOVE"
            // script and function management (running one pins: `Pin::Script`)
            | b"FUNCTION" | b"SCRIPT"
            // server-wide
            | b"PING" | b"ECHO" | b"DBSIZE" | b"INFO" | b"TIME" | b"LASTSAVE" | b"CONFIG"
            | b"FLUSHDB" | b"FLUSHALL" | b"COMMAND" | b"MEMORY" | b"LATENCY" | b"SLOWLOG"
            | b"LOLWUT" | b"SAVE" | b"BGSAVE" | b"BGREWRITEAOF" | b"SWAPDB" | b"ROLE"
            | b"PUBLISH" | b"SPUBLISH" | b"PUBSUB"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_commands_share_and_connection_commands_pin() {
        for name in [&b"GET"[..], b"SET", b"SCRIPT", b"XADD", b"PUBLISH", b"INFO"] {
            assert_eq!(
                by_name(name),
                ByName::Shared,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        let pins = [
            (&b"MULTI"[..], Pin::Transaction),
            (b"WATCH", Pin::Transaction),
            (b"SUBSCRIBE", Pin::PubSub),
            (b"SSUBSCRIBE", Pin::PubSub),
            (b"MONITOR", Pin::Monitor),
            (b"BLPOP", Pin::Blocking),
            (b"XREADGROUP", Pin::Blocking),
            (b"WAIT", Pin::Blocking),
            (b"EVALSHA", Pin::Script),
            (b"FCALL_RO", Pin::Script),
            (b"AUTH", Pin::Auth),
            (b"HELLO", Pin::Auth),
            (b"READONLY", Pin::ReadMode),
            (b"PSYNC", Pin::Replication),
            (b"QUIT", Pin::Reset),
            (b"DEBUG", Pin::Unknown),
            (b"SOMENEWCOMMAND", Pin::Unknown),
            (b"", Pin::Unknown),
        ];
        for (name, pin) in pins {
            assert_eq!(by_name(name), ByName::Pin(pin));
        }
        assert_eq!(by_name(b"SELECT"), ByName::Argument);
        assert_eq!(by_argument(b"SELECT", b"0"), None);
        assert_eq!(by_argument(b"SELECT", b"00"), Some(Pin::Select));
        assert_eq!(by_argument(b"SELECT", b"3"), Some(Pin::Select));
        assert_eq!(by_argument(b"CLIENT", b"SETINFO"), None);
        for sub in [
            &b"ID"[..],
            b"INFO",
            b"LIST",
            b"SETNAME",
            b"TRACKING",
            b"REPLY",
            b"KILL",
        ] {
            assert_eq!(by_argument(b"CLIENT", sub), Some(Pin::Client));
        }
    }
}
