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
//! On a route with several sinks (a fan-out), each sink also has a **lane**
//! of its own, with its own share: the deliveries to that sink that run
//! apart from the route's fresh records (retries, deliveries that waited
//! for a breaker or a rate, and attempts still running when their siblings
//! were done). So a sink that stops answering fills its own lane, and the
//! route's fresh records, and its other sinks, go on.
//!
//! An operator can also **pause** a route (the admin API): its records then
//! all wait by id (in every lane of the route), none runs, and webhooks for
//! it are still taken at once; resuming hands every waiting id back to the
//! dispatcher.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// Where records wait for room and count while they run: a route's fresh
/// records (`sink: None`, also every delivery of a route with one sink), or
/// the deliveries to one sink of a fan-out route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lane {
    /// The route.
    pub route: String,
    /// The sink, for a fan-out route's deliveries.
    pub sink: Option<String>,
}

impl Lane {
    /// A route's own lane.
    pub fn route(route: &str) -> Lane {
        Lane {
            route: route.to_owned(),
            sink: None,
        }
    }

    /// The lane of `sink`'s deliveries on the fan-out route `route`.
    pub fn sink(route: &str, sink: &str) -> Lane {
        Lane {
            route: route.to_owned(),
            sink: Some(sink.to_owned()),
        }
    }
}

/// Records one lane has running, and the ids of those waiting for room.
#[derive(Default)]
struct RouteLoad {
    running: usize,
    parked: VecDeque<u64>,
    /// Times records of the lane finished: whether it makes progress.
    releases: u64,
    /// When one of its records last finished (or it started running).
    progress: Option<std::time::Instant>,
}

/// The lanes' loads, and the routes an operator paused.
#[derive(Default)]
struct Loads {
    lanes: HashMap<Lane, RouteLoad>,
    paused: HashSet<String>,
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
    /// Records one lane may have running at once.
    share: usize,
    loads: Mutex<Loads>,
    /// Woken whenever records finish (see [`RouteShares::room`]).
    released: tokio::sync::Notify,
}

impl RouteShares {
    /// Shares of a pool of `workers` slots: three quarters of them per route
    /// (at least one), so that one stuck route leaves a quarter to the rest.
    pub fn new(workers: usize) -> RouteShares {
        RouteShares {
            share: (workers * 3 / 4).max(1),
            loads: Mutex::new(Loads::default()),
            released: tokio::sync::Notify::new(),
        }
    }

    /// Records of `route` waiting for room, how often its records finished
    /// so far, and whether it is paused.
    fn load_of(&self, route: &str) -> (usize, u64, bool) {
        let loads = self.lock();
        let paused = loads.paused.contains(route);
        loads
            .lanes
            .get(&Lane::route(route))
            .map_or((0, 0, paused), |l| (l.parked.len(), l.releases, paused))
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Loads> {
        match self.loads.lock() {
            Ok(loads) => loads,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes room for `ids.len()` records in `lane` ([`Admission::Run`]);
    /// or, when the lane has its share running already, says to wait if
    /// one of its records finished within `patience` (a route's lane only),
    /// and otherwise keeps `ids` waiting by id. A lane with nothing running
    /// always gets room, whatever the group's size.
    pub fn admit(&self, lane: &Lane, ids: &[u64], patience: std::time::Duration) -> Admission {
        let mut loads = self.lock();
        let Loads { lanes, paused } = &mut *loads;
        let paused = paused.contains(&lane.route);
        let load = match lanes.get_mut(lane) {
            Some(load) => load,
            None => lanes.entry(lane.clone()).or_default(),
        };
        if paused {
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
        // A sink's lane never holds the dispatcher up: what does not fit
        // waits by id, whether the sink is busy or stuck, and the route's
        // fresh records (and its other sinks) go on.
        if lane.sink.is_none() && load.progress.is_some_and(|at| at.elapsed() < patience) {
            return Admission::Wait;
        }
        load.parked.extend(ids);
        Admission::Parked
    }

    /// For deliveries that start along with their route's fresh records
    /// (which have room already): takes room for `n` of them in `lane`
    /// unless the lane is stuck (at its share, and nothing of it finished
    /// within `patience`) or its route paused. A busy lane that makes
    /// progress may go over its share here: the route's own share bounds
    /// these. Returns whether they run; if not, they are to be stored and
    /// handed to [`RouteShares::park`].
    pub fn start_with_route(&self, lane: &Lane, n: usize, patience: std::time::Duration) -> bool {
        let mut loads = self.lock();
        if loads.paused.contains(&lane.route) {
            return false;
        }
        let share = self.share;
        let load = loads.lanes.entry(lane.clone()).or_default();
        let stuck =
            load.running >= share && load.progress.is_none_or(|at| at.elapsed() >= patience);
        if stuck {
            return false;
        }
        if load.running == 0 {
            load.progress = Some(std::time::Instant::now());
        }
        load.running += n;
        true
    }

    /// Keeps `ids` (stored already) waiting by id in `lane` until it has
    /// room. When nothing of the lane runs (it freed up meanwhile) and its
    /// route is not paused, nothing would let them go: they are returned,
    /// to be scheduled now.
    pub fn park(&self, lane: &Lane, ids: &[u64]) -> Vec<u64> {
        let mut loads = self.lock();
        let paused = loads.paused.contains(&lane.route);
        let load = loads.lanes.entry(lane.clone()).or_default();
        if load.running == 0 && !paused {
            let mut back: Vec<u64> = load.parked.drain(..).collect();
            back.extend(ids);
            loads.lanes.remove(lane);
            return back;
        }
        load.parked.extend(ids);
        Vec::new()
    }

    /// Resolves at the next release of any route's records (enable it
    /// before asking [`RouteShares::admit`], so that none is missed).
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// Gives back the room of `n` finished records of `lane`; returns the
    /// ids of waiting records that now fit (to be loaded and dispatched
    /// again: they may find the room taken by then, and wait again). Once
    /// nothing of the lane runs, every waiting id is returned: no running
    /// record is left whose end would let them go (say, because the ids
    /// let go last time could not be loaded), so the dispatcher sorts them
    /// out again.
    pub fn release(&self, lane: &Lane, n: usize) -> Vec<u64> {
        let mut loads = self.lock();
        let paused = loads.paused.contains(&lane.route);
        let Some(load) = loads.lanes.get_mut(lane) else {
            return Vec::new();
        };
        load.running = load.running.saturating_sub(n);
        load.releases = load.releases.wrapping_add(1);
        load.progress = Some(std::time::Instant::now());
        self.released.notify_waiters();
        let take = if paused {
            0
        } else if load.running == 0 {
            load.parked.len()
        } else {
            self.share
                .saturating_sub(load.running)
                .min(load.parked.len())
        };
        let ids = load.parked.drain(..take).collect();
        if load.running == 0 && load.parked.is_empty() {
            loads.lanes.remove(lane);
        }
        ids
    }

    /// Pauses `route`: from now on its records wait by id, and none starts
    /// (those running finish). Returns false if it was paused already.
    pub fn pause(&self, route: &str) -> bool {
        self.lock().paused.insert(route.to_owned())
    }

    /// Resumes `route`: returns the ids of its waiting records (in all its
    /// lanes), to be loaded and dispatched again (the lanes' shares apply
    /// to them as to any).
    pub fn resume(&self, route: &str) -> Vec<u64> {
        let mut loads = self.lock();
        loads.paused.remove(route);
        let mut ids = Vec::new();
        loads.lanes.retain(|lane, load| {
            if lane.route != route {
                return true;
            }
            ids.extend(load.parked.drain(..));
            load.running > 0
        });
        self.released.notify_waiters();
        ids
    }

    /// Whether `route` is paused.
    pub fn is_paused(&self, route: &str) -> bool {
        self.lock().paused.contains(route)
    }

    /// Records waiting for their lane to have room, over all lanes.
    pub fn waiting(&self) -> usize {
        self.lock().lanes.values().map(|l| l.parked.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lane(route: &str) -> Lane {
        Lane::route(route)
    }

    /// Long enough that a test never sees it pass.
    const BUSY: Duration = Duration::from_secs(3600);

    #[test]
    fn a_route_runs_at_most_its_share_and_the_rest_waits_in_order() {
        let shares = RouteShares::new(3);
        assert_eq!(shares.share(), 2);
        assert_eq!(shares.admit(&lane("slow"), &[1], BUSY), Admission::Run);
        assert_eq!(shares.admit(&lane("slow"), &[2], BUSY), Admission::Run);
        // At its share, and something finished lately: wait for room.
        assert_eq!(shares.admit(&lane("slow"), &[3, 4], BUSY), Admission::Wait);
        assert_eq!(shares.waiting(), 0);
        // Nothing finished within the patience: the ids wait by id.
        assert_eq!(
            shares.admit(&lane("slow"), &[3, 4], Duration::ZERO),
            Admission::Parked
        );
        assert_eq!(
            shares.admit(&lane("slow"), &[5], Duration::ZERO),
            Admission::Parked
        );
        assert_eq!(shares.waiting(), 3);
        // Another route is not held back by the first one's share.
        assert_eq!(shares.admit(&lane("fast"), &[6, 7], BUSY), Admission::Run);
        // One record finished: one waiting record fits, the oldest.
        assert_eq!(shares.release(&lane("slow"), 1), vec![3]);
        assert_eq!(shares.waiting(), 2);
        // The other one too: nothing of the route runs, all waiting go back.
        assert_eq!(shares.release(&lane("slow"), 1), vec![4, 5]);
        assert_eq!(shares.waiting(), 0);
    }

    #[tokio::test]
    async fn a_webhook_waits_for_room_on_a_busy_route_for_a_bounded_time() {
        let shares = std::sync::Arc::new(RouteShares::new(3));
        let patience = Duration::from_secs(5);
        assert_eq!(shares.admit(&lane("r"), &[1, 2], BUSY), Admission::Run);
        assert!(shares.room("r", patience).await, "nothing waits yet");
        assert_eq!(
            shares.admit(&lane("r"), &[3, 4], Duration::ZERO),
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
        assert_eq!(shares.release(&lane("r"), 1), vec![3]);
        assert!(waiting.await.unwrap(), "woken by the release");
    }

    #[tokio::test]
    async fn a_paused_route_runs_nothing_takes_webhooks_and_gives_all_back_when_resumed() {
        let shares = RouteShares::new(4);
        assert_eq!(shares.admit(&lane("r"), &[1], BUSY), Admission::Run);
        assert!(shares.pause("r"));
        assert!(!shares.pause("r"), "paused already");
        assert!(shares.is_paused("r") && !shares.is_paused("other"));
        // Nothing starts, however much room there is.
        assert_eq!(shares.admit(&lane("r"), &[2, 3], BUSY), Admission::Parked);
        assert_eq!(
            shares.admit(&lane("r"), &[4, 5, 6], BUSY),
            Admission::Parked
        );
        // More wait than the route may run: webhooks still get room at once.
        assert!(shares.room("r", Duration::ZERO).await);
        // The running record finishes: nothing is let go while paused.
        assert!(shares.release(&lane("r"), 1).is_empty());
        assert_eq!(shares.waiting(), 5);
        assert!(shares.is_paused("r"), "paused with nothing running");
        // Other routes run as ever.
        assert_eq!(shares.admit(&lane("other"), &[7], BUSY), Admission::Run);
        // Resumed: every waiting id goes back, in order.
        assert_eq!(shares.resume("r"), vec![2, 3, 4, 5, 6]);
        assert!(!shares.is_paused("r"));
        assert_eq!(shares.admit(&lane("r"), &[2, 3], BUSY), Admission::Run);
    }

    #[test]
    fn a_route_with_nothing_running_takes_any_group() {
        let shares = RouteShares::new(2);
        assert_eq!(shares.admit(&lane("r"), &[1, 2, 3], BUSY), Admission::Run);
        assert_eq!(
            shares.admit(&lane("r"), &[4], Duration::ZERO),
            Admission::Parked
        );
        assert_eq!(
            shares.admit(&lane("r"), &[5], Duration::ZERO),
            Admission::Parked
        );
        // Nothing of the route runs any more: every waiting id goes back,
        // although only one fits its share.
        assert_eq!(shares.release(&lane("r"), 3), vec![4, 5]);
        // Everything finished and nothing waits: the route's entry is gone.
        assert_eq!(shares.admit(&lane("r"), &[4], BUSY), Admission::Run);
        assert!(shares.release(&lane("r"), 1).is_empty());
        assert!(shares.lock().lanes.is_empty());
    }

    #[test]
    fn a_fan_out_sink_has_a_lane_of_its_own_and_a_stuck_one_is_not_started() {
        let shares = RouteShares::new(3);
        let stuck = Lane::sink("r", "stuck");
        // Deliveries that start with their fresh records take room in the
        // sink's lane, over its share while it makes progress.
        assert!(shares.start_with_route(&stuck, 2, BUSY));
        assert!(shares.start_with_route(&stuck, 1, BUSY));
        // At its share and nothing finished within the patience: stuck;
        // the route's own lane and the other sink's are not affected.
        assert!(!shares.start_with_route(&stuck, 1, Duration::ZERO));
        assert_eq!(shares.admit(&lane("r"), &[1, 2], BUSY), Admission::Run);
        assert!(shares.start_with_route(&Lane::sink("r", "ok"), 2, Duration::ZERO));
        // The stuck sink's deliveries wait by id in its lane, and go back
        // as it finishes.
        assert!(shares.park(&stuck, &[10, 11]).is_empty());
        assert_eq!(
            shares.admit(&stuck, &[12], Duration::ZERO),
            Admission::Parked
        );
        // Busy, not stuck: a sink's lane still never makes the dispatcher
        // wait; what does not fit waits by id.
        assert_eq!(shares.admit(&stuck, &[], BUSY), Admission::Parked);
        assert_eq!(shares.waiting(), 3);
        assert_eq!(shares.release(&stuck, 1), Vec::<u64>::new());
        assert_eq!(shares.release(&stuck, 2), vec![10, 11, 12]);
        // Parked in a lane with nothing running: handed straight back.
        assert_eq!(shares.park(&stuck, &[13]), vec![13]);
        assert_eq!(shares.waiting(), 0);
    }

    #[test]
    fn pausing_a_route_holds_every_lane_of_it() {
        let shares = RouteShares::new(4);
        let sink = Lane::sink("r", "s");
        assert!(shares.start_with_route(&sink, 1, BUSY));
        assert!(shares.pause("r"));
        assert!(!shares.start_with_route(&sink, 1, BUSY), "paused");
        assert_eq!(shares.admit(&sink, &[1], BUSY), Admission::Parked);
        assert!(shares.park(&sink, &[2]).is_empty(), "paused: kept");
        assert_eq!(shares.admit(&lane("r"), &[3], BUSY), Admission::Parked);
        assert!(
            shares.release(&sink, 1).is_empty(),
            "nothing goes while paused"
        );
        assert_eq!(shares.waiting(), 3);
        let mut back = shares.resume("r");
        back.sort();
        assert_eq!(back, vec![1, 2, 3]);
        assert!(shares.lock().lanes.is_empty());
    }
}
