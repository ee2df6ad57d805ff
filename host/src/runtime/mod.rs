//! The sandboxed plugin runtime: one wasmtime engine, compiled components
//! cached on disk, one `InstancePre` per plugin and a fresh, limited store per
//! call.
//!
//! Every call runs with a memory cap over all its memories ([`limits`]), a CPU budget
//! (epoch interruption: a ticker thread advances the epoch every
//! [`TICK_MS`] ms and the store yields to tokio at each tick until its budget
//! is spent), a wall-clock cap, and a WASI context that grants nothing.
//! A trap, a panic, a timeout or a memory overrun fails that one call with a
//! [`PluginError`]; the host goes on.

pub mod bindings;
pub mod cache;
pub mod egress;
pub mod host;
pub mod limits;
pub mod state;
pub mod stderr;
pub mod tape;

use crate::config::Limits;
use crate::event::Event;
use bindings::sink::{Sink, SinkPre};
use bindings::source::{Source, SourcePre};
use bindings::transform::{Transform, TransformPre};
use bindings::wit;
use cache::ComponentCache;
use egress::HttpClient;
use host::{PluginContext, StoreState};
use limits::CallLimits;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, InstancePre, Linker};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

/// Milliseconds per epoch tick: the granularity of CPU limits.
pub const TICK_MS: u64 = 10;

/// Where the plugins built with Weft are, as found at compile time by the
/// build script (overridable at run time with `WEFT_PLUGIN_DIR`).
pub const BUILTIN_PLUGIN_DIR: &str = env!("WEFT_BUILTIN_PLUGIN_DIR");

/// Errors while setting up the runtime or loading a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine could not be configured.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The component file could not be read.
    #[error("plugin {plugin}: cannot read {path}: {source}")]
    Read {
        /// Plugin name.
        plugin: String,
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The bytes are not a valid component.
    #[error("plugin {plugin}: not a valid WebAssembly component: {detail}")]
    Compile {
        /// Plugin name.
        plugin: String,
        /// Compiler message.
        detail: String,
    },
    /// It imports something the host does not offer.
    #[error(
        "plugin {plugin}: cannot be linked (it imports something Weft does not provide): {detail}"
    )]
    Link {
        /// Plugin name.
        plugin: String,
        /// Linker message.
        detail: String,
    },
    /// It exports none of the three roles.
    #[error(
        "plugin {plugin}: exports none of the weft:connector worlds (source, transform, sink)"
    )]
    NoRole {
        /// Plugin name.
        plugin: String,
    },
}

/// Why a plugin call failed (as opposed to the plugin returning an error value).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// It used up its CPU budget.
    #[error("plugin {plugin} exceeded its CPU time limit ({limit_ms} ms) and was stopped")]
    CpuLimit {
        /// Plugin name.
        plugin: String,
        /// Configured limit.
        limit_ms: u64,
    },
    /// It ran past its wall-clock limit (e.g. waiting on slow I/O).
    #[error("plugin {plugin} exceeded its wall-clock limit ({limit_ms} ms) and was stopped")]
    WallLimit {
        /// Plugin name.
        plugin: String,
        /// Limit applied.
        limit_ms: u64,
    },
    /// It trapped (panic, unreachable, out of memory...).
    #[error("plugin {plugin} trapped: {detail}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// Trap message.
        detail: String,
    },
    /// It was called in a role it does not have.
    #[error("plugin {plugin} is a {actual}, not a {expected}")]
    WrongRole {
        /// Plugin name.
        plugin: String,
        /// Its role.
        actual: Role,
        /// The role asked for.
        expected: Role,
    },
}

/// What a plugin does; found from its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Exports `receive`.
    Source,
    /// Exports `transform`.
    Transform,
    /// Exports `deliver`.
    Sink,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Transform => "transform",
            Role::Sink => "sink",
        })
    }
}

enum Pre {
    Source(SourcePre<StoreState>),
    Transform(TransformPre<StoreState>),
    Sink(SinkPre<StoreState>),
}

/// Advances the engine's epoch every [`TICK_MS`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: Engine) -> Result<Ticker, LoadError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("weft-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(TICK_MS));
                    engine.increment_epoch();
                }
            });
        // Without the ticker no call could be interrupted: neither the CPU
        // limit nor the wall-clock limit would hold.
        spawned.map_err(|e| LoadError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Ticker { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The engine, linker, cache and outbound client shared by all plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    cache: ComponentCache,
    client: HttpClient,
    _ticker: Ticker,
    /// One permit per transform or sink call running (each holds a pooled
    /// instance): beyond [`MAX_CALLS_AT_ONCE`] calls wait for a free
    /// instance instead of failing to instantiate from an exhausted pool.
    calls: tokio::sync::Semaphore,
    /// The same for source calls, apart: webhooks keep being taken in while
    /// a fan-out of deliveries waits on a slow sink ([`MAX_SOURCE_CALLS`]).
    source_calls: tokio::sync::Semaphore,
    /// Idle instances kept for reuse, across all plugins (at most
    /// [`MAX_IDLE_TOTAL`]).
    idle: Arc<AtomicUsize>,
}

/// Plugin calls running at once, across all plugins. A route record can
/// fan out to thousands of sink calls and sources take up to
/// `server.max_concurrent_requests` webhooks at once: without this bound
/// they would exhaust the instance pool and fail calls of every plugin.
const MAX_CALLS_AT_ONCE: usize = 512;
/// Source calls running at once (webhooks being turned into events).
const MAX_SOURCE_CALLS: usize = 192;
/// Idle instances kept for reuse, across all plugins (each holds a pool
/// slot and its grown memory).
const MAX_IDLE_TOTAL: usize = 256;
/// Component instances in the pool: room for every running call and every
/// idle instance.
const POOL_INSTANCES: u32 = 1000;
/// Linear memories in the pool: two per instance (JavaScript and Python
/// components, and Rust ones built through the preview-1 adapter, have more
/// than one).
const POOL_MEMORIES: u32 = 2 * POOL_INSTANCES;
const _: () =
    assert!(MAX_CALLS_AT_ONCE + MAX_SOURCE_CALLS + MAX_IDLE_TOTAL < POOL_INSTANCES as usize);

/// Linear memory kept resident (and reset by memset) per pooled slot.
const KEEP_RESIDENT: usize = 2 << 20;

/// The call permits one call of a component takes (and the idle places
/// one of its kept instances takes): one for an instance within the pool's
/// averages (two memories, four tables per instance), more for one above
/// them, so that a plugin whose instances take many memories or tables
/// cannot exhaust the pool for the others: the permits and idle places
/// bound what all running and kept instances take together
/// ((512 + 192 + 256) × 2 memories and × 4 tables, within the pool).
/// (Core instances are bounded per component, not weighed: wasmtime does
/// not report a component's count.)
fn call_weight(memories: u32, tables: u32) -> u32 {
    memories
        .div_ceil(2)
        .max(tables.div_ceil(4))
        .clamp(1, limits::MAX_MEMORIES as u32)
}

/// Pooling-allocator settings that fit Rust, C, JS and Python guests.
fn pooling() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(4 * POOL_INSTANCES)
        .total_memories(POOL_MEMORIES)
        .total_tables(4 * POOL_INSTANCES)
        .total_stacks(POOL_INSTANCES)
        .max_core_instances_per_component(limits::MAX_INSTANCES as u32)
        .max_memories_per_component(limits::MAX_MEMORIES as u32)
        .max_tables_per_component(limits::MAX_TABLES as u32)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        .table_elements(limits::MAX_TABLE_ELEMENTS)
        .max_memory_size(1 << 30)
        // Reset reused memory with memset instead of madvise + page faults:
        // most of a call's cost otherwise goes to the kernel.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        .decommit_batch_size(64)
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

impl Runtime {
    /// An engine with pooling and epoch interruption, compiled components
    /// cached under `cache_dir`.
    pub fn new(cache_dir: &Path) -> Result<Runtime, LoadError> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling()));
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        let link = |r: wasmtime::Result<()>| r.map_err(|e| LoadError::Engine(e.to_string()));
        link(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        link(wasmtime_wasi_http::p2::add_only_http_to_linker_async(
            &mut linker,
        ))?;
        use bindings::source::weft::connector as weft;
        link(weft::types::add_to_linker::<_, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        ))?;
        link(weft::log::add_to_linker::<_, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        ))?;
        link(weft::config::add_to_linker::<_, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        ))?;
        link(weft::state::add_to_linker::<_, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        ))?;
        link(weft::secrets::add_to_linker::<_, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        ))?;
        link(weft::outbound::add_to_linker::<_, HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        ))?;
        let cache = ComponentCache::new(&engine, cache_dir);
        let client = egress::client(Duration::from_secs(5));
        let ticker = Ticker::start(engine.clone())?;
        Ok(Runtime {
            engine,
            linker,
            cache,
            client,
            _ticker: ticker,
            calls: tokio::sync::Semaphore::new(MAX_CALLS_AT_ONCE),
            source_calls: tokio::sync::Semaphore::new(MAX_SOURCE_CALLS),
            idle: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The permits calls of a plugin in `role` take.
    fn permits(&self, role: Role) -> &tokio::sync::Semaphore {
        match role {
            Role::Source => &self.source_calls,
            Role::Transform | Role::Sink => &self.calls,
        }
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or loads from cache) and links a component.
    pub fn load(
        self: &Arc<Self>,
        ctx: PluginContext,
        path: &Path,
        limits: Limits,
    ) -> Result<Plugin, LoadError> {
        let name = ctx.name.clone();
        let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
            plugin: name.clone(),
            path: path.display().to_string(),
            source,
        })?;
        let started = std::time::Instant::now();
        let (component, cached) =
            self.cache
                .load(&self.engine, &wasm)
                .map_err(|e| LoadError::Compile {
                    plugin: name.clone(),
                    detail: format!("{e:#}"),
                })?;
        // What one instance takes from the pool (None: it imports some).
        let needs = component.resources_required();
        tracing::info!(
            plugin = %name,
            path = %path.display(),
            from_cache = cached,
            memories = needs.as_ref().map(|n| n.num_memories),
            tables = needs.as_ref().map(|n| n.num_tables),
            ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            "{}",
            if cached { "compiled plugin loaded from the cache" } else { "plugin compiled" }
        );
        let mut plugin = self.link(ctx, component, limits, hex_digest(&wasm))?;
        plugin.from_cache = cached;
        Ok(plugin)
    }

    fn link(
        self: &Arc<Self>,
        ctx: PluginContext,
        component: Component,
        limits: Limits,
        digest: String,
    ) -> Result<Plugin, LoadError> {
        let name = ctx.name.clone();
        let pre: InstancePre<StoreState> =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::Link {
                    plugin: name.clone(),
                    detail: format!("{e:#}"),
                })?;
        let weight = component
            .resources_required()
            .map_or(1, |needs| call_weight(needs.num_memories, needs.num_tables));
        // The optional `config-check` export (see the WIT), found once.
        let config_check = component
            .get_export_index(None, CONFIG_CHECK)
            .map(|check| (pre.clone(), check));
        let pre = if let Ok(p) = SinkPre::new(pre.clone()) {
            Pre::Sink(p)
        } else if let Ok(p) = TransformPre::new(pre.clone()) {
            Pre::Transform(p)
        } else if let Ok(p) = SourcePre::new(pre) {
            Pre::Source(p)
        } else {
            return Err(LoadError::NoRole { plugin: name });
        };
        Ok(Plugin {
            runtime: self.clone(),
            ctx: Arc::new(ctx),
            pre,
            config_check,
            weight,
            limits,
            warm: std::sync::Mutex::new(Vec::new()),
            digest,
            from_cache: false,
        })
    }
}

fn hex_digest(wasm: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(wasm))
}

/// Most idle instances one plugin keeps for reuse.
const MAX_IDLE_INSTANCES: usize = 64;

/// An instance kept between calls (`limits.instance_reuse > 1`), with its
/// store and the number of calls it has served.
struct Warm {
    store: Store<StoreState>,
    instance: WarmInstance,
    calls: u32,
    /// When its last call ended (it is idle since).
    idle_since: Instant,
}

/// How long an idle instance is kept for reuse when no call takes it.
pub const IDLE_TTL: Duration = Duration::from_secs(30);

/// How often [`sweep_idle`] looks for expired idle instances.
pub const IDLE_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Trims every plugin's expired idle instances (see [`Plugin::trim_idle`])
/// every [`IDLE_SWEEP_INTERVAL`] until `shutdown`: without it, a plugin
/// that got a burst and then no call keeps its instances (and their memory)
/// for good.
pub async fn sweep_idle(
    plugins: Vec<Arc<Plugin>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(IDLE_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::server::stopped(&mut shutdown) => return,
        }
        let now = Instant::now();
        let dropped: usize = plugins.iter().map(|p| p.trim_idle(now)).sum();
        if dropped > 0 {
            tracing::debug!(instances = dropped, "dropped idle plugin instances");
        }
    }
}

/// How many of `items` (oldest first) have been idle longer than `ttl`.
fn expired_prefix<T>(
    items: &[T],
    idle_since: impl Fn(&T) -> Instant,
    now: Instant,
    ttl: Duration,
) -> usize {
    items
        .iter()
        .take_while(|item| now.saturating_duration_since(idle_since(item)) > ttl)
        .count()
}

/// Whether a call that has run `ticks` epoch ticks of wasm and spent
/// `host_time` in synchronous host functions has used up a budget of
/// `budget` ticks.
fn budget_spent(ticks: u64, host_time: Duration, budget: u64) -> bool {
    let host_ticks = u64::try_from(host_time.as_millis()).unwrap_or(u64::MAX) / TICK_MS;
    ticks.saturating_add(host_ticks) > budget
}

/// `weight` of the runtime's [`MAX_IDLE_TOTAL`] places for an idle
/// instance (weighed as its calls are: [`call_weight`]), given back when
/// dropped (the instance is taken for a call, or its plugin is unloaded).
struct IdleSlot(Arc<AtomicUsize>, usize);

impl IdleSlot {
    fn take(idle: &Arc<AtomicUsize>, weight: u32) -> Option<IdleSlot> {
        let weight = weight as usize;
        idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n + weight <= MAX_IDLE_TOTAL).then_some(n + weight)
        })
        .ok()
        .map(|_| IdleSlot(idle.clone(), weight))
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

/// The instance of a kept [`Warm`], by role.
enum WarmInstance {
    Source(Source),
    Transform(Transform),
    Sink(Sink),
}

/// One plugin call: takes a kept instance of the role (or instantiates a
/// fresh one from `$pre`), runs `$call` under the CPU and wall-clock limits,
/// and keeps the instance for reuse if the call completed and reuse is on.
/// A macro rather than a function: the three roles' instance types and call
/// futures differ, and the futures borrow the store.
macro_rules! call_instance {
    ($plugin:expr, $pre:expr, $role:ident, $event_id:expr, |$instance:ident, $store:ident| $call:expr) => {
        call_instance!($plugin, $pre, $role, $event_id, (), |$instance, $store| {
            $call
        })
    };
    // `$started` runs once the call has its permit, right before it runs.
    ($plugin:expr, $pre:expr, $role:ident, $event_id:expr, $started:expr, |$instance:ident, $store:ident| $call:expr) => {{
        let plugin = $plugin;
        // Held until the call ends (see `Runtime::calls`).
        let _running = plugin
            .runtime
            .permits(plugin.role())
            .acquire_many(plugin.weight)
            .await;
        $started;
        let (mut store, kept, calls) = match plugin.take_warm() {
            Some(Warm {
                mut store,
                instance: WarmInstance::$role(instance),
                calls,
                ..
            }) => {
                store.data_mut().begin_call($event_id);
                plugin.arm_cpu_budget(&mut store);
                (store, Some(instance), calls)
            }
            _ => (plugin.store($event_id), None, 0),
        };
        let outcome = {
            let store_ref = &mut store;
            let fut = async {
                let $instance = match kept {
                    Some(instance) => instance,
                    None => $pre.instantiate_async(&mut *store_ref).await?,
                };
                let $store = &mut *store_ref;
                let result = $call.await?;
                Ok::<_, wasmtime::Error>(($instance, result))
            };
            tokio::time::timeout(plugin.wall(), fut).await
        };
        match outcome {
            Ok(Ok((instance, result))) => {
                let done = plugin.finish(&store, Ok(Ok(result)));
                plugin.keep_warm(Warm {
                    store,
                    instance: WarmInstance::$role(instance),
                    calls: calls + 1,
                    idle_since: std::time::Instant::now(),
                });
                done
            }
            Ok(Err(e)) => plugin.finish(&store, Ok(Err(e))),
            Err(elapsed) => plugin.finish(&store, Err(elapsed)),
        }
    }};
}

/// The function a plugin exports to have its config checked when loaded
/// (the WIT's `checked-*` worlds).
const CONFIG_CHECK: &str = "check-config";

/// A loaded plugin, ready to be called.
pub struct Plugin {
    runtime: Arc<Runtime>,
    ctx: Arc<PluginContext>,
    pre: Pre,
    /// Its `check-config` export, if it has one.
    config_check: Option<(InstancePre<StoreState>, ComponentExportIndex)>,
    /// Call permits one call takes ([`call_weight`]).
    weight: u32,
    limits: Limits,
    /// Instances kept for reuse when `limits.instance_reuse > 1`, each
    /// counted in `Runtime::idle` while it waits here.
    warm: std::sync::Mutex<Vec<(Warm, IdleSlot)>>,
    /// SHA-256 of the component, for the admin API.
    pub digest: String,
    /// Whether the compiled component came from the on-disk cache (no
    /// compilation at this load).
    pub from_cache: bool,
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// The plugin's role.
    pub fn role(&self) -> Role {
        match self.pre {
            Pre::Source(_) => Role::Source,
            Pre::Transform(_) => Role::Transform,
            Pre::Sink(_) => Role::Sink,
        }
    }

    fn wrong_role(&self, expected: Role) -> PluginError {
        PluginError::WrongRole {
            plugin: self.ctx.name.clone(),
            actual: self.role(),
            expected,
        }
    }

    fn store(&self, event_id: Option<String>) -> Store<StoreState> {
        let bytes =
            usize::try_from(self.limits.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let limits = CallLimits::new(bytes);
        let state = StoreState::new(
            self.ctx.clone(),
            self.runtime.client.clone(),
            limits,
            event_id,
        );
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        self.arm_cpu_budget(&mut store);
        store
    }

    /// Gives the store a fresh CPU budget of `timeout_ms`, counted in epoch
    /// ticks; the guest yields to the executor at every tick. Time the
    /// call spent in synchronous host functions (HMAC, state) counts too:
    /// the ticks only see wasm running, and a guest could otherwise loop
    /// over expensive host calls on a budget it never spends.
    fn arm_cpu_budget(&self, store: &mut Store<StoreState>) {
        let budget = (self.limits.timeout_ms / TICK_MS).max(1);
        let mut ticks = 0u64;
        store.epoch_deadline_callback(move |mut ctx| {
            ticks += 1;
            if budget_spent(ticks, ctx.data().host_time, budget) {
                ctx.data_mut().cpu_exhausted = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store.set_epoch_deadline(1);
    }

    fn classify(&self, store: &Store<StoreState>, err: PluginError) -> PluginError {
        if store.data().cpu_exhausted {
            PluginError::CpuLimit {
                plugin: self.ctx.name.clone(),
                limit_ms: self.limits.timeout_ms,
            }
        } else {
            err
        }
    }

    /// Asks the plugin to check its config values, if it exports
    /// `check-config` (plugins built with the Rust SDK do): `Ok(Ok(()))`
    /// when it accepts them or has no check, `Ok(Err(message))` when it
    /// refuses them, `Err` when the check itself failed (a trap, a limit).
    /// Runs in a fresh instance under the plugin's limits, like any call.
    pub async fn check_config(&self) -> Result<Result<(), String>, PluginError> {
        let Some((pre, check)) = &self.config_check else {
            return Ok(Ok(()));
        };
        let mut store = self.store(None);
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let check = instance.get_typed_func::<(), (Result<(), String>,)>(&mut store, check)?;
            let (verdict,) = check.call_async(&mut store, ()).await?;
            Ok::<_, wasmtime::Error>(verdict)
        };
        let outcome = tokio::time::timeout(self.wall(), call).await;
        self.finish(&store, outcome)
    }

    /// Source: turns a webhook request into events, or a rejection.
    pub async fn receive(
        &self,
        request: wit::WebhookRequest,
    ) -> Result<Result<Vec<Event>, wit::Rejection>, PluginError> {
        self.receive_announced(request, || ()).await.1
    }

    /// [`Plugin::receive`], running `started` once the call has one of the
    /// runtime's source-call permits (it may wait for one), right before
    /// the plugin runs; what `started` made is handed back. Ingress
    /// announces the webhook's coming append to the queue there, so that a
    /// group commit never waits for a webhook still queued for a permit.
    pub async fn receive_announced<T>(
        &self,
        request: wit::WebhookRequest,
        started: impl FnOnce() -> T,
    ) -> (
        Option<T>,
        Result<Result<Vec<Event>, wit::Rejection>, PluginError>,
    ) {
        let Pre::Source(pre) = &self.pre else {
            return (None, Err(self.wrong_role(Role::Source)));
        };
        let announced;
        let result = call_instance!(
            self,
            pre,
            Source,
            None,
            announced = Some(started()),
            |instance, store| instance.call_receive(store, &request)
        )
        .map(|r| r.map(|events| events.into_iter().map(Event::from).collect()));
        (announced, result)
    }

    /// Transform: one event to zero or more, or an error value.
    pub async fn transform(
        &self,
        event: Event,
    ) -> Result<Result<Vec<Event>, wit::TransformError>, PluginError> {
        let Pre::Transform(pre) = &self.pre else {
            return Err(self.wrong_role(Role::Transform));
        };
        let id = Some(event.id.clone());
        let event = wit::Event::from(event);
        call_instance!(self, pre, Transform, id, |instance, store| instance
            .call_transform(store, &event))
        .map(|r| r.map(|events| events.into_iter().map(Event::from).collect()))
    }

    /// Sink: delivers one event.
    pub async fn deliver(&self, event: Event) -> Result<wit::DeliveryOutcome, PluginError> {
        let Pre::Sink(pre) = &self.pre else {
            return Err(self.wrong_role(Role::Sink));
        };
        let id = Some(event.id.clone());
        let event = wit::Event::from(event);
        call_instance!(self, pre, Sink, id, |instance, store| instance
            .call_deliver(store, &event))
    }

    /// Sink: delivers several events in one call (`deliver-batch`), one
    /// outcome per event in order. A plugin that answers with a different
    /// number of outcomes has failed the whole call.
    pub async fn deliver_batch(
        &self,
        events: &[Event],
    ) -> Result<Vec<wit::DeliveryOutcome>, PluginError> {
        let Pre::Sink(pre) = &self.pre else {
            return Err(self.wrong_role(Role::Sink));
        };
        let n = events.len();
        let id = events.first().map(|e| e.id.clone());
        let events: Vec<wit::Event> = events.iter().cloned().map(wit::Event::from).collect();
        let outcomes = call_instance!(self, pre, Sink, id, |instance, store| instance
            .call_deliver_batch(store, &events))?;
        if outcomes.len() != n {
            return Err(PluginError::Trap {
                plugin: self.ctx.name.clone(),
                detail: format!(
                    "deliver-batch returned {} outcomes for {n} events",
                    outcomes.len()
                ),
            });
        }
        Ok(outcomes)
    }

    /// Events per second this sink may be sent (`limits.deliveries_per_s`;
    /// 0: no limit).
    pub fn deliveries_per_s(&self) -> u32 {
        self.limits.deliveries_per_s
    }

    /// How many events one [`Plugin::deliver_batch`] call may carry
    /// (`limits.max_batch`).
    pub fn max_batch(&self) -> usize {
        self.limits.max_batch.max(1) as usize
    }

    /// The most events one source or transform call may produce
    /// (`limits.max_events`).
    pub fn max_events(&self) -> usize {
        self.limits.max_events.max(1) as usize
    }

    /// The most bytes of events one source or transform call may produce
    /// (`limits.max_output_bytes`).
    pub fn max_output_bytes(&self) -> usize {
        usize::try_from(self.limits.max_output_bytes).unwrap_or(usize::MAX)
    }

    /// Which output cap `count` events of `bytes` bytes in all break
    /// (`limits.max_events`, then `limits.max_output_bytes`), in words for
    /// an error message; `None` when they break neither. The same check
    /// for a webhook, a transform step and `weft plugin test`.
    pub fn output_over_limits(&self, count: usize, bytes: usize) -> Option<String> {
        if count > self.max_events() {
            Some(format!(
                "{count} events, more than limits.max_events ({})",
                self.max_events()
            ))
        } else if bytes > self.max_output_bytes() {
            Some(format!(
                "{bytes} bytes of events, more than limits.max_output_bytes ({})",
                self.max_output_bytes()
            ))
        } else {
            None
        }
    }

    /// A kept instance for the next call, if reuse is on and one is idle.
    fn take_warm(&self) -> Option<Warm> {
        if self.limits.instance_reuse <= 1 {
            return None;
        }
        self.warm.lock().ok()?.pop().map(|(warm, _slot)| warm)
    }

    /// Keeps an instance that completed a call, unless it served its share.
    fn keep_warm(&self, warm: Warm) {
        if warm.calls >= self.limits.instance_reuse {
            return;
        }
        if let Ok(mut pool) = self.warm.lock() {
            // Instances no call took for IDLE_TTL go (with their pool slot
            // and grown memory): after a burst, only what the traffic uses
            // stays. Calls take from the end, so the oldest are in front.
            let now = warm.idle_since;
            let expired = expired_prefix(&pool, |(w, _)| w.idle_since, now, IDLE_TTL);
            pool.drain(..expired);
            // At most as many idle instances as calls ran at once, and
            // within the runtime's total.
            if pool.len() < MAX_IDLE_INSTANCES {
                if let Some(slot) = IdleSlot::take(&self.runtime.idle, self.weight) {
                    pool.push((warm, slot));
                }
            }
        }
    }

    /// Drops the kept instances no call took for [`IDLE_TTL`] before `now`
    /// (their pool slots and grown memory go back); returns how many.
    /// [`Plugin::keep_warm`] does this at every call; the runtime's sweeper
    /// ([`sweep_idle`]) does it for plugins that stopped being called.
    pub fn trim_idle(&self, now: Instant) -> usize {
        let expired: Vec<(Warm, IdleSlot)> = match self.warm.lock() {
            Ok(mut pool) => {
                let n = expired_prefix(&pool, |(w, _)| w.idle_since, now, IDLE_TTL);
                pool.drain(..n).collect()
            }
            Err(_) => return 0,
        };
        // Dropped outside the lock: a store's teardown is not free.
        expired.len()
    }

    /// Instances kept idle for reuse now.
    pub fn idle_instances(&self) -> usize {
        self.warm.lock().map_or(0, |pool| pool.len())
    }

    fn wall(&self) -> Duration {
        Duration::from_millis(
            self.limits
                .timeout_ms
                .saturating_add(self.limits.http_timeout_ms),
        )
    }

    fn finish<R>(
        &self,
        store: &Store<StoreState>,
        result: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    ) -> Result<R, PluginError> {
        let plugin = self.ctx.name.clone();
        match result {
            Err(_) => Err(PluginError::WallLimit {
                plugin,
                limit_ms: self.wall().as_millis() as u64,
            }),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                let mut detail = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => trap.to_string(),
                    None => format!("{e:#}"),
                };
                let said = store.data().stderr_tail();
                if !said.is_empty() {
                    detail = format!("{detail}; plugin stderr: {said}");
                }
                tracing::debug!(plugin = %self.ctx.name, error = %format!("{e:?}"), "plugin call failed");
                Err(self.classify(store, PluginError::Trap { plugin, detail }))
            }
        }
    }
}

/// Where the built-in plugins are: `$WEFT_PLUGIN_DIR`, else the directory
/// the build put them in.
pub fn builtin_dir() -> PathBuf {
    std::env::var_os("WEFT_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BUILTIN_PLUGIN_DIR))
}

/// The plugins this build ships (the crates in `plugins/`), by name.
const SHIPPED_PLUGINS: &str = env!("WEFT_SHIPPED_PLUGINS");

/// Whether `name` is a built-in plugin: one this build ships, or, with
/// `$WEFT_PLUGIN_DIR` set, any component there. (The test build puts its
/// misbehaving fixtures beside the shipped plugins; they are not built-ins.)
pub fn is_builtin(name: &str) -> bool {
    builtin_names().iter().any(|n| n == name)
}

/// The built-in plugins there are (see [`is_builtin`]), by name.
pub fn builtin_names() -> Vec<String> {
    let shipped_only = std::env::var_os("WEFT_PLUGIN_DIR").is_none();
    let mut names: Vec<String> = std::fs::read_dir(builtin_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|f| f.strip_suffix(".wasm"))
                .map(|n| n.replace('_', "-"))
        })
        .filter(|n| !shipped_only || SHIPPED_PLUGINS.split(',').any(|s| s == n))
        .collect();
    names.sort();
    names
}

/// Finds the component file of a built-in plugin (`http-post` → `http_post.wasm`).
pub fn builtin_path(name: &str) -> PathBuf {
    builtin_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_weigh_by_what_their_instance_takes_from_the_pool() {
        // Within the averages: one permit.
        assert_eq!(call_weight(1, 2), 1);
        assert_eq!(call_weight(2, 4), 1);
        assert_eq!(call_weight(0, 0), 1);
        // Above them: in proportion to the larger share.
        assert_eq!(call_weight(3, 1), 2);
        assert_eq!(call_weight(16, 2), 8);
        assert_eq!(call_weight(1, 64), 16);
    }

    #[test]
    fn idle_instances_expire_oldest_first() {
        let now = Instant::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        let ttl = Duration::from_secs(30);
        let idle = [ago(90), ago(31), ago(29), ago(1)];
        assert_eq!(expired_prefix(&idle, |t| *t, now, ttl), 2);
        assert_eq!(expired_prefix(&idle[2..], |t| *t, now, ttl), 0);
        assert_eq!(expired_prefix::<Instant>(&[], |t| *t, now, ttl), 0);
    }

    /// A webhook waiting for one of the source-call permits has not
    /// announced its append yet (a group commit must not wait for it); it
    /// does once it has one, right before the plugin runs.
    #[tokio::test]
    async fn a_source_call_is_announced_only_once_it_has_a_permit() {
        use std::sync::atomic::AtomicBool;
        let opts = crate::harness::HarnessOptions::new(builtin_path("webhook-json"));
        let plugin = crate::harness::load(&opts).expect("webhook-json loads");
        let request = || wit::WebhookRequest {
            method: "POST".into(),
            path: "/hooks/orders".into(),
            query: String::new(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"id":"o-1"}"#.to_vec(),
        };
        let all = u32::try_from(MAX_SOURCE_CALLS).expect("fits");
        let busy = plugin
            .runtime
            .source_calls
            .acquire_many(all)
            .await
            .expect("open");
        let started = AtomicBool::new(false);
        let call = plugin.receive_announced(request(), || started.store(true, Ordering::SeqCst));
        tokio::pin!(call);
        for _ in 0..10 {
            assert!(futures::poll!(&mut call).is_pending());
            tokio::task::yield_now().await;
        }
        assert!(
            !started.load(Ordering::SeqCst),
            "announced while queued for a permit"
        );
        drop(busy);
        let (announced, result) = call.await;
        assert!(announced.is_some() && started.load(Ordering::SeqCst));
        let events = result.expect("the call runs").expect("accepted");
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn host_time_counts_against_the_cpu_budget() {
        let ms = Duration::from_millis;
        // 20 ticks of 10 ms: 200 ms in all.
        assert!(!budget_spent(20, Duration::ZERO, 20));
        assert!(budget_spent(21, Duration::ZERO, 20));
        // One tick of wasm after 195 ms of HMACs: 19 host ticks + 1, not
        // over yet; 10 ms more of host time is.
        assert!(!budget_spent(1, ms(195), 20));
        assert!(budget_spent(1, ms(205), 20));
        assert!(budget_spent(1, Duration::MAX, 20));
    }
}
