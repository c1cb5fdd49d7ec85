//! Pooled mode's connection state: what clients set at connect (a password, a database,
//! RESP3, a name) keeps them in a pool of that state instead of pinning them; names are the
//! proxy's to answer and go with the client onto a connection lent to it, across a move too;
//! a pool of a state no client is in any more closes its connections.

mod support;

use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::config::Config;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bulk(s: &str) -> OwnedFrame {
    OwnedFrame::BulkString(s.as_bytes().to_vec())
}

/// The proxy on one worker thread with a pool of one (every client shares the same few
/// connections), and whatever else `tweak` sets.
async fn pool_of_one(lab: &Lab, tweak: impl FnOnce(&mut Config)) -> Proxy {
    Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.pool = 1;
        c.threads = 1;
        tweak(c);
    })
    .await
}

/// A lab whose Redis nodes want `password`, and [`pool_of_one`] in front of it with that
/// password as its own.
async fn password_lab(password: &str) -> (Lab, Proxy) {
    let lab = Lab::start_with(LabOptions {
        redis_password: Some(password.into()),
        ..Default::default()
    })
    .await;
    let proxy = pool_of_one(&lab, |c| {
        c.master_auth.password = Some(sentinel_proxy::config::Secret::new(password));
    })
    .await;
    (lab, proxy)
}

/// What applications send at connect, against a password-protected Redis: AUTH, SELECT 1, and
/// HELLO 3 with AUTH. None of it pins: each borrows a connection for its answer, and the client
/// goes on in the pool of its state (user, database, protocol), whose connections are opened
/// with it, on the new master too after a failover. A wrong password gets Redis's own error
/// and leaves the client unauthenticated; 40 clients cost a handful of master connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_a_password_a_database_and_resp3_share_pools_across_a_failover() {
    const PW: &str = "pooled-secret-pw";
    let (lab, proxy) = password_lab(PW).await;
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
    let proxy = pool_of_one(&lab, |_| {}).await;
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
    let proxy = pool_of_one(&lab, |_| {}).await;
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

/// Connections on the master in database `db` (by `CLIENT LIST`), and the list.
async fn connections_in_db(master: u16, db: u32) -> (usize, String) {
    let (_, list) = connections_on(master).await;
    let n = list
        .lines()
        .filter(|l| l.contains(&format!(" db={db} ")))
        .count();
    (n, list)
}

/// A pool of a state its clients set (here `SELECT 3`) keeps its master connections while it
/// has a client, closes them once it has had none for `--pool-idle-timeout`, and opens them
/// again for the next client; the group's first pool keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pool_of_a_database_closes_its_connections() {
    let lab = Lab::start().await;
    let proxy = pool_of_one(&lab, |c| c.pool_idle_timeout = Duration::from_millis(500)).await;
    let master = proxy.wait_ready().await;
    let ok = || OwnedFrame::SimpleString(b"OK".to_vec());
    let mut plain = conn(proxy.port).await.unwrap();
    assert_eq!(
        cmd(&mut plain, &["SET", "idle:0", "a"]).await.unwrap(),
        ok()
    );

    let mut db3 = conn(proxy.port).await.unwrap();
    assert_eq!(cmd(&mut db3, &["SELECT", "3"]).await.unwrap(), ok());
    assert_eq!(cmd(&mut db3, &["SET", "idle:3", "b"]).await.unwrap(), ok());
    let (open, list) = connections_in_db(master, 3).await;
    assert!(open >= 1, "db 3's pool has a connection:\n{list}");
    // With its client still there (idle for three timeouts), the pool keeps its connections.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (still, list) = connections_in_db(master, 3).await;
    assert!(still >= 1, "db 3's pool kept its connections:\n{list}");
    assert_eq!(cmd(&mut db3, &["GET", "idle:3"]).await.unwrap(), bulk("b"));
    drop(db3);

    // Its client gone: the pool closes its connections (the first pool keeps its own).
    let list = eventually(
        Duration::from_secs(10),
        "db 3's pool to close its connections",
        || async {
            let (n, list) = connections_in_db(master, 3).await;
            (n == 0).then_some(list)
        },
    )
    .await;
    assert!(
        list.lines()
            .any(|l| l.contains(" name=sentinel-proxy-pool ") && l.contains(" db=0 ")),
        "the first pool's connection stays:\n{list}"
    );
    assert_eq!(
        cmd(&mut plain, &["GET", "idle:0"]).await.unwrap(),
        bulk("a")
    );

    // The next client of that database opens them again.
    let mut again = conn(proxy.port).await.unwrap();
    assert_eq!(cmd(&mut again, &["SELECT", "3"]).await.unwrap(), ok());
    assert_eq!(
        cmd(&mut again, &["GET", "idle:3"]).await.unwrap(),
        bulk("b")
    );
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_pinned_sessions_total{reason=\"select\"}"
        ),
        None
    );
}

/// A named worker blocked in a pop on a lent connection (BullMQ's workers, which list each other
/// by name in `CLIENT LIST`) is moved to the new master in its span with its name, and a
/// subscriber that made its lent connection its own keeps its name on the new master too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_connection_keeps_its_clients_name_across_a_failover() {
    let lab = Lab::start().await;
    let proxy = pool_of_one(&lab, |_| {}).await;
    let old = proxy.wait_ready().await;
    // Any type of client (a subscriber is `pubsub`, not `normal`).
    let named = |port: u16, name: &'static str| async move {
        let mut c = conn(port).await.unwrap();
        let list = match cmd(&mut c, &["CLIENT", "LIST"]).await.unwrap() {
            OwnedFrame::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            other => panic!("CLIENT LIST: {other:?}"),
        };
        list.contains(&format!(" name={name} ")).then_some(())
    };
    let mut worker = TcpStream::connect(addr(proxy.port)).await.unwrap();
    worker
        .write_all(&multibulk(&["CLIENT", "SETNAME", "bull-worker"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut worker).await, b"+OK\r\n");
    worker
        .write_all(&multibulk(&["BLPOP", "moved:list", "60"]))
        .await
        .unwrap();
    // A WATCH borrows a connection; the SUBSCRIBE after it makes it the client's for good.
    let mut sub = TcpStream::connect(addr(proxy.port)).await.unwrap();
    for request in [&["CLIENT", "SETNAME", "events"][..], &["WATCH", "moved:w"]] {
        sub.write_all(&multibulk(request)).await.unwrap();
        assert_eq!(read_reply(&mut sub).await, b"+OK\r\n", "{request:?}");
    }
    sub.write_all(&multibulk(&["SUBSCRIBE", "moved:ch"]))
        .await
        .unwrap();
    let confirmed = read_reply(&mut sub).await;
    assert!(
        confirmed.starts_with(b"*3\r\n$9\r\nsubscribe"),
        "{confirmed:?}"
    );
    for name in ["bull-worker", "events"] {
        eventually(Duration::from_secs(5), name, || named(old, name)).await;
    }

    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(60)).await;
    proxy.wait_routes_to(new, Duration::from_secs(10)).await;
    for name in ["bull-worker", "events"] {
        eventually(
            Duration::from_secs(20),
            &format!("{name} on the new master"),
            || named(new, name),
        )
        .await;
    }
    let mut pusher = TcpStream::connect(addr(proxy.port)).await.unwrap();
    pusher
        .write_all(&multibulk(&["RPUSH", "moved:list", "job"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut pusher).await, b":1\r\n");
    assert_eq!(
        read_reply(&mut worker).await,
        b"*2\r\n$10\r\nmoved:list\r\n$3\r\njob\r\n"
    );
    pusher
        .write_all(&multibulk(&["PUBLISH", "moved:ch", "hi"]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut pusher).await, b":1\r\n");
    assert_eq!(
        read_reply(&mut sub).await,
        b"*3\r\n$7\r\nmessage\r\n$8\r\nmoved:ch\r\n$2\r\nhi\r\n"
    );
}

/// A storm of clients that log in at once (a deployment's workers starting, a reconnect after a
/// restart): each AUTH borrows a connection for its answer, and the connections for them are
/// opened a few at a time, each held to its turn until Redis has answered on it, so the master
/// sees a handful of connections, not one per client. (Before, only the TCP connect took a turn,
/// and 1 000 clients opened 434 to 518 at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_logins_opens_a_few_master_connections_at_a_time() {
    const PW: &str = "storm-secret-pw";
    let (lab, proxy) = password_lab(PW).await;
    let master = proxy.wait_ready().await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The most connections the proxy holds on the master while the clients log in (a sample
    // can miss the peak, never exceed it).
    let sampler = {
        let (done, mut probe) = (done.clone(), lab.rconn(master).await.unwrap());
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(proxy_connections(&mut probe).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    let clients: Vec<_> = (0..400)
        .map(|i| {
            let port = proxy.port;
            tokio::spawn(async move {
                let mut c = TcpStream::connect(addr(port)).await.unwrap();
                // As redis-benchmark and most clients send it: AUTH, then at once a request.
                let mut out = multibulk(&["AUTH", PW]);
                out.extend(multibulk(&["SET", &format!("storm:{i}"), "1"]));
                c.write_all(&out).await.unwrap();
                let mut got = Vec::new();
                while got.len() < 10 {
                    let mut buf = [0u8; 64];
                    let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
                        .await
                        .expect("answers within 30 s")
                        .unwrap();
                    assert!(n > 0, "closed after {got:?}");
                    got.extend_from_slice(&buf[..n]);
                }
                assert_eq!(got, b"+OK\r\n+OK\r\n", "client {i}");
                c
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.unwrap();
    eprintln!("at most {most} master connections for 400 clients logging in at once");
    assert!(most <= 16, "{most} master connections for 400 logins");
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    let lent = "sentinel_proxy_borrow_seconds_count{outcome=\"returned\",reason=\"auth\"}";
    assert_eq!(metric(&text, lent), Some(400.0), "{text}");
}
