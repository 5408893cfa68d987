//! Cost of consistent hashing: building a Maglev table (and a ring) for large upstreams, off the
//! request path; and one pick on the request path, hashing the key and finding its owner
//! (`Snapshot::candidates(..).next()`, i.e. `Balancer::candidates`), for 3, 100 and 1,000 servers.
//! Picks cycle through 1,024 distinct keys so that the table is read where the keys fall, not at
//! one cached entry. Run with `cargo bench --bench hash`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::balance::hash::{Maglev, Ring};
use fulcrum::balance::PickContext;
use fulcrum::config::{
    HashAlgorithm, HashConfig, HashKey, ServerConfig, StrategyKind, UpstreamConfig,
};
use fulcrum::table::Upstream;
use http::request::Parts;
use http::{HeaderName, Request};
use tokio::time::Instant;

const KEYS: usize = 1024;

fn upstream(servers: usize, hash: Option<HashConfig>) -> Arc<Upstream> {
    let servers = (0..servers)
        .map(|i| {
            let address = format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256);
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
        strategy: if hash.is_some() {
            StrategyKind::ConsistentHash
        } else {
            StrategyKind::RoundRobin
        },
        ewma_decay: Duration::from_secs(10),
        hash,
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
    // The writer is not run: nothing here sends it anything.
    Upstream::new(&config, &[]).0
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash_build");
    group.sample_size(10);
    for servers in [100, 1000] {
        let tier = upstream(servers, None).load().servers.clone();
        group.bench_with_input(BenchmarkId::new("maglev", servers), &tier, |b, tier| {
            b.iter(|| black_box(Maglev::new(tier, tier.len())))
        });
        group.bench_with_input(BenchmarkId::new("ring", servers), &tier, |b, tier| {
            b.iter(|| black_box(Ring::new(tier)))
        });
    }
    group.finish();
}

fn pick(c: &mut Criterion) {
    let heads: Vec<Parts> = (0..KEYS)
        .map(|i| {
            let req = Request::get("/api/items?page=2")
                .header("host", "app.example.com")
                .header("user-agent", "bench/1.0")
                .header("accept", "*/*")
                .header("x-user-id", format!("user-{:08}", i * 7919))
                .body(())
                .unwrap();
            req.into_parts().0
        })
        .collect();
    let clients: Vec<std::net::SocketAddr> = (0..KEYS)
        .map(|i| {
            format!("192.168.{}.{}:40000", i / 256, i % 256)
                .parse()
                .unwrap()
        })
        .collect();
    let now = Instant::now();
    let mut group = c.benchmark_group("hash_pick");
    for (algorithm, name) in [
        (HashAlgorithm::Maglev, "maglev"),
        (HashAlgorithm::Ring, "ring"),
    ] {
        for (key, key_name) in [
            (
                HashKey::Header(HeaderName::from_static("x-user-id")),
                "header",
            ),
            (HashKey::ClientIp, "client_ip"),
        ] {
            for servers in [3, 100, 1000] {
                let hash = HashConfig {
                    key: key.clone(),
                    algorithm,
                    bounded_load: 0.0,
                };
                let snap = upstream(servers, Some(hash)).load();
                let id = BenchmarkId::new(format!("{name}_{key_name}"), servers);
                let mut i = 0;
                group.bench_function(id, |b| {
                    b.iter(|| {
                        i = (i + 1) % KEYS;
                        let ctx = PickContext {
                            client: clients[i],
                            head: Some(&heads[i]),
                            now,
                        };
                        black_box(snap.candidates(black_box(&ctx)).next().is_some())
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, build, pick);
criterion_main!(benches);
