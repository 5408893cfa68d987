//! Cost of one pick on the request path: load the upstream's snapshot and claim (then release) the
//! first attempt's in-flight slot, and the same plus recording the attempt's outcome (a success, as
//! on almost every request). Run with `cargo bench --bench pick`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum::balance::PickContext;
use fulcrum::config::{ServerConfig, StrategyKind, UpstreamConfig};
use fulcrum::table::Upstream;
use tokio::time::Instant;

fn upstream(servers: usize) -> Arc<Upstream> {
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
        strategy: StrategyKind::RoundRobin,
        ewma_decay: Duration::from_secs(10),
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

fn round_robin(c: &mut Criterion) {
    let ctx = PickContext {
        client: "127.0.0.1:40000".parse().unwrap(),
        head: None,
        now: Instant::now(),
    };
    let mut group = c.benchmark_group("round_robin_pick");
    for servers in [3, 100] {
        let up = upstream(servers);
        group.bench_function(format!("{servers}_servers"), |b| {
            b.iter(|| {
                let snap = up.load();
                black_box(snap.attempts(black_box(&ctx)).next())
            })
        });
        group.bench_function(format!("{servers}_servers_with_outcome"), |b| {
            b.iter(|| {
                let snap = up.load();
                let started = Instant::now();
                let slot = snap.attempts(black_box(&ctx)).next();
                if let Some(slot) = &slot {
                    slot.record_response_time(started);
                    slot.succeeded();
                }
                black_box(slot)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_robin);
criterion_main!(benches);
