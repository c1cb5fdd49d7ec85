//! The read port, against a real lab (a master, two replicas, three sentinels): clients spread
//! over the healthy replicas, least connections first; writes get the replica's `-READONLY`; a
//! replica killed moves its clients to the other at a request boundary with no error; a replica
//! that stops acknowledging (SIGSTOP) leaves the pool and comes back when it resumes; after a
//! failover the promoted replica leaves the pool and its clients go on on a replica.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::sentinel::client::RespConn;
use support::*;

fn text(frame: &OwnedFrame) -> String {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        OwnedFrame::Error(e) => e.clone(),
        OwnedFrame::Integer(i) => i.to_string(),
        OwnedFrame::Null => "(nil)".into(),
        other => format!("{other:?}"),
    }
}

/// The port of the node a proxied connection reaches.
async fn node(c: &mut RespConn) -> u16 {
    node_port(c).await.expect("the node's port")
}

/// The replicas /status lists in the read pool, with their clients.
async fn pool(proxy: &Proxy) -> HashMap<u16, u64> {
    let (_, body) = http_get(proxy.admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    status["read"]["replicas"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|e| {
                    let port = e["address"].as_str()?.rsplit(':').next()?.parse().ok()?;
                    Some((port, e["clients"].as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_pool(proxy: &Proxy, want: &[u16], what: &str) {
    let mut want = want.to_vec();
    want.sort_unstable();
    eventually(Duration::from_secs(20), what, || async {
        let mut now: Vec<u16> = pool(proxy).await.into_keys().collect();
        now.sort_unstable();
        (now == want).then_some(())
    })
    .await;
}

async fn read_proxy(lab: &Lab) -> Proxy {
    let proxy = Proxy::start_with(lab.sentinel_addrs(), |c| {
        c.read_listen = Some("127.0.0.1:0".parse().unwrap());
        c.read_max_lag = 64 * 1024;
    })
    .await;
    proxy.wait_ready().await;
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_healthy_replicas_and_follow_their_health() {
    let mut lab = Lab::start().await;
    let master = lab.master_port().await.unwrap();
    let replicas = lab.replicas_of(master);
    let proxy = read_proxy(&lab).await;
    let read = proxy.read_port.expect("a read port");
    wait_pool(&proxy, &replicas, "both replicas in the read pool").await;

    let mut w = conn(proxy.port).await.unwrap();
    assert_eq!(text(&cmd(&mut w, &["SET", "k", "v"]).await.unwrap()), "OK");
    lab.wait_replicated(master, Duration::from_secs(10)).await;

    // Ten clients: five on each replica, each reads what the master has.
    let mut clients = Vec::new();
    let mut on: HashMap<u16, usize> = HashMap::new();
    for _ in 0..10 {
        let mut c = conn(read).await.unwrap();
        assert_eq!(text(&cmd(&mut c, &["GET", "k"]).await.unwrap()), "v");
        *on.entry(node(&mut c).await).or_default() += 1;
        clients.push(c);
    }
    assert_eq!(on.len(), 2, "{on:?}");
    assert!(on.values().all(|n| *n == 5), "{on:?}");
    assert!(!on.contains_key(&master));
    // Writes get Redis's own answer from the replica.
    let refused = format!("{:?}", cmd(&mut clients[0], &["SET", "x", "1"]).await);
    assert!(refused.contains("READONLY"), "{refused}");

    // A replica killed: its clients go on on the other, each at its next request, no error.
    let (dead, alive) = (replicas[0], replicas[1]);
    lab.proc_by_port(dead).kill();
    for c in &mut clients {
        assert_eq!(text(&cmd(c, &["GET", "k"]).await.unwrap()), "v");
        assert_eq!(node(c).await, alive);
    }
    wait_pool(&proxy, &[alive], "the dead replica out of the pool").await;
    let mut fresh = conn(read).await.unwrap();
    assert_eq!(node(&mut fresh).await, alive);

    // It comes back, and rejoins.
    lab.proc_by_port(dead).restart().await;
    wait_pool(&proxy, &replicas, "the restarted replica back in the pool").await;

    // A replica that stops (SIGSTOP) stops acknowledging and falls behind: out of the pool,
    // new read clients go to the other; back when it resumes.
    lab.proc_by_port(dead).signal("-STOP");
    let big = "x".repeat(16 * 1024);
    for i in 0..8 {
        cmd(&mut w, &["SET", &format!("big{i}"), &big])
            .await
            .unwrap();
    }
    wait_pool(&proxy, &[alive], "the stopped replica out of the pool").await;
    for _ in 0..4 {
        let mut c = conn(read).await.unwrap();
        assert_eq!(node(&mut c).await, alive);
    }
    lab.proc_by_port(dead).signal("-CONT");
    wait_pool(&proxy, &replicas, "the resumed replica back in the pool").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promoted_replica_leaves_the_read_pool() {
    let lab = Lab::start().await;
    let master = lab.master_port().await.unwrap();
    let proxy = read_proxy(&lab).await;
    let read = proxy.read_port.unwrap();
    wait_pool(
        &proxy,
        &lab.replicas_of(master),
        "both replicas in the read pool",
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(conn(read).await.unwrap());
    }
    for c in &mut clients {
        cmd(c, &["PING"]).await.unwrap();
    }

    lab.failover().await;
    let new = lab.wait_new_master(master, Duration::from_secs(30)).await;
    lab.wait_settled(Duration::from_secs(60)).await;
    wait_pool(
        &proxy,
        &lab.replicas_of(new),
        "the new master's replicas in the pool",
    )
    .await;
    // Every read client goes on with no error, and ends on a replica of the new master (it may
    // pass by the master while the other replica re-syncs: read-fallback = master).
    let replicas = lab.replicas_of(new);
    for c in &mut clients {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert_eq!(text(&cmd(c, &["PING"]).await.unwrap()), "PONG");
            if replicas.contains(&node(c).await) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a read client stays off the replicas"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
