//! Master groups: the `[[group]]` tables of the file, each one Sentinel master the proxy serves on
//! a listener of its own, and the implicit single group the top-level settings make when the file
//! has none (`--listen`, `--master-name`, `--sentinels`… as they always were).
//!
//! A group's table names its master and its listen address; sentinels and credentials it does not
//! give come from the top level, so two groups behind the same three sentinels (a broker and a
//! cache) write those once.

use std::collections::HashSet;
use std::net::SocketAddr;

use anyhow::bail;
use serde::Deserialize;

use super::{Ack, Auth, HostPort, Secret, secret_or_file};

/// One `[[group]]` table as written.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GroupFile {
    /// The group's label in /metrics, /status and logs [default: its master name].
    pub name: Option<String>,
    /// The Sentinel master name (required).
    pub master_name: Option<String>,
    /// Where this group's clients connect (required).
    pub listen: Option<String>,
    /// The group's read port, over its healthy replicas (optional).
    pub read_listen: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    pub sentinel_password_file: Option<String>,
    pub master_username: Option<String>,
    pub master_password: Option<String>,
    pub master_password_file: Option<String>,
    /// When its clients get a write's reply [default: the top level's `ack`].
    pub ack: Option<String>,
}

/// One master group, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// The `group` label of its metrics and its key in /status.
    pub name: String,
    pub master_name: String,
    pub listen: SocketAddr,
    /// Its read port, if it has one (`read.rs`).
    pub read_listen: Option<SocketAddr>,
    pub sentinels: Vec<HostPort>,
    pub sentinel_auth: Auth,
    pub master_auth: Auth,
    /// When a write's reply reaches its client (`session/ack.rs`).
    pub ack: Ack,
}

/// What a group does not set comes from here (the top level, already validated).
pub(super) struct Defaults<'a> {
    pub sentinels: &'a [HostPort],
    pub sentinel_auth: &'a Auth,
    pub master_auth: &'a Auth,
    pub ack: Ack,
}

/// The `[[group]]` tables, validated: each needs a master name and a listen address; names
/// and listen addresses are unique, and no two groups serve one master from one sentinel set.
pub(super) fn resolve(
    tables: Vec<GroupFile>,
    defaults: &Defaults<'_>,
) -> anyhow::Result<Vec<GroupConfig>> {
    let mut out: Vec<GroupConfig> = Vec::with_capacity(tables.len());
    for (i, t) in tables.into_iter().enumerate() {
        let at = |what: &str| format!("group {}: {what}", i + 1);
        let Some(master_name) = t.master_name else {
            bail!("{}", at("master-name is required"));
        };
        check_name(&master_name).map_err(|e| anyhow::anyhow!("{}", at(&e)))?;
        let name = t.name.unwrap_or_else(|| master_name.clone());
        check_name(&name).map_err(|e| anyhow::anyhow!("{}", at(&e)))?;
        let at = |what: &str| format!("group '{name}': {what}");
        let Some(listen) = t.listen else {
            bail!("{}", at("listen is required"));
        };
        let listen: SocketAddr = listen.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{}",
                at(&format!(
                    "listen '{listen}' is not an address like 0.0.0.0:6379"
                ))
            )
        })?;
        let read_listen = match t.read_listen {
            Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| {
                anyhow::anyhow!(
                    "{}",
                    at(&format!(
                        "read-listen '{text}' is not an address like 0.0.0.0:6380"
                    ))
                )
            })?),
            None => None,
        };
        let sentinels = match t.sentinels {
            Some(list) => parse_sentinels(&list).map_err(|e| anyhow::anyhow!("{}", at(&e)))?,
            None => defaults.sentinels.to_vec(),
        };
        let password = |name: &str, value, file| {
            secret_or_file(name, value, file).map_err(|e| anyhow::anyhow!("{}", at(&e)))
        };
        let sentinel_password = password(
            "sentinel-password",
            t.sentinel_password,
            t.sentinel_password_file,
        )?;
        let master_password =
            password("master-password", t.master_password, t.master_password_file)?;
        let sentinel_auth = merge_auth(
            t.sentinel_username,
            sentinel_password,
            defaults.sentinel_auth,
        )
        .map_err(|e| anyhow::anyhow!("{}", at(&format!("sentinel-{e}"))))?;
        let master_auth = merge_auth(t.master_username, master_password, defaults.master_auth)
            .map_err(|e| anyhow::anyhow!("{}", at(&format!("master-{e}"))))?;
        let ack = match t.ack {
            Some(text) => text
                .parse::<Ack>()
                .map_err(|e| anyhow::anyhow!("{}", at(&format!("ack: {e}"))))?,
            None => defaults.ack,
        };
        out.push(GroupConfig {
            name,
            master_name,
            listen,
            read_listen,
            sentinels,
            sentinel_auth,
            master_auth,
            ack,
        });
    }
    let mut names = HashSet::new();
    let mut listens = HashSet::new();
    for g in &out {
        if !names.insert(g.name.as_str()) {
            bail!(
                "two groups are named '{}': give each a distinct name",
                g.name
            );
        }
        for addr in std::iter::once(g.listen).chain(g.read_listen) {
            if addr.port() != 0 && !listens.insert(addr) {
                bail!("two listeners on {addr}");
            }
        }
    }
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[i + 1..].iter().find(|b| {
            b.master_name == a.master_name
                && b.sentinels.iter().collect::<HashSet<_>>()
                    == a.sentinels.iter().collect::<HashSet<_>>()
        }) {
            bail!(
                "groups '{}' and '{}' both serve master '{}' of the same sentinels",
                a.name,
                b.name,
                a.master_name
            );
        }
    }
    Ok(out)
}

/// A group or master name: non-empty, no whitespace (it is a metric label and a log field).
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(format!(
            "name '{name}' must be non-empty and without spaces"
        ));
    }
    Ok(())
}

/// `host:port` strings → a deduplicated, non-empty list.
pub(super) fn parse_sentinels(list: &[String]) -> Result<Vec<HostPort>, String> {
    let mut out: Vec<HostPort> = Vec::with_capacity(list.len());
    for s in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let hp = s
            .parse::<HostPort>()
            .map_err(|e| format!("sentinels: {e}"))?;
        if !out.contains(&hp) {
            out.push(hp);
        }
    }
    if out.is_empty() {
        return Err("sentinels: the list is empty".into());
    }
    Ok(out)
}

/// A group's own username/password over the default: a group that gives a password gives its
/// credentials whole (a username alone from the top level would pair with the wrong password).
fn merge_auth(
    username: Option<String>,
    password: Option<String>,
    default: &Auth,
) -> Result<Auth, String> {
    match (username, password) {
        (None, None) => Ok(default.clone()),
        (Some(_), None) => Err("username is set but the password is not".into()),
        (username, Some(p)) => Ok(Auth {
            username,
            password: Some(Secret::new(p)),
            tls: default.tls.clone(),
        }),
    }
}
