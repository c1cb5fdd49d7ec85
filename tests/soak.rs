//! Failover soak: redis-benchmark load and the acknowledged-write checker run through the proxy
//! binary while the lab goes through failovers of every kind, in turn: `SENTINEL FAILOVER`,
//! kill -9 of the master (restarted afterwards), SIGSTOP of the master (a hang; SIGCONT once it
//! is replaced), and a sentinel restart followed by a failover. `SOAK_FAILOVERS` sets how many
//! (default 4: one of each; `SOAK_FAILOVERS=50 cargo test --test soak -- --nocapture` for the
//! long run).
//!
//! Checks: the proxy never exits; no acknowledged write is lost; after the load stops, the
//! proxy's client connections, open descriptors and RSS come back to their baseline.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use support::binary::proxy_binary;
use support::writer::{Ledger, writer};
use support::*;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
enum Failover {
    Planned,
    Kill,
    Hang,
    SentinelRestart,
}

const KINDS: [Failover; 4] = [
    Failover::Planned,
    Failover::Kill,
    Failover::Hang,
    Failover::SentinelRestart,
];

async fn status(admin: u16) -> serde_json::Value {
    let (_, body) = http_get(addr(admin), "/status").await;
    serde_json::from_str(&body).unwrap_or_default()
}

async fn routes_to(admin: u16, port: u16) {
    let want = format!("127.0.0.1:{port}");
    eventually(
        Duration::from_secs(15),
        "the proxy to route to the new master",
        || async {
            let st = status(admin).await;
            (st["master"] == want.as_str() && st["available"] == true).then_some(())
        },
    )
    .await;
}

/// redis-benchmark through the proxy, run after run, until `stop`; returns the number of runs.
fn load(port: u16, stop: CancellationToken) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut runs = 0;
        while !stop.is_cancelled() {
            let mut child = tokio::process::Command::new("redis-benchmark")
                .args(["-p", &port.to_string(), "-t", "set,get", "-n", "20000"])
                .args(["-c", "10", "-r", "10000", "-q"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-benchmark");
            tokio::select! {
                _ = child.wait() => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = stop.cancelled() => {}
            }
            let _ = child.kill().await;
            runs += 1;
        }
        runs
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_survives_failovers_of_every_kind_under_load() {
    let rounds: usize = std::env::var("SOAK_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KINDS.len());
    let mut lab = Lab::start().await;
    let (mut proxy, port, admin) = proxy_binary(&lab, &["--connect-wait", "20s"]).await;

    // The baseline: after a first burst of load, with no client connected.
    let warm = CancellationToken::new();
    let w = load(port, warm.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    warm.cancel();
    w.await.unwrap();
    let idle = || async {
        eventually(
            Duration::from_secs(10),
            "no client connection left",
            || async {
                let (_, text) = http_get(addr(admin), "/metrics").await;
                (metric(&text, "sentinel_proxy_client_connections") == Some(0.0)).then_some(())
            },
        )
        .await
    };
    idle().await;
    let (fds0, rss0) = (proxy.open_fds(), proxy.rss_kib());

    let stop = CancellationToken::new();
    let bench = load(port, stop.clone());
    let long = Arc::new(Mutex::new(Ledger::default()));
    let short = Arc::new(Mutex::new(Ledger::default()));
    let w1 = writer(port, "long", 100, true, long.clone(), stop.clone());
    let w2 = writer(port, "short", 100, false, short.clone(), stop.clone());
    let started = Instant::now();

    let mut master = lab.master_port().await.unwrap();
    for round in 0..rounds {
        let kind = KINDS[round % KINDS.len()];
        tokio::time::sleep(Duration::from_millis(500)).await; // writes before each failover
        let began = Instant::now();
        let old = master;
        match kind {
            Failover::Planned => {
                lab.failover().await;
            }
            Failover::Kill => lab.proc_by_port(old).kill(),
            Failover::Hang => lab.proc_by_port(old).signal("-STOP"),
            Failover::SentinelRestart => {
                let s = &mut lab.sentinels[round % 3];
                s.kill();
                s.restart().await;
                lab.failover().await;
            }
        }
        master = lab.wait_new_master(old, Duration::from_secs(60)).await;
        routes_to(admin, master).await;
        let routed = began.elapsed();
        match kind {
            Failover::Kill => lab.proc_by_port(old).restart().await,
            Failover::Hang => lab.proc_by_port(old).signal("-CONT"),
            _ => {}
        }
        // Sentinel may have moved the master again on its own meanwhile: target the one it
        // settled on next.
        master = lab.wait_settled(Duration::from_secs(60)).await;
        assert!(
            proxy.is_running(),
            "the proxy exited during {kind:?}:\n{}",
            proxy.log()
        );
        eprintln!(
            "failover {}/{rounds} {kind:?}: {old} -> {master}, routed after {:.2} s, at {:.1} s",
            round + 1,
            routed.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let runs = bench.await.unwrap();
    w1.await.unwrap();
    w2.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    let mut c = conn(master).await.unwrap();
    let mut lost_total = 0;
    for (name, ledger) in [("long-lived", &long), ("per-write", &short)] {
        let (acked, attempts, errors, texts) = {
            let l = ledger.lock().unwrap();
            (l.acked.clone(), l.attempts, l.errors, l.error_texts.clone())
        };
        let mut lost = Vec::new();
        for (k, v) in &acked {
            if cmd(&mut c, &["GET", k]).await.unwrap() != OwnedFrame::BulkString(v.clone().into()) {
                lost.push(k.clone());
            }
        }
        eprintln!(
            "{name} writer: {attempts} writes in {elapsed:.0} s, {} acknowledged, {errors} errors \
             (outcome unknown to the client), {} acknowledged writes lost; first errors: {texts:?}",
            acked.len(),
            lost.len()
        );
        assert!(
            acked.len() as f64 > attempts as f64 * 0.9,
            "{name}: too few writes acknowledged"
        );
        lost_total += lost.len();
        assert!(
            lost.is_empty(),
            "{name}: acknowledged writes lost: {lost:?}"
        );
    }

    // Everything held for the load is given back.
    idle().await;
    let (fds, rss) = eventually(
        Duration::from_secs(10),
        "descriptors back to the baseline",
        || async {
            let fds = proxy.open_fds();
            (fds <= fds0).then(|| (fds, proxy.rss_kib()))
        },
    )
    .await;
    let (_, text) = http_get(addr(admin), "/metrics").await;
    let sessions = metric(&text, "sentinel_proxy_client_connections_total").unwrap_or(0.0);
    for line in text.lines().filter(|l| {
        l.starts_with("sentinel_proxy_sessions_closed_total")
            || l.starts_with("sentinel_proxy_session_migrations_total")
            || l.starts_with("sentinel_proxy_held_requests_total")
            || l.starts_with("sentinel_proxy_master_switches_total")
    }) {
        eprintln!("  {line}");
    }
    eprintln!(
        "soak: {rounds} failovers in {elapsed:.0} s, {runs} redis-benchmark runs, {sessions} client \
         sessions, {lost_total} acknowledged writes lost; fds {fds0} -> {fds}, RSS {rss0} -> {rss} KiB"
    );
    assert!(
        rss < rss0 + 8 * 1024,
        "RSS grew from {rss0} to {rss} KiB over {sessions} sessions"
    );
    assert!(proxy.is_running());
}
