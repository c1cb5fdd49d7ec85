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

/// The master dies while requests are in flight on a shared connection: the client whose
/// request only reads gets its answer from the new master (the read is sent again there), the
/// one whose request writes sees its connection close (the write's outcome is unknown), and an
/// idle client of the same connection never sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_sends_reads_again_and_fails_the_writes_in_flight() {
    lost_connection(1).await;
}

/// The same in 1:1 mode: each client's own session keeps its reads in flight
/// (`session/dedicated/again.rs`) and sends them again to the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_1_1_mode_too_reads_in_flight_on_a_dead_master_are_sent_again() {
    lost_connection(0).await;
}

async fn lost_connection(pool: usize) {
    let mut lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = pool;
        c.threads = 1;
        c.connect_wait = Duration::from_secs(30);
    })
    .await;
    let old = proxy.wait_ready().await;
    // Which commands only read is the master's word (`COMMAND`, asked once it is verified).
    eventually(Duration::from_secs(10), "the master's commands", || async {
        proxy.group.commands.load().as_ref().map(|_| ())
    })
    .await;
    let mut idle = writer_conn(proxy.port).await;
    assert_eq!(
        cmd(&mut idle, &["SET", "lost:idle", "1"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    let mut reader = TcpStream::connect(addr(proxy.port)).await.unwrap();
    reader
        .write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n*1\r\n$4\r\nPING\r\n")
        .await
        .unwrap();
    let mut got = [0u8; 12];
    reader.read_exact(&mut got).await.unwrap(); // "$-1\r\n+PONG\r\n": the pool connection is up
    let mut writer = TcpStream::connect(addr(proxy.port)).await.unwrap();
    writer.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    writer.read_exact(&mut pong).await.unwrap();
    lab.proc_by_port(old).signal("-STOP");
    reader
        .write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n")
        .await
        .unwrap();
    writer
        .write_all(&multibulk(&["SET", "lost:w", "1"]))
        .await
        .unwrap();
    // Both are on the master (pooled: on the shared connection), unanswered; then it dies.
    tokio::time::sleep(Duration::from_millis(100)).await;
    lab.proc_by_port(old).kill();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), writer.read_to_end(&mut rest))
        .await
        .expect("the client owed a write's reply is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "no reply for a write lost with the master: {rest:?}");
    // The read is answered by the new master, and its client goes on.
    let answer = read_reply(&mut reader).await;
    assert_eq!(answer, b"$-1\r\n");
    reader.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    assert_eq!(read_reply(&mut reader).await, b"+PONG\r\n");
    // The idle client of the same shared connection is served by the new master, no error.
    assert_eq!(
        cmd(&mut idle, &["SET", "lost:idle", "2"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    let new = node_port(&mut idle).await.unwrap();
    assert_ne!(new, old);
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(&text, "sentinel_proxy_requests_sent_again_total"),
        Some(1.0)
    );
}

async fn writer_conn(port: u16) -> sentinel_proxy::sentinel::client::RespConn {
    support::writer::patient(port).await.unwrap()
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
