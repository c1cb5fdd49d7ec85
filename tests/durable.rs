//! Durable acknowledgements (`ack = replicas:N`, `src/session/ack.rs`) with real processes:
//! what is held and what is not while replicas are stopped, and a master that dies with writes
//! no replica has: the proxy without durable acks loses acknowledged writes, the one with them
//! loses none.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::OwnedFrame;
use sentinel_proxy::config::Ack;
use support::writer::{Ledger, writer};
use support::*;

/// `GET` in a loop on one connection until `stop`: how many were answered, and the errors.
async fn reader(port: u16, stop: tokio_util::sync::CancellationToken) -> (u64, Vec<String>) {
    let (mut reads, mut errors) = (0, Vec::new());
    let mut c = support::writer::patient(port).await.unwrap();
    while !stop.is_cancelled() {
        match cmd(&mut c, &["GET", "durable:read"]).await {
            Ok(_) => reads += 1,
            Err(e) => {
                errors.push(e.to_string());
                c = support::writer::patient(port).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (reads, errors)
}

/// A proxy with `ack`, pooled (two connections at least) or 1:1 (`SENTINEL_PROXY_TEST_POOL=0`:
/// the durable acks of dedicated sessions, `session/barrier.rs`).
async fn proxy(lab: &Lab, ack: Ack) -> Proxy {
    Proxy::start_with(lab.sentinel_addrs(), |c| {
        if c.pool > 0 {
            c.pool = c.pool.max(2);
        }
        c.ack = ack;
        c.ack_timeout = Duration::from_millis(500);
        c.connect_wait = Duration::from_secs(20);
    })
    .await
}

fn bulk(s: &str) -> OwnedFrame {
    OwnedFrame::BulkString(s.as_bytes().to_vec())
}

/// Replicas stopped: a write waits out the ack timeout and is answered `-NOREPLICAS` (the master
/// has it); a read of another client is answered at once, not behind it; a read the same client
/// pipelined after the write comes after it, with its real answer. Then, the master SIGKILLed
/// with writes no replica has (replicas frozen and their links cut, so nothing reaches them):
/// after the failover, the proxy without durable acks has lost acknowledged writes, the one
/// with them none, and each write answered with an error is there whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_durable_acks_no_acknowledged_write_dies_with_the_master() {
    let mut lab = Lab::start().await;
    let plain = proxy(&lab, Ack::Master).await;
    let durable = proxy(&lab, Ack::Replicas(1)).await;
    let master = durable.wait_ready().await;
    plain.wait_ready().await;

    // Replicas healthy: writes and reads pass, one WAIT per batch of writes.
    let mut c = conn(durable.port).await.unwrap();
    assert_eq!(
        cmd(&mut c, &["SET", "k", "1"]).await.unwrap(),
        OwnedFrame::SimpleString(b"OK".to_vec())
    );
    assert_eq!(cmd(&mut c, &["GET", "k"]).await.unwrap(), bulk("1"));
    let (_, text) = http_get(durable.admin, "/metrics").await;
    assert!(metric(&text, "sentinel_proxy_ack_waits_total").unwrap() >= 1.0);

    // Replicas stopped.
    let replicas = lab.replicas_of(master);
    for &p in &replicas {
        lab.proc_by_port(p).signal("-STOP");
    }
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", durable.port))
        .await
        .unwrap();
    let began = Instant::now();
    use tokio::io::AsyncWriteExt;
    raw.write_all(&[multibulk(&["SET", "k", "2"]), multibulk(&["GET", "k"])].concat())
        .await
        .unwrap();
    // Once the master has the write, another client's read is not held behind it.
    eventually(
        Duration::from_secs(5),
        "the write on the master",
        || async {
            let mut direct = lab.rconn(master).await.ok()?;
            (cmd(&mut direct, &["GET", "k"]).await.ok()? == bulk("2")).then_some(())
        },
    )
    .await;
    let mut other = conn(durable.port).await.unwrap();
    let t = Instant::now();
    assert_eq!(cmd(&mut other, &["GET", "k"]).await.unwrap(), bulk("2"));
    let read_took = t.elapsed();
    // Both replies come together, once the WAIT is answered.
    let both = read_reply(&mut raw).await;
    let write_took = began.elapsed();
    let both = String::from_utf8_lossy(&both).into_owned();
    let (first, second) = both.split_once("\r\n").unwrap();
    eprintln!(
        "replicas stopped: a write answered after {write_took:?}: {first:?}; another client's read took {read_took:?}"
    );
    assert!(first.starts_with("-NOREPLICAS "), "{first}");
    assert!(write_took >= Duration::from_millis(450), "{write_took:?}");
    assert!(read_took < Duration::from_millis(300), "{read_took:?}");
    assert_eq!(second, "$1\r\n2\r\n", "the pipelined read after the write");
    // A transaction sent step by step (pooled mode lends the client a connection for it: a
    // dedicated session, as in 1:1 mode): `+QUEUED` passes at once, EXEC waits and is refused.
    let mut tx = conn(durable.port).await.unwrap();
    let ok = OwnedFrame::SimpleString(b"OK".to_vec());
    assert_eq!(cmd(&mut tx, &["MULTI"]).await.unwrap(), ok);
    let t = Instant::now();
    let queued = cmd(&mut tx, &["SET", "k", "3"]).await.unwrap();
    let queued_took = t.elapsed();
    assert_eq!(queued, OwnedFrame::SimpleString(b"QUEUED".to_vec()));
    let t = Instant::now();
    let exec = cmd(&mut tx, &["EXEC"]).await;
    let exec_took = t.elapsed();
    eprintln!(
        "a transaction step by step: QUEUED after {queued_took:?}, EXEC after {exec_took:?}: {exec:?}"
    );
    assert!(queued_took < Duration::from_millis(300), "{queued_took:?}");
    assert!(
        exec.as_ref()
            .is_err_and(|e| e.to_string().contains("NOREPLICAS")),
        "{exec:?}"
    );
    assert!(exec_took >= Duration::from_millis(450), "{exec_took:?}");
    let (_, text) = http_get(durable.admin, "/metrics").await;
    assert!(metric(&text, "sentinel_proxy_ack_refused_total").unwrap() >= 2.0);
    for &p in &replicas {
        lab.proc_by_port(p).signal("-CONT");
    }
    lab.wait_replicated(master, Duration::from_secs(20)).await;

    // Two writers through each proxy, then writes no replica gets, then the master dies.
    let stop = tokio_util::sync::CancellationToken::new();
    let ledgers: Vec<(&str, bool, Arc<Mutex<Ledger>>)> = vec![
        ("plain-long", false, Arc::default()),
        ("plain-short", false, Arc::default()),
        ("durable-long", true, Arc::default()),
        ("durable-short", true, Arc::default()),
    ];
    let writers: Vec<_> = ledgers
        .iter()
        .map(|(name, durable_one, ledger)| {
            let port = if *durable_one {
                durable.port
            } else {
                plain.port
            };
            let long = name.ends_with("long");
            writer(port, name, 200, long, ledger.clone(), stop.clone())
        })
        .collect();
    // And a reader through each: a read in flight when the master dies is sent again to the
    // new master, so readers see no error.
    let readers: Vec<_> = [plain.port, durable.port]
        .into_iter()
        .map(|port| tokio::spawn(reader(port, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await; // acknowledged and replicated
    for &p in &replicas {
        lab.proc_by_port(p).signal("-STOP");
    }
    // Without its replica links, the master acknowledges writes no replica will ever read
    // (stopped replicas would otherwise find them queued in their sockets when thawed).
    let mut m = lab.rconn(master).await.unwrap();
    cmd(&mut m, &["CLIENT", "KILL", "TYPE", "replica"])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lab.proc_by_port(master).kill();
    let killed_at = Instant::now();
    for &p in &replicas {
        lab.proc_by_port(p).signal("-CONT");
    }
    let new = lab.wait_new_master(master, Duration::from_secs(30)).await;
    durable.wait_routes_to(new, Duration::from_secs(10)).await;
    plain.wait_routes_to(new, Duration::from_secs(10)).await;
    eprintln!(
        "kill -9 of {master}: {new} promoted, routed {:.1} s later",
        killed_at.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // writes on the new master
    stop.cancel();
    for w in writers {
        w.await.unwrap();
    }
    for ((name, p), r) in [("plain", &plain), ("durable", &durable)]
        .into_iter()
        .zip(readers)
    {
        let (reads, errors) = r.await.unwrap();
        let (_, text) = http_get(p.admin, "/metrics").await;
        let again = metric(&text, "sentinel_proxy_requests_sent_again_total").unwrap_or(0.0);
        eprintln!(
            "{name} reader: {reads} reads, {} errors; the proxy sent {again} requests again",
            errors.len()
        );
        assert!(reads >= 100, "{name} read too little: {reads}");
        assert_eq!(errors, Vec::<String>::new(), "{name} reader");
    }

    let mut n = conn(new).await.unwrap();
    let mut lost_by = Vec::new();
    for (name, durable_one, ledger) in &ledgers {
        let (acked, attempts, errors, texts) = {
            let l = ledger.lock().unwrap();
            (l.acked.clone(), l.attempts, l.errors, l.error_texts.clone())
        };
        let (mut lost, mut present, mut absent) = (0, 0, 0);
        for i in 1..=attempts {
            let key = format!("{name}:{i}");
            let got = cmd(&mut n, &["GET", &key]).await.unwrap();
            match acked.get(&key) {
                Some(v) if got != bulk(v) => lost += 1,
                Some(_) => {}
                // Not acknowledged: the write is there whole, or not at all.
                None if got == bulk(&i.to_string()) => present += 1,
                None if got == OwnedFrame::Null => absent += 1,
                None => panic!("{key} is {got:?}"),
            }
        }
        let refused = texts.iter().filter(|t| t.contains("NOREPLICAS")).count();
        eprintln!(
            "{name}: {attempts} writes, {} acknowledged, {lost} of them lost; {errors} errors (first ten: {refused} -NOREPLICAS): {present} present, {absent} absent",
            acked.len()
        );
        lost_by.push((*name, *durable_one, lost, acked.len()));
    }
    let plain_lost: usize = lost_by.iter().filter(|l| !l.1).map(|l| l.2).sum();
    let durable_lost: usize = lost_by.iter().filter(|l| l.1).map(|l| l.2).sum();
    assert!(
        plain_lost > 0,
        "the test must catch the loss it guards against: {lost_by:?}"
    );
    assert_eq!(durable_lost, 0, "{lost_by:?}");
    for (name, _, _, acked) in &lost_by {
        assert!(*acked >= 100, "{name} wrote too little: {acked}");
    }
}
