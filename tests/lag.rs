//! The replication lag a group's master reports, as gauges (`src/lag.rs`), with real processes:
//! replicas caught up, stopped (SIGSTOP) while writes go on, resumed.

mod support;

use std::time::Duration;

use support::*;

/// What an unplanned failover would lose now, as gauges from the master's `INFO replication`:
/// both replicas online and caught up, 0 bytes behind; both stopped (SIGSTOP) while writes go
/// on, they stop acknowledging and the bytes behind grow past what was written; resumed, they
/// catch up and it is 0 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_lag_is_a_gauge() {
    let mut lab = Lab::start().await;
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    let master = proxy.wait_ready().await;
    // The master is asked every 5 s.
    let limit = Duration::from_secs(20);
    wait_metric(proxy.admin, "sentinel_proxy_replicas_online", 2.0, limit).await;
    wait_metric(
        proxy.admin,
        "sentinel_proxy_replication_lag_bytes",
        0.0,
        limit,
    )
    .await;
    let replicas = lab.replicas_of(master);
    let mut signal = |sig: &str| {
        for &p in &replicas {
            lab.proc_by_port(p).signal(sig);
        }
    };
    signal("-STOP");
    let mut c = conn(proxy.port).await.unwrap();
    let big = "x".repeat(16 * 1024);
    for i in 0..8 {
        cmd(&mut c, &["SET", &format!("lag{i}"), &big])
            .await
            .unwrap();
    }
    eventually(
        limit,
        "the bytes behind to pass what was written",
        || async {
            let (_, text) = http_get(proxy.admin, "/metrics").await;
            let behind = metric(&text, "sentinel_proxy_replication_lag_bytes")?;
            (behind >= 8.0 * 16.0 * 1024.0).then_some(())
        },
    )
    .await;
    signal("-CONT");
    wait_metric(
        proxy.admin,
        "sentinel_proxy_replication_lag_bytes",
        0.0,
        limit,
    )
    .await;
}
