//! The sentinel client: many sentinels (configured and discovered), outages, hostile or
//! confused sentinels, and switching within milliseconds of the promotion itself.

mod support;

use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::config::Secret;
use support::fake_sentinel::{Behaviour, FakeSentinel};
use support::*;

async fn set_through(port: u16) -> u16 {
    let mut c = conn(port).await.unwrap();
    assert_eq!(
        cmd(&mut c, &["SET", "k", "v"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    node_port(&mut c).await.unwrap()
}

/// Wait until the proxy knows `n` sentinels and is subscribed to all of them.
async fn wait_subscribed(proxy: &Proxy, n: usize) {
    eventually(
        Duration::from_secs(15),
        "subscriptions to every sentinel",
        || async {
            let st = proxy.group.watcher.snapshot();
            (st.sentinels.len() == n && st.sentinels.iter().all(|s| s.subscribed)).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_sentinel_is_skipped() {
    let lab = Lab::start().await;
    let master = lab.master_port().await.unwrap();
    let mut sentinels = vec![hp(unused_port())];
    sentinels.extend(lab.sentinel_addrs());
    let proxy = Proxy::start(sentinels).await;
    assert_eq!(proxy.wait_ready().await, master);
    assert_eq!(set_through(proxy.port).await, master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_sentinels_carry_on_when_the_only_configured_one_dies() {
    let mut lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start(vec![hp(lab.sentinels[0].port)]).await;
    assert_eq!(proxy.wait_ready().await, old);
    // SENTINEL sentinels taught the proxy the other two.
    wait_subscribed(&proxy, 3).await;

    lab.sentinels[0].kill();
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(10)).await;
    assert_eq!(set_through(proxy.port).await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_through_sentinel_outages_and_follows_after_a_restart() {
    let mut lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    assert_eq!(proxy.wait_ready().await, old);
    wait_subscribed(&proxy, 3).await;

    lab.sentinels[0].kill();
    lab.sentinels[1].kill();
    assert_eq!(set_through(proxy.port).await, old, "2 of 3 sentinels down");

    lab.sentinels[2].kill();
    eventually(
        Duration::from_secs(10),
        "the proxy to see every sentinel down",
        || async {
            let st = proxy.group.watcher.snapshot();
            st.sentinels.iter().all(|s| !s.query_ok).then_some(())
        },
    )
    .await;
    assert_eq!(
        set_through(proxy.port).await,
        old,
        "all sentinels down: last master kept"
    );
    let (code, _) = http_get(proxy.admin, "/readyz").await;
    assert_eq!(code, 200);
    let (_, text) = http_get(proxy.admin, "/metrics").await;
    for s in &lab.sentinels {
        let series = format!(
            "sentinel_proxy_sentinel_up{{sentinel=\"127.0.0.1:{}\"}}",
            s.port
        );
        assert_eq!(metric(&text, &series), Some(0.0), "{text}");
    }
    let (_, status) = http_get(proxy.admin, "/status").await;
    assert!(status.contains("no sentinel reachable"), "{status}");

    lab.sentinels[2].restart().await;
    eventually(
        Duration::from_secs(15),
        "resubscription to the restarted sentinel",
        || async {
            let st = proxy.group.watcher.snapshot();
            st.sentinels
                .iter()
                .any(|s| s.subscribed && s.query_ok)
                .then_some(())
        },
    )
    .await;
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(10)).await;
    assert_eq!(set_through(proxy.port).await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_naming_a_replica_is_not_believed() {
    let lab = Lab::start().await;
    let master = lab.master_port().await.unwrap();
    let replica = lab.replicas_of(master)[0];
    let fake = FakeSentinel::start(Behaviour::NamesMaster(hp(replica))).await;
    let proxy = Proxy::start_with(vec![fake.host_port()], |c| {
        c.poll_interval = Duration::from_millis(100);
        c.connect_wait = Duration::from_millis(300);
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "several refused ROLE checks",
        || async {
            let (_, text) = http_get(proxy.admin, "/metrics").await;
            (metric(
                &text,
                "sentinel_proxy_role_checks_total{result=\"not_master\"}",
            )? >= 3.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(proxy.group.route.load().target(), None);
    let (code, _) = http_get(proxy.admin, "/readyz").await;
    assert_eq!(code, 503);
    let mut c = conn(proxy.port).await.unwrap();
    let err = cmd(&mut c, &["SET", "k", "v"]).await.unwrap_err();
    assert!(err.to_string().contains("no master available"), "{err}");
    let mut direct = conn(replica).await.unwrap();
    assert_eq!(
        cmd(&mut direct, &["EXISTS", "k"]).await.unwrap(),
        OwnedFrame::Integer(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_garbage_oversized_and_confused_sentinels_do_not_hold_up_the_real_ones() {
    let lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let hang = FakeSentinel::start(Behaviour::Hang).await;
    let garbage = FakeSentinel::start(Behaviour::Garbage).await;
    let unknown = FakeSentinel::start(Behaviour::UnknownName).await;
    let oversized = FakeSentinel::start(Behaviour::Oversized).await;
    let nowhere = FakeSentinel::start(Behaviour::NamesMaster(hp(unused_port()))).await;
    let mut sentinels = vec![
        hang.host_port(),
        garbage.host_port(),
        unknown.host_port(),
        oversized.host_port(),
        nowhere.host_port(),
    ];
    sentinels.extend(lab.sentinel_addrs());
    let started = Instant::now();
    let proxy = Proxy::start(sentinels).await;
    assert_eq!(proxy.wait_ready().await, old);
    // One sentinel timeout (500 ms) at most, plus the real answers.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(5)).await;
    assert_eq!(set_through(proxy.port).await, new);
}

/// Sentinels that are all hostile: the proxy stays up, routes nowhere, says why, and answers
/// clients with a clear error once `connect-wait` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hostile_sentinels_give_no_route_and_a_clear_error() {
    let oversized = FakeSentinel::start(Behaviour::Oversized).await;
    let nowhere = FakeSentinel::start(Behaviour::NamesMaster(hp(unused_port()))).await;
    let proxy = Proxy::start_with(vec![oversized.host_port(), nowhere.host_port()], |c| {
        c.poll_interval = Duration::from_millis(100);
        c.connect_wait = Duration::from_millis(300);
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "the problems in /status",
        || async {
            let (_, status) = http_get(proxy.admin, "/status").await;
            let st: serde_json::Value = serde_json::from_str(&status).ok()?;
            // The oversized one fails its queries; the other names a node that is not a master.
            let failing = st["sentinels"]
                .as_array()?
                .iter()
                .filter(|s| s["last_error"].is_string())
                .count();
            (failing == 1 && st["problem"] == "no node named by the sentinels verifies as master")
                .then_some(())
        },
    )
    .await;
    assert_eq!(http_get(proxy.admin, "/readyz").await.0, 503);
    assert_eq!(proxy.group.route.load().target(), None);
    let mut c = conn(proxy.port).await.unwrap();
    match cmd(&mut c, &["PING"]).await {
        Err(e) => assert!(e.to_string().contains("no master available"), "{e}"),
        Ok(f) => panic!("expected the no-master error, got {f:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_reported() {
    let fake = FakeSentinel::start(Behaviour::UnknownName).await;
    let proxy = Proxy::start_with(vec![fake.host_port()], |c| {
        c.poll_interval = Duration::from_millis(100);
    })
    .await;
    eventually(Duration::from_secs(5), "the problem in /status", || async {
        let (_, status) = http_get(proxy.admin, "/status").await;
        status
            .contains("the sentinels do not know a master named 'mymaster'")
            .then_some(())
    })
    .await;
    let (code, _) = http_get(proxy.admin, "/readyz").await;
    assert_eq!(code, 503);
}

/// `SENTINEL FAILOVER`: new connections reach the new master within 100 ms of the replica's
/// promotion (Sentinel's own `+switch-master` comes later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_reach_the_new_master_within_100ms_of_its_promotion() {
    let lab = Lab::start().await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start(lab.sentinel_addrs()).await;
    assert_eq!(proxy.wait_ready().await, old);
    wait_subscribed(&proxy, 3).await;

    // Observe the promotion directly: ROLE on both replicas every 2 ms. Sentinel kills normal
    // clients of the promoted replica (CLIENT KILL in the same MULTI as SLAVEOF NO ONE), so
    // reconnect after an error.
    let replicas = lab.replicas_of(old);
    let promotion = tokio::spawn(async move {
        let mut conns: Vec<(u16, Option<_>)> = replicas.iter().map(|p| (*p, None)).collect();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            for (p, slot) in conns.iter_mut() {
                if slot.is_none() {
                    *slot = conn(*p).await.ok();
                }
                let Some(c) = slot.as_mut() else { continue };
                match cmd(c, &["ROLE"]).await {
                    Ok(OwnedFrame::Array(items))
                        if items.first() == Some(&OwnedFrame::BulkString(b"master".to_vec())) =>
                    {
                        return Some((Instant::now(), *p));
                    }
                    Ok(_) => {}
                    Err(_) => *slot = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    });
    let port = proxy.port;
    let lander = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(mut c) = conn(port).await
                && let Ok(p) = node_port(&mut c).await
                && p != old
            {
                return Some((Instant::now(), p));
            }
        }
        None
    });
    let t0 = lab.failover().await;
    let (t_promo, promoted) = promotion.await.unwrap().expect("a replica was promoted");
    let (t_land, landed) = lander
        .await
        .unwrap()
        .expect("a connection reached the new master");
    assert_eq!(landed, promoted);
    let after = t_land.saturating_duration_since(t_promo);
    eprintln!(
        "SENTINEL FAILOVER -> promotion {:.0} ms -> first new connection on it {:.1} ms later",
        (t_promo - t0).as_secs_f64() * 1000.0,
        after.as_secs_f64() * 1000.0
    );
    assert!(
        after <= Duration::from_millis(100),
        "{after:?} after the promotion"
    );
}

/// Sentinels and Redis with passwords: the proxy's own queries and ROLE checks authenticate,
/// clients authenticate themselves through the proxy, and a moved session replays its AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_sentinels_and_redis() {
    let lab = Lab::start_with(LabOptions {
        redis_password: Some("redis-secret-pw".into()),
        sentinel_password: Some("sentinel-secret-pw".into()),
        ..Default::default()
    })
    .await;
    let old = lab.master_port().await.unwrap();
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.sentinel_auth.password = Some(Secret::new("sentinel-secret-pw"));
        c.master_auth.password = Some(Secret::new("redis-secret-pw"));
    })
    .await;
    assert_eq!(proxy.wait_ready().await, old);

    let mut c = conn(proxy.port).await.unwrap();
    assert!(
        cmd(&mut c, &["SET", "k", "v"]).await.is_err(),
        "NOAUTH without AUTH"
    );
    cmd(&mut c, &["AUTH", "redis-secret-pw"]).await.unwrap();
    assert_eq!(set_through_conn(&mut c).await, old);

    lab.failover().await;
    let new = lab.wait_new_master(old, Duration::from_secs(30)).await;
    proxy.wait_routes_to(new, Duration::from_secs(5)).await;
    assert_eq!(
        set_through_conn(&mut c).await,
        new,
        "moved with its AUTH replayed"
    );

    let (_, status) = http_get(proxy.admin, "/status").await;
    assert!(!status.contains("secret-pw"), "{status}");
    assert!(status.contains("\"***\""), "{status}");
}

async fn set_through_conn(c: &mut sentinel_proxy::sentinel::client::RespConn) -> u16 {
    assert_eq!(
        cmd(c, &["SET", "k", "v"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    node_port(c).await.unwrap()
}
