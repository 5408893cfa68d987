//! Drain, disable and enable through the writer, with paused time: what strategies skip, which
//! state wins, slow start on enable, and that the operator's word survives a reload.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::writer_tests::{checked, fail, report, shares, standings, three};
use super::*;

/// Sends `admin` for `address` through the writer's inbox, as the admin endpoint does, and returns
/// the writer's reply.
fn set(up: &Upstream, writer: &mut Writer, address: &str, admin: Admin) -> Option<Arc<Server>> {
    let (reply, mut answer) = oneshot::channel();
    let address = address.to_string();
    up.events()
        .send(Event::Admin {
            address,
            admin,
            reply,
        })
        .unwrap_or_else(|_| panic!("the writer's inbox is open"));
    assert_eq!(writer.drain(Instant::now()), 1);
    answer.try_recv().expect("the writer replied")
}

use Standing::{ConfigDown, Disabled, Down, Draining, Up};

#[tokio::test(start_paused = true)]
async fn drained_and_disabled_servers_take_no_picks_until_enabled() {
    let (up, mut writer) = Upstream::new(&three(), &[]);
    let drained = set(&up, &mut writer, "127.0.0.1:1", Admin::Draining).unwrap();
    assert_eq!(drained.standing, Draining, "the reply shows the new state");
    set(&up, &mut writer, "127.0.0.1:2", Admin::Disabled);
    assert_eq!(standings(&up), [Draining, Disabled, Up]);
    assert_eq!(shares(&up, 10), [0, 0, 10]);
    let metrics_up = |i: usize| up.load().servers[i].standing == Up;
    assert!(!metrics_up(0) && !metrics_up(1));
    set(&up, &mut writer, "127.0.0.1:1", Admin::Enabled);
    set(&up, &mut writer, "127.0.0.1:2", Admin::Enabled);
    assert_eq!(standings(&up), [Up, Up, Up]);
    assert_eq!(shares(&up, 12), [4, 4, 4]);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_address_gets_no_server_and_changes_nothing() {
    let (up, mut writer) = Upstream::new(&three(), &[]);
    let before = up.load();
    assert!(set(&up, &mut writer, "127.0.0.1:9", Admin::Disabled).is_none());
    assert!(Arc::ptr_eq(&before, &up.load()), "nothing republished");
}

#[tokio::test(start_paused = true)]
async fn config_down_beats_disabled_beats_draining_beats_health() {
    let mut config = checked(three());
    config.servers[2].down = true;
    let (up, mut writer) = Upstream::new(&config, &[]);
    for _ in 0..3 {
        writer.handle(report(&up, 0, false), Instant::now());
    }
    assert_eq!(standings(&up), [Down, Up, ConfigDown]);
    set(&up, &mut writer, "127.0.0.1:1", Admin::Draining);
    set(&up, &mut writer, "127.0.0.1:3", Admin::Disabled);
    assert_eq!(standings(&up), [Draining, Up, ConfigDown]);
    set(&up, &mut writer, "127.0.0.1:1", Admin::Disabled);
    assert_eq!(standings(&up), [Disabled, Up, ConfigDown]);
    // Checks go on under the operator's word; enabling shows what they say.
    writer.handle(report(&up, 0, true), Instant::now());
    writer.handle(report(&up, 0, true), Instant::now());
    assert_eq!(standings(&up)[0], Disabled);
    writer.handle(report(&up, 0, false), Instant::now());
    writer.handle(report(&up, 0, false), Instant::now());
    writer.handle(report(&up, 0, false), Instant::now());
    set(&up, &mut writer, "127.0.0.1:1", Admin::Enabled);
    assert_eq!(
        standings(&up)[0],
        Down,
        "enable returns to what health says"
    );
}

#[tokio::test(start_paused = true)]
async fn a_draining_server_is_not_ejected() {
    let (up, mut writer) = Upstream::new(&three(), &[]);
    set(&up, &mut writer, "127.0.0.1:1", Admin::Draining);
    fail(&up.load(), 0, 3);
    writer.drain(Instant::now());
    set(&up, &mut writer, "127.0.0.1:1", Admin::Enabled);
    assert_eq!(standings(&up), [Up, Up, Up]);
    assert!(!up.load().servers[0].state.life().ejection.is_ejected());
}

#[tokio::test(start_paused = true)]
async fn enable_starts_the_slow_start_ramp() {
    let mut config = three();
    config.slow_start = Duration::from_secs(10);
    let (up, mut writer) = Upstream::new(&config, &[]);
    set(&up, &mut writer, "127.0.0.1:1", Admin::Disabled);
    let enabled = set(&up, &mut writer, "127.0.0.1:1", Admin::Enabled).unwrap();
    assert_eq!(enabled.standing, Up);
    assert_eq!(enabled.tenths, 1, "back at 10 % of its weight");
    tokio::time::advance(Duration::from_secs(10)).await;
    writer.on_timer(Instant::now());
    assert_eq!(up.load().servers[0].tenths, slow_start::STEPS);
    // Enabling a server that is up already does not restart its ramp.
    let again = set(&up, &mut writer, "127.0.0.1:1", Admin::Enabled).unwrap();
    assert_eq!(again.tenths, slow_start::STEPS);
}

#[tokio::test(start_paused = true)]
async fn the_operators_word_survives_a_reload() {
    let config = three();
    let (up, mut writer) = Upstream::new(&config, &[]);
    set(&up, &mut writer, "127.0.0.1:2", Admin::Draining);
    let mut reloaded = config.clone();
    reloaded.servers[0].weight = 5;
    writer.reconfigure(reloaded.clone(), Instant::now());
    assert_eq!(standings(&up), [Up, Draining, Up]);
    // A server removed and added again starts afresh.
    let mut without = reloaded.clone();
    without.servers.remove(1);
    writer.reconfigure(without, Instant::now());
    writer.reconfigure(reloaded, Instant::now());
    assert_eq!(standings(&up), [Up, Up, Up]);
}
