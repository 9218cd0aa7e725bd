//! One client connection, on the core that accepted it: read a frame, answer it, repeat.
//! Responses go out in request order, as Kafka requires.

use super::handlers::{self, Outcome};
use super::{Broker, frame};
use crate::io::{Latch, Stream};
use crate::shard::Shard;
use std::rc::Rc;
use std::sync::Arc;

/// Serves one connection until the client closes it, it misbehaves, or the broker stops
/// (`stopping`: the connection then closes before reading another request, never in the middle
/// of answering one).
pub async fn serve(mut stream: Stream, broker: Arc<Broker>, shard: Rc<Shard>, stopping: Latch) {
    let peer_address = stream.peer_addr().ok();
    let peer = peer_address.map(|address| address.to_string()).unwrap_or_default();
    let client_host = peer_address.map(|address| format!("/{}", address.ip())).unwrap_or_default();
    crate::metrics::count(|c| {
        c.connections_accepted += 1;
        c.connections_open += 1;
    });
    let _closed = Closed;
    loop {
        let next = async { Some(frame::read(&mut stream, broker.request_bytes_max).await) };
        // Idle and stalled clients (slowloris) are cut off instead of holding a task forever:
        // a whole request must arrive within the idle timeout. (glommio's socket read timeout
        // would not cover it: request bodies are received outside glommio, `Stream::read_into`.)
        let idle = async {
            crate::io::sleep(broker.idle_timeout).await;
            Some(Err(frame::FrameError::Io(std::io::ErrorKind::TimedOut.into())))
        };
        let request = match futures_lite::future::or(futures_lite::future::or(next, idle), async {
            stopping.wait().await;
            None
        })
        .await
        {
            None | Some(Ok(None)) => return,
            Some(Ok(Some(request))) => request,
            Some(Err(error)) => {
                tracing::debug!(%peer, %error, "closing connection");
                return;
            }
        };
        let (started, api) =
            (std::time::Instant::now(), request.get(..2).map(|key| i16::from_be_bytes([key[0], key[1]])));
        let received = request.len() as u64 + 4;
        crate::metrics::count(|c| c.received_bytes += received);
        match handlers::handle(&broker, &shard, request, &client_host).await {
            Outcome::Silent => count_request(api, started),
            Outcome::Respond(chunks) => {
                if let Err(error) = stream.write_chunks(&chunks).await {
                    tracing::debug!(%peer, %error, "closing connection: write failed");
                    return;
                }
                let sent: usize = chunks.iter().map(bytes::Bytes::len).sum();
                crate::metrics::count(|c| c.sent_bytes += sent as u64);
                count_request(api, started);
            }
            Outcome::Close(reason) => {
                tracing::debug!(%peer, %reason, "closing connection");
                return;
            }
        }
    }
}

/// Counts an answered request (or one that needs no answer) under its API.
fn count_request(api: Option<i16>, started: std::time::Instant) {
    if let Some(api) = api {
        crate::metrics::count(|c| c.requests.entry(api).or_default().observe(started.elapsed()));
    }
}

/// Counts the connection closed when the serving task ends, however it ends.
struct Closed;

impl Drop for Closed {
    fn drop(&mut self) {
        crate::metrics::count(|c| c.connections_open = c.connections_open.saturating_sub(1));
    }
}
