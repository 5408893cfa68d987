//! L4: pair each client connection with a connection to one server and copy bytes both ways until
//! both sides close. A half-close (FIN) from one side is passed on to the other, so protocols that
//! end their request by shutting down the write side work through the proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::http::connect_tcp;
use super::{ListenerCtx, Route};
use crate::balance::PickContext;

/// Serves one accepted client connection in tcp mode.
pub async fn serve_connection(ctx: Arc<ListenerCtx>, mut client: TcpStream, peer: SocketAddr) {
    let Route::Upstream(upstream) = &ctx.route else {
        unreachable!("config validation rejects `respond` on tcp listeners");
    };
    let snap = upstream.load();
    for slot in snap.attempts(&PickContext {
        client: peer,
        head: None,
    }) {
        let server = slot.server();
        let mut upstream_stream = match connect_tcp(server.addr(), snap.settings.connect_timeout)
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                warn!(listener = %ctx.name, upstream = %snap.name, server = %server.config.address, error = %e, "connect failed");
                slot.record_failure();
                continue;
            }
        };
        match tokio::io::copy_bidirectional(&mut client, &mut upstream_stream).await {
            Ok((up, down)) => {
                debug!(%peer, server = %server.config.address, up, down, "tcp session closed")
            }
            Err(e) => {
                debug!(%peer, server = %server.config.address, error = %e, "tcp session ended with an error")
            }
        }
        return;
    }
    warn!(listener = %ctx.name, upstream = %snap.name, %peer, "no server could take the connection; closing it");
}
