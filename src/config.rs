//! Configuration: command-line flags, `SENTINEL_PROXY_*` environment variables and an optional
//! TOML file, merged into one validated [`Config`] (precedence: flag > env > file > default).
//!
//! Every setting has the same name in all three places (`--master-name`, `SENTINEL_PROXY_MASTER_NAME`,
//! `master-name = …`), so an operator never has to translate between them. Validation happens here,
//! once, so the rest of the proxy only ever sees values that make sense. Secrets are held in
//! [`Secret`], whose `Debug` prints a mask, so a config dumped to a log or /status leaks nothing.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

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
    #[arg(long, env = "SENTINEL_PROXY_CONFIG", value_name = "FILE")]
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
    #[arg(long, env = "SENTINEL_PROXY_METRICS_LISTEN", value_name = "ADDR")]
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
    /// thread; a client whose command needs a connection of its own (MULTI, SUBSCRIBE, SELECT n,
    /// AUTH, a blocking command, …) is pinned to a dedicated one. `0` is 1:1 mode: one master
    /// connection per client [default: 0].
    #[arg(long, env = "SENTINEL_PROXY_POOL", value_name = "N")]
    pub pool: Option<usize>,
    /// Close a client idle this long (no bytes either way, nothing in flight; not pub/sub or
    /// MONITOR), like Redis's `timeout`; `0s` keeps idle clients forever [default: 0s].
    #[arg(long, env = "SENTINEL_PROXY_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// TCP keepalive idle time on client and backend sockets, `0s` to turn it off [default: 60s].
    #[arg(long, env = "SENTINEL_PROXY_TCP_KEEPALIVE", value_name = "DURATION")]
    pub tcp_keepalive: Option<String>,
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
    /// Validate the configuration, print the result and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Ask a running proxy (at --metrics-listen) whether it is alive; exit 0 if so, else 1.
    /// For container health checks without curl.
    Healthcheck {
        /// Ask /readyz (a verified master is known) instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
}

/// The TOML file. Keys are spelled like the flags; unknown keys are an error, so a typo never
/// silently falls back to a default.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub listen: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub master_name: Option<String>,
    pub metrics_listen: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    pub master_username: Option<String>,
    pub master_password: Option<String>,
    pub log_format: Option<LogFormat>,
    pub poll_interval: Option<String>,
    pub sentinel_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub connect_wait: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub sentinel_prune_after: Option<String>,
    pub discovery: Option<Discovery>,
    pub failover_pause: Option<String>,
    pub drain_timeout: Option<String>,
    pub max_request_bytes: Option<String>,
    pub max_clients: Option<usize>,
    pub threads: Option<usize>,
    pub pool: Option<usize>,
    pub tcp_keepalive: Option<String>,
    pub idle_timeout: Option<String>,
}

#[derive(ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Discovery {
    /// The first answer, confirmed with ROLE.
    #[default]
    First,
    /// A majority of the reachable sentinels must name the master, confirmed with ROLE.
    Quorum,
}

#[derive(ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A password. `Debug` and `Display` print a mask; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Credentials for `AUTH [username] password`. No password means no AUTH is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// A `host:port` pair as Sentinels and operators write it; the host may be a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("'{s}' is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("'{s}' has an empty host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{s}' has an invalid port"))?;
        if port == 0 {
            return Err(format!("'{s}' has port 0"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        HostPort {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

/// The validated configuration the proxy runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub sentinels: Vec<HostPort>,
    pub master_name: String,
    pub sentinel_auth: Auth,
    pub master_auth: Auth,
    pub log_format: LogFormat,
    pub poll_interval: Duration,
    pub sentinel_timeout: Duration,
    pub connect_timeout: Duration,
    pub connect_wait: Duration,
    pub shutdown_timeout: Duration,
    pub sentinel_prune_after: Duration,
    pub discovery: Discovery,
    pub failover_pause: Duration,
    pub drain_timeout: Duration,
    pub max_request_bytes: u64,
    pub max_clients: usize,
    /// Runtime threads; zero: one per CPU.
    pub threads: usize,
    /// Shared master connections per worker thread; zero: 1:1 mode.
    pub pool: usize,
    /// Zero: no keepalive.
    pub tcp_keepalive: Duration,
    /// Zero: idle clients are kept.
    pub idle_timeout: Duration,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:6379";
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9379";
pub const DEFAULT_MASTER_NAME: &str = "mymaster";

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
            log_format: LogFormat::Text,
            poll_interval: Duration::from_secs(1),
            sentinel_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            connect_wait: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            sentinel_prune_after: Duration::from_secs(600),
            discovery: Discovery::First,
            failover_pause: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            max_request_bytes: 512 * 1024 * 1024,
            max_clients: 10_000,
            threads: 0,
            pool: 0,
            tcp_keepalive: Duration::from_secs(60),
            idle_timeout: Duration::ZERO,
        }
    }

    /// Merge flags/env (already merged by clap) over the file named by `--config`, over defaults.
    pub fn load(cli: &Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(cli, file)
    }

    pub fn merge(cli: &Cli, file: FileConfig) -> anyhow::Result<Config> {
        let sentinels: Vec<String> = match (&cli.sentinels, file.sentinels) {
            (Some(list), _) => list.split(',').map(str::to_string).collect(),
            (None, Some(list)) => list,
            (None, None) => bail!(
                "no sentinels configured: give --sentinels host:port,... (or SENTINEL_PROXY_SENTINELS, or sentinels = [...] in the file)"
            ),
        };
        let sentinels = sentinels
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<HostPort>()
                    .map_err(|e| anyhow::anyhow!("sentinels: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if sentinels.is_empty() {
            bail!("sentinels: the list is empty");
        }
        let mut dedup: Vec<HostPort> = Vec::with_capacity(sentinels.len());
        for s in sentinels {
            if !dedup.contains(&s) {
                dedup.push(s);
            }
        }

        let master_name = pick(&cli.master_name, file.master_name)
            .unwrap_or_else(|| DEFAULT_MASTER_NAME.to_string());
        if master_name.is_empty() || master_name.chars().any(char::is_whitespace) {
            bail!("master-name: '{master_name}' must be non-empty and without spaces");
        }

        let mut cfg = Config::new(dedup, &master_name);
        cfg.listen = addr(
            "listen",
            pick(&cli.listen, file.listen).as_deref(),
            DEFAULT_LISTEN,
        )?;
        cfg.metrics_listen = addr(
            "metrics-listen",
            pick(&cli.metrics_listen, file.metrics_listen).as_deref(),
            DEFAULT_METRICS_LISTEN,
        )?;
        cfg.sentinel_auth = auth(
            "sentinel",
            pick(&cli.sentinel_username, file.sentinel_username),
            pick(&cli.sentinel_password, file.sentinel_password),
        )?;
        cfg.master_auth = auth(
            "master",
            pick(&cli.master_username, file.master_username),
            pick(&cli.master_password, file.master_password),
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
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("poll-interval", self.poll_interval),
            ("sentinel-timeout", self.sentinel_timeout),
            ("connect-timeout", self.connect_timeout),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                bail!("{name}: must be greater than zero");
            }
        }
        if self.listen == self.metrics_listen && self.listen.port() != 0 {
            bail!(
                "listen and metrics-listen are both {}: they need different ports",
                self.listen
            );
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    // toml's own message spans several lines (it quotes the source); keep the first for the
    // one-line error an operator reads, plus the position.
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_string();
        match e.span() {
            Some(span) => {
                let line = text[..span.start].matches('\n').count() + 1;
                anyhow::anyhow!("{}: line {line}: {msg}", path.display())
            }
            None => anyhow::anyhow!("{}: {msg}", path.display()),
        }
    })
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
        password: password.map(Secret),
    })
}

/// Parse `1048576`, `64kb`, `512mb`, `1gb` (powers of 1024, like Redis's config).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 512mb"))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(format!("'{text}' has an unknown unit (use kb, mb or gb)")),
    };
    match n.checked_mul(mult) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("'{text}' is out of range")),
    }
}

/// Parse `250ms`, `1s`, `1.5s`, `2m`. A unit is required: a bare `5` is ambiguous.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("'{t}' needs a unit: ms, s or m"))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{t}' is not a duration like 500ms or 2s"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("'{t}' has an unknown unit (use ms, s or m)")),
    };
    if !secs.is_finite() || secs > 86_400.0 {
        return Err(format!("'{t}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn sentinels_are_required_and_deduplicated() {
        assert!(Config::merge(&cli(&[]), FileConfig::default()).is_err());
        assert!(Config::merge(&cli(&["--sentinels", " , "]), FileConfig::default()).is_err());
        let c =
            Config::merge(&cli(&["--sentinels", "a:1,b:2,a:1"]), FileConfig::default()).unwrap();
        assert_eq!(c.sentinels.len(), 2);
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
}
