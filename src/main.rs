//! The `sentinel-proxy` binary: parse flags, load and validate the config, set up logging, run.
//! Exit codes: 0 clean shutdown or `--check` passed; 1 runtime failure (e.g. cannot bind);
//! 2 invalid configuration or usage.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sentinel_proxy::config::{Cli, Command, Config, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashPassword) = cli.command {
        return hash_password();
    }
    if let Some(Command::Healthcheck { ready }) = &cli.command {
        return match Config::admin_address(&cli) {
            Ok(addr) => healthcheck(addr, *ready),
            Err(e) => {
                eprintln!("sentinel-proxy: invalid configuration: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Ctl { action }) = &cli.command {
        return match Config::admin_access(&cli) {
            Ok((addr, token)) => ctl(addr, token.as_ref().map(|t| t.expose()), action),
            Err(e) => {
                eprintln!("sentinel-proxy: invalid configuration: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sentinel-proxy: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        let mode = match config.pool {
            0 => "1:1".to_string(),
            n => format!("pooled, {n} per thread"),
        };
        let groups: Vec<String> = config
            .groups()
            .iter()
            .map(|g| {
                let read = g
                    .read_listen
                    .map(|r| format!(", read {r}"))
                    .unwrap_or_default();
                format!(
                    "master '{}', {} sentinel(s), listen {}{read}",
                    g.master_name,
                    g.sentinels.len(),
                    g.listen
                )
            })
            .collect();
        // What is protected, so a file that forgot a setting shows it.
        let mut tls = Vec::new();
        if let Some(t) = &config.tls {
            tls.push(match (&t.files.client_ca, config.tls_client_user) {
                (Some(_), Some(_)) => "client ports (mutual, certificates log in as users)",
                (Some(_), None) => "client ports (mutual)",
                (None, _) => "client ports",
            });
        }
        if config.master_auth.tls.is_some() {
            tls.push("redis nodes");
        }
        if config.sentinel_auth.tls.is_some() {
            tls.push("sentinels");
        }
        let tls = match tls.is_empty() {
            true => "TLS off".to_string(),
            false => format!("TLS: {}", tls.join(", ")),
        };
        let users = match &config.users {
            Some(u) => format!("{} proxy user(s)", u.len()),
            None => "clients authenticate to Redis".to_string(),
        };
        println!(
            "sentinel-proxy: configuration ok ({}; metrics {}, {mode}; {tls}; {users})",
            groups.join("; "),
            config.metrics_listen
        );
        return ExitCode::SUCCESS;
    }
    init_tracing(config.log_format);
    match serve(config, cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sentinel-proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(config: Config, cli: Cli) -> anyhow::Result<()> {
    // This thread runs the listener, the sentinel watcher and the admin endpoints; client
    // connections run on the worker threads (`--threads`, src/workers.rs).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        sentinel_proxy::shutdown::cancel_on_signal(shutdown.clone());
        let reload: sentinel_proxy::Reloader = Box::new(move || Config::load(&cli));
        sentinel_proxy::run(config, shutdown, Some(reload)).await
    })?;
    Ok(())
}

/// `sentinel-proxy hash-password`: one line from stdin (a terminal echoes it: pipe it in,
/// `printf %s "$PASSWORD" | sentinel-proxy hash-password`), its hash on stdout.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("sentinel-proxy: hash-password: cannot read standard input");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        eprintln!("sentinel-proxy: hash-password: give the password on standard input");
        return ExitCode::from(2);
    }
    match sentinel_proxy::auth::hash(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sentinel-proxy: hash-password: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log written to a file or a pipe (systemd, Docker,
        // `2>file`) stays plain text. NO_COLOR turns it off on a terminal too.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        );
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `sentinel-proxy ctl ACTION GROUP`: POST the action to the running proxy's admin address with
/// the admin token; print the answer; exit 0 on 200, 1 otherwise.
fn ctl(
    mut addr: std::net::SocketAddr,
    token: Option<&str>,
    action: &sentinel_proxy::config::CtlAction,
) -> ExitCode {
    use std::io::{Read, Write};
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let Some(token) = token else {
        eprintln!(
            "sentinel-proxy: ctl needs the admin token (--admin-token, --admin-token-file, SENTINEL_PROXY_ADMIN_TOKEN, or the --config file's)"
        );
        return ExitCode::from(2);
    };
    let path = action.path();
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
        // A switchover waits for the new master (30 s at most).
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match result {
        Ok(resp) => {
            let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
            let ok = head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200");
            if ok {
                print!("{body}");
                ExitCode::SUCCESS
            } else {
                let status = head.lines().next().unwrap_or("no answer");
                eprintln!(
                    "sentinel-proxy: {path} at {addr}: {status}: {}",
                    body.trim()
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("sentinel-proxy: {path} at {addr}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `sentinel-proxy healthcheck [--ready]`: GET /healthz (or /readyz) from the running proxy's
/// admin address; exit 0 on 200, 1 otherwise.
fn healthcheck(mut addr: std::net::SocketAddr, ready: bool) -> ExitCode {
    use std::io::{Read, Write};
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let path = if ready { "/readyz" } else { "/healthz" };
    let timeout = std::time::Duration::from_secs(2);
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match result {
        Ok(resp) if resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200") => {
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!(
                "sentinel-proxy: {path} at {addr}: {}",
                resp.lines().next().unwrap_or("no answer")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("sentinel-proxy: {path} at {addr}: {e}");
            ExitCode::from(1)
        }
    }
}
