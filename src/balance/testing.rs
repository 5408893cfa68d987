//! Tiers of real [`Server`]s for the strategies' unit and property tests.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::PickContext;
use crate::config::ServerConfig;
use crate::server::{Passive, Recording, Server, ServerState, Standing};

/// A tier of up servers 127.0.0.1:10000+i with these (configured) weights.
pub fn tier(weights: &[u32]) -> Vec<Arc<Server>> {
    tier_with(weights, None, None)
}

/// Like [`tier`], with what attempts record (bounded loads' total, peak EWMA's decay).
pub fn tier_with(
    weights: &[u32],
    upstream_in_flight: Option<Arc<std::sync::atomic::AtomicU32>>,
    latency_decay: Option<crate::server::Decay>,
) -> Vec<Arc<Server>> {
    let (events, _) = mpsc::unbounded_channel();
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let address = format!("127.0.0.1:{}", 10000 + i);
            Arc::new(Server {
                config: ServerConfig {
                    addr: address.parse().unwrap(),
                    address: address.clone(),
                    weight,
                    backup: false,
                    down: false,
                    max_connections: 0,
                },
                state: Arc::new(ServerState::new("test", &address)),
                standing: Standing::Up,
                tenths: 10,
                requests_by_listener: Arc::new(crate::metrics::ByListener::new(&[], "", "")),
                recording: Recording {
                    passive: Passive {
                        threshold: 0,
                        events: events.clone(),
                    },
                    upstream_in_flight: upstream_in_flight.clone(),
                    latency_decay,
                },
            })
        })
        .collect()
}

/// A tcp-mode pick context (no request head) at `now`.
pub fn ctx() -> PickContext<'static> {
    PickContext {
        client: "127.0.0.1:40000".parse().unwrap(),
        head: None,
        now: Instant::now(),
    }
}
