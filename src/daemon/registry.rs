//! The running configuration as the control thread holds it: every listener with its bound
//! addresses, accept loops and stop signals, and every upstream with its writer. [`Registry::apply`]
//! takes the daemon from whatever runs to a new [`Config`], at start and at every reload, in two
//! steps: first everything that can fail (binding new addresses), so a refused reload changes
//! nothing; then the changes, which cannot fail.
//!
//! What a reload keeps: a listener keeps its name's sockets and connections, and publishes a new
//! context that their next request reads; an address moved to another listener keeps its socket
//! (no rebind, no refused connect); an upstream keeps its snapshot's live server state, updated by
//! its writer. What it ends: a removed listener's sockets close and its connections close after
//! the request in flight; a removed upstream's writer and checkers stop (requests already holding
//! its snapshot finish).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::workers::{Command, Workers};
use super::Error;
use crate::access_log::{AccessLog, AccessLogs};
use crate::config::{Config, ListenerConfig, Target, UpstreamConfig};
use crate::lifecycle::{Shutdown, ShutdownTrigger};
use crate::listener::{Accept, Bound};
use crate::proxy::{Listener, ListenerCtx};
use crate::server::Event;
use crate::table::{Directory, Upstream};

/// Every listener and upstream now running (see the module docs).
pub struct Registry {
    workers: Workers,
    shutdown: Shutdown,
    listeners: BTreeMap<String, Entry>,
    upstreams: BTreeMap<String, UpstreamEntry>,
    directory: Arc<Directory>,
    access_logs: AccessLogs,
    limit: Arc<Semaphore>,
    max_connections: u32,
}

/// One running listener.
struct Entry {
    config: ListenerConfig,
    listener: Arc<Listener>,
    /// Stops its connections (after the request in flight) and, being their parent, its accept
    /// loops.
    connections: ShutdownTrigger,
    connections_signal: Shutdown,
    addrs: Vec<Address>,
}

/// One bound address of a listener, with the accept loops on it.
struct Address {
    /// The address as configured (port 0 stays 0: what a reload matches by).
    configured: SocketAddr,
    bound: Bound,
    /// Stops this address's accept loops only.
    accepting: ShutdownTrigger,
}

struct UpstreamEntry {
    upstream: Arc<Upstream>,
    stop: ShutdownTrigger,
}

/// Where a new configuration's bind address comes from.
enum Source {
    /// The socket a running listener already has at this configured address.
    Running,
    /// A socket bound for this configuration.
    New(Bound),
}

impl Registry {
    /// An empty registry over started workers; `shutdown` is the root every stop descends from.
    pub fn new(
        workers: Workers,
        shutdown: Shutdown,
        limit: Arc<Semaphore>,
        max_connections: u32,
    ) -> Self {
        Registry {
            workers,
            shutdown,
            listeners: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            directory: Arc::new(Directory::new(Vec::new())),
            access_logs: AccessLogs::default(),
            limit,
            max_connections,
        }
    }

    /// The upstreams now running, for the admin endpoint.
    pub fn directory(&self) -> Arc<Directory> {
        Arc::clone(&self.directory)
    }

    /// The workers (for the watchdog's heartbeats).
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The access log writers (SIGUSR1 reopens their files; the drain flushes them).
    pub fn access_logs(&self) -> &AccessLogs {
        &self.access_logs
    }

    /// Makes `config` the running configuration, or changes nothing and says why.
    pub async fn apply(&mut self, config: &Config) -> Result<(), Error> {
        let sources = self.bind_new(config)?;
        // Opened before anything changes: a log that cannot be opened refuses the reload. An
        // unchanged destination gets the writer it already has.
        let logs = config
            .listeners
            .iter()
            .map(|l| {
                l.access_log
                    .as_ref()
                    .map(|log| self.access_logs.open(log, &l.name))
                    .transpose()
            })
            .collect::<Result<Vec<Option<AccessLog>>, _>>()?;
        let published = self.apply_upstreams(config);
        // Listeners start (and new contexts appear) once every upstream's snapshot is the new one,
        // so no request meets a snapshot without its listener's counters.
        for (name, done) in published {
            if done.await.is_err() {
                warn!(upstream = %name, "upstream writer is gone; its configuration is unchanged");
            }
        }
        self.apply_listeners(config, sources, logs);
        self.apply_limit(config.runtime.max_connections);
        Ok(())
    }

    /// Closes every listening socket (shutdown: new connects are refused from now on).
    pub fn close_listening(&mut self) {
        for entry in self.listeners.values() {
            entry.connections.fire();
        }
        self.listeners.clear();
    }

    /// The running listener address `configured` of listener `name`, or (for a fixed port) of
    /// any listener, so that an address moved between listeners keeps its socket.
    fn running(&self, name: &str, configured: SocketAddr) -> Option<(&str, &Address)> {
        let own = self.listeners.get_key_value(name).and_then(|(n, e)| {
            let a = e.addrs.iter().find(|a| a.configured == configured)?;
            Some((n.as_str(), a))
        });
        own.or_else(|| {
            if configured.port() == 0 {
                return None;
            }
            self.listeners.iter().find_map(|(n, e)| {
                let a = e.addrs.iter().find(|a| a.configured == configured)?;
                Some((n.as_str(), a))
            })
        })
    }

    /// Step one: binds every address `config` names that no running listener has. Any failure
    /// drops what was bound here and leaves the running sockets untouched.
    fn bind_new(&self, config: &Config) -> Result<Vec<Vec<Source>>, Error> {
        let workers = self.workers.count();
        let mut sources = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let mut own = Vec::with_capacity(l.binds.len());
            for &addr in &l.binds {
                if let Some((_, running)) = self.running(&l.name, addr) {
                    if running.bound.reuse_port() != l.reuse_port {
                        return Err(Error::NeedsRestart(format!(
                            "listener `{}`: changing reuse_port of {addr}, which stays bound",
                            l.name
                        )));
                    }
                    own.push(Source::Running);
                    continue;
                }
                let bound = Bound::new(addr, l.backlog, l.reuse_port, workers)
                    .map_err(|source| Error::bind(&l.name, addr, source))?;
                own.push(Source::New(bound));
            }
            sources.push(own);
        }
        Ok(sources)
    }

    /// Reconfigures the upstreams that stay, starts new ones and stops removed ones; returns, per
    /// upstream that stays, when its writer has published.
    fn apply_upstreams(
        &mut self,
        config: &Config,
    ) -> Vec<(String, tokio::sync::oneshot::Receiver<()>)> {
        let mut published = Vec::new();
        let mut next: BTreeMap<String, UpstreamEntry> = BTreeMap::new();
        for u in &config.upstreams {
            let listeners = routed_listeners(config, u);
            match self.upstreams.remove(&u.name) {
                Some(entry) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let event = Event::Reconfigure {
                        config: Box::new(u.clone()),
                        listeners,
                        published: tx,
                    };
                    // A writer that is gone drops the event, and with it the sender: said below.
                    let _ = entry.upstream.events().send(event);
                    published.push((u.name.clone(), rx));
                    next.insert(u.name.clone(), entry);
                }
                None => {
                    let (upstream, writer) = Upstream::new(u, &listeners);
                    let (stop, signal) = self.shutdown.child();
                    tokio::spawn(writer.run(signal));
                    next.insert(u.name.clone(), UpstreamEntry { upstream, stop });
                }
            }
        }
        for (name, removed) in std::mem::replace(&mut self.upstreams, next) {
            info!(upstream = %name, "upstream removed; requests in flight finish");
            removed.stop.fire();
        }
        self.directory.store(
            self.upstreams
                .iter()
                .map(|(name, e)| (name.clone(), Arc::clone(&e.upstream)))
                .collect(),
        );
        published
    }

    fn apply_listeners(
        &mut self,
        config: &Config,
        sources: Vec<Vec<Source>>,
        logs: Vec<Option<AccessLog>>,
    ) {
        let upstreams = self.directory.load();
        let mut old = std::mem::take(&mut self.listeners);
        // Every running address, by the listener that had it, free to be claimed below.
        let mut pool: Vec<(String, Address)> = old
            .iter_mut()
            .flat_map(|(name, e)| {
                std::mem::take(&mut e.addrs)
                    .into_iter()
                    .map(|a| (name.clone(), a))
            })
            .collect();
        for ((l, sources), log) in config.listeners.iter().zip(sources).zip(logs) {
            let ctx = ListenerCtx::new(l, &upstreams).with_access_log(log);
            // Same name, same mode: the connections stay and read the new context.
            let kept = old.get(&l.name).is_some_and(|e| e.config.mode == l.mode);
            let mut entry = if kept {
                let mut entry = old.remove(&l.name).expect("checked above");
                entry.listener.replace(ctx);
                entry.config = l.clone();
                entry
            } else {
                if old.contains_key(&l.name) {
                    info!(listener = %l.name, "listener mode changed; its connections finish their request in flight");
                }
                self.new_entry(l.clone(), ctx)
            };
            for (&configured, source) in l.binds.iter().zip(sources) {
                let address = match source {
                    Source::New(bound) => {
                        info!(listener = %l.name, addr = %bound.addr, "listening");
                        self.start_accepting(&entry, configured, bound)
                    }
                    Source::Running => {
                        let (owner, address) = claim(&mut pool, &l.name, configured)
                            .expect("bind_new found this address running");
                        if kept && owner == l.name {
                            // Its accept loops already serve this listener: nothing to restart.
                            if let Err(e) = address.bound.set_backlog(l.backlog) {
                                warn!(listener = %l.name, addr = %address.bound.addr, error = %e, "cannot apply the new backlog");
                            }
                            address
                        } else {
                            // The old loops stop; the socket stays open in the new owner's hands.
                            address.accepting.fire();
                            info!(listener = %l.name, addr = %address.bound.addr, from = %owner, "listening (socket taken over)");
                            self.start_accepting(&entry, configured, address.bound)
                        }
                    }
                };
                entry.addrs.push(address);
            }
            self.listeners.insert(l.name.clone(), entry);
        }
        for (name, address) in pool {
            info!(listener = %name, addr = %address.bound.addr, "listening socket closed");
            address.accepting.fire();
        }
        for (name, removed) in old {
            if !self.listeners.contains_key(&name) {
                info!(listener = %name, "listener removed; its connections finish their request in flight");
            }
            removed.connections.fire();
        }
    }

    fn new_entry(&self, config: ListenerConfig, ctx: ListenerCtx) -> Entry {
        let (connections, connections_signal) = self.shutdown.child();
        Entry {
            config,
            listener: Arc::new(Listener::new(ctx)),
            connections,
            connections_signal,
            addrs: Vec::new(),
        }
    }

    /// Hands every worker its copy of `bound` for `entry`'s listener.
    fn start_accepting(&self, entry: &Entry, configured: SocketAddr, bound: Bound) -> Address {
        let (accepting, stop) = entry.connections_signal.child();
        for worker in 0..self.workers.count() {
            match bound.for_worker(worker) {
                Ok(socket) => self.workers.send(
                    worker,
                    Command::Accept {
                        socket,
                        accept: Accept {
                            listener: Arc::clone(&entry.listener),
                            mode: entry.config.mode,
                            stop: stop.clone(),
                            connections: entry.connections_signal.clone(),
                        },
                    },
                ),
                Err(e) => {
                    warn!(listener = %entry.config.name, addr = %bound.addr, worker, error = %e, "cannot hand a worker its listening socket")
                }
            }
        }
        Address {
            configured,
            bound,
            accepting,
        }
    }

    /// `runtime.max_connections` from a reload: permits are added at once; a lower limit takes
    /// back free permits now and the rest as connections end.
    fn apply_limit(&mut self, max: u32) {
        let (old, new) = (self.max_connections, max);
        self.max_connections = max;
        if new > old {
            self.limit.add_permits((new - old) as usize);
        } else if new < old {
            let limit = Arc::clone(&self.limit);
            tokio::spawn(async move {
                if let Ok(permits) = limit.acquire_many(old - new).await {
                    permits.forget();
                }
            });
        }
    }
}

/// Takes the running address `configured` out of `pool`: the one listener `name` had, else (for a
/// fixed port) whichever listener had it. Returns it with the name of the listener that had it.
fn claim(
    pool: &mut Vec<(String, Address)>,
    name: &str,
    configured: SocketAddr,
) -> Option<(String, Address)> {
    let own = pool
        .iter()
        .position(|(owner, a)| owner == name && a.configured == configured);
    let any = || {
        (configured.port() != 0)
            .then(|| pool.iter().position(|(_, a)| a.configured == configured))
            .flatten()
    };
    let i = own.or_else(any)?;
    Some(pool.remove(i))
}

/// The names of the listeners of `config` that route to `upstream`.
fn routed_listeners(config: &Config, upstream: &UpstreamConfig) -> Vec<Arc<str>> {
    config
        .listeners
        .iter()
        .filter(|l| matches!(&l.target, Target::Upstream(name) if *name == upstream.name))
        .map(|l| Arc::from(l.name.as_str()))
        .collect()
}
