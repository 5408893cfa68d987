//! WebSocket tunnels: after the server's `101 Switching Protocols`, the client and server sockets
//! are joined and bytes copied both ways until both sides close. A tunnel counts as in-flight work
//! for shutdown and holds its server slot for its whole life.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::lifecycle::TrackerGuard;
use crate::server::{Failure, InFlight};

/// Spawns the task that joins the two upgraded connections.
pub fn tunnel(client: OnUpgrade, server: OnUpgrade, slot: InFlight, guard: TrackerGuard) {
    tokio::spawn(async move {
        let _guard = guard;
        let (client, server) = tokio::join!(client, server);
        let server = match server {
            Ok(server) => server,
            Err(e) => {
                debug!(error = %e, "the server's side of the upgrade did not complete");
                slot.failed(Failure::BrokenResponse);
                return;
            }
        };
        // A client that went away is not the server's failure: nothing is recorded.
        let Ok(client) = client else {
            debug!("the client's side of the upgrade did not complete");
            return;
        };
        let mut client = TokioIo::new(client);
        let mut server = TokioIo::new(server);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            debug!(error = %e, "tunnel ended with an error");
        }
        drop(slot);
    });
}
