//! The strategy as a whole: keys to candidates, the missing-key fallback, table reuse and bounded
//! loads under concurrency; and the helpers the algorithms' own tests share.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderName, Request};
use metrics::Counter;
use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::balance::testing::{ctx, tier, tier_with};
use crate::balance::Strategy;

/// The hash of test key number `k`.
pub(crate) fn key_hash(k: usize) -> u64 {
    hash(format!("key-{k}").as_bytes(), SEED)
}

/// Whether every member's share of `counts` is within `tolerance` (relative) of its weight share.
pub(crate) fn shares_within(weights: &[u32], counts: &[usize], tolerance: f64) -> bool {
    let total_weight: u32 = weights.iter().sum();
    let total: usize = counts.iter().sum();
    weights.iter().zip(counts).all(|(&w, &c)| {
        let expected = f64::from(w) / f64::from(total_weight);
        let got = c as f64 / total as f64;
        (got / expected - 1.0).abs() <= tolerance
    })
}

/// `tier` without its member `gone`.
pub(crate) fn without(tier: &[Arc<Server>], gone: usize) -> Vec<Arc<Server>> {
    let mut rest = tier.to_vec();
    rest.remove(gone);
    rest
}

fn config(key: HashKey, algorithm: HashAlgorithm, bounded_load: f64) -> HashConfig {
    HashConfig {
        key,
        algorithm,
        bounded_load,
    }
}

fn user_header() -> HashKey {
    HashKey::Header(HeaderName::from_static("x-user-id"))
}

fn head(user: Option<&str>) -> Parts {
    let mut req = Request::get("/");
    if let Some(user) = user {
        req = req.header("x-user-id", user);
    }
    req.body(()).unwrap().into_parts().0
}

/// A pick context for `client` with `head` (`None`: tcp mode).
fn at<'h>(client: &str, head: Option<&'h Parts>) -> PickContext<'h> {
    PickContext {
        client: client.parse().unwrap(),
        head: head.map(|h| h as &dyn crate::balance::RequestView),
        now: Instant::now(),
    }
}

/// The strategy with a missing-key counter the test can read.
fn strategy(hash: &HashConfig, tier: &[Arc<Server>]) -> (ConsistentHash, Arc<AtomicU64>) {
    let missing = Arc::new(AtomicU64::new(0));
    let s = ConsistentHash::with(
        hash,
        tier,
        tier.len(),
        None,
        Counter::from_arc(Arc::clone(&missing)),
    );
    (s, missing)
}

fn first_for(
    s: &ConsistentHash,
    tier: &[Arc<Server>],
    client: &str,
    head: Option<&Parts>,
) -> usize {
    s.candidates(tier, &at(client, head)).next().unwrap()
}

#[test]
fn a_header_key_keeps_a_user_on_one_server_and_spreads_users() {
    let tier = tier(&[1, 1, 1, 1]);
    for algorithm in [HashAlgorithm::Maglev, HashAlgorithm::Ring] {
        let (s, missing) = strategy(&config(user_header(), algorithm, 0.0), &tier);
        let alice = head(Some("alice"));
        let first = first_for(&s, &tier, "10.0.0.1:1000", Some(&alice));
        // Another client, the same user: the same server.
        assert_eq!(first_for(&s, &tier, "10.0.0.2:2000", Some(&alice)), first);
        let mut used = [false; 4];
        for u in 0..64 {
            let h = head(Some(&format!("user-{u}")));
            used[first_for(&s, &tier, "10.0.0.1:1000", Some(&h))] = true;
        }
        assert_eq!(used, [true; 4], "{algorithm:?}");
        assert_eq!(missing.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn a_missing_key_hashes_the_client_ip_and_is_counted() {
    let tier = tier(&[1, 1, 1, 1, 1, 1, 1]);
    let (by_header, missing) = strategy(&config(user_header(), HashAlgorithm::Maglev, 0.0), &tier);
    let (by_ip, ip_missing) = strategy(
        &config(HashKey::ClientIp, HashAlgorithm::Maglev, 0.0),
        &tier,
    );
    let bare = head(None);
    for i in 0..50 {
        let client = format!("192.0.2.{i}:4000");
        let expected = first_for(&by_ip, &tier, &client, Some(&bare));
        assert_eq!(first_for(&by_header, &tier, &client, Some(&bare)), expected);
    }
    assert_eq!(missing.load(Ordering::Relaxed), 50);
    assert_eq!(
        ip_missing.load(Ordering::Relaxed),
        0,
        "client_ip is never missing"
    );
}

#[test]
fn tcp_mode_hashes_the_client_ip_uncounted() {
    let tier = tier(&[1, 1, 1, 1, 1]);
    let (by_header, missing) = strategy(&config(user_header(), HashAlgorithm::Ring, 0.0), &tier);
    let (by_ip, _) = strategy(&config(HashKey::ClientIp, HashAlgorithm::Ring, 0.0), &tier);
    for i in 0..50 {
        let client = format!("[::ffff:198.51.100.{i}]:4000");
        let v4 = format!("198.51.100.{i}:5000");
        assert_eq!(
            first_for(&by_header, &tier, &client, None),
            first_for(&by_ip, &tier, &v4, None),
            "IPv4-mapped and IPv4 clients hash alike, ports aside"
        );
    }
    assert_eq!(missing.load(Ordering::Relaxed), 0);
}

#[test]
fn independent_builds_map_keys_identically() {
    let weights = [1, 2, 3, 1, 5, 2];
    for algorithm in [HashAlgorithm::Maglev, HashAlgorithm::Ring] {
        let hash = config(user_header(), algorithm, 0.0);
        let (a_tier, b_tier) = (tier(&weights), tier(&weights));
        let (a, _) = strategy(&hash, &a_tier);
        let (b, _) = strategy(&hash, &b_tier);
        for u in 0..3000 {
            let h = head(Some(&format!("user-{u}")));
            let ctx = PickContext {
                head: Some(&h),
                ..ctx()
            };
            let order_a: Vec<usize> = a.candidates(&a_tier, &ctx).collect();
            let order_b: Vec<usize> = b.candidates(&b_tier, &ctx).collect();
            assert_eq!(order_a, order_b);
        }
    }
}

#[test]
fn an_unchanged_tier_shares_the_previous_table_and_a_change_rebuilds_it() {
    let tier = tier(&[1, 2, 3]);
    let hash = config(HashKey::ClientIp, HashAlgorithm::Maglev, 0.0);
    let build = |tier: &[Arc<Server>], configured, previous| {
        ConsistentHash::with(&hash, tier, configured, previous, Counter::noop())
    };
    let first = build(&tier, 3, None);
    let same = build(&tier, 3, Some(&first));
    assert!(first.shares_table(&same));
    let smaller = build(&tier[..2], 3, Some(&same));
    assert!(!same.shares_table(&smaller));
    let resized = build(&tier, 4, Some(&first));
    assert!(!first.shares_table(&resized));
    let mut reweighted = tier.clone();
    reweighted[2] = crate::balance::testing::tier(&[1, 2, 4])[2].clone();
    assert!(!first.shares_table(&build(&reweighted, 3, Some(&first))));
    let mut replaced = tier.clone();
    replaced[1] = crate::balance::testing::tier(&[1, 2, 3, 2])[3].clone();
    assert_eq!(replaced[1].config.weight, tier[1].config.weight);
    assert!(!first.shares_table(&build(&replaced, 3, Some(&first))));
    let ring = ConsistentHash::with(
        &config(HashKey::ClientIp, HashAlgorithm::Ring, 0.0),
        &tier,
        3,
        Some(&first),
        Counter::noop(),
    );
    assert!(!first.shares_table(&ring));
}

#[test]
fn an_empty_tier_has_no_candidates() {
    let (s, _) = strategy(&config(HashKey::ClientIp, HashAlgorithm::Maglev, 1.5), &[]);
    assert_eq!(s.candidates(&[], &ctx()).count(), 0);
    let (s, _) = strategy(&config(HashKey::ClientIp, HashAlgorithm::Ring, 0.0), &[]);
    assert_eq!(s.candidates(&[], &ctx()).count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn candidates_cover_the_tier_once_in_the_keys_order(
        weights in prop::collection::vec(1u32..=5, 1..=30),
        users in prop::collection::vec(any::<u32>(), 1..20),
        ring in any::<bool>(),
    ) {
        let algorithm = if ring { HashAlgorithm::Ring } else { HashAlgorithm::Maglev };
        let tier = tier(&weights);
        let (s, _) = strategy(&config(user_header(), algorithm, 0.0), &tier);
        for user in users {
            let h = head(Some(&user.to_string()));
            let ctx = PickContext { head: Some(&h), ..ctx() };
            let mut got: Vec<usize> = s.candidates(&tier, &ctx).collect();
            got.sort_unstable();
            prop_assert_eq!(got, (0..tier.len()).collect::<Vec<_>>());
        }
    }
}

#[test]
fn a_full_owner_sends_its_keys_to_their_next_candidate() {
    let total = Arc::new(AtomicU32::new(0));
    let tier = tier_with(&[1, 1, 1, 1], Some(Arc::clone(&total)), None);
    let (s, _) = strategy(&config(user_header(), HashAlgorithm::Maglev, 1.0), &tier);
    let h = head(Some("hot"));
    let ctx = PickContext {
        head: Some(&h),
        ..ctx()
    };
    let order: Vec<usize> = s.candidates(&tier, &ctx).collect();
    let claim = || {
        s.candidates(&tier, &ctx)
            .find_map(|pos| s.claim(&tier[pos]).map(|slot| (pos, slot)))
            .unwrap()
    };
    // Nothing in flight: the owner may take ⌈1 × 1 × 1/4⌉ = 1.
    let (a, _a) = claim();
    assert_eq!(a, order[0]);
    // Now ⌈1 × 2 × 1/4⌉ = 1 each: the owner is full, the key's next candidate takes it.
    let (b, _b) = claim();
    assert_eq!(b, order[1]);
    assert_eq!(total.load(Ordering::Relaxed), 2);
    let (c, _c) = claim();
    assert_eq!(c, order[2]);
    let (d, _d) = claim();
    assert_eq!(d, order[3]);
    // With four in flight, each may hold ⌈5/4⌉ = 2: the owner again.
    let (e, _e) = claim();
    assert_eq!(e, order[0]);
    drop((_a, _b, _c, _d, _e));
    assert_eq!(total.load(Ordering::Relaxed), 0);
}

#[test]
fn without_bounded_loads_a_hot_owner_takes_everything_and_nothing_is_totalled() {
    let tier = tier(&[1, 1]);
    let (s, _) = strategy(&config(user_header(), HashAlgorithm::Ring, 0.0), &tier);
    assert!(s.bounded.is_none());
    let h = head(Some("hot"));
    let ctx = PickContext {
        head: Some(&h),
        ..ctx()
    };
    let owner = s.candidates(&tier, &ctx).next().unwrap();
    let held: Vec<InFlight> = (0..10).map(|_| s.claim(&tier[owner]).unwrap()).collect();
    assert_eq!(tier[owner].in_flight(), 10);
    drop(held);
}

/// Threads claim and release slots for keys that all hash to one server. Each thread holds at most
/// one slot, so when a thread claims, the upstream total it reads counts at most the others'
/// slots: T ≤ P − 1 for P threads. (The guard raises a server's count before the total and lowers
/// it before the total too, so a stale total is either low, which only lowers the cap, or counts a
/// slot being released, still one per other thread.) Its cap is then at most
/// ⌈c × P × w / W⌉, and a server's count only rises through a compare-and-swap that keeps it within
/// the cap of that moment: no server ever holds more than ⌈c × P × w / W⌉.
#[test]
fn bounded_loads_hold_under_concurrency() {
    const THREADS: u32 = 8;
    const ROUNDS: usize = 3000;
    let c = 1.25;
    let weights = [1u32, 1, 2, 1, 3];
    let total = Arc::new(AtomicU32::new(0));
    let tier = tier_with(&weights, Some(Arc::clone(&total)), None);
    let (s, _) = strategy(&config(user_header(), HashAlgorithm::Maglev, c), &tier);
    // Users whose key the first server owns.
    let hot: Vec<Parts> = (0..1000)
        .map(|u| head(Some(&format!("user-{u}"))))
        .filter(|h| {
            let ctx = PickContext {
                head: Some(h),
                ..ctx()
            };
            s.candidates(&tier, &ctx).next() == Some(0)
        })
        .take(16)
        .collect();
    assert_eq!(hot.len(), 16, "users spread over the servers");
    let max_seen: Vec<AtomicU32> = weights.iter().map(|_| AtomicU32::new(0)).collect();
    let elsewhere = AtomicU32::new(0);
    std::thread::scope(|scope| {
        for t in 0..THREADS as usize {
            let (s, tier, hot, max_seen, elsewhere) = (&s, &tier, &hot, &max_seen, &elsewhere);
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let h = &hot[(t + round) % hot.len()];
                    let ctx = PickContext {
                        head: Some(h),
                        ..ctx()
                    };
                    let claimed = s
                        .candidates(tier, &ctx)
                        .find_map(|pos| s.claim(&tier[pos]).map(|slot| (pos, slot)));
                    let Some((pos, slot)) = claimed else { continue };
                    max_seen[pos].fetch_max(tier[pos].in_flight(), Ordering::Relaxed);
                    if pos != 0 {
                        elsewhere.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::yield_now();
                    drop(slot);
                }
            });
        }
    });
    let total_weight: u32 = weights.iter().sum();
    for (pos, &w) in weights.iter().enumerate() {
        let bound = (c * f64::from(THREADS) * f64::from(w) / f64::from(total_weight)).ceil() as u32;
        let seen = max_seen[pos].load(Ordering::Relaxed);
        assert!(seen <= bound, "server {pos}: {seen} in flight > {bound}");
    }
    assert!(
        elsewhere.load(Ordering::Relaxed) > 0,
        "the hot server never overflowed"
    );
    assert_eq!(total.load(Ordering::Relaxed), 0);
    assert!(tier.iter().all(|s| s.in_flight() == 0));
}

#[test]
fn the_hash_is_xxh3_64_with_the_documented_seed() {
    assert_eq!(SEED, 0x6675_6c63_7275_6d21);
    // XXH3-64 of the empty input with seed 0: the reference implementation's test vector.
    assert_eq!(hash(b"", 0), 0x2d06_8005_38d3_94c2);
    assert_ne!(hash(b"alice", SEED), hash(b"alice", 0));
}
