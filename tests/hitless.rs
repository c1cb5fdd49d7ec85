//! Hitless for every kind of client: real redis-py clients (pub/sub in RESP2 and RESP3 with
//! channels, patterns and shard channels; a BRPOP consumer; a BLMOVE reliable queue; an
//! XREADGROUP BLOCK consumer; a MULTI left open across requests; a WATCH/MULTI retry loop;
//! `tests/hitless/clients.py`) plus a RESP3 tracking client and a MONITOR client, all through the
//! proxy across five planned failovers in a row and a kill -9 of the master. Across the planned
//! ones: no error, no reconnect, nothing lost, nothing duplicated. Across the kill -9, clients
//! waiting (subscribers, blocked pops, tracking, MONITOR) ride through the same way; only a
//! request in flight on the dead master may fail. So the consumers are brought to their blocking
//! calls before the kill (producers held), while the transaction writers and the tracking
//! client's `GET` (every 20 ms) keep going: one of those in flight may fail (the tracking client
//! then reconnects once, as redis-py would, and must still get invalidations on the new master).

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis_protocol::resp3::decode::complete::decode;
use redis_protocol::resp3::types::OwnedFrame as F3;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The redis-py clients, killed on drop.
struct Clients {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Clients {
    fn start(port: u16) -> Clients {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hitless/clients.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the redis-py clients");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Clients {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, cmd: &str) -> serde_json::Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn tell(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn progress(&mut self) -> HashMap<String, u64> {
        let v = self.ask("progress");
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect()
    }

    /// Wait until every kind of client has done `n` more operations than `since`.
    async fn wait_progress(&mut self, since: &HashMap<String, u64>, n: u64, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.progress();
            let behind: Vec<_> = now
                .iter()
                .filter(|(k, v)| **v < since.get(*k).copied().unwrap_or(0) + n)
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "clients stalled {what}: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What the Rust-side clients saw.
#[derive(Default)]
struct Seen {
    tracking_gets: AtomicU64,
    /// `invalidate` pushes with a null key list (the flush the proxy sends after a move).
    flush_all: AtomicU64,
    /// `invalidate` pushes naming the tracked key.
    key_invalidations: AtomicU64,
    monitor_lines: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
    /// Set just before the kill -9: from then on, a `GET` in flight on the dead master may fail
    /// (the proxy cannot know its outcome, so it closes the client, as for any request in
    /// flight): the tracking client then reconnects, as redis-py does, and counts it here.
    kill_phase: std::sync::atomic::AtomicBool,
    tracking_kill_reconnects: AtomicU64,
}

impl Seen {
    fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }
}

async fn read_frame3(s: &mut TcpStream, buf: &mut BytesMut) -> Result<F3, String> {
    loop {
        if let Some((f, n)) = decode(buf).map_err(|e| e.to_string())? {
            buf.advance(n);
            return Ok(f);
        }
        if s.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
    }
}

/// A RESP3 client with `CLIENT TRACKING on` that reads a key over and over (so it is tracked)
/// while another client changes it: it must keep its socket, never see an error, and after each
/// move get the flush-everything invalidation.
async fn tracking_client(port: u16, seen: Arc<Seen>, stop: CancellationToken) {
    let (mut s, mut buf) = tracking_connect(port).await.unwrap();
    while !stop.is_cancelled() {
        if s.write_all(b"*2\r\n$3\r\nGET\r\n$10\r\nhl:tracked\r\n")
            .await
            .is_err()
        {
            seen.error("tracking: write failed".into());
            return;
        }
        loop {
            match read_frame3(&mut s, &mut buf).await {
                Ok(F3::Push { data, .. }) => {
                    if matches!(data.get(1), Some(F3::Null)) {
                        seen.flush_all.fetch_add(1, Ordering::Relaxed);
                    } else {
                        seen.key_invalidations.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(F3::SimpleError { data, .. }) => {
                    seen.error(format!("tracking: -{data}"));
                    break;
                }
                Ok(_) => {
                    seen.tracking_gets.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    // Only across the kill -9, and only once: its `GET` was in flight on the
                    // master that died.
                    if seen.kill_phase.load(Ordering::Relaxed)
                        && seen
                            .tracking_kill_reconnects
                            .fetch_add(1, Ordering::Relaxed)
                            == 0
                    {
                        match tracking_connect(port).await {
                            Ok(c) => (s, buf) = c,
                            Err(e) => {
                                seen.error(format!("tracking, reconnecting: {e}"));
                                return;
                            }
                        }
                        break;
                    }
                    seen.error(format!("tracking: {e}"));
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A RESP3 connection with `CLIENT TRACKING on`, sent as clients send them: multibulk (inline
/// state commands cannot be replayed faithfully).
async fn tracking_connect(port: u16) -> Result<(TcpStream, BytesMut), String> {
    let mut s = TcpStream::connect(addr(port))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    s.write_all(
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*3\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\non\r\n",
    )
    .await
    .map_err(|e| e.to_string())?;
    for _ in 0..2 {
        if let F3::SimpleError { data, .. } = read_frame3(&mut s, &mut buf).await? {
            return Err(format!("-{data}"));
        }
    }
    Ok((s, buf))
}

/// Changes the tracked key now and then (an ordinary client; its own errors are not counted).
async fn tracked_key_writer(port: u16, stop: CancellationToken) {
    let mut i = 0u64;
    while !stop.is_cancelled() {
        if let Ok(mut c) = conn(port).await {
            while !stop.is_cancelled() {
                i += 1;
                if cmd(&mut c, &["SET", "hl:tracked", &i.to_string()])
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// MONITOR: must keep its socket and keep seeing commands on whichever master is current.
async fn monitor_client(port: u16, seen: Arc<Seen>, stop: CancellationToken) {
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    s.write_all(b"*1\r\n$7\r\nMONITOR\r\n").await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        let n = tokio::select! {
            r = s.read(&mut buf) => r,
            _ = stop.cancelled() => return,
        };
        match n {
            Ok(0) | Err(_) => {
                seen.error("monitor: connection closed".into());
                return;
            }
            Ok(n) => {
                if first && !buf.starts_with(b"+OK") {
                    seen.error("monitor: no +OK".into());
                }
                first = false;
                if buf[..n].starts_with(b"-") {
                    seen.error(format!("monitor: {}", String::from_utf8_lossy(&buf[..n])));
                }
                let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                seen.monitor_lines.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }
}

fn field(v: &serde_json::Value, kind: &str, name: &str) -> i64 {
    v[kind][name]
        .as_i64()
        .unwrap_or_else(|| panic!("{kind}.{name} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_client_rides_through_five_failovers_and_a_kill_9() {
    rides_through(0).await;
}

/// The same in pooled mode: the subscribers, the MONITOR and the tracking client pinned, the
/// blocked consumers and the open transactions on connections lent for their spans (moved in
/// them), the rest on the shared connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_client_rides_through_five_failovers_and_a_kill_9_pooled() {
    rides_through(2).await;
}

/// `pool`: `--pool` (0: 1:1 mode).
async fn rides_through(pool: usize) {
    let py = python(); // install before the lab starts its clocks
    drop(py);
    let mut lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| c.pool = pool).await;
    proxy.wait_ready().await;

    let stop = CancellationToken::new();
    let seen = Arc::new(Seen::default());
    let rust_clients = [
        tokio::spawn(tracking_client(proxy.port, seen.clone(), stop.clone())),
        tokio::spawn(tracked_key_writer(proxy.port, stop.clone())),
        tokio::spawn(monitor_client(proxy.port, seen.clone(), stop.clone())),
    ];
    let mut clients = Clients::start(proxy.port);
    let zero = HashMap::new();
    clients.wait_progress(&zero, 5, "at the start").await;

    for round in 1..=5 {
        let old = lab.master_port().await.unwrap();
        let before = clients.progress();
        let flushes = seen.flush_all.load(Ordering::Relaxed);
        lab.failover().await;
        let new = lab.wait_new_master(old, Duration::from_secs(60)).await;
        proxy.wait_routes_to(new, Duration::from_secs(10)).await;
        clients
            .wait_progress(&before, 5, &format!("after failover {round}"))
            .await;
        eventually(
            Duration::from_secs(10),
            "the tracking client to be told to flush",
            || async { (seen.flush_all.load(Ordering::Relaxed) > flushes).then_some(()) },
        )
        .await;
        lab.wait_settled(Duration::from_secs(60)).await;
    }

    // kill -9 of the master. What the proxy promises across it is for clients *waiting* on the
    // master (blocked pops, subscribers, tracking, MONITOR): they go on on the new master with no
    // error. A non-blocking request in flight on the dead master has an unknown outcome and its
    // client is closed, so the consumers are first brought to their blocking calls (producers
    // held, everything taken), and the master's replicas to its last write (replication is
    // asynchronous: what they did not get is lost by Redis, not by the proxy). The transaction
    // writers keep writing through the kill (one error each allowed, below), and so do the
    // Rust-side tracking and MONITOR clients.
    let quiet = clients.ask("quiesce");
    assert_eq!(
        quiet["quiet"],
        serde_json::Value::Bool(true),
        "quiesce: {quiet}"
    );
    let old = lab.master_port().await.unwrap();
    lab.wait_replicated(old, Duration::from_secs(10)).await;
    clients.tell("kill");
    seen.kill_phase.store(true, Ordering::Relaxed);
    let before = clients.progress();
    let (keys, monitored) = (
        seen.key_invalidations.load(Ordering::Relaxed),
        seen.monitor_lines.load(Ordering::Relaxed),
    );
    lab.proc_by_port(old).kill();
    let new = lab.wait_new_master(old, Duration::from_secs(60)).await;
    proxy.wait_routes_to(new, Duration::from_secs(10)).await;
    clients.tell("resume");
    clients.wait_progress(&before, 5, "after the kill -9").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(seen.key_invalidations.load(Ordering::Relaxed) > keys
        && seen.monitor_lines.load(Ordering::Relaxed) > monitored)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 10s waiting for tracking and MONITOR to work on the new master; \
             their errors: {:?}",
            seen.errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let report = clients.ask("stop");
    stop.cancel();
    for c in rust_clients {
        let _ = c.await;
    }
    let (_, metrics) = http_get(proxy.admin, "/metrics").await;
    let moves: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("sentinel_proxy_session_moves_total") || l.contains("switch_"))
        .collect();
    eprintln!("report: {report}\nproxy: {moves:#?}");

    let errors = seen.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "tracking/MONITOR errors: {errors:?}");
    eprintln!(
        "tracking client reconnects across the kill -9: {}",
        seen.tracking_kill_reconnects.load(Ordering::Relaxed)
    );
    assert!(seen.tracking_gets.load(Ordering::Relaxed) > 0);
    for kind in ["pubsub", "blocking", "blmove", "stream", "multi", "watch"] {
        for f in ["errors_planned", "reconnects_planned", "lost", "duplicated"] {
            assert_eq!(field(&report, kind, f), 0, "{kind}.{f}: {report}");
        }
        assert!(field(&report, kind, "expected") > 0, "{kind}: {report}");
    }
    // Waiting clients ride through the kill -9 too.
    for kind in ["pubsub", "blocking", "blmove", "stream"] {
        for f in ["errors_kill", "reconnects_kill"] {
            assert_eq!(field(&report, kind, f), 0, "{kind}.{f}: {report}");
        }
    }
    assert_eq!(
        field(&report, "pubsub", "published_to_fewer_subscribers"),
        0,
        "{report}"
    );
    for (kind, left) in [
        ("blocking", "left_in_list"),
        ("blmove", "left_processing"),
        ("stream", "pending"),
    ] {
        assert_eq!(field(&report, kind, left), 0, "{kind}: {report}");
    }
    for kind in ["multi", "watch"] {
        assert_eq!(
            report[kind]["counter_matches_log"],
            serde_json::Value::Bool(true),
            "{kind}: {report}"
        );
        assert_eq!(
            field(&report, kind, "applied_unacknowledged"),
            0,
            "{kind}: {report}"
        );
        // Only what was in flight on the dead master may have failed.
        assert!(field(&report, kind, "errors_kill") <= 1, "{kind}: {report}");
    }
    // Six switches: each subscriber, the tracking and the MONITOR client moved at every one;
    // the blocked consumers and the open transactions at some. A tracking client whose `GET`
    // was in flight on the killed master was closed (and reconnected, counted above) instead
    // of moved at the sixth.
    let tracking_moves = 6.0 - seen.tracking_kill_reconnects.load(Ordering::Relaxed) as f64;
    for (kind, at_least) in [
        ("pubsub", 12.0),
        ("tracking", tracking_moves),
        ("monitor", 6.0),
        ("blocking", 1.0),
        ("transaction", 1.0),
    ] {
        let series = format!("sentinel_proxy_session_moves_total{{kind=\"{kind}\"}}");
        assert!(
            metric(&metrics, &series).unwrap_or(0.0) >= at_least,
            "{series}: {moves:#?}"
        );
    }
    // /status tells, per switch, what moved and what was closed.
    let (_, status) = http_get(proxy.admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let switches = status["switches"].as_array().unwrap();
    let with_subscribers = switches
        .iter()
        .filter(|s| s["sessions"]["moved"]["pubsub"].as_u64() == Some(2))
        .count();
    assert!(with_subscribers >= 5, "{status}");
    // Producers and writers: errors only for what was in flight on the dead master.
    for kind in ["publisher", "producers"] {
        assert_eq!(
            field(&report, kind, "errors_planned"),
            0,
            "{kind}: {report}"
        );
        assert_eq!(
            field(&report, kind, "reconnects_planned"),
            0,
            "{kind}: {report}"
        );
    }
}
