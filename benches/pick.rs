//! Cost of one pick on the request path: load the upstream's snapshot and claim (then release) the
//! first attempt's in-flight slot. Run with `cargo bench --bench pick`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum::balance::PickContext;
use fulcrum::config::{ServerConfig, StrategyKind, UpstreamConfig};
use fulcrum::table::Upstream;

fn upstream(servers: usize) -> Upstream {
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
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        retries: 2,
        pool_idle_timeout: Duration::from_secs(4),
        pool_max_idle_per_server: 32,
        servers,
    };
    Upstream::new(&config, &[])
}

fn round_robin(c: &mut Criterion) {
    let ctx = PickContext {
        client: "127.0.0.1:40000".parse().unwrap(),
        head: None,
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
    }
    group.finish();
}

criterion_group!(benches, round_robin);
criterion_main!(benches);
