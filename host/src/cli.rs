//! The `weft` command line: `serve`, `validate`, `demo`.

use crate::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Weft: a WebAssembly plugin-hosted integration platform.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (overridden by RUST_LOG), e.g. `info` or `weft=debug`.
    #[arg(long, default_value = "info", global = true)]
    pub log_level: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service with a config file.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and its plugins without starting anything.
    Validate {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Zero-setup demo: the shop example with its downstream services.
    Demo {
        /// How many sample orders to post.
        #[arg(long, default_value_t = 5)]
        orders: usize,
        /// Keep running after the demo (to look at the dashboard).
        #[arg(long)]
        keep_running: bool,
    },
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Entry point of the `weft` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let running = crate::app::start(config).await?;
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight attempts");
            running.shutdown().await;
            Ok(())
        }
        Command::Validate { config: path } => {
            let config = Config::load(&path)?;
            let cache = tempfile_dir()?;
            let runtime = std::sync::Arc::new(crate::runtime::Runtime::new(&cache)?);
            let plugins = crate::app::load_plugins(&config, &runtime, None)?;
            let routes = crate::app::resolve_routes(&config, &plugins)?;
            let _ = std::fs::remove_dir_all(&cache);
            println!(
                "{}: ok ({} plugins, {} routes)",
                path.display(),
                plugins.len(),
                routes.len()
            );
            Ok(())
        }
        Command::Demo {
            orders,
            keep_running,
        } => crate::demo::run(orders, keep_running).await,
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("weft-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
