//! Assembles a running Weft: queue, runtime, plugins, router, listeners; and
//! takes it down cleanly.

use crate::admin::Admin;
use crate::config::{Config, PluginConfig};
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueError, SledQueue};
use crate::retry::RetryPolicy;
use crate::router::{Route, Router};
use crate::runtime::egress::{EgressPolicy, HostPattern, Injection};
use crate::runtime::host::{PluginContext, Secret};
use crate::runtime::state::PluginState;
use crate::runtime::{builtin_path, LoadError, Plugin, Role, Runtime};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Why Weft could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The queue could not be opened.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A route uses a plugin in the wrong role.
    #[error("route \"{route}\": plugin \"{plugin}\" is a {actual}, but is used as a {expected}")]
    Role {
        /// Route.
        route: String,
        /// Plugin.
        plugin: String,
        /// Its role.
        actual: Role,
        /// Role the route needs.
        expected: Role,
    },
    /// The admin token could not be read, or is too short.
    #[error("server.admin_token: {0}")]
    AdminToken(String),
    /// A secret could not be resolved.
    #[error("plugins.{plugin}.secrets.{secret}: {reason}")]
    Secret {
        /// Plugin.
        plugin: String,
        /// Secret name.
        secret: String,
        /// Why (never the value).
        reason: String,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// File-system trouble.
    #[error("{0}")]
    Io(String),
}

/// A running Weft instance.
pub struct Running {
    /// Where webhooks are accepted.
    pub webhook_addr: SocketAddr,
    /// Where the admin API listens, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The admin API's bearer token.
    pub admin_token: String,
    /// The router (for in-process callers such as the demo).
    pub router: Arc<Router>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    queue: Arc<SledQueue>,
}

/// Loads every plugin of the config (compiling or reading the cache).
pub fn load_plugins(
    config: &Config,
    runtime: &Arc<Runtime>,
    queue: Option<&SledQueue>,
) -> Result<HashMap<String, Arc<Plugin>>, StartError> {
    let mut plugins = HashMap::new();
    for (name, pc) in &config.plugins {
        let plugin = load_plugin(config, name, pc, runtime, queue)?;
        tracing::info!(plugin = %name, role = %plugin.role(), digest = %&plugin.digest[..12], "plugin loaded");
        plugins.insert(name.clone(), Arc::new(plugin));
    }
    Ok(plugins)
}

fn load_plugin(
    config: &Config,
    name: &str,
    pc: &PluginConfig,
    runtime: &Arc<Runtime>,
    queue: Option<&SledQueue>,
) -> Result<Plugin, StartError> {
    let path = match (&pc.path, &pc.builtin) {
        (Some(p), _) => config.resolve(p),
        (None, Some(b)) => builtin_path(b),
        (None, None) => {
            return Err(StartError::Io(format!(
                "plugins.{name}: no path or builtin"
            )))
        }
    };
    let mut secrets = BTreeMap::new();
    for (secret, r) in &pc.secrets {
        let value = r
            .resolve(&config.base_dir)
            .map_err(|reason| StartError::Secret {
                plugin: name.into(),
                secret: secret.clone(),
                reason,
            })?;
        secrets.insert(secret.clone(), Secret(value));
    }
    let mut inject = Vec::new();
    for i in &pc.inject {
        let secret = secrets.get(&i.secret).ok_or_else(|| StartError::Secret {
            plugin: name.into(),
            secret: i.secret.clone(),
            reason: "not declared".into(),
        })?;
        let mut value = i.prefix.as_bytes().to_vec();
        value.extend_from_slice(&secret.0);
        let mut value = http::HeaderValue::from_bytes(&value).map_err(|_| StartError::Secret {
            plugin: name.into(),
            secret: i.secret.clone(),
            reason: "not a valid header value".into(),
        })?;
        value.set_sensitive(true);
        inject.push(Injection {
            host: HostPattern::parse(&i.host).map_err(StartError::Io)?,
            header: http::HeaderName::from_bytes(i.header.as_bytes())
                .map_err(|e| StartError::Io(e.to_string()))?,
            value,
        });
    }
    let limits = pc.limits(&config.limits);
    let allowed = pc
        .allowed_hosts
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Io)?;
    let egress = Arc::new(EgressPolicy {
        plugin: name.to_string(),
        allowed,
        inject,
        timeout: Duration::from_millis(limits.http_timeout_ms),
        max_response_bytes: limits.max_response_bytes,
        max_call_bytes: limits.memory_mib.saturating_mul(1 << 20),
        tape: None,
    });
    let state = match queue {
        Some(q) => q.state_tree(name)?,
        None => sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|e| StartError::Io(e.to_string()))?
            .open_tree("state")
            .map_err(|e| StartError::Io(e.to_string()))?,
    };
    let state = PluginState::open(state, limits.state_mib.saturating_mul(1 << 20))
        .map_err(|e| StartError::Io(format!("plugin {name}: {e}")))?;
    let ctx = PluginContext {
        name: name.to_string(),
        config: pc.config_strings(),
        secrets,
        state,
        egress,
    };
    Ok(runtime.load(ctx, &path, limits)?)
}

/// Resolves routes to plugins and checks every plugin is used in its role.
pub fn resolve_routes(
    config: &Config,
    plugins: &HashMap<String, Arc<Plugin>>,
) -> Result<Vec<Route>, StartError> {
    let mut routes = Vec::new();
    for rc in &config.routes {
        let route_name = rc.name.get_ref().clone();
        let get = |name: &str, expected: Role| -> Result<Arc<Plugin>, StartError> {
            let plugin = plugins.get(name).cloned().ok_or_else(|| {
                StartError::Io(format!("route {route_name}: unknown plugin {name}"))
            })?;
            if plugin.role() != expected {
                return Err(StartError::Role {
                    route: route_name.clone(),
                    plugin: name.into(),
                    actual: plugin.role(),
                    expected,
                });
            }
            Ok(plugin)
        };
        get(rc.source.get_ref(), Role::Source)?;
        let transforms = rc
            .transforms
            .iter()
            .map(|t| get(t.get_ref(), Role::Transform))
            .collect::<Result<_, _>>()?;
        let sinks = rc
            .sinks
            .iter()
            .map(|s| get(s.get_ref(), Role::Sink))
            .collect::<Result<_, _>>()?;
        routes.push(Route {
            name: route_name.clone(),
            source: rc.source.get_ref().clone(),
            transforms,
            sinks,
        });
    }
    Ok(routes)
}

/// Connections the admin listener keeps open at once.
const ADMIN_CONNECTIONS: usize = 256;

/// The shortest configured admin token accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// The admin token `server.admin_token` names, if one is configured
/// (`weft validate` checks it too).
pub fn configured_admin_token(config: &Config) -> Result<Option<String>, StartError> {
    let Some(r) = &config.server.admin_token else {
        return Ok(None);
    };
    let v = r
        .resolve(&config.base_dir)
        .map_err(StartError::AdminToken)?;
    // A token read from a file or the environment often ends in a line
    // break; clients never send one (hyper trims header values).
    let token = String::from_utf8_lossy(&v).trim().to_string();
    if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        return Err(StartError::AdminToken(format!(
            "must be at least {MIN_ADMIN_TOKEN_CHARS} characters (leading and trailing whitespace does not count)"
        )));
    }
    Ok(Some(token))
}

fn admin_token(config: &Config, data_dir: &Path) -> Result<String, StartError> {
    if let Some(token) = configured_admin_token(config)? {
        return Ok(token);
    }
    let path = data_dir.join("admin-token");
    if let Some(token) = token_in_file(&path)? {
        return Ok(token);
    }
    let token: String = {
        use rand::Rng;
        let bytes: [u8; 24] = rand::thread_rng().gen();
        hex::encode(bytes)
    };
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StartError::Io(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(token.as_bytes())
        .map_err(|e| StartError::Io(e.to_string()))?;
    tracing::info!(path = %path.display(), "generated an admin token (no server.admin_token configured)");
    Ok(token)
}

/// The token kept in `path` by an earlier start, if there is one: it must
/// be text of at least [`MIN_ADMIN_TOKEN_CHARS`] characters, readable by
/// this user alone. A missing or empty file means "generate one"; anything
/// else wrong is an error rather than a silently replaced token.
fn token_in_file(path: &Path) -> Result<Option<String>, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| StartError::AdminToken(format!("{}: {why}", path.display()));
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read: {e}"))),
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| bad("not text; delete it to have a new token generated".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Ok(None);
    }
    if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        return Err(bad(format!(
            "the token must be at least {MIN_ADMIN_TOKEN_CHARS} characters; delete the file to have a new one generated"
        )));
    }
    let mode = std::fs::metadata(path)
        .map_err(|e| bad(format!("cannot read: {e}")))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "readable or writable by other users (mode {:o}); `chmod 600` it",
            mode & 0o777
        )));
    }
    Ok(Some(token.to_string()))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Starts Weft with `config`.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        StartError::Io(format!(
            "cannot create data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    let queue = {
        let dir = data_dir.clone();
        let delay = Duration::from_micros(config.storage.commit_delay_us);
        tokio::task::spawn_blocking(move || SledQueue::open_with(&dir, delay))
            .await
            .map_err(|e| StartError::Io(e.to_string()))??
    };
    let queue = Arc::new(queue);
    let runtime = Arc::new(Runtime::new(&config.cache_dir())?);
    let plugins = {
        let (config, runtime, queue) = (config.clone(), runtime.clone(), queue.clone());
        tokio::task::spawn_blocking(move || load_plugins(&config, &runtime, Some(&queue)))
            .await
            .map_err(|e| StartError::Io(e.to_string()))??
    };
    let routes = resolve_routes(&config, &plugins)?;
    // Everything that can still fail comes before anything starts: a start
    // that fails must not have accepted webhooks or begun deliveries.
    let token = admin_token(&config, &data_dir)?;
    let listener = bind(config.server.listen).await?;
    let admin_listener = match config.server.admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (router, workers) = Router::new(
        queue.clone() as Arc<dyn Queue>,
        routes,
        RetryPolicy::new(config.retry.clone()),
        config.server.workers,
        metrics.clone(),
        shutdown_rx.clone(),
    );
    let resumed = router.resume().await?;
    if resumed > 0 {
        tracing::info!(
            records = resumed,
            "resuming pending work from the previous run"
        );
    }
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let header_timeout = Duration::from_millis(config.server.header_read_timeout_ms);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(router.clone().start(workers, grace)));
    tasks.push(tokio::spawn(crate::runtime::sweep_idle(
        plugins.values().cloned().collect(),
        shutdown_rx.clone(),
    )));

    let webhook_addr = listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let sources: HashMap<String, Arc<Plugin>> = plugins
        .iter()
        .filter(|(_, p)| p.role() == Role::Source)
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    let rates = config
        .plugins
        .iter()
        .filter(|(name, _)| sources.contains_key(*name))
        .map(|(name, pc)| {
            let per_s = pc.limits(&config.limits).requests_per_s;
            (name.clone(), crate::rate::RateLimit::per_second(per_s))
        })
        .collect();
    let ingress = Arc::new(Ingress {
        sources,
        router: router.clone(),
        metrics: metrics.clone(),
        max_body_bytes: config.server.max_body_bytes,
        body_timeout: Duration::from_millis(config.server.body_read_timeout_ms),
        slots: Semaphore::new(config.server.max_concurrent_requests),
        per_client: crate::ingress::ClientSlots::new(config.server.max_requests_per_client),
        rates,
    });
    let handler = Arc::new(move |req| ingress.clone().handle(req));
    tasks.push(tokio::spawn(crate::server::serve(
        listener,
        handler,
        header_timeout,
        config.server.max_connections,
        shutdown_rx.clone(),
        grace,
    )));
    tracing::info!(addr = %webhook_addr, "accepting webhooks at POST /hooks/{{source}}");

    let mut admin_addr = None;
    if let Some(listener) = admin_listener {
        let local = listener
            .local_addr()
            .map_err(|e| StartError::Io(e.to_string()))?;
        admin_addr = Some(local);
        let admin = Arc::new(Admin {
            router: router.clone(),
            metrics: metrics.clone(),
            plugins: plugins.clone(),
            token: token.clone(),
        });
        let handler = Arc::new(move |req| admin.clone().handle(req));
        tasks.push(tokio::spawn(crate::server::serve(
            listener,
            handler,
            header_timeout,
            ADMIN_CONNECTIONS,
            shutdown_rx.clone(),
            grace,
        )));
        tracing::info!(addr = %local, "admin API and dashboard listening");
    }
    Ok(Running {
        webhook_addr,
        admin_addr,
        admin_token: token,
        router,
        metrics,
        shutdown: shutdown_tx,
        tasks,
        queue,
    })
}

impl Running {
    /// Resolves with the reason if Weft can no longer work (its queue
    /// stopped): the caller should shut down and exit with an error, so
    /// that a supervisor restarts it.
    pub async fn failed(&self) -> String {
        self.router.failure().await
    }

    /// Stops accepting, lets in-flight attempts finish (within the grace
    /// period), and syncs the queue.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Err(e) = self.queue.close().await {
            tracing::error!(error = %e, "closing the queue failed");
        }
        tracing::info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_from_file(contents: &str) -> Result<String, StartError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), contents).unwrap();
        let config = Config::parse(
            "[server]\nadmin_token = { file = \"token\" }\n",
            "weft.toml",
            dir.path(),
        )
        .unwrap();
        admin_token(&config, dir.path())
    }

    #[test]
    fn a_configured_admin_token_is_trimmed_and_must_not_be_short() {
        assert_eq!(
            token_from_file("0123456789abcdef-token\n").unwrap(),
            "0123456789abcdef-token"
        );
        let err = token_from_file("  short \n").unwrap_err().to_string();
        assert!(
            err.starts_with("server.admin_token: must be at least 16 characters"),
            "{err}"
        );
        assert!(token_from_file("\n").is_err());
    }

    /// The token Weft generates is kept and reused; a kept file that is
    /// too short, not text or open to other users is refused, not replaced.
    #[test]
    fn a_generated_admin_token_is_kept_and_a_bad_token_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse("", "weft.toml", dir.path()).unwrap();
        let first = admin_token(&config, dir.path()).unwrap();
        assert_eq!(first.len(), 48);
        assert_eq!(admin_token(&config, dir.path()).unwrap(), first);
        let path = dir.path().join("admin-token");
        let refused = |contents: &[u8], mode: u32| {
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            admin_token(&config, dir.path()).unwrap_err().to_string()
        };
        assert!(refused(b"changeme\n", 0o600).contains("at least 16 characters"));
        assert!(refused(b"\xff\xfe0123456789abcdef", 0o600).contains("not text"));
        assert!(refused(first.as_bytes(), 0o644).contains("chmod 600"));
        // Nothing was overwritten.
        assert_eq!(std::fs::read(&path).unwrap(), first.as_bytes());
        // An empty file: a new token is generated.
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let second = admin_token(&config, dir.path()).unwrap();
        assert_eq!(second.len(), 48);
        assert_ne!(second, first);
    }
}
