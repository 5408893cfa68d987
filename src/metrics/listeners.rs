//! Finding a listener's request counters on the request path without comparing names.
//!
//! Every listener name gets a small process-wide [`ListenerId`] when its context is built; the same
//! name always gets the same id and an id is never given to another name, so an id means one
//! `listener` label for the life of the process. A snapshot keeps its counters per listener as
//! [`ByListener`]: the ids packed in one slice (one cache line holds 16) beside the counters. A
//! lookup scans the ids, integers only. A reload rebuilds listener contexts and upstream snapshots
//! at slightly different instants; a context paired with a snapshot built for another set of
//! listeners either finds its own id (its own label, wherever it now sits) or finds nothing and
//! counts nothing, never another listener's series.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::CodeCounters;

/// A listener name's process-wide number (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerId(u32);

/// The id of listener `name`: the one it had before, else the next unused one. Takes a lock:
/// call it when building contexts and snapshots, never per request.
pub fn listener_id(name: &str) -> ListenerId {
    static IDS: OnceLock<Mutex<HashMap<Box<str>, u32>>> = OnceLock::new();
    let mut ids = IDS
        .get_or_init(Default::default)
        .lock()
        // Every update is one insert: a panic elsewhere cannot leave it half-written.
        .unwrap_or_else(|e| e.into_inner());
    let next = u32::try_from(ids.len()).expect("fewer than 2^32 listener names");
    ListenerId(*ids.entry(name.into()).or_insert(next))
}

/// `fulcrum_requests_total` handles of one (upstream, server), one set per listener routed to it.
pub struct ByListener {
    ids: Box<[ListenerId]>,
    counters: Box<[CodeCounters]>,
}

impl ByListener {
    /// Counters of `listeners` (with their ids) for `upstream` and `server` (empty: no server).
    pub fn new(listeners: &[(ListenerId, Arc<str>)], upstream: &str, server: &str) -> Self {
        ByListener {
            ids: listeners.iter().map(|(id, _)| *id).collect(),
            counters: listeners
                .iter()
                .map(|(_, name)| CodeCounters::new(name, upstream, server))
                .collect(),
        }
    }

    /// The counters of listener `id`, if this set was built for it.
    pub fn get(&self, id: ListenerId) -> Option<&CodeCounters> {
        let pos = self.ids.iter().position(|&i| i == id)?;
        self.counters.get(pos)
    }

    /// Whether this set was built for exactly `listeners`, in order (so a rebuilt snapshot may
    /// keep it and the counts it holds).
    pub fn is_for(&self, listeners: &[(ListenerId, Arc<str>)]) -> bool {
        self.ids.len() == listeners.len()
            && self.ids.iter().zip(listeners).all(|(a, (b, _))| a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> Vec<(ListenerId, Arc<str>)> {
        names
            .iter()
            .map(|n| (listener_id(n), Arc::from(*n)))
            .collect()
    }

    #[test]
    fn a_name_keeps_its_id_and_no_two_names_share_one() {
        let a = listener_id("listeners-test-a");
        let b = listener_id("listeners-test-b");
        assert_ne!(a, b);
        assert_eq!(listener_id("listeners-test-a"), a);
        assert_eq!(listener_id("listeners-test-b"), b);
    }

    #[test]
    fn a_lookup_finds_its_own_listener_wherever_it_sits_or_nothing() {
        let old = ByListener::new(&named(&["lt-web", "lt-api"]), "app", "s");
        // After a reload: lt-api moved first, lt-web left, lt-new arrived.
        let new = ByListener::new(&named(&["lt-api", "lt-new"]), "app", "s");
        let (web, api, added) = (
            listener_id("lt-web"),
            listener_id("lt-api"),
            listener_id("lt-new"),
        );
        let label = |set: &ByListener, id| set.get(id).map(|c| c.labels[0].1.clone());
        assert_eq!(label(&old, web).as_deref(), Some("lt-web"));
        assert_eq!(label(&old, api).as_deref(), Some("lt-api"));
        assert_eq!(label(&new, api).as_deref(), Some("lt-api"));
        assert_eq!(label(&new, added).as_deref(), Some("lt-new"));
        // A new context on an old snapshot, or an old one on a new snapshot: nothing, not a neighbour.
        assert!(old.get(added).is_none());
        assert!(new.get(web).is_none());
    }

    #[test]
    fn a_set_is_kept_only_for_the_same_listeners_in_the_same_order() {
        let set = ByListener::new(&named(&["lk-a", "lk-b"]), "app", "s");
        assert!(set.is_for(&named(&["lk-a", "lk-b"])));
        assert!(!set.is_for(&named(&["lk-b", "lk-a"])));
        assert!(!set.is_for(&named(&["lk-a"])));
        assert!(!set.is_for(&named(&["lk-a", "lk-b", "lk-c"])));
    }
}
