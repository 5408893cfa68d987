//! The one writer of an upstream's snapshots.
//!
//! A small task on the control runtime owns republishing. Its inbox takes events from the health
//! checkers (one task per checked server, which it starts) and from workers (a server crossing the
//! passive-ejection threshold); its own timers end ejections and step slow-start ramps. Each event
//! changes the writer's record of a server ([`Life`]) and, when a server's standing or weight
//! changed, the writer builds a whole new snapshot and swaps it once. Being the only writer, it
//! never loses an update to a concurrent one, and workers never wait for it.
//!
//! Every change of a server's standing is one log line naming the upstream, the server, the old and
//! new state and the reason.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{build, standing, Snapshot, Upstream};
use crate::config::UpstreamConfig;
use crate::health::check;
use crate::health::ejection;
use crate::health::slow_start;
use crate::lifecycle::Shutdown;
use crate::server::{Admin, Event, Failure, Server, ServerState, Standing};

/// How often at most the writer says that `max_percent` kept a failing server in rotation.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Owns an upstream's snapshots after the first (see the module docs).
pub struct Writer {
    upstream: Arc<Upstream>,
    config: UpstreamConfig,
    listeners: Vec<Arc<str>>,
    inbox: UnboundedReceiver<Event>,
    last_cap_warning: Option<Instant>,
    /// The running health checkers, by the server (address as written, and where it resolved) they
    /// check: kept across a reload for servers that stay, so their rhythm and record go on.
    checkers: Vec<((String, std::net::SocketAddr), JoinHandle<()>)>,
}

impl Writer {
    pub(super) fn new(
        upstream: Arc<Upstream>,
        config: UpstreamConfig,
        listeners: &[Arc<str>],
        inbox: UnboundedReceiver<Event>,
    ) -> Self {
        Writer {
            upstream,
            config,
            listeners: listeners.to_vec(),
            inbox,
            last_cap_warning: None,
            checkers: Vec::new(),
        }
    }

    /// Starts the health checkers and serves events and timers until `shutdown` (the daemon's, or
    /// the upstream's removal by a reload).
    pub async fn run(mut self, shutdown: Shutdown) {
        self.sync_checkers(false);
        loop {
            let deadline = self.next_deadline(Instant::now());
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.inbox.recv() => match event {
                    Some(event) => self.handle(event, Instant::now()),
                    None => break,
                },
                () = timer => self.on_timer(Instant::now()),
                () = shutdown.wait() => break,
            }
        }
        for (_, checker) in self.checkers.drain(..) {
            checker.abort();
        }
    }

    /// Runs one checker per checked server of the current snapshot: stops those of servers gone
    /// (or now `down = true`), starts those of new ones, and with `restart` (the check itself
    /// changed) starts every one afresh.
    fn sync_checkers(&mut self, restart: bool) {
        let snap = self.upstream.load();
        // A `down = true` server takes no traffic whatever its checks say: it is not checked.
        let wanted: Vec<_> = match &self.config.health_check {
            Some(_) => snap.servers.iter().filter(|s| !s.config.down).collect(),
            None => Vec::new(),
        };
        let key = |server: &crate::server::Server| (server.config.address.clone(), server.addr());
        self.checkers.retain(|(running, checker)| {
            let keep = !restart && wanted.iter().any(|s| key(s) == *running);
            if !keep {
                checker.abort();
            }
            keep
        });
        let Some(check) = &self.config.health_check else {
            return;
        };
        for server in wanted {
            if self
                .checkers
                .iter()
                .any(|(running, _)| *running == key(server))
            {
                continue;
            }
            let events = self.upstream.events().clone();
            let state = Arc::clone(&server.state);
            let checker = tokio::spawn(check::run(
                check.clone(),
                server.addr(),
                server.config.address.clone(),
                move |report| {
                    let state = Arc::clone(&state);
                    events.send(Event::Check { state, report }).is_ok()
                },
            ));
            self.checkers.push((key(server), checker));
        }
    }

    /// Applies one event at `now`, republishing if a server's standing changed.
    pub fn handle(&mut self, event: Event, now: Instant) {
        let snap = self.upstream.load();
        match event {
            Event::Check { state, report } => {
                let Some(check) = &self.config.health_check else {
                    return;
                };
                let Some(server) = snap.servers.iter().find(|s| Arc::ptr_eq(&s.state, &state))
                else {
                    return;
                };
                let counter = if report.ok {
                    &state.metrics.checks_ok
                } else {
                    &state.metrics.checks_fail
                };
                counter.increment(1);
                let change = state
                    .life()
                    .health
                    .as_mut()
                    .and_then(|h| h.record(report, check.rise, check.fall));
                if let Some(change) = change {
                    let address = server.config.address.clone();
                    self.publish(&snap, now, &[(address, change.reason)]);
                }
            }
            Event::Failing { state, last } => self.on_failing(&snap, &state, last, now),
            Event::Reconfigure {
                config,
                listeners,
                published,
            } => {
                let restart = config.health_check != self.config.health_check;
                self.listeners = listeners;
                self.reconfigure(*config, now);
                self.sync_checkers(restart);
                // The reload may have given up waiting; nothing to tell then.
                let _ = published.send(());
            }
            Event::Admin {
                address,
                admin,
                reply,
            } => {
                let server = self.on_admin(&snap, &address, admin, now);
                // The admin request may have stopped waiting; the change stands either way.
                let _ = reply.send(server);
            }
        }
    }

    /// Records an operator's drain, disable or enable, republishes, and returns the server as the
    /// new snapshot has it. Logs one line per action: the state change, or that there was none.
    fn on_admin(
        &self,
        snap: &Snapshot,
        address: &str,
        admin: Admin,
        now: Instant,
    ) -> Option<Arc<Server>> {
        let server = snap.servers.iter().find(|s| s.config.address == address)?;
        server.state.life().admin = admin;
        let reason = format!("admin: {}", admin.action());
        self.publish(snap, now, &[(address.to_string(), reason)]);
        let next = self.upstream.load();
        let now_is = next
            .servers
            .iter()
            .find(|s| Arc::ptr_eq(&s.state, &server.state))
            .cloned()?;
        if now_is.standing == server.standing {
            let (upstream, state) = (&self.config.name, now_is.standing.as_str());
            info!(%upstream, server = %address, action = admin.action(), from = state, to = state, "admin action left the state as it was");
        }
        Some(now_is)
    }

    fn on_failing(
        &mut self,
        snap: &Snapshot,
        state: &Arc<ServerState>,
        last: Failure,
        now: Instant,
    ) {
        let threshold = self.config.ejection.consecutive_failures;
        let Some(server) = snap.servers.iter().find(|s| Arc::ptr_eq(&s.state, state)) else {
            return;
        };
        // One server is never ejected; a server out of rotation already, or one that has
        // succeeded since the event was sent, is not ejected either.
        if threshold == 0
            || snap.servers.len() == 1
            || server.standing != Standing::Up
            || state.consecutive_failures() < threshold
        {
            return;
        }
        if !server.config.backup {
            let primaries = snap
                .servers
                .iter()
                .filter(|s| !s.config.backup && !s.config.down);
            let (count, ejected) = primaries.fold((0, 0), |(n, e), s| {
                (n + 1, e + usize::from(s.standing == Standing::Ejected))
            });
            let cap = ejection::cap(count, self.config.ejection.max_percent);
            if ejected >= cap {
                state.reset_consecutive_failures();
                if self.cap_warning_due(now) {
                    warn!(upstream = %self.config.name, server = %server.config.address, ejected, cap, "not ejected: max_percent of the primaries are ejected already");
                }
                return;
            }
        }
        let length = state.life().ejection.eject(now, &self.config.ejection);
        state.reset_consecutive_failures();
        state.metrics.ejections.increment(1);
        let reason = format!(
            "{threshold} consecutive failures (last: {last}); ejected for {}",
            humantime::format_duration(length)
        );
        self.publish(snap, now, &[(server.config.address.clone(), reason)]);
    }

    /// Replaces the upstream's configuration (reload's way in): servers that stay keep their live
    /// state, new ones start fresh, and the snapshot is republished at once.
    pub fn reconfigure(&mut self, config: UpstreamConfig, now: Instant) {
        self.config = config;
        let snap = self.upstream.load();
        self.publish(&snap, now, &[]);
    }

    /// Whether the max_percent warning may be logged at `now` (at most every [`CAP_WARNING_EVERY`]);
    /// if so, it counts as logged.
    pub(super) fn cap_warning_due(&mut self, now: Instant) -> bool {
        let quiet = self
            .last_cap_warning
            .is_some_and(|at| now.saturating_duration_since(at) < CAP_WARNING_EVERY);
        if !quiet {
            self.last_cap_warning = Some(now);
        }
        !quiet
    }

    /// Ends ejections and steps ramps whose time has come.
    pub fn on_timer(&mut self, now: Instant) {
        let snap = self.upstream.load();
        let mut reasons = Vec::new();
        let mut changed = false;
        for server in &snap.servers {
            let mut life = server.state.life();
            if life.ejection.expire(now) {
                server.state.reset_consecutive_failures();
                reasons.push((server.config.address.clone(), "ejection ended".to_string()));
                changed = true;
            }
            if let Some(since) = life.ramp_since {
                let tenths = slow_start::tenths(since, now, self.config.slow_start);
                if tenths >= slow_start::STEPS {
                    life.ramp_since = None;
                }
                changed |= tenths != server.tenths;
            }
        }
        if changed {
            self.publish(&snap, now, &reasons);
        }
    }

    /// Handles every event already in the inbox at `now`; returns how many there were.
    #[cfg(test)]
    pub(super) fn drain(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Ok(event) = self.inbox.try_recv() {
            self.handle(event, now);
            n += 1;
        }
        n
    }

    /// The earliest ejection end or ramp step after `now`.
    pub(super) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let snap = self.upstream.load();
        snap.servers
            .iter()
            .filter_map(|s| {
                let life = s.state.life();
                let ramp = life
                    .ramp_since
                    .and_then(|since| slow_start::next_step(since, now, self.config.slow_start));
                [life.ejection.until(), ramp].into_iter().flatten().min()
            })
            .min()
    }

    /// Builds and swaps a snapshot for the writer's current record, starting the slow-start ramp
    /// of servers that re-enter service and logging every change of standing with its reason.
    fn publish(&self, old: &Snapshot, now: Instant, reasons: &[(String, String)]) {
        for server in &old.servers {
            let mut life = server.state.life();
            let next = standing(server.config.down, &life);
            let returns = next == Standing::Up
                && matches!(
                    server.standing,
                    Standing::Down | Standing::Ejected | Standing::Draining | Standing::Disabled
                );
            if returns && !self.config.slow_start.is_zero() {
                life.ramp_since = Some(now);
            }
        }
        let next = build(
            &self.config,
            &self.listeners,
            Some(old),
            self.upstream.events(),
            Arc::clone(&old.budget),
            now,
        );
        for change in changes(old, &next, reasons) {
            let (upstream, server) = (&self.config.name, change.server);
            let (from, to, reason) = (change.from, change.to.as_str(), change.reason);
            if change.to == Standing::Up {
                info!(%upstream, %server, from, to, reason, "server state changed");
            } else {
                warn!(%upstream, %server, from, to, reason, "server state changed");
            }
        }
        self.upstream.store(next);
    }
}

/// A change of a server's standing between two snapshots, as its log line says it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Change<'a> {
    pub(super) server: &'a str,
    /// The old standing's name, or `new` for a server the old snapshot did not have.
    pub(super) from: &'static str,
    pub(super) to: Standing,
    /// Why, from the writer's reasons for this round (empty when it gave none).
    pub(super) reason: &'a str,
}

/// The servers of `next` whose standing differs from `old`, with the reason given for each.
pub(super) fn changes<'a>(
    old: &Snapshot,
    next: &'a Snapshot,
    reasons: &'a [(String, String)],
) -> Vec<Change<'a>> {
    next.servers
        .iter()
        .filter_map(|server| {
            let before = old
                .servers
                .iter()
                .find(|s| Arc::ptr_eq(&s.state, &server.state))
                .map(|s| s.standing);
            if before == Some(server.standing) {
                return None;
            }
            let reason = reasons
                .iter()
                .find(|(address, _)| *address == server.config.address)
                .map_or("", |(_, r)| r.as_str());
            Some(Change {
                server: &server.config.address,
                from: before.map_or("new", Standing::as_str),
                to: server.standing,
                reason,
            })
        })
        .collect()
}
