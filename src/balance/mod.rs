//! Load-balancing strategies.
//!
//! A strategy is built once per snapshot over the snapshot's *tier*: the eligible primaries, or the
//! eligible backups when no primary is eligible. At request time it yields candidates (positions in
//! that tier) in preference order: the proxy takes the first one it can use and moves to the next on
//! a failed connect or a full server. A candidate sequence never repeats a server and is at most as
//! long as the tier, so retries need no extra bookkeeping.

mod round_robin;

use std::net::SocketAddr;

pub use round_robin::RoundRobin;

/// What a strategy may look at to choose: the client, and for L7 the request head.
pub struct PickContext<'a> {
    /// The client's address as seen by the listener.
    pub client: SocketAddr,
    /// The request head in http mode; `None` in tcp mode.
    pub head: Option<&'a http::request::Parts>,
}

/// A way of choosing among the members of a tier.
pub trait Strategy: Send + Sync {
    /// The iterator of candidate positions returned by [`Strategy::candidates`].
    type Candidates<'a>: Iterator<Item = usize>
    where
        Self: 'a;

    /// Positions in the tier (0..len), best first, each at most once.
    fn candidates<'a>(&'a self, ctx: &PickContext<'_>) -> Self::Candidates<'a>;
}

/// The strategy state stored in a snapshot: one variant per strategy, dispatched without a vtable or
/// a boxed iterator so that picking allocates nothing.
pub enum Balancer {
    /// Smooth weighted round robin.
    RoundRobin(RoundRobin),
}

impl Balancer {
    /// Candidate positions in the tier for one request.
    pub fn candidates<'a>(&'a self, ctx: &PickContext<'_>) -> Candidates<'a> {
        match self {
            Balancer::RoundRobin(rr) => Candidates::RoundRobin(rr.candidates(ctx)),
        }
    }
}

/// The candidate iterator of whichever strategy a snapshot holds.
pub enum Candidates<'a> {
    /// From [`RoundRobin`].
    RoundRobin(<RoundRobin as Strategy>::Candidates<'a>),
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::RoundRobin(c) => c.next(),
        }
    }
}
