//! SIGHUP reloads the configuration file of the running binary: changes apply without dropping
//! client connections, an invalid file is rejected and the old configuration stays, and a change
//! that needs a restart is reported as such.

mod support;

use std::time::Duration;

use support::binary::Binary;
use support::*;

fn config_text(lab: &Lab, sentinels: usize, listen: u16, admin: u16, extra: &str) -> String {
    let list: Vec<String> = lab
        .sentinels
        .iter()
        .take(sentinels)
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect();
    format!(
        "listen = \"127.0.0.1:{listen}\"\nmetrics-listen = \"127.0.0.1:{admin}\"\nsentinels = [{}]\n{extra}\n",
        list.join(", ")
    )
}

async fn status(admin: u16) -> serde_json::Value {
    let (_, body) = http_get(addr(admin), "/status").await;
    serde_json::from_str(&body).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_without_dropping_connections() {
    let lab = Lab::start().await;
    let (listen, admin) = (unused_port(), unused_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        config_text(&lab, 2, listen, admin, "connect-wait = \"2s\""),
    )
    .unwrap();

    let proxy = Binary::spawn(&["--config", file.to_str().unwrap()], &[]);
    eventually(Duration::from_secs(15), "the proxy to be ready", || async {
        (http_get(addr(admin), "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let mut c = conn(listen).await.unwrap();
    cmd(&mut c, &["SET", "k", "1"]).await.unwrap();
    assert_eq!(status(admin).await["config"]["connect_wait_ms"], 2000);

    // A valid change: applied, the open connection untouched.
    std::fs::write(
        &file,
        config_text(&lab, 3, listen, admin, "connect-wait = \"7s\""),
    )
    .unwrap();
    proxy.signal("-HUP");
    eventually(Duration::from_secs(5), "the reload to apply", || async {
        let st = status(admin).await;
        (st["config"]["connect_wait_ms"] == 7000
            && st["config"]["sentinels"].as_array().map(Vec::len) == Some(3))
        .then_some(())
    })
    .await;
    cmd(&mut c, &["SET", "k", "2"]).await.unwrap();

    // An invalid file: rejected, the running configuration stays.
    std::fs::write(
        &file,
        "sentinels = [\"127.0.0.1:1\"]\nconect-wait = \"1s\"\n",
    )
    .unwrap();
    proxy.signal("-HUP");
    eventually(
        Duration::from_secs(5),
        "the rejection in the log",
        || async {
            proxy
                .log()
                .contains("configuration reload rejected")
                .then_some(())
        },
    )
    .await;
    assert_eq!(status(admin).await["config"]["connect_wait_ms"], 7000);
    let (_, metrics) = http_get(addr(admin), "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "sentinel_proxy_config_reloads_total{result=\"rejected\"}"
        ),
        Some(1.0)
    );

    // A listen change needs a restart: reported, the old address kept.
    std::fs::write(
        &file,
        config_text(&lab, 3, unused_port(), admin, "connect-wait = \"7s\""),
    )
    .unwrap();
    proxy.signal("-HUP");
    eventually(
        Duration::from_secs(5),
        "the restart notice in the log",
        || async { proxy.log().contains("need a restart").then_some(()) },
    )
    .await;
    assert_eq!(
        status(admin).await["config"]["listen"],
        format!("127.0.0.1:{listen}")
    );
    cmd(&mut c, &["SET", "k", "3"]).await.unwrap();
}
