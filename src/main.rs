//! The `sentinel-proxy` binary: parse flags, load and validate the config, set up logging, run.
//! Exit codes: 0 clean shutdown or `--check` passed; 1 runtime failure (e.g. cannot bind);
//! 2 invalid configuration or usage.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sentinel_proxy::config::{Cli, Config, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sentinel-proxy: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!(
            "sentinel-proxy: configuration ok (master '{}', {} sentinel(s), listen {}, metrics {})",
            config.master_name,
            config.sentinels.len(),
            config.listen,
            config.metrics_listen
        );
        return ExitCode::SUCCESS;
    }
    init_tracing(config.log_format);
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sentinel-proxy: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        sentinel_proxy::shutdown::cancel_on_signal(shutdown.clone());
        sentinel_proxy::run(config, shutdown).await
    })?;
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
