//! Measurement, not a gate: the same acknowledged-write checker through HAProxy with the usual
//! `role:master` tcp-check, across the same kind of planned failovers, for the comparison in the
//! closing notes. Needs Debian's `haproxy`; run it by hand:
//!
//!     cargo test --release --test peers -- --ignored --nocapture

mod support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use support::writer::{Ledger, writer};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of HAProxy; needs the haproxy binary"]
async fn haproxy_role_check_through_planned_failovers() {
    let lab = Lab::start().await;
    let port = unused_port();
    let servers: String = lab
        .redis
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "    server r{i} 127.0.0.1:{} check inter 1s on-marked-down shutdown-sessions\n",
                r.port
            )
        })
        .collect();
    let cfg = format!(
        "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1h\n    timeout server 1h\n\
         frontend redis\n    bind 127.0.0.1:{port}\n    default_backend masters\n\
         backend masters\n    option tcp-check\n    tcp-check connect\n\
         \x20   tcp-check send PING\\r\\n\n    tcp-check expect string +PONG\n\
         \x20   tcp-check send info\\ replication\\r\\n\n    tcp-check expect string role:master\n\
         \x20   tcp-check send QUIT\\r\\n\n    tcp-check expect string +OK\n{servers}"
    );
    let path = lab.dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut ha = Command::new("haproxy")
        .args(["-f", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy installed");
    eventually(Duration::from_secs(10), "haproxy to route", || async {
        let mut c = conn(port).await.ok()?;
        cmd(&mut c, &["PING"]).await.ok().map(|_| ())
    })
    .await;

    let stop = tokio_util::sync::CancellationToken::new();
    let long = Arc::new(Mutex::new(Ledger::default()));
    let short = Arc::new(Mutex::new(Ledger::default()));
    let w1 = writer(port, "long", 250, true, long.clone(), stop.clone());
    let w2 = writer(port, "short", 250, false, short.clone(), stop.clone());
    let mut master = lab.master_port().await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lab.failover().await;
        master = lab.wait_new_master(master, Duration::from_secs(30)).await;
        lab.wait_settled(Duration::from_secs(60)).await;
    }
    stop.cancel();
    w1.await.unwrap();
    w2.await.unwrap();
    let _ = ha.kill();
    let _ = ha.wait();

    let mut c = conn(master).await.unwrap();
    for (name, ledger) in [("long-lived", &long), ("per-write", &short)] {
        let (acked, attempts, errors) = {
            let l = ledger.lock().unwrap();
            (l.acked.clone(), l.attempts, l.errors)
        };
        let mut lost = 0;
        for (k, v) in &acked {
            if cmd(&mut c, &["GET", k]).await.unwrap()
                != OwnedFrame::BulkString(v.as_bytes().to_vec())
            {
                lost += 1;
            }
        }
        eprintln!(
            "HAProxy {name} writer: {attempts} attempts, {} acked, {errors} errors, {lost} acked writes lost over 3 failovers",
            acked.len()
        );
        assert!(!acked.is_empty());
    }
}
