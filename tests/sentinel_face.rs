//! The Sentinel face (`--sentinel-listen`, `src/face.rs`) with real Sentinel-aware clients: redis-py's
//! `Sentinel(...).master_for(...)`, a Celery app with `sentinel://` broker and result backend,
//! and ioredis's `sentinels: [...]` (from npm), all pointed at the proxy's face instead of the
//! lab's sentinels, ride three failovers of the real master with no error; the face names the
//! proxy itself as the master, never the backends. Plus what `redis-cli` sees of it.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_aware_clients_pointed_at_the_proxy_ride_three_failovers() {
    // Installed before the lab starts its clocks.
    let py = venv("celery", "celery", "ensure_celery");
    let modules = bullmq_modules();
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.sentinel_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    proxy.wait_ready().await;
    let face = proxy.face.expect("the face's port");
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let stop_arg = stop.to_str().unwrap().to_string();
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");

    let mut redis_py = Command::new(&py);
    redis_py.arg(here.join("sentinel_face/redis_py.py")).args([
        face.to_string(),
        proxy.port.to_string(),
        stop_arg.clone(),
    ]);
    let mut ioredis = Command::new("node");
    ioredis
        .arg(here.join("sentinel_face/ioredis.js"))
        .args([face.to_string(), stop_arg.clone()])
        .env("NODE_PATH", &modules);
    let mut celery = Command::new(&py);
    celery
        .arg(here.join("real_clients/celery_app.py"))
        .args(["50", "0"])
        .env("PROXY_PORT", proxy.port.to_string())
        .env("SENTINEL_FACE_PORT", face.to_string())
        .env("STOP_FILE", &stop_arg)
        .current_dir(here.join("real_clients"));
    let apps: Vec<_> = [
        ("redis-py", redis_py),
        ("ioredis", ioredis),
        ("celery", celery),
    ]
    .into_iter()
    .map(|(name, mut app)| {
        tokio::task::spawn_blocking(move || (name, app.output().expect("run the application")))
    })
    .collect();

    // Each at work: its counter (Celery: its results, db 1) growing on the master.
    let mut before = eventually(Duration::from_secs(60), "every client at work", || async {
        let p = progress(&lab).await?;
        p.iter().all(|&n| n >= 20).then_some(p)
    })
    .await;
    for round in 1..=3 {
        let old = lab.master_port().await.unwrap();
        lab.failover().await;
        let new = lab.wait_new_master(old, Duration::from_secs(60)).await;
        proxy.wait_routes_to(new, Duration::from_secs(10)).await;
        before = eventually(
            Duration::from_secs(60),
            &format!("every client at work after failover {round}"),
            || async {
                let p = progress(&lab).await?;
                p.iter()
                    .zip(before.iter())
                    .all(|(now, was)| *now >= was + 20)
                    .then_some(p)
            },
        )
        .await;
        lab.wait_settled(Duration::from_secs(60)).await;
    }
    std::fs::write(&stop, b"").unwrap();
    for app in apps {
        let (name, out) = app.await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
                .unwrap_or_else(|e| panic!("{name}: {e}: {stdout}"));
        eprintln!("{name} across three failovers through the Sentinel face: {report}");
        assert_eq!(report["error_count"], 0, "{name}: {report}");
        if name == "celery" {
            assert_eq!(report["lost"], 0, "{report}");
            assert_eq!(report["done"], report["sent"], "{report}");
        }
        if name == "redis-py" {
            // The face named the proxy, never a backend.
            assert_eq!(
                report["named"],
                serde_json::json!(["127.0.0.1", proxy.port]),
                "{report}"
            );
        }
    }
}

/// How far each application got: redis-py's and ioredis's counters, Celery's results (db 1), on
/// the current master.
async fn progress(lab: &Lab) -> Option<[i64; 3]> {
    let mut c = conn(lab.master_port().await?).await.ok()?;
    let count = |reply: OwnedFrame| match reply {
        OwnedFrame::BulkString(b) => String::from_utf8_lossy(&b).parse::<i64>().ok(),
        OwnedFrame::Integer(n) => Some(n),
        _ => None,
    };
    let py = count(cmd(&mut c, &["GET", "face:redis-py"]).await.ok()?).unwrap_or(0);
    let node = count(cmd(&mut c, &["GET", "face:ioredis"]).await.ok()?).unwrap_or(0);
    cmd(&mut c, &["SELECT", "1"]).await.ok()?;
    let results = count(cmd(&mut c, &["DBSIZE"]).await.ok()?).unwrap_or(0);
    Some([py, node, results])
}

/// What a person with `redis-cli -p FACE` sees: Sentinel's answers, naming the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_sees_a_sentinel_that_names_the_proxy() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.sentinel_listen = Some("127.0.0.1:0".parse().unwrap());
        c.announce_host = Some("proxy.example".into());
    })
    .await;
    proxy.wait_ready().await;
    let face = proxy.face.unwrap().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &face])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"]),
        format!("proxy.example\n{}", proxy.port)
    );
    assert_eq!(cli(&["ROLE"]), "sentinel\nmymaster");
    assert_eq!(cli(&["PING"]), "PONG");
    assert!(
        cli(&["GET", "k"]).starts_with("ERR unknown command 'GET'"),
        "{}",
        cli(&["GET", "k"])
    );
    let masters = cli(&["SENTINEL", "masters"]);
    assert!(
        masters.contains(&format!("ip\nproxy.example\nport\n{}", proxy.port)),
        "{masters}"
    );
    assert!(masters.contains("flags\nmaster"), "{masters}");
}

/// A subscriber to `+switch-master` hears of it when the address the proxy gives out changes
/// (here `announce-host`, reloaded), and of nothing when a backend fails over (the proxy hides it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_master_is_told_only_when_the_proxy_address_changes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.sentinel_listen = Some("127.0.0.1:0".parse().unwrap());
        c.announce_host = Some("old.example".into());
    })
    .await;
    let old = proxy.wait_ready().await;
    let mut sub = tokio::net::TcpStream::connect(("127.0.0.1", proxy.face.unwrap()))
        .await
        .unwrap();
    sub.write_all(&multibulk(&["SUBSCRIBE", "+switch-master"]))
        .await
        .unwrap();
    let mut buf = bytes::BytesMut::new();
    assert_eq!(
        next_frame(&mut sub, &mut buf).await.unwrap(),
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"subscribe".to_vec()),
            OwnedFrame::BulkString(b"+switch-master".to_vec()),
            OwnedFrame::Integer(1),
        ])
    );

    // A backend failover: the proxy's address stays, nothing is said.
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(60)).await;
    proxy.wait_routes_to(new, Duration::from_secs(10)).await;
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(2500), sub.read(&mut byte)).await;
    assert!(quiet.is_err(), "told something at a backend failover");

    // The address given out changes: told, in Sentinel's shape.
    let shared = proxy.group.shared.clone();
    let mut config = (*shared.config()).clone();
    config.announce_host = Some("new.example".into());
    shared.reload(std::slice::from_ref(&proxy.group), config);
    let told = tokio::time::timeout(Duration::from_secs(5), next_frame(&mut sub, &mut buf))
        .await
        .expect("told within 5 s")
        .unwrap();
    let p = proxy.port;
    assert_eq!(
        told,
        OwnedFrame::Array(vec![
            OwnedFrame::BulkString(b"message".to_vec()),
            OwnedFrame::BulkString(b"+switch-master".to_vec()),
            OwnedFrame::BulkString(
                format!("mymaster old.example {p} new.example {p}").into_bytes()
            ),
        ])
    );
}
