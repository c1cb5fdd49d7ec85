//! Passwords never leave the proxy: not in its logs (debug level, JSON, through client AUTH and a
//! failover that replays it), not in /status, not in /metrics.

mod support;

use std::time::Duration;

use support::binary::Binary;
use support::*;

const REDIS_PW: &str = "redis-pw-7f3a9c";
const SENTINEL_PW: &str = "sentinel-pw-2b8e41";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_status_and_metrics() {
    let lab = Lab::start_with(LabOptions {
        redis_password: Some(REDIS_PW.into()),
        sentinel_password: Some(SENTINEL_PW.into()),
        ..Default::default()
    })
    .await;
    let old = lab.master_port().await.unwrap();
    let (listen, admin) = (unused_port(), unused_port());
    let sentinels: Vec<String> = lab
        .sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let listen_s = format!("127.0.0.1:{listen}");
    let admin_s = format!("127.0.0.1:{admin}");
    let sentinels_s = sentinels.join(",");
    let mut proxy = Binary::spawn(
        &[
            "--listen",
            &listen_s,
            "--metrics-listen",
            &admin_s,
            "--sentinels",
            &sentinels_s,
            "--log-format",
            "json",
            "--master-password",
            REDIS_PW,
        ],
        &[
            ("SENTINEL_PROXY_SENTINEL_PASSWORD", SENTINEL_PW),
            ("RUST_LOG", "debug"),
        ],
    );
    eventually(Duration::from_secs(15), "the proxy to be ready", || async {
        (http_get(addr(admin), "/readyz").await.0 == 200).then_some(())
    })
    .await;

    // A client authenticates through the proxy; then a failover moves it (AUTH replayed).
    let mut c = conn(listen).await.unwrap();
    cmd(&mut c, &["AUTH", REDIS_PW]).await.unwrap();
    cmd(&mut c, &["SET", "k", "v"]).await.unwrap();
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(10), "the proxy to follow", || async {
        let (_, st) = http_get(addr(admin), "/status").await;
        st.contains(&format!("\"master\":\"127.0.0.1:{new}\""))
            .then_some(())
    })
    .await;
    cmd(&mut c, &["SET", "k", "w"]).await.unwrap();

    let (_, status) = http_get(addr(admin), "/status").await;
    let (_, metrics) = http_get(addr(admin), "/metrics").await;
    proxy.signal("-TERM");
    assert_eq!(proxy.wait(), Some(0));
    let log = proxy.log();
    assert!(
        log.contains("route switched to new master"),
        "the log is there: {log}"
    );
    for (what, text) in [("log", &log), ("/status", &status), ("/metrics", &metrics)] {
        for secret in [REDIS_PW, SENTINEL_PW] {
            assert!(!text.contains(secret), "{what} contains a password");
        }
    }
    assert!(status.contains("\"***\""), "{status}");
}
