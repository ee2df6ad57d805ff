//! Each route's share of the delivery workers.
//!
//! A sink that stops answering holds every attempt sent to it until the
//! sink's timeout. Without a limit, its route would take every worker slot
//! within moments, and every other route (and, through the full hand-off,
//! every webhook) would wait on that one sink. [`RouteShares`] lets one route
//! run at most three quarters of the slots at once. At its share, a route
//! whose records keep finishing is waited for ([`Admission::Wait`]); one
//! where nothing finished for a while has its further records wait by id
//! ([`Admission::Parked`]), in memory (8 bytes each; the records themselves
//! stay in the queue, durable), and they go back to the dispatcher as the
//! route's running groups finish.
//!
//! Webhooks feel a route's load: while as many of its records wait as it
//! may run, a webhook for it waits for room ([`RouteShares::room`]) before
//! its records are handed over. A busy route, whose records keep finishing,
//! thus slows its senders down (backpressure: the queue does not grow
//! faster than it is delivered); a stuck one, where nothing finishes,
//! delays them by a short patience at most.
//!
//! An operator can also **pause** a route (the admin API): its records then
//! all wait by id, none runs, and webhooks for it are still taken at once;
//! resuming hands every waiting id back to the dispatcher.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Records one route has running, and the ids of those waiting for room.
#[derive(Default)]
struct RouteLoad {
    running: usize,
    parked: VecDeque<u64>,
    /// Times records of the route finished: whether it makes progress.
    releases: u64,
    /// When one of its records last finished (or it started running).
    progress: Option<std::time::Instant>,
    /// Paused by an operator: nothing of it starts until resumed.
    paused: bool,
}

/// What [`RouteShares::admit`] decided for a group of records.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// The route has room: run the group.
    Run,
    /// The route is at its share but its records keep finishing: wait for
    /// one to finish ([`RouteShares::released`]) and ask again.
    Wait,
    /// The route is at its share and nothing of it finished for a while
    /// (a stuck sink): the ids wait, and come back as it finishes records.
    Parked,
}

/// How many records each route may have running at once, and the records
/// waiting for their route to have room. Shared by the dispatcher (which
/// asks for room) and the tasks it spawns (which give it back).
pub struct RouteShares {
    /// Records one route may have running at once.
    share: usize,
    routes: Mutex<HashMap<String, RouteLoad>>,
    /// Woken whenever records finish (see [`RouteShares::room`]).
    released: tokio::sync::Notify,
}

impl RouteShares {
    /// Shares of a pool of `workers` slots: three quarters of them per route
    /// (at least one), so that one stuck route leaves a quarter to the rest.
    pub fn new(workers: usize) -> RouteShares {
        RouteShares {
            share: (workers * 3 / 4).max(1),
            routes: Mutex::new(HashMap::new()),
            released: tokio::sync::Notify::new(),
        }
    }

    /// Records of `route` waiting for room, how often its records finished
    /// so far, and whether it is paused.
    fn load_of(&self, route: &str) -> (usize, u64, bool) {
        self.lock()
            .get(route)
            .map_or((0, 0, false), |l| (l.parked.len(), l.releases, l.paused))
    }

    /// Waits until fewer of `route`'s records wait for room than it may
    /// run. A busy route (its records keep finishing) is waited for as long
    /// as it takes: backpressure. A stuck one is not: once `patience`
    /// passes without one of its records finishing, this gives up and
    /// returns false.
    pub async fn room(&self, route: &str, patience: std::time::Duration) -> bool {
        let mut seen = None;
        let mut deadline = tokio::time::Instant::now() + patience;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check: a release in between still wakes it.
            released.as_mut().enable();
            let (parked, releases, paused) = self.load_of(route);
            // A paused route's records wait by id whatever their number:
            // its webhooks are taken at once (the queue holds them).
            if parked < self.share || paused {
                return true;
            }
            if seen.is_some_and(|seen| seen != releases) {
                deadline = tokio::time::Instant::now() + patience;
            }
            seen = Some(releases);
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return false;
            }
        }
    }

    /// Records one route may have running at once.
    pub fn share(&self) -> usize {
        self.share
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RouteLoad>> {
        match self.routes.lock() {
            Ok(routes) => routes,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes room for `ids.len()` records of `route` ([`Admission::Run`]);
    /// or, when the route has its share running already, says to wait if
    /// one of its records finished within `patience`, and otherwise keeps
    /// `ids` waiting by id. A route with nothing running always gets room,
    /// whatever the group's size.
    pub fn admit(&self, route: &str, ids: &[u64], patience: std::time::Duration) -> Admission {
        let mut routes = self.lock();
        let load = match routes.get_mut(route) {
            Some(load) => load,
            None => routes.entry(route.to_owned()).or_default(),
        };
        if load.paused {
            load.parked.extend(ids);
            return Admission::Parked;
        }
        if load.running == 0 || load.running + ids.len() <= self.share {
            if load.running == 0 {
                load.progress = Some(std::time::Instant::now());
            }
            load.running += ids.len();
            return Admission::Run;
        }
        if load.progress.is_some_and(|at| at.elapsed() < patience) {
            return Admission::Wait;
        }
        load.parked.extend(ids);
        Admission::Parked
    }

    /// Resolves at the next release of any route's records (enable it
    /// before asking [`RouteShares::admit`], so that none is missed).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// Gives back the room of `n` finished records of `route`; returns the
    /// ids of waiting records that now fit (to be loaded and dispatched
    /// again: they may find the room taken by then, and wait again). Once
    /// nothing of the route runs, every waiting id is returned: no running
    /// record is left whose end would let them go (say, because the ids
    /// let go last time could not be loaded), so the dispatcher sorts them
    /// out again.
    pub fn release(&self, route: &str, n: usize) -> Vec<u64> {
        let mut routes = self.lock();
        let Some(load) = routes.get_mut(route) else {
            return Vec::new();
        };
        load.running = load.running.saturating_sub(n);
        load.releases = load.releases.wrapping_add(1);
        load.progress = Some(std::time::Instant::now());
        self.released.notify_waiters();
        let take = if load.paused {
            0
        } else if load.running == 0 {
            load.parked.len()
        } else {
            self.share
                .saturating_sub(load.running)
                .min(load.parked.len())
        };
        let ids = load.parked.drain(..take).collect();
        if load.running == 0 && load.parked.is_empty() && !load.paused {
            routes.remove(route);
        }
        ids
    }

    /// Pauses `route`: from now on its records wait by id, and none starts
    /// (those running finish). Returns false if it was paused already.
    pub fn pause(&self, route: &str) -> bool {
        let mut routes = self.lock();
        let load = routes.entry(route.to_owned()).or_default();
        !std::mem::replace(&mut load.paused, true)
    }

    /// Resumes `route`: returns the ids of its waiting records, to be loaded
    /// and dispatched again (the route's share applies to them as to any).
    pub fn resume(&self, route: &str) -> Vec<u64> {
        let mut routes = self.lock();
        let Some(load) = routes.get_mut(route) else {
            return Vec::new();
        };
        load.paused = false;
        let ids = load.parked.drain(..).collect();
        if load.running == 0 {
            routes.remove(route);
        }
        self.released.notify_waiters();
        ids
    }

    /// Whether `route` is paused.
    pub fn is_paused(&self, route: &str) -> bool {
        self.lock().get(route).is_some_and(|l| l.paused)
    }

    /// Records waiting for their route to have room, over all routes.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|l| l.parked.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Long enough that a test never sees it pass.
    const BUSY: Duration = Duration::from_secs(3600);

    #[test]
    fn a_route_runs_at_most_its_share_and_the_rest_waits_in_order() {
        let shares = RouteShares::new(3);
        assert_eq!(shares.share(), 2);
        assert_eq!(shares.admit("slow", &[1], BUSY), Admission::Run);
        assert_eq!(shares.admit("slow", &[2], BUSY), Admission::Run);
        // At its share, and something finished lately: wait for room.
        assert_eq!(shares.admit("slow", &[3, 4], BUSY), Admission::Wait);
        assert_eq!(shares.waiting(), 0);
        // Nothing finished within the patience: the ids wait by id.
        assert_eq!(
            shares.admit("slow", &[3, 4], Duration::ZERO),
            Admission::Parked
        );
        assert_eq!(
            shares.admit("slow", &[5], Duration::ZERO),
            Admission::Parked
        );
        assert_eq!(shares.waiting(), 3);
        // Another route is not held back by the first one's share.
        assert_eq!(shares.admit("fast", &[6, 7], BUSY), Admission::Run);
        // One record finished: one waiting record fits, the oldest.
        assert_eq!(shares.release("slow", 1), vec![3]);
        assert_eq!(shares.waiting(), 2);
        // The other one too: nothing of the route runs, all waiting go back.
        assert_eq!(shares.release("slow", 1), vec![4, 5]);
        assert_eq!(shares.waiting(), 0);
    }

    #[tokio::test]
    async fn a_webhook_waits_for_room_on_a_busy_route_for_a_bounded_time() {
        let shares = std::sync::Arc::new(RouteShares::new(3));
        let patience = Duration::from_secs(5);
        assert_eq!(shares.admit("r", &[1, 2], BUSY), Admission::Run);
        assert!(shares.room("r", patience).await, "nothing waits yet");
        assert_eq!(
            shares.admit("r", &[3, 4], Duration::ZERO),
            Admission::Parked
        );
        // Two wait, as many as the route may run: no room until one ends,
        // and nothing ends within no patience at all.
        assert!(!shares.room("r", Duration::ZERO).await);
        let waiting = tokio::spawn({
            let shares = shares.clone();
            async move { shares.room("r", patience).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(shares.release("r", 1), vec![3]);
        assert!(waiting.await.unwrap(), "woken by the release");
    }

    #[tokio::test]
    async fn a_paused_route_runs_nothing_takes_webhooks_and_gives_all_back_when_resumed() {
        let shares = RouteShares::new(4);
        assert_eq!(shares.admit("r", &[1], BUSY), Admission::Run);
        assert!(shares.pause("r"));
        assert!(!shares.pause("r"), "paused already");
        assert!(shares.is_paused("r") && !shares.is_paused("other"));
        // Nothing starts, however much room there is.
        assert_eq!(shares.admit("r", &[2, 3], BUSY), Admission::Parked);
        assert_eq!(shares.admit("r", &[4, 5, 6], BUSY), Admission::Parked);
        // More wait than the route may run: webhooks still get room at once.
        assert!(shares.room("r", Duration::ZERO).await);
        // The running record finishes: nothing is let go while paused.
        assert!(shares.release("r", 1).is_empty());
        assert_eq!(shares.waiting(), 5);
        assert!(shares.is_paused("r"), "paused with nothing running");
        // Other routes run as ever.
        assert_eq!(shares.admit("other", &[7], BUSY), Admission::Run);
        // Resumed: every waiting id goes back, in order.
        assert_eq!(shares.resume("r"), vec![2, 3, 4, 5, 6]);
        assert!(!shares.is_paused("r"));
        assert_eq!(shares.admit("r", &[2, 3], BUSY), Admission::Run);
    }

    #[test]
    fn a_route_with_nothing_running_takes_any_group() {
        let shares = RouteShares::new(2);
        assert_eq!(shares.admit("r", &[1, 2, 3], BUSY), Admission::Run);
        assert_eq!(shares.admit("r", &[4], Duration::ZERO), Admission::Parked);
        assert_eq!(shares.admit("r", &[5], Duration::ZERO), Admission::Parked);
        // Nothing of the route runs any more: every waiting id goes back,
        // although only one fits its share.
        assert_eq!(shares.release("r", 3), vec![4, 5]);
        // Everything finished and nothing waits: the route's entry is gone.
        assert_eq!(shares.admit("r", &[4], BUSY), Admission::Run);
        assert!(shares.release("r", 1).is_empty());
        assert!(shares.lock().is_empty());
    }
}
