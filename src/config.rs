//! Configuration: command-line flags, `SENTINEL_PROXY_*` environment variables and an optional
//! TOML file, merged into one validated [`Config`] (precedence: flag > env > file > default).
//!
//! Every setting has the same name in all three places (`--master-name`, `SENTINEL_PROXY_MASTER_NAME`,
//! `master-name = …`), so an operator never has to translate between them. Validation happens here,
//! once, so the rest of the proxy only ever sees values that make sense. Secrets are held in
//! [`Secret`], whose `Debug` prints a mask, so a config dumped to a log or /status leaks nothing.
//!
//! Here: [`Config`] and the merge that validates it; `cli.rs` the flags and env, `file.rs` the
//! TOML file, `groups.rs` its `[[group]]` tables (several masters in one proxy), `values.rs` the
//! value types and parsers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

mod cli;
mod file;
mod groups;
mod values;

pub use cli::{Cli, Command, CtlAction};
pub use file::FileConfig;
use file::read_file;

use crate::auth::Users;
use crate::tls::{CertUser, ClientFiles, ServerFiles, TlsClient, TlsServer};
pub use groups::{GroupConfig, GroupFile};
pub use values::{
    Ack, Auth, Discovery, HostPort, LogFormat, ReadFallback, Secret, parse_duration, parse_size,
    secret_or_file,
};

/// The validated configuration the proxy runs with.
///
/// `listen`, `sentinels`, `master_name` and the two credentials are the implicit single group
/// when `declared_groups` is empty (flags and env alone never declare groups); with `[[group]]`
/// tables they are only the defaults the tables were filled from. [`Config::groups`] gives the
/// groups to serve either way.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub sentinels: Vec<HostPort>,
    pub master_name: String,
    pub sentinel_auth: Auth,
    pub master_auth: Auth,
    /// The proxy's own client authentication (`auth.rs`), if on.
    pub users: Option<Arc<Users>>,
    /// What /status requires as a bearer token, if anything.
    pub admin_token: Option<Secret>,
    /// TLS on the client ports (every group's listen and read-listen), if on.
    pub tls: Option<Arc<TlsServer>>,
    /// Mutual TLS with the users file: which field of a client's certificate names its user.
    pub tls_client_user: Option<CertUser>,
    /// The implicit group's read port (`--read-listen`), if any.
    pub read_listen: Option<SocketAddr>,
    /// Read port: the largest replication lag, in bytes, of a replica that serves reads.
    pub read_max_lag: u64,
    pub read_fallback: ReadFallback,
    /// The implicit group's `ack`, and the default of declared ones.
    pub ack: Ack,
    /// How long a held write waits for its replicas (`ack = replicas:N`).
    pub ack_timeout: Duration,
    /// The file's `[[group]]` tables, validated (empty: the implicit group).
    pub declared_groups: Vec<GroupConfig>,
    pub log_format: LogFormat,
    pub poll_interval: Duration,
    pub sentinel_timeout: Duration,
    pub connect_timeout: Duration,
    pub connect_wait: Duration,
    pub shutdown_timeout: Duration,
    /// Where to listen for a successor (`upgrade.rs`), if anywhere.
    pub upgrade_socket: Option<PathBuf>,
    /// Take the listening sockets of the proxy at `upgrade_socket` instead of binding.
    pub takeover: bool,
    /// Where the Sentinel face answers (`face.rs`), if anywhere.
    pub sentinel_listen: Option<SocketAddr>,
    /// The host the Sentinel face gives out (else the address the client reached it at).
    pub announce_host: Option<String>,
    pub sentinel_prune_after: Duration,
    pub discovery: Discovery,
    pub failover_pause: Duration,
    pub drain_timeout: Duration,
    pub max_request_bytes: u64,
    pub max_clients: usize,
    /// Runtime threads; zero: one per CPU.
    pub threads: usize,
    /// Shared master connections per worker thread; zero: 1:1 mode ([`DEFAULT_POOL`] unless set).
    pub pool: usize,
    /// A pool of a connection state other than the group's first (a user, protocol or
    /// database its clients set) closes its master connections once it has had no client this
    /// long; zero: kept while the proxy runs.
    pub pool_idle_timeout: Duration,
    /// Zero: no keepalive.
    pub tcp_keepalive: Duration,
    /// Zero: idle clients are kept.
    pub idle_timeout: Duration,
    /// How often TLS files are checked for a change (`tls/refresh.rs`).
    pub tls_refresh: Duration,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:6379";
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9379";
pub const DEFAULT_MASTER_NAME: &str = "mymaster";
/// Shared master connections per worker thread unless `--pool` says otherwise (`0`: 1:1 mode).
pub const DEFAULT_POOL: usize = 2;
/// … and when a group has durable acknowledgements (`ack = replicas:N`).
pub const ACK_POOL: usize = 8;

impl Config {
    /// A configuration with every default, for the given sentinels (used by tests and embedders).
    pub fn new(sentinels: Vec<HostPort>, master_name: &str) -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("constant address"),
            metrics_listen: DEFAULT_METRICS_LISTEN.parse().expect("constant address"),
            sentinels,
            master_name: master_name.to_string(),
            sentinel_auth: Auth::default(),
            master_auth: Auth::default(),
            tls: None,
            tls_client_user: None,
            users: None,
            admin_token: None,
            declared_groups: Vec::new(),
            read_listen: None,
            read_max_lag: 1 << 20,
            read_fallback: ReadFallback::Master,
            ack: Ack::Master,
            ack_timeout: Duration::from_secs(1),
            log_format: LogFormat::Text,
            poll_interval: Duration::from_secs(1),
            sentinel_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            connect_wait: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            upgrade_socket: None,
            sentinel_listen: None,
            announce_host: None,
            takeover: false,
            sentinel_prune_after: Duration::from_secs(600),
            discovery: Discovery::First,
            failover_pause: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            max_request_bytes: 512 * 1024 * 1024,
            max_clients: 10_000,
            threads: 0,
            pool: DEFAULT_POOL,
            pool_idle_timeout: Duration::from_secs(60),
            tcp_keepalive: Duration::from_secs(60),
            idle_timeout: Duration::ZERO,
            tls_refresh: Duration::from_secs(5),
        }
    }

    /// The groups to serve: the declared ones, or the one the top-level settings make.
    pub fn groups(&self) -> Vec<GroupConfig> {
        if !self.declared_groups.is_empty() {
            return self.declared_groups.clone();
        }
        vec![GroupConfig {
            name: self.master_name.clone(),
            master_name: self.master_name.clone(),
            listen: self.listen,
            read_listen: self.read_listen,
            sentinels: self.sentinels.clone(),
            sentinel_auth: self.sentinel_auth.clone(),
            master_auth: self.master_auth.clone(),
            ack: self.ack,
        }]
    }

    /// Merge flags/env (already merged by clap) over the file named by `--config`, over defaults.
    pub fn load(cli: &Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(cli, file)
    }

    /// The admin address a running proxy of this command line, environment and file serves
    /// (`--metrics-listen`, else the file's `metrics-listen`, else the default), for `healthcheck`:
    /// it needs nothing else of the configuration (a container's health check runs without the
    /// proxy's arguments, often without its sentinels).
    pub fn admin_address(cli: &Cli) -> anyhow::Result<SocketAddr> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        addr(
            "metrics-listen",
            pick(&cli.metrics_listen, file.metrics_listen).as_deref(),
            DEFAULT_METRICS_LISTEN,
        )
    }

    /// What `sentinel-proxy ctl` needs of the configuration (nothing else is loaded: a `ctl`
    /// run needs no sentinels): the admin address, as for `healthcheck`, and the admin token
    /// (`--admin-token`, `--admin-token-file`, their env vars, or the `--config` file's).
    pub fn admin_access(cli: &Cli) -> anyhow::Result<(SocketAddr, Option<Secret>)> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let token = secret_or_file(
            "admin-token",
            pick(&cli.admin_token, file.admin_token.clone()),
            pick(&cli.admin_token_file, file.admin_token_file.clone()),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .map(Secret::new);
        Ok((Config::admin_address(cli)?, token))
    }

    pub fn merge(cli: &Cli, file: FileConfig) -> anyhow::Result<Config> {
        let tables = file.group.unwrap_or_default();
        let sentinels: Option<Vec<String>> = match (&cli.sentinels, file.sentinels) {
            (Some(list), _) => Some(list.split(',').map(str::to_string).collect()),
            (None, list) => list,
        };
        let sentinels = match sentinels {
            Some(list) => groups::parse_sentinels(&list).map_err(|e| anyhow::anyhow!("{e}"))?,
            // Groups that each name their sentinels need none at the top level.
            None if !tables.is_empty() && tables.iter().all(|t| t.sentinels.is_some()) => {
                Vec::new()
            }
            None => bail!(
                "no sentinels configured: give --sentinels host:port,... (or SENTINEL_PROXY_SENTINELS, or sentinels = [...] in the file)"
            ),
        };

        let listen = pick(&cli.listen, file.listen);
        let master_name = pick(&cli.master_name, file.master_name);
        if !tables.is_empty() {
            // A top-level listen or master name beside [[group]] tables would be a group nobody
            // declared, or one of the tables silently overridden: say so instead.
            for (set, key) in [
                (listen.is_some(), "listen"),
                (master_name.is_some(), "master-name"),
            ] {
                if set {
                    bail!(
                        "{key} is set at the top level (flag, env or file) but the file declares [[group]] tables: give it in each group instead"
                    );
                }
            }
        }
        let master_name = master_name.unwrap_or_else(|| DEFAULT_MASTER_NAME.to_string());
        groups::check_name(&master_name).map_err(|e| anyhow::anyhow!("master-{e}"))?;

        let mut cfg = Config::new(sentinels, &master_name);
        cfg.listen = addr("listen", listen.as_deref(), DEFAULT_LISTEN)?;
        cfg.metrics_listen = addr(
            "metrics-listen",
            pick(&cli.metrics_listen, file.metrics_listen).as_deref(),
            DEFAULT_METRICS_LISTEN,
        )?;
        let secret = |name: &str, value, file| {
            secret_or_file(name, value, file).map_err(|e| anyhow::anyhow!("{e}"))
        };
        cfg.sentinel_auth = auth(
            "sentinel",
            pick(&cli.sentinel_username, file.sentinel_username),
            secret(
                "sentinel-password",
                pick(&cli.sentinel_password, file.sentinel_password),
                pick(&cli.sentinel_password_file, file.sentinel_password_file),
            )?,
        )?;
        cfg.master_auth = auth(
            "master",
            pick(&cli.master_username, file.master_username),
            secret(
                "master-password",
                pick(&cli.master_password, file.master_password),
                pick(&cli.master_password_file, file.master_password_file),
            )?,
        )?;
        if let Some(path) = pick(&cli.users_file, file.users_file) {
            let users = Users::load(std::path::Path::new(&path))?;
            if users.is_empty() {
                bail!("users-file {path}: no users: nobody could connect");
            }
            cfg.users = Some(Arc::new(users));
        }
        cfg.upgrade_socket = pick(&cli.upgrade_socket, file.upgrade_socket).map(PathBuf::from);
        cfg.takeover = cli.takeover;
        if let Some(a) = pick(&cli.sentinel_listen, file.sentinel_listen) {
            cfg.sentinel_listen = Some(addr("sentinel-listen", Some(&a), "")?);
        }
        cfg.announce_host = pick(&cli.announce_host, file.announce_host)
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty());
        if cfg.takeover && cfg.upgrade_socket.is_none() {
            bail!(
                "takeover needs upgrade-socket: the path where the running proxy listens for its successor"
            );
        }
        cfg.admin_token = secret(
            "admin-token",
            pick(&cli.admin_token, file.admin_token),
            pick(&cli.admin_token_file, file.admin_token_file),
        )?
        .map(Secret::new);
        cfg.tls = server_tls(
            pick(&cli.tls_cert_file, file.tls_cert_file),
            pick(&cli.tls_key_file, file.tls_key_file),
            pick(&cli.tls_client_ca_file, file.tls_client_ca_file),
            pick(&cli.tls_client_crl_file, file.tls_client_crl_file),
        )?;
        let file_user = match file.tls_client_user {
            Some(f) => Some(
                f.parse()
                    .map_err(|e| anyhow::anyhow!("tls-client-user {e}"))?,
            ),
            None => None,
        };
        cfg.tls_client_user = cli.tls_client_user.or(file_user);
        if cfg.tls_client_user.is_some() {
            let mutual = cfg
                .tls
                .as_ref()
                .is_some_and(|t| t.files.client_ca.is_some());
            if !mutual || cfg.users.is_none() {
                bail!("tls-client-user needs mutual TLS (tls-client-ca-file) and a users-file");
            }
        }
        cfg.master_auth.tls = client_tls(
            "master",
            pick(&cli.master_tls_ca_file, file.master_tls_ca_file),
            pick(&cli.master_tls_cert_file, file.master_tls_cert_file),
            pick(&cli.master_tls_key_file, file.master_tls_key_file),
            pick(&cli.master_tls_server_name, file.master_tls_server_name),
        )?;
        cfg.sentinel_auth.tls = client_tls(
            "sentinel",
            pick(&cli.sentinel_tls_ca_file, file.sentinel_tls_ca_file),
            pick(&cli.sentinel_tls_cert_file, file.sentinel_tls_cert_file),
            pick(&cli.sentinel_tls_key_file, file.sentinel_tls_key_file),
            pick(&cli.sentinel_tls_server_name, file.sentinel_tls_server_name),
        )?;
        cfg.log_format = cli.log_format.or(file.log_format).unwrap_or_default();
        cfg.discovery = cli.discovery.or(file.discovery).unwrap_or_default();
        let durations = [
            (
                "poll-interval",
                &cli.poll_interval,
                file.poll_interval,
                &mut cfg.poll_interval,
            ),
            (
                "sentinel-timeout",
                &cli.sentinel_timeout,
                file.sentinel_timeout,
                &mut cfg.sentinel_timeout,
            ),
            (
                "connect-timeout",
                &cli.connect_timeout,
                file.connect_timeout,
                &mut cfg.connect_timeout,
            ),
            (
                "connect-wait",
                &cli.connect_wait,
                file.connect_wait,
                &mut cfg.connect_wait,
            ),
            (
                "shutdown-timeout",
                &cli.shutdown_timeout,
                file.shutdown_timeout,
                &mut cfg.shutdown_timeout,
            ),
            (
                "failover-pause",
                &cli.failover_pause,
                file.failover_pause,
                &mut cfg.failover_pause,
            ),
            (
                "drain-timeout",
                &cli.drain_timeout,
                file.drain_timeout,
                &mut cfg.drain_timeout,
            ),
            (
                "sentinel-prune-after",
                &cli.sentinel_prune_after,
                file.sentinel_prune_after,
                &mut cfg.sentinel_prune_after,
            ),
            (
                "tcp-keepalive",
                &cli.tcp_keepalive,
                file.tcp_keepalive,
                &mut cfg.tcp_keepalive,
            ),
            (
                "idle-timeout",
                &cli.idle_timeout,
                file.idle_timeout,
                &mut cfg.idle_timeout,
            ),
            (
                "pool-idle-timeout",
                &cli.pool_idle_timeout,
                file.pool_idle_timeout,
                &mut cfg.pool_idle_timeout,
            ),
            (
                "ack-timeout",
                &cli.ack_timeout,
                file.ack_timeout,
                &mut cfg.ack_timeout,
            ),
        ];
        for (name, flag, from_file, slot) in durations {
            if let Some(text) = pick(flag, from_file) {
                *slot = parse_duration(&text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            }
        }
        if let Some(n) = cli.max_clients.or(file.max_clients) {
            if n == 0 {
                bail!("max-clients: must be at least 1");
            }
            cfg.max_clients = n;
        }
        if let Some(n) = cli.threads.or(file.threads) {
            cfg.threads = n;
        }
        if let Some(n) = cli.pool.or(file.pool) {
            if n > 64 {
                bail!("pool: at most 64 connections per thread (got {n})");
            }
            cfg.pool = n;
        }
        if let Some(text) = pick(&cli.max_request_bytes, file.max_request_bytes) {
            cfg.max_request_bytes =
                parse_size(&text).map_err(|e| anyhow::anyhow!("max-request-bytes: {e}"))?;
        }
        if let Some(text) = pick(&cli.read_max_lag, file.read_max_lag) {
            cfg.read_max_lag =
                parse_size(&text).map_err(|e| anyhow::anyhow!("read-max-lag: {e}"))?;
        }
        cfg.read_fallback = cli.read_fallback.or(file.read_fallback).unwrap_or_default();
        if let Some(text) = pick(&cli.read_listen, file.read_listen) {
            if !tables.is_empty() {
                bail!(
                    "read-listen is set at the top level (flag, env or file) but the file declares [[group]] tables: give it in each group instead"
                );
            }
            cfg.read_listen = Some(addr("read-listen", Some(&text), DEFAULT_LISTEN)?);
        }
        if let Some(text) = pick(&cli.ack, file.ack) {
            cfg.ack = text.parse().map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        }
        cfg.declared_groups = groups::resolve(
            tables,
            &groups::Defaults {
                sentinels: &cfg.sentinels,
                sentinel_auth: &cfg.sentinel_auth,
                master_auth: &cfg.master_auth,
                ack: cfg.ack,
            },
        )?;
        if cli.pool.or(file.pool).is_none() && cfg.groups().iter().any(|g| g.ack != Ack::Master) {
            // A WAIT holds its connection until the replicas answer: more connections keep
            // writes flowing meanwhile (docs/PERFORMANCE.md, "Durable acknowledgements").
            cfg.pool = ACK_POOL;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("poll-interval", self.poll_interval),
            ("sentinel-timeout", self.sentinel_timeout),
            ("connect-timeout", self.connect_timeout),
            ("ack-timeout", self.ack_timeout),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                bail!("{name}: must be greater than zero");
            }
        }
        if let Some(face) = self.sentinel_listen.filter(|a| a.port() != 0) {
            let taken = face == self.metrics_listen
                || self
                    .groups()
                    .iter()
                    .any(|g| g.listen == face || g.read_listen == Some(face));
            if taken {
                bail!("sentinel-listen {face} is also a client, read or metrics-listen address");
            }
        }
        for g in self.groups() {
            if let Some(read) = g.read_listen
                && read.port() != 0
                && (read == g.listen || read == self.metrics_listen)
            {
                bail!(
                    "read-listen {read} is also the group's listen or the metrics-listen address"
                );
            }
            if g.listen == self.metrics_listen && g.listen.port() != 0 {
                bail!(
                    "listen and metrics-listen are both {}: they need different ports",
                    g.listen
                );
            }
            if g.sentinels.is_empty() {
                bail!(
                    "group '{}': no sentinels: give sentinels = [...] in the group or at the top level",
                    g.name
                );
            }
        }
        Ok(())
    }
}

fn pick(flag: &Option<String>, file: Option<String>) -> Option<String> {
    flag.clone().or(file)
}

fn addr(name: &str, value: Option<&str>, default: &str) -> anyhow::Result<SocketAddr> {
    let text = value.unwrap_or(default).trim();
    text.parse()
        .map_err(|_| anyhow::anyhow!("{name}: '{text}' is not an address like 0.0.0.0:6379"))
}

fn auth(name: &str, username: Option<String>, password: Option<String>) -> anyhow::Result<Auth> {
    if username.is_some() && password.is_none() {
        bail!("{name}-username is set but {name}-password is not");
    }
    Ok(Auth {
        username,
        password: password.map(Secret::new),
        tls: None,
    })
}

/// The client ports' TLS: a certificate and its key, or neither; a client CA needs both.
fn server_tls(
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    client_crl: Option<String>,
) -> anyhow::Result<Option<Arc<TlsServer>>> {
    let (cert, key) = match (cert, key, &client_ca) {
        (None, None, None) if client_crl.is_none() => return Ok(None),
        (Some(c), Some(k), _) => (c, k),
        _ => {
            bail!("tls-cert-file and tls-key-file go together (and tls-client-ca-file needs both)")
        }
    };
    if client_crl.is_some() && client_ca.is_none() {
        bail!("tls-client-crl-file needs tls-client-ca-file");
    }
    let files = ServerFiles {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
        client_ca: client_ca.map(PathBuf::from),
        client_crl: client_crl.map(PathBuf::from),
    };
    let loaded = TlsServer::load(files).map_err(|e| anyhow::anyhow!("tls: {e}"))?;
    Ok(Some(Arc::new(loaded)))
}

/// TLS to one kind of peer: on when its CA file is set; a certificate and its key go together.
fn client_tls(
    side: &str,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    server_name: Option<String>,
) -> anyhow::Result<Option<Arc<TlsClient>>> {
    let Some(ca) = ca else {
        if cert.is_some() || key.is_some() || server_name.is_some() {
            bail!("{side}-tls-…: TLS to the {side}s is on only with {side}-tls-ca-file");
        }
        return Ok(None);
    };
    if cert.is_some() != key.is_some() {
        bail!("{side}-tls-cert-file and {side}-tls-key-file go together");
    }
    let files = ClientFiles {
        ca: PathBuf::from(ca),
        cert: cert.map(PathBuf::from),
        key: key.map(PathBuf::from),
        server_name,
    };
    let loaded = TlsClient::load(files).map_err(|e| anyhow::anyhow!("{side}-tls: {e}"))?;
    Ok(Some(Arc::new(loaded)))
}

#[cfg(test)]
mod tests;
