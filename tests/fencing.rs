//! Fencing and draining across real failovers: no acknowledged write is lost, a reply in flight
//! is never cut, sessions move to the new master with their state (subscribers and blocked clients
//! too), malformed input is refused like Redis refuses it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use support::writer::{Ledger, patient, writer};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ok() -> OwnedFrame {
    OwnedFrame::SimpleString(b"OK".to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_across_failovers_and_a_crash() {
    let mut lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.connect_wait = Duration::from_secs(20);
    })
    .await;
    proxy.wait_ready().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let long = Arc::new(Mutex::new(Ledger::default()));
    let short = Arc::new(Mutex::new(Ledger::default()));
    let w1 = writer(proxy.port, "long", 250, true, long.clone(), stop.clone());
    let w2 = writer(proxy.port, "short", 250, false, short.clone(), stop.clone());
    let started = Instant::now();

    let mut master = lab.master_port().await.unwrap();
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_millis(300)).await; // some writes before each switch
        let t = lab.failover().await;
        eprintln!(
            "failover {round} requested at {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let new = lab.wait_new_master(master, Duration::from_secs(30)).await;
        proxy.wait_routes_to(new, Duration::from_secs(10)).await;
        eprintln!(
            "failover {round}: {master} -> {new} (routed {:.0} ms after SENTINEL FAILOVER)",
            t.elapsed().as_secs_f64() * 1000.0
        );
        master = new;
        lab.wait_settled(Duration::from_secs(60)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    lab.proc_by_port(master).kill();
    eprintln!(
        "kill -9 of {master} at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let new = lab.wait_new_master(master, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(10)).await;
    master = new;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    w1.await.unwrap();
    w2.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    let mut c = conn(master).await.unwrap();
    for (name, ledger) in [("long-lived", &long), ("per-write", &short)] {
        let (acked, attempts, errors, slowest, error_times) = {
            let l = ledger.lock().unwrap();
            eprintln!("{name} writer errors: {:?}", l.error_texts);
            (
                l.acked.clone(),
                l.attempts,
                l.errors,
                l.slowest,
                l.error_times.clone(),
            )
        };
        let mut lost = Vec::new();
        for (k, v) in &acked {
            let got = cmd(&mut c, &["GET", k]).await.unwrap();
            if got != OwnedFrame::BulkString(v.as_bytes().to_vec()) {
                lost.push(k.clone());
            }
        }
        eprintln!(
            "{name} writer: {} attempts in {elapsed:.1} s ({:.0}/s), {} acked, {} errors, {} acked writes lost, slowest write {slowest:?}",
            attempts,
            attempts as f64 / elapsed,
            acked.len(),
            errors,
            lost.len()
        );
        assert!(
            acked.len() as f64 >= 200.0 * elapsed * 0.8,
            "{name} wrote too slowly"
        );
        // A planned failover costs no error (sessions move). The crash may cost the writes that
        // were in flight on the dying master (sent before its sockets were gone): errors are
        // allowed only at that moment.
        let crash = (killed_at - Duration::from_millis(500))..(killed_at + Duration::from_secs(1));
        for t in &error_times {
            assert!(
                crash.contains(t),
                "{name}: a write failed {:+.3} s from the kill -9, outside the crash itself",
                if *t >= killed_at {
                    (*t - killed_at).as_secs_f64()
                } else {
                    -(killed_at - *t).as_secs_f64()
                }
            );
        }
        assert!(errors <= 3, "{name}: {errors} errors at the crash");
        // Held requests are released promptly: the slowest write is the crash's outage.
        assert!(
            slowest < Duration::from_secs(10),
            "{name}: a write took {slowest:?}"
        );
        assert!(
            lost.is_empty(),
            "{name}: acknowledged writes lost: {lost:?}"
        );
    }
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    for line in text.lines().filter(|l| {
        l.starts_with("sentinel_proxy_held_requests_total")
            || l.starts_with("sentinel_proxy_session_migrations_total")
            || l.starts_with("sentinel_proxy_failover_pauses_total")
            || l.starts_with("sentinel_proxy_sessions_closed_total")
            || l.starts_with("sentinel_proxy_master_switches_total")
    }) {
        eprintln!("  {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_in_flight_is_finished_before_the_session_moves() {
    // DEBUG SLEEP blocks the master: down-after must be longer than the sleep.
    let lab = Lab::start_with(LabOptions {
        down_after_ms: 5000,
        ..Default::default()
    })
    .await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;
    // A call timeout longer than the sleep.
    let mut c = patient(proxy.port).await.unwrap();
    assert_eq!(node_port(&mut c).await.unwrap(), old);
    c.send(&[b"DEBUG", b"SLEEP", b"1.5"]).await.unwrap();
    let sent = Instant::now();
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(5)).await;
    let switched_at = sent.elapsed();
    let reply = c.read_frame().await.unwrap();
    let replied_at = sent.elapsed();
    assert_eq!(reply, ok(), "the in-flight reply arrived whole");
    assert!(
        switched_at < replied_at,
        "the switch ({switched_at:?}) happened while the reply was in flight ({replied_at:?})"
    );
    // The same connection now reaches the new master.
    assert_eq!(node_port(&mut c).await.unwrap(), new);
    eprintln!(
        "switched {switched_at:?} after DEBUG SLEEP was sent; its reply came at {replied_at:?}; then moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_with_their_database_and_name() {
    let lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;
    let mut c = patient(proxy.port).await.unwrap();
    assert_eq!(cmd(&mut c, &["SELECT", "3"]).await.unwrap(), ok());
    assert_eq!(
        cmd(&mut c, &["CLIENT", "SETNAME", "app-7"]).await.unwrap(),
        ok()
    );
    assert_eq!(cmd(&mut c, &["SET", "before", "1"]).await.unwrap(), ok());
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(5)).await;
    assert_eq!(cmd(&mut c, &["SET", "after", "2"]).await.unwrap(), ok());
    assert_eq!(
        node_port(&mut c).await.unwrap(),
        new,
        "same connection, new master"
    );
    assert_eq!(
        cmd(&mut c, &["CLIENT", "GETNAME"]).await.unwrap(),
        OwnedFrame::BulkString(b"app-7".to_vec())
    );
    let mut direct = conn(new).await.unwrap();
    cmd(&mut direct, &["SELECT", "3"]).await.unwrap();
    assert_eq!(
        cmd(&mut direct, &["GET", "after"]).await.unwrap(),
        OwnedFrame::BulkString(b"2".to_vec()),
        "the write went to database 3 of the new master"
    );
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    if proxy.group.config().pool == 0 {
        assert!(
            metric(
                &text,
                "sentinel_proxy_session_migrations_total{result=\"ok\"}"
            )
            .unwrap()
                >= 1.0,
            "{text}"
        );
    } else {
        // Pooled mode: the database and the name are the client's own in the pool (its pool's
        // connections reopen on the new master in database 3; the proxy answers for the name),
        // so the client is never pinned and there is no session to move.
        assert!(
            !text.contains("sentinel_proxy_pinned_sessions_total{"),
            "{text}"
        );
    }
}

/// One RESP3 frame from a raw connection.
async fn frame3(
    s: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
) -> redis_protocol::resp3::types::OwnedFrame {
    use bytes::Buf;
    loop {
        if let Some((f, n)) = redis_protocol::resp3::decode::complete::decode(buf).unwrap() {
            buf.advance(n);
            return f;
        }
        assert!(s.read_buf(buf).await.unwrap() > 0, "connection closed");
    }
}

/// The replay is faithful: a RESP3 session (HELLO 3) moves with its database and name, and the
/// state commands that failed when the client sent them (CLIENT SETINFO, which Redis 7.0 does not
/// have; SELECT of a database that does not exist) are not replayed, so the move does not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_session_moves_and_failed_state_commands_are_not_replayed() {
    use redis_protocol::resp3::types::OwnedFrame as F3;
    let lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;
    let mut s = tokio::net::TcpStream::connect(addr(proxy.port))
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut setinfo_failed = false;
    for (args, want_ok) in [
        (&["HELLO", "3"][..], true),
        (&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"], false),
        (&["SELECT", "2"], true),
        (&["CLIENT", "SETNAME", "resp3app"], true),
        (&["SELECT", "99"], false),
    ] {
        s.write_all(&multibulk(args)).await.unwrap();
        let f = frame3(&mut s, &mut buf).await;
        let failed = matches!(f, F3::SimpleError { .. } | F3::BlobError { .. });
        if args[1] == "SETINFO" {
            setinfo_failed = failed; // Redis 7.0 has no CLIENT SETINFO; 7.2 does
        } else {
            assert_eq!(!failed, want_ok, "{args:?}: {f:?}");
        }
    }
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(5)).await;
    s.write_all(&multibulk(&["SET", "resp3-after", "1"]))
        .await
        .unwrap();
    assert!(matches!(
        frame3(&mut s, &mut buf).await,
        F3::SimpleString { .. }
    ));
    // Still RESP3 (a map, not an array), still named, on the new master's database 2.
    s.write_all(&multibulk(&["HGETALL", "no-such-hash"]))
        .await
        .unwrap();
    assert!(matches!(frame3(&mut s, &mut buf).await, F3::Map { .. }));
    s.write_all(&multibulk(&["CLIENT", "GETNAME"]))
        .await
        .unwrap();
    match frame3(&mut s, &mut buf).await {
        F3::BlobString { data, .. } => assert_eq!(data, b"resp3app"),
        f => panic!("{f:?}"),
    }
    let mut direct = conn(new).await.unwrap();
    cmd(&mut direct, &["SELECT", "2"]).await.unwrap();
    assert_eq!(
        cmd(&mut direct, &["GET", "resp3-after"]).await.unwrap(),
        OwnedFrame::BulkString(b"1".to_vec())
    );
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_session_migrations_total{result=\"failed\"}"
        ),
        None,
        "setinfo failed: {setinfo_failed}; {text}"
    );
}

/// Subscribers and blocked clients are carried to the new master; a session whose
/// state cannot be carried (here an open MULTI with an inline command the proxy could not capture)
/// is still closed, counted by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_and_blocking_clients_ride_through_the_switch() {
    let lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;
    let mut sub = conn(proxy.port).await.unwrap();
    cmd(&mut sub, &["SUBSCRIBE", "news"]).await.unwrap();
    let mut blocked = conn(proxy.port).await.unwrap();
    blocked.send(&[b"BLPOP", b"queue", b"0"]).await.unwrap();
    let mut idle = conn(proxy.port).await.unwrap();
    assert_eq!(node_port(&mut idle).await.unwrap(), old);
    let mut txn = tokio::net::TcpStream::connect(addr(proxy.port))
        .await
        .unwrap();
    txn.write_all(b"MULTI\r\nSET a 1\r\n").await.unwrap();
    let mut got = [0u8; 14];
    txn.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"+OK\r\n+QUEUED\r\n");
    // Both are blocked on the old master before it is replaced.
    eventually(Duration::from_secs(5), "the BLPOP is blocked", || async {
        let mut c = conn(old).await.ok()?;
        let info = cmd(&mut c, &["INFO", "clients"]).await.ok()?;
        let text = match info {
            OwnedFrame::BulkString(b) => String::from_utf8(b).ok()?,
            _ => return None,
        };
        text.contains("blocked_clients:1").then_some(())
    })
    .await;

    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(5)).await;
    // The idle one was moved.
    assert_eq!(node_port(&mut idle).await.unwrap(), new);
    wait_metric(
        proxy.admin,
        "sentinel_proxy_session_moves_total{kind=\"pubsub\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    wait_metric(
        proxy.admin,
        "sentinel_proxy_session_moves_total{kind=\"blocking\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    // The subscriber hears what is published on the new master, the BLPOP gets what is pushed
    // there, each exactly once and on the socket they had.
    moved_subscriber_and_blocked_hear_the_new_master(proxy.port, &mut sub, &mut blocked).await;
    // The transaction with an inline command could not be carried: closed, counted.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), txn.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "{closed:?}");
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_sessions_closed_total{reason=\"switch_transaction\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

/// Raw bytes in, raw bytes out: what a client that speaks bad RESP gets.
async fn raw_exchange(port: u16, send: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(send).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_redis_errors_and_a_close() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.max_request_bytes = 1024 * 1024;
    })
    .await;
    let master = proxy.wait_ready().await;
    let mut bystander = conn(proxy.port).await.unwrap();
    assert_eq!(cmd(&mut bystander, &["SET", "x", "1"]).await.unwrap(), ok());

    assert_eq!(
        raw_exchange(proxy.port, b"*1\r\nfoo\r\n").await,
        b"-ERR Protocol error: expected '$', got 'f'\r\n"
    );
    assert_eq!(
        raw_exchange(proxy.port, b"PING\r\n*x\r\n").await,
        b"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n",
        "valid requests before the error are answered first"
    );
    assert_eq!(
        raw_exchange(proxy.port, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n").await,
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    // Redis itself says the same for the first case.
    assert_eq!(
        raw_exchange(master, b"*1\r\nfoo\r\n").await,
        b"-ERR Protocol error: expected '$', got 'f'\r\n"
    );
    assert_eq!(
        cmd(&mut bystander, &["GET", "x"]).await.unwrap(),
        OwnedFrame::BulkString(b"1".to_vec())
    );
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(&text, "sentinel_proxy_client_protocol_errors_total"),
        Some(3.0),
        "{text}"
    );
}

/// A `-READONLY` reply from the routed master (demoted behind Sentinel's back, e.g. a partition)
/// makes the proxy re-check at once instead of at the next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readonly_reply_triggers_an_immediate_recheck() {
    let lab = Lab::start().await;
    let master = lab.master_port().await.unwrap();
    let replica = lab.replicas_of(master)[0];
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.poll_interval = Duration::from_secs(120); // only the reply can trigger the check
    })
    .await;
    assert_eq!(proxy.wait_ready().await, master);
    let mut c = conn(proxy.port).await.unwrap();
    assert_eq!(cmd(&mut c, &["SET", "k", "1"]).await.unwrap(), ok());

    // Demote the master directly, without Sentinel.
    let mut direct = conn(master).await.unwrap();
    cmd(
        &mut direct,
        &["REPLICAOF", "127.0.0.1", &replica.to_string()],
    )
    .await
    .unwrap();
    let err = cmd(&mut c, &["SET", "k", "2"]).await.unwrap_err();
    assert!(err.to_string().contains("READONLY"), "{err}");
    eventually(
        Duration::from_secs(3),
        "the proxy to stop routing to the demoted node",
        || async { (proxy.group.route.load().master != Some(addr(master))).then_some(()) },
    )
    .await;
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(&text, "sentinel_proxy_not_master_replies_total"),
        Some(1.0),
        "{text}"
    );
}
