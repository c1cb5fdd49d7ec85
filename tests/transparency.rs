//! The proxy is invisible to clients: what Redis's own test suite caught (scripts/redis-suite),
//! each as a behaviour of its own, against a real lab.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read until `done` says the bytes so far are complete, or the peer closes, or 5 s pass.
async fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if done(&out) {
                    return (out, false);
                }
            }
            Err(_) => return (out, false),
        }
    }
}

/// Redis's suite sends `XREADGROUP … BLOCK 0` on one connection and, right after, `DEL` of the
/// stream on another, expecting the blocked client to be told the stream is gone. That holds
/// only if the proxy forwards requests in the order they reached it. (A work-stealing runtime ran
/// the second connection's task first.) The client is one OS thread with blocking sockets and
/// leaves 200 µs between the two writes, like the suite's Tcl client: with no gap even Redis
/// itself, directly, serves the second connection first now and then (seen here: in 8 runs of 8
/// with no gap, 2 of 4 at 50 µs, none of 4 × 300 rounds at 200 µs, the same as through the proxy).
/// At 200 µs the previous runtime failed 2 runs of 3, within its first 15 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_two_connections_reach_redis_in_arrival_order() {
    let lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;
    let port = proxy.port;
    tokio::task::spawn_blocking(move || arrival_order_rounds(port, 300))
        .await
        .unwrap();
}

fn arrival_order_rounds(port: u16, rounds: usize) {
    use std::io::{Read, Write};
    let connect = || {
        let s = std::net::TcpStream::connect(addr(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    // One reply line (all replies here are one line or a one-line bulk).
    let read_line = |s: &mut std::net::TcpStream| {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while !out.ends_with(b"\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            out.push(b[0]);
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut r = connect();
    for round in 0..rounds {
        // Like the suite's deferring client: a connection already in use (its backend open).
        let mut rd = connect();
        rd.write_all(b"PING\r\n").unwrap();
        assert_eq!(read_line(&mut rd), "+PONG\r\n");
        r.write_all(b"DEL s\r\nXADD s 666 f v\r\nXGROUP CREATE s g $\r\n")
            .unwrap();
        let del = read_line(&mut r);
        assert!(del.starts_with(':'), "{del}");
        assert_eq!(read_line(&mut r), "$5\r\n");
        assert_eq!(read_line(&mut r), "666-0\r\n");
        assert_eq!(read_line(&mut r), "+OK\r\n");
        rd.write_all(b"XREADGROUP GROUP g alice BLOCK 0 STREAMS s >\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_micros(200));
        r.write_all(b"DEL s\r\n").unwrap();
        let reply = read_line(&mut rd);
        assert!(
            reply.contains("no longer exists"),
            "round {round}: the DEL overtook the XREADGROUP: {reply:?}"
        );
        assert_eq!(read_line(&mut r), ":1\r\n");
    }
}

/// QUIT: `+OK`, then the connection closes, and nothing pipelined after it runs. (The proxy
/// used to open a new backend connection and answer the next command.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_closes_the_client_connection() {
    let lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    let master = proxy.wait_ready().await;
    let mut c = TcpStream::connect(addr(proxy.port)).await.unwrap();
    c.write_all(b"PING\r\nQUIT\r\n").await.unwrap();
    let (got, closed) = read_until(&mut c, |_| false).await;
    assert_eq!((got.as_slice(), closed), (&b"+PONG\r\n+OK\r\n"[..], true));

    let mut c = TcpStream::connect(addr(proxy.port)).await.unwrap();
    c.write_all(b"QUIT\r\nSET after-quit 1\r\n").await.unwrap();
    let (got, closed) = read_until(&mut c, |_| false).await;
    assert_eq!((got.as_slice(), closed), (&b"+OK\r\n"[..], true));
    let mut direct = conn(master).await.unwrap();
    assert_eq!(
        cmd(&mut direct, &["EXISTS", "after-quit"]).await.unwrap(),
        OwnedFrame::Integer(0)
    );

    // A subscriber's QUIT (RESP2 allows it in subscribed mode): its +OK, then the close.
    let mut c = TcpStream::connect(addr(proxy.port)).await.unwrap();
    c.write_all(b"SUBSCRIBE news\r\n").await.unwrap();
    read_until(&mut c, |b| b.ends_with(b":1\r\n")).await;
    cmd(&mut direct, &["PUBLISH", "news", "hello"])
        .await
        .unwrap();
    read_until(&mut c, |b| b.ends_with(b"hello\r\n")).await;
    c.write_all(b"QUIT\r\n").await.unwrap();
    let (got, closed) = read_until(&mut c, |_| false).await;
    assert_eq!((got.as_slice(), closed), (&b"+OK\r\n"[..], true));
    let quits = "sentinel_proxy_sessions_closed_total{reason=\"quit\"}";
    wait_metric(proxy.admin, quits, 3.0, Duration::from_secs(5)).await;
}

/// A reply nested thousands deep (a Lua table that contains itself) is followed exactly: the
/// client gets the same bytes as directly, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_nested_thousands_deep_passes_unchanged() {
    let lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    let master = proxy.wait_ready().await;
    let body = "local a = {}; local b = {a}; a[1] = b; return a";
    let script = format!(
        "*3\r\n$4\r\nEVAL\r\n${}\r\n{body}\r\n$1\r\n0\r\n",
        body.len()
    );
    let mut replies = Vec::new();
    for port in [master, proxy.port] {
        let mut c = TcpStream::connect(addr(port)).await.unwrap();
        c.write_all(script.as_bytes()).await.unwrap();
        c.write_all(b"PING\r\n").await.unwrap();
        let (got, closed) = read_until(&mut c, |b| b.ends_with(b"+PONG\r\n")).await;
        assert!(!closed, "connection closed after {} bytes", got.len());
        replies.push(got);
    }
    assert!(replies[0].starts_with(&b"*1\r\n".repeat(1000)));
    assert!(replies[0].ends_with(b"-ERR reached lua stack limit\r\n+PONG\r\n"));
    assert_eq!(replies[1], replies[0], "through the proxy as directly");
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_pipe_sessions_total{reason=\"untracked_reply\"}"
        ),
        None,
        "followed, not given up on"
    );
}

/// `SYNC`/`PSYNC` make the session a byte pipe: `redis-cli --rdb` gets the whole RDB and
/// `redis-cli --replica` the replication stream, through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_clients_work_through_the_proxy() {
    let lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    let master = proxy.wait_ready().await;
    let mut direct = conn(master).await.unwrap();
    cmd(&mut direct, &["SET", "in-the-rdb", "yes"])
        .await
        .unwrap();

    let rdb = lab.dir.path().join("backup.rdb");
    let port = proxy.port.to_string();
    let out = tokio::task::spawn_blocking({
        let rdb = rdb.clone();
        move || {
            Command::new("redis-cli")
                .args(["-p", &port, "--rdb"])
                .arg(&rdb)
                .output()
                .expect("run redis-cli")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "redis-cli --rdb: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&rdb).unwrap();
    assert!(bytes.starts_with(b"REDIS"), "an RDB file");
    assert!(
        bytes.windows(10).any(|w| w == b"in-the-rdb"),
        "with the key in it"
    );

    let mut replica = Command::new("redis-cli")
        .args(["-p", &proxy.port.to_string(), "--replica"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run redis-cli --replica");
    let stdout = replica.stdout.take().unwrap();
    // Its output is read to the end (a closed pipe would kill it): the lines come through
    // `lines`.
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    // Write until the replica shows it (it attaches after its RDB transfer).
    let mut c = conn(proxy.port).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|l: &String| l.contains("streamed-key")) {
        assert!(
            Instant::now() < deadline,
            "the write never reached the replica"
        );
        cmd(&mut c, &["SET", "streamed-key", "v"]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen.extend(lines.try_iter());
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("\"SET\",\"streamed-key\"")
                || l.contains("\"set\",\"streamed-key\"")),
        "{seen:?}"
    );
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_pipe_sessions_total{reason=\"replication\"}"
        ),
        Some(2.0),
        "{text}"
    );

    // A pipe has no request boundaries: it is never moved, but closed at the switch.
    lab.failover().await;
    let new = lab.wait_new_master(master, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(30)).await;
    let closed = "sentinel_proxy_sessions_closed_total{reason=\"switch_pipe\"}";
    wait_metric(proxy.admin, closed, 1.0, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "redis-cli --replica saw no close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RESET clears what the proxy would replay on a new master: after it, a failover moves the
/// session (CLIENT TRACKING alone would have made it unmovable) to db 0, with no name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_clears_the_state_a_migration_replays() {
    let lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    let old = proxy.wait_ready().await;
    let mut c = conn(proxy.port).await.unwrap();
    for args in [
        &["SELECT", "3"][..],
        &["CLIENT", "SETNAME", "before-reset"],
        &["CLIENT", "TRACKING", "on"],
    ] {
        cmd(&mut c, args).await.unwrap();
    }
    assert_eq!(
        cmd(&mut c, &["RESET"]).await.unwrap(),
        OwnedFrame::SimpleString(b"RESET".to_vec())
    );
    cmd(&mut c, &["SET", "after-reset", "db0"]).await.unwrap();
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(30)).await;
    // The same connection, now on the new master.
    assert_eq!(node_port(&mut c).await.unwrap(), new);
    assert_eq!(
        cmd(&mut c, &["GET", "after-reset"]).await.unwrap(),
        OwnedFrame::BulkString(b"db0".to_vec()),
        "in db 0"
    );
    assert_eq!(
        cmd(&mut c, &["CLIENT", "GETNAME"]).await.unwrap(),
        OwnedFrame::Null
    );
}

/// A connection Redis closes on purpose (`CLIENT KILL`) while the master is up closes the
/// client's connection too, as directly; it is not silently reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_by_redis_sees_its_connection_close() {
    let lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;
    let mut victim = TcpStream::connect(addr(proxy.port)).await.unwrap();
    victim.write_all(b"CLIENT ID\r\n").await.unwrap();
    let (id, _) = read_until(&mut victim, |b| b.ends_with(b"\r\n")).await;
    let id = String::from_utf8_lossy(&id[1..id.len() - 2]).to_string();
    let mut killer = conn(proxy.port).await.unwrap();
    assert_eq!(
        cmd(&mut killer, &["CLIENT", "KILL", "ID", &id])
            .await
            .unwrap(),
        OwnedFrame::Integer(1)
    );
    let (got, closed) = read_until(&mut victim, |_| false).await;
    assert_eq!((got.as_slice(), closed), (&b""[..], true));
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_session_migrations_total{result=\"ok\"}"
        ),
        None,
        "not moved to the same master"
    );
}

/// A reply the tracker cannot follow (only a fake master sends one) makes the session a byte
/// pipe: the client gets the bytes as sent and the connection goes on, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrackable_reply_makes_a_byte_pipe_not_a_close() {
    use support::fake_master::{FakeMaster, NOT_RESP};
    use support::fake_sentinel::{Behaviour, FakeSentinel};
    let master = FakeMaster::start().await;
    let sentinel = FakeSentinel::start(Behaviour::NamesMaster(hp(master.addr.port()))).await;
    let proxy = Proxy::start(vec![sentinel.host_port()]).await;
    assert_eq!(proxy.wait_ready().await, master.addr.port());
    let mut c = TcpStream::connect(addr(proxy.port)).await.unwrap();
    c.write_all(b"*1\r\n$7\r\nGARBAGE\r\n").await.unwrap();
    let (got, closed) = read_until(&mut c, |b| b.ends_with(b"%%%\r\n")).await;
    assert_eq!((got.as_slice(), closed), (NOT_RESP, false));
    c.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    let (got, closed) = read_until(&mut c, |b| b.ends_with(b"\r\n")).await;
    assert_eq!((got.as_slice(), closed), (&b"+PONG\r\n"[..], false));
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_pipe_sessions_total{reason=\"untracked_reply\"}"
        ),
        Some(1.0),
        "{text}"
    );
}
