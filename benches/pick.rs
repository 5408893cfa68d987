//! Cost of one pick on the request path, per strategy (round robin, least connections, random two
//! choices, peak EWMA) at 3, 100 and 1,000 servers. Run with `cargo bench --bench pick`
//! (`-- --warm-up-time 1 --measurement-time 3` for a shorter run; a name filter such as
//! `peak_ewma_pick/1000` for one case).
//!
//! One group per strategy, `{strategy}_pick`, with these functions for each size `N`:
//! - `N_servers_strategy`: the strategy's choice alone, `snap.candidates(&ctx).next()` on a
//!   snapshot loaded once;
//! - `N_servers`: the first attempt as a request makes it: load the snapshot, claim the first
//!   candidate's in-flight slot (and count it for the retry budget), release it;
//! - `N_servers_with_outcome`: the same plus recording a success (response time, which peak EWMA
//!   also feeds into the server's average, and the failure count);
//! - `N_servers_strategy_all_cores` and `N_servers_all_cores`: the strategy alone and the first
//!   attempt with outcome, on every core at once on the same upstream: one thread per core
//!   (`available_parallelism`), started together, each making `iters` picks; the figure is the
//!   slowest thread's time divided by `iters`, i.e. per pick per thread, so contention on shared
//!   words (the round-robin cursor, in-flight counts, the retry budget) shows as a larger figure
//!   than the single-thread one.
//!
//! Every server holds one request in flight throughout, so least connections, which stops early
//! only at an idle server, scans the whole tier as on a busy upstream: O(n) by design (see
//! `balance/least_connections.rs`); the others draw in O(1). For peak EWMA every server has one
//! response-time sample, so the measured path is the costed draw, not the median stand-in used
//! for servers without samples. `round_robin_pick/3_servers` and `_with_outcome` are the
//! measurements this file made before it covered every strategy.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum::balance::PickContext;
use fulcrum::config::{ServerConfig, StrategyKind, UpstreamConfig};
use fulcrum::server::InFlight;
use fulcrum::table::Upstream;
use tokio::time::Instant;

const STRATEGIES: [StrategyKind; 4] = [
    StrategyKind::RoundRobin,
    StrategyKind::LeastConnections,
    StrategyKind::RandomTwoChoices,
    StrategyKind::PeakEwma,
];

const SIZES: [usize; 3] = [3, 100, 1000];

const EWMA_DECAY: Duration = Duration::from_secs(10);

fn upstream(strategy: StrategyKind, servers: usize) -> Arc<Upstream> {
    let servers = (0..servers)
        .map(|i| {
            let address = format!("127.0.0.1:{}", 10000 + i);
            ServerConfig {
                addr: address.parse().unwrap(),
                address,
                weight: 1 + (i as u32 % 3),
                backup: false,
                down: false,
                max_connections: 0,
            }
        })
        .collect();
    let config = UpstreamConfig {
        name: "bench".into(),
        strategy,
        ewma_decay: EWMA_DECAY,
        hash: None,
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        retries: 2,
        retry_on: Default::default(),
        retry_budget: 0.2,
        slow_start: Duration::ZERO,
        health_check: None,
        ejection: Default::default(),
        pool_idle_timeout: Duration::from_secs(4),
        pool_max_idle_per_server: 32,
        servers,
    };
    // The writer is not run: a bench records successes only, which never send it anything.
    Upstream::new(&config, &[]).0
}

/// The upstream with one request in flight on every server (returned: hold it while measuring)
/// and, for peak EWMA, one response-time sample per server (1 to 5 ms, so costs differ).
fn loaded(strategy: StrategyKind, servers: usize) -> (Arc<Upstream>, Vec<InFlight>) {
    let up = upstream(strategy, servers);
    let snap = up.load();
    let now = Instant::now();
    let held = snap
        .servers
        .iter()
        .enumerate()
        .map(|(i, server)| {
            let sample = Duration::from_micros(1000 + 1000 * (i as u64 % 5));
            if let Some(decay) = &server.recording.latency_decay {
                server
                    .state
                    .latency
                    .observe(sample, decay.millis(now), decay);
            }
            server.try_acquire().expect("no max_connections")
        })
        .collect();
    (up, held)
}

/// A tcp-mode pick context whose `now` is set once, as a request sets it once.
fn context() -> PickContext<'static> {
    PickContext {
        client: "127.0.0.1:40000".parse().unwrap(),
        head: None,
        now: Instant::now(),
    }
}

fn first_attempt(up: &Upstream, ctx: &PickContext<'_>) -> Option<InFlight> {
    up.load().attempts(ctx).next()
}

fn first_attempt_with_outcome(up: &Upstream, ctx: &PickContext<'_>) -> Option<InFlight> {
    let snap = up.load();
    let started = Instant::now();
    let slot = snap.attempts(ctx).next();
    if let Some(slot) = &slot {
        slot.record_response_time(started);
        slot.succeeded();
    }
    slot
}

/// Runs `pick` `iters` times on each of one thread per core, started together; returns the
/// slowest thread's time (criterion divides it by `iters`: time per pick per thread).
fn on_every_core(iters: u64, pick: impl Fn() + Sync) -> Duration {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let started = Instant::now();
                    for _ in 0..iters {
                        pick();
                    }
                    started.elapsed()
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn picks(c: &mut Criterion) {
    let ctx = context();
    for strategy in STRATEGIES {
        let mut group = c.benchmark_group(format!("{}_pick", strategy.as_str()));
        for servers in SIZES {
            let (up, _held) = loaded(strategy, servers);
            let snap = up.load();
            group.bench_function(format!("{servers}_servers_strategy"), |b| {
                b.iter(|| black_box(snap.candidates(black_box(&ctx)).next()))
            });
            group.bench_function(format!("{servers}_servers"), |b| {
                b.iter(|| black_box(first_attempt(&up, black_box(&ctx))))
            });
            group.bench_function(format!("{servers}_servers_with_outcome"), |b| {
                b.iter(|| black_box(first_attempt_with_outcome(&up, black_box(&ctx))))
            });
            group.bench_function(format!("{servers}_servers_strategy_all_cores"), |b| {
                b.iter_custom(|iters| {
                    on_every_core(iters, || {
                        black_box(snap.candidates(black_box(&ctx)).next());
                    })
                })
            });
            group.bench_function(format!("{servers}_servers_all_cores"), |b| {
                b.iter_custom(|iters| {
                    on_every_core(iters, || {
                        black_box(first_attempt_with_outcome(&up, black_box(&ctx)));
                    })
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, picks);
criterion_main!(benches);
