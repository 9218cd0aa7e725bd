//! One client connection, on the core that accepted it: read a frame, answer it, repeat.
//! Responses go out in request order, as Kafka requires.

use super::handlers::{self, Outcome};
use super::{Broker, frame};
use crate::io::Stream;
use crate::shard::Shard;
use std::rc::Rc;
use std::sync::Arc;

pub async fn serve(mut stream: Stream, broker: Arc<Broker>, shard: Rc<Shard>) {
    let peer = stream.peer_addr().map(|address| address.to_string()).unwrap_or_default();
    // Idle and stalled clients (slowloris) are cut off instead of holding a task forever.
    if let Err(error) = stream.set_read_timeout(Some(broker.idle_timeout)) {
        tracing::warn!(%peer, %error, "cannot set a read timeout; closing");
        return;
    }
    loop {
        let request = match frame::read(&mut stream, broker.request_bytes_max).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%peer, %error, "closing connection");
                return;
            }
        };
        match handlers::handle(&broker, &shard, request).await {
            Outcome::Silent => {}
            Outcome::Respond(chunks) => {
                if let Err(error) = stream.write_chunks(&chunks).await {
                    tracing::debug!(%peer, %error, "closing connection: write failed");
                    return;
                }
            }
            Outcome::Close(reason) => {
                tracing::debug!(%peer, %reason, "closing connection");
                return;
            }
        }
    }
}
