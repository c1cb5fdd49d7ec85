//! Several master groups in one proxy: a broker group and a cache group behind the same three
//! real sentinels, each served on its own listener. One event subscription per sentinel serves
//! both; each group routes to its own master; a failover in one group never pauses, holds or
//! moves the other group's clients; /readyz, /status and /metrics speak per group.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::Group;
use sentinel_proxy::config::{Auth, GroupConfig, HostPort};
use support::*;

const CACHE: &str = "cache";

fn group(name: &str, master_name: &str, sentinels: &[HostPort]) -> GroupConfig {
    GroupConfig {
        name: name.into(),
        master_name: master_name.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        read_listen: None,
        sentinels: sentinels.to_vec(),
        sentinel_auth: Auth::default(),
        master_auth: Auth::default(),
        ack: Default::default(),
    }
}

fn text(frame: &OwnedFrame) -> String {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        OwnedFrame::Integer(i) => i.to_string(),
        OwnedFrame::Null => "(nil)".into(),
        other => format!("{other:?}"),
    }
}

/// A client of one group doing `INCR` in a loop on one connection, and a sampler of that
/// group's route, until stopped: what the other group's failover must not disturb.
struct Bystander {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    paused_seen: Arc<AtomicBool>,
    generation: u64,
    group: Arc<Group>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Bystander {
    async fn start(port: u16, group: Arc<Group>, key: &'static str) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let paused_seen = Arc::new(AtomicBool::new(false));
        let mut c = conn(port).await.expect("connect to the group's listener");
        let client = {
            let (stop, ops, errors) = (stop.clone(), ops.clone(), errors.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match cmd(&mut c, &["INCR", key]).await {
                        Ok(OwnedFrame::Integer(_)) => {
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            errors.lock().unwrap().push(format!("{other:?}"));
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let sampler = {
            let (stop, paused_seen, group) = (stop.clone(), paused_seen.clone(), group.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if group.route.load().paused {
                        paused_seen.store(true, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        Bystander {
            stop,
            ops,
            errors,
            paused_seen,
            generation: group.route.generation(),
            group,
            tasks: vec![client, sampler],
        }
    }

    /// Stop, and check the group was left alone: same generation, never paused, every request
    /// answered without error.
    async fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap().clone();
        assert!(
            errors.is_empty(),
            "{what}: the bystander's errors: {errors:?}"
        );
        assert!(
            self.ops.load(Ordering::Relaxed) > 20,
            "{what}: the bystander made no progress"
        );
        assert_eq!(
            self.group.route.generation(),
            self.generation,
            "{what}: the bystander's route changed"
        );
        assert!(
            !self.paused_seen.load(Ordering::Relaxed),
            "{what}: the bystander's route was paused"
        );
    }
}

/// Each sentinel has exactly one pub/sub client: the proxy's one subscription for both groups.
async fn one_subscription_per_sentinel(lab: &Lab) {
    for s in &lab.sentinels {
        eventually(
            Duration::from_secs(10),
            "one proxy subscription on the sentinel",
            || async {
                let mut c = lab.sconn(s.port).await.ok()?;
                let list = text(&cmd(&mut c, &["CLIENT", "LIST"]).await.ok()?);
                let subscribers = list.lines().filter(|l| l.contains(" psub=1 ")).count();
                (subscribers == 1).then_some(())
            },
        )
        .await;
    }
}

/// Through each group's listener, a write lands on that group's master and not the other's.
async fn each_group_routes_to_its_master(lab: &Lab, proxy: &Proxy) {
    let masters = [
        lab.master_port_of(MASTER_NAME).await.unwrap(),
        lab.master_port_of(CACHE).await.unwrap(),
    ];
    for (i, (port, g)) in proxy.groups.iter().enumerate() {
        let key = format!("routed:{}", g.name);
        let mut c = conn(*port).await.unwrap();
        assert_eq!(
            text(&cmd(&mut c, &["SET", &key, &g.name]).await.unwrap()),
            "OK"
        );
        let mut own = lab.rconn(masters[i]).await.unwrap();
        assert_eq!(text(&cmd(&mut own, &["GET", &key]).await.unwrap()), g.name);
        let mut other = lab.rconn(masters[1 - i]).await.unwrap();
        assert_eq!(
            text(&cmd(&mut other, &["GET", &key]).await.unwrap()),
            "(nil)"
        );
    }
}

async fn fail_over(lab: &Lab, proxy: &Proxy, i: usize, name: &str) {
    let old = lab.master_port_of(name).await.unwrap();
    lab.failover_of(name).await;
    let new = lab
        .wait_new_master_of(name, old, Duration::from_secs(30))
        .await;
    let g = &proxy.groups[i].1;
    eventually(
        Duration::from_secs(10),
        "the group's route to move to its new master",
        || async { (g.route.load().target() == Some(addr(new))).then_some(()) },
    )
    .await;
    lab.wait_settled_of(name, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_share_the_sentinels_and_fail_over_apart() {
    let lab = Lab::start_with(LabOptions {
        extra_groups: vec![CACHE],
        ..Default::default()
    })
    .await;
    let sentinels = lab.sentinel_addrs();
    let proxy = Proxy::start_with(sentinels.clone(), |c| {
        c.declared_groups = vec![
            group("broker", MASTER_NAME, &sentinels),
            group(CACHE, CACHE, &sentinels),
        ];
    })
    .await;
    proxy.wait_ready().await;
    assert_eq!(proxy.groups.len(), 2);
    one_subscription_per_sentinel(&lab).await;
    each_group_routes_to_its_master(&lab, &proxy).await;

    // A failover of the broker leaves the cache alone, and the other way round.
    let cache = Bystander::start(proxy.groups[1].0, proxy.groups[1].1.clone(), "bystander").await;
    fail_over(&lab, &proxy, 0, MASTER_NAME).await;
    cache.finish("broker failover").await;
    let broker = Bystander::start(proxy.groups[0].0, proxy.groups[0].1.clone(), "bystander").await;
    fail_over(&lab, &proxy, 1, CACHE).await;
    broker.finish("cache failover").await;
    each_group_routes_to_its_master(&lab, &proxy).await;
    one_subscription_per_sentinel(&lab).await;

    // Per-group metrics: one switch each, labelled; the exposition is valid.
    let (_, metrics) = http_get(proxy.admin, "/metrics").await;
    for g in ["broker", CACHE] {
        let series = format!("sentinel_proxy_master_switches_total{{group=\"{g}\"}} 1");
        assert!(metrics.lines().any(|l| l == series), "{series}\n{metrics}");
        let series = format!("sentinel_proxy_master_available{{group=\"{g}\"}} 1");
        assert!(metrics.lines().any(|l| l == series), "{series}");
    }
    if let Some(complaints) = promtool_check(&metrics) {
        assert!(complaints.is_empty(), "promtool: {complaints}");
    }

    // Readiness and status, for all groups and for one.
    assert_eq!(http_get(proxy.admin, "/readyz").await.0, 200);
    assert_eq!(http_get(proxy.admin, "/readyz?group=cache").await.0, 200);
    assert_eq!(http_get(proxy.admin, "/readyz?group=nope").await.0, 404);
    let (code, body) = http_get(proxy.admin, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let groups = status["groups"].as_array().unwrap();
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broker", CACHE]);
    for (g, port) in groups.iter().zip(&proxy.groups) {
        // The first route (found by a poll), then its failover.
        assert_eq!(g["switches"].as_array().unwrap().len(), 2, "{g}");
        assert_eq!(g["available"], true);
        assert_eq!(g["listen"], format!("127.0.0.1:{}", port.0));
    }
    let (_, body) = http_get(proxy.admin, "/status?group=cache").await;
    let one: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["master_name"], CACHE);
    assert_eq!(
        one["master"],
        format!("127.0.0.1:{}", lab.master_port_of(CACHE).await.unwrap())
    );
}

/// With a group's master gone for good, /readyz names the group that is not ready, and
/// `/readyz?group=` tells the ready one from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_group_without_a_master() {
    let lab = Lab::start().await;
    let sentinels = lab.sentinel_addrs();
    let proxy = Proxy::start_with(sentinels.clone(), |c| {
        c.declared_groups = vec![
            group("broker", MASTER_NAME, &sentinels),
            group("ghost", "no-such-master", &sentinels),
        ];
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the broker group to be ready",
        || async { (http_get(proxy.admin, "/readyz?group=broker").await.0 == 200).then_some(()) },
    )
    .await;
    let (code, body) = http_get(proxy.admin, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("ghost"), "{body}");
    assert_eq!(http_get(proxy.admin, "/readyz?group=ghost").await.0, 503);
    // The broker's clients are served while the other group has no master.
    let mut c = conn(proxy.groups[0].0).await.unwrap();
    assert_eq!(text(&cmd(&mut c, &["PING"]).await.unwrap()), "PONG");
}

/// SIGHUP adds and removes groups of the running binary: a group added gets its listener, a
/// group removed closes its listener and its clients, and the clients of a group the reload
/// keeps are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_groups() {
    use support::binary::Binary;
    let lab = Lab::start_with(LabOptions {
        extra_groups: vec![CACHE],
        ..Default::default()
    })
    .await;
    let (broker_port, cache_port, admin) = (unused_port(), unused_port(), unused_port());
    let sentinels: Vec<String> = lab
        .sentinels
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect();
    let table = |name: &str, master: &str, port: u16| {
        format!(
            "[[group]]\nname = \"{name}\"\nmaster-name = \"{master}\"\nlisten = \"127.0.0.1:{port}\"\n"
        )
    };
    let file_text = |tables: &[String]| {
        format!(
            "metrics-listen = \"127.0.0.1:{admin}\"\nsentinels = [{}]\n{}",
            sentinels.join(", "),
            tables.concat()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    let broker = table("broker", MASTER_NAME, broker_port);
    let cache = table(CACHE, CACHE, cache_port);
    std::fs::write(&file, file_text(std::slice::from_ref(&broker))).unwrap();
    let proxy = Binary::spawn(&["--config", file.to_str().unwrap()], &[]);
    let ready = || async { (http_get(addr(admin), "/readyz").await.0 == 200).then_some(()) };
    eventually(Duration::from_secs(15), "the proxy to be ready", ready).await;
    let mut kept = conn(broker_port).await.unwrap();
    let id = text(&cmd(&mut kept, &["CLIENT", "ID"]).await.unwrap());

    // Added: the cache group gets its listener and its master; the broker's client is untouched.
    std::fs::write(&file, file_text(&[broker.clone(), cache.clone()])).unwrap();
    proxy.signal("-HUP");
    eventually(
        Duration::from_secs(15),
        "the added group to serve",
        || async {
            let mut c = conn(cache_port).await.ok()?;
            (text(&cmd(&mut c, &["SET", "added", "1"]).await.ok()?) == "OK").then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(15), "both groups ready", ready).await;
    let cache_master = lab.master_port_of(CACHE).await.unwrap();
    let mut direct = lab.rconn(cache_master).await.unwrap();
    assert_eq!(
        text(&cmd(&mut direct, &["GET", "added"]).await.unwrap()),
        "1"
    );
    assert_eq!(text(&cmd(&mut kept, &["CLIENT", "ID"]).await.unwrap()), id);
    let (_, body) = http_get(addr(admin), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["groups"].as_array().unwrap().len(), 2, "{status}");

    // Removed: the broker's listener closes and so does its client; the cache serves on.
    let mut cache_client = conn(cache_port).await.unwrap();
    let cache_id = text(&cmd(&mut cache_client, &["CLIENT", "ID"]).await.unwrap());
    std::fs::write(&file, file_text(std::slice::from_ref(&cache))).unwrap();
    proxy.signal("-HUP");
    eventually(
        Duration::from_secs(10),
        "the removed group's listener to close",
        || async {
            std::net::TcpStream::connect(addr(broker_port))
                .is_err()
                .then_some(())
        },
    )
    .await;
    // Closed at its next request boundary: at once, as it is idle (a PING sent before the
    // session saw the stop is still answered).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cmd(&mut kept, &["PING"]).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed group's client is still served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        text(&cmd(&mut cache_client, &["CLIENT", "ID"]).await.unwrap()),
        cache_id
    );
    let (_, body) = http_get(addr(admin), "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, [CACHE]);
    assert_eq!(http_get(addr(admin), "/readyz").await.0, 200);
    let (_, metrics) = http_get(addr(admin), "/metrics").await;
    assert!(
        !metrics.contains("sentinel_proxy_master_available{group=\"broker\"}"),
        "{metrics}"
    );
    assert!(proxy.log().contains("group removed"), "{}", proxy.log());
}
