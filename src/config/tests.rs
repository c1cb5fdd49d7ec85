//! The merge's tests: precedence, every setting from a flag and from the file, groups, read
//! ports, and the one-line errors.
use super::*;
use clap::Parser;

fn cli(args: &[&str]) -> Cli {
    let mut full = vec!["sentinel-proxy"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full).unwrap()
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("5h").is_err());
    assert!(parse_duration("ms").is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512mb").unwrap(), 512 << 20);
    assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
    assert_eq!(parse_size("100").unwrap(), 100);
    assert!(parse_size("0").is_err());
    assert!(parse_size("5 parsecs").is_err());
}

#[test]
fn host_port() {
    let hp: HostPort = "redis-0.svc:26379".parse().unwrap();
    assert_eq!((hp.host.as_str(), hp.port), ("redis-0.svc", 26379));
    let v6: HostPort = "[::1]:26379".parse().unwrap();
    assert_eq!(v6.host, "::1");
    assert_eq!(v6.to_string(), "[::1]:26379");
    assert!("nohost".parse::<HostPort>().is_err());
    assert!(":1".parse::<HostPort>().is_err());
    assert!("h:0".parse::<HostPort>().is_err());
    assert!("h:99999".parse::<HostPort>().is_err());
}

#[test]
fn flag_beats_file_beats_default() {
    let file: FileConfig = toml::from_str(
        "sentinels = [\"10.0.0.1:26379\"]\nmaster-name = \"fromfile\"\nconnect-wait = \"2s\"\n",
    )
    .unwrap();
    let c = Config::merge(&cli(&["--master-name", "fromflag"]), file).unwrap();
    assert_eq!(c.master_name, "fromflag");
    assert_eq!(c.connect_wait, Duration::from_secs(2));
    assert_eq!(c.sentinels.len(), 1);
    assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.poll_interval, Duration::from_secs(1));
}

/// Every duration setting reaches the Config, from a flag and from the file (five of them
/// were once parsed and then dropped, silently keeping their defaults).
#[test]
fn every_duration_setting_is_applied() {
    let names = [
        "poll-interval",
        "sentinel-timeout",
        "connect-timeout",
        "connect-wait",
        "shutdown-timeout",
        "failover-pause",
        "drain-timeout",
        "sentinel-prune-after",
        "tcp-keepalive",
        "idle-timeout",
        "pool-idle-timeout",
        "ack-timeout",
    ];
    let get = |c: &Config| {
        [
            c.poll_interval,
            c.sentinel_timeout,
            c.connect_timeout,
            c.connect_wait,
            c.shutdown_timeout,
            c.failover_pause,
            c.drain_timeout,
            c.sentinel_prune_after,
            c.tcp_keepalive,
            c.idle_timeout,
            c.pool_idle_timeout,
            c.ack_timeout,
        ]
    };
    let mut args = vec!["--sentinels".to_string(), "a:1".to_string()];
    let mut file = String::new();
    for (i, name) in names.iter().enumerate() {
        args.push(format!("--{name}"));
        args.push(format!("{}ms", 1000 + i));
        file.push_str(&format!("{name} = \"{}ms\"\n", 2000 + i));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let from_flags = Config::merge(&cli(&args), FileConfig::default()).unwrap();
    let from_file = Config::merge(
        &cli(&["--sentinels", "a:1"]),
        toml::from_str(&file).unwrap(),
    )
    .unwrap();
    for (i, name) in names.iter().enumerate() {
        let ms = |d: Duration| d.as_millis() as usize;
        assert_eq!(ms(get(&from_flags)[i]), 1000 + i, "{name} from its flag");
        assert_eq!(ms(get(&from_file)[i]), 2000 + i, "{name} from the file");
    }
}

#[test]
fn sentinels_are_required_and_deduplicated() {
    assert!(Config::merge(&cli(&[]), FileConfig::default()).is_err());
    assert!(Config::merge(&cli(&["--sentinels", " , "]), FileConfig::default()).is_err());
    let c = Config::merge(&cli(&["--sentinels", "a:1,b:2,a:1"]), FileConfig::default()).unwrap();
    assert_eq!(c.sentinels.len(), 2);
}

#[test]
fn groups_fill_from_the_top_level() {
    let file: FileConfig = toml::from_str(
        r#"
sentinels = ["s1:26379", "s2:26379"]
master-password = "top"

[[group]]
master-name = "broker"
listen = "127.0.0.1:6379"

[[group]]
name = "cache"
master-name = "cache-master"
listen = "127.0.0.1:6380"
sentinels = ["s3:26379"]
master-username = "app"
master-password = "own"
"#,
    )
    .unwrap();
    let c = Config::merge(&cli(&[]), file).unwrap();
    let g = c.groups();
    assert_eq!(g.len(), 2);
    assert_eq!(
        (g[0].name.as_str(), g[0].master_name.as_str()),
        ("broker", "broker")
    );
    assert_eq!(g[0].sentinels.len(), 2);
    assert_eq!(g[0].master_auth.password.as_ref().unwrap().expose(), "top");
    assert_eq!(
        (g[1].name.as_str(), g[1].master_name.as_str()),
        ("cache", "cache-master")
    );
    assert_eq!(g[1].sentinels, vec!["s3:26379".parse().unwrap()]);
    assert_eq!(g[1].master_auth.username.as_deref(), Some("app"));
    assert_eq!(g[1].master_auth.password.as_ref().unwrap().expose(), "own");
}

#[test]
fn read_ports_per_group_and_for_the_implicit_one() {
    let c = Config::merge(
        &cli(&[
            "--sentinels",
            "a:1",
            "--read-listen",
            "127.0.0.1:7001",
            "--read-max-lag",
            "64kb",
        ]),
        FileConfig::default(),
    )
    .unwrap();
    assert_eq!(
        c.groups()[0].read_listen,
        Some("127.0.0.1:7001".parse().unwrap())
    );
    assert_eq!(c.read_max_lag, 64 * 1024);
    let file: FileConfig = toml::from_str(
        "read-fallback = \"refuse\"\n[[group]]\nmaster-name = \"a\"\nlisten = \"127.0.0.1:1\"\nread-listen = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    let c = Config::merge(&cli(&["--sentinels", "a:1"]), file).unwrap();
    assert_eq!(
        c.groups()[0].read_listen,
        Some("127.0.0.1:2".parse().unwrap())
    );
    assert_eq!(c.read_fallback, ReadFallback::Refuse);
    let same =
        "[[group]]\nmaster-name = \"a\"\nlisten = \"127.0.0.1:1\"\nread-listen = \"127.0.0.1:1\"\n";
    let e = Config::merge(&cli(&["--sentinels", "a:1"]), toml::from_str(same).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("two listeners on 127.0.0.1:1"), "{e}");
}

#[test]
fn no_group_table_is_one_implicit_group() {
    let c = Config::merge(
        &cli(&[
            "--sentinels",
            "a:1",
            "--master-name",
            "m",
            "--listen",
            "127.0.0.1:7000",
        ]),
        FileConfig::default(),
    )
    .unwrap();
    let g = c.groups();
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].name.as_str(), g[0].master_name.as_str()), ("m", "m"));
    assert_eq!(g[0].listen, "127.0.0.1:7000".parse().unwrap());
}

/// The error of a configuration made of `flags` (after `--sentinels a:1`) and the file `text`.
fn merge_error(flags: &[&str], text: &str) -> String {
    let mut args = vec!["--sentinels", "a:1"];
    args.extend_from_slice(flags);
    Config::merge(&cli(&args), toml::from_str(text).unwrap())
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_groups_are_named() {
    let merge = merge_error;
    let e = merge(&[], "[[group]]\nlisten = \"127.0.0.1:1\"\n");
    assert!(e.contains("group 1: master-name is required"), "{e}");
    let e = merge(&[], "[[group]]\nmaster-name = \"a\"\n");
    assert!(e.contains("group 'a': listen is required"), "{e}");
    let two = "[[group]]\nmaster-name = \"a\"\nlisten = \"127.0.0.1:1\"\n\
               [[group]]\nmaster-name = \"b\"\nlisten = \"127.0.0.1:1\"\n";
    let e = merge(&[], two);
    assert!(e.contains("two listeners on 127.0.0.1:1"), "{e}");
    let e = merge(
        &["--master-name", "x"],
        "[[group]]\nmaster-name = \"a\"\nlisten = \"127.0.0.1:1\"\n",
    );
    assert!(e.starts_with("master-name is set at the top level"), "{e}");
    let typo = "[[group]]\nmaster-name = \"a\"\nlisen = \"127.0.0.1:1\"\n";
    let e = toml::from_str::<FileConfig>(typo).unwrap_err().to_string();
    assert!(e.contains("unknown field `lisen`"), "{e}");
    let same = "[[group]]\nname = \"x\"\nmaster-name = \"a\"\nlisten = \"127.0.0.1:1\"\n\
                [[group]]\nname = \"y\"\nmaster-name = \"a\"\nlisten = \"127.0.0.1:2\"\n";
    let e = merge(&[], same);
    assert!(e.contains("both serve master 'a'"), "{e}");
}

#[test]
fn durable_acks_per_group_and_their_errors() {
    use super::Ack;
    let text = "ack = \"replicas:1\"\n\
                [[group]]\nmaster-name = \"a\"\nlisten = \"127.0.0.1:1\"\n\
                [[group]]\nmaster-name = \"b\"\nlisten = \"127.0.0.1:2\"\nack = \"replicas:2\"\n\
                [[group]]\nmaster-name = \"c\"\nlisten = \"127.0.0.1:3\"\nack = \"master\"\n";
    let c = Config::merge(&cli(&["--sentinels", "a:1"]), toml::from_str(text).unwrap()).unwrap();
    let acks: Vec<Ack> = c.groups().iter().map(|g| g.ack).collect();
    assert_eq!(acks, [Ack::Replicas(1), Ack::Replicas(2), Ack::Master]);
    let c = Config::merge(
        &cli(&[
            "--sentinels",
            "a:1",
            "--ack",
            "replicas:3",
            "--ack-timeout",
            "250ms",
        ]),
        FileConfig::default(),
    )
    .unwrap();
    assert_eq!(c.groups()[0].ack, Ack::Replicas(3));
    assert_eq!(c.ack_timeout, Duration::from_millis(250));
    assert_eq!(
        c.pool,
        super::ACK_POOL,
        "more connections by default with acks"
    );
    let c = Config::merge(
        &cli(&["--sentinels", "a:1", "--ack", "replicas:1", "--pool", "3"]),
        FileConfig::default(),
    )
    .unwrap();
    assert_eq!(c.pool, 3, "unless the pool is set");
    assert_eq!(
        Config::merge(&cli(&["--sentinels", "a:1"]), FileConfig::default())
            .unwrap()
            .ack,
        Ack::Master
    );
    let err = merge_error;
    for bad in ["replicas:0", "replicas", "2", "all"] {
        let e = err(&["--ack", bad], "");
        assert!(e.starts_with("ack: '") && e.contains("replicas:N"), "{e}");
    }
    let e = err(
        &[],
        "[[group]]\nmaster-name = \"a\"\nlisten = \"127.0.0.1:1\"\nack = \"x\"\n",
    );
    assert!(e.starts_with("group 'a': ack: 'x'"), "{e}");
    // 1:1 sessions hold replies too (the group's barrier: `session/barrier.rs`).
    let c = Config::merge(
        &cli(&["--sentinels", "a:1", "--ack", "replicas:1", "--pool", "0"]),
        FileConfig::default(),
    )
    .unwrap();
    assert_eq!((c.pool, c.groups()[0].ack), (0, Ack::Replicas(1)));
    let e = err(&["--ack-timeout", "0s"], "");
    assert!(e.contains("ack-timeout"), "{e}");
}

/// The Sentinel face: an address of its own, and the host it gives out.
#[test]
fn the_sentinel_face_has_an_address_of_its_own() {
    let c = Config::merge(
        &cli(&["--sentinels", "a:1", "--sentinel-listen", "0.0.0.0:26379"]),
        toml::from_str("announce-host = \"proxy.default.svc\"").unwrap(),
    )
    .unwrap();
    assert_eq!(c.sentinel_listen, Some("0.0.0.0:26379".parse().unwrap()));
    assert_eq!(c.announce_host.as_deref(), Some("proxy.default.svc"));
    let e = merge_error(&["--sentinel-listen", "0.0.0.0:6379"], "");
    assert!(e.contains("sentinel-listen 0.0.0.0:6379 is also"), "{e}");
    let e = merge_error(&["--sentinel-listen", "nowhere"], "");
    assert!(
        e.contains("sentinel-listen: 'nowhere' is not an address"),
        "{e}"
    );
}

/// A live upgrade: `takeover` needs the socket to take over from.
#[test]
fn takeover_needs_the_upgrade_socket() {
    let e = merge_error(&["--takeover"], "");
    assert!(e.contains("takeover needs upgrade-socket"), "{e}");
    let c = Config::merge(
        &cli(&["--sentinels", "a:1", "--takeover"]),
        toml::from_str("upgrade-socket = \"/run/sp.sock\"").unwrap(),
    )
    .unwrap();
    assert!(c.takeover);
    assert_eq!(
        c.upgrade_socket.as_deref(),
        Some(std::path::Path::new("/run/sp.sock"))
    );
}

#[test]
fn unknown_file_key_is_rejected() {
    let err = toml::from_str::<FileConfig>("sentinals = []").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn bad_values_are_named() {
    let e = Config::merge(
        &cli(&["--sentinels", "a:1", "--listen", "nope"]),
        FileConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("listen:"), "{e}");
    let e = Config::merge(
        &cli(&["--sentinels", "a:1", "--master-username", "u"]),
        FileConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("master-password"), "{e}");
}

#[test]
fn secrets_are_masked_in_debug() {
    let c = Config::merge(
        &cli(&[
            "--sentinels",
            "a:1",
            "--sentinel-password",
            "hunter2",
            "--master-password",
            "swordfish",
        ]),
        FileConfig::default(),
    )
    .unwrap();
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("hunter2") && !dbg.contains("swordfish"),
        "{dbg}"
    );
    assert_eq!(
        c.sentinel_auth.password.as_ref().unwrap().expose(),
        "hunter2"
    );
}

use crate::test_certs as certs;

/// TLS, users and secrets given as files reach the config from flags and from the file; a half
/// pair, a side without its CA, or a secret given twice is a one-line error.
#[test]
fn tls_users_and_secret_files_reach_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs::Certs::make(dir.path());
    let p = |path: &std::path::Path| path.display().to_string();
    let (ca, cert, key) = (p(&c.ca), p(&c.cert), p(&c.key));
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\r\n").unwrap();
    let users = dir.path().join("users");
    let hash = crate::auth::hash("x").unwrap();
    std::fs::write(&users, format!("app:{hash}\n")).unwrap();
    let crl = c.revoke(&[7]);

    let flags = cli(&[
        "--sentinels",
        "10.0.0.1:26379",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-client-ca-file",
        &ca,
        "--master-tls-ca-file",
        &ca,
        "--master-tls-server-name",
        "redis.internal",
        "--master-password-file",
        &p(&pw),
        "--users-file",
        &p(&users),
        "--tls-client-user",
        "CN",
        "--tls-client-crl-file",
        &p(&crl),
    ]);
    let cfg = Config::merge(&flags, FileConfig::default()).unwrap();
    let tls = cfg.tls.as_ref().unwrap();
    assert_eq!(tls.files.client_ca.as_deref(), Some(c.ca.as_path()));
    assert_eq!(tls.files.client_crl.as_deref(), Some(crl.as_path()));
    assert_eq!(cfg.tls_client_user, Some(crate::tls::CertUser::Cn));
    let master = cfg.master_auth.tls.as_ref().unwrap();
    assert_eq!(master.files.server_name.as_deref(), Some("redis.internal"));
    assert!(cfg.sentinel_auth.tls.is_none(), "each side on its own");
    assert_eq!(
        cfg.master_auth.password.as_ref().unwrap().expose(),
        "s3cret"
    );
    assert_eq!(cfg.users.as_ref().unwrap().len(), 1);
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains(&hash),
        "{shown}"
    );

    let file: FileConfig = toml::from_str(&format!(
        "sentinels = [\"10.0.0.1:26379\"]\nsentinel-tls-ca-file = \"{ca}\"\n\
         sentinel-tls-cert-file = \"{cert}\"\nsentinel-tls-key-file = \"{key}\"\n\
         admin-token-file = \"{}\"\n\
         [[group]]\nmaster-name = \"a\"\nlisten = \"127.0.0.1:7000\"\n\
         master-password-file = \"{}\"\n",
        p(&pw),
        p(&pw)
    ))
    .unwrap();
    let cfg = Config::merge(&cli(&[]), file).unwrap();
    let g = &cfg.groups()[0];
    assert!(
        g.sentinel_auth.tls.is_some(),
        "a group inherits the sentinels' TLS"
    );
    assert_eq!(g.master_auth.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(cfg.admin_token.as_ref().unwrap().expose(), "s3cret");

    // The file's key, as the flag: cn or san.
    let mutual_file = |field: &str| -> FileConfig {
        toml::from_str(&format!(
            "sentinels = [\"10.0.0.1:26379\"]\ntls-cert-file = \"{cert}\"\n\
             tls-key-file = \"{key}\"\ntls-client-ca-file = \"{ca}\"\n\
             users-file = \"{}\"\ntls-client-user = \"{field}\"\n",
            p(&users)
        ))
        .unwrap()
    };
    let cfg = Config::merge(&cli(&[]), mutual_file("san")).unwrap();
    assert_eq!(cfg.tls_client_user, Some(crate::tls::CertUser::San));
    let e = Config::merge(&cli(&[]), mutual_file("uri"))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "tls-client-user 'uri': cn or san");

    // The client ports' TLS, and more flags.
    let crl_path = p(&crl);
    let serving = [
        "--tls-cert-file",
        cert.as_str(),
        "--tls-key-file",
        key.as_str(),
    ];
    let base = ["--sentinels", "10.0.0.1:26379"];
    for (args, want) in [
        (
            vec!["--tls-cert-file", &cert],
            "tls-cert-file and tls-key-file go together",
        ),
        (
            vec![
                "--master-tls-cert-file",
                &cert,
                "--master-tls-key-file",
                &key,
            ],
            "TLS to the masters is on only with master-tls-ca-file",
        ),
        (
            vec!["--master-password", "x", "--master-password-file", &p(&pw)],
            "master-password and master-password-file are both set",
        ),
        (
            vec!["--tls-cert-file", &key, "--tls-key-file", &key],
            "node.key",
        ),
        (vec!["--users-file", &p(&pw)], "line 1: expected name:hash"),
        (
            [&serving[..], &["--tls-client-user", "cn"]].concat(),
            "tls-client-user needs mutual TLS (tls-client-ca-file) and a users-file",
        ),
        (
            [
                &serving[..],
                &["--tls-client-ca-file", &ca, "--tls-client-user", "cn"],
            ]
            .concat(),
            "tls-client-user needs mutual TLS (tls-client-ca-file) and a users-file",
        ),
        (
            [&serving[..], &["--tls-client-crl-file", &crl_path]].concat(),
            "tls-client-crl-file needs tls-client-ca-file",
        ),
        (
            [
                &serving[..],
                &["--tls-client-ca-file", &ca, "--tls-client-crl-file", &ca],
            ]
            .concat(),
            "no revocation list",
        ),
    ] {
        let mut a = base.to_vec();
        a.extend(args);
        let e = Config::merge(&cli(&a), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{a:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
