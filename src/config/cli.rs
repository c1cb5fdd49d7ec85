//! The command line: every setting as a flag with its `SENTINEL_PROXY_…` environment variable.

use std::path::PathBuf;

use clap::Parser;

use super::{Discovery, LogFormat, ReadFallback};

/// The command line. Every field is optional here so that a value that was not given on the
/// command line or in the environment can still come from the file.
#[derive(Parser, Debug, Default)]
#[command(
    name = "sentinel-proxy",
    version,
    about = "A Sentinel-aware TCP proxy for Redis"
)]
pub struct Cli {
    /// TOML configuration file; flags and env vars override its values.
    #[arg(
        long,
        env = "SENTINEL_PROXY_CONFIG",
        value_name = "FILE",
        global = true
    )]
    pub config: Option<PathBuf>,
    /// Address clients connect to [default: 0.0.0.0:6379].
    #[arg(long, env = "SENTINEL_PROXY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Comma-separated Sentinel addresses, `host:port,host:port` (required).
    #[arg(long, env = "SENTINEL_PROXY_SENTINELS", value_name = "LIST")]
    pub sentinels: Option<String>,
    /// Name of the Sentinel master group [default: mymaster].
    #[arg(long, env = "SENTINEL_PROXY_MASTER_NAME", value_name = "NAME")]
    pub master_name: Option<String>,
    /// Address of the HTTP admin endpoints (/metrics, /healthz, /readyz, /status) [default: 0.0.0.0:9379].
    #[arg(
        long,
        env = "SENTINEL_PROXY_METRICS_LISTEN",
        value_name = "ADDR",
        global = true
    )]
    pub metrics_listen: Option<String>,
    /// ACL username for the proxy's own Sentinel connections.
    #[arg(long, env = "SENTINEL_PROXY_SENTINEL_USERNAME", value_name = "USER")]
    pub sentinel_username: Option<String>,
    /// Password for the proxy's own Sentinel connections.
    #[arg(
        long,
        env = "SENTINEL_PROXY_SENTINEL_PASSWORD",
        value_name = "PASS",
        hide_env_values = true
    )]
    pub sentinel_password: Option<String>,
    /// ACL username for the proxy's ROLE checks on Redis nodes (clients AUTH themselves).
    #[arg(long, env = "SENTINEL_PROXY_MASTER_USERNAME", value_name = "USER")]
    pub master_username: Option<String>,
    /// Password for the proxy's ROLE checks on Redis nodes.
    #[arg(
        long,
        env = "SENTINEL_PROXY_MASTER_PASSWORD",
        value_name = "PASS",
        hide_env_values = true
    )]
    pub master_password: Option<String>,
    /// A file holding the sentinel password (a Kubernetes secret, say), instead of
    /// --sentinel-password; one trailing newline is ignored.
    #[arg(
        long,
        env = "SENTINEL_PROXY_SENTINEL_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub sentinel_password_file: Option<String>,
    /// A file holding the master password, instead of --master-password.
    #[arg(long, env = "SENTINEL_PROXY_MASTER_PASSWORD_FILE", value_name = "FILE")]
    pub master_password_file: Option<String>,
    /// The proxy's own client authentication: a file of `name:argon2-hash` lines
    /// (`sentinel-proxy hash-password` makes the hashes). Clients must AUTH as one of these
    /// users; the proxy then reaches Redis with --master-username/--master-password.
    #[arg(long, env = "SENTINEL_PROXY_USERS_FILE", value_name = "FILE")]
    pub users_file: Option<String>,
    /// A token that /status requires (`Authorization: Bearer <token>`); /metrics, /healthz and
    /// /readyz stay open for probes and scrapers.
    #[arg(
        long,
        env = "SENTINEL_PROXY_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// A file holding the admin token, instead of --admin-token.
    #[arg(long, env = "SENTINEL_PROXY_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<String>,
    /// TLS on the client ports: the proxy's certificate chain (PEM). With --tls-key-file.
    #[arg(long, env = "SENTINEL_PROXY_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<String>,
    /// TLS on the client ports: the private key of --tls-cert-file (PEM).
    #[arg(long, env = "SENTINEL_PROXY_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<String>,
    /// Mutual TLS: clients must show a certificate signed by this CA (PEM).
    #[arg(long, env = "SENTINEL_PROXY_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    pub tls_client_ca_file: Option<String>,
    /// Mutual TLS: client certificates revoked by the client CA, its CRL (PEM); reloaded with
    /// the certificates.
    #[arg(long, env = "SENTINEL_PROXY_TLS_CLIENT_CRL_FILE", value_name = "FILE")]
    pub tls_client_crl_file: Option<String>,
    /// Mutual TLS with --users-file: a client whose certificate names a user is logged in as
    /// that user, no AUTH needed (cn: the subject's common name; san: its DNS names).
    #[arg(long, env = "SENTINEL_PROXY_TLS_CLIENT_USER", value_name = "cn|san")]
    pub tls_client_user: Option<crate::tls::CertUser>,
    /// TLS to the Redis nodes, verified against this CA (PEM); plain TCP when unset.
    #[arg(long, env = "SENTINEL_PROXY_MASTER_TLS_CA_FILE", value_name = "FILE")]
    pub master_tls_ca_file: Option<String>,
    /// TLS to the Redis nodes: the proxy's client certificate, for `tls-auth-clients yes`.
    #[arg(long, env = "SENTINEL_PROXY_MASTER_TLS_CERT_FILE", value_name = "FILE")]
    pub master_tls_cert_file: Option<String>,
    /// TLS to the Redis nodes: the key of --master-tls-cert-file.
    #[arg(long, env = "SENTINEL_PROXY_MASTER_TLS_KEY_FILE", value_name = "FILE")]
    pub master_tls_key_file: Option<String>,
    /// TLS to the Redis nodes: the name their certificates must carry [default: the address
    /// Sentinel gives].
    #[arg(
        long,
        env = "SENTINEL_PROXY_MASTER_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub master_tls_server_name: Option<String>,
    /// TLS to the sentinels, verified against this CA (PEM); plain TCP when unset.
    #[arg(long, env = "SENTINEL_PROXY_SENTINEL_TLS_CA_FILE", value_name = "FILE")]
    pub sentinel_tls_ca_file: Option<String>,
    /// TLS to the sentinels: the proxy's client certificate.
    #[arg(
        long,
        env = "SENTINEL_PROXY_SENTINEL_TLS_CERT_FILE",
        value_name = "FILE"
    )]
    pub sentinel_tls_cert_file: Option<String>,
    /// TLS to the sentinels: the key of --sentinel-tls-cert-file.
    #[arg(
        long,
        env = "SENTINEL_PROXY_SENTINEL_TLS_KEY_FILE",
        value_name = "FILE"
    )]
    pub sentinel_tls_key_file: Option<String>,
    /// TLS to the sentinels: the name their certificates must carry [default: the host or
    /// address each is reached at].
    #[arg(
        long,
        env = "SENTINEL_PROXY_SENTINEL_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub sentinel_tls_server_name: Option<String>,
    /// Log output format [default: text].
    #[arg(long, env = "SENTINEL_PROXY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// How often the Sentinels are re-queried as a safety net beside their events [default: 1s].
    #[arg(long, env = "SENTINEL_PROXY_POLL_INTERVAL", value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// Connect and reply timeout of every Sentinel query and ROLE check [default: 500ms].
    #[arg(long, env = "SENTINEL_PROXY_SENTINEL_TIMEOUT", value_name = "DURATION")]
    pub sentinel_timeout: Option<String>,
    /// Timeout of one connect to the master on behalf of a client [default: 1s].
    #[arg(long, env = "SENTINEL_PROXY_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// How long a new client waits for a verified master before it gets an error [default: 5s].
    #[arg(long, env = "SENTINEL_PROXY_CONNECT_WAIT", value_name = "DURATION")]
    pub connect_wait: Option<String>,
    /// On SIGTERM/SIGINT, how long open sessions get before the process exits [default: 5s].
    #[arg(long, env = "SENTINEL_PROXY_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// When a failover starts, hold new requests this long at most for the new master [default: 5s].
    #[arg(long, env = "SENTINEL_PROXY_FAILOVER_PAUSE", value_name = "DURATION")]
    pub failover_pause: Option<String>,
    /// After a switch, how long a session on the old master may take to reach a request boundary [default: 5s].
    #[arg(long, env = "SENTINEL_PROXY_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Largest bulk argument a client may send, like Redis's proto-max-bulk-len (e.g. 512mb) [default: 512mb].
    #[arg(long, env = "SENTINEL_PROXY_MAX_REQUEST_BYTES", value_name = "SIZE")]
    pub max_request_bytes: Option<String>,
    /// Most client connections at once; over it a client gets `-ERR max number of clients reached` [default: 10000].
    #[arg(long, env = "SENTINEL_PROXY_MAX_CLIENTS", value_name = "N")]
    pub max_clients: Option<usize>,
    /// Worker threads serving client connections, each with a runtime of its own (a connection
    /// stays on one): `0` is one per CPU; `1` suits a sidecar sharing its cores [default: 0].
    #[arg(long, env = "SENTINEL_PROXY_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Pooled mode: client requests share N pipelined connections to the master per worker
    /// thread; a transaction or a blocking call borrows a connection for its span, and a client
    /// whose command needs one for good (SUBSCRIBE, MONITOR, CLIENT TRACKING, …) is pinned to
    /// one. `0` is 1:1 mode: one master connection per client [default: 2].
    #[arg(long, env = "SENTINEL_PROXY_POOL", value_name = "N")]
    pub pool: Option<usize>,
    /// Pooled mode: a pool of a connection state other than the default one (a user, `HELLO 3`
    /// or a database its clients set) closes its master connections once it has had no client
    /// this long, and opens them again for the next; `0s` keeps them [default: 60s].
    #[arg(
        long,
        env = "SENTINEL_PROXY_POOL_IDLE_TIMEOUT",
        value_name = "DURATION"
    )]
    pub pool_idle_timeout: Option<String>,
    /// Close a client idle this long (no bytes either way, nothing in flight; not pub/sub or
    /// MONITOR), like Redis's `timeout`; `0s` keeps idle clients forever [default: 0s].
    #[arg(long, env = "SENTINEL_PROXY_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// TCP keepalive idle time on client and backend sockets, `0s` to turn it off [default: 60s].
    #[arg(long, env = "SENTINEL_PROXY_TCP_KEEPALIVE", value_name = "DURATION")]
    pub tcp_keepalive: Option<String>,
    /// The read port: connections spread over the group's healthy replicas (off unless set).
    #[arg(long, env = "SENTINEL_PROXY_READ_LISTEN", value_name = "ADDR")]
    pub read_listen: Option<String>,
    /// Read port: a replica whose acknowledged replication offset is further than this behind
    /// the master's leaves the pool (e.g. 1mb) [default: 1mb].
    #[arg(long, env = "SENTINEL_PROXY_READ_MAX_LAG", value_name = "SIZE")]
    pub read_max_lag: Option<String>,
    /// Read port with no healthy replica: `master` serves reads from the master, `refuse`
    /// answers an error [default: master].
    #[arg(long, env = "SENTINEL_PROXY_READ_FALLBACK", value_enum)]
    pub read_fallback: Option<ReadFallback>,
    /// When a client gets a write's reply: `master` passes it on as the master gives it;
    /// `replicas:N` holds it until the master confirms (one `WAIT N` per batch of writes on a
    /// connection) that N replicas have the write, and answers `-NOREPLICAS` if they do not
    /// within `--ack-timeout`. Pooled mode only; with it, `--pool` defaults to 8 (a WAIT holds
    /// its connection until the replicas answer) [default: master].
    #[arg(long, env = "SENTINEL_PROXY_ACK", value_name = "master|replicas:N")]
    pub ack: Option<String>,
    /// With `--ack replicas:N`: how long a write waits for its replicas before its client is
    /// answered `-NOREPLICAS` [default: 1s].
    #[arg(long, env = "SENTINEL_PROXY_ACK_TIMEOUT", value_name = "DURATION")]
    pub ack_timeout: Option<String>,
    /// Forget a *discovered* sentinel that stayed unreachable this long (configured ones are kept) [default: 10m].
    #[arg(
        long,
        env = "SENTINEL_PROXY_SENTINEL_PRUNE_AFTER",
        value_name = "DURATION"
    )]
    pub sentinel_prune_after: Option<String>,
    /// How a poll picks the master: `first` (any sentinel's answer, verified with ROLE) or
    /// `quorum` (a majority of the reachable sentinels must name it) [default: first].
    #[arg(long, env = "SENTINEL_PROXY_DISCOVERY", value_enum)]
    pub discovery: Option<Discovery>,
    /// Also answer the Sentinel API on this address (the Sentinel face: Sentinel-aware clients
    /// pointed at it get the proxy's own address for each group). Off unless set.
    #[arg(long, env = "SENTINEL_PROXY_SENTINEL_LISTEN", value_name = "ADDR")]
    pub sentinel_listen: Option<String>,
    /// The host (name or IP) the Sentinel face gives out for the proxy's ports [default: the
    /// address the asking client reached the Sentinel face at].
    #[arg(long, env = "SENTINEL_PROXY_ANNOUNCE_HOST", value_name = "HOST")]
    pub announce_host: Option<String>,
    /// Listen on this Unix socket for a successor (live upgrade): a process started with the
    /// same configuration and --takeover receives the listening sockets and then each client
    /// connection at its next request boundary. Off unless set.
    #[arg(long, env = "SENTINEL_PROXY_UPGRADE_SOCKET", value_name = "PATH")]
    pub upgrade_socket: Option<String>,
    /// Start by taking the listening sockets of the proxy listening at --upgrade-socket instead
    /// of binding them (if none answers there, bind as usual).
    #[arg(long, env = "SENTINEL_PROXY_TAKEOVER")]
    pub takeover: bool,
    /// Validate the configuration, print the result and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Ask a running proxy whether it is alive: exit 0 if so, 1 if not, 2 for a bad
    /// `--config` or address. Its admin address is `--metrics-listen` (or its env var), else the
    /// `--config` file's (or `SENTINEL_PROXY_CONFIG`'s), else the default; nothing else of the
    /// configuration is needed. For container health checks without curl.
    Healthcheck {
        /// Ask /readyz (a verified master is known) instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
    /// Read a password on standard input (one line) and print its Argon2id hash, for a line
    /// `name:<hash>` of the users file.
    HashPassword,
    /// Ask a running proxy for an operator action on a group, through its admin port (the
    /// address and the admin token as the proxy has them: `--metrics-listen`,
    /// `--admin-token`/`--admin-token-file`, their env vars, or the `--config` file; nothing
    /// else of the configuration is needed). Prints its JSON answer; exit 0 if it was done, 1
    /// if it was refused or the proxy did not answer, 2 for a bad configuration.
    Ctl {
        #[command(subcommand)]
        action: CtlAction,
    },
}

/// What `sentinel-proxy ctl` asks.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CtlAction {
    /// Hold the group's new requests at request boundaries until `resume`.
    Pause {
        /// The group (a single-group proxy's is its master name).
        group: String,
        /// Each request waits at most this many seconds, then its client gets the no-master
        /// error (at most 300; 30 if not given).
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Lift the hold.
    Resume { group: String },
    /// Hold, `SENTINEL FAILOVER`, wait for the new master to be verified, release: prints the
    /// timeline.
    Switchover { group: String },
}

impl CtlAction {
    /// The admin path it posts to.
    pub fn path(&self) -> String {
        match self {
            CtlAction::Pause { group, seconds } => match seconds {
                Some(s) => format!("/groups/{group}/pause?seconds={s}"),
                None => format!("/groups/{group}/pause"),
            },
            CtlAction::Resume { group } => format!("/groups/{group}/resume"),
            CtlAction::Switchover { group } => format!("/groups/{group}/switchover"),
        }
    }
}
