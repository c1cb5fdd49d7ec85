//! Passwords never leave the proxy: not in its logs (debug level, JSON, through client AUTH and a
//! failover that replays it), not in /status, not in /metrics.

mod support;

use std::time::Duration;

use support::binary::Binary;
use support::*;

const REDIS_PW: &str = "redis-pw-7f3a9c";
const SENTINEL_PW: &str = "sentinel-pw-2b8e41";

/// The binary on free ports in front of `lab`, logging JSON at debug level, with `args` and
/// `env` besides; returned once it is ready, with its client and admin ports.
async fn spawn_proxy(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> (Binary, u16, u16) {
    let (listen, admin) = (unused_port(), unused_port());
    let sentinels: Vec<String> = lab
        .sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let (listen_s, admin_s) = (format!("127.0.0.1:{listen}"), format!("127.0.0.1:{admin}"));
    let sentinels = sentinels.join(",");
    let mut all = vec![
        "--listen",
        &listen_s,
        "--metrics-listen",
        &admin_s,
        "--sentinels",
        &sentinels,
        "--log-format",
        "json",
    ];
    all.extend_from_slice(args);
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "debug"));
    let proxy = Binary::spawn(&all, &env);
    eventually(Duration::from_secs(15), "the proxy to be ready", || async {
        (http_get(addr(admin), "/readyz").await.0 == 200).then_some(())
    })
    .await;
    (proxy, listen, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_status_and_metrics() {
    let lab = Lab::start_with(LabOptions {
        redis_password: Some(REDIS_PW.into()),
        sentinel_password: Some(SENTINEL_PW.into()),
        ..Default::default()
    })
    .await;
    let old = lab.master_port().await.unwrap();
    let (mut proxy, listen, admin) = spawn_proxy(
        &lab,
        &["--master-password", REDIS_PW],
        &[("SENTINEL_PROXY_SENTINEL_PASSWORD", SENTINEL_PW)],
    )
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

/// The same with every secret from a file and TLS on the client port: the passwords (Redis's,
/// the sentinels', a client's), the admin token, the users file's hashes and the TLS key stay
/// out of the logs, /status and /metrics; /status wants the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_secrets_tls_keys_and_password_hashes_stay_out_too() {
    const CLIENT_PW: &str = "client-pw-c0ffee";
    const TOKEN: &str = "admin-token-77e1d0";
    let lab = Lab::start_with(LabOptions {
        redis_password: Some(REDIS_PW.into()),
        sentinel_password: Some(SENTINEL_PW.into()),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let certs = support::certs::Certs::make(dir.path());
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let hash = sentinel_proxy::auth::hash(CLIENT_PW).unwrap();
    let users = file("users", &format!("app:{hash}\n"));
    let master_pw = file("master-pw", &format!("{REDIS_PW}\n"));
    let sentinel_pw = file("sentinel-pw", SENTINEL_PW);
    let token = file("token", TOKEN);
    let (cert, key) = (
        certs.cert.display().to_string(),
        certs.key.display().to_string(),
    );
    let (mut proxy, listen, admin) = spawn_proxy(
        &lab,
        &[
            "--master-password-file",
            &master_pw,
            "--users-file",
            &users,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--admin-token-file",
            &token,
        ],
        &[(
            "SENTINEL_PROXY_SENTINEL_PASSWORD_FILE",
            sentinel_pw.as_str(),
        )],
    )
    .await;

    // A TLS client authenticates at the proxy, which reaches Redis with the file's password.
    let tls = sentinel_proxy::config::Auth {
        tls: Some(std::sync::Arc::new(tls_client(&certs))),
        ..Default::default()
    };
    let mut c = sentinel_proxy::sentinel::client::RespConn::connect(
        &hp(listen),
        &tls,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert!(cmd(&mut c, &["AUTH", "app", "wrong"]).await.is_err());
    cmd(&mut c, &["AUTH", "app", CLIENT_PW]).await.unwrap();
    cmd(&mut c, &["SET", "k", "v"]).await.unwrap();

    assert_eq!(http_get(addr(admin), "/status").await.0, 401);
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let (code, status) = http_get_with(addr(admin), "/status", &bearer).await;
    assert_eq!(code, 200, "{status}");
    let (_, metrics) = http_get(addr(admin), "/metrics").await;
    proxy.signal("-TERM");
    assert_eq!(proxy.wait(), Some(0));
    let log = proxy.log();
    assert!(log.contains("authenticated"), "debug logs are on: {log}");
    let key_pem = std::fs::read_to_string(&certs.key).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    let hash_tail = &hash[hash.len() - 20..];
    for (what, text) in [("log", &log), ("/status", &status), ("/metrics", &metrics)] {
        for secret in [REDIS_PW, SENTINEL_PW, CLIENT_PW, TOKEN, key_line, hash_tail] {
            assert!(!text.contains(secret), "{what} contains {secret}");
        }
    }
    assert!(status.contains("\"admin_token\":\"***\""), "{status}");
    assert!(status.contains("node.key"), "paths are shown: {status}");
}
