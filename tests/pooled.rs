//! Pooled mode (`--pool`): many clients on a few shared master connections, each getting exactly
//! its own replies; clients pinned to a connection of their own by the commands that need one,
//! and counted; transactions and blocking calls lent a connection for their span and back in the
//! pool after it (unless they made it their own); a shared connection lost with requests in
//! flight closes exactly the clients that were owed replies.

mod support;

use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bulk(s: &str) -> OwnedFrame {
    OwnedFrame::BulkString(s.as_bytes().to_vec())
}

/// The proxy's shared connections on the master (named `sentinel-proxy-pool`), by `CLIENT LIST`.
async fn connections_on(master: u16) -> (usize, String) {
    let mut c = conn(master).await.unwrap();
    match cmd(&mut c, &["CLIENT", "LIST", "TYPE", "normal"])
        .await
        .unwrap()
    {
        OwnedFrame::BulkString(b) => {
            let list = String::from_utf8_lossy(&b).into_owned();
            let n = list
                .lines()
                .filter(|l| l.contains(" name=sentinel-proxy-pool "))
                .count();
            (n, list)
        }
        other => panic!("CLIENT LIST: {other:?}"),
    }
}

/// Forty clients pipeline SETs and GETs of values from 1 byte to 1 MiB at once through a pool of
/// one connection per thread: every client reads back exactly its own values, in order, and the
/// master sees no more connections than threads × pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_a_few_connections_and_get_their_own_replies() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 1;
        c.threads = 2;
    })
    .await;
    let master = proxy.wait_ready().await;
    let mut tasks = Vec::new();
    for client in 0..40usize {
        let port = proxy.port;
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr(port)).await.unwrap();
            for round in 0..5usize {
                // One pipeline: SET k v, GET k for several keys, sizes varying per client.
                let mut out = Vec::new();
                let mut expected = Vec::new();
                for j in 0..8usize {
                    let size = match (client + j + round) % 4 {
                        0 => 1,
                        1 => 100,
                        2 => 20_000,
                        _ => 1 << 20,
                    };
                    let key = format!("c{client}:r{round}:k{j}");
                    let val: Vec<u8> = (0..size)
                        .map(|i| b'a' + ((i + client) % 26) as u8)
                        .collect();
                    out.extend(multibulk(&[&b"SET"[..], key.as_bytes(), &val]));
                    out.extend(multibulk(&[&b"GET"[..], key.as_bytes()]));
                    expected.extend_from_slice(b"+OK\r\n");
                    expected.extend(format!("${}\r\n", val.len()).into_bytes());
                    expected.extend_from_slice(&val);
                    expected.extend_from_slice(b"\r\n");
                }
                let (mut r, mut w) = s.split();
                let write = async { w.write_all(&out).await.unwrap() };
                let read = async {
                    let mut got = vec![0u8; expected.len()];
                    r.read_exact(&mut got).await.unwrap();
                    got
                };
                let ((), got) = tokio::join!(write, read);
                assert!(
                    got == expected,
                    "client {client} round {round}: replies not its own"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (on_master, list) = connections_on(master).await;
    assert!(
        (1..=2).contains(&on_master),
        "{on_master} proxy connections on the master (2 threads × pool 1):\n{list}"
    );
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_pinned_sessions_total{reason=\"unknown\"}"
        ),
        None
    );
}

/// Each kind of connection-bound command pins its client, which then behaves exactly as on a
/// connection of its own, and the pin is counted by reason. Requests sent before the pinning one
/// are answered first, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_pin_their_client_and_are_counted() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 2;
    })
    .await;
    proxy.wait_ready().await;
    let ok = OwnedFrame::SimpleString(b"OK".to_vec());

    // SELECT 2: the value lands in db 2 and stays there for this client only.
    let mut a = conn(proxy.port).await.unwrap();
    assert_eq!(cmd(&mut a, &["SET", "pin:k", "db0"]).await.unwrap(), ok);
    assert_eq!(cmd(&mut a, &["SELECT", "2"]).await.unwrap(), ok);
    assert_eq!(cmd(&mut a, &["SET", "pin:k", "db2"]).await.unwrap(), ok);
    assert_eq!(cmd(&mut a, &["GET", "pin:k"]).await.unwrap(), bulk("db2"));
    let mut b = conn(proxy.port).await.unwrap();
    assert_eq!(cmd(&mut b, &["GET", "pin:k"]).await.unwrap(), bulk("db0"));
    // SELECT 0 does not pin.
    assert_eq!(cmd(&mut b, &["SELECT", "0"]).await.unwrap(), ok);

    // MULTI pipelined right after plain requests: the replies come in order.
    let mut s = TcpStream::connect(addr(proxy.port)).await.unwrap();
    let mut out = multibulk(&["SET", "pin:t", "1"]);
    out.extend(multibulk(&["INCR", "pin:t"]));
    out.extend(multibulk(&["MULTI"]));
    out.extend(multibulk(&["INCR", "pin:t"]));
    out.extend(multibulk(&["EXEC"]));
    s.write_all(&out).await.unwrap();
    let want = b"+OK\r\n:2\r\n+OK\r\n+QUEUED\r\n*1\r\n:3\r\n";
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));

    // CLIENT ID answers for the client's own connection, and stays the same.
    let mut c = conn(proxy.port).await.unwrap();
    let id1 = cmd(&mut c, &["CLIENT", "ID"]).await.unwrap();
    assert_eq!(cmd(&mut c, &["CLIENT", "ID"]).await.unwrap(), id1);

    // A blocking pop waits on its own connection while others go on through the pool.
    let mut blocked = TcpStream::connect(addr(proxy.port)).await.unwrap();
    blocked
        .write_all(&multibulk(&["BLPOP", "pin:list", "5"]))
        .await
        .unwrap();
    let mut d = conn(proxy.port).await.unwrap();
    eventually(Duration::from_secs(5), "the pop to block", || async {
        let mut m = conn(lab.master_port().await?).await.ok()?;
        let info = cmd(&mut m, &["INFO", "clients"]).await.ok()?;
        let OwnedFrame::BulkString(b) = info else {
            return None;
        };
        String::from_utf8_lossy(&b)
            .contains("blocked_clients:1")
            .then_some(())
    })
    .await;
    assert_eq!(
        cmd(&mut d, &["RPUSH", "pin:list", "x"]).await.unwrap(),
        OwnedFrame::Integer(1)
    );
    let want = b"*2\r\n$8\r\npin:list\r\n$1\r\nx\r\n";
    let mut got = vec![0u8; want.len()];
    blocked.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, want);

    // An inline command pins (telnet users), and gets its answer.
    let mut t = TcpStream::connect(addr(proxy.port)).await.unwrap();
    t.write_all(b"PING\r\n").await.unwrap();
    let mut got = [0u8; 7];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"+PONG\r\n");

    let (_, text) = http_get(proxy.admin, "/metrics").await;
    for (reason, n) in [("client", 1.0), ("inline", 1.0)] {
        let series = format!("sentinel_proxy_pinned_sessions_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), Some(n), "{series}\n{text}");
    }
    // The transaction arrived whole and went on the shared connection; the pop and SELECT 2
    // only borrowed a connection for their answer (the SELECT's client went on in db 2's pool).
    for reason in ["transaction", "blocking", "select"] {
        let pinned = format!("sentinel_proxy_pinned_sessions_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &pinned), None, "{pinned}\n{text}");
    }
    for reason in ["blocking", "select"] {
        let lent = format!(
            "sentinel_proxy_borrow_seconds_count{{outcome=\"returned\",reason=\"{reason}\"}}"
        );
        assert!(metric(&text, &lent).unwrap_or(0.0) >= 1.0, "{lent}\n{text}");
    }
    if let Some(complaints) = promtool_check(&text) {
        assert_eq!(complaints, "", "promtool check metrics");
    }
}

/// The master dies while one client's request is in flight on a shared connection and another
/// client of the same connection is idle: the first sees its connection close (the outcome of its
/// request is unknown), the second never sees an error and is served by the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_fails_exactly_the_clients_it_owed_replies() {
    let mut lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 1;
        c.threads = 1;
        c.connect_wait = Duration::from_secs(30);
    })
    .await;
    let old = proxy.wait_ready().await;
    let mut idle = writer_conn(proxy.port).await;
    assert_eq!(
        cmd(&mut idle, &["SET", "lost:idle", "1"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    let mut busy = TcpStream::connect(addr(proxy.port)).await.unwrap();
    busy.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n*1\r\n$4\r\nPING\r\n")
        .await
        .unwrap();
    let mut got = [0u8; 12];
    busy.read_exact(&mut got).await.unwrap(); // "$-1\r\n+PONG\r\n": the pool connection is up
    let pid = lab.proc_by_port(old).pid().unwrap();
    signal(pid, "STOP");
    busy.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n")
        .await
        .unwrap();
    // The GET is on the shared connection, unanswered; then the master dies.
    tokio::time::sleep(Duration::from_millis(100)).await;
    lab.proc_by_port(old).kill();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut rest))
        .await
        .expect("the client owed a reply is closed")
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "no reply for a request lost with the master: {rest:?}"
    );
    // The idle client of the same shared connection is served by the new master, no error.
    assert_eq!(
        cmd(&mut idle, &["SET", "lost:idle", "2"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    let new = node_port(&mut idle).await.unwrap();
    assert_ne!(new, old);
}

async fn writer_conn(port: u16) -> sentinel_proxy::sentinel::client::RespConn {
    support::writer::patient(port).await.unwrap()
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Through an L4 splice, a request one client sends after another client's reaches Redis after
/// it; Redis's own suite relies on it (`XREADGROUP … BLOCK` on one connection, then `DEL` on
/// another must wake the reader with "no longer exists"). In pooled mode the first request pins
/// its client to a connection of its own: it still goes first, whether the second client is
/// pooled or pinned already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinning_request_stays_ahead_of_what_other_clients_send_after_it() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 2;
    })
    .await;
    proxy.wait_ready().await;
    let mut pooled = conn(proxy.port).await.unwrap();
    let mut pinned = conn(proxy.port).await.unwrap();
    cmd(&mut pinned, &["CLIENT", "SETNAME", "already-pinned"])
        .await
        .unwrap();
    for round in 0..20 {
        let other = if round % 2 == 0 {
            &mut pooled
        } else {
            &mut pinned
        };
        cmd(other, &["DEL", "order:s"]).await.unwrap();
        cmd(other, &["XADD", "order:s", "1-1", "f", "v"])
            .await
            .unwrap();
        cmd(other, &["XGROUP", "CREATE", "order:s", "g", "$"])
            .await
            .unwrap();
        let mut reader = TcpStream::connect(addr(proxy.port)).await.unwrap();
        reader.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        let mut pong = [0u8; 7];
        reader.read_exact(&mut pong).await.unwrap();
        reader
            .write_all(&multibulk(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "alice",
                "BLOCK",
                "0",
                "STREAMS",
                "order:s",
                ">",
            ]))
            .await
            .unwrap();
        cmd(other, &["DEL", "order:s"]).await.unwrap();
        let mut got = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut got))
            .await
            .expect("the blocked reader is woken")
            .unwrap();
        let got = String::from_utf8_lossy(&got[..n]);
        assert!(
            got.contains("no longer exists"),
            "round {round}: the DEL overtook the XREADGROUP: {got}"
        );
    }
}

/// A transaction (WATCH … EXEC, MULTI … DISCARD, WATCH … UNWATCH) and a worker's blocking pops
/// borrow a master connection for their span only: the client is back in the pool after it, and
/// a worker popping 30 times costs no connection per pop. A client that selects a database
/// inside a span goes back to the pool of that database, and a pipelined transaction shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_borrow_a_connection_and_give_it_back() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 1;
        c.threads = 1;
    })
    .await;
    let master = proxy.wait_ready().await;
    let ok = || OwnedFrame::SimpleString(b"OK".to_vec());
    let returned = |reason: &str| {
        format!("sentinel_proxy_borrow_seconds_count{{outcome=\"returned\",reason=\"{reason}\"}}")
    };

    let mut a = conn(proxy.port).await.unwrap();
    assert_eq!(cmd(&mut a, &["SET", "span:k", "1"]).await.unwrap(), ok());
    assert_eq!(cmd(&mut a, &["WATCH", "span:k"]).await.unwrap(), ok());
    assert_eq!(cmd(&mut a, &["GET", "span:k"]).await.unwrap(), bulk("1"));
    assert_eq!(cmd(&mut a, &["MULTI"]).await.unwrap(), ok());
    assert_eq!(
        cmd(&mut a, &["INCR", "span:k"]).await.unwrap(),
        OwnedFrame::SimpleString(b"QUEUED".to_vec())
    );
    assert_eq!(
        cmd(&mut a, &["EXEC"]).await.unwrap(),
        OwnedFrame::Array(vec![OwnedFrame::Integer(2)])
    );
    wait_metric(
        proxy.admin,
        &returned("transaction"),
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(cmd(&mut a, &["MULTI"]).await.unwrap(), ok());
    assert_eq!(
        cmd(&mut a, &["INCR", "span:k"]).await.unwrap(),
        OwnedFrame::SimpleString(b"QUEUED".to_vec())
    );
    assert_eq!(cmd(&mut a, &["DISCARD"]).await.unwrap(), ok());
    wait_metric(
        proxy.admin,
        &returned("transaction"),
        2.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(cmd(&mut a, &["WATCH", "span:k"]).await.unwrap(), ok());
    assert_eq!(cmd(&mut a, &["UNWATCH"]).await.unwrap(), ok());
    wait_metric(
        proxy.admin,
        &returned("transaction"),
        3.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(cmd(&mut a, &["GET", "span:k"]).await.unwrap(), bulk("2"));

    // A worker pops 30 times; a producer pushes each item once the pop waits.
    let mut worker = conn(proxy.port).await.unwrap();
    let mut producer = conn(proxy.port).await.unwrap();
    let mut probe = conn(master).await.unwrap();
    let mut most = 0;
    for i in 0..30 {
        let item = i.to_string();
        let pop = async { cmd(&mut worker, &["BRPOP", "span:q", "5"]).await.unwrap() };
        let push = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let OwnedFrame::BulkString(info) =
                    cmd(&mut probe, &["INFO", "clients"]).await.unwrap()
                else {
                    panic!("INFO")
                };
                if String::from_utf8_lossy(&info).contains("blocked_clients:1") {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "pop {i} never waited"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most = most.max(proxy_connections(&mut probe).await);
            cmd(&mut producer, &["LPUSH", "span:q", &item])
                .await
                .unwrap()
        };
        let (popped, _) = tokio::join!(pop, push);
        assert_eq!(
            popped,
            OwnedFrame::Array(vec![bulk("span:q"), bulk(&item)]),
            "pop {i}"
        );
    }
    wait_metric(
        proxy.admin,
        &returned("blocking"),
        30.0,
        Duration::from_secs(5),
    )
    .await;
    // The shared connection, the one lent (given back, taken again) and the spares a thread
    // keeps: not one per pop.
    eprintln!("at most {most} master connections from the proxy while a pop waited");
    assert!(most <= 4, "{most} master connections while a pop waited");

    // SELECT inside a span: the client goes back to the pool of its database.
    let mut s = conn(proxy.port).await.unwrap();
    assert_eq!(
        cmd(&mut s, &["SET", "span:db", "zero"]).await.unwrap(),
        ok()
    );
    assert_eq!(cmd(&mut s, &["WATCH", "span:db"]).await.unwrap(), ok());
    assert_eq!(cmd(&mut s, &["SELECT", "3"]).await.unwrap(), ok());
    assert_eq!(cmd(&mut s, &["UNWATCH"]).await.unwrap(), ok());
    assert_eq!(
        cmd(&mut s, &["SET", "span:db", "three"]).await.unwrap(),
        ok()
    );
    assert_eq!(
        cmd(&mut s, &["GET", "span:db"]).await.unwrap(),
        bulk("three")
    );
    assert_eq!(
        cmd(&mut a, &["GET", "span:db"]).await.unwrap(),
        bulk("zero")
    );

    // A transaction pipelined whole (redis-py's `pipeline()`) needs no connection of its own.
    let mut p = TcpStream::connect(addr(proxy.port)).await.unwrap();
    let mut out = multibulk(&["MULTI"]);
    out.extend(multibulk(&["INCR", "span:p"]));
    out.extend(multibulk(&["INCR", "span:p"]));
    out.extend(multibulk(&["EXEC"]));
    p.write_all(&out).await.unwrap();
    let want = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:2\r\n";
    let mut got = vec![0u8; want.len()];
    p.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));

    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(&text, "sentinel_proxy_borrowed_connections"),
        Some(0.0),
        "{text}"
    );
    // Three transactions, and the WATCH … UNWATCH that moved its client to db 3's pool.
    assert_eq!(metric(&text, &returned("transaction")), Some(4.0), "{text}");
    if let Some(complaints) = promtool_check(&text) {
        assert_eq!(complaints, "", "promtool check metrics");
    }
}

/// Read one RESP reply (RESP2 or RESP3) from a raw socket.
async fn read_reply(s: &mut TcpStream) -> Vec<u8> {
    let mut rep = sentinel_proxy::resp::ReplyTracker::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while rep.replies == 0 {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a reply within 10 s")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        rep.feed(&buf[..n]).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// What applications send at connect, against a password-protected Redis: AUTH, SELECT 1, and
/// HELLO 3 with AUTH. None of it pins: each borrows a connection for its answer, and the client
/// goes on in the pool of its state (user, database, protocol), whose connections are opened
/// with it, on the new master too after a failover. A wrong password gets Redis's own error
/// and leaves the client unauthenticated; 40 clients cost a handful of master connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_a_password_a_database_and_resp3_share_pools_across_a_failover() {
    const PW: &str = "pooled-secret-pw";
    let lab = Lab::start_with(LabOptions {
        redis_password: Some(PW.into()),
        ..Default::default()
    })
    .await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 1;
        c.threads = 1;
        c.master_auth.password = Some(sentinel_proxy::config::Secret::new(PW));
    })
    .await;
    let old = proxy.wait_ready().await;
    let ok = || OwnedFrame::SimpleString(b"OK".to_vec());

    let mut clients = Vec::new();
    for i in 0..40 {
        let mut c = conn(proxy.port).await.unwrap();
        assert_eq!(cmd(&mut c, &["AUTH", PW]).await.unwrap(), ok());
        assert_eq!(cmd(&mut c, &["SELECT", "1"]).await.unwrap(), ok());
        let key = format!("auth:{i}");
        assert_eq!(cmd(&mut c, &["SET", &key, "1"]).await.unwrap(), ok());
        clients.push((c, key));
    }
    // RESP3 with its credentials in HELLO, as Lettuce and node-redis send it.
    let mut r3 = TcpStream::connect(addr(proxy.port)).await.unwrap();
    r3.write_all(&multibulk(&["HELLO", "3", "AUTH", "default", PW]))
        .await
        .unwrap();
    let hello = read_reply(&mut r3).await;
    assert!(
        hello.starts_with(b"%"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    r3.write_all(&multibulk(&["HSET", "auth:h", "f", "v"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut r3).await, b":1\r\n");
    let map = b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n".to_vec();
    r3.write_all(&multibulk(&["HGETALL", "auth:h"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut r3).await, map);
    // A wrong password: Redis's own answer, and still no access.
    let mut wrong = conn(proxy.port).await.unwrap();
    let refused = cmd(&mut wrong, &["AUTH", "not-the-password"]).await;
    assert!(format!("{refused:?}").contains("WRONGPASS"), "{refused:?}");
    let noauth = cmd(&mut wrong, &["GET", "auth:0"]).await;
    assert!(format!("{noauth:?}").contains("NOAUTH"), "{noauth:?}");

    let mut probe = lab.rconn(old).await.unwrap();
    let on_master = proxy_connections(&mut probe).await;
    eprintln!("{on_master} master connections from the proxy for 42 clients");
    assert!(
        on_master <= 12,
        "{on_master} master connections for 42 clients"
    );

    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(60)).await;
    proxy.wait_routes_to(new, Duration::from_secs(10)).await;
    for (c, key) in &mut clients {
        assert_eq!(cmd(c, &["SET", key, "2"]).await.unwrap(), ok(), "{key}");
        assert_eq!(cmd(c, &["GET", key]).await.unwrap(), bulk("2"), "{key}");
    }
    r3.write_all(&multibulk(&["HGETALL", "auth:h"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut r3).await, map);
    let mut direct = lab.rconn(new).await.unwrap();
    assert_eq!(cmd(&mut direct, &["SELECT", "1"]).await.unwrap(), ok());
    assert_eq!(
        cmd(&mut direct, &["GET", "auth:39"]).await.unwrap(),
        bulk("2")
    );
    assert_eq!(
        cmd(&mut direct, &["EXISTS", "auth:h"]).await.unwrap(),
        OwnedFrame::Integer(0),
        "db 1, not db 0"
    );

    let (_, text) = http_get(proxy.admin, "/metrics").await;
    for reason in ["auth", "select"] {
        let pinned = format!("sentinel_proxy_pinned_sessions_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &pinned), None, "{pinned}\n{text}");
        let lent = format!(
            "sentinel_proxy_borrow_seconds_count{{outcome=\"returned\",reason=\"{reason}\"}}"
        );
        assert!(
            metric(&text, &lent).unwrap_or(0.0) >= 40.0,
            "{lent}\n{text}"
        );
    }
}

/// Scripts share (each slot's connection for scripts, `session/pool.rs`'s `Lane`): a script that
/// runs past `busy-reply-threshold` (an endless loop, an EVAL and then a function) does not hold
/// up clients that send no script (they get Redis's own `-BUSY`, as they would without the
/// proxy), `SCRIPT KILL` and `FUNCTION KILL` from another client through the proxy end it, and a
/// script queued behind it gets its reply. One thread with a pool of one, so every client shares
/// the same two connections; nothing pins or borrows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_past_the_busy_threshold_is_killed_through_the_proxy_and_no_one_hangs() {
    // The busy master answers Sentinel's PINGs `-BUSY`: no failover for the test's seconds.
    let lab = Lab::start_with(LabOptions {
        down_after_ms: 30_000,
        ..Default::default()
    })
    .await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 1;
        c.threads = 1;
    })
    .await;
    let master = proxy.wait_ready().await;
    let mut admin = TcpStream::connect(addr(proxy.port)).await.unwrap();
    admin
        .write_all(&multibulk(&["CONFIG", "SET", "busy-reply-threshold", "50"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut admin).await, b"+OK\r\n");
    let library =
        "#!lua name=spin\nredis.register_function('spin', function() while true do end end)";
    admin
        .write_all(&multibulk(&["FUNCTION", "LOAD", "REPLACE", library]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut admin).await, b"$4\r\nspin\r\n");

    let endless: [&[&str]; 2] = [&["EVAL", "while true do end", "0"], &["FCALL", "spin", "0"]];
    for (spin, kill) in endless.into_iter().zip(["SCRIPT", "FUNCTION"]) {
        let mut spinner = TcpStream::connect(addr(proxy.port)).await.unwrap();
        spinner.write_all(&multibulk(spin)).await.unwrap();
        // A client that sends no script: Redis's `-BUSY` once the script is past the threshold.
        let mut plain = TcpStream::connect(addr(proxy.port)).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            plain.write_all(&multibulk(&["PING"])).await.unwrap();
            let got = read_reply(&mut plain).await;
            if got.starts_with(b"-BUSY") {
                break;
            }
            assert_eq!(got, b"+PONG\r\n");
            assert!(
                tokio::time::Instant::now() < deadline,
                "no -BUSY while {spin:?} runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Another script queues behind it on the connection for scripts.
        let mut queued = TcpStream::connect(addr(proxy.port)).await.unwrap();
        queued
            .write_all(&multibulk(&["EVAL", "return 7", "0"]))
            .await
            .unwrap();
        // The kill, from another client.
        admin.write_all(&multibulk(&[kill, "KILL"])).await.unwrap();
        assert_eq!(read_reply(&mut admin).await, b"+OK\r\n", "{kill} KILL");
        let ended = String::from_utf8_lossy(&read_reply(&mut spinner).await).into_owned();
        assert!(ended.contains("killed by user"), "{spin:?}: {ended}");
        assert_eq!(read_reply(&mut queued).await, b":7\r\n");
        plain.write_all(&multibulk(&["PING"])).await.unwrap();
        assert_eq!(read_reply(&mut plain).await, b"+PONG\r\n");
    }

    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(&text, "sentinel_proxy_borrowed_connections"),
        Some(0.0),
        "{text}"
    );
    assert!(
        !text.contains("sentinel_proxy_pinned_sessions_total{")
            && !text.contains("sentinel_proxy_borrow_seconds_count{"),
        "nothing pins or borrows:\n{text}"
    );
    let (shared, list) = connections_on(master).await;
    assert_eq!(shared, 2, "one plain and one for scripts:\n{list}");
}

/// `CLIENT SETNAME` and `GETNAME` are answered by the proxy from the client's own name: in order
/// with the replies around them (pipelined in one write, or split across writes), Redis's own
/// errors for a bad name, no pin. The name goes with the client onto a connection lent for a
/// span (Redis's `CLIENT LIST` shows it while the client blocks there), and comes off that
/// connection when it goes back to the pool. `HELLO 3 SETNAME` names the client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_names_are_answered_by_the_proxy_and_lent_with_the_connection() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 1;
        c.threads = 1;
    })
    .await;
    let master = proxy.wait_ready().await;
    let mut a = TcpStream::connect(addr(proxy.port)).await.unwrap();
    let mut out = multibulk(&["SET", "name:k", "v"]);
    out.extend(multibulk(&["CLIENT", "SETNAME", "worker-1"]));
    out.extend(multibulk(&["GET", "name:k"]));
    out.extend(multibulk(&["client", "getname"]));
    out.extend(multibulk(&["CLIENT", "SETNAME", "bad name"]));
    out.extend(multibulk(&["CLIENT", "GETNAME", "extra"]));
    out.extend(multibulk(&["INCR", "name:n"]));
    a.write_all(&out).await.unwrap();
    let want: &[u8] = b"+OK\r\n+OK\r\n$1\r\nv\r\n$8\r\nworker-1\r\n\
        -ERR Client names cannot contain spaces, newlines or special characters.\r\n\
        -ERR wrong number of arguments for 'client|getname' command\r\n:1\r\n";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), a.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no whole answer: {:?}", String::from_utf8_lossy(&got)))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    // Split across writes, with a request after it in the second.
    let whole = [
        multibulk(&["CLIENT", "SETNAME", "worker-2"]),
        multibulk(&["CLIENT", "GETNAME"]),
    ]
    .concat();
    a.write_all(&whole[..20]).await.unwrap();
    a.flush().await.unwrap();
    // Not a wait for anything: a pause, so that the proxy most likely reads the halves apart.
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.write_all(&whole[20..]).await.unwrap();
    let want: &[u8] = b"+OK\r\n$8\r\nworker-2\r\n";
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(10), a.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no whole answer: {:?}", String::from_utf8_lossy(&got)))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    // Another client has no name.
    let mut b = TcpStream::connect(addr(proxy.port)).await.unwrap();
    b.write_all(&multibulk(&["CLIENT", "GETNAME"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut b).await, b"$-1\r\n");

    // A blocking pop borrows a connection: it carries the name while the client blocks.
    a.write_all(&multibulk(&["BLPOP", "name:list", "10"]))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the named client blocked",
        || async {
            let (_, list) = connections_on_named(master, "worker-2").await;
            list.then_some(())
        },
    )
    .await;
    b.write_all(&multibulk(&["RPUSH", "name:list", "x"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut b).await, b":1\r\n");
    assert_eq!(
        read_reply(&mut a).await,
        b"*2\r\n$9\r\nname:list\r\n$1\r\nx\r\n"
    );
    // Back in the pool: its name is still its own, and the connection it gave back has none.
    a.write_all(&multibulk(&["CLIENT", "GETNAME"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut a).await, b"$8\r\nworker-2\r\n");
    eventually(
        Duration::from_secs(5),
        "the lent connection unnamed",
        || async {
            let (_, named) = connections_on_named(master, "worker-2").await;
            (!named).then_some(())
        },
    )
    .await;

    // HELLO … SETNAME (Lettuce, go-redis, node-redis): the name is the client's from then on; a
    // HELLO that fails changes no name.
    let mut h = TcpStream::connect(addr(proxy.port)).await.unwrap();
    h.write_all(&multibulk(&["HELLO", "3", "SETNAME", "app-3"]))
        .await
        .unwrap();
    let hello = String::from_utf8_lossy(&read_reply(&mut h).await).into_owned();
    assert!(hello.starts_with('%'), "{hello}");
    h.write_all(&multibulk(&["CLIENT", "GETNAME"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut h).await, b"$5\r\napp-3\r\n");
    h.write_all(&multibulk(&[
        "HELLO", "3", "AUTH", "nobody", "pw", "SETNAME", "app-4",
    ]))
    .await
    .unwrap();
    let refused = read_reply(&mut h).await;
    assert!(refused.starts_with(b"-WRONGPASS"), "{refused:?}");
    h.write_all(&multibulk(&["CLIENT", "GETNAME"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut h).await, b"$5\r\napp-3\r\n");

    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert!(
        !text.contains("sentinel_proxy_pinned_sessions_total{"),
        "nothing pins:\n{text}"
    );
    let lent = "sentinel_proxy_borrow_seconds_count{outcome=\"returned\",reason=\"blocking\"}";
    assert_eq!(metric(&text, lent), Some(1.0), "{text}");
}

/// Whether a connection on the master is named `name` (and `CLIENT LIST`).
async fn connections_on_named(master: u16, name: &str) -> (String, bool) {
    let (_, list) = connections_on(master).await;
    let named = list.lines().any(|l| l.contains(&format!(" name={name} ")));
    (list, named)
}
