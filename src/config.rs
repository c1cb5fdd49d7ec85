//! Configuration: command-line flags, `SENTINEL_PROXY_*` environment variables and an optional
//! TOML file, merged into one validated [`Config`] (precedence: flag > env > file > default).
//!
//! Every setting has the same name in all three places (`--master-name`, `SENTINEL_PROXY_MASTER_NAME`,
//! `master-name = …`), so an operator never has to translate between them. Validation happens here,
//! once, so the rest of the proxy only ever sees values that make sense. Secrets are held in
//! [`Secret`], whose `Debug` prints a mask, so a config dumped to a log or /status leaks nothing.
//!
//! Here: [`Config`] and the merge that validates it; `cli.rs` the flags and env, `file.rs` the
//! TOML file, `values.rs` the value types and parsers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;

mod cli;
mod file;
mod values;

pub use cli::{Cli, Command};
pub use file::FileConfig;
use file::read_file;
pub use values::{Auth, Discovery, HostPort, LogFormat, Secret, parse_duration, parse_size};

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
    })
}

#[cfg(test)]
mod tests {
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
