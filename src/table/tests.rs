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
