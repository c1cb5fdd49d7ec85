use super::*;

#[test]
fn the_table_is_sorted_unique_and_upper_case() {
    let t = all();
    for w in t.windows(2) {
        assert!(
            w[0].name < w[1].name,
            "{} before {}",
            String::from_utf8_lossy(w[0].name),
            String::from_utf8_lossy(w[1].name)
        );
    }
    for s in t {
        assert_eq!(s.name, s.name.to_ascii_uppercase().as_slice());
        assert!(lookup(s.name) == Some(s));
        // A command that always blocks pins; so does one that waits.
        if matches!(s.blocks, Blocks::Always(_) | Blocks::Wait) {
            assert_eq!(s.pool, Pool::Pin(Pin::Blocking), "{:?}", s.name);
        }
    }
    assert!(lookup(b"SOMENEWCOMMAND").is_none());
    // Past 16 bytes, and a 16-byte prefix of a longer name that is not a name itself.
    assert_eq!(
        lookup(b"GEORADIUSBYMEMBER_RO").map(|s| s.name),
        Some(&b"GEORADIUSBYMEMBER_RO"[..])
    );
    assert_eq!(
        lookup(b"GEORADIUSBYMEMBER").map(|s| s.name),
        Some(&b"GEORADIUSBYMEMBER"[..])
    );
    assert!(lookup(b"GEORADIUSBYMEMBE").is_none());
    assert!(lookup(b"ZZZZZZZZZZZZZZZZZZZ").is_none());
    for s in t {
        assert_eq!(index_of(s.name).map(at), Some(s));
    }
    assert!(lookup(b"").is_none());
    assert!(lookup(b"get").is_none(), "names are upper case");
    assert_eq!(lookup_any_case(b"gEt").map(|s| s.name), Some(&b"GET"[..]));
}

/// What pooled mode does with a command's name alone (the table's `pool`).
fn pool(name: &[u8]) -> Option<Pool> {
    lookup(name).map(|s| s.pool)
}

#[test]
fn data_commands_share_and_connection_commands_pin() {
    for name in [
        &b"GET"[..],
        b"SET",
        b"SCRIPT",
        b"XADD",
        b"PUBLISH",
        b"INFO",
        b"XREAD",
        b"XREADGROUP",
        b"CLUSTER",
        b"SENTINEL",
    ] {
        assert_eq!(
            pool(name),
            Some(Pool::Share),
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
        (b"WAIT", Pin::Blocking),
        (b"AUTH", Pin::Auth),
        (b"HELLO", Pin::Auth),
        (b"READONLY", Pin::ReadMode),
        (b"PSYNC", Pin::Replication),
        (b"QUIT", Pin::Reset),
        (b"DEBUG", Pin::Unknown),
    ];
    for (name, pin) in pins {
        assert_eq!(pool(name), Some(Pool::Pin(pin)));
    }
    for name in [
        &b"EVAL"[..],
        b"EVALSHA",
        b"EVAL_RO",
        b"EVALSHA_RO",
        b"FCALL",
        b"FCALL_RO",
    ] {
        assert_eq!(pool(name), Some(Pool::Script));
    }
    assert_eq!(pool(b"SELECT"), Some(Pool::ByArgument));
    assert_eq!(by_argument(b"SELECT", b"0"), None);
    assert_eq!(by_argument(b"SELECT", b"00"), Some(Pin::Select));
    assert_eq!(by_argument(b"SELECT", b"3"), Some(Pin::Select));
    assert_eq!(by_argument(b"CLIENT", b"SETINFO"), None);
    for sub in [&b"ID"[..], b"INFO", b"LIST", b"TRACKING", b"REPLY", b"KILL"] {
        assert_eq!(by_argument(b"CLIENT", sub), Some(Pin::Client));
    }
    for sub in [&b"SETNAME"[..], b"GETNAME"] {
        assert_eq!(by_argument(b"CLIENT", sub), Some(Pin::Name));
    }
}

fn words(s: &str) -> Vec<&[u8]> {
    s.split(' ').map(str::as_bytes).collect()
}

#[test]
fn xread_blocks_only_with_block_before_streams() {
    let at = |s: &str| {
        let spec = lookup_any_case(words(s)[0]).unwrap();
        match spec.blocks {
            Blocks::Option(o) => option_at(&words(s), o),
            _ => panic!("{s}"),
        }
    };
    assert_eq!(at("XREAD STREAMS s 0"), None);
    assert_eq!(at("XREAD COUNT 5 STREAMS s 0"), None);
    assert_eq!(at("XREAD COUNT 5 block 100 STREAMS s 0"), Some(3));
    assert_eq!(at("XREAD BLOCK 0 STREAMS s $"), Some(1));
    // A key named BLOCK is a key.
    assert_eq!(at("XREAD STREAMS BLOCK 0"), None);
    // The group and consumer of XREADGROUP are names, not options.
    assert_eq!(at("XREADGROUP GROUP BLOCK c STREAMS s >"), None);
    assert_eq!(at("XREADGROUP GROUP g c BLOCK 10 STREAMS s >"), Some(4));
    assert_eq!(
        at("XREADGROUP GROUP g c COUNT 1 NOACK BLOCK 10 STREAMS s >"),
        Some(7)
    );
}

#[test]
fn timeouts_are_found_where_each_command_keeps_them() {
    assert_eq!(timeout_at(&words("BLPOP a b 5")), Some((3, true)));
    assert_eq!(timeout_at(&words("BLMPOP 1.5 2 a b LEFT")), Some((1, true)));
    assert_eq!(timeout_at(&words("bzmpop 2 1 z MIN")), Some((1, true)));
    assert_eq!(
        timeout_at(&words("XREAD COUNT 1 BLOCK 100 STREAMS s $")),
        Some((4, false))
    );
    assert_eq!(timeout_at(&words("XREAD STREAMS s $")), None);
    assert_eq!(timeout_at(&words("WAIT 1 0")), None);
    assert_eq!(timeout_at(&words("GET k")), None);
}

#[test]
fn state_slots() {
    let slot = |s: &str| state_slot(&words(s));
    assert_eq!(slot("auth pw"), Some(Slot::Auth));
    assert_eq!(slot("HELLO 3"), Some(Slot::Hello));
    assert_eq!(slot("select 2"), Some(Slot::Db));
    assert_eq!(slot("CLIENT SETNAME x"), Some(Slot::Name));
    assert_eq!(
        slot("client setinfo lib-name redis-py"),
        Some(Slot::LibName)
    );
    assert_eq!(slot("CLIENT SETINFO LIB-VER 5"), Some(Slot::LibVersion));
    assert_eq!(slot("CLIENT SETINFO"), None);
    assert_eq!(slot("CLIENT NO-EVICT on"), Some(Slot::NoEvict));
    assert_eq!(slot("CLIENT NO-TOUCH on"), Some(Slot::NoTouch));
    assert_eq!(
        slot("client maint_notifications on moving-endpoint-type internal-ip"),
        Some(Slot::Notifications)
    );
    assert_eq!(slot("CLIENT TRACKING on"), None);
    assert_eq!(slot("CLIENT"), None);
    assert_eq!(slot("GET k"), None);
    let indexes: Vec<usize> = [
        Slot::Auth,
        Slot::Hello,
        Slot::Db,
        Slot::Name,
        Slot::LibName,
        Slot::LibVersion,
        Slot::NoEvict,
        Slot::NoTouch,
        Slot::Notifications,
    ]
    .iter()
    .map(|s| s.index())
    .collect();
    assert_eq!(indexes, (0..Slot::COUNT).collect::<Vec<_>>());
}

#[test]
fn client_subcommands() {
    assert_eq!(
        client_sub(b"REPLY", b"OFF"),
        ClientSub::Reply(ReplyMode::Off)
    );
    assert_eq!(client_sub(b"REPLY", b"ON"), ClientSub::Reply(ReplyMode::On));
    assert_eq!(
        client_sub(b"REPLY", b"SKIP"),
        ClientSub::Reply(ReplyMode::Skip)
    );
    assert_eq!(
        client_sub(b"REPLY", b"X"),
        ClientSub::Reply(ReplyMode::Invalid)
    );
    assert_eq!(client_sub(b"TRACKING", b"ON"), ClientSub::Tracking);
    assert_eq!(client_sub(b"SETNAME", b"n"), ClientSub::State(Slot::Name));
    assert_eq!(client_sub(b"LIST", b""), ClientSub::Other);
    // As the framer keeps it (longer than 16 bytes: the first zeroed, 15 kept), and whole.
    let kept = b"\0AINT_NOTIFICATI";
    assert_eq!(
        client_sub(kept, b"ON"),
        ClientSub::State(Slot::Notifications)
    );
    assert_eq!(by_argument(b"CLIENT", kept), Some(Pin::Notifications));
    assert_eq!(
        by_argument(b"CLIENT", b"MAINT_NOTIFICATIONS"),
        Some(Pin::Notifications)
    );
    assert_eq!(
        by_argument(b"CLIENT", b"\0AINT_NOTIFY_XX"),
        Some(Pin::Client)
    );
}

#[test]
fn auth_and_hello_grammar() {
    assert_eq!(
        auth_args(&words("AUTH pw")),
        Ok((&b"default"[..], &b"pw"[..]))
    );
    assert_eq!(auth_args(&words("AUTH u pw")), Ok((&b"u"[..], &b"pw"[..])));
    assert!(auth_args(&words("AUTH")).is_err());
    assert!(auth_args(&words("AUTH a b c")).is_err());

    let h = hello(&words("HELLO 3 auth u pw SETNAME me")).unwrap();
    assert_eq!(h.login, Some((&b"u"[..], &b"pw"[..])));
    assert_eq!(h.rest, words("HELLO 3 SETNAME me"));
    let h = hello(&words("HELLO 3")).unwrap();
    assert_eq!(h.login, None);
    assert_eq!(h.rest, words("HELLO 3"));
    assert!(hello(&words("HELLO 3 AUTH u")).is_err());
    // AUTH as the version is not the option.
    assert_eq!(hello(&words("HELLO AUTH u p")).unwrap().login, None);
    assert_eq!(hello_version(&words("HELLO 3")), Some(&b"3"[..]));
    assert_eq!(hello_version(&words("HELLO")), None);
}

#[test]
fn learned_flags_override_the_hand_list_and_differences_are_named() {
    let entries: Vec<(&[u8], Vec<&[u8]>)> = vec![
        (b"get", vec![b"readonly", b"fast"]),
        (b"set", vec![b"write", b"denyoom"]),
        (b"xread", vec![b"readonly", b"blocking", b"movablekeys"]),
        (b"eval", vec![b"noscript", b"stale"]),
        (b"eval_ro", vec![b"readonly", b"noscript"]),
        // A server where LPUSH does not write, and a command the list does not know.
        (b"lpush", vec![b"readonly"]),
        (b"hgetex", vec![b"write", b"fast"]),
        // Valkey 8.1 flags WAIT and WAITAOF `blocking`, Redis 7.0 does not: both agree.
        (b"wait", vec![b"blocking"]),
        (b"waitaof", vec![b"noscript"]),
    ];
    let l = Learned::from_entries(entries);
    assert_eq!(l.len(), 9);
    let w = |n: &[u8]| l.writes(lookup(n).unwrap());
    assert!(!w(b"GET"));
    assert!(w(b"SET"));
    assert!(w(b"EVAL"), "a script counts as a write");
    assert!(!w(b"EVAL_RO"));
    assert!(!w(b"LPUSH"), "the server's word");
    assert!(w(b"RPUSH"), "the hand list where the server said nothing");
    assert!(l.flags(b"XREAD").unwrap().blocking);
    let d = l.differences(all());
    assert_eq!(d.writes, vec!["LPUSH".to_string()]);
    assert!(d.blocking.is_empty(), "{:?}", d.blocking);
    assert_eq!(d.unknown, vec!["HGETEX".to_string()]);
}
