//! Operator actions on the admin port (`src/operator.rs`, `src/admin.rs`) with real processes:
//! the token guards them; a pause holds new requests until resume (each at most its wait, then the no-master error); a
//! switchover asked of the proxy (by HTTP and by `sentinel-proxy ctl`) under load shows clients
//! nothing: no error, no reconnect, no acknowledged write lost. Runs in the default (pooled)
//! mode and again in 1:1 mode (`SENTINEL_PROXY_TEST_POOL=0`, `scripts/test`).

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::config::Secret;
use support::writer::{Ledger, writer};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "op-token-1";

async fn proxy(lab: &Lab) -> Proxy {
    Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.admin_token = Some(Secret::new(TOKEN));
    })
    .await
}

fn ok() -> OwnedFrame {
    OwnedFrame::SimpleString(b"OK".to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_need_the_admin_token() {
    let lab = Lab::start().await;
    let open = Proxy::start(lab.sentinel_addrs()).await;
    let (code, body) = http_post(open.admin, "/groups/mymaster/pause", Some(TOKEN)).await;
    assert_eq!(code, 403, "no token set: no actions at all ({body})");
    let guarded = proxy(&lab).await;
    guarded.wait_ready().await;
    for token in [None, Some("wrong")] {
        let (code, _) = http_post(guarded.admin, "/groups/mymaster/pause", token).await;
        assert_eq!(code, 401, "{token:?}");
    }
    let (code, _) = http_post(guarded.admin, "/groups/nosuch/pause", Some(TOKEN)).await;
    assert_eq!(code, 404);
    let (code, _) = http_post(
        guarded.admin,
        "/groups/mymaster/pause?seconds=0",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 400);
    // Nothing was held by the refused ones.
    let mut c = conn(guarded.port).await.unwrap();
    assert_eq!(cmd(&mut c, &["SET", "k", "1"]).await.unwrap(), ok());
    let (_, status) = http_get_with(
        guarded.admin,
        "/status",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .await;
    assert!(status.contains("\"held\":false"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_new_requests_until_resume_each_at_most_its_wait() {
    let lab = Lab::start().await;
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.admin_token = Some(Secret::new(TOKEN));
        c.connect_wait = Duration::from_secs(1);
    })
    .await;
    proxy.wait_ready().await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    s.write_all(&multibulk(&["SET", "p", "1"])).await.unwrap();
    assert_eq!(read_reply(&mut s).await, b"+OK\r\n");

    let (code, body) = http_post(proxy.admin, "/groups/mymaster/pause", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"held\":true"), "{body}");
    s.write_all(&multibulk(&["SET", "p", "2"])).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), s.read(&mut byte)).await;
    assert!(early.is_err(), "answered while paused");
    let (code, body) = http_post(proxy.admin, "/groups/mymaster/resume", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"was_held\":true"), "{body}");
    let t = Instant::now();
    assert_eq!(read_reply(&mut s).await, b"+OK\r\n");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Each request waits at most the pause's wait: past it, its client gets the no-master
    // error and is closed, as when no master is known; the pause stays on until resume.
    let (code, _) = http_post(
        proxy.admin,
        "/groups/mymaster/pause?seconds=0.8",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200);
    let t = Instant::now();
    s.write_all(&multibulk(&["SET", "p", "3"])).await.unwrap();
    assert_eq!(
        read_reply(&mut s).await,
        b"-ERR sentinel-proxy: no master available for 'mymaster'\r\n"
    );
    let waited = t.elapsed();
    eprintln!("a request sent in a pause with a 0.8 s wait was refused after {waited:?}");
    assert!(waited >= Duration::from_millis(750), "{waited:?}");
    assert_eq!(s.read(&mut byte).await.unwrap_or(0), 0, "closed after it");
    let mut later = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    later.write_all(&multibulk(&["GET", "p"])).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), later.read(&mut byte)).await;
    assert!(early.is_err(), "answered while still paused");
    let (code, _) = http_post(proxy.admin, "/groups/mymaster/resume", Some(TOKEN)).await;
    assert_eq!(code, 200);
    assert_eq!(read_reply(&mut later).await, b"$1\r\n2\r\n");

    // A new client in a pause longer than --connect-wait (1 s here) waits as long as the pause
    // lets a request wait (1.5 s), in both modes, then gets the same error.
    let (code, _) = http_post(
        proxy.admin,
        "/groups/mymaster/pause?seconds=1.5",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 200);
    let t = Instant::now();
    let mut new = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    new.write_all(&multibulk(&["GET", "p"])).await.unwrap();
    assert_eq!(
        read_reply(&mut new).await,
        b"-ERR sentinel-proxy: no master available for 'mymaster'\r\n"
    );
    let waited = t.elapsed();
    eprintln!("a new client in a pause with a 1.5 s wait was refused after {waited:?}");
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    http_post(proxy.admin, "/groups/mymaster/resume", Some(TOKEN)).await;
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "sentinel_proxy_operator_actions_total{action=\"pause\",result=\"ok\"}"
        ),
        Some(3.0),
        "{text}"
    );
}

/// `redis-benchmark`, a subscriber and two writers through the proxy; a switchover asked of the
/// proxy: no client sees an error or a reconnect, no acknowledged write is lost; then a second
/// one by `sentinel-proxy ctl switchover`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_asked_of_the_proxy_shows_clients_nothing() {
    let lab = Lab::start().await;
    let proxy = proxy(&lab).await;
    let old = proxy.wait_ready().await;

    let mut sub = conn(proxy.port).await.unwrap();
    cmd(&mut sub, &["SUBSCRIBE", "news"]).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let ledgers: Vec<(&'static str, Arc<Mutex<Ledger>>)> =
        vec![("op-long", Arc::default()), ("op-short", Arc::default())];
    let writers: Vec<_> = ledgers
        .iter()
        .map(|(name, l)| {
            writer(
                proxy.port,
                name,
                200,
                name.ends_with("long"),
                l.clone(),
                stop.clone(),
            )
        })
        .collect();
    let bench = tokio::spawn(redis_benchmark(proxy.port, 60_000, 20));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Sentinel may not be ready for a failover just after the lab starts: it refuses, the
    // proxy says why (409) and holds nothing.
    let (answer, refusals) = {
        let mut refusals = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) =
                http_post(proxy.admin, "/groups/mymaster/switchover", Some(TOKEN)).await;
            match code {
                200 => break (body, refusals),
                409 if Instant::now() < deadline => {
                    refusals.push(body);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                _ => panic!("switchover: {code} {body} after {refusals:?}"),
            }
        }
    };
    eprintln!("switchover: {answer} (refused first: {refusals:?})");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let new: u16 = v["to"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_ne!(new, old);
    assert_eq!(v["from"].as_str(), Some(&*format!("127.0.0.1:{old}")));
    let held_ms = v["held_ms"].as_f64().unwrap();
    let events: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        events,
        [
            "held",
            "failover_started",
            "new_master_verified",
            "released"
        ]
    );
    proxy.wait_routes_to(new, Duration::from_secs(5)).await;

    // The subscriber is on the new master, on the same connection.
    subscriber_hears_after(proxy.port, &mut sub, "the switchover").await;

    benchmark_clean(&bench.await.unwrap());

    // A second one, by the command line, as an operator runs it.
    let admin = proxy.admin.to_string();
    let ctl = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(env!("CARGO_BIN_EXE_sentinel-proxy"))
                .args(["ctl", "switchover", "mymaster"])
                .env("SENTINEL_PROXY_METRICS_LISTEN", &admin)
                .env("SENTINEL_PROXY_ADMIN_TOKEN", TOKEN)
                .output()
                .expect("run sentinel-proxy ctl");
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            // Sentinel refuses a failover for a while after one (its failover-timeout).
            if out.status.success() || Instant::now() > deadline || !err.contains("409") {
                return out;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&ctl.stdout);
    assert!(
        ctl.status.success(),
        "ctl: {stdout} {}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    let third: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let third: u16 = third["to"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_ne!(third, new);
    proxy.wait_routes_to(third, Duration::from_secs(5)).await;

    stop.cancel();
    for w in writers {
        w.await.unwrap();
    }
    let mut n = conn(third).await.unwrap();
    for (name, ledger) in &ledgers {
        let (acked, errors, texts) = {
            let l = ledger.lock().unwrap();
            (l.acked.clone(), l.errors, l.error_texts.clone())
        };
        let mut lost = 0;
        for (k, v) in &acked {
            if cmd(&mut n, &["GET", k]).await.unwrap()
                != OwnedFrame::BulkString(v.clone().into_bytes())
            {
                lost += 1;
            }
        }
        eprintln!(
            "{name}: {} acknowledged, {lost} lost, {errors} errors",
            acked.len()
        );
        assert_eq!((errors, lost), (0, 0), "{name}: {texts:?}");
        assert!(acked.len() >= 100, "{name}");
    }
    eprintln!("the first switchover held new requests for {held_ms:.0} ms");
}
