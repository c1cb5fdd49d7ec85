//! Hostile and broken clients against a real lab: none of them may take the proxy down, grow its
//! memory without bound, leak a backend connection, or slow down the other clients.

mod support;

use std::time::Duration;

use support::binary::proxy_binary;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Read until `want` bytes arrived (or the peer closed); returns what arrived.
async fn read_exactly(s: &mut TcpStream, want: usize, limit: Duration) -> Vec<u8> {
    let mut got = Vec::with_capacity(want.min(1 << 20));
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + limit;
    while got.len() < want {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            s.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Clients connected to a redis-server, from its INFO.
/// Connections on the master other than the sentinels' and the proxy's shared ones (which are
/// named), the proxy's spare, and the one asking.
async fn proxy_clients(port: u16) -> Option<u64> {
    let mut c = conn(port).await.ok()?;
    let list = cmd(&mut c, &["CLIENT", "LIST"]).await.ok()?;
    let redis_protocol::resp2::types::OwnedFrame::BulkString(b) = list else {
        return None;
    };
    let text = String::from_utf8_lossy(&b).to_string();
    Some(
        text.lines()
            // In pooled mode the proxy also keeps a spare connection for the next client to
            // pin, checked with CONFIG GET. The watcher's own short-lived queries of a new
            // master (ROLE, and COMMAND just after the route is set) are not clients' either.
            .filter(|l| {
                !l.contains(" name=sentinel")
                    && !l.contains(" cmd=client|list")
                    && !l.contains(" cmd=config|get")
                    && !l.contains(" cmd=command ")
                    && !l.contains(" cmd=role ")
            })
            .count() as u64,
    )
}

/// One byte every 100 ms: the request completes in the end, and a second client meanwhile sees
/// no delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_does_not_hold_up_the_others() {
    let lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;

    let request = b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$2\r\nok\r\n";
    let port = proxy.port;
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        for b in request {
            s.write_all(std::slice::from_ref(b)).await.unwrap();
            sleep(Duration::from_millis(100)).await;
        }
        read_exactly(&mut s, 5, Duration::from_secs(5)).await
    });
    let mut other = conn(proxy.port).await.unwrap();
    let mut worst = Duration::ZERO;
    while !slow.is_finished() {
        let began = Instant::now();
        cmd(&mut other, &["PING"]).await.unwrap();
        worst = worst.max(began.elapsed());
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.await.unwrap(), b"+OK\r\n");
    assert!(worst < Duration::from_millis(250), "slowest PING {worst:?}");
    let mut c = conn(proxy.port).await.unwrap();
    assert_eq!(
        cmd(&mut c, &["GET", "slow"]).await.unwrap(),
        redis_protocol::resp2::types::OwnedFrame::BulkString(b"ok".to_vec())
    );
}

/// A client pipelines 4 000 GETs of a 16 KiB value (64 MiB of replies) and reads nothing. The
/// replies wait in Redis and the kernel, not in the proxy: its memory stays within a few MiB.
/// When the client finally reads, every reply arrives whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_the_proxy() {
    let lab = Lab::start().await;
    let master = lab.master_port().await.unwrap();
    let value = "v".repeat(16 * 1024);
    let mut direct = conn(master).await.unwrap();
    cmd(&mut direct, &["SET", "big", &value]).await.unwrap();
    let (proxy, port, _) = proxy_binary(&lab, &[]).await;
    let baseline = proxy.rss_kib();

    const N: usize = 4000;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let requests = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(N);
    s.write_all(&requests).await.unwrap();
    // Wait until Redis holds most of the replies for the proxy's connection: the pipeline is
    // then stuck on the client, which reads nothing.
    eventually(
        Duration::from_secs(20),
        "Redis to buffer the replies",
        || async {
            let mut c = conn(master).await.ok()?;
            let list = cmd(&mut c, &["CLIENT", "LIST"]).await.ok()?;
            let text = match list {
                redis_protocol::resp2::types::OwnedFrame::BulkString(b) => {
                    String::from_utf8_lossy(&b).to_string()
                }
                _ => return None,
            };
            let most = text
                .lines()
                .filter_map(|l| {
                    l.split(' ')
                        .find_map(|kv| kv.strip_prefix("omem="))?
                        .parse::<u64>()
                        .ok()
                })
                .max()?;
            (most > 32 << 20).then_some(())
        },
    )
    .await;
    let grown = proxy.rss_kib().saturating_sub(baseline);
    assert!(
        grown < 8 * 1024,
        "the proxy grew by {grown} KiB while the client read nothing"
    );

    let reply = format!("${}\r\n{value}\r\n", value.len()).into_bytes();
    let got = read_exactly(&mut s, reply.len() * N, Duration::from_secs(30)).await;
    assert_eq!(got.len(), reply.len() * N);
    assert!(got.chunks(reply.len()).all(|r| r == reply.as_slice()));
}

/// More connections at once than `--max-clients`: the extra ones get Redis's error, the admitted
/// ones keep working, and once they close the proxy admits new clients again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_max_clients_is_refused_and_recovers() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| c.max_clients = 20).await;
    proxy.wait_ready().await;
    let mut admitted = Vec::new();
    for _ in 0..20 {
        let mut c = conn(proxy.port).await.unwrap();
        cmd(&mut c, &["PING"]).await.unwrap();
        admitted.push(c);
    }
    let burst: Vec<_> = (0..60)
        .map(|_| {
            let port = proxy.port;
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                String::from_utf8(read_exactly(&mut s, 64, Duration::from_secs(5)).await).unwrap()
            })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), "-ERR max number of clients reached\r\n");
    }
    for c in admitted.iter_mut() {
        cmd(c, &["PING"]).await.unwrap();
    }
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(&text, "sentinel_proxy_max_clients_rejections_total"),
        Some(60.0)
    );
    drop(admitted);
    eventually(
        Duration::from_secs(5),
        "a new client to be admitted",
        || async {
            let mut c = conn(proxy.port).await.ok()?;
            cmd(&mut c, &["PING"]).await.ok()
        },
    )
    .await;
}

/// The client sends its requests and closes its sending side: it still gets every reply, then
/// the end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_its_replies() {
    let lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(b"SET half closed\r\nPING\r\nGET half\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let got = read_exactly(&mut s, usize::MAX, Duration::from_secs(5)).await;
    assert_eq!(got, b"+OK\r\n+PONG\r\n$6\r\nclosed\r\n");
}

/// A connection reset in the middle of a request: nothing half-written is executed, the
/// backend connection is closed with it, and the proxy serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_request_leaks_nothing() {
    let lab = Lab::start().await;
    let master = lab.master_port().await.unwrap();
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    proxy.wait_ready().await;
    // Sentinels' connections (named) come and go while the lab starts: count the others.
    let before = proxy_clients(master).await.unwrap();

    let s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"*3\r\n$3\r\nSET\r\n$5\r\nreset\r\n$100\r\nonly part",
    )
    .unwrap();
    if proxy.group.config().pool == 0 {
        eventually(Duration::from_secs(5), "the backend connection", || async {
            (proxy_clients(master).await? == before + 1).then_some(())
        })
        .await;
    } else {
        // Pooled: an incomplete request is kept by the proxy (no connection of its own on the
        // master; the check below sees the count back at `before`).
        wait_metric(
            proxy.admin,
            "sentinel_proxy_client_connections",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    }
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s); // RST

    eventually(
        Duration::from_secs(5),
        "the backend connection to close",
        || async { (proxy_clients(master).await? == before).then_some(()) },
    )
    .await;
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(&text, "sentinel_proxy_client_connections"),
        Some(0.0)
    );
    let mut c = conn(proxy.port).await.unwrap();
    assert_eq!(
        cmd(&mut c, &["EXISTS", "reset"]).await.unwrap(),
        redis_protocol::resp2::types::OwnedFrame::Integer(0)
    );
}

/// A 100 MB value goes through both ways unchanged, and the proxy never holds it: its memory
/// grows by far less than the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100mb_value_passes_without_the_proxy_holding_it() {
    let lab = Lab::start().await;
    let (proxy, port, _) = proxy_binary(&lab, &[]).await;
    let baseline = proxy.rss_kib();
    const LEN: usize = 100 * 1000 * 1000;
    let value: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();

    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut request = format!("*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n${LEN}\r\n").into_bytes();
    request.extend_from_slice(&value);
    request.extend_from_slice(b"\r\n*2\r\n$3\r\nGET\r\n$4\r\nhuge\r\n");
    let (mut rd, mut wr) = s.split();
    let header = format!("+OK\r\n${LEN}\r\n");
    let want = header.len() + LEN + 2;
    let (sent, got) = tokio::join!(wr.write_all(&request), async {
        let mut got = Vec::with_capacity(want);
        let mut buf = vec![0u8; 1 << 20];
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < want && Instant::now() < deadline {
            match timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        got
    });
    sent.unwrap();
    assert_eq!(got.len(), want);
    assert_eq!(&got[..header.len()], header.as_bytes());
    assert!(
        got[header.len()..header.len() + LEN] == value[..],
        "the value came back changed"
    );
    let grown = proxy.rss_kib().saturating_sub(baseline);
    assert!(grown < 16 * 1024, "the proxy grew by {grown} KiB");
}

/// A client that leaves while its master is being replaced (found by the soak: such sessions
/// used to move to the new master and wait there forever for an end of stream that had gone
/// to the old one). Its session must end, not outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_during_a_failover_leaves_no_session_behind() {
    let mut lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.connect_wait = Duration::from_secs(30);
    })
    .await;
    proxy.wait_ready().await;
    let mut c = conn(proxy.port).await.unwrap();
    cmd(&mut c, &["PING"]).await.unwrap();
    // The master dies under the idle session, which waits for the next one; the client leaves.
    lab.proc_by_port(old).kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(c);
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(10)).await;
    let open = "sentinel_proxy_client_connections";
    wait_metric(proxy.admin, open, 0.0, Duration::from_secs(5)).await;
}
