//! Live upgrade, its first part (`src/upgrade.rs`), with the real binary: a successor started
//! with `--takeover` receives the running proxy's listening sockets; no new connection is refused
//! while the two change places; the old process closes its clients at their next request
//! boundary (drain-and-close: handing them over is not done yet) and exits; the new one serves
//! on the same ports, and listens for its own successor.

mod support;

use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use support::binary::Binary;
use support::*;

fn args(lab: &Lab, listen: u16, admin: u16, socket: &str) -> Vec<String> {
    let sentinels: Vec<String> = lab
        .sentinel_addrs()
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let mut a: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--metrics-listen",
        &format!("127.0.0.1:{admin}"),
        "--sentinels",
        &sentinels.join(","),
        "--upgrade-socket",
        socket,
        "--shutdown-timeout",
        "10s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(pool) = std::env::var("SENTINEL_PROXY_TEST_POOL") {
        a.extend(["--pool".to_string(), pool]);
    }
    a
}

fn spawn(args: &[String], extra: &[&str]) -> Binary {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    Binary::spawn(&all, &[("RUST_LOG", "info"), ("NO_COLOR", "1")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_takes_the_listening_sockets_and_the_old_process_drains() {
    let lab = Lab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let socket = socket.to_str().unwrap().to_string();
    let (port, admin) = (unused_port(), unused_port());
    let a = args(&lab, port, admin, &socket);
    let mut old = spawn(&a, &[]);
    eventually(Duration::from_secs(15), "the old proxy ready", || async {
        (http_get(addr(admin), "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let mut idle = conn(port).await.unwrap();
    assert_eq!(
        cmd(&mut idle, &["SET", "up", "1"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );

    // New connections keep coming while the processes change places.
    let stop = tokio_util::sync::CancellationToken::new();
    let prober = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.is_cancelled() {
                let asked = async {
                    let mut c = conn(port).await?;
                    cmd(&mut c, &["GET", "up"]).await
                };
                match tokio::time::timeout(Duration::from_secs(5), asked).await {
                    Ok(Ok(_)) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let began = Instant::now();
    let mut new = spawn(&a, &["--takeover"]);
    let code = tokio::task::spawn_blocking(move || {
        let code = old.wait();
        (code, old.log())
    });
    let (code, old_log) = tokio::time::timeout(Duration::from_secs(30), code)
        .await
        .expect("the old process exits")
        .unwrap();
    let took = began.elapsed();
    assert_eq!(code, Some(0), "{old_log}");
    assert!(old_log.contains("the successor serves"), "{old_log}");
    assert!(
        new.log().contains("took over the listening sockets"),
        "{}",
        new.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (ok, failed) = prober.await.unwrap();
    eprintln!(
        "the old process exited {took:?} after the successor started; {ok} connections served meanwhile, {} failed",
        failed.len()
    );
    assert_eq!(failed, Vec::<String>::new(), "no connection refused or cut");
    assert!(ok >= 10, "{ok}");

    // The old process's client was closed at a boundary (drain-and-close); a new one is served
    // by the successor, on the same ports.
    assert!(cmd(&mut idle, &["GET", "up"]).await.is_err());
    let mut c = conn(port).await.unwrap();
    assert_eq!(
        cmd(&mut c, &["GET", "up"]).await.unwrap(),
        OwnedFrame::BulkString(b"1".to_vec())
    );
    assert_eq!(http_get(addr(admin), "/healthz").await.0, 200);
    assert!(new.is_running());
    // And it listens for its own successor.
    assert!(std::path::Path::new(&socket).exists());
}
