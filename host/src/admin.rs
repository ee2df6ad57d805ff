//! The admin API, metrics and the dashboard page.
//!
//! * `GET /healthz`: liveness, no token.
//! * `GET /readyz`: readiness, no token: `200` while webhooks are taken,
//!   `503` with the reason while they are refused (the queue has no room,
//!   or it stopped working), for a load balancer to route around.
//! * `GET /`: the dashboard (a static page; it asks for the token and calls the API).
//! * `GET /metrics`: Prometheus text. Token required.
//! * `GET /api/status`: routes, plugins, queue counts, counters.
//! * `GET /api/dead-letters?limit=N&after=ID&route=R`: dead letters with
//!   their attempt history, oldest first (page with `after`: the last `id`
//!   seen), optionally of one route.
//! * `GET /api/dead-letters/{id}`: one dead letter, with its body and
//!   attempt history.
//! * `POST /api/dead-letters/{id}/replay`: puts a dead letter back in the queue.
//! * `POST /api/routes/{name}/pause` and `.../resume`: pauses a route (its
//!   webhooks are still taken and stored; none of its events is delivered,
//!   and retries wait too) or resumes it. Kept across restarts.
//! * `DELETE /api/dead-letters/{id}`: deletes one dead letter for good;
//!   `DELETE /api/dead-letters?route=R&limit=N` the oldest ones (a scope
//!   is required; a route no longer configured is fine: its letters can
//!   only be deleted).
//! * `POST /api/dead-letters/replay?route=R&limit=N`: replays the oldest
//!   dead letters (of one route, if given, which must be configured: 404
//!   otherwise; at most `limit`, default 1000).
//!
//! Every endpoint but `/healthz`, `/readyz` and `/` needs `Authorization: Bearer <token>`.

use crate::metrics::Metrics;
use crate::queue::DeadLetterQuery;
use crate::router::Router;
use crate::runtime::Plugin;
use crate::server::{error, json, text, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request};
use std::collections::HashMap;
use std::sync::Arc;

/// State of the admin listener.
pub struct Admin {
    /// The router (queue access, replay).
    pub router: Arc<Router>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Loaded plugins.
    pub plugins: HashMap<String, Arc<Plugin>>,
    /// The bearer token.
    pub token: String,
    /// The queue's room for more webhooks.
    pub headroom: Arc<crate::headroom::Headroom>,
    /// Where paused routes are kept across restarts.
    pub pauses: Arc<crate::pauses::PausedRoutes>,
    /// Held while a pause or resume is recorded and applied, so that the
    /// file and the router never disagree.
    pub pausing: tokio::sync::Mutex<()>,
}

/// `/api/routes/{name}/pause` or `/resume`: the route's name and whether it
/// is a pause.
fn route_action(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/api/routes/")?;
    let (name, action) = rest.rsplit_once('/')?;
    let pause = match action {
        "pause" => true,
        "resume" => false,
        _ => return None,
    };
    (!name.is_empty() && !name.contains('/')).then_some((name, pause))
}

const DASHBOARD: &str = include_str!("dashboard.html");

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(value) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && constant_time_eq(token.trim().as_bytes(), self.token.as_bytes())
    }

    /// Seconds since the oldest pending record was made (`Some(0)` when
    /// nothing is pending), or `None` when the store cannot say (a record
    /// from a build before time-ordered ids, a failed read).
    async fn oldest_pending_s(&self) -> Option<u64> {
        let queue = self.router.queue().clone();
        if queue.stats().pending == 0 {
            return Some(0);
        }
        let id = tokio::task::spawn_blocking(move || queue.oldest_pending_id())
            .await
            .ok()??;
        let made = crate::queue::id_made_at_ms(id)?;
        Some(crate::event::now_ms().saturating_sub(made) / 1000)
    }

    fn status(&self, oldest_pending_s: Option<u64>) -> serde_json::Value {
        let stats = self.router.queue().stats();
        let mut routes: Vec<_> = self
            .router
            .routes()
            .values()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "source": r.source,
                    "transforms": r.transforms.iter().map(|p| p.name()).collect::<Vec<_>>(),
                    "sinks": r.sinks.iter().map(|p| p.name()).collect::<Vec<_>>(),
                    "paused": self.router.is_paused(&r.name),
                })
            })
            .collect();
        routes.sort_by_key(|r| r["name"].as_str().unwrap_or("").to_string());
        let mut plugins: Vec<_> = self
            .plugins
            .values()
            .map(|p| serde_json::json!({ "name": p.name(), "role": p.role(), "sha256": p.digest, "idle_instances": p.idle_instances() }))
            .collect();
        plugins.sort_by_key(|p| p["name"].as_str().unwrap_or("").to_string());
        let counters: serde_json::Map<String, serde_json::Value> = self
            .metrics
            .snapshot()
            .into_iter()
            .map(|(k, _, v)| {
                // Kept in nanoseconds; shown, like the metric, in seconds.
                let value = if k.ends_with("_seconds_total") {
                    serde_json::json!(v as f64 / 1e9)
                } else {
                    v.into()
                };
                (k.to_string(), value)
            })
            .collect();
        let (answered, latency_ns) = self.metrics.webhook_latency.totals();
        let room = self.room();
        let pending = self.route_pending();
        let full_routes: Vec<&String> = pending
            .iter()
            .filter(|(_, n)| *n >= self.headroom.max_pending())
            .map(|(route, _)| route)
            .collect();
        serde_json::json!({
            "routes": routes,
            "plugins": plugins,
            "queue": { "pending": stats.pending, "oldest_pending_s": oldest_pending_s, "waiting": self.router.waiting(), "dead": stats.dead, "syncs": stats.syncs, "checkpoints": stats.checkpoints, "checkpoint_ns_total": stats.checkpoint_ns },
            "storage": {
                // Whether webhooks are taken at all (the disk floor);
                // routes at their pending limit refuse on their own.
                "accepting": room.is_ok(),
                "refusing_because": room.err().map(|full| full.to_string()),
                "full_routes": full_routes,
                "max_pending": self.headroom.max_pending(),
                "pending_by_route": pending.iter().map(|(route, n)| (route.clone(), (*n).into())).collect::<serde_json::Map<String, serde_json::Value>>(),
                "free_bytes": self.headroom.free_bytes(),
                "min_free_bytes": self.headroom.min_free_bytes(),
            },
            "counters": counters,
            "webhooks": { "answered": answered, "latency_ns_total": latency_ns },
            // Deliveries and their summed time from acceptance, per route
            // and sink (`weft_delivery_lag_seconds`).
            "delivery_lag": self.router.lags().totals().into_iter().map(|(route, sink, delivered, lag_ns)| serde_json::json!({ "route": route, "sink": sink, "delivered": delivered, "lag_ns_total": lag_ns })).collect::<Vec<_>>(),
            // Sinks whose deliveries wait for their circuit breaker.
            "open_breakers": self.router.open_breakers().into_iter().map(|(route, sink)| serde_json::json!({ "route": route, "sink": sink })).collect::<Vec<_>>(),
        })
    }

    /// Whether the queue takes webhooks at all: the disk floor (a route at
    /// `storage.max_pending` refuses only its own sources' webhooks, and
    /// does not make the instance unready).
    fn room(&self) -> Result<(), crate::headroom::Full> {
        self.headroom.check(std::iter::empty(), |_| 0)
    }

    /// Pending records on every configured route (0 included), by name.
    fn route_pending(&self) -> Vec<(String, u64)> {
        let queue = self.router.queue();
        let mut pending: Vec<(String, u64)> = self
            .router
            .routes()
            .keys()
            .map(|route| (route.clone(), queue.pending_on(route)))
            .collect();
        pending.sort();
        pending
    }

    /// `/readyz`: whether webhooks are taken now (a stopped queue or the
    /// disk floor; not one route at its pending limit, which a load balancer
    /// cannot route around). The reason names only the setting: the
    /// endpoint needs no token.
    fn readiness(&self) -> Reply {
        let queue = self.router.queue();
        let reason = if !queue.working() {
            Some("the queue stopped working")
        } else {
            self.room().err().map(|full| full.setting())
        };
        match reason {
            None => json(200, &serde_json::json!({ "status": "ready" })),
            Some(reason) => json(
                503,
                &serde_json::json!({ "status": "not ready", "reason": reason }),
            ),
        }
    }

    /// Handles one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_string();
        let mut method = req.method().clone();
        let public = matches!(path.as_str(), "/healthz" | "/readyz" | "/");
        if public && method == Method::OPTIONS {
            let mut r = text(204, "text/plain", "");
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        // Health checkers probe with HEAD too: answered as GET (hyper sends
        // the head only).
        if public && method == Method::HEAD {
            method = Method::GET;
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => return json(200, &serde_json::json!({ "status": "ok" })),
            (&Method::GET, "/readyz") => return self.readiness(),
            (&Method::GET, "/") => {
                // The page keeps the token in the browser: no other site
                // may frame it (and trick a click on "replay all").
                let mut page = text(200, "text/html; charset=utf-8", DASHBOARD);
                let headers = page.headers_mut();
                for (name, value) in [
                    ("content-security-policy", "frame-ancestors 'none'"),
                    ("x-frame-options", "DENY"),
                    ("x-content-type-options", "nosniff"),
                    ("referrer-policy", "no-referrer"),
                ] {
                    headers.insert(name, http::HeaderValue::from_static(value));
                }
                return page;
            }
            _ => {}
        }
        if !self.authorized(&req) {
            let mut r = error(
                401,
                "missing or wrong admin token (Authorization: Bearer <token>)",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        match (&method, path.as_str()) {
            (&Method::GET, "/metrics") => {
                let stats = self.router.queue().stats();
                let counters = [
                    (
                        "weft_queue_syncs_total",
                        "Durable commits of the queue's journal (each acknowledges a group of webhooks)",
                        stats.syncs,
                    ),
                    (
                        "weft_queue_checkpoints_total",
                        "Checkpoints: records still pending moved into sled, sled synced, journal restarted",
                        stats.checkpoints,
                    ),
                    (
                        "weft_queue_checkpoint_seconds_total",
                        "Time spent in checkpoints; commits wait while one runs",
                        stats.checkpoint_ns,
                    ),
                ];
                let mut gauges = vec![
                        (
                            "weft_queue_pending",
                            "Records waiting to be processed or retried",
                            stats.pending,
                        ),
                        (
                            "weft_queue_waiting",
                            "Pending records waiting for their retry time (backoff or Retry-After)",
                            self.router.waiting() as u64,
                        ),
                        (
                            "weft_queue_dead",
                            "Records in the dead-letter store",
                            stats.dead,
                        ),
                        (
                            "weft_storage_accepting",
                            "1 while the queue takes webhooks, 0 while it refuses all of them for want of disk space (storage.min_free_mib)",
                            u64::from(self.room().is_ok()),
                        ),
                ];
                // Left out while the store cannot say (see `oldest_pending_s`).
                if let Some(age) = self.oldest_pending_s().await {
                    gauges.push((
                        "weft_queue_oldest_pending_seconds",
                        "Age of the oldest record not yet delivered (waiting, retrying or in flight), from its acceptance; 0 when none is pending",
                        age,
                    ));
                }
                // Left out, rather than 0, while it could never be read.
                if let Some(free) = self.headroom.free_bytes() {
                    gauges.push((
                        "weft_storage_free_bytes",
                        "Free bytes on the data dir's file system at the last good look (each second)",
                        free,
                    ));
                }
                let mut body = self.metrics.render(&counters, &gauges);
                self.router.outcomes().render(&mut body);
                self.router.lags().render(&mut body);
                let pending = self.route_pending();
                crate::metrics::render_route_gauge(
                    &mut body,
                    "weft_route_pending",
                    "Records pending on each route (what storage.max_pending bounds)",
                    &pending,
                );
                // The same routes (every configured one) as `pending`.
                let paused: Vec<(String, u64)> = pending
                    .iter()
                    .map(|(route, _)| (route.clone(), u64::from(self.router.is_paused(route))))
                    .collect();
                let accepting: Vec<(String, u64)> = pending
                    .into_iter()
                    .map(|(route, n)| (route, u64::from(n < self.headroom.max_pending())))
                    .collect();
                crate::metrics::render_route_gauge(
                    &mut body,
                    "weft_route_paused",
                    "1 while an operator has paused the route (its events are stored, none is delivered)",
                    &paused,
                );
                crate::metrics::render_route_gauge(
                    &mut body,
                    "weft_route_accepting",
                    "1 while a route's sources' webhooks are taken, 0 while it is at storage.max_pending",
                    &accepting,
                );
                text(200, "text/plain; version=0.0.4", body)
            }
            (&Method::GET, "/api/status") => {
                let oldest = self.oldest_pending_s().await;
                json(200, &self.status(oldest))
            }
            (&Method::GET, "/api/dead-letters") => {
                // `data=false` lists without the event bodies (the dashboard's
                // view); with them, a page stops at DEAD_LETTER_PAGE_BYTES.
                let mut with_data = true;
                let query = match dead_letter_query(req.uri().query(), 100, Some(&mut with_data)) {
                    Ok(q) => q,
                    Err(problem) => return error(400, problem),
                };
                match self.router.queue().dead_letters(query).await {
                    Ok(letters) => {
                        let items: Vec<_> = letters
                            .iter()
                            .map(|d| dead_letter_json(d, with_data))
                            .collect();
                        json(200, &serde_json::json!({ "dead_letters": items }))
                    }
                    Err(e) => error(500, e.to_string()),
                }
            }
            (&Method::POST, "/api/dead-letters/replay") => {
                let query = match dead_letter_query(req.uri().query(), 1000, None) {
                    Ok(q) => q,
                    Err(problem) => return error(400, problem),
                };
                // Dead letters of a route no longer configured could not
                // run; a misspelt route would replay nothing, silently.
                if let Some(route) = &query.route {
                    if !self.router.routes().contains_key(route) {
                        return error(404, format!("no route named \"{route}\" in the config"));
                    }
                }
                match self.router.replay_matching(query).await {
                    Ok(replayed) => json(
                        200,
                        &serde_json::json!({ "replayed": replayed.len(), "ids": replayed }),
                    ),
                    Err(e) => error(500, e.to_string()),
                }
            }
            (&Method::DELETE, "/api/dead-letters") => {
                // Deleting in bulk needs a scope: a bare DELETE removing
                // every dead letter is too easy a mistake.
                let scoped = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .any(|(name, _)| name == "route" || name == "limit");
                if !scoped {
                    return error(
                        400,
                        "say which dead letters to delete: route=R and/or limit=N (the oldest first)",
                    );
                }
                let query = match dead_letter_query(req.uri().query(), 1000, None) {
                    Ok(q) => q,
                    Err(problem) => return error(400, problem),
                };
                match self.router.discard_matching(query).await {
                    Ok(discarded) => json(
                        200,
                        &serde_json::json!({ "discarded": discarded.len(), "ids": discarded }),
                    ),
                    Err(e) => error(500, e.to_string()),
                }
            }
            (&Method::POST, p) if route_action(p).is_some() => {
                let Some((route, pause)) = route_action(p) else {
                    return error(404, "not found");
                };
                if !self.router.routes().contains_key(route) {
                    return error(404, format!("no route named \"{route}\" in the config"));
                }
                // Recorded first, then applied: a pause that could not be
                // kept would be lost at the next restart without a word.
                let _one_at_a_time = self.pausing.lock().await;
                let mut paused = self.router.paused_routes();
                if pause {
                    paused.insert(route.to_string());
                } else {
                    paused.remove(route);
                }
                let pauses = self.pauses.clone();
                let saved = tokio::task::spawn_blocking(move || pauses.save(&paused)).await;
                if let Err(e) = saved
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                {
                    tracing::error!(route = %route, error = %e, "could not record the route's pause; nothing changed");
                    return error(
                        500,
                        format!("could not record the change, so nothing changed: {e}"),
                    );
                }
                if pause {
                    let _ = self.router.pause_route(route);
                    json(200, &serde_json::json!({ "route": route, "paused": true }))
                } else {
                    let released = self.router.resume_route(route).unwrap_or(0);
                    json(
                        200,
                        &serde_json::json!({ "route": route, "paused": false, "released": released }),
                    )
                }
            }
            (&Method::GET, p) if letter_path(p).is_some() => {
                let id = match letter_id(letter_path(p).unwrap_or_default()) {
                    Ok(id) => id,
                    Err(problem) => return error(400, problem),
                };
                let query = crate::queue::DeadLetterQuery {
                    after: id.checked_sub(1),
                    route: None,
                    limit: 1,
                    max_bytes: crate::queue::DEAD_LETTER_PAGE_BYTES,
                };
                match self.router.queue().dead_letters(query).await {
                    Ok(letters) => match letters.first() {
                        Some(d) if d.record.id == id => json(200, &dead_letter_json(d, true)),
                        _ => error(404, format!("no dead letter with id {id}")),
                    },
                    Err(e) => error(500, e.to_string()),
                }
            }
            (&Method::DELETE, p) if letter_path(p).is_some() => {
                let id = match letter_id(letter_path(p).unwrap_or_default()) {
                    Ok(id) => id,
                    Err(problem) => return error(400, problem),
                };
                match self.router.discard(id).await {
                    Ok(()) => json(200, &serde_json::json!({ "discarded": id })),
                    // Made, not yet known durable: it goes with the next
                    // write (see `QueueError::Unsynced`).
                    Err(crate::queue::QueueError::Unsynced(e)) => json(
                        202,
                        &serde_json::json!({ "discarding": id, "note": format!("the deletion is made but not yet durable: {e}") }),
                    ),
                    Err(crate::queue::QueueError::NotFound(_)) => {
                        error(404, format!("no dead letter with id {id}"))
                    }
                    Err(e) => error(500, e.to_string()),
                }
            }
            (&Method::POST, p) if p.starts_with("/api/dead-letters/") && p.ends_with("/replay") => {
                let id = p
                    .trim_start_matches("/api/dead-letters/")
                    .trim_end_matches("/replay");
                let id = match letter_id(id) {
                    Ok(id) => id,
                    Err(problem) => return error(400, problem),
                };
                // One that cannot run with this config is left as it is,
                // with the history of why it failed.
                let query = crate::queue::DeadLetterQuery {
                    after: id.checked_sub(1),
                    route: None,
                    limit: 1,
                    max_bytes: crate::queue::DEAD_LETTER_PAGE_BYTES,
                };
                let letters = match self.router.queue().dead_letters(query).await {
                    Ok(letters) => letters,
                    Err(e) => return error(500, e.to_string()),
                };
                let reason = letters
                    .first()
                    .filter(|d| d.record.id == id)
                    .and_then(|d| self.router.cannot_run(&d.record));
                if let Some(reason) = reason {
                    return error(
                        409,
                        format!("dead letter {id} cannot run with this config: {reason}; it is kept as it is"),
                    );
                }
                match self.router.replay(id).await {
                    Ok(record) => json(
                        200,
                        &serde_json::json!({ "replayed": id, "event": record.event.id }),
                    ),
                    Err(crate::queue::QueueError::NotFound(_)) => {
                        error(404, format!("no dead letter with id {id}"))
                    }
                    Err(e) => error(500, e.to_string()),
                }
            }
            _ => {
                let one_letter = path
                    .strip_prefix("/api/dead-letters/")
                    .is_some_and(|id| id.parse::<u64>().is_ok());
                let allow = match path.as_str() {
                    "/healthz" | "/readyz" | "/" | "/metrics" | "/api/status" => Some("GET"),
                    "/api/dead-letters" => Some("GET, DELETE"),
                    "/api/dead-letters/replay" => Some("POST"),
                    p if p.starts_with("/api/dead-letters/") && p.ends_with("/replay") => {
                        Some("POST")
                    }
                    _ if one_letter => Some("GET, DELETE"),
                    p if route_action(p).is_some() => Some("POST"),
                    _ => None,
                };
                if let Some(allow) = allow {
                    let mut r = error(405, format!("{method} is not allowed on {path}"));
                    r.headers_mut()
                        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                    r
                } else {
                    error(404, format!("no such endpoint {method} {path}"))
                }
            }
        }
    }
}

/// Most dead letters one listing or bulk replay covers.
const MAX_DEAD_LETTER_PAGE: usize = 10_000;

/// `limit`, `after` and `route` from a dead-letter request's query string, or
/// what is wrong with it.
/// `data` (`true` or `false`) is read into `data` where the request takes it.
fn dead_letter_query(
    query: Option<&str>,
    default_limit: usize,
    mut data: Option<&mut bool>,
) -> Result<DeadLetterQuery, String> {
    let mut q = DeadLetterQuery::first(default_limit);
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{name} must be a number, got \"{value}\""))
        };
        match name.as_ref() {
            "limit" => q.limit = (number()? as usize).min(MAX_DEAD_LETTER_PAGE),
            "after" => q.after = Some(number()?),
            "route" => q.route = Some(value.into_owned()),
            "data" if data.is_some() => {
                let with = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    other => return Err(format!("data must be true or false, got \"{other}\"")),
                };
                if let Some(d) = data.as_deref_mut() {
                    *d = with;
                }
            }
            _ => return Err(format!("unknown query parameter \"{name}\"")),
        }
    }
    Ok(q)
}

/// The `{id}` of `/api/dead-letters/{id}`, not yet parsed, if `path` is one.
fn letter_path(path: &str) -> Option<&str> {
    path.strip_prefix("/api/dead-letters/")
        .filter(|id| *id != "replay" && !id.contains('/'))
}

/// A dead letter's id from its path, or why it is not one (a `400`).
fn letter_id(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("bad dead-letter id \"{text}\""))
}

/// One dead letter as the admin API shows it (`with_data`: with the event's
/// body).
fn dead_letter_json(d: &crate::queue::DeadLetter, with_data: bool) -> serde_json::Value {
    serde_json::json!({
        "id": d.record.id,
        "route": d.record.route,
        // What was left to do: the whole route, or
        // the delivery to one of its sinks.
        "stage": match &d.record.stage {
            crate::queue::Stage::Route => "route",
            crate::queue::Stage::Deliver { .. } => "deliver",
        },
        "sink": match &d.record.stage {
            crate::queue::Stage::Route => None,
            crate::queue::Stage::Deliver { sink } => Some(sink),
        },
        "event": {
            "id": d.record.event.id,
            "source": d.record.event.source,
            "type": d.record.event.ty,
            "subject": d.record.event.subject,
            "data": with_data.then(|| d.record.event.data_text()),
        },
        "error": d.error,
        "dead_at_ms": d.dead_at_ms,
        "attempts": d.record.attempts,
    })
}
