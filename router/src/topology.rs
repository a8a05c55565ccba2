//! Where each version is served: sink instances, each holding one slice of the version's
//! id-hash space in one replica pool ([`Backends`]), and which replica of every slice a query
//! goes to ([`Backends::scatter`]).
//!
//! Instances come from the command line or `embedstream up` ([`Backends::insert`], a whole
//! version at one URL) and from their announcements on `embedstream.instances`
//! ([`Backends::announce`], [`Backends::forget`]). The router checks every instance's health
//! itself ([`spawn_health_checks`]) and marks one down at once when a query cannot connect to
//! it, so queries move off a dead replica before the next check.
//!
//! Rules:
//! - **Pools.** A consumer pinned to a pool reads only that pool's replicas of a version that
//!   has any; otherwise it reads the `shared` pool, and when a version has no `shared`
//!   replica either, any replica.
//! - **Layout.** Among a pool's replicas of a version, the slices read are chosen coarsest
//!   first among slices with a replica that has caught up, so a slice being split keeps
//!   serving until its instance retires (its announcement's tombstone), and then its halves
//!   take over at once. If no set of caught-up slices holds every item, every announced slice
//!   counts and the slices nobody can serve are reported, never silently left out.
//! - **Replicas.** Per slice, the active replicas are the healthy, caught-up, non-standby ones;
//!   hot standbys are promoted while fewer are healthy than the pool announces. Queries go
//!   round-robin over the active ones and fail over to the others in order. A replica whose
//!   lag exceeds the router's bound is tried only after every replica within it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use embedstream_schemas::records::{SHARED_POOL, SinkInstance};
use embedstream_topics::slice::Slice;
use embedstream_topics::time::now_ms;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::metrics;

/// A replica is lagging past this many records: tried only after the others.
pub const MAX_LAG: i64 = 10_000;

/// How often the router checks every instance (and how long a check may take).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How old an announcement may be for an instance to count as healthy before the router has
/// checked it.
const FRESH_MS: i64 = 30_000;

/// One sink instance as the router sees it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Replica {
    /// Its instance id (a version's id@version for an instance given on the command line).
    pub id: String,
    /// The version it serves (`id@version`).
    pub model: String,
    /// The slice it holds (`i/n`).
    #[schema(value_type = String)]
    pub slice: Slice,
    /// Its replica pool.
    pub pool: String,
    /// A hot standby.
    pub standby: bool,
    /// Base URL of its query API.
    pub url: String,
    /// Announced as caught up with its topic.
    pub ready: bool,
    /// Items it held at its last announcement (or check).
    pub items: i64,
    /// Answered the router's last check (or, before any, announced recently).
    pub healthy: bool,
    /// Its lag at the router's last check (or announcement); -1 when unknown.
    pub lag: i64,
    /// When it was last checked or announced, ms since the epoch.
    pub seen_ms: i64,
    /// Since when it has been down, ms since the epoch.
    pub down_since_ms: Option<i64>,
    /// Whether it is among the replicas its slice's queries go to now.
    pub active: bool,
    /// Checks in a row it failed without refusing the connection.
    #[serde(skip)]
    failed_checks: u32,
}

impl Replica {
    fn usable(&self) -> bool {
        self.ready && self.healthy
    }

    fn within_lag(&self) -> bool {
        self.lag <= MAX_LAG
    }
}

/// Every version's instances, shared between the routes, the health checks and whoever adds
/// instances (the announcement follower, `embedstream up`).
#[derive(Debug, Clone, Default)]
pub struct Backends {
    replicas: Arc<RwLock<BTreeMap<String, Replica>>>,
    turn: Arc<AtomicUsize>,
}

/// Where one query of a version goes: one target per slice of the layout.
#[derive(Debug, Clone, Default)]
pub struct Scatter {
    /// The slices read, each with the replicas to try in order.
    pub slices: Vec<SliceTarget>,
    /// The parts of the version no replica can serve now, with why.
    pub missing: Vec<String>,
}

/// One slice of a [`Scatter`].
#[derive(Debug, Clone)]
pub struct SliceTarget {
    /// The slice.
    pub slice: Slice,
    /// The pool read.
    pub pool: String,
    /// `(instance id, base URL)`, first choice first.
    pub replicas: Vec<(String, String)>,
    /// How many of `replicas`, from the first, are active: queries go to them in turn, and
    /// to the others only when those fail.
    pub active: usize,
}

impl Backends {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Replica>> {
        self.replicas.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Replica>> {
        self.replicas.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or moves) a version's sink holding the whole version, in the shared pool (an
    /// instance named on the command line or started by `up`): its id is the version's.
    pub fn insert(&self, model: impl Into<String>, url: impl Into<String>) {
        let model = model.into();
        self.write().insert(
            model.clone(),
            Replica {
                id: model.clone(),
                model,
                slice: Slice::WHOLE,
                pool: SHARED_POOL.to_owned(),
                standby: false,
                url: url.into(),
                ready: true,
                items: 0,
                healthy: true,
                lag: -1,
                seen_ms: now_ms(),
                down_since_ms: None,
                active: false,
                failed_checks: 0,
            },
        );
    }

    /// Forgets every instance of a version (its version was retired).
    pub fn remove(&self, model: &str) {
        self.write().retain(|_, r| r.model != model);
    }

    /// Adds or refreshes an announced instance. What the router found out itself (down, its
    /// lag) stands until its next check; a newer start clears it.
    pub fn announce(&self, instance: &SinkInstance) {
        let Ok(slice) = u32::try_from(instance.slice)
            .ok()
            .zip(u32::try_from(instance.slices).ok())
            .ok_or(())
            .and_then(|(i, n)| Slice::new(i, n).map_err(|_| ()))
        else {
            tracing::warn!(instance = %instance.instance_id, slice = instance.slice, slices = instance.slices, "An instance announced an impossible slice; ignored.");
            return;
        };
        let fresh = now_ms() - instance.announced_at <= FRESH_MS;
        let mut replicas = self.write();
        let known = replicas.get(&instance.instance_id);
        let restarted = known.is_some_and(|k| k.url != instance.url);
        let (healthy, down_since_ms) = match known {
            Some(k) if !restarted => (k.healthy, k.down_since_ms),
            _ => (fresh, (!fresh).then_some(instance.announced_at)),
        };
        replicas.insert(
            instance.instance_id.clone(),
            Replica {
                id: instance.instance_id.clone(),
                model: instance.model.clone(),
                slice,
                pool: instance.pool.clone(),
                standby: instance.standby,
                url: instance.url.clone(),
                ready: instance.ready,
                items: instance.items,
                healthy,
                lag: instance.lag,
                seen_ms: instance.announced_at,
                down_since_ms,
                active: false,
                failed_checks: 0,
            },
        );
    }

    /// Forgets an instance (it retired: its announcement's tombstone).
    pub fn forget(&self, instance_id: &str) {
        self.write().remove(instance_id);
    }

    /// Records what a check of (or a query to) an instance found.
    pub fn mark(&self, instance_id: &str, healthy: bool, lag: Option<i64>, items: Option<i64>) {
        let mut replicas = self.write();
        let Some(r) = replicas.get_mut(instance_id) else {
            return;
        };
        let now = now_ms();
        if healthy {
            r.failed_checks = 0;
            r.down_since_ms = None;
            r.seen_ms = now;
        } else if r.healthy || r.down_since_ms.is_none() {
            r.down_since_ms = Some(now);
        }
        r.healthy = healthy;
        if let Some(lag) = lag {
            r.lag = lag;
        }
        if let Some(items) = items {
            r.items = items;
        }
        ::metrics::gauge!(metrics::REPLICA_HEALTHY, "model_version" => r.model.clone(), "slice" => r.slice.to_string(), "pool" => r.pool.clone(), "replica" => r.id.clone())
            .set(if healthy { 1.0 } else { 0.0 });
    }

    /// A check of an instance failed: one that refused the connection is down at once; one
    /// that did not answer in time or answered an error is down after two checks in a row (a
    /// busy instance is not dropped for one slow answer).
    pub fn check_failed(&self, instance_id: &str, refused: bool) {
        let failed = {
            let mut replicas = self.write();
            let Some(r) = replicas.get_mut(instance_id) else {
                return;
            };
            r.failed_checks = r.failed_checks.saturating_add(1);
            refused || r.failed_checks >= 2
        };
        if failed {
            self.mark(instance_id, false, None, None);
        }
    }

    /// Whether any instance serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.read().values().any(|r| r.model == model)
    }

    /// The base URL of a healthy instance of a version (for requests any slice can answer,
    /// such as embedding texts), preferring the shared pool's active replicas.
    pub fn get(&self, model: &str) -> Option<String> {
        let replicas = self.read();
        let mut of_model: Vec<&Replica> = replicas.values().filter(|r| r.model == model).collect();
        of_model.sort_by_key(|r| {
            (
                !r.usable(),
                !r.within_lag(),
                r.pool != SHARED_POOL,
                r.standby,
                r.id.clone(),
            )
        });
        of_model.first().map(|r| r.url.clone())
    }

    /// Every instance now, by version then id, with which ones the shared pool's queries use.
    pub fn snapshot(&self) -> Vec<Replica> {
        let replicas = self.read().clone();
        let mut active = BTreeSet::new();
        let pools: BTreeSet<(String, String)> = replicas
            .values()
            .map(|r| (r.model.clone(), r.pool.clone()))
            .collect();
        for (model, pool) in pools {
            for target in plan(&replicas, &model, &pool, 0).slices {
                active.extend(
                    target
                        .replicas
                        .into_iter()
                        .take(target.active)
                        .map(|(id, _)| id),
                );
            }
        }
        let mut out: Vec<Replica> = replicas.into_values().collect();
        for r in &mut out {
            r.active = active.contains(&r.id);
        }
        out.sort_by(|a, b| {
            (&a.model, a.slice, &a.pool, &a.id).cmp(&(&b.model, b.slice, &b.pool, &b.id))
        });
        out
    }

    /// Where a query of `model` for a consumer of `pool` goes (see the module docs).
    pub fn scatter(&self, model: &str, pool: Option<&str>) -> Scatter {
        let replicas = self.read();
        let pool = pool_for(&replicas, model, pool);
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        plan(&replicas, model, &pool, turn)
    }

    /// Every version some instance serves.
    pub fn models(&self) -> BTreeSet<String> {
        self.read().values().map(|r| r.model.clone()).collect()
    }

    /// The instance holding `item_id` that a query of the shared pool would read, per
    /// version: `(version, base URL)`; a version none can serve is left out.
    pub fn owners(&self, item_id: &str) -> Vec<(String, String)> {
        self.models()
            .into_iter()
            .filter_map(|m| {
                let scatter = self.scatter(&m, None);
                let target = scatter
                    .slices
                    .into_iter()
                    .find(|t| t.slice.contains(item_id))?;
                let (_, url) = target.replicas.into_iter().next()?;
                Some((m, url))
            })
            .collect()
    }

    /// Every version served, with one instance per slice of its shared layout.
    pub fn layouts(&self) -> BTreeMap<String, Scatter> {
        self.models()
            .into_iter()
            .map(|m| {
                let s = self.scatter(&m, None);
                (m, s)
            })
            .collect()
    }
}

impl From<BTreeMap<String, String>> for Backends {
    /// Whole-version sinks by version ([`Backends::insert`]).
    fn from(map: BTreeMap<String, String>) -> Self {
        let backends = Self::default();
        for (model, url) in map {
            backends.insert(model, url);
        }
        backends
    }
}

/// The pool a consumer of `wanted` reads for `model` (see the module docs).
fn pool_for(replicas: &BTreeMap<String, Replica>, model: &str, wanted: Option<&str>) -> String {
    let has = |p: &str| replicas.values().any(|r| r.model == model && r.pool == p);
    match wanted {
        Some(p) if has(p) => p.to_owned(),
        _ if has(SHARED_POOL) => SHARED_POOL.to_owned(),
        _ => replicas
            .values()
            .find(|r| r.model == model)
            .map_or_else(|| SHARED_POOL.to_owned(), |r| r.pool.clone()),
    }
}

/// Coarsest first: the slices that do not overlap one taken before.
fn greedy_cover(mut slices: Vec<Slice>) -> Vec<Slice> {
    slices.sort_by_key(|s| (s.count(), s.index()));
    slices.dedup();
    let mut cover: Vec<Slice> = Vec::new();
    for s in slices {
        if cover.iter().all(|c| !c.overlaps(s)) {
            cover.push(s);
        }
    }
    cover
}

fn plan(replicas: &BTreeMap<String, Replica>, model: &str, pool: &str, turn: usize) -> Scatter {
    let mine: Vec<&Replica> = replicas
        .values()
        .filter(|r| r.model == model && r.pool == pool)
        .collect();
    if mine.is_empty() {
        return Scatter {
            slices: Vec::new(),
            missing: vec![format!("{model}: no sink serves this version")],
        };
    }
    let ready: Vec<Slice> = mine.iter().filter(|r| r.ready).map(|r| r.slice).collect();
    let mut cover = greedy_cover(ready);
    if !Slice::is_partition(&cover) {
        cover = greedy_cover(mine.iter().map(|r| r.slice).collect());
    }
    let mut out = Scatter::default();
    if !Slice::is_partition(&cover) {
        let layout: Vec<String> = cover.iter().map(ToString::to_string).collect();
        out.missing.push(format!(
            "{model}: no instance holds part of the version's items (pool {pool} has slices {})",
            layout.join(", ")
        ));
    }
    for slice in cover {
        let of_slice: Vec<&Replica> = mine.iter().copied().filter(|r| r.slice == slice).collect();
        let wanted = of_slice.iter().filter(|r| !r.standby).count().max(1);
        let primaries: Vec<&Replica> = of_slice
            .iter()
            .copied()
            .filter(|r| r.usable() && !r.standby)
            .collect();
        let mut standbys: Vec<&Replica> = of_slice
            .iter()
            .copied()
            .filter(|r| r.usable() && r.standby)
            .collect();
        // Standbys within the lag bound are promoted first; ties keep id order.
        standbys.sort_by_key(|r| !r.within_lag());
        // Promote standbys while the healthy primaries are short of the announced count.
        let short = wanted.saturating_sub(primaries.len());
        let promoted: Vec<&Replica> = standbys.drain(..short.min(standbys.len())).collect();
        let mut active: Vec<&Replica> = primaries.into_iter().chain(promoted).collect();
        // Within the lag bound first; ties keep id order, so the rotation below is stable.
        active.sort_by_key(|r| !r.within_lag());
        let within = active.iter().filter(|r| r.within_lag()).count();
        if within > 1 {
            active[..within].rotate_left(turn % within);
        }
        let active_count = active.len();
        let order: Vec<(String, String)> = active
            .into_iter()
            .chain(standbys)
            .map(|r| (r.id.clone(), r.url.clone()))
            .collect();
        if order.is_empty() {
            let why = if of_slice.iter().any(|r| r.healthy) {
                "catching up"
            } else {
                "down"
            };
            out.missing.push(format!(
                "{model}: slice {slice} in pool {pool}: every replica is {why}"
            ));
            continue;
        }
        out.slices.push(SliceTarget {
            slice,
            pool: pool.to_owned(),
            replicas: order,
            active: active_count,
        });
    }
    out
}

/// Checks every instance's `/v1/stats` every `every` until `shutdown`. An instance that
/// refuses the connection is down at once; one that does not answer within `every` (or
/// answers an error) twice in a row is down; either is up again at its next answer.
pub fn spawn_health_checks(
    backends: Backends,
    client: reqwest::Client,
    every: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let checks: Vec<_> = backends
                .read()
                .values()
                .map(|r| (r.id.clone(), r.url.clone()))
                .map(|(id, url)| {
                    let call = client
                        .get(format!("{}/v1/stats", url.trim_end_matches('/')))
                        .timeout(every)
                        .send();
                    async move {
                        let answer = match call.await {
                            Ok(r) if r.status().is_success() => {
                                r.json::<serde_json::Value>().await.map_err(|_| false)
                            }
                            Ok(_) => Err(false),
                            Err(e) => Err(e.is_connect()),
                        };
                        (id, answer)
                    }
                })
                .collect();
            for (id, answer) in futures::future::join_all(checks).await {
                match answer {
                    Ok(stats) => {
                        backends.mark(&id, true, stats["lag"].as_i64(), stats["items"].as_i64())
                    }
                    Err(refused) => backends.check_failed(&id, refused),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, slice: &str, pool: &str, standby: bool, ready: bool) -> SinkInstance {
        let s: Slice = slice.parse().unwrap();
        SinkInstance {
            instance_id: id.into(),
            model: "m@1".into(),
            topic: "embeddings.m.v1".into(),
            slice: s.index() as i32,
            slices: s.count() as i32,
            pool: pool.into(),
            standby,
            url: format!("http://{id}"),
            ready,
            lag: 0,
            items: 10,
            started_at: now_ms(),
            announced_at: now_ms(),
        }
    }

    fn ids(t: &SliceTarget) -> Vec<&str> {
        t.replicas.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn a_query_goes_to_one_replica_of_every_slice_in_turn() {
        let b = Backends::default();
        for (id, s) in [("a0", "0/2"), ("b0", "0/2"), ("a1", "1/2")] {
            b.announce(&instance(id, s, SHARED_POOL, false, true));
        }
        let first = b.scatter("m@1", None);
        assert!(first.missing.is_empty(), "{:?}", first.missing);
        assert_eq!(first.slices.len(), 2);
        let second = b.scatter("m@1", None);
        // Round-robin over the slice's two replicas, the other one next in line.
        assert_ne!(ids(&first.slices[0])[0], ids(&second.slices[0])[0]);
        assert_eq!(ids(&first.slices[0]).len(), 2);
        assert_eq!(ids(&first.slices[1]), ["a1"]);
    }

    #[test]
    fn a_dead_slice_is_reported_and_a_dead_replica_fails_over_to_a_standby() {
        let b = Backends::default();
        b.announce(&instance("p1", "0/1", "ads", false, true));
        b.announce(&instance("p2", "0/1", "ads", false, true));
        b.announce(&instance("sb", "0/1", "ads", true, true));
        let s = b.scatter("m@1", Some("ads"));
        assert_eq!(s.slices[0].replicas.len(), 3);
        assert_eq!(
            ids(&s.slices[0])[2],
            "sb",
            "the standby is last while both primaries live"
        );
        b.mark("p1", false, None, None);
        let s = b.scatter("m@1", Some("ads"));
        let active: BTreeSet<&str> = ids(&s.slices[0])[..2].iter().copied().collect();
        assert_eq!(
            active,
            BTreeSet::from(["p2", "sb"]),
            "the standby is promoted"
        );
        assert!(b.snapshot().iter().any(|r| r.id == "sb" && r.active));
        // A consumer of another pool does not read the ads pool while a shared one exists.
        b.announce(&instance("s0", "0/2", SHARED_POOL, false, true));
        let shared = b.scatter("m@1", Some("search"));
        assert_eq!(shared.slices.len(), 1);
        assert_eq!(shared.missing.len(), 1, "{:?}", shared.missing);
        b.mark("p2", false, None, None);
        b.mark("sb", false, None, None);
        let s = b.scatter("m@1", Some("ads"));
        assert!(s.slices.is_empty());
        assert!(s.missing[0].contains("down"), "{:?}", s.missing);
    }

    #[test]
    fn a_split_slice_serves_until_it_retires_then_its_halves_take_over() {
        let b = Backends::default();
        b.announce(&instance("old", "0/2", SHARED_POOL, false, true));
        b.announce(&instance("one", "1/2", SHARED_POOL, false, true));
        b.announce(&instance("h0", "0/4", SHARED_POOL, false, false));
        b.announce(&instance("h2", "2/4", SHARED_POOL, false, true));
        let layout =
            |s: &Scatter| -> Vec<String> { s.slices.iter().map(|t| t.slice.to_string()).collect() };
        assert_eq!(layout(&b.scatter("m@1", None)), ["0/2", "1/2"]);
        b.announce(&instance("h0", "0/4", SHARED_POOL, false, true));
        assert_eq!(
            layout(&b.scatter("m@1", None)),
            ["0/2", "1/2"],
            "both halves ready: still the old slice"
        );
        b.forget("old");
        let s = b.scatter("m@1", None);
        assert_eq!(layout(&s), ["1/2", "0/4", "2/4"]);
        assert!(s.missing.is_empty());
        b.forget("h2");
        let s = b.scatter("m@1", None);
        assert_eq!(
            s.missing.len(),
            1,
            "2/4's items have no instance: {:?}",
            s.missing
        );
    }

    #[test]
    fn one_slow_check_does_not_drop_a_replica_but_a_refused_connection_does() {
        let b = Backends::default();
        b.announce(&instance("a", "0/1", SHARED_POOL, false, true));
        let healthy = |b: &Backends| b.snapshot()[0].healthy;
        b.check_failed("a", false);
        assert!(healthy(&b), "one slow check");
        b.check_failed("a", false);
        assert!(!healthy(&b), "two in a row");
        b.mark("a", true, Some(0), None);
        b.check_failed("a", false);
        assert!(healthy(&b), "the count starts again after an answer");
        b.check_failed("a", true);
        assert!(!healthy(&b), "refused");
    }

    #[test]
    fn a_lagging_replica_is_tried_last() {
        let b = Backends::default();
        b.announce(&instance("a", "0/1", SHARED_POOL, false, true));
        b.announce(&instance("b", "0/1", SHARED_POOL, false, true));
        b.mark("a", true, Some(MAX_LAG + 1), None);
        for _ in 0..4 {
            assert_eq!(ids(&b.scatter("m@1", None).slices[0]), ["b", "a"]);
        }
        assert_eq!(b.get("m@1").as_deref(), Some("http://b"));
    }
}
