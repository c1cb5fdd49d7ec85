//! The proxy follows real Sentinel failovers: planned (`SENTINEL FAILOVER`) and a crash (kill -9).

mod support;

use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::config::Auth;
use sentinel_proxy::sentinel::client::{RespConn, frame_text};
use support::*;
use tokio::sync::mpsc;

/// The moment the first sentinel publishes `+switch-master` (Sentinel "reporting" the new master).
async fn first_switch_master(lab: &Lab) -> mpsc::Receiver<Instant> {
    let (tx, rx) = mpsc::channel(8);
    for s in &lab.sentinels {
        let mut c = conn(s.port).await.unwrap();
        cmd(&mut c, &["SUBSCRIBE", "+switch-master"]).await.unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(frame) = c.read_frame().await {
                if let OwnedFrame::Array(items) = &frame
                    && items.first().and_then(frame_text) == Some("message")
                {
                    let _ = tx.send(Instant::now()).await;
                    return;
                }
            }
        });
    }
    rx
}

/// How many ECHO commands a node has executed (INFO commandstats).
async fn echo_calls(port: u16) -> u64 {
    let mut c = conn(port).await.unwrap();
    let info = cmd(&mut c, &["INFO", "commandstats"]).await.unwrap();
    let text = frame_text(&info).unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("cmdstat_echo:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_planned_failover() {
    let lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    assert_eq!(proxy.wait_ready().await, old);

    // A connection opened before the failover.
    let mut before = conn(proxy.port).await.unwrap();
    assert_eq!(node_port(&mut before).await.unwrap(), old);

    let mut switch_reported = first_switch_master(&lab).await;
    // A writer opening a new connection through the proxy per write, until one lands elsewhere.
    let port = proxy.port;
    let writer = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut i = 0u64;
        while Instant::now() < deadline {
            i += 1;
            if let Ok(mut c) = conn(port).await
                && cmd(&mut c, &["SET", "writer", &i.to_string()])
                    .await
                    .is_ok()
                && let Ok(p) = node_port(&mut c).await
                && p != old
            {
                return Some((Instant::now(), p));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    });

    let t0 = lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    let (t_write, landed) = writer
        .await
        .unwrap()
        .expect("a write reached the new master");
    assert_eq!(landed, new);
    let t_switch = tokio::time::timeout(Duration::from_secs(30), switch_reported.recv())
        .await
        .expect("+switch-master within 30 s")
        .unwrap();
    eprintln!(
        "planned failover: SENTINEL FAILOVER -> first write on new master {:.0} ms; \
         -> first +switch-master {:.0} ms",
        ms(t_write - t0),
        ms(t_switch - t0)
    );
    assert!(
        t_write <= t_switch + Duration::from_secs(1),
        "a new connection reached the new master {:.0} ms after +switch-master",
        ms(t_write - t_switch)
    );

    // After the swap, the connection from before must not reach the old master. ECHO is not
    // replicated, so the old master's ECHO count moves only if a client sends it ECHO.
    proxy.wait_routes_to(new, Duration::from_secs(5)).await;
    let old_echoes = echo_calls(old).await;
    let new_echoes = echo_calls(new).await;
    match cmd(&mut before, &["ECHO", "after-switch-marker"]).await {
        Err(_) => {} // closed by the proxy: the client reconnects and lands on the new master
        Ok(_) => assert_eq!(
            echo_calls(new).await,
            new_echoes + 1,
            "answered by the new master"
        ),
    }
    assert_eq!(
        echo_calls(old).await,
        old_echoes,
        "a client command reached the old master after the switch"
    );

    // The proxy reports it, in metrics that follow the exposition conventions.
    let text = assert_ready_after_switches(&proxy, 1.0).await;
    match promtool_check(&text) {
        Some(complaints) => assert_eq!(complaints, "", "promtool check metrics"),
        None => eprintln!("promtool not installed: `promtool check metrics` skipped"),
    }
    assert_eq!(
        metric(
            &text,
            &format!("sentinel_proxy_master_info{{address=\"127.0.0.1:{new}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains(&format!("address=\"127.0.0.1:{old}\"")),
        "{text}"
    );
    let (_, status) = http_get(proxy.admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["master"], format!("127.0.0.1:{new}"));
    let last = status["switches"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["to"], format!("127.0.0.1:{new}"));
    eprintln!("switch record: {last}");

    // The failover as the proxy lived it: fence, verification, swap, drain, in that order.
    let timeline = eventually(
        Duration::from_secs(10),
        "the drain in the timeline",
        || async {
            let (_, st) = http_get(proxy.admin, "/status").await;
            let st: serde_json::Value = serde_json::from_str(&st).ok()?;
            let last = st["failovers"].as_array()?.last()?.clone();
            last["drained_ms"].as_f64().is_some().then_some(last)
        },
    )
    .await;
    eprintln!("failover timeline: {timeline}");
    assert_eq!(timeline["outcome"], "switched");
    assert_eq!(timeline["from"], format!("127.0.0.1:{old}"));
    assert_eq!(timeline["to"], format!("127.0.0.1:{new}"));
    let step = |k: &str| {
        timeline[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {timeline}"))
    };
    assert!(step("paused_ms") <= step("verified_ms"), "{timeline}");
    assert!(step("verified_ms") <= step("swapped_ms"), "{timeline}");
    assert!(step("swapped_ms") <= step("drained_ms"), "{timeline}");

    // The new master was asked what commands it has (`COMMAND`), and the proxy's hand list
    // agrees with it on every command both know: which ones write, which ones block.
    let commands = eventually(
        Duration::from_secs(10),
        "the new master's commands in /status",
        || async {
            let (_, st) = http_get(proxy.admin, "/status").await;
            let st: serde_json::Value = serde_json::from_str(&st).ok()?;
            let c = st["commands"].clone();
            (c["learned_from"] == format!("127.0.0.1:{new}")).then_some(c)
        },
    )
    .await;
    eprintln!("commands: {commands}");
    assert!(commands["count"].as_u64().unwrap() > 200, "{commands}");
    let differ = &commands["differ_from_hand_list"];
    assert_eq!(differ["writes"], serde_json::json!([]), "{commands}");
    assert_eq!(differ["blocking"], serde_json::json!([]), "{commands}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_kill_9_of_the_master() {
    let mut lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        // Sentinel needs down-after (1 s) plus election and promotion: a patient client waits.
        c.connect_wait = Duration::from_secs(30);
    })
    .await;
    assert_eq!(proxy.wait_ready().await, old);
    let mut before = RespConn::connect(&hp(proxy.port), &Auth::default(), Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(node_port(&mut before).await.unwrap(), old);

    lab.proc_by_port(old).kill();
    let t_kill = Instant::now();

    // The connection that was idle on the dead master is held, then moved to the new master.
    assert_eq!(
        cmd(&mut before, &["PING"]).await.unwrap(),
        OwnedFrame::SimpleString(b"PONG".to_vec())
    );
    let moved_to = node_port(&mut before).await.unwrap();
    assert_ne!(moved_to, old);

    // A new client during the outage sees latency, not an error.
    let mut patient = RespConn::connect(&hp(proxy.port), &Auth::default(), Duration::from_secs(40))
        .await
        .unwrap();
    assert_eq!(
        cmd(&mut patient, &["SET", "patient", "1"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    let t_write = Instant::now();
    let landed = node_port(&mut patient).await.unwrap();
    assert_ne!(landed, old);
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    assert_eq!(landed, new);
    assert_eq!(moved_to, new);
    eprintln!(
        "kill -9: first write on the new master {:.0} ms after the kill",
        ms(t_write - t_kill)
    );

    let text = assert_ready_after_switches(&proxy, 1.0).await;
    assert!(metric(&text, "sentinel_proxy_backend_connect_failures_total").is_some());
}
