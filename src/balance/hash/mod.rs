//! Consistent hashing: a request's key (`[upstreams.NAME.hash] key`) picks its server, so the same
//! key keeps reaching the same server while the tier stays the same, and a change of the tier moves
//! few keys. Two algorithms: [`Maglev`] (a prime-sized lookup table: O(1), even shares, at most
//! about 1 % of other keys move when a server leaves) and [`Ring`] (ketama points: O(log points),
//! nothing but the leaving server's keys move).
//!
//! The hash is XXH3-64 (`twox-hash`) with the fixed seed [`SEED`] (0x66756c6372756d21, the ASCII of
//! `fulcrum!`): the same config maps every key identically on every instance and every build, which
//! std's per-process `RandomState` would not. Maglev derives each server's permutation from its
//! address with two seeds of its own; ring points hash `"{address}#{i}"` with [`SEED`].
//!
//! A key is hashed from bytes borrowed from the request head (module `key`); a request without the
//! key is hashed on the client IP and counted in `fulcrum_hash_key_missing_total{upstream}`. The
//! candidates are the key's owner, then the next distinct members in the key's table order
//! (module `walk`). With `bounded_load` = c ≥ 1 (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing
//! with Bounded Loads", SODA 2018), a server takes a request only while its in-flight count stays
//! within ⌈c × (upstream in flight + 1) × weight share⌉ (module `bounded`); otherwise the request goes
//! to the next candidate.
//!
//! The table is built off the request path, when the upstream's snapshot is; a rebuild whose tier
//! has the same members and weights as the previous snapshot's shares the previous table.

mod bounded;
mod key;
mod maglev;
mod ring;
mod walk;

use std::sync::Arc;

use metrics::Counter;
use twox_hash::XxHash3_64;

pub use maglev::Maglev;
pub use ring::Ring;
pub use walk::Walk;

use self::bounded::Bounded;
use self::key::{IpBytes, Source};
use super::{PickContext, Strategy};
use crate::config::{HashAlgorithm, HashConfig, HashKey, UpstreamConfig};
use crate::server::{InFlight, Server};

/// XXH3-64's seed for keys and ring points: the ASCII bytes of `fulcrum!` read big-endian
/// (0x66756c6372756d21). Fixed, so that two instances with one config agree on every key; changing
/// it would move every key.
pub const SEED: u64 = u64::from_be_bytes(*b"fulcrum!");

/// XXH3-64 of `bytes` with `seed`.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    XxHash3_64::oneshot_with_seed(seed, bytes)
}

/// Tier positions ordered by server address: the build order of both algorithms, so that a table
/// depends on which servers are in the tier and not on the order of the config file.
fn sorted_by_address(tier: &[Arc<Server>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tier.len()).collect();
    order.sort_unstable_by(|&a, &b| tier[a].config.address.cmp(&tier[b].config.address));
    order
}

/// A built table and what it was built from, so that the next snapshot can tell whether to reuse it.
struct Table {
    /// The tier's (address, configured weight), in tier order.
    members: Box<[(String, u32)]>,
    /// The upstream's configured server count (Maglev's size depends on it).
    configured: usize,
    lookup: Lookup,
}

enum Lookup {
    Maglev(Maglev),
    Ring(Ring),
}

impl Table {
    /// Builds the `algorithm` table over `tier` for an upstream of `configured` servers.
    fn new(algorithm: HashAlgorithm, tier: &[Arc<Server>], configured: usize) -> Self {
        Table {
            members: tier
                .iter()
                .map(|s| (s.config.address.clone(), s.config.weight))
                .collect(),
            configured,
            lookup: match algorithm {
                HashAlgorithm::Maglev => Lookup::Maglev(Maglev::new(tier, configured)),
                HashAlgorithm::Ring => Lookup::Ring(Ring::new(tier)),
            },
        }
    }

    /// Whether this table is the one [`Table::new`] would build from these arguments.
    fn fits(&self, algorithm: HashAlgorithm, tier: &[Arc<Server>], configured: usize) -> bool {
        let same_algorithm = matches!(
            (&self.lookup, algorithm),
            (Lookup::Maglev(_), HashAlgorithm::Maglev) | (Lookup::Ring(_), HashAlgorithm::Ring)
        );
        same_algorithm
            && self.configured == configured
            && self.members.len() == tier.len()
            && self.members.iter().zip(tier).all(|((address, weight), s)| {
                *address == s.config.address && *weight == s.config.weight
            })
    }

    /// The key's candidates over the tier the table was built on (none for an empty tier, whose
    /// table is empty).
    fn walk(&self, key_hash: u64) -> Walk<'_> {
        let len = self.members.len();
        match &self.lookup {
            Lookup::Maglev(m) => Walk::new(m.entries(), len, m.entry(key_hash)),
            Lookup::Ring(r) => Walk::new(r.members(), len, r.point(key_hash)),
        }
    }
}

/// The consistent-hash strategy of one snapshot.
pub struct ConsistentHash {
    table: Arc<Table>,
    key: HashKey,
    /// `fulcrum_hash_key_missing_total{upstream}`.
    missing: Counter,
    /// The load bound, when `bounded_load` is on.
    bounded: Option<Bounded>,
}

impl ConsistentHash {
    /// The strategy of `config` over `tier`, sharing `previous`'s table when it fits (same
    /// algorithm, members and weights) and registering the missing-key counter.
    pub fn new(
        config: &UpstreamConfig,
        tier: &[Arc<Server>],
        previous: Option<&ConsistentHash>,
    ) -> Self {
        // Validation gives every consistent_hash upstream a `hash` (its defaults when absent).
        let hash = config.hash.clone().unwrap_or_default();
        let missing = metrics::counter!(crate::metrics::HASH_KEY_MISSING_TOTAL, "upstream" => config.name.clone());
        Self::with(&hash, tier, config.servers.len(), previous, missing)
    }

    /// Like [`ConsistentHash::new`], from the parts of the config it reads and a counter handle.
    pub fn with(
        hash: &HashConfig,
        tier: &[Arc<Server>],
        configured: usize,
        previous: Option<&ConsistentHash>,
        missing: Counter,
    ) -> Self {
        let table = match previous {
            Some(p) if p.table.fits(hash.algorithm, tier, configured) => Arc::clone(&p.table),
            _ => Arc::new(Table::new(hash.algorithm, tier, configured)),
        };
        ConsistentHash {
            table,
            key: hash.key.clone(),
            missing,
            bounded: Bounded::new(hash.bounded_load, tier),
        }
    }

    /// Whether `other` uses this very table (not a copy): how tests see reuse.
    #[cfg(test)]
    pub(crate) fn shares_table(&self, other: &ConsistentHash) -> bool {
        Arc::ptr_eq(&self.table, &other.table)
    }

    /// The hash of one request's key (or of its client IP), counting a missing key.
    fn key_hash(&self, ctx: &PickContext<'_>) -> u64 {
        match key::source(&self.key, ctx.head) {
            Source::Key(bytes) => hash(bytes, SEED),
            Source::Missing => {
                self.missing.increment(1);
                hash(IpBytes::new(ctx.client.ip()).as_bytes(), SEED)
            }
            Source::ClientIp => hash(IpBytes::new(ctx.client.ip()).as_bytes(), SEED),
        }
    }
}

impl Strategy for ConsistentHash {
    type Candidates<'a> = Walk<'a>;

    /// The key's owner, then the next distinct members in the key's table order, then the rest.
    fn candidates<'a>(&'a self, _tier: &'a [Arc<Server>], ctx: &PickContext<'_>) -> Walk<'a> {
        self.table.walk(self.key_hash(ctx))
    }

    /// Up to `max_connections` and, with bounded loads, the server's load bound.
    fn claim(&self, server: &Arc<Server>) -> Option<InFlight> {
        match (&self.bounded, &server.recording.upstream_in_flight) {
            (Some(bounded), Some(total)) => {
                server.try_acquire_within(bounded.cap(total, server.config.weight))
            }
            _ => server.try_acquire(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
