//! The webhook listener: `POST /hooks/{source}` runs the source plugin on the
//! request, stores its events durably, and only then answers `202 Accepted`
//! with their ids. Rejections get the plugin's 4xx and are never stored.

use crate::clients::ClientSlots;
use crate::event::Event;
use crate::headroom::{self, Headroom};
use crate::metrics::{add_elapsed, inc, Metrics};
use crate::queue::{Arrival, QueueError};
use crate::rate::RateLimit;
use crate::router::{IngestError, Router};
use crate::runtime::bindings::wit;
use crate::runtime::Plugin;
use crate::server::{json, Reply};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::Request;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// State of the webhook listener.
pub struct Ingress {
    /// Source plugins by name.
    pub sources: HashMap<String, Arc<Plugin>>,
    /// Where events go.
    pub router: Arc<Router>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Time to receive the whole body.
    pub body_timeout: Duration,
    /// Requests handled at once; more get 503.
    pub slots: Semaphore,
    /// Each source's request rate limit (`limits.requests_per_s`); over it,
    /// 429.
    pub rates: HashMap<String, RateLimit>,
    /// The HTTP methods each source takes (`methods`, POST unless set);
    /// any other gets 405 without reaching the plugin.
    pub methods: HashMap<String, Vec<http::Method>>,
    /// Request slots per client address (`server.max_requests_per_client`);
    /// over it, 429.
    pub per_client: Arc<ClientSlots>,
    /// Whether the queue has room (`storage.max_pending`,
    /// `storage.min_free_mib`); without, 503.
    pub headroom: Arc<Headroom>,
    /// When a refusal for want of room was last logged at `warn`.
    pub full_logged: std::sync::Mutex<Option<Instant>>,
}

/// What a source takes when its config names no `methods`.
const DEFAULT_METHODS: &[http::Method] = &[http::Method::POST];

/// How often, at most, refusals for want of room are logged at `warn` (each
/// is counted in `weft_webhooks_refused_full_total`).
const FULL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The webhook listener's own refusals (before or around the source
/// plugin): the same `{"error", "kind"}` body as a plugin's rejections,
/// the kind named after the status.
fn refusal(status: u16, message: impl Into<String>) -> Reply {
    let kind = match status {
        400 => "bad-request",
        404 => "not-found",
        405 => "method-not-allowed",
        408 => "request-timeout",
        413 => "payload-too-large",
        429 => "too-many-requests",
        503 => "unavailable",
        _ => "error",
    };
    json(
        status,
        &serde_json::json!({ "error": message.into(), "kind": kind }),
    )
}

/// The HTTP status of a rejection kind.
pub fn rejection_status(kind: wit::RejectionKind) -> u16 {
    use wit::RejectionKind as K;
    match kind {
        K::BadRequest => 400,
        K::Unauthorized => 401,
        K::Forbidden => 403,
        K::Conflict => 409,
        K::PayloadTooLarge => 413,
        K::UnsupportedMediaType => 415,
        K::Unprocessable => 422,
        K::TooManyRequests => 429,
    }
}

/// The WIT name of a rejection kind (`bad-request`...).
pub fn rejection_kind_name(kind: wit::RejectionKind) -> &'static str {
    use wit::RejectionKind as K;
    match kind {
        K::BadRequest => "bad-request",
        K::Unauthorized => "unauthorized",
        K::Forbidden => "forbidden",
        K::Conflict => "conflict",
        K::PayloadTooLarge => "payload-too-large",
        K::UnsupportedMediaType => "unsupported-media-type",
        K::Unprocessable => "unprocessable",
        K::TooManyRequests => "too-many-requests",
    }
}

/// The peer address of a request's connection, put in the request's
/// extensions by the listener (`server::serve`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

impl Ingress {
    /// `429 Too Many Requests` for a source over its rate limit, with the
    /// seconds until a token is back.
    fn throttled(&self, name: &str, wait: Duration) -> Reply {
        inc(&self.metrics.webhooks_throttled);
        let mut r = json(
            429,
            &serde_json::json!({
                "error": format!("source \"{name}\" is over its rate limit (limits.requests_per_s); retry later"),
                "kind": "too-many-requests",
            }),
        );
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(value) = http::HeaderValue::from_str(&seconds.to_string()) {
            r.headers_mut().insert(http::header::RETRY_AFTER, value);
        }
        r
    }

    /// `503 Service Unavailable` with `Retry-After` when the queue has no
    /// room (see [`crate::headroom`]): nothing is read or stored, and the
    /// sender retries once deliveries have made room.
    fn full(&self, name: &str, full: &headroom::Full) -> Reply {
        inc(&self.metrics.webhooks_refused_full);
        let log_now = match self.full_logged.lock() {
            Ok(mut last) if !last.is_some_and(|at| at.elapsed() < FULL_LOG_EVERY) => {
                *last = Some(Instant::now());
                true
            }
            _ => false,
        };
        if log_now {
            tracing::warn!(source = %name, reason = %full, "webhook refused (503): the queue has no room; further refusals for 10 s are only counted");
        } else {
            tracing::debug!(source = %name, reason = %full, "webhook refused (503): the queue has no room");
        }
        let mut r = json(
            503,
            &serde_json::json!({
                "error": format!("the queue has no room ({}); nothing was stored, retry later", full.setting()),
                "kind": "storage-full",
            }),
        );
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(headroom::RETRY_AFTER_SECS),
        );
        r
    }

    /// Handles one request and records how long its sender waited.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let started = Instant::now();
        let reply = self.answer(req).await;
        self.metrics.webhook_latency.observe(started.elapsed());
        reply
    }

    /// The answer to one request.
    async fn answer(&self, req: Request<Incoming>) -> Reply {
        // Every request counts as received, whatever its answer: received
        // minus accepted is what was turned away.
        inc(&self.metrics.webhooks_received);
        let path = req.uri().path().to_string();
        let Some(name) = path
            .strip_prefix("/hooks/")
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            inc(&self.metrics.webhooks_rejected);
            tracing::debug!(path = %path, "request for no webhook endpoint");
            return refusal(
                404,
                format!("no such endpoint {path}; webhooks are POST /hooks/{{source}}"),
            );
        };
        let name = name.to_string();
        // Counted and logged: a sender posting to a misspelt source would
        // otherwise leave no trace on this side.
        let Some(source) = self.sources.get(&name).cloned() else {
            inc(&self.metrics.webhooks_rejected);
            tracing::info!(source = %name, status = 404, "webhook for an unknown source rejected");
            return refusal(404, format!("no source named \"{name}\""));
        };
        if !self.router.has_source(&name) {
            inc(&self.metrics.webhooks_rejected);
            tracing::info!(source = %name, status = 404, "webhook for a source no route starts at rejected");
            return refusal(404, format!("no route starts at source \"{name}\""));
        }
        let methods = self
            .methods
            .get(&name)
            .map_or(DEFAULT_METHODS, Vec::as_slice);
        if !methods.contains(req.method()) {
            inc(&self.metrics.webhooks_rejected);
            let allow = methods
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            tracing::info!(source = %name, method = %req.method(), status = 405, "webhook rejected: the source does not take this method");
            let mut r = refusal(
                405,
                format!("source \"{name}\" takes {allow}, not {}", req.method()),
            );
            if let Ok(allow) = http::HeaderValue::from_str(&allow) {
                r.headers_mut().insert(http::header::ALLOW, allow);
            }
            return r;
        }
        let rate = self.rates.get(&name);
        // Over the limit: refused before the body is read. The token itself
        // is taken only once the body is in (below): a client sending its
        // body slowly holds no token meanwhile.
        if let Some(Err(wait)) = rate.map(RateLimit::check) {
            return self.throttled(&name, wait);
        }
        // One client address holds at most `max_requests_per_client` of the
        // request slots (see `ClientSlots`).
        let peer = req.extensions().get::<Peer>().map(|p| p.0.ip());
        let _client = match peer.map(|ip| (ip, self.per_client.take(ip))) {
            Some((ip, None)) => {
                inc(&self.metrics.webhooks_throttled);
                tracing::info!(source = %name, client = %ip, limit = self.per_client.max(), "webhook refused: too many concurrent requests from this client (server.max_requests_per_client)");
                let mut r = json(
                    429,
                    &serde_json::json!({
                        "error": "too many concurrent requests from this address (server.max_requests_per_client); retry shortly",
                        "kind": "too-many-requests",
                    }),
                );
                r.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return r;
            }
            Some((_, slot)) => slot,
            None => None,
        };
        let Ok(_slot) = self.slots.try_acquire() else {
            let mut r = refusal(503, "too many concurrent webhook requests; retry shortly");
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            return r;
        };
        let queue = self.router.queue();
        if let Err(full) = self.headroom.check(self.router.routes_of(&name), |route| {
            queue.pending_on(route)
        }) {
            return self.full(&name, &full);
        }
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            inc(&self.metrics.webhooks_rejected);
            return refusal(
                413,
                format!("body larger than {} bytes", self.max_body_bytes),
            );
        }
        let (parts, body) = req.into_parts();
        let body = match tokio::time::timeout(
            self.body_timeout,
            Limited::new(body, self.max_body_bytes).collect(),
        )
        .await
        {
            Err(_) => {
                inc(&self.metrics.webhooks_rejected);
                return refusal(408, "timed out reading the request body");
            }
            Ok(Err(e)) => {
                inc(&self.metrics.webhooks_rejected);
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return refusal(
                        413,
                        format!("body larger than {} bytes", self.max_body_bytes),
                    );
                }
                return refusal(400, format!("could not read the request body: {e}"));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        if let Some(Err(wait)) = rate.map(RateLimit::take) {
            return self.throttled(&name, wait);
        }
        // Gives the token back when the request turns out not to be the
        // source's traffic (see `crate::rate`).
        let refund = || {
            if let Some(rate) = rate {
                rate.refund();
            }
        };
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let request = wit::WebhookRequest {
            method: parts.method.as_str().to_string(),
            path: path.clone(),
            query: parts.uri.query().unwrap_or("").to_string(),
            headers,
            body: body.to_vec(),
        };
        // Tells the queue an append may follow, so a group commit in progress
        // can wait for it (released at the hand-over or on any early return).
        // Taken once the body is in and the source call has its permit: a
        // slow client, or a webhook queued behind hundreds of others for a
        // source-call slot, never holds a commit.
        let started = Instant::now();
        let queue = self.router.queue();
        let (arrival, result) = source.receive_announced(request, || queue.arriving()).await;
        let arrival = arrival.unwrap_or_else(Arrival::none);
        add_elapsed(&self.metrics.source_ns, started);
        let events = match result {
            Ok(Ok(events)) => events,
            Ok(Err(rejection)) => {
                inc(&self.metrics.webhooks_rejected);
                refund();
                let status = rejection_status(rejection.kind);
                // The reason is the plugin's text: at most 1024 characters of it are logged.
                let logged: String = rejection.reason.chars().take(1024).collect();
                tracing::info!(source = %name, status, reason = %logged, "webhook rejected");
                return json(
                    status,
                    &serde_json::json!({ "error": rejection.reason, "kind": rejection_kind_name(rejection.kind) }),
                );
            }
            Err(e) => {
                inc(&self.metrics.plugin_failures);
                tracing::error!(source = %name, error = %e, "source plugin failed; nothing was accepted");
                return refusal(
                    500,
                    "the source plugin failed; nothing was accepted, please retry",
                );
            }
        };
        let bytes: usize = events.iter().map(Event::size).sum();
        if let Some(over) = source.output_over_limits(events.len(), bytes) {
            inc(&self.metrics.webhooks_rejected);
            tracing::info!(source = %name, over = %over, "webhook rejected: its events are over the source's limits");
            return json(
                413,
                &serde_json::json!({
                    "error": format!("source \"{name}\" made {over} from this request; nothing was stored"),
                    "kind": "payload-too-large",
                }),
            );
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        match self.router.ingest(&name, events, arrival).await {
            Ok(stored) => {
                for (id, _) in ids.iter().zip(&stored).filter(|(_, now)| **now) {
                    tracing::debug!(event = %id, source = %name, "accepted");
                }
                // Duplicates are acknowledged too: their event was accepted
                // before, and a sender retrying must stop.
                let duplicates: Vec<&String> = ids
                    .iter()
                    .zip(&stored)
                    .filter(|(_, now)| !**now)
                    .map(|(id, _)| id)
                    .collect();
                let mut answer = serde_json::json!({ "accepted": ids.len(), "ids": ids });
                if !duplicates.is_empty() {
                    answer["duplicates"] = serde_json::json!(duplicates);
                }
                json(202, &answer)
            }
            Err(IngestError::ShuttingDown) => {
                refusal(503, "shutting down; nothing was accepted, please retry")
            }
            // Written but not known durable: a later commit may still make
            // them so, and then they are delivered. Not acknowledged: the
            // sender should retry (a duplicate is possible, as always with
            // at-least-once; the event id says which).
            Err(IngestError::Queue(QueueError::Unsynced(e))) => {
                tracing::error!(source = %name, error = %e, events = ?ids, "could not make the events durable; not acknowledged (they may still be delivered)");
                refusal(
                    503,
                    "could not make the events durable, so they are not acknowledged; please retry (if they were stored after all, they are delivered, and the retry is a duplicate with the same event ids)",
                )
            }
            Err(e) => {
                tracing::error!(source = %name, error = %e, "could not store events; nothing was accepted");
                refusal(
                    503,
                    "could not store the events; nothing was accepted, please retry",
                )
            }
        }
    }
}
