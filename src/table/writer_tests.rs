//! The writer's state machines driven through real events with paused time: passive ejection
//! (threshold, backoff, cap, one-server rule), health checks (rise/fall) and slow start.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::tests::{ctx, server, upstream};
use super::*;
use crate::config::{CheckKind, ExpectStatus, HealthCheckConfig, UpstreamConfig};
use crate::health::rise_fall::CheckReport;

pub(super) fn three() -> UpstreamConfig {
    let mut config = upstream(vec![
        server("127.0.0.1:1", 1, false, false, 0),
        server("127.0.0.1:2", 1, false, false, 0),
        server("127.0.0.1:3", 1, false, false, 0),
    ]);
    config.ejection.consecutive_failures = 3;
    config.ejection.base_time = Duration::from_secs(10);
    config.ejection.max_time = Duration::from_secs(25);
    config
}

pub(super) fn fail(snap: &Snapshot, index: usize, times: usize) {
    for _ in 0..times {
        snap.servers[index]
            .try_acquire()
            .unwrap()
            .failed(Failure::ServerError(500));
    }
}

pub(super) fn standings(up: &Upstream) -> Vec<Standing> {
    up.load().servers.iter().map(|s| s.standing).collect()
}

/// Which servers (by index) take the first pick of `n` requests, counted.
pub(super) fn shares(up: &Upstream, n: usize) -> Vec<usize> {
    let snap = up.load();
    let mut counts = vec![0; snap.servers.len()];
    for _ in 0..n {
        let first = snap.candidates(&ctx()).next().unwrap();
        let i = snap
            .servers
            .iter()
            .position(|s| Arc::ptr_eq(s, first))
            .unwrap();
        counts[i] += 1;
    }
    counts
}

use Standing::{Down, Ejected, Up};

#[tokio::test(start_paused = true)]
async fn a_server_is_ejected_after_exactly_the_threshold_and_back_after_base_time() {
    let (up, mut writer) = Upstream::new(&three(), &[]);
    fail(&up.load(), 0, 2);
    assert_eq!(
        writer.drain(Instant::now()),
        0,
        "two failures of three send nothing"
    );
    fail(&up.load(), 0, 1);
    assert_eq!(writer.drain(Instant::now()), 1, "the third sends one event");
    assert_eq!(standings(&up), [Ejected, Up, Up]);
    assert_eq!(
        shares(&up, 10),
        [0, 5, 5],
        "an ejected server takes nothing"
    );
    assert_eq!(up.load().servers[0].state.consecutive_failures(), 0);
    assert_eq!(
        up.load().servers[0].state.failures(),
        3,
        "every failure is counted"
    );
    assert_eq!(up.load().servers[1].state.failures(), 0);

    let back = writer.next_deadline(Instant::now()).unwrap();
    assert_eq!(back - Instant::now(), Duration::from_secs(10));
    tokio::time::advance(Duration::from_secs(9)).await;
    writer.on_timer(Instant::now());
    assert_eq!(standings(&up), [Ejected, Up, Up], "not before base_time");
    tokio::time::advance(Duration::from_secs(1)).await;
    writer.on_timer(Instant::now());
    assert_eq!(standings(&up), [Up, Up, Up]);

    // Still failing: the second ejection lasts twice as long, the third is capped at max_time.
    for want in [20, 25] {
        fail(&up.load(), 0, 3);
        writer.drain(Instant::now());
        assert_eq!(standings(&up)[0], Ejected);
        let length = writer.next_deadline(Instant::now()).unwrap() - Instant::now();
        assert_eq!(length, Duration::from_secs(want));
        tokio::time::advance(length).await;
        writer.on_timer(Instant::now());
        assert_eq!(standings(&up)[0], Up);
    }
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count() {
    let (up, mut writer) = Upstream::new(&three(), &[]);
    let snap = up.load();
    fail(&snap, 1, 2);
    snap.servers[1].try_acquire().unwrap().succeeded();
    fail(&snap, 1, 2);
    assert_eq!(writer.drain(Instant::now()), 0);
    assert_eq!(standings(&up), [Up, Up, Up]);
}

#[tokio::test(start_paused = true)]
async fn a_stale_event_does_not_eject_a_server_that_recovered() {
    let (up, mut writer) = Upstream::new(&three(), &[]);
    let snap = up.load();
    fail(&snap, 1, 3);
    snap.servers[1].try_acquire().unwrap().succeeded();
    assert_eq!(writer.drain(Instant::now()), 1);
    assert_eq!(standings(&up), [Up, Up, Up]);
}

#[tokio::test(start_paused = true)]
async fn max_percent_caps_the_servers_ejected_at_once() {
    let mut config = three();
    config
        .servers
        .push(server("127.0.0.1:4", 1, false, false, 0));
    config
        .servers
        .push(server("127.0.0.1:5", 1, false, true, 0));
    config
        .servers
        .push(server("127.0.0.1:6", 1, true, false, 0));
    let (up, mut writer) = Upstream::new(&config, &[]);
    // Four primaries that are not down = true: at most ⌊4 × 50 %⌋ = 2 ejected.
    for i in 0..4 {
        fail(&up.load(), i, 3);
        writer.drain(Instant::now());
    }
    assert_eq!(
        standings(&up),
        [Ejected, Ejected, Up, Up, Standing::ConfigDown, Up]
    );
    assert_eq!(
        up.load().servers[2].state.consecutive_failures(),
        0,
        "a refused ejection starts the count again"
    );
    // Once one returns, the next failing server may go.
    tokio::time::advance(Duration::from_secs(10)).await;
    writer.on_timer(Instant::now());
    fail(&up.load(), 2, 3);
    writer.drain(Instant::now());
    assert_eq!(standings(&up)[..4], [Up, Up, Ejected, Up]);
}

#[tokio::test(start_paused = true)]
async fn one_server_is_never_ejected_and_zero_turns_ejection_off() {
    let mut config = three();
    config.servers.truncate(1);
    let (up, mut writer) = Upstream::new(&config, &[]);
    fail(&up.load(), 0, 10);
    writer.drain(Instant::now());
    assert_eq!(standings(&up), [Up]);

    let mut config = three();
    config.ejection.consecutive_failures = 0;
    let (up, mut writer) = Upstream::new(&config, &[]);
    fail(&up.load(), 0, 100);
    assert_eq!(writer.drain(Instant::now()), 0, "no event is even sent");
    assert_eq!(standings(&up), [Up, Up, Up]);
}

pub(super) fn checked(mut config: UpstreamConfig) -> UpstreamConfig {
    config.health_check = Some(HealthCheckConfig {
        kind: CheckKind::Tcp,
        path: "/".into(),
        host: None,
        expect_status: ExpectStatus::default_range(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        rise: 2,
        fall: 3,
    });
    config
}

pub(super) fn report(up: &Upstream, index: usize, ok: bool) -> Event {
    Event::Check {
        state: Arc::clone(&up.load().servers[index].state),
        report: CheckReport {
            ok,
            detail: if ok { "connected" } else { "connect refused" }.into(),
            at: SystemTime::UNIX_EPOCH,
        },
    }
}

#[tokio::test(start_paused = true)]
async fn health_checks_take_servers_out_and_bring_them_back() {
    let (up, mut writer) = Upstream::new(&checked(three()), &[]);
    assert_eq!(standings(&up), [Up, Up, Up], "checked servers start up");
    writer.handle(report(&up, 2, false), Instant::now());
    assert_eq!(
        standings(&up),
        [Up, Up, Down],
        "the first failed check is enough"
    );
    writer.handle(report(&up, 2, true), Instant::now());
    assert_eq!(standings(&up)[2], Down);
    writer.handle(report(&up, 2, true), Instant::now());
    assert_eq!(standings(&up)[2], Up, "rise = 2");
    for _ in 0..2 {
        writer.handle(report(&up, 2, false), Instant::now());
    }
    assert_eq!(standings(&up)[2], Up);
    writer.handle(report(&up, 2, false), Instant::now());
    assert_eq!(standings(&up)[2], Down, "fall = 3 after the first check");
}

#[tokio::test(start_paused = true)]
async fn backups_take_over_when_every_primary_is_down_and_give_back() {
    let mut config = checked(three());
    config.servers.truncate(2);
    config
        .servers
        .push(server("127.0.0.1:9", 1, true, false, 0));
    let (up, mut writer) = Upstream::new(&config, &[]);
    assert_eq!(shares(&up, 4), [2, 2, 0]);
    writer.handle(report(&up, 0, false), Instant::now());
    assert_eq!(shares(&up, 4), [0, 4, 0]);
    writer.handle(report(&up, 1, false), Instant::now());
    assert_eq!(shares(&up, 4), [0, 0, 4], "the backup takes over");
    writer.handle(report(&up, 2, false), Instant::now());
    assert!(!up.load().has_eligible(), "nothing left: 503 at once");
    for _ in 0..2 {
        writer.handle(report(&up, 1, true), Instant::now());
    }
    assert_eq!(
        shares(&up, 4),
        [0, 4, 0],
        "a returning primary takes the traffic back"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_returning_server_in_ten_steps() {
    let mut config = checked(three());
    config.slow_start = Duration::from_secs(9);
    let (up, mut writer) = Upstream::new(&config, &[]);
    assert_eq!(up.load().servers[0].tenths, 10, "no ramp at process start");
    writer.handle(report(&up, 0, false), Instant::now());
    writer.handle(report(&up, 0, true), Instant::now());
    writer.handle(report(&up, 0, true), Instant::now());
    let mut steps = vec![up.load().servers[0].tenths];
    // Two full-weight servers (10 tenths each) beside the ramping one: its share of 210 picks.
    assert_eq!(shares(&up, 210), [10, 100, 100]);
    while let Some(at) = writer.next_deadline(Instant::now()) {
        tokio::time::advance(at - Instant::now()).await;
        writer.on_timer(Instant::now());
        steps.push(up.load().servers[0].tenths);
    }
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    assert_eq!(shares(&up, 30), [10, 10, 10]);
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_server_added_by_a_reload_and_not_the_others() {
    let mut config = three();
    config.slow_start = Duration::from_secs(10);
    let (up, mut writer) = Upstream::new(&config, &[]);
    let mut more = config.clone();
    more.servers.push(server("127.0.0.1:4", 1, false, false, 0));
    let (published, done) = tokio::sync::oneshot::channel();
    writer.handle(
        Event::Reconfigure {
            config: Box::new(more),
            listeners: Vec::new(),
            published,
        },
        Instant::now(),
    );
    done.await.expect("the writer says when it published");
    let tenths: Vec<u32> = up.load().servers.iter().map(|s| s.tenths).collect();
    assert_eq!(tenths, [10, 10, 10, 1]);
    tokio::time::advance(Duration::from_secs(5)).await;
    writer.on_timer(Instant::now());
    assert_eq!(up.load().servers[3].tenths, 5);
}

#[tokio::test(start_paused = true)]
async fn slow_start_also_follows_an_ejection() {
    let mut config = three();
    config.slow_start = Duration::from_secs(90);
    let (up, mut writer) = Upstream::new(&config, &[]);
    fail(&up.load(), 1, 3);
    writer.drain(Instant::now());
    tokio::time::advance(Duration::from_secs(10)).await;
    writer.on_timer(Instant::now());
    assert_eq!(standings(&up), [Up, Up, Up]);
    assert_eq!(up.load().servers[1].tenths, 1);
    tokio::time::advance(Duration::from_secs(45)).await;
    writer.on_timer(Instant::now());
    assert_eq!(up.load().servers[1].tenths, 5);
}

#[tokio::test(start_paused = true)]
async fn changes_name_each_server_that_moved_with_its_reason() {
    let (up, mut writer) = Upstream::new(&checked(three()), &[]);
    let before = up.load();
    writer.handle(report(&up, 1, false), Instant::now());
    let after = up.load();
    let reasons = [
        ("127.0.0.1:1".to_string(), "unrelated".to_string()),
        (
            "127.0.0.1:2".to_string(),
            "first check failed: connect refused".to_string(),
        ),
    ];
    assert_eq!(
        writer::changes(&before, &after, &reasons),
        [writer::Change {
            server: "127.0.0.1:2",
            from: "up",
            to: Down,
            reason: "first check failed: connect refused",
        }]
    );
    assert_eq!(writer::changes(&after, &after, &reasons), []);
    // A server the old snapshot did not have is `new`; one without a reason has an empty one.
    let (other, _) = Upstream::new(&three(), &[]);
    let changes = writer::changes(&other.load(), &after, &[]);
    assert_eq!(changes.len(), 3);
    assert!(changes
        .iter()
        .all(|c| c.from == "new" && c.reason.is_empty()));
    assert_eq!(changes[1].to, Down);
}

#[tokio::test(start_paused = true)]
async fn the_max_percent_warning_is_logged_at_most_every_ten_seconds() {
    let (_up, mut writer) = Upstream::new(&three(), &[]);
    assert!(writer.cap_warning_due(Instant::now()));
    tokio::time::advance(Duration::from_millis(9999)).await;
    assert!(!writer.cap_warning_due(Instant::now()));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(writer.cap_warning_due(Instant::now()));
    assert!(!writer.cap_warning_due(Instant::now()));
}
