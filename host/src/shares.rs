//! Each route's share of the delivery workers.
//!
//! A sink that stops answering holds every attempt sent to it until the
//! sink's timeout. Without a limit, its route would take every worker slot
//! within moments, and every other route (and, through the full hand-off,
//! every webhook) would wait on that one sink. [`RouteShares`] lets one route
//! run at most half of the slots at once; the records of a route at its share
//! wait by id, in memory (8 bytes each; the records themselves stay in the
//! queue, durable), and go back to the dispatcher as the route's running
//! groups finish.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Records one route has running, and the ids of those waiting for room.
#[derive(Default)]
struct RouteLoad {
    running: usize,
    parked: VecDeque<u64>,
}

/// How many records each route may have running at once, and the records
/// waiting for their route to have room. Shared by the dispatcher (which
/// asks for room) and the tasks it spawns (which give it back).
pub struct RouteShares {
    /// Records one route may have running at once.
    share: usize,
    routes: Mutex<HashMap<String, RouteLoad>>,
}

impl RouteShares {
    /// Shares of a pool of `workers` slots: half of them per route (at least
    /// one), so that one stuck route leaves the other half to the rest.
    pub fn new(workers: usize) -> RouteShares {
        RouteShares {
            share: (workers / 2).max(1),
            routes: Mutex::new(HashMap::new()),
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

    /// Takes room for `ids.len()` records of `route` and returns true; or,
    /// when the route has its share running already, keeps `ids` waiting
    /// and returns false. A route with nothing running always gets room,
    /// whatever the group's size.
    pub fn admit(&self, route: &str, ids: &[u64]) -> bool {
        let mut routes = self.lock();
        let load = match routes.get_mut(route) {
            Some(load) => load,
            None => routes.entry(route.to_owned()).or_default(),
        };
        if load.running > 0 && load.running + ids.len() > self.share {
            load.parked.extend(ids);
            return false;
        }
        load.running += ids.len();
        true
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
        let take = if load.running == 0 {
            load.parked.len()
        } else {
            self.share
                .saturating_sub(load.running)
                .min(load.parked.len())
        };
        let ids = load.parked.drain(..take).collect();
        if load.running == 0 && load.parked.is_empty() {
            routes.remove(route);
        }
        ids
    }

    /// Records waiting for their route to have room, over all routes.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|l| l.parked.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_runs_at_most_its_share_and_the_rest_waits_in_order() {
        let shares = RouteShares::new(4);
        assert_eq!(shares.share(), 2);
        assert!(shares.admit("slow", &[1]));
        assert!(shares.admit("slow", &[2]));
        assert!(!shares.admit("slow", &[3, 4]));
        assert!(!shares.admit("slow", &[5]));
        assert_eq!(shares.waiting(), 3);
        // Another route is not held back by the first one's share.
        assert!(shares.admit("fast", &[6, 7]));
        // One record finished: one waiting record fits, the oldest.
        assert_eq!(shares.release("slow", 1), vec![3]);
        assert_eq!(shares.waiting(), 2);
        // The other one too: nothing of the route runs, all waiting go back.
        assert_eq!(shares.release("slow", 1), vec![4, 5]);
        assert_eq!(shares.waiting(), 0);
    }

    #[test]
    fn a_route_with_nothing_running_takes_any_group() {
        let shares = RouteShares::new(2);
        assert!(shares.admit("r", &[1, 2, 3]));
        assert!(!shares.admit("r", &[4]));
        assert!(!shares.admit("r", &[5]));
        // Nothing of the route runs any more: every waiting id goes back,
        // although only one fits its share.
        assert_eq!(shares.release("r", 3), vec![4, 5]);
        // Everything finished and nothing waits: the route's entry is gone.
        assert!(shares.admit("r", &[4]));
        assert!(shares.release("r", 1).is_empty());
        assert!(shares.lock().is_empty());
    }
}
