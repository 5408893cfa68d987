//! Load-balancing strategies.
//!
//! A strategy is built once per snapshot over the snapshot's *tier*: the eligible primaries, or the
//! eligible backups when no primary is eligible. At request time it reads the tier's live load
//! (each server's in-flight count and response-time average are atomics on the server) and yields
//! candidates (positions in the tier) in preference order: the proxy claims the first one it can
//! and moves to the next on a failed connect, a full server or a retry. A candidate sequence never
//! repeats a server, covers the whole tier, and needs no allocation, lock or boxed iterator: the
//! [`Balancer`] enum dispatches to each strategy's own iterator type.
//!
//! Claiming is the strategy's too ([`Strategy::claim`]): most claim up to the server's
//! `max_connections`; bounded loads also cap the claim by the server's share of the upstream's
//! total in flight, in the same compare-and-swap.

mod draw;
pub mod hash;
mod least_connections;
mod order;
mod peak_ewma;
mod round_robin;
mod two_choices;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

pub use hash::ConsistentHash;
pub use least_connections::LeastConnections;
pub use order::Preferred;
pub use peak_ewma::PeakEwma;
pub use round_robin::RoundRobin;
pub use two_choices::TwoChoices;

use crate::config::{StrategyKind, UpstreamConfig};
use crate::server::{Decay, InFlight, Server};

/// What a strategy may look at to choose: the client, the request head (L7) and the time.
pub struct PickContext<'a> {
    /// The client's address as seen by the listener.
    pub client: SocketAddr,
    /// The request head in http mode; `None` in tcp mode.
    pub head: Option<&'a dyn RequestView>,
    /// When the request (or connection) started; peak EWMA decays its averages to this instant.
    pub now: Instant,
}

/// What a strategy may read of a request head, whatever protocol carried it (an HTTP/1 head
/// parsed in place, or an h2 request's parts), so that keys are borrowed and nothing is copied.
pub trait RequestView: Sync {
    /// The path and query as sent (`:path` in h2; the origin-form part of an HTTP/1 target).
    fn path_and_query(&self) -> &[u8];
    /// The first value of the header called `name` (lowercase).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The first `Some` that `find` returns over the values of the header called `name`, in order.
    fn find_in_values<'s>(
        &'s self,
        name: &str,
        find: &mut dyn FnMut(&'s [u8]) -> Option<&'s [u8]>,
    ) -> Option<&'s [u8]>;
}

impl RequestView for http::request::Parts {
    fn path_and_query(&self) -> &[u8] {
        self.uri
            .path_and_query()
            .map_or(&[][..], |pq| pq.as_str().as_bytes())
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }

    fn find_in_values<'s>(
        &'s self,
        name: &str,
        find: &mut dyn FnMut(&'s [u8]) -> Option<&'s [u8]>,
    ) -> Option<&'s [u8]> {
        self.headers
            .get_all(name)
            .iter()
            .find_map(|v| find(v.as_bytes()))
    }
}

/// A way of choosing among the members of a tier.
pub trait Strategy: Send + Sync {
    /// The iterator of candidate positions returned by [`Strategy::candidates`].
    type Candidates<'a>: Iterator<Item = usize>
    where
        Self: 'a;

    /// Positions in `tier` (the one this strategy was built over), best first, each at most once.
    fn candidates<'a>(
        &'a self,
        tier: &'a [Arc<Server>],
        ctx: &PickContext<'_>,
    ) -> Self::Candidates<'a>;

    /// Claims a slot on a candidate, or `None` when it may take no more now.
    fn claim(&self, server: &Arc<Server>) -> Option<InFlight> {
        server.try_acquire()
    }
}

/// The strategy state stored in a snapshot: one variant per strategy, dispatched without a vtable or
/// a boxed iterator so that picking allocates nothing.
pub enum Balancer {
    /// Smooth weighted round robin.
    RoundRobin(RoundRobin),
    /// Least in flight per weight.
    LeastConnections(LeastConnections),
    /// Power of two choices.
    TwoChoices(TwoChoices),
    /// Latency-aware two choices.
    PeakEwma(PeakEwma),
    /// Maglev or ring hashing of a request key, optionally with bounded loads.
    ConsistentHash(ConsistentHash),
}

impl Balancer {
    /// The strategy `config` names, built over `tier` (its members' effective weights). A
    /// consistent hash shares the table of the `previous` snapshot's balancer when it still fits;
    /// peak EWMA reads averages aged by `decay`.
    pub fn new(
        config: &UpstreamConfig,
        tier: &[Arc<Server>],
        previous: Option<&Balancer>,
        decay: Decay,
    ) -> Balancer {
        match config.strategy {
            StrategyKind::RoundRobin => Balancer::RoundRobin(RoundRobin::new(tier)),
            StrategyKind::LeastConnections => {
                Balancer::LeastConnections(LeastConnections::new(tier))
            }
            StrategyKind::RandomTwoChoices => Balancer::TwoChoices(TwoChoices::new(tier)),
            StrategyKind::PeakEwma => Balancer::PeakEwma(PeakEwma::new(tier, decay)),
            StrategyKind::ConsistentHash => {
                let previous = match previous {
                    Some(Balancer::ConsistentHash(h)) => Some(h),
                    _ => None,
                };
                Balancer::ConsistentHash(ConsistentHash::new(config, tier, previous))
            }
        }
    }

    /// Candidate positions in `tier` for one request.
    pub fn candidates<'a>(
        &'a self,
        tier: &'a [Arc<Server>],
        ctx: &PickContext<'_>,
    ) -> Candidates<'a> {
        match self {
            Balancer::RoundRobin(s) => Candidates::Preferred(s.candidates(tier, ctx)),
            Balancer::LeastConnections(s) => Candidates::Preferred(s.candidates(tier, ctx)),
            Balancer::TwoChoices(s) => Candidates::Preferred(s.candidates(tier, ctx)),
            Balancer::PeakEwma(s) => Candidates::Preferred(s.candidates(tier, ctx)),
            Balancer::ConsistentHash(s) => Candidates::Hash(s.candidates(tier, ctx)),
        }
    }

    /// Claims a slot on `server`, as the strategy allows.
    pub fn claim(&self, server: &Arc<Server>) -> Option<InFlight> {
        match self {
            Balancer::RoundRobin(s) => s.claim(server),
            Balancer::LeastConnections(s) => s.claim(server),
            Balancer::TwoChoices(s) => s.claim(server),
            Balancer::PeakEwma(s) => s.claim(server),
            Balancer::ConsistentHash(s) => s.claim(server),
        }
    }
}

/// The candidate iterator of whichever strategy a snapshot holds; a consistent hash's walks the
/// snapshot's table, hence the lifetime.
pub enum Candidates<'a> {
    /// A preferred member or two, then the rest of the tier in rotation.
    Preferred(Preferred),
    /// A key's owner, the next distinct members in the key's table order, then the rest.
    Hash(hash::Walk<'a>),
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Preferred(c) => c.next(),
            Candidates::Hash(c) => c.next(),
        }
    }
}

/// Whether load `a` per `a_weight` is below `b` per `b_weight`, without dividing.
fn lighter(a: u32, a_weight: u32, b: u32, b_weight: u32) -> bool {
    u64::from(a) * u64::from(b_weight) < u64::from(b) * u64::from(a_weight)
}

#[cfg(test)]
mod properties;
#[cfg(test)]
pub(crate) mod testing;
