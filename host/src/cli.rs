//! The `weft` command line: `serve`, `validate`, `demo`, and `plugin new / build / test`.

use crate::config::Config;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Weft: a WebAssembly plugin-hosted integration platform.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (overridden by RUST_LOG), e.g. `info` or `weft=debug`.
    /// Default: `info` for `serve`, `warn` for `demo` (its story is its
    /// output; `--log-level info` shows the host's log beside it) and for
    /// the one-shot commands (`validate`, `plugin ...`), whose output is
    /// their answer.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
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
    /// Write, build and test plugins.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        command: PluginCommand,
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

/// `weft plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin that builds and passes its own sample test.
    New {
        /// Plugin name (lower case, digits, '-').
        name: String,
        /// Language.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Role: source, transform or sink.
        #[arg(long)]
        role: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin in a directory into a component.
    Build {
        /// The plugin's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run a plugin standalone, in the host's sandbox, on JSON Lines input.
    Test {
        /// The component (.wasm).
        plugin: PathBuf,
        /// Input events (transform, sink) or webhook requests (source), one JSON per line.
        #[arg(long)]
        input: PathBuf,
        /// Expected output lines; differences fail the run.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// A config value, `key=value` (repeatable).
        #[arg(long = "config", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// An outbound grant, `scheme://host[:port]` (repeatable).
        #[arg(long = "allow-host")]
        allow_hosts: Vec<String>,
        /// A secret, `name=ENV_VAR` (repeatable).
        #[arg(long = "secret", value_parser = parse_key_value)]
        secrets: Vec<(String, String)>,
        /// Record the plugin's outbound HTTP exchanges into this fixture (JSON Lines).
        #[arg(long, conflicts_with = "replay")]
        record: Option<PathBuf>,
        /// Answer the plugin's outbound HTTP from a recorded fixture, without network.
        #[arg(long)]
        replay: Option<PathBuf>,
    },
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got \"{s}\""))
}

fn init_logging(cli: &Cli) {
    let level = cli.log_level.as_deref().unwrap_or(match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: a log file or a journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| OneLine(std::io::stderr()));
    if cli.log_format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.fmt_fields(text_fields()).init();
    }
}

/// How the text log writes a record's fields: `name=value`, with a value
/// quoted and escaped (as Rust writes a string literal) when it holds a
/// space, `=`, a quote, a backslash or a control character. Event ids,
/// rejection reasons and plugin messages come from outside: unquoted, an id
/// such as `x route=other` would read as two fields, and an escape byte
/// would reach the terminal. The message itself stays unquoted, with its
/// control characters escaped.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        if field.name() == "message" {
            for c in text.chars() {
                if c.is_control() {
                    write!(w, "{}", c.escape_debug())?;
                } else {
                    write!(w, "{c}")?;
                }
            }
            Ok(())
        } else if text.is_empty() || text.chars().any(needs_quotes) {
            write!(w, "{}={:?}", field.name(), text)
        } else {
            write!(w, "{}={}", field.name(), text)
        }
    })
    .delimited(" ")
}

/// Whether a field value holding `c` must be quoted in the text log.
fn needs_quotes(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '=' | '"' | '\\')
}

/// A log writer that keeps every record on one line: line breaks inside it
/// (an event id from a webhook body, a plugin's log message, a rejection
/// reason) are written as `\n` and `\r`, so that nothing from outside can
/// forge a log line. The formatter hands over one whole record per write.
pub struct OneLine<W>(pub W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (buf, &b""[..]),
        };
        if !body.iter().any(|b| *b == b'\n' || *b == b'\r') {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                _ => line.push(b),
            }
        }
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// What `SIGHUP` reloads: the listeners' TLS certificate and key, once
/// the instance that has them is running (empty before, and without
/// `server.tls`).
pub type HangupReload = Arc<OnceLock<Arc<crate::tls::ListenerTls>>>;

/// Resolves at SIGINT or SIGTERM. SIGHUP reloads what `reload` holds by
/// then (the TLS certificate and key), and nothing else: the config is not
/// reloaded.
pub fn shutdown_signal(
    reload: HangupReload,
    tls_configured: bool,
) -> impl std::future::Future<Output = ()> {
    // Registered now, not at the first poll: a signal that arrives while
    // Weft is still starting must find its handler in place.
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        // SIGHUP (a closed terminal, a service manager's "reload") would
        // otherwise kill the process on the spot.
        if let Ok(mut hangups) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    // Reading the files and building the TLS config is
                    // blocking work: off the async threads.
                    let tls = reload.get().cloned();
                    let _ = tokio::task::spawn_blocking(move || {
                        on_hangup(tls.as_ref(), tls_configured)
                    })
                    .await;
                }
            });
        }
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        if let (Some(mut term), Some(mut int)) = term {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One SIGHUP: reloads the TLS certificate and key if there are any.
fn on_hangup(tls: Option<&Arc<crate::tls::ListenerTls>>, tls_configured: bool) {
    let Some(tls) = tls else {
        if tls_configured {
            tracing::warn!("SIGHUP while starting: nothing reloaded (the certificate is read by the start itself)");
        } else {
            tracing::warn!("SIGHUP: nothing to reload (no server.tls); Weft does not reload its config, restart it to apply a changed one");
        }
        return;
    };
    match tls.reload() {
        Ok(()) => {
            tracing::info!(cert = %tls.cert_path().display(), "SIGHUP: TLS certificate and key reloaded; new connections use them (the config itself is not reloaded)")
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the current one stays")
        }
    }
}

/// How often (in task polls) a tokio worker looks at the runtime's global
/// queue: every time, instead of tokio's default of every 31st. A webhook's
/// acknowledgement is woken by the queue's writer thread, from outside the
/// runtime, so its task lands in the global queue, behind the delivery work
/// in the workers' local queues. Measured in docs/BENCHMARKS.md (tuned relay,
/// alternating runs: +5% events/s at 16 clients, +10% at 64, storage wait
/// 0.44–0.47 against 0.46–0.53 ms).
const GLOBAL_QUEUE_INTERVAL: u32 = 1;

/// Entry point of the `weft` binary.
pub fn main() -> anyhow::Result<()> {
    // Error values capture no stack trace unless asked for explicitly with
    // RUST_LIB_BACKTRACE=1. With RUST_BACKTRACE=1 alone, every error a
    // plugin's host call returns would capture one (tens of µs each), and its
    // debug text, which plugins can read, would carry it; and a config error
    // would end in a stack trace. Panics still print theirs (RUST_BACKTRACE).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Called first thing in `main`: no other thread exists yet.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .global_queue_interval(GLOBAL_QUEUE_INTERVAL)
        .enable_all()
        .build()
        .context("starting tokio")?;
    let outcome = runtime.block_on(run(cli));
    // Work still running on the blocking pool (a compile a signal cut short
    // during start-up) is not waited for: dropping the runtime would.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let reload = HangupReload::default();
            let signalled = shutdown_signal(reload.clone(), config.server.tls.is_some());
            tokio::pin!(signalled);
            // A signal during start-up (a long first compile, a large queue
            // to resume) stops it there.
            let running = tokio::select! {
                started = crate::app::start(config) => started?,
                () = &mut signalled => {
                    tracing::info!("stopped while starting");
                    return Ok(());
                }
            };
            if let Some(tls) = running.tls() {
                let _ = reload.set(tls);
            }
            let failure = tokio::select! {
                _ = signalled => None,
                reason = running.failed() => Some(reason),
            };
            tracing::info!("shutting down: finishing in-flight attempts");
            running.shutdown().await;
            match failure {
                // A non-zero exit: a supervisor restarts Weft, and everything
                // stored resumes.
                Some(reason) => anyhow::bail!("stopped: {reason}"),
                None => Ok(()),
            }
        }
        Command::Validate { config: path } => {
            let config = Config::load(&path)?;
            let cache = ScratchDir::create("weft-validate")?;
            let runtime = std::sync::Arc::new(crate::runtime::Runtime::new(&cache.0)?);
            let plugins = crate::app::load_plugins(&config, &runtime, None)?;
            crate::app::check_plugins(&config, &plugins).await?;
            let routes = crate::app::resolve_routes(&config, &plugins)?;
            crate::app::configured_admin_token(&config)?;
            config.listener_tls()?;
            let count =
                |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
            println!(
                "{}: ok ({}, {})",
                path.display(),
                count(plugins.len(), "plugin"),
                count(routes.len(), "route")
            );
            Ok(())
        }
        Command::Demo {
            orders,
            keep_running,
        } => crate::demo::run(orders, keep_running).await,
        Command::Plugin { command } => plugin(command).await,
    }
}

async fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New {
            name,
            lang,
            role,
            dir,
        } => {
            let path = crate::scaffold::new_plugin(&dir, &name, &lang, &role)?;
            println!(
                "created {} ({lang} {role}); next: weft plugin build --dir {}",
                path.display(),
                path.display()
            );
            Ok(())
        }
        PluginCommand::Build { dir } => {
            let wasm = crate::scaffold::build(&dir)?;
            println!("{}", wasm.display());
            Ok(())
        }
        PluginCommand::Test {
            plugin,
            input,
            expect,
            config,
            allow_hosts,
            secrets,
            record,
            replay,
        } => {
            let opts = crate::harness::HarnessOptions {
                plugin,
                input,
                config,
                allowed_hosts: allow_hosts,
                secrets,
                expect,
                limits: crate::config::Limits::default(),
                record,
                replay,
            };
            let ok = crate::harness::run(opts).await?;
            anyhow::ensure!(ok, "outputs differ from the expectations");
            Ok(())
        }
    }
}

/// The throwaway component cache of `weft validate`, removed when dropped:
/// also when validation fails half-way.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new directory `{prefix}-{pid}-{random}` under the temporary
    /// directory, readable and writable by this user alone (whatever the
    /// umask: the compiled-plugin cache refuses anything wider), removed
    /// with everything in it when dropped.
    pub(crate) fn create(prefix: &str) -> anyhow::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::OneLine;
    use std::io::Write;

    #[test]
    fn a_record_stays_on_one_line_whatever_its_fields_hold() {
        let mut out = OneLine(Vec::new());
        out.write_all(b"INFO accepted event=a\nERROR forged\r\n")
            .unwrap();
        out.write_all(b"INFO plain\n").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "INFO accepted event=a\\nERROR forged\\r\nINFO plain\n"
        );
    }

    /// Values from outside cannot pose as other fields or reach the
    /// terminal as escape sequences; plain values stay as they are.
    #[test]
    fn text_log_fields_are_quoted_when_they_could_mislead() {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .fmt_fields(super::text_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let id = "abc route=spoofed\u{1b}[31m";
            tracing::warn!(event = %id, record = 7, route = %"r", "dead-lettered \"x\"\u{1b}");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(
                r#"dead-lettered "x"\u{1b} event="abc route=spoofed\u{1b}[31m" record=7 route=r"#
            ),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
