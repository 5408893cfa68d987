//! The backend table: per upstream, an immutable [`Snapshot`] behind `ArcSwap`, read on every pick
//! without a lock, and per-server live state in atomics that outlives snapshots.
//!
//! This module is the only place that calls `ArcSwap::store`. A snapshot is built whole (servers,
//! the eligible tier, the strategy's precomputed state, metric handles) and swapped once, so a pick
//! never mixes versions. Live state is keyed by the server's address string, so a rebuilt snapshot
//! keeps the counters of servers that stay.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::balance::{Balancer, Candidates, PickContext, RoundRobin};
use crate::config::{ServerConfig, StrategyKind, UpstreamConfig};
use crate::metrics::{CodeCounters, ServerMetrics};

/// Live counters of one server, shared by every snapshot that contains it.
#[derive(Default)]
pub struct ServerState {
    in_flight: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl ServerState {
    /// Requests (http) or connections (tcp) being served now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests or connections sent to this server since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Connect failures, timeouts and broken responses since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// One server of one snapshot: its configuration, its live state and its metric handles.
pub struct Server {
    /// The server as configured.
    pub config: ServerConfig,
    /// Live counters, shared with the snapshots before and after this one.
    pub state: Arc<ServerState>,
    /// `{upstream, server}` series.
    pub metrics: ServerMetrics,
    /// `fulcrum_requests_total` handles, one set per listener that routes to this upstream.
    requests_by_listener: Box<[(Arc<str>, CodeCounters)]>,
}

impl Server {
    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.config.addr
    }

    /// Claims a slot for one request or connection, unless the server is at `max_connections`.
    /// The slot is released when the returned guard drops, whatever path the request takes.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        let max = self.config.max_connections;
        let in_flight = &self.state.in_flight;
        if max == 0 {
            in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
        }
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            server: Arc::clone(self),
        })
    }

    /// The request counters of `listener`.
    pub fn requests_for(&self, listener: &str) -> Option<&CodeCounters> {
        find_counters(&self.requests_by_listener, listener)
    }
}

fn find_counters<'a>(
    list: &'a [(Arc<str>, CodeCounters)],
    listener: &str,
) -> Option<&'a CodeCounters> {
    list.iter()
        .find(|(name, _)| &**name == listener)
        .map(|(_, c)| c)
}

/// A claimed slot on a server (see [`Server::try_acquire`]); outcomes are recorded through it.
pub struct InFlight {
    server: Arc<Server>,
}

impl InFlight {
    /// The server this slot is on.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Records a failure to connect or to get a usable response.
    pub fn record_failure(&self) {
        self.server.state.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time to the response head.
    pub fn record_response_time(&self, elapsed: Duration) {
        self.server
            .metrics
            .response_seconds
            .record(elapsed.as_secs_f64());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.server.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-upstream settings that travel with the snapshot, so a reload changes them atomically.
#[derive(Debug, Clone)]
pub struct Settings {
    /// See [`UpstreamConfig::connect_timeout`].
    pub connect_timeout: Duration,
    /// See [`UpstreamConfig::response_timeout`].
    pub response_timeout: Duration,
    /// See [`UpstreamConfig::retries`].
    pub retries: u32,
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
    /// Indices into `servers` of the tier that takes traffic now.
    tier: Box<[u32]>,
    balancer: Balancer,
    /// `fulcrum_requests_total` handles for answers no server was involved in (503).
    unserved: Box<[(Arc<str>, CodeCounters)]>,
    /// `fulcrum_retries_total{upstream}`: attempts on another server after a failed one.
    pub retries: metrics::Counter,
}

impl Snapshot {
    /// Servers to try for one request, best first, each at most once.
    pub fn candidates<'a>(
        &'a self,
        ctx: &PickContext<'_>,
    ) -> impl Iterator<Item = &'a Arc<Server>> + 'a {
        let positions: Candidates<'a> = self.balancer.candidates(ctx);
        positions.map(move |pos| self.in_tier(pos))
    }

    /// Claimed slots for one request (http) or connection (tcp), in the order to try them: the
    /// candidates, skipping a server at `max_connections` (that is not a retry), at most
    /// `1 + retries` of them. Every slot after the first counts in `fulcrum_retries_total`.
    /// Both proxies take the next slot when an attempt fails in a way that may go elsewhere.
    pub fn attempts<'a>(&'a self, ctx: &PickContext<'_>) -> Attempts<'a> {
        Attempts {
            snap: self,
            positions: self.balancer.candidates(ctx),
            left: self.settings.retries.saturating_add(1),
            first: true,
        }
    }

    fn in_tier(&self, pos: usize) -> &Arc<Server> {
        &self.servers[self.tier[pos] as usize]
    }

    /// Whether any server may take traffic now.
    pub fn has_eligible(&self) -> bool {
        !self.tier.is_empty()
    }

    /// Request counters of `listener` for answers that involved no server.
    pub fn unserved_for(&self, listener: &str) -> Option<&CodeCounters> {
        find_counters(&self.unserved, listener)
    }

    /// The state a server is in, as `/status` names it.
    pub fn state_of(&self, server: &Server) -> &'static str {
        if server.config.down {
            "config_down"
        } else {
            "up"
        }
    }
}

/// The iterator of [`Snapshot::attempts`].
pub struct Attempts<'a> {
    snap: &'a Snapshot,
    positions: Candidates<'a>,
    left: u32,
    first: bool,
}

impl Iterator for Attempts<'_> {
    type Item = InFlight;

    fn next(&mut self) -> Option<InFlight> {
        if self.left == 0 {
            return None;
        }
        let slot = self
            .positions
            .by_ref()
            .find_map(|pos| self.snap.in_tier(pos).try_acquire())?;
        if !self.first {
            self.snap.retries.increment(1);
        }
        self.first = false;
        self.left -= 1;
        Some(slot)
    }
}

/// One upstream: the published snapshot, and the only code that replaces it.
pub struct Upstream {
    snapshot: ArcSwap<Snapshot>,
}

impl Upstream {
    /// Builds the first snapshot of an upstream used by `listeners`.
    pub fn new(config: &UpstreamConfig, listeners: &[Arc<str>]) -> Self {
        Upstream {
            snapshot: ArcSwap::from_pointee(build(config, listeners, &[])),
        }
    }

    /// The current snapshot (one atomic load and reference count).
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Publishes a snapshot for a new configuration, keeping the live state of servers that stay.
    pub fn republish(&self, config: &UpstreamConfig, listeners: &[Arc<str>]) {
        let old = self.snapshot.load();
        self.snapshot
            .store(Arc::new(build(config, listeners, &old.servers)));
    }
}

fn build(config: &UpstreamConfig, listeners: &[Arc<str>], previous: &[Arc<Server>]) -> Snapshot {
    let name: Arc<str> = Arc::from(config.name.as_str());
    let servers: Vec<Arc<Server>> = config
        .servers
        .iter()
        .map(|sc| {
            let state = previous
                .iter()
                .find(|p| p.config.address == sc.address)
                .map(|p| Arc::clone(&p.state))
                .unwrap_or_default();
            let requests_by_listener = listeners
                .iter()
                .map(|l| (Arc::clone(l), CodeCounters::new(l, &name, &sc.address)))
                .collect();
            Arc::new(Server {
                config: sc.clone(),
                state,
                metrics: ServerMetrics::new(&name, &sc.address),
                requests_by_listener,
            })
        })
        .collect();
    let eligible = |backup: bool| -> Vec<u32> {
        (0..servers.len() as u32)
            .filter(|&i| {
                let c = &servers[i as usize].config;
                c.backup == backup && !c.down
            })
            .collect()
    };
    let mut tier = eligible(false);
    if tier.is_empty() {
        tier = eligible(true);
    }
    for server in &servers {
        let up = !server.config.down;
        server.metrics.up.set(if up { 1.0 } else { 0.0 });
    }
    let weights: Vec<u32> = tier
        .iter()
        .map(|&i| servers[i as usize].config.weight)
        .collect();
    let balancer = match config.strategy {
        StrategyKind::RoundRobin => Balancer::RoundRobin(RoundRobin::new(&weights)),
    };
    let unserved = listeners
        .iter()
        .map(|l| (Arc::clone(l), CodeCounters::new(l, &name, "")))
        .collect();
    Snapshot {
        name,
        strategy: config.strategy,
        settings: Settings {
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            retries: config.retries,
            pool_idle_timeout: config.pool_idle_timeout,
            pool_max_idle_per_server: config.pool_max_idle_per_server,
        },
        servers,
        tier: tier.into_boxed_slice(),
        balancer,
        unserved,
        retries: metrics::counter!(crate::metrics::RETRIES_TOTAL, "upstream" => config.name.clone()),
    }
}

#[cfg(test)]
mod tests;
