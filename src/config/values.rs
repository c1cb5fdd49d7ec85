//! The values settings take: addresses of sentinels (`HostPort`), credentials (`Auth`, `Secret`,
//! which never prints its value), enums, and the parsers of sizes and durations.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;

#[derive(ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Discovery {
    /// The first answer, confirmed with ROLE.
    #[default]
    First,
    /// A majority of the reachable sentinels must name the master, confirmed with ROLE.
    Quorum,
}

/// Where the read port sends a client when no replica is healthy.
#[derive(ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReadFallback {
    /// To the master, as the group's own port would.
    #[default]
    Master,
    /// Nowhere: `-ERR sentinel-proxy: no healthy replica for '<name>'`.
    Refuse,
}

/// When a write's reply may reach its client (`ack`): at once, as Redis gives it, or only once
/// the master confirms (`WAIT`) that this many replicas have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ack {
    #[default]
    Master,
    Replicas(u32),
}

impl std::str::FromStr for Ack {
    type Err = String;
    fn from_str(s: &str) -> Result<Ack, String> {
        let s = s.trim();
        if s == "master" || s == "none" {
            return Ok(Ack::Master);
        }
        match s.strip_prefix("replicas:").map(str::parse::<u32>) {
            Some(Ok(n)) if n >= 1 => Ok(Ack::Replicas(n)),
            _ => Err(format!(
                "'{s}' is not `master` (the default) or `replicas:N` with N at least 1"
            )),
        }
    }
}

impl std::fmt::Display for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ack::Master => f.write_str("master"),
            Ack::Replicas(n) => write!(f, "replicas:{n}"),
        }
    }
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

/// How the proxy reaches one kind of peer (Redis nodes, or sentinels): credentials for
/// `AUTH [username] password` (no password: no AUTH is sent), and TLS if it is on for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<std::sync::Arc<crate::tls::TlsClient>>,
}

impl Auth {
    /// The `AUTH` command these credentials send, as arguments (`None`: no password, no AUTH).
    pub fn command(&self) -> Option<Vec<&[u8]>> {
        let password = self.password.as_ref()?.expose().as_bytes();
        Some(match &self.username {
            Some(user) => vec![b"AUTH", user.as_bytes(), password],
            None => vec![b"AUTH", password],
        })
    }
}

/// A secret given directly or as a file (`…-file`, for Kubernetes secrets and the like): one of
/// the two at most; a file's one trailing newline is not part of the secret.
pub fn secret_or_file(
    name: &str,
    value: Option<String>,
    file: Option<String>,
) -> Result<Option<String>, String> {
    match (value, file) {
        (Some(_), Some(_)) => Err(format!("{name} and {name}-file are both set: give one")),
        (Some(v), None) => Ok(Some(v)),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{name}-file: cannot read {path}: {e}"))?;
            let text = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            if text.is_empty() {
                return Err(format!("{name}-file: {path} is empty"));
            }
            Ok(Some(text.to_string()))
        }
    }
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
