use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::ServerConfig;

pub(super) fn server(
    address: &str,
    weight: u32,
    backup: bool,
    down: bool,
    max_connections: u32,
) -> ServerConfig {
    ServerConfig {
        address: address.to_string(),
        addr: address.parse().unwrap(),
        weight,
        backup,
        down,
        max_connections,
    }
}

pub(super) fn upstream(servers: Vec<ServerConfig>) -> UpstreamConfig {
    UpstreamConfig {
        name: "app".into(),
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
        pool_max_idle_per_server: 8,
        servers,
    }
}

pub(super) fn ctx() -> PickContext<'static> {
    PickContext {
        client: "127.0.0.1:9".parse().unwrap(),
        head: None,
        now: Instant::now(),
    }
}

fn first_address(snap: &Snapshot) -> Option<String> {
    snap.candidates(&ctx())
        .next()
        .map(|s| s.config.address.clone())
}

#[test]
fn backups_are_used_only_when_no_primary_is_eligible() {
    let (up, _writer) = Upstream::new(
        &upstream(vec![
            server("127.0.0.1:1", 1, false, false, 0),
            server("127.0.0.1:2", 1, true, false, 0),
        ]),
        &[],
    );
    let snap = up.load();
    for _ in 0..4 {
        assert_eq!(first_address(&snap).as_deref(), Some("127.0.0.1:1"));
    }
    assert_eq!(
        snap.candidates(&ctx()).count(),
        1,
        "backups are not candidates beside primaries"
    );

    let (up, _writer) = Upstream::new(
        &upstream(vec![
            server("127.0.0.1:1", 1, false, true, 0),
            server("127.0.0.1:2", 1, true, false, 0),
        ]),
        &[],
    );
    assert_eq!(first_address(&up.load()).as_deref(), Some("127.0.0.1:2"));
}

#[test]
fn down_servers_are_never_candidates() {
    let (up, _writer) = Upstream::new(
        &upstream(vec![
            server("127.0.0.1:1", 1, false, true, 0),
            server("127.0.0.1:2", 1, true, true, 0),
        ]),
        &[],
    );
    let snap = up.load();
    assert!(!snap.has_eligible());
    assert_eq!(snap.candidates(&ctx()).count(), 0);
    assert_eq!(snap.servers[0].standing, Standing::ConfigDown);
}

#[test]
fn in_flight_slots_respect_max_connections_and_release_on_drop() {
    let (up, _writer) = Upstream::new(
        &upstream(vec![server("127.0.0.1:1", 1, false, false, 2)]),
        &[],
    );
    let snap = up.load();
    let s = &snap.servers[0];
    let a = s.try_acquire().unwrap();
    let b = s.try_acquire().unwrap();
    assert!(
        s.try_acquire().is_none(),
        "a third slot exceeds max_connections = 2"
    );
    assert_eq!(s.state.in_flight(), 2);
    drop(a);
    assert!(s.try_acquire().is_some());
    drop(b);
    assert_eq!(s.state.in_flight(), 0);
    assert_eq!(s.state.requests(), 3);
}

#[test]
fn republishing_keeps_the_live_state_of_servers_that_stay() {
    let config = upstream(vec![
        server("127.0.0.1:1", 1, false, false, 0),
        server("127.0.0.1:2", 1, false, false, 0),
    ]);
    let (up, mut writer) = Upstream::new(&config, &[]);
    let old = up.load();
    old.servers[1]
        .try_acquire()
        .unwrap()
        .failed(Failure::ConnectRefused);
    let new_config = upstream(vec![
        server("127.0.0.1:2", 5, false, false, 0),
        server("127.0.0.1:3", 1, false, false, 0),
    ]);
    writer.reconfigure(new_config, Instant::now());
    let new = up.load();
    assert_eq!(new.servers[0].config.weight, 5);
    assert_eq!(new.servers[0].state.failures(), 1);
    assert_eq!(new.servers[0].state.requests(), 1);
    assert_eq!(new.servers[1].state.requests(), 0);
}

#[test]
fn attempts_skip_full_servers_and_stop_after_the_retries() {
    let mut config = upstream(vec![
        server("127.0.0.1:1", 1, false, false, 1),
        server("127.0.0.1:2", 1, false, false, 0),
        server("127.0.0.1:3", 1, false, false, 0),
        server("127.0.0.1:4", 1, false, false, 0),
    ]);
    config.retries = 1;
    let (up, mut writer) = Upstream::new(&config, &[]);
    let snap = up.load();
    let held = snap.servers[0].try_acquire().unwrap();
    for _ in 0..8 {
        let slots: Vec<InFlight> = snap.attempts(&ctx()).collect();
        assert_eq!(slots.len(), 2, "one attempt plus one retry");
        assert!(
            slots
                .iter()
                .all(|s| s.server().config.address != "127.0.0.1:1"),
            "a full server is skipped"
        );
        assert_ne!(
            slots[0].server().config.address,
            slots[1].server().config.address,
            "never the same server twice"
        );
    }
    drop(held);
    config.retries = 0;
    writer.reconfigure(config, Instant::now());
    assert_eq!(up.load().attempts(&ctx()).count(), 1);
}

#[test]
fn a_retry_the_budget_refuses_claims_nothing() {
    let mut config = upstream(vec![
        server("127.0.0.1:1", 1, false, false, 0),
        server("127.0.0.1:2", 1, false, false, 0),
    ]);
    config.retries = 1;
    config.retry_budget = 0.0;
    let (up, _writer) = Upstream::new(&config, &[]);
    let snap = up.load();
    // The budget allows 30 retries per window whatever the traffic: spend them.
    for _ in 0..30 {
        assert_eq!(snap.attempts(&ctx()).count(), 2);
    }
    let mut attempts = snap.attempts(&ctx());
    let first = attempts.next().expect("a first attempt is never refused");
    assert!(attempts.next().is_none(), "the 31st retry is refused");
    drop(first);
    let requests: u64 = snap.servers.iter().map(|s| s.state.requests()).sum();
    assert_eq!(
        requests, 61,
        "60 + 1 slots used; the refused one is not counted"
    );
    assert!(snap.servers.iter().all(|s| s.state.in_flight() == 0));
}

fn hashed(bounded_load: f64) -> UpstreamConfig {
    let mut config = upstream(
        (1..=5)
            .map(|i| server(&format!("127.0.0.1:{i}"), 1, false, false, 0))
            .collect(),
    );
    config.strategy = StrategyKind::ConsistentHash;
    config.hash = Some(crate::config::HashConfig {
        bounded_load,
        ..Default::default()
    });
    config
}

fn hash_of(snap: &Snapshot) -> &crate::balance::ConsistentHash {
    match &snap.balancer {
        Balancer::ConsistentHash(h) => h,
        _ => panic!("not a consistent hash"),
    }
}

/// The first candidate's address for each of `clients` client IPs.
fn owners(snap: &Snapshot, clients: u8) -> Vec<String> {
    (0..clients)
        .map(|i| {
            let ctx = PickContext {
                client: format!("10.0.0.{i}:5000").parse().unwrap(),
                ..ctx()
            };
            snap.candidates(&ctx).next().unwrap().config.address.clone()
        })
        .collect()
}

#[test]
fn a_consistent_hash_upstream_shares_its_table_until_the_tier_changes() {
    let config = hashed(0.0);
    let (up, mut writer) = Upstream::new(&config, &[]);
    let first = up.load();
    let before = owners(&first, 200);
    writer.reconfigure(config.clone(), Instant::now());
    let same = up.load();
    assert!(hash_of(&first).shares_table(hash_of(&same)));
    assert_eq!(owners(&same, 200), before);
    // A server taken out: a new table, and only its keys move (it was mapped to some).
    let mut fewer = config.clone();
    fewer.servers[2].down = true;
    writer.reconfigure(fewer, Instant::now());
    let after = up.load();
    assert!(!hash_of(&same).shares_table(hash_of(&after)));
    let moved = owners(&after, 200);
    assert!(before.iter().any(|b| b == "127.0.0.1:3"));
    assert!(moved.iter().all(|a| a != "127.0.0.1:3"));
    // Back in service: its keys come back.
    writer.reconfigure(config, Instant::now());
    assert_eq!(owners(&up.load(), 200), before);
}

#[test]
fn bounded_loads_total_the_upstream_across_snapshots() {
    let config = hashed(1.5);
    let (up, mut writer) = Upstream::new(&config, &[]);
    let old = up.load();
    let slot = old.attempts(&ctx()).next().unwrap();
    writer.reconfigure(config, Instant::now());
    let new = up.load();
    let total = new
        .in_flight_total
        .clone()
        .expect("bounded loads keep a total");
    assert!(Arc::ptr_eq(old.in_flight_total.as_ref().unwrap(), &total));
    assert!(new.servers.iter().all(|s| s
        .recording
        .upstream_in_flight
        .as_ref()
        .is_some_and(|t| Arc::ptr_eq(t, &total))));
    assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), 1);
    let second = new.attempts(&ctx()).next().unwrap();
    assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), 2);
    drop((slot, second));
    assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn without_bounded_loads_nothing_is_totalled() {
    for config in [
        hashed(0.0),
        upstream(vec![server("127.0.0.1:1", 1, false, false, 0)]),
    ] {
        let (up, _writer) = Upstream::new(&config, &[]);
        let snap = up.load();
        assert!(snap.in_flight_total.is_none());
        assert!(snap
            .servers
            .iter()
            .all(|s| s.recording.upstream_in_flight.is_none()));
    }
}
