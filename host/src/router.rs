//! The router: takes accepted events through their routes (transforms, then
//! every sink), retries with backoff, dead-letters what cannot be delivered,
//! and resumes all of it after a restart.
//!
//! Work flows as [`Record`]s. A fresh event is one `Stage::Route` record per
//! route. A worker runs the route's transforms and delivers every output to
//! every sink at once; if all deliveries succeed, the record is removed. Each
//! failed (output, sink) pair becomes its own `Stage::Deliver` record with its
//! own retry clock, so one slow sink never holds back or duplicates another.
//! On a fan-out, a sink still running after [`FANOUT_PATIENCE`], or whose
//! lane is stuck (see [`Lane`]), gets its deliveries stored as such records
//! at once, and the record is done without waiting for it.
//!
//! Records are dispatched in groups: whatever is ready (all records of one
//! webhook, or of one group commit, arrive together) is grouped by route and
//! stage, and each group runs as one task. Transforms still run per event;
//! a sink with `limits.max_batch > 1` gets the group's outputs in
//! `deliver-batch` calls, and every event keeps its own outcome.

use crate::breaker::{Breakers, Gate, Tally, PROBE_WAIT_MS};
use crate::event::{now_ms, Event};
use crate::metrics::{add_elapsed, inc, DeliveryLags, Metrics, Outcome, RouteOutcomes};
use crate::queue::{
    Arrival, Arrived, Attempt, DeadLetter, OnceKey, Op, Queue, QueueError, Record, Stage,
};
use crate::retry::RetryPolicy;
use crate::runtime::bindings::wit;
use crate::runtime::{Plugin, PluginError};
use crate::shares::{Admission, Lane, RouteShares};
use crate::timers::{Due, Timers};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Semaphore};

/// A route, resolved to loaded plugins.
#[derive(Clone)]
pub struct Route {
    /// Route name.
    pub name: String,
    /// Source plugin name.
    pub source: String,
    /// Transforms in order.
    pub transforms: Vec<Arc<Plugin>>,
    /// Sinks by name.
    pub sinks: Vec<Arc<Plugin>>,
    /// The route's retry schedule (`[retry]`, or the route's own over it).
    pub retry: RetryPolicy,
}

/// Errors when accepting events.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No route starts at this source.
    #[error("no route starts at source \"{0}\"")]
    NoRoute(String),
    /// Storage failed: the events were not accepted.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The router is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// Routes events and owns the delivery workers.
pub struct Router {
    queue: Arc<dyn Queue>,
    routes: HashMap<String, Route>,
    by_source: HashMap<String, Vec<String>>,
    /// Each route's sinks' circuit breakers.
    breakers: Breakers,
    /// Sinks with `limits.deliveries_per_s`, by plugin name (one bucket
    /// per sink, whatever routes it is on: the downstream's limit is one).
    sink_rates: HashMap<String, crate::rate::SinkRate>,
    /// Sources that accept an event id once per window (`dedup_window_s`).
    dedup: HashMap<String, Duration>,
    retry: RetryPolicy,
    /// Ready records, in the batches they became ready in (all events of
    /// one webhook request arrive together, so a sink can get them together).
    work: mpsc::Sender<Vec<Record>>,
    metrics: Arc<Metrics>,
    /// Deliveries, retries and dead letters by route and plugin.
    outcomes: RouteOutcomes,
    /// Time from acceptance to delivery, by route and sink.
    lags: DeliveryLags,
    shutdown: watch::Receiver<bool>,
    /// Records waiting for their time, by id (see [`Timers`]).
    timers: Timers,
    /// Each route's share of the workers, and its records waiting for room.
    shares: RouteShares,
    /// Messages the dispatcher took from the hand-off so far (whether it
    /// makes progress, for webhooks waiting for room in it).
    dispatched: std::sync::atomic::AtomicU64,
    /// Fan-out deliveries left to finish alone (see [`Detached`]): the
    /// shutdown's grace period waits for them as for the workers.
    detached: Arc<InFlight>,
    /// Set when the queue stops working outside a shutdown (its writer
    /// thread is gone): nothing can be stored or delivered any more, and the
    /// process should stop so that a supervisor restarts it (see
    /// [`Router::failure`]).
    failed: watch::Sender<Option<String>>,
}

/// Waiting records loaded from the queue at once when they come due.
const DUE_AT_ONCE: usize = 256;

/// How often the router checks that the queue still works.
const QUEUE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long a webhook's acknowledgement waits for room on a route where
/// nothing finishes (a stuck sink), or in a hand-off to the workers that
/// nothing is taken from; and how long the dispatcher waits on a route at
/// its share before its records wait by id instead.
/// Records are durable before that wait, so after it they are handed over
/// by id ([`Handover`]) and the webhook is answered: a busy route slows its
/// senders down (backpressure), a stuck one never holds them for as long as
/// its sink's timeout.
const HANDOVER_WAIT: Duration = Duration::from_millis(100);

/// A webhook's new records, handed to the queue but not yet passed on to
/// the workers. Dropped before [`Handover::done`] (the caller went away:
/// hyper drops a webhook's handler when its client disconnects, e.g. while
/// the hand-off to busy workers applies backpressure; or the queue answered
/// with an error although the records may still be committed with a later
/// group), it schedules them to run now: loading them reads whatever the
/// queue holds by then, and skips ids it never stored. Without it such
/// records would sit in the queue until the next restart. (The ids are new:
/// none of them can be running already. Replays, whose ids may be, are
/// handled by [`Router::replay`] itself.)
struct Handover<'a> {
    timers: &'a Timers,
    ids: Vec<u64>,
}

impl Handover<'_> {
    /// The records were passed on; nothing to do when dropped.
    fn done(mut self) {
        self.ids.clear();
    }
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        tracing::debug!(
            records = self.ids.len(),
            "records handed to the queue were not passed on; scheduled to run now"
        );
        let now = now_ms();
        for id in self.ids.drain(..) {
            self.timers.add(now, id);
        }
    }
}

/// What a breaker's `gate` means for a group of `n` deliveries: how many of
/// them go now (the first ones) and until when the others wait.
fn breaker_plan(gate: Gate, n: usize, now_ms: u64) -> (usize, u64) {
    match gate {
        Gate::Pass => (n, 0),
        // One event tells whether the sink is back; the others need not
        // spend an attempt to learn it.
        Gate::Probe => (n.min(1), now_ms.saturating_add(PROBE_WAIT_MS)),
        Gate::WaitUntil(until) => (0, until),
    }
}

/// How a group of deliveries went, for the sink's breaker: answers
/// (delivered or rejected) and failures (retries, timeouts, traps).
fn tally(outcomes: &[Result<wit::DeliveryOutcome, PluginError>]) -> Tally {
    let answered = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                Ok(wit::DeliveryOutcome::Delivered | wit::DeliveryOutcome::Rejected(_))
            )
        })
        .count();
    Tally {
        answered,
        failed: outcomes.len() - answered,
    }
}

/// Splits ready records into groups of at most `size` that share a route
/// and a stage, keeping their order.
fn group_records(records: impl Iterator<Item = Record>, size: usize) -> Vec<Vec<Record>> {
    let mut groups: Vec<Vec<Record>> = Vec::new();
    for record in records {
        match groups
            .iter_mut()
            .find(|g| g.len() < size && g[0].route == record.route && g[0].stage == record.stage)
        {
            Some(group) => group.push(record),
            None => groups.push(vec![record]),
        }
    }
    groups
}

/// How long a fan-out's fresh record waits for all its sinks before the
/// ones still running go on alone (see [`Router::run_routes`]): a sink that
/// stops answering delays its siblings by this much at most.
const FANOUT_PATIENCE: Duration = Duration::from_millis(250);

/// One sink's deliveries of a group of fresh records.
enum Leg {
    /// Nothing to deliver now, or their outcomes, in order.
    Done(Vec<Result<wit::DeliveryOutcome, PluginError>>),
    /// To run here (the route's only sink).
    Inline(Vec<Event>),
    /// Running in a task of their own (a fan-out's sink): how many.
    Running(
        tokio::task::JoinHandle<Vec<Result<wit::DeliveryOutcome, PluginError>>>,
        usize,
    ),
    /// Not tried: the sink's lane is stuck or its route paused. Stored as
    /// deliveries of their own, waiting by id in the lane.
    Parked,
}

/// A fan-out sink's deliveries still running when their record was done:
/// the task, and each delivery's parent record id and its own record.
struct Detached {
    lane: Lane,
    sink: Arc<Plugin>,
    task: tokio::task::JoinHandle<Vec<Result<wit::DeliveryOutcome, PluginError>>>,
    records: Vec<(u64, Record)>,
}

/// Tasks running apart from the workers, counted so that a shutdown can wait
/// for them.
#[derive(Default)]
struct InFlight {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One task counted in an [`InFlight`], until dropped (also when the task
/// panics or is cancelled).
struct Counted(Arc<InFlight>);

impl InFlight {
    fn start(self: &Arc<Self>) -> Counted {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(self.clone())
    }

    /// Resolves once none is running.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self
            .0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// The outcomes of a delivery task of `n` deliveries; one that ended
/// without them (it panicked, or was cancelled at shutdown) failed each.
fn ended(
    sink: &str,
    n: usize,
    done: Result<Vec<Result<wit::DeliveryOutcome, PluginError>>, tokio::task::JoinError>,
) -> Vec<Result<wit::DeliveryOutcome, PluginError>> {
    done.unwrap_or_else(|e| {
        (0..n)
            .map(|_| {
                Err(PluginError::Trap {
                    plugin: sink.to_string(),
                    detail: format!("delivery task ended: {e}"),
                })
            })
            .collect()
    })
}

/// The dispatcher's half: started by [`Router::start`].
pub struct Workers {
    rx: mpsc::Receiver<Vec<Record>>,
    slots: Arc<Semaphore>,
    size: usize,
}

impl Router {
    /// A router over `routes`; call [`Router::start`] with the returned
    /// [`Workers`] to begin delivering.
    pub fn new(
        queue: Arc<dyn Queue>,
        routes: Vec<Route>,
        dedup: HashMap<String, Duration>,
        retry: RetryPolicy,
        workers: usize,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Router>, Workers) {
        // A short hand-off: enough to keep every worker busy, small enough
        // that an overloaded router pushes back on webhooks within a few
        // milliseconds instead of holding hundreds of acknowledged events
        // in memory (they are durable, but their delivery latency grows).
        let (tx, rx) = mpsc::channel(workers.saturating_mul(2));
        let mut by_source: HashMap<String, Vec<String>> = HashMap::new();
        for r in &routes {
            by_source
                .entry(r.source.clone())
                .or_default()
                .push(r.name.clone());
        }
        let outcomes = RouteOutcomes::new(routes.iter().map(|r| {
            let plugins = r
                .transforms
                .iter()
                .chain(&r.sinks)
                .map(|p| p.name())
                .collect();
            (r.name.as_str(), plugins)
        }));
        let lags = DeliveryLags::new(
            routes
                .iter()
                .map(|r| (r.name.as_str(), r.sinks.iter().map(|p| p.name()).collect())),
        );
        let routes: HashMap<String, Route> =
            routes.into_iter().map(|r| (r.name.clone(), r)).collect();
        let sink_rates = routes
            .values()
            .flat_map(|r| &r.sinks)
            .filter(|s| s.deliveries_per_s() > 0)
            .map(|s| {
                let rate = crate::rate::SinkRate::per_second(s.deliveries_per_s());
                (s.name().to_string(), rate)
            })
            .collect();
        // See `timers`: no retry waits longer than this.
        let longest = routes
            .values()
            .map(|r| r.retry.longest_ms())
            .fold(retry.longest_ms(), u64::max);
        let horizon_ms = longest.saturating_mul(2).max(60_000);
        let router = Arc::new(Router {
            queue,
            routes,
            by_source,
            dedup,
            breakers: Breakers::default(),
            sink_rates,
            retry,
            work: tx,
            metrics,
            outcomes,
            lags,
            shutdown,
            timers: Timers::new(horizon_ms),
            shares: RouteShares::new(workers),
            dispatched: std::sync::atomic::AtomicU64::new(0),
            detached: Arc::default(),
            failed: watch::Sender::new(None),
        });
        (
            router,
            Workers {
                rx,
                slots: Arc::new(Semaphore::new(workers)),
                size: workers,
            },
        )
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Routes by name.
    pub fn routes(&self) -> &HashMap<String, Route> {
        &self.routes
    }

    /// Deliveries, retries and dead letters by route and plugin.
    pub fn outcomes(&self) -> &RouteOutcomes {
        &self.outcomes
    }

    /// Time from acceptance to delivery, by route and sink.
    pub fn lags(&self) -> &DeliveryLags {
        &self.lags
    }

    /// Resolves with the reason once the router can no longer work (see
    /// [`Router::failed`](Router)); pending forever otherwise.
    pub async fn failure(&self) -> String {
        let mut failed = self.failed.subscribe();
        let reason = match failed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => return std::future::pending().await,
        };
        reason
    }

    /// Looks every [`QUEUE_CHECK_INTERVAL`] whether the queue still works,
    /// so that a writer that died while nothing was happening is noticed
    /// without waiting for traffic.
    async fn watch_queue(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(QUEUE_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            if !self.queue.working() {
                self.check_queue(&QueueError::Closed);
                return;
            }
        }
    }

    /// Notes a queue error: a closed queue outside a shutdown is fatal.
    fn check_queue(&self, e: &QueueError) {
        if matches!(e, QueueError::Closed) && !*self.shutdown.borrow() {
            self.failed.send_if_modified(|failed| {
                if failed.is_some() {
                    return false;
                }
                tracing::error!("the queue stopped working (its writer is gone or stuck): stopping so that a supervisor can restart Weft; everything stored resumes then");
                *failed = Some("the queue stopped working (its writer is gone or stuck)".into());
                true
            });
        }
    }

    /// The routes that start at `source` (none for an unknown source).
    pub fn routes_of(&self, source: &str) -> &[String] {
        self.by_source.get(source).map_or(&[], Vec::as_slice)
    }

    /// Whether any route starts at `source`.
    pub fn has_source(&self, source: &str) -> bool {
        self.by_source.contains_key(source)
    }

    /// Stores `events` from `source` durably (one record per route) and hands
    /// them to the workers. Returns once they are durable: the caller may
    /// acknowledge them. For a source with a de-duplication window, an event
    /// whose id the source already delivered within it is not stored again;
    /// the result says, per event, whether it was stored now (`true`) or is
    /// such a duplicate (`false`).
    ///
    /// `arrival` is the webhook's announcement ([`Queue::arriving`]); it is
    /// released as soon as the records are handed to the queue.
    pub async fn ingest(
        &self,
        source: &str,
        events: Vec<Event>,
        arrival: Arrival,
    ) -> Result<Vec<bool>, IngestError> {
        let routes = self
            .by_source
            .get(source)
            .ok_or_else(|| IngestError::NoRoute(source.to_string()))?;
        if *self.shutdown.borrow() {
            return Err(IngestError::ShuttingDown);
        }
        let window = self.dedup.get(source).copied();
        let now = now_ms();
        let mut arrived = Vec::with_capacity(events.len());
        for event in events {
            let once = window.map(|w| OnceKey::new(source, &event.id, now, w));
            let records = routes
                .iter()
                .map(|route| Record {
                    id: self.queue.next_id(),
                    route: route.clone(),
                    stage: Stage::Route,
                    event: event.clone(),
                    attempts: Vec::new(),
                    not_before_ms: 0,
                })
                .collect();
            arrived.push(Arrived { once, records });
        }
        let started = Instant::now();
        let stored = self.queue.append_events(arrived.clone());
        drop(arrival);
        // From here on, this future may be dropped at any await, or fail,
        // with the records stored all the same. (Ids of duplicates, never
        // stored, are skipped when loaded.)
        let mut handover = Handover {
            timers: &self.timers,
            ids: arrived
                .iter()
                .flat_map(|a| a.records.iter().map(|r| r.id))
                .collect(),
        };
        let fresh = match stored.await {
            Ok(fresh) => fresh,
            Err(e) => {
                self.check_queue(&e);
                return Err(e.into());
            }
        };
        add_elapsed(&self.metrics.storage_ns, started);
        let mut records = Vec::new();
        for (event, stored_now) in arrived.into_iter().zip(&fresh) {
            if *stored_now {
                records.extend(event.records);
            } else {
                self.metrics
                    .events_duplicate
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(record) = event.records.first() {
                    tracing::info!(event = %record.event.id, source, "duplicate event: already accepted within the source's dedup window; not stored again");
                }
            }
        }
        handover.ids = records.iter().map(|r| r.id).collect();
        if records.is_empty() {
            return Ok(fresh);
        }
        self.metrics
            .events_accepted
            .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // Durable already: if the workers are gone (shutdown), the records
        // run after the next start. (A dropped `send` sent nothing.) A busy
        // route, or a full hand-off, holds the answer back for a while
        // (backpressure); after that `handover` schedules the records by id
        // when dropped, and the webhook is answered.
        for route in routes {
            if !self.shares.room(route, HANDOVER_WAIT).await {
                return Ok(fresh);
            }
        }
        // The hand-off is full while every worker is busy: wait as long as
        // the dispatcher keeps taking records, not when it is stuck.
        let mut seen = self.dispatched.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            match tokio::time::timeout(HANDOVER_WAIT, self.work.reserve()).await {
                Ok(Ok(place)) => {
                    place.send(records);
                    handover.done();
                    break;
                }
                // The workers are gone (shutdown): the records run after
                // the next start.
                Ok(Err(_)) => {
                    handover.done();
                    break;
                }
                Err(_) => {
                    let now = self.dispatched.load(std::sync::atomic::Ordering::Relaxed);
                    if now == seen {
                        break;
                    }
                    seen = now;
                }
            }
        }
        Ok(fresh)
    }

    /// Queues a record (already stored) to run at its `not_before_ms`, or
    /// now. It is kept by id only and loaded from the queue when due, so
    /// neither a backlog of retries nor a bulk replay holds events in memory.
    pub fn schedule(&self, record: &Record) {
        self.timers.add(record.not_before_ms, record.id);
    }

    /// Schedules every pending record (at start-up), by id: the records are
    /// read from the queue as they come due, not all at once.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, QueueError> {
        let pending = self.queue.pending_times().await?;
        let n = pending.len();
        for (id, at) in pending {
            self.timers.add(at, id);
        }
        Ok(n)
    }

    /// Pauses `route` (an operator's call, see [`RouteShares::pause`]):
    /// webhooks for it are still stored and acknowledged, but none of its
    /// records runs until [`Router::resume_route`]. Returns `None` for a
    /// route not configured, else whether it was running before.
    pub fn pause_route(&self, route: &str) -> Option<bool> {
        if !self.routes.contains_key(route) {
            return None;
        }
        let changed = self.shares.pause(route);
        if changed {
            tracing::info!(route = %route, "route paused: its events are stored and wait; none is delivered until it is resumed");
        }
        Some(changed)
    }

    /// Resumes a paused `route`: its waiting records run again. Returns
    /// `None` for a route not configured, else how many records it let go.
    pub fn resume_route(&self, route: &str) -> Option<usize> {
        if !self.routes.contains_key(route) {
            return None;
        }
        let was_paused = self.shares.is_paused(route);
        let ids = self.shares.resume(route);
        let now = now_ms();
        for id in &ids {
            self.timers.add(now, *id);
        }
        if was_paused {
            tracing::info!(route = %route, records = ids.len(), "route resumed");
        }
        Some(ids.len())
    }

    /// The (route, sink) pairs whose circuit breaker is open now.
    pub fn open_breakers(&self) -> Vec<(String, String)> {
        self.breakers.open()
    }

    /// Whether `route` is paused.
    pub fn is_paused(&self, route: &str) -> bool {
        self.shares.is_paused(route)
    }

    /// The paused routes, by name.
    pub fn paused_routes(&self) -> std::collections::BTreeSet<String> {
        self.routes
            .keys()
            .filter(|r| self.shares.is_paused(r))
            .cloned()
            .collect()
    }

    /// Records waiting for their time, or for their route to have room
    /// among the workers.
    pub fn waiting(&self) -> usize {
        self.timers.len() + self.shares.waiting()
    }

    /// Hands waiting records to the workers as they come due, loading at
    /// most [`DUE_AT_ONCE`] at a time from the queue (the hand-off to the
    /// workers is bounded, so a due backlog is read as fast as it is
    /// delivered, not all at once). Runs until shutdown.
    async fn run_timers(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        loop {
            let wait = match self.timers.due(now_ms(), DUE_AT_ONCE) {
                Due::Now(ids) => {
                    let records = match self.queue.load(ids.clone()).await {
                        Ok(records) => records,
                        Err(QueueError::Closed) => {
                            // Nothing more can be loaded; the ids are stored
                            // and resume at the next start.
                            self.check_queue(&QueueError::Closed);
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, records = ids.len(), "could not load due records; trying again in a second");
                            let later = now_ms().saturating_add(1000);
                            for id in ids {
                                self.timers.add(later, id);
                            }
                            continue;
                        }
                    };
                    // One record per message: the hand-off is bounded in
                    // messages, so at most that many loaded records wait in
                    // it (the dispatcher still takes them in groups).
                    for record in records {
                        tokio::select! {
                            sent = self.work.send(vec![record]) => if sent.is_err() { return },
                            _ = crate::server::stopped(&mut shutdown) => return,
                        }
                    }
                    continue;
                }
                Due::At(at) => Some(Duration::from_millis(at.saturating_sub(now_ms()))),
                Due::Empty => None,
            };
            let sleep = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.timers.changed() => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
        }
    }

    /// The lane `record` waits and runs in: its route's, or for a
    /// delivery on a fan-out route, its sink's (see [`Lane`]).
    fn lane_of(&self, record: &Record) -> Lane {
        match &record.stage {
            Stage::Deliver { sink }
                if self
                    .routes
                    .get(&record.route)
                    .is_some_and(|r| r.sinks.len() > 1) =>
            {
                Lane::sink(&record.route, sink)
            }
            _ => Lane::route(&record.route),
        }
    }

    /// The most records the dispatcher takes at once: the largest sink batch.
    fn batch_limit(&self) -> usize {
        self.routes
            .values()
            .flat_map(|r| r.sinks.iter())
            .map(|s| s.max_batch())
            .max()
            .unwrap_or(1)
    }

    /// Runs the dispatcher until shutdown, then waits up to `grace` for
    /// in-flight attempts. Unfinished ones stay stored and run after a restart.
    ///
    /// The dispatcher takes whatever records are ready (up to the largest
    /// sink's `max_batch`, never waiting to fill a batch), groups them by
    /// route and stage, and runs each group as one task, so a sink with
    /// `max_batch > 1` gets the group's events in `deliver-batch` calls.
    pub async fn start(self: Arc<Self>, workers: Workers, grace: Duration) {
        let Workers {
            mut rx,
            slots,
            size,
        } = workers;
        tokio::spawn(self.clone().run_timers());
        tokio::spawn(self.clone().watch_queue());
        // At most half a route's share per take, so that one group's
        // deliveries overlap with the next group's transforms.
        let take = self.batch_limit().min(self.shares.share() / 2).max(1);
        let mut ready: Vec<Record> = Vec::with_capacity(take);
        let mut shutdown = self.shutdown.clone();
        'run: loop {
            let first = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = crate::server::stopped(&mut shutdown) => break,
            };
            ready.extend(first);
            self.dispatched
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if take > 1 {
                // The appends of one group commit are answered together: let
                // the other woken webhook tasks hand over their records too.
                tokio::task::yield_now().await;
            }
            while ready.len() < take {
                match rx.try_recv() {
                    Ok(more) => {
                        ready.extend(more);
                        self.dispatched
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            'groups: for group in group_records(ready.drain(..), take) {
                // A busy route at its share is waited for (backpressure, in
                // order); a stuck one's records wait by id (they are in the
                // queue), so the dispatcher never waits on a stuck sink.
                let Some(lane) = group.first().map(|r| self.lane_of(r)) else {
                    continue;
                };
                let ids: Vec<u64> = group.iter().map(|r| r.id).collect();
                loop {
                    let released = self.shares.released();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    match self.shares.admit(&lane, &ids, HANDOVER_WAIT) {
                        Admission::Run => break,
                        Admission::Parked => continue 'groups,
                        Admission::Wait => {}
                    }
                    tokio::select! {
                        _ = tokio::time::timeout(HANDOVER_WAIT, released) => {}
                        // Durable already: the records run after the next start.
                        _ = crate::server::stopped(&mut shutdown) => break 'run,
                    }
                }
                let n = u32::try_from(group.len()).unwrap_or(u32::MAX);
                let permit = tokio::select! {
                    p = slots.clone().acquire_many_owned(n) => match p { Ok(p) => p, Err(_) => break 'run },
                    // Durable already: the records run after the next start.
                    _ = crate::server::stopped(&mut shutdown) => break 'run,
                };
                let router = self.clone();
                tokio::spawn(async move {
                    router.process(group).await;
                    drop(permit);
                    let now = now_ms();
                    for id in router.shares.release(&lane, ids.len()) {
                        router.timers.add(now, id);
                    }
                });
            }
        }
        let all = u32::try_from(size).unwrap_or(u32::MAX);
        let deadline = tokio::time::Instant::now() + grace;
        let drained = async {
            let _all = tokio::time::timeout_at(deadline, slots.acquire_many(all))
                .await
                .ok()?;
            tokio::time::timeout_at(deadline, self.detached.idle())
                .await
                .ok()
        }
        .await;
        match drained {
            Some(_) => tracing::info!("all in-flight attempts finished"),
            None => tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight attempts still running at shutdown; they stay queued and run again after restart"),
        }
    }

    /// Spawns the rest of a fan-out sink's deliveries (see
    /// [`Router::finish_detached`]), counted in [`Router::detached`].
    fn spawn_detached(self: &Arc<Self>, route: &Route, leg: Detached) {
        let router = self.clone();
        let route = route.clone();
        let counted = self.detached.start();
        tokio::spawn(async move {
            router.finish_detached(&route, leg).await;
            drop(counted);
        });
    }

    fn attempt(plugin: &str, outcome: &str, detail: impl Into<String>) -> Attempt {
        Attempt {
            at_ms: now_ms(),
            plugin: plugin.to_string(),
            outcome: outcome.to_string(),
            detail: attempt_detail(detail.into()),
        }
    }

    /// Decides what follows a failed attempt: a retry later (its record id
    /// and time are returned, to schedule once `ops` are handed over), or
    /// the dead-letter store.
    fn after_failure(
        &self,
        mut record: Record,
        attempt: Attempt,
        permanent: bool,
        requested_ms: Option<u64>,
        ops: &mut Vec<Op>,
    ) -> Option<(u64, u64)> {
        let detail = attempt.detail.clone();
        let plugin = attempt.plugin.clone();
        record.attempts.push(attempt);
        // A delivery carries the history of its event's transforms too, but
        // its budget and backoff count only this sink's own attempts.
        let made = match &record.stage {
            Stage::Deliver { sink } => record.attempts.iter().filter(|a| a.plugin == *sink).count(),
            _ => record.attempts.len(),
        } as u32;
        // The route's schedule; the global one for a route no longer
        // configured (whose records fail for good anyway).
        let retry = self
            .routes
            .get(&record.route)
            .map_or(&self.retry, |r| &r.retry);
        if permanent || made >= retry.max_attempts() {
            tracing::warn!(event = %record.event.id, record = record.id, route = %record.route, plugin = %plugin, attempts = made, error = %detail, "dead-lettered");
            inc(&self.metrics.dead_lettered);
            self.outcomes
                .count(&record.route, &plugin, Outcome::DeadLettered);
            ops.push(Op::Dead(DeadLetter {
                record,
                error: detail,
                dead_at_ms: now_ms(),
            }));
            None
        } else {
            let delay = retry.delay_ms(made, requested_ms);
            record.not_before_ms = now_ms().saturating_add(delay);
            tracing::info!(event = %record.event.id, record = record.id, route = %record.route, plugin = %plugin, attempts = made, retry_in_ms = delay, error = %detail, "attempt failed; will retry");
            inc(&self.metrics.retries);
            self.outcomes
                .count(&record.route, &plugin, Outcome::Retried);
            let wake = (record.id, record.not_before_ms);
            ops.push(Op::Put(record));
            Some(wake)
        }
    }

    /// Runs a group of records that share a route and a stage.
    async fn process(self: &Arc<Self>, records: Vec<Record>) {
        let Some(first) = records.first() else { return };
        let Some(route) = self.routes.get(&first.route).cloned() else {
            let reason = format!("route \"{}\" is no longer configured", first.route);
            self.fail_all(records, "", &reason);
            return;
        };
        match first.stage.clone() {
            Stage::Route => self.run_routes(&route, records).await,
            Stage::Deliver { sink } => match route.sinks.iter().find(|s| s.name() == sink) {
                Some(plugin) => self.run_deliveries(&route, plugin.clone(), records).await,
                None => {
                    let reason =
                        format!("sink \"{sink}\" is no longer on route \"{}\"", route.name);
                    self.fail_all(records, &sink, &reason);
                }
            },
        }
    }

    /// Dead-letters records that can no longer run (their route or sink is gone).
    fn fail_all(self: &Arc<Self>, records: Vec<Record>, plugin: &str, reason: &str) {
        let mut ops = Vec::new();
        for record in records {
            let attempt = Self::attempt(plugin, "failed", reason);
            self.after_failure(record, attempt, true, None, &mut ops);
        }
        self.commit(ops, Vec::new());
    }

    /// Hands `ops` to the queue, then schedules the retries among them
    /// (`(record id, not_before_ms)`): loading them when due reads the
    /// changes handed over before.
    fn commit(self: &Arc<Self>, ops: Vec<Op>, later: Vec<(u64, u64)>) {
        if let Err(e) = self.queue.apply(ops) {
            self.check_queue(&e);
            tracing::error!(error = %e, "could not record the outcome of an attempt; it will run again after restart");
            return;
        }
        for (id, at) in later {
            self.timers.add(at, id);
        }
    }

    /// Runs a route's transforms on one event, in order; each may filter,
    /// keep or split. On failure: the attempt and whether it is permanent.
    async fn run_transforms(
        &self,
        route: &Route,
        event: Event,
    ) -> Result<Vec<Event>, (Attempt, bool)> {
        let mut events = vec![event];
        for transform in &route.transforms {
            let mut next = Vec::with_capacity(events.len());
            // Bytes of events this step made from the route's one event,
            // over all its calls: both caps count the whole step's output
            // (events passed through unchanged too), not one call's.
            let mut made = 0usize;
            for event in events {
                let started = Instant::now();
                let result = transform.transform(event).await;
                add_elapsed(&self.metrics.transform_ns, started);
                let (detail, permanent) = match result {
                    Ok(Ok(out)) => {
                        made += out.iter().map(Event::size).sum::<usize>();
                        match transform.output_over_limits(next.len() + out.len(), made) {
                            Some(over) => (
                                format!(
                                    "transform {} made {over} from one event",
                                    transform.name()
                                ),
                                true,
                            ),
                            None => {
                                next.extend(out);
                                continue;
                            }
                        }
                    }
                    Ok(Err(wit::TransformError::Retryable(msg))) => (msg, false),
                    Ok(Err(wit::TransformError::Permanent(msg))) => (msg, true),
                    Err(e) => {
                        inc(&self.metrics.plugin_failures);
                        (e.to_string(), false)
                    }
                };
                let outcome = if permanent { "rejected" } else { "retry" };
                return Err((Self::attempt(transform.name(), outcome, detail), permanent));
            }
            events = next;
        }
        Ok(events)
    }

    /// Delivers `events` to `sink`: one `deliver` call for a single event,
    /// `deliver-batch` calls of at most the sink's `max_batch` otherwise, all
    /// concurrently. Returns one outcome per event, in order.
    async fn deliver_all(
        &self,
        sink: &Arc<Plugin>,
        events: Vec<Event>,
    ) -> Vec<Result<wit::DeliveryOutcome, PluginError>> {
        let size = sink.max_batch();
        let mut calls = Vec::new();
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<Event> = events.by_ref().take(size).collect();
            // Boxed, like the futures below: plugin calls make large futures,
            // and `join_all` would otherwise copy each one several times.
            calls.push(Box::pin(async move {
                let n = chunk.len();
                let started = Instant::now();
                let outcomes = if n == 1 {
                    let event = chunk.into_iter().next().expect("one event");
                    vec![sink.deliver(event).await]
                } else {
                    match sink.deliver_batch(&chunk).await {
                        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                        Err(e) => {
                            // One bad event must not fail its neighbours:
                            // deliver each on its own, so only the culprit
                            // fails (the others may be delivered twice, which
                            // at-least-once allows).
                            inc(&self.metrics.plugin_failures);
                            tracing::warn!(sink = %sink.name(), events = n, error = %e, "deliver-batch failed as a whole; delivering its events one by one");
                            futures::future::join_all(
                                chunk.into_iter().map(|event| sink.deliver(event)),
                            )
                            .await
                        }
                    }
                };
                // Per event, so the total stays comparable with unbatched calls.
                let ns = started.elapsed().as_nanos() as u64 * n as u64;
                self.metrics
                    .sink_ns
                    .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
                inc(&self.metrics.sink_calls);
                outcomes
            }));
        }
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Runs fresh events through their route: transforms per event
    /// (concurrently), then every output to every sink. A record is removed
    /// once all its deliveries are done or recorded as their own retries.
    async fn run_routes(self: &Arc<Self>, route: &Route, records: Vec<Record>) {
        let mut ops = Vec::new();
        let mut later = Vec::new();
        let transformed = futures::future::join_all(records.into_iter().map(|record| {
            Box::pin(async {
                let result = self.run_transforms(route, record.event.clone()).await;
                (record, result)
            })
        }))
        .await;
        let mut passed = Vec::with_capacity(transformed.len());
        for (record, result) in transformed {
            match result {
                Ok(events) => {
                    if events.is_empty() {
                        inc(&self.metrics.filtered);
                        tracing::debug!(event = %record.event.id, route = %route.name, "filtered out by a transform");
                    }
                    passed.push((record, events));
                }
                Err((attempt, permanent)) => {
                    later.extend(self.after_failure(record, attempt, permanent, None, &mut ops));
                }
            }
        }
        // Every output to every sink, all sinks concurrently.
        let outputs: Vec<(usize, &Event)> = passed
            .iter()
            .enumerate()
            .flat_map(|(i, (_, events))| events.iter().map(move |e| (i, e)))
            .collect();
        // Per sink, what its breaker and its rate let go now, and until
        // when each of the others waits, as a delivery record of its own
        // (its id given now: a turn is held by id), without an attempt.
        // (Nothing to deliver, all filtered out: no gate asked, so no probe
        // handed out that would report nothing.)
        let plans: Vec<(Vec<u64>, Vec<Option<u64>>)> = route
            .sinks
            .iter()
            .map(|sink| {
                let ids: Vec<u64> = outputs.iter().map(|_| self.queue.next_id()).collect();
                let plan = if ids.is_empty() {
                    Vec::new()
                } else {
                    self.delivery_plan(route, sink, &ids)
                };
                (ids, plan)
            })
            .collect();
        // One sink: its deliveries run here. A fan-out: each sink's run in
        // a task of their own and in the sink's lane (see `Lane`), and the
        // record waits for them only so long: a sink that does not answer
        // within `FANOUT_PATIENCE` goes on alone, and one whose lane is stuck
        // is not tried now, so neither holds up the route or its other sinks.
        let fan_out = route.sinks.len() > 1;
        let legs: Vec<Leg> = route
            .sinks
            .iter()
            .zip(&plans)
            .map(|(sink, (_, plan))| {
                let events: Vec<Event> = outputs
                    .iter()
                    .zip(plan)
                    .filter(|(_, wait)| wait.is_none())
                    .map(|((_, e), _)| (*e).clone())
                    .collect();
                if events.is_empty() {
                    Leg::Done(Vec::new())
                } else if !fan_out {
                    Leg::Inline(events)
                } else if self.shares.start_with_route(
                    &Lane::sink(&route.name, sink.name()),
                    events.len(),
                    HANDOVER_WAIT,
                ) {
                    let router = self.clone();
                    let sink = sink.clone();
                    let n = events.len();
                    Leg::Running(
                        tokio::spawn(async move { router.deliver_all(&sink, events).await }),
                        n,
                    )
                } else {
                    Leg::Parked
                }
            })
            .collect();
        let deadline = tokio::time::Instant::now() + FANOUT_PATIENCE;
        let mut per_sink = Vec::with_capacity(legs.len());
        for (leg, sink) in legs.into_iter().zip(&route.sinks) {
            per_sink.push(match leg {
                Leg::Inline(events) => Leg::Done(self.deliver_all(sink, events).await),
                Leg::Running(mut task, n) => {
                    match tokio::time::timeout_at(deadline, &mut task).await {
                        Ok(done) => Leg::Done(ended(sink.name(), n, done)),
                        Err(_) => Leg::Running(task, n),
                    }
                }
                other => other,
            });
        }
        let mut parked: Vec<(Lane, Vec<u64>)> = Vec::new();
        let mut finished: Vec<(Lane, usize)> = Vec::new();
        let mut detached: Vec<Detached> = Vec::new();
        for ((sink, leg), (ids, plan)) in route.sinks.iter().zip(per_sink).zip(plans) {
            // (Made only where needed: a route with one sink has no lanes.)
            let lane = || Lane::sink(&route.name, sink.name());
            let delivery = |id: u64, i: usize, event: &Event, not_before_ms: u64| Record {
                id,
                route: route.name.clone(),
                stage: Stage::Deliver {
                    sink: sink.name().to_string(),
                },
                event: event.clone(),
                attempts: passed[i].0.attempts.clone(),
                not_before_ms,
            };
            let mut outcomes = match leg {
                Leg::Done(outcomes) => {
                    if !outcomes.is_empty() {
                        self.breaker_report(route, sink.name(), tally(&outcomes));
                        if fan_out {
                            finished.push((lane(), outcomes.len()));
                        }
                    }
                    Some(outcomes.into_iter())
                }
                Leg::Parked => {
                    // Not tried: a probe handed out for it did not go.
                    self.breakers.record(
                        &route.name,
                        sink.name(),
                        Tally::default(),
                        now_ms(),
                        &route.retry,
                    );
                    None
                }
                Leg::Running(task, _) => {
                    detached.push(Detached {
                        lane: lane(),
                        sink: sink.clone(),
                        task,
                        records: Vec::new(),
                    });
                    None
                }
                Leg::Inline(_) => None,
            };
            let mut parked_ids = Vec::new();
            for (((i, event), id), wait) in outputs.iter().zip(ids).zip(plan) {
                if let Some(until) = wait {
                    self.count_deferred(1);
                    let waiting = delivery(id, *i, event, until);
                    later.push((id, until));
                    ops.push(Op::Put(waiting));
                    continue;
                }
                let Some(outcomes) = outcomes.as_mut() else {
                    // Stored as a delivery of its own: parked in the sink's
                    // lane, or finished by the attempt still running.
                    let record = delivery(id, *i, event, 0);
                    match detached.last_mut() {
                        Some(d) if Arc::ptr_eq(&d.sink, sink) => {
                            d.records.push((passed[*i].0.id, record.clone()))
                        }
                        _ => parked_ids.push(id),
                    }
                    ops.push(Op::Put(record));
                    continue;
                };
                let Some(outcome) = outcomes.next() else {
                    continue;
                };
                let Some((attempt, permanent, requested)) = self.classify_outcome(
                    &route.name,
                    sink.name(),
                    passed[*i].0.id,
                    event,
                    outcome,
                ) else {
                    continue;
                };
                let failed = delivery(id, *i, event, 0);
                later.extend(self.after_failure(failed, attempt, permanent, requested, &mut ops));
            }
            if !parked_ids.is_empty() {
                parked.push((lane(), parked_ids));
            }
        }
        for (record, _) in &passed {
            ops.push(Op::Remove(record.id));
        }
        self.commit(ops, later);
        // After the commit: what is let go from a lane is loaded by id, and
        // must find its record stored.
        let now = now_ms();
        for (lane, ids) in parked {
            self.count_deferred(ids.len());
            for id in self.shares.park(&lane, &ids) {
                self.timers.add(now, id);
            }
        }
        for (lane, n) in finished {
            for id in self.shares.release(&lane, n) {
                self.timers.add(now, id);
            }
        }
        for leg in detached {
            self.spawn_detached(route, leg);
        }
    }

    /// Finishes the deliveries of a fan-out's sink that outlasted
    /// `FANOUT_PATIENCE`: each is stored as a delivery record of its own
    /// already (so a restart runs it again); it is removed once delivered,
    /// or takes its retry or dead-letter course like any delivery.
    async fn finish_detached(self: &Arc<Self>, route: &Route, leg: Detached) {
        let Detached {
            lane,
            sink,
            task,
            records,
        } = leg;
        let n = records.len();
        let outcomes = ended(sink.name(), n, task.await);
        let mut ops = Vec::new();
        let mut later = Vec::new();
        self.breaker_report(route, sink.name(), tally(&outcomes));
        for ((parent, record), outcome) in records.into_iter().zip(outcomes) {
            match self.classify_outcome(&route.name, sink.name(), parent, &record.event, outcome) {
                None => ops.push(Op::Remove(record.id)),
                Some((attempt, permanent, requested)) => {
                    later.extend(
                        self.after_failure(record, attempt, permanent, requested, &mut ops),
                    );
                }
            }
        }
        self.commit(ops, later);
        let now = now_ms();
        for id in self.shares.release(&lane, n) {
            self.timers.add(now, id);
        }
    }

    /// For deliveries `ids` (in order) to `sink` on `route`: `None` for
    /// each that goes now, or until when (ms since epoch) it waits. The
    /// sink's breaker decides first (all, the probe's one, or none go on);
    /// then its `limits.deliveries_per_s` gives what is over the rate a turn.
    fn delivery_plan(&self, route: &Route, sink: &Plugin, ids: &[u64]) -> Vec<Option<u64>> {
        let now = now_ms();
        let gate = self.breakers.gate(&route.name, sink.name(), now);
        let (allowed, until) = breaker_plan(gate, ids.len(), now);
        let mut plan = match self.sink_rates.get(sink.name()) {
            Some(rate) => rate.plan(&ids[..allowed], now, Instant::now()),
            None => vec![None; allowed],
        };
        if gate == Gate::Probe && plan.iter().all(Option::is_some) {
            // The probe did not go (it got a turn): the next group probes.
            self.breakers.record(
                &route.name,
                sink.name(),
                Tally::default(),
                now,
                &route.retry,
            );
        }
        plan.resize(ids.len(), Some(until));
        plan
    }

    /// Tells `sink`'s breaker on `route` how a group went, and says so in
    /// the log when that opens or closes it.
    fn breaker_report(&self, route: &Route, sink: &str, tally: Tally) {
        match self
            .breakers
            .record(&route.name, sink, tally, now_ms(), &route.retry)
        {
            Some(true) => {
                tracing::warn!(route = %route.name, sink = %sink, failures_in_a_row = route.retry.breaker_after(), "circuit breaker open: deliveries to this sink wait without using up their attempts; one probe goes after each cool-down")
            }
            Some(false) => {
                tracing::warn!(route = %route.name, sink = %sink, "circuit breaker closed: the sink answers again")
            }
            None => {}
        }
    }

    /// Counts deliveries that wait for an open breaker.
    fn count_deferred(&self, n: usize) {
        self.metrics
            .deliveries_deferred
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// `None` when delivered; else the attempt, whether it is permanent and a requested delay.
    /// `record_id` is the id of the record the event came in (whose time the
    /// delivery lag counts from).
    fn classify_outcome(
        &self,
        route: &str,
        sink: &str,
        record_id: u64,
        event: &Event,
        outcome: Result<wit::DeliveryOutcome, crate::runtime::PluginError>,
    ) -> Option<(Attempt, bool, Option<u64>)> {
        match outcome {
            Ok(wit::DeliveryOutcome::Delivered) => {
                inc(&self.metrics.deliveries);
                self.outcomes.count(route, sink, Outcome::Delivered);
                self.lags.delivered(route, sink, record_id, now_ms());
                tracing::debug!(event = %event.id, sink = %sink, "delivered");
                None
            }
            Ok(wit::DeliveryOutcome::Retry(r)) => {
                Some((Self::attempt(sink, "retry", r.reason), false, r.after_ms))
            }
            Ok(wit::DeliveryOutcome::Rejected(reason)) => {
                Some((Self::attempt(sink, "rejected", reason), true, None))
            }
            Err(e) => {
                inc(&self.metrics.plugin_failures);
                tracing::warn!(event = %event.id, sink = %sink, error = %e, "sink plugin failed");
                Some((Self::attempt(sink, "failed", e.to_string()), false, None))
            }
        }
    }

    /// Retries of single (event, sink) deliveries, batched like fresh ones.
    async fn run_deliveries(
        self: &Arc<Self>,
        route: &Route,
        sink: Arc<Plugin>,
        records: Vec<Record>,
    ) {
        debug_assert!(records.iter().all(|r| r.route == route.name));
        let mut ops = Vec::new();
        let mut later = Vec::new();
        // What the sink's breaker and rate do not let go waits again, its
        // attempts untouched.
        let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
        let plan = self.delivery_plan(route, &sink, &ids);
        let mut going = Vec::with_capacity(records.len());
        for (mut record, wait) in records.into_iter().zip(plan) {
            match wait {
                None => going.push(record),
                Some(until) => {
                    self.count_deferred(1);
                    record.not_before_ms = until;
                    later.push((record.id, until));
                    ops.push(Op::Put(record));
                }
            }
        }
        let records = going;
        if records.is_empty() {
            self.commit(ops, later);
            return;
        }
        let events = records.iter().map(|r| r.event.clone()).collect();
        let outcomes = self.deliver_all(&sink, events).await;
        self.breaker_report(route, sink.name(), tally(&outcomes));
        for (record, outcome) in records.into_iter().zip(outcomes) {
            match self.classify_outcome(&route.name, sink.name(), record.id, &record.event, outcome)
            {
                None => ops.push(Op::Remove(record.id)),
                Some((attempt, permanent, requested)) => {
                    later.extend(
                        self.after_failure(record, attempt, permanent, requested, &mut ops),
                    );
                }
            }
        }
        self.commit(ops, later);
    }

    /// Replays every dead letter `query` lists (their stores share group
    /// commits); returns the record ids replayed. One that is replayed by
    /// someone else meanwhile is skipped, and so is one that cannot run
    /// with this config ([`Router::cannot_run`]): it stays as it is.
    pub async fn replay_matching(
        self: &Arc<Self>,
        query: crate::queue::DeadLetterQuery,
    ) -> Result<Vec<u64>, QueueError> {
        self.each_dead_letter(query, DeadLetterAction::Replay).await
    }

    /// Why `record` cannot run with this config (its route, or its sink on
    /// the route, is no longer configured), or `None`. Replaying such a
    /// dead letter would only dead-letter it again, and lose the history
    /// of why it failed first.
    pub fn cannot_run(&self, record: &Record) -> Option<String> {
        let Some(route) = self.routes.get(&record.route) else {
            return Some(format!(
                "route \"{}\" is no longer configured",
                record.route
            ));
        };
        match &record.stage {
            Stage::Deliver { sink } if !route.sinks.iter().any(|s| s.name() == sink) => Some(
                format!("sink \"{sink}\" is no longer on route \"{}\"", route.name),
            ),
            _ => None,
        }
    }

    /// Deletes every dead letter `query` lists; returns the record ids
    /// deleted. One replayed or deleted by someone else meanwhile is skipped.
    pub async fn discard_matching(
        self: &Arc<Self>,
        query: crate::queue::DeadLetterQuery,
    ) -> Result<Vec<u64>, QueueError> {
        self.each_dead_letter(query, DeadLetterAction::Discard)
            .await
    }

    /// Applies `action` to every dead letter `query` lists, page by page (a
    /// page is bounded in bytes too), up to its limit, 256 at a time.
    async fn each_dead_letter(
        self: &Arc<Self>,
        mut query: crate::queue::DeadLetterQuery,
        action: DeadLetterAction,
    ) -> Result<Vec<u64>, QueueError> {
        let mut done = Vec::new();
        while done.len() < query.limit {
            let page = crate::queue::DeadLetterQuery {
                limit: query.limit - done.len(),
                ..query.clone()
            };
            let letters = self.queue.dead_letters(page).await?;
            let Some(last) = letters.last().map(|d| d.record.id) else {
                break;
            };
            // A replay of what cannot run (see `cannot_run`) is skipped.
            let ids: Vec<u64> = letters
                .iter()
                .filter(|d| {
                    matches!(action, DeadLetterAction::Discard)
                        || self.cannot_run(&d.record).is_none()
                })
                .map(|d| d.record.id)
                .collect();
            drop(letters);
            for chunk in ids.chunks(256) {
                let results = futures::future::join_all(chunk.iter().map(|id| async move {
                    match action {
                        DeadLetterAction::Replay => self.replay(*id).await.map(|_| ()),
                        DeadLetterAction::Discard => self.discard(*id).await,
                    }
                }))
                .await;
                for (id, result) in chunk.iter().zip(results) {
                    match result {
                        // Made; a write that failed after it leaves it to
                        // the next commit (see `QueueError::Unsynced`).
                        Ok(()) | Err(QueueError::Unsynced(_)) => done.push(*id),
                        Err(QueueError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            query.after = Some(last);
        }
        Ok(done)
    }

    /// Deletes a dead letter for good.
    pub async fn discard(self: &Arc<Self>, id: u64) -> Result<(), QueueError> {
        match self.queue.discard(id).await {
            Ok(what) => {
                tracing::info!(event = %what.event_id, route = %what.route, record = id, "dead letter deleted");
                Ok(())
            }
            Err(e) => {
                self.check_queue(&e);
                Err(e)
            }
        }
    }

    /// Moves a dead letter back into the queue and runs it now.
    ///
    /// The replay runs to its end even if the caller goes away (an admin
    /// request dropped), and the record is scheduled exactly when it was
    /// revived: also when writing the revival failed after it was made (a
    /// later commit may still carry it; loading skips it if not), never
    /// when the writer refused or found nothing (the id may be a record
    /// already running from an earlier replay).
    pub async fn replay(self: &Arc<Self>, id: u64) -> Result<Record, QueueError> {
        let router = self.clone();
        let replay = tokio::spawn(async move {
            match router.queue.replay(id).await {
                Ok(record) => {
                    tracing::info!(event = %record.event.id, record = id, "dead letter replayed");
                    router.schedule(&record);
                    Ok(record)
                }
                Err(QueueError::Unsynced(e)) => {
                    router.timers.add(now_ms(), id);
                    Err(QueueError::Unsynced(e))
                }
                Err(e) => {
                    router.check_queue(&e);
                    Err(e)
                }
            }
        });
        replay
            .await
            .unwrap_or_else(|e| Err(QueueError::Storage(format!("replay did not finish: {e}"))))
    }
}

/// What a bulk dead-letter request does with each letter it lists.
#[derive(Debug, Clone, Copy)]
enum DeadLetterAction {
    /// Back into the queue, with a fresh attempt budget.
    Replay,
    /// Deleted for good.
    Discard,
}

/// Longest attempt detail kept, in bytes: plugins choose their reasons, and
/// they end up in every log line, dead letter and admin API answer about the
/// event.
pub const MAX_ATTEMPT_DETAIL: usize = 2048;

/// A plugin's reason or error as stored and logged: without the host stack
/// trace that an error's debug text carries when `RUST_BACKTRACE` is set (a
/// guest reading a `wasi:io` error with `to-debug-string` gets one), and
/// shortened to [`MAX_ATTEMPT_DETAIL`] bytes.
pub fn attempt_detail(mut text: String) -> String {
    if let Some(at) = text.find("\nStack backtrace:") {
        text.truncate(at);
    }
    if text.len() > MAX_ATTEMPT_DETAIL {
        let mut end = MAX_ATTEMPT_DETAIL - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_details_lose_host_backtraces_and_are_capped() {
        let with_trace =
            "reading body: connection read timeout\nStack backtrace:\n   0: wasmtime::capture\n"
                .to_string();
        assert_eq!(
            attempt_detail(with_trace),
            "reading body: connection read timeout"
        );
        let long = "é".repeat(MAX_ATTEMPT_DETAIL);
        let short = attempt_detail(long);
        assert!(short.len() <= MAX_ATTEMPT_DETAIL && short.ends_with('…'));
        assert_eq!(attempt_detail("plain".into()), "plain");
    }
}
