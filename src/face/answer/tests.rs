//! The Sentinel face's answers, decoded as a client decodes them.

use super::*;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

fn view(auth: bool) -> View {
    View {
        masters: vec![
            Master {
                name: "mymaster".into(),
                host: "10.0.0.5".into(),
                port: 6379,
                replica: Some(6390),
            },
            Master {
                name: "cache".into(),
                host: "10.0.0.5".into(),
                port: 6380,
                replica: None,
            },
        ],
        auth,
        myid: "a".repeat(40),
    }
}

fn ask(v: &View, c: &mut Conn, words: &[&str]) -> Step {
    let args: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    answer(&args, v, c)
}

/// The reply, decoded (every byte of it is one frame, or several for subscriptions).
fn frames(step: Step) -> Vec<OwnedFrame> {
    let bytes = match step {
        Step::Reply(b) | Step::Close(b) => b,
        Step::Login { .. } => panic!("a login"),
    };
    let mut rest = &bytes[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (frame, used) = decode(rest).unwrap().expect("a whole frame");
        out.push(frame);
        rest = &rest[used..];
    }
    out
}

fn one(step: Step) -> OwnedFrame {
    let mut f = frames(step);
    assert_eq!(f.len(), 1, "{f:?}");
    f.remove(0)
}

fn bulks(words: &[&str]) -> OwnedFrame {
    OwnedFrame::Array(
        words
            .iter()
            .map(|w| OwnedFrame::BulkString(w.as_bytes().to_vec()))
            .collect(),
    )
}

/// A flat map (SENTINEL MASTERS' shape) as pairs.
fn pairs(f: &OwnedFrame) -> Vec<(String, String)> {
    let OwnedFrame::Array(items) = f else {
        panic!("{f:?}")
    };
    let text = |f: &OwnedFrame| match f {
        OwnedFrame::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("{other:?}"),
    };
    items
        .chunks(2)
        .map(|kv| (text(&kv[0]), text(&kv[1])))
        .collect()
}

fn field<'a>(p: &'a [(String, String)], k: &str) -> &'a str {
    &p.iter().find(|(key, _)| key == k).unwrap().1
}

#[test]
fn clients_find_the_proxy_as_the_master() {
    let (v, mut c) = (view(false), Conn::default());
    assert_eq!(
        one(ask(
            &v,
            &mut c,
            &["SENTINEL", "get-master-addr-by-name", "mymaster"]
        )),
        bulks(&["10.0.0.5", "6379"])
    );
    assert_eq!(
        one(ask(
            &v,
            &mut c,
            &["sentinel", "GET-MASTER-ADDR-BY-NAME", "nosuch"]
        )),
        OwnedFrame::Null
    );
    // redis-py's discover_master reads SENTINEL MASTERS: flags, ip, port, num-other-sentinels.
    let OwnedFrame::Array(masters) = one(ask(&v, &mut c, &["SENTINEL", "masters"])) else {
        panic!()
    };
    assert_eq!(masters.len(), 2);
    let m = pairs(&masters[0]);
    assert_eq!(field(&m, "name"), "mymaster");
    assert_eq!(field(&m, "flags"), "master");
    assert_eq!((field(&m, "ip"), field(&m, "port")), ("10.0.0.5", "6379"));
    assert_eq!(field(&m, "num-other-sentinels"), "0");
    assert_eq!(field(&m, "num-slaves"), "1");
    let one_master = pairs(&one(ask(&v, &mut c, &["SENTINEL", "master", "cache"])));
    assert_eq!(field(&one_master, "port"), "6380");
    assert_eq!(
        one(ask(&v, &mut c, &["SENTINEL", "master", "nosuch"])),
        OwnedFrame::Error("ERR No such master with that name".into())
    );
}

#[test]
fn the_read_port_is_the_replica_and_no_other_sentinel_is_named() {
    let (v, mut c) = (view(false), Conn::default());
    let OwnedFrame::Array(r) = one(ask(&v, &mut c, &["SENTINEL", "replicas", "mymaster"])) else {
        panic!()
    };
    let r = pairs(&r[0]);
    assert_eq!((field(&r, "ip"), field(&r, "port")), ("10.0.0.5", "6390"));
    assert_eq!(field(&r, "flags"), "slave");
    assert_eq!(field(&r, "master-link-status"), "ok");
    assert_eq!(
        one(ask(&v, &mut c, &["SENTINEL", "slaves", "cache"])),
        OwnedFrame::Array(vec![])
    );
    assert_eq!(
        one(ask(&v, &mut c, &["SENTINEL", "sentinels", "mymaster"])),
        OwnedFrame::Array(vec![])
    );
    assert_eq!(
        one(ask(&v, &mut c, &["ROLE"])),
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"sentinel".to_vec()),
            bulks(&["mymaster", "cache"])
        ])
    );
    assert_eq!(
        one(ask(&v, &mut c, &["SENTINEL", "myid"])),
        OwnedFrame::BulkString(v.myid.as_bytes().to_vec())
    );
}

#[test]
fn anything_else_gets_sentinels_wording() {
    let (v, mut c) = (view(false), Conn::default());
    assert_eq!(
        one(ask(&v, &mut c, &["GET", "k"])),
        OwnedFrame::Error("ERR unknown command 'GET', with args beginning with: 'k' ".into())
    );
    assert_eq!(
        one(ask(
            &v,
            &mut c,
            &["SENTINEL", "monitor", "x", "1.2.3.4", "6379", "2"]
        )),
        OwnedFrame::Error("ERR unknown subcommand 'monitor'. Try SENTINEL HELP.".into())
    );
    assert_eq!(
        one(ask(&v, &mut c, &["SENTINEL", "master"])),
        OwnedFrame::Error("ERR wrong number of arguments for 'sentinel' command".into())
    );
    assert_eq!(
        one(ask(&v, &mut c, &["PING"])),
        OwnedFrame::SimpleString(b"PONG".to_vec())
    );
    assert_eq!(ask(&v, &mut c, &["QUIT"]), Step::Close(b"+OK\r\n".to_vec()));
}

#[test]
fn hello_speaks_resp2_and_logs_in() {
    let (v, mut c) = (view(false), Conn::default());
    let hello = pairs(&one(ask(&v, &mut c, &["HELLO"])).clone().map_ints());
    assert_eq!(field(&hello, "mode"), "sentinel");
    assert_eq!(field(&hello, "proto"), "2");
    assert!(matches!(
        one(ask(&v, &mut c, &["HELLO", "3"])),
        OwnedFrame::Error(e) if e.starts_with("NOPROTO")
    ));
    // With the proxy's users: nothing but AUTH, HELLO … AUTH and QUIT before logging in.
    let (v, mut c) = (view(true), Conn::default());
    assert_eq!(
        one(ask(&v, &mut c, &["SENTINEL", "masters"])),
        OwnedFrame::Error("NOAUTH Authentication required.".into())
    );
    assert_eq!(
        ask(&v, &mut c, &["AUTH", "app", "secret"]),
        Step::Login {
            user: b"app".to_vec(),
            password: b"secret".to_vec(),
            then: b"+OK\r\n".to_vec()
        }
    );
    assert!(matches!(
        ask(&v, &mut c, &["HELLO", "2", "AUTH", "app", "secret", "SETNAME", "n"]),
        Step::Login { then, .. } if then.starts_with(b"*14\r\n")
    ));
    c.authed = true;
    assert!(matches!(
        one(ask(&v, &mut c, &["SENTINEL", "masters"])),
        OwnedFrame::Array(_)
    ));
    // Without users, AUTH is refused as Sentinel refuses it without a password.
    let (v, mut c) = (view(false), Conn::default());
    assert!(matches!(
        one(ask(&v, &mut c, &["AUTH", "x"])),
        OwnedFrame::Error(e) if e.contains("without any password configured")
    ));
}

#[test]
fn subscriptions_are_confirmed_and_messages_reach_their_subscribers() {
    let (v, mut c) = (view(false), Conn::default());
    let confirmations = frames(ask(&v, &mut c, &["SUBSCRIBE", "+switch-master", "+sdown"]));
    assert_eq!(confirmations.len(), 2);
    assert_eq!(
        confirmations[1],
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"subscribe".to_vec()),
            OwnedFrame::BulkString(b"+sdown".to_vec()),
            OwnedFrame::Integer(2)
        ])
    );
    let _ = frames(ask(&v, &mut c, &["PSUBSCRIBE", "+switch-*"]));
    assert!(c.hears(b"+switch-master") && c.hears(b"+sdown") && !c.hears(b"+odown"));
    assert!(matches!(
        one(ask(&v, &mut c, &["SENTINEL", "masters"])),
        OwnedFrame::Error(e) if e.starts_with("ERR Can't execute 'sentinel'")
    ));
    assert_eq!(
        one(ask(&v, &mut c, &["PING"])),
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"pong".to_vec()),
            OwnedFrame::BulkString(vec![])
        ])
    );
    assert_eq!(frames(ask(&v, &mut c, &["UNSUBSCRIBE"])).len(), 2);
    assert_eq!(frames(ask(&v, &mut c, &["PUNSUBSCRIBE"])).len(), 1);
    assert!(!c.subscribed());
    let m = message(b"+switch-master", None, b"mymaster 1.1.1.1 1 2.2.2.2 2");
    assert_eq!(
        decode(&m).unwrap().unwrap().0,
        bulks(&["message", "+switch-master", "mymaster 1.1.1.1 1 2.2.2.2 2"])
    );
}

#[test]
fn globs_match_as_redis_does() {
    for (p, s, hit) in [
        ("*", "anything", true),
        ("+switch-*", "+switch-master", true),
        ("+s?own", "+sdown", true),
        ("+[so]down", "+odown", true),
        ("+[^s]down", "+sdown", false),
        ("[a-c]x", "bx", true),
        ("\\*", "*", true),
        ("\\*", "a", false),
        ("a", "ab", false),
    ] {
        assert_eq!(glob(p.as_bytes(), s.as_bytes()), hit, "{p} {s}");
    }
}

/// Integers as bulk strings, so a HELLO map reads as pairs of text.
trait MapInts {
    fn map_ints(self) -> OwnedFrame;
}

impl MapInts for OwnedFrame {
    fn map_ints(self) -> OwnedFrame {
        match self {
            OwnedFrame::Array(items) => OwnedFrame::Array(
                items
                    .into_iter()
                    .map(|f| match f {
                        OwnedFrame::Integer(i) => {
                            OwnedFrame::BulkString(i.to_string().into_bytes())
                        }
                        OwnedFrame::Array(a) if a.is_empty() => OwnedFrame::BulkString(vec![]),
                        f => f,
                    })
                    .collect(),
            ),
            f => f,
        }
    }
}
