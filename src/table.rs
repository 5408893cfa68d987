//! The backend table: per upstream, an immutable [`Snapshot`] behind `ArcSwap`, read on every pick
//! without a lock, and per-server live state in atomics that outlives snapshots.
//!
//! This module is the only place that calls `ArcSwap::store`, and only the upstream's [`Writer`]
//! calls it after start: health checkers, workers (passive ejection) and timers send it events, and
//! it rebuilds the snapshot whole (servers, their standing and effective weights, the eligible
//! tier, the strategy's precomputed state) and swaps it once, so a pick never mixes versions and no
//! update is lost to a concurrent one. Live state is keyed by the server's address string, so a
//! rebuilt snapshot keeps the counters of servers that stay.

mod writer;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use crate::server::{Admin, Event, Failure, InFlight, Life, Server, ServerState, Standing};
pub use writer::Writer;

use crate::balance::{Balancer, Candidates, PickContext};
use crate::config::{RetryOn, StrategyKind, UpstreamConfig};
use crate::health::budget::RetryBudget;
use crate::health::slow_start;
use crate::metrics::{listener_id, ByListener, CodeCounters, ListenerId};
use crate::server::{Decay, Passive, Recording};

/// Per-upstream settings that travel with the snapshot, so a reload changes them atomically.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`UpstreamConfig::connect_timeout`].
    pub connect_timeout: Duration,
    /// See [`UpstreamConfig::response_timeout`].
    pub response_timeout: Duration,
    /// See [`UpstreamConfig::retries`].
    pub retries: u32,
    /// See [`UpstreamConfig::retry_on`].
    pub retry_on: RetryOn,
    /// See [`UpstreamConfig::pool_idle_timeout`].
    pub pool_idle_timeout: Duration,
    /// See [`UpstreamConfig::pool_max_idle_per_server`].
    pub pool_max_idle_per_server: usize,
}

/// An immutable view of one upstream: what every pick reads.
pub struct Snapshot {
    /// The upstream's name (the `upstream` metric label).
    pub name: Arc<str>,
    /// The configured strategy.
    pub strategy: StrategyKind,
    /// Timeouts, retries, pool limits.
    pub settings: Settings,
    /// Every configured server, in file order.
    pub servers: Vec<Arc<Server>>,
    /// The servers that take traffic now: eligible primaries, else eligible backups.
    tier: Box<[Arc<Server>]>,
    balancer: Balancer,
    /// `fulcrum_requests_total` handles for answers no server was involved in (503).
    unserved: Arc<ByListener>,
    /// `fulcrum_retries_total{upstream}`: attempts on another server after a failed one.
    pub retries: metrics::Counter,
    /// The upstream's retry budget (the same one in every snapshot).
    budget: Arc<RetryBudget>,
    /// The upstream's total in flight, with bounded loads on: handed from each snapshot to the
    /// next, so that slots claimed under an older snapshot still count (and are given back).
    in_flight_total: Option<Arc<AtomicU32>>,
    /// The zero of the upstream's response-time clock (see `server::Decay`).
    latency_epoch: Instant,
}

impl Snapshot {
    /// Servers to try for one request, best first, each at most once.
    pub fn candidates<'a>(
        &'a self,
        ctx: &PickContext<'_>,
    ) -> impl Iterator<Item = &'a Arc<Server>> + 'a {
        let positions: Candidates<'a> = self.balancer.candidates(&self.tier, ctx);
        positions.map(move |pos| &self.tier[pos])
    }

    /// Claimed slots for one request (http) or connection (tcp), in the order to try them: the
    /// candidates, skipping a server at `max_connections` (that is not a retry), at most
    /// `1 + retries` of them, and a retry only while the retry budget allows it. Every slot after
    /// the first counts in `fulcrum_retries_total`. Both proxies take the next slot when an
    /// attempt fails in a way that may go elsewhere.
    pub fn attempts<'a>(&'a self, ctx: &PickContext<'_>) -> Attempts<'a> {
        Attempts {
            snap: self,
            positions: self.balancer.candidates(&self.tier, ctx),
            left: self.settings.retries.saturating_add(1),
            first: true,
            now: ctx.now,
        }
    }

    /// Whether any server may take traffic now.
    pub fn has_eligible(&self) -> bool {
        !self.tier.is_empty()
    }

    /// Request counters of listener `id` for answers that involved no server (none if this
    /// snapshot was built without that listener).
    pub fn unserved_for(&self, id: ListenerId) -> Option<&CodeCounters> {
        self.unserved.get(id)
    }
}

/// The iterator of [`Snapshot::attempts`].
pub struct Attempts<'a> {
    snap: &'a Snapshot,
    positions: Candidates<'a>,
    left: u32,
    first: bool,
    now: Instant,
}

impl Iterator for Attempts<'_> {
    type Item = InFlight;

    fn next(&mut self) -> Option<InFlight> {
        if self.left == 0 {
            return None;
        }
        let snap = self.snap;
        let slot = self
            .positions
            .by_ref()
            .find_map(|pos| snap.balancer.claim(&snap.tier[pos]))?;
        if self.first {
            self.snap.budget.record_first(self.now);
        } else {
            if !self.snap.budget.try_retry(Instant::now()) {
                self.left = 0;
                slot.unclaim();
                return None;
            }
            self.snap.retries.increment(1);
        }
        self.first = false;
        self.left -= 1;
        Some(slot)
    }
}

/// Every upstream by name, as the running configuration has them: read by the admin endpoint,
/// republished whole by a reload (upstreams added or removed), so readers never see a mix.
pub struct Directory(ArcSwap<Vec<(String, Arc<Upstream>)>>);

impl Directory {
    /// A directory holding `upstreams`.
    pub fn new(upstreams: Vec<(String, Arc<Upstream>)>) -> Self {
        Directory(ArcSwap::from_pointee(upstreams))
    }

    /// The upstreams now, in name order.
    pub fn load(&self) -> Arc<Vec<(String, Arc<Upstream>)>> {
        self.0.load_full()
    }

    /// The upstream called `name`, if the running configuration has one.
    pub fn find(&self, name: &str) -> Option<Arc<Upstream>> {
        self.0
            .load()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| Arc::clone(u))
    }

    /// Replaces the whole list (reload).
    pub fn store(&self, upstreams: Vec<(String, Arc<Upstream>)>) {
        self.0.store(Arc::new(upstreams));
    }
}

/// One upstream: the published snapshot, and the inbox of the writer that replaces it.
pub struct Upstream {
    snapshot: ArcSwap<Snapshot>,
    events: mpsc::UnboundedSender<Event>,
}

impl Upstream {
    /// Builds the first snapshot of an upstream used by `listeners`, and the writer that owns its
    /// later snapshots (to be run on the control runtime with [`Writer::run`]).
    pub fn new(config: &UpstreamConfig, listeners: &[Arc<str>]) -> (Arc<Upstream>, Writer) {
        let (events, inbox) = mpsc::unbounded_channel();
        let now = Instant::now();
        let budget = Arc::new(RetryBudget::new(config.retry_budget, now));
        let first = build(config, listeners, None, &events, budget, now);
        let upstream = Arc::new(Upstream {
            snapshot: ArcSwap::from_pointee(first),
            events,
        });
        let writer = Writer::new(Arc::clone(&upstream), config.clone(), listeners, inbox);
        (upstream, writer)
    }

    /// The current snapshot (one atomic load and reference count).
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Where checkers and workers send the writer events.
    pub fn events(&self) -> &mpsc::UnboundedSender<Event> {
        &self.events
    }

    /// Swaps in `next`; only the writer calls this.
    fn store(&self, next: Snapshot) {
        self.snapshot.store(Arc::new(next));
    }
}

/// Where a server stands given its configuration and the writer's record of it. The file comes
/// first, then the operator (disabled over draining), then health, then passive ejection: what a
/// person decided outranks what a machine measured, and the state shown is the one to undo first.
fn standing(down: bool, life: &Life) -> Standing {
    if down {
        Standing::ConfigDown
    } else if life.admin == Admin::Disabled {
        Standing::Disabled
    } else if life.admin == Admin::Draining {
        Standing::Draining
    } else if life.health.as_ref().is_some_and(|h| !h.is_up()) {
        Standing::Down
    } else if life.ejection.is_ejected() {
        Standing::Ejected
    } else {
        Standing::Up
    }
}

fn build(
    config: &UpstreamConfig,
    listeners: &[Arc<str>],
    previous: Option<&Snapshot>,
    events: &mpsc::UnboundedSender<Event>,
    budget: Arc<RetryBudget>,
    now: Instant,
) -> Snapshot {
    let name: Arc<str> = Arc::from(config.name.as_str());
    let listeners: Vec<(ListenerId, Arc<str>)> = listeners
        .iter()
        .map(|l| (listener_id(l), Arc::clone(l)))
        .collect();
    let bounded = config.hash.as_ref().is_some_and(|h| h.bounded_load >= 1.0);
    let in_flight_total = bounded.then(|| {
        previous
            .and_then(|p| p.in_flight_total.clone())
            .unwrap_or_default()
    });
    // Every snapshot of the upstream stamps response times on one clock.
    let latency_epoch = previous.map_or(now, |p| p.latency_epoch);
    let decay = Decay::new(config.ewma_decay, latency_epoch);
    let recording = Recording {
        passive: Passive {
            threshold: config.ejection.consecutive_failures,
            events: events.clone(),
        },
        upstream_in_flight: in_flight_total.clone(),
        latency_decay: (config.strategy == StrategyKind::PeakEwma).then_some(decay),
    };
    let servers: Vec<Arc<Server>> = config
        .servers
        .iter()
        .map(|sc| {
            let old =
                previous.and_then(|p| p.servers.iter().find(|s| s.config.address == sc.address));
            let state = old.map_or_else(
                || {
                    let state = ServerState::new(&name, &sc.address);
                    // Added by a reload: it enters service, so it ramps (not at process start).
                    if previous.is_some() && !config.slow_start.is_zero() {
                        state.life().ramp_since = Some(now);
                    }
                    Arc::new(state)
                },
                |s| Arc::clone(&s.state),
            );
            let requests_by_listener = match old {
                Some(s) if s.requests_by_listener.is_for(&listeners) => {
                    Arc::clone(&s.requests_by_listener)
                }
                _ => Arc::new(ByListener::new(&listeners, &name, &sc.address)),
            };
            let (standing, tenths) = {
                let mut life = state.life();
                if config.health_check.is_some() && life.health.is_none() {
                    life.health = Some(Default::default());
                } else if config.health_check.is_none() {
                    life.health = None;
                }
                let standing = standing(sc.down, &life);
                let tenths = match life.ramp_since {
                    Some(since) if standing == Standing::Up => {
                        slow_start::tenths(since, now, config.slow_start)
                    }
                    _ => slow_start::STEPS,
                };
                (standing, tenths)
            };
            state
                .metrics
                .up
                .set(if standing == Standing::Up { 1.0 } else { 0.0 });
            Arc::new(Server {
                config: sc.clone(),
                state,
                standing,
                tenths,
                requests_by_listener,
                recording: recording.clone(),
            })
        })
        .collect();
    let eligible = |backup: bool| -> Vec<Arc<Server>> {
        servers
            .iter()
            .filter(|s| s.config.backup == backup && s.standing == Standing::Up)
            .cloned()
            .collect()
    };
    let mut tier = eligible(false);
    if tier.is_empty() {
        tier = eligible(true);
    }
    let balancer = Balancer::new(config, &tier, previous.map(|p| &p.balancer), decay);
    let unserved = match previous {
        Some(p) if p.unserved.is_for(&listeners) => Arc::clone(&p.unserved),
        _ => Arc::new(ByListener::new(&listeners, &name, "")),
    };
    Snapshot {
        settings: Settings {
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            retries: config.retries,
            retry_on: config.retry_on,
            pool_idle_timeout: config.pool_idle_timeout,
            pool_max_idle_per_server: config.pool_max_idle_per_server,
        },
        strategy: config.strategy,
        servers,
        tier: tier.into_boxed_slice(),
        balancer,
        unserved,
        retries: metrics::counter!(crate::metrics::RETRIES_TOTAL, "upstream" => config.name.clone()),
        budget,
        latency_epoch,
        in_flight_total,
        name,
    }
}

#[cfg(test)]
mod admin_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod writer_tests;
