//! The TOML file (`--config`): its keys, and reading it with a one-line error.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use super::{Discovery, GroupFile, LogFormat, ReadFallback};

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
    pub sentinel_password_file: Option<String>,
    pub master_password_file: Option<String>,
    pub users_file: Option<String>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_client_ca_file: Option<String>,
    pub tls_client_crl_file: Option<String>,
    pub tls_client_user: Option<String>,
    pub master_tls_ca_file: Option<String>,
    pub master_tls_cert_file: Option<String>,
    pub master_tls_key_file: Option<String>,
    pub master_tls_server_name: Option<String>,
    pub sentinel_tls_ca_file: Option<String>,
    pub sentinel_tls_cert_file: Option<String>,
    pub sentinel_tls_key_file: Option<String>,
    pub sentinel_tls_server_name: Option<String>,
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
    pub pool_idle_timeout: Option<String>,
    pub tcp_keepalive: Option<String>,
    pub idle_timeout: Option<String>,
    pub read_listen: Option<String>,
    pub read_max_lag: Option<String>,
    pub upgrade_socket: Option<String>,
    pub sentinel_listen: Option<String>,
    pub announce_host: Option<String>,
    pub read_fallback: Option<ReadFallback>,
    pub ack: Option<String>,
    pub ack_timeout: Option<String>,
    /// `[[group]]` tables: several master groups in one proxy (`groups.rs`).
    pub group: Option<Vec<GroupFile>>,
}

pub(super) fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
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
