//! The router: takes accepted events through their routes (transforms, then
//! every sink), retries with backoff, dead-letters what cannot be delivered,
//! and resumes all of it after a restart.
//!
//! Work flows as [`Record`]s. A fresh event is one `Stage::Route` record per
//! route. A worker runs the route's transforms and delivers every output to
//! every sink at once; if all deliveries succeed, the record is removed. Each
//! failed (output, sink) pair becomes its own `Stage::Deliver` record with its
//! own retry clock, so one slow sink never holds back or duplicates another.

use crate::event::{now_ms, Event};
use crate::metrics::{add_elapsed, inc, Metrics};
use crate::queue::{Attempt, DeadLetter, Op, Queue, QueueError, Record, Stage};
use crate::retry::RetryPolicy;
use crate::runtime::bindings::wit;
use crate::runtime::Plugin;
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
    retry: RetryPolicy,
    work: mpsc::Sender<Record>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// The dispatcher's half: started by [`Router::start`].
pub struct Workers {
    rx: mpsc::Receiver<Record>,
    slots: Arc<Semaphore>,
    size: usize,
}

impl Router {
    /// A router over `routes`; call [`Router::start`] with the returned
    /// [`Workers`] to begin delivering.
    pub fn new(
        queue: Arc<dyn Queue>,
        routes: Vec<Route>,
        retry: RetryPolicy,
        workers: usize,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Router>, Workers) {
        let (tx, rx) = mpsc::channel(workers * 16);
        let mut by_source: HashMap<String, Vec<String>> = HashMap::new();
        for r in &routes {
            by_source
                .entry(r.source.clone())
                .or_default()
                .push(r.name.clone());
        }
        let routes = routes.into_iter().map(|r| (r.name.clone(), r)).collect();
        let router = Arc::new(Router {
            queue,
            routes,
            by_source,
            retry,
            work: tx,
            metrics,
            shutdown,
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

    /// Whether any route starts at `source`.
    pub fn has_source(&self, source: &str) -> bool {
        self.by_source.contains_key(source)
    }

    /// Stores `events` from `source` durably (one record per route) and hands
    /// them to the workers. Returns once they are durable: the caller may
    /// acknowledge them.
    pub async fn ingest(&self, source: &str, events: Vec<Event>) -> Result<(), IngestError> {
        let routes = self
            .by_source
            .get(source)
            .ok_or_else(|| IngestError::NoRoute(source.to_string()))?;
        if *self.shutdown.borrow() {
            return Err(IngestError::ShuttingDown);
        }
        let mut records = Vec::with_capacity(events.len() * routes.len());
        for event in events {
            for route in routes {
                records.push(Record {
                    id: self.queue.next_id(),
                    route: route.clone(),
                    stage: Stage::Route,
                    event: event.clone(),
                    attempts: Vec::new(),
                    not_before_ms: 0,
                });
            }
        }
        let n = records.len() as u64;
        let started = Instant::now();
        self.queue.append(records.clone()).await?;
        add_elapsed(&self.metrics.storage_ns, started);
        self.metrics
            .events_accepted
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        for record in records {
            // Durable already: if the workers are gone (shutdown), the record
            // runs after the next start.
            let _ = self.work.send(record).await;
        }
        Ok(())
    }

    /// Queues a record to run now or at its `not_before_ms`.
    pub fn schedule(self: &Arc<Self>, record: Record) {
        let delay = record.not_before_ms.saturating_sub(now_ms());
        let router = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            if delay > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                    _ = crate::server::stopped(&mut shutdown) => return,
                }
            }
            let _ = router.work.send(record).await;
        });
    }

    /// Loads every pending record and schedules it (at start-up).
    pub async fn resume(self: &Arc<Self>) -> Result<usize, QueueError> {
        let pending = self.queue.pending().await?;
        let n = pending.len();
        for record in pending {
            self.schedule(record);
        }
        Ok(n)
    }

    /// Runs the dispatcher until shutdown, then waits up to `grace` for
    /// in-flight attempts. Unfinished ones stay stored and run after a restart.
    pub async fn start(self: Arc<Self>, workers: Workers, grace: Duration) {
        let Workers {
            mut rx,
            slots,
            size,
        } = workers;
        let mut shutdown = self.shutdown.clone();
        loop {
            let record = tokio::select! {
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = crate::server::stopped(&mut shutdown) => break,
            };
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = crate::server::stopped(&mut shutdown) => break,
            };
            let router = self.clone();
            tokio::spawn(async move {
                router.process(record).await;
                drop(permit);
            });
        }
        let all = u32::try_from(size).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(grace, slots.acquire_many(all)).await;
        match drained {
            Ok(_) => tracing::info!("all in-flight attempts finished"),
            Err(_) => tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight attempts still running at shutdown; they stay queued and run again after restart"),
        }
    }

    fn attempt(plugin: &str, outcome: &str, detail: impl Into<String>) -> Attempt {
        Attempt {
            at_ms: now_ms(),
            plugin: plugin.to_string(),
            outcome: outcome.to_string(),
            detail: detail.into(),
        }
    }

    /// Decides what follows a failed attempt: a retry later, or the dead-letter store.
    fn after_failure(
        &self,
        mut record: Record,
        attempt: Attempt,
        permanent: bool,
        requested_ms: Option<u64>,
        ops: &mut Vec<Op>,
    ) -> Option<Record> {
        let detail = attempt.detail.clone();
        record.attempts.push(attempt);
        let made = record.attempts.len() as u32;
        if permanent || made >= self.retry.max_attempts() {
            tracing::warn!(event = %record.event.id, record = record.id, route = %record.route, attempts = made, error = %detail, "dead-lettered");
            inc(&self.metrics.dead_lettered);
            ops.push(Op::Dead(DeadLetter {
                record,
                error: detail,
                dead_at_ms: now_ms(),
            }));
            None
        } else {
            let delay = self.retry.delay_ms(made, requested_ms);
            record.not_before_ms = now_ms() + delay;
            tracing::info!(event = %record.event.id, record = record.id, route = %record.route, attempts = made, retry_in_ms = delay, error = %detail, "attempt failed; will retry");
            inc(&self.metrics.retries);
            ops.push(Op::Put(record.clone()));
            Some(record)
        }
    }

    async fn process(self: &Arc<Self>, record: Record) {
        let Some(route) = self.routes.get(&record.route).cloned() else {
            let mut ops = Vec::new();
            let attempt = Self::attempt(
                "",
                "failed",
                format!("route \"{}\" is no longer configured", record.route),
            );
            self.after_failure(record, attempt, true, None, &mut ops);
            self.commit(ops, Vec::new());
            return;
        };
        match record.stage.clone() {
            Stage::Route => self.run_route(&route, record).await,
            Stage::Deliver { sink } => match route.sinks.iter().find(|s| s.name() == sink) {
                Some(plugin) => self.run_delivery(plugin.clone(), record).await,
                None => {
                    let mut ops = Vec::new();
                    let attempt = Self::attempt(
                        &sink,
                        "failed",
                        format!("sink \"{sink}\" is no longer on route \"{}\"", route.name),
                    );
                    self.after_failure(record, attempt, true, None, &mut ops);
                    self.commit(ops, Vec::new());
                }
            },
        }
    }

    fn commit(self: &Arc<Self>, ops: Vec<Op>, later: Vec<Record>) {
        if let Err(e) = self.queue.apply(ops) {
            tracing::error!(error = %e, "could not record the outcome of an attempt; it will run again after restart");
            return;
        }
        for r in later {
            self.schedule(r);
        }
    }

    async fn run_route(self: &Arc<Self>, route: &Route, record: Record) {
        // Transforms, in order; each may filter, keep or split.
        let mut events = vec![record.event.clone()];
        for transform in &route.transforms {
            let mut next = Vec::with_capacity(events.len());
            for event in events {
                let started = Instant::now();
                let result = transform.transform(event).await;
                add_elapsed(&self.metrics.transform_ns, started);
                let (detail, permanent) = match result {
                    Ok(Ok(out)) => {
                        next.extend(out);
                        continue;
                    }
                    Ok(Err(wit::TransformError::Retryable(msg))) => (msg, false),
                    Ok(Err(wit::TransformError::Permanent(msg))) => (msg, true),
                    Err(e) => {
                        inc(&self.metrics.plugin_failures);
                        (e.to_string(), false)
                    }
                };
                let mut ops = Vec::new();
                let outcome = if permanent { "rejected" } else { "retry" };
                let attempt = Self::attempt(transform.name(), outcome, detail);
                let later = self.after_failure(record, attempt, permanent, None, &mut ops);
                self.commit(ops, later.into_iter().collect());
                return;
            }
            events = next;
        }
        if events.is_empty() {
            inc(&self.metrics.filtered);
            tracing::debug!(event = %record.event.id, route = %route.name, "filtered out by a transform");
        }
        // Every output to every sink, concurrently.
        let mut jobs = Vec::new();
        for event in &events {
            for sink in &route.sinks {
                let sink = sink.clone();
                let event = event.clone();
                jobs.push(async move {
                    let started = Instant::now();
                    let outcome = sink.deliver(event.clone()).await;
                    (sink, event, outcome, started)
                });
            }
        }
        let results = futures::future::join_all(jobs).await;
        let mut ops = Vec::new();
        let mut later = Vec::new();
        for (sink, event, outcome, started) in results {
            add_elapsed(&self.metrics.sink_ns, started);
            let failure = self.classify_outcome(sink.name(), &event, outcome);
            if let Some((attempt, permanent, requested)) = failure {
                let delivery = Record {
                    id: self.queue.next_id(),
                    route: route.name.clone(),
                    stage: Stage::Deliver {
                        sink: sink.name().to_string(),
                    },
                    event,
                    attempts: record.attempts.clone(),
                    not_before_ms: 0,
                };
                later.extend(self.after_failure(delivery, attempt, permanent, requested, &mut ops));
            }
        }
        ops.push(Op::Remove(record.id));
        self.commit(ops, later);
    }

    /// `None` when delivered; else the attempt, whether it is permanent and a requested delay.
    fn classify_outcome(
        &self,
        sink: &str,
        event: &Event,
        outcome: Result<wit::DeliveryOutcome, crate::runtime::PluginError>,
    ) -> Option<(Attempt, bool, Option<u64>)> {
        match outcome {
            Ok(wit::DeliveryOutcome::Delivered) => {
                inc(&self.metrics.deliveries);
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

    async fn run_delivery(self: &Arc<Self>, sink: Arc<Plugin>, record: Record) {
        let started = Instant::now();
        let outcome = sink.deliver(record.event.clone()).await;
        add_elapsed(&self.metrics.sink_ns, started);
        let mut ops = Vec::new();
        let mut later = Vec::new();
        match self.classify_outcome(sink.name(), &record.event, outcome) {
            None => ops.push(Op::Remove(record.id)),
            Some((attempt, permanent, requested)) => {
                later.extend(self.after_failure(record, attempt, permanent, requested, &mut ops));
            }
        }
        self.commit(ops, later);
    }

    /// Moves a dead letter back into the queue and runs it now.
    pub async fn replay(self: &Arc<Self>, id: u64) -> Result<Record, QueueError> {
        let record = self.queue.replay(id).await?;
        tracing::info!(event = %record.event.id, record = id, "dead letter replayed");
        self.schedule(record.clone());
        Ok(record)
    }
}
