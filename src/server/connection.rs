//! One client connection, on the core that accepted it: read requests, answer them in request
//! order, as Kafka requires.
//!
//! Produce requests are pipelined, as Redpanda does and as clients expect who send several
//! at once (librdkafka, and the Java producer's `max.in.flight.requests.per.connection` of
//! 5): once a produce's batches have their place in their partitions, the next request is
//! read while the first's answer waits for its batches to be written. Without this, a
//! connection's requests waited in its socket while each answer waited for the disk. Any
//! other request is answered alone, after every answer before it has gone out: it may depend
//! on what they did (an offset commit, then a fetch of it), as on a Kafka broker.

use super::handlers::{self, Outcome, Started};
use super::{Broker, frame};
use crate::io::{Latch, Stream, Task};
use crate::shard::Shard;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Produce answers a connection may have pending before it stops reading: Kafka's clients
/// send up to 5 (Java) or more (librdkafka) at once.
const PIPELINED_REQUESTS_MAX: usize = 16;

/// Request bytes a connection may have in pending produce answers before it stops reading
/// (the records themselves are in the logs; this bounds what one connection queues there
/// ahead of the disk).
const PIPELINED_BYTES_MAX: usize = 32 << 20;

/// A request whose answer is still to go out.
struct Pending {
    api: Option<i16>,
    started: Instant,
    received: usize,
    answer: Task<Outcome>,
}

/// What the connection waits for.
enum Event {
    Request(bytes::Bytes),
    Answered(Outcome),
    /// The broker began to stop: read no more requests.
    Stopping,
    Close(String),
}

/// Serves one connection until the client closes it, it misbehaves, or the broker stops
/// (`stopping`: the connection then answers what it has read and closes, never in the middle
/// of a request or an answer).
pub async fn serve(mut stream: Stream, broker: Arc<Broker>, shard: Rc<Shard>, stopping: Latch) {
    let peer_address = stream.peer_addr().ok();
    let peer = peer_address.map(|address| address.to_string()).unwrap_or_default();
    let client_host = peer_address.map(|address| format!("/{}", address.ip())).unwrap_or_default();
    crate::metrics::count(|c| {
        c.connections_accepted += 1;
        c.connections_open += 1;
    });
    let _closed = Closed;
    let reason = serve_requests(&mut stream, &broker, &shard, &stopping, &client_host).await;
    tracing::debug!(%peer, %reason, "closing connection");
}

/// Reads, starts and answers requests; returns why the connection closes.
async fn serve_requests(
    stream: &mut Stream,
    broker: &Broker,
    shard: &Rc<Shard>,
    stopping: &Latch,
    client_host: &str,
) -> String {
    let mut reader = frame::Reader::new(broker.request_bytes_max);
    let mut pending = VecDeque::new();
    let mut idle_since = Instant::now();
    loop {
        let event = next_event(stream, &mut reader, &mut pending, stopping, broker.idle_timeout, idle_since);
        let (api, started, request) = match event.await {
            Event::Request(request) => (handlers::api_key(&request), Instant::now(), request),
            Event::Answered(outcome) => {
                let Some(answered) = pending.pop_front() else { return "no answer was pending".into() };
                if let Err(reason) = deliver(stream, outcome, answered.api, answered.started).await {
                    return reason;
                }
                idle_since = Instant::now();
                continue;
            }
            Event::Stopping => continue,
            Event::Close(reason) => return reason,
        };
        idle_since = started;
        let received = request.len() + 4;
        crate::metrics::count(|c| c.received_bytes += received as u64);
        if !handlers::is_produce(api)
            && let Err(reason) = answer_pending(stream, &mut pending).await
        {
            return reason;
        }
        let outcome = match handlers::start(broker, shard, request, client_host).await {
            Started::Answering(answer) => {
                let answer = crate::io::spawn_local(answer);
                pending.push_back(Pending { api, started, received, answer });
                continue;
            }
            Started::Answered(outcome) => outcome,
        };
        // Earlier answers first: a produce that could not be decoded closes the connection
        // only after them.
        if let Err(reason) = answer_pending(stream, &mut pending).await {
            return reason;
        }
        if let Err(reason) = deliver(stream, outcome, api, started).await {
            return reason;
        }
        idle_since = Instant::now();
    }
}

/// Waits for the next thing to do: the oldest pending answer, a request to start (while the
/// pipeline has room and the broker is not stopping), or a reason to close. Idle and stalled
/// clients (slowloris) are cut off instead of holding a task forever: with no answer pending,
/// a whole request must arrive within `idle_timeout` of the last one or the last answer.
/// (glommio's socket read timeout would not cover it: bodies are received outside glommio,
/// `Stream::read_into`.) Once the broker stops, the connection answers what it has read and
/// closes.
async fn next_event(
    stream: &mut Stream,
    reader: &mut frame::Reader,
    pending: &mut VecDeque<Pending>,
    stopping: &Latch,
    idle_timeout: Duration,
    idle_since: Instant,
) -> Event {
    let pending_bytes: usize = pending.iter().map(|answer| answer.received).sum();
    let (waiting, stopped) = (!pending.is_empty(), stopping.is_set());
    let reading = pending.len() < PIPELINED_REQUESTS_MAX && pending_bytes < PIPELINED_BYTES_MAX && !stopped;
    let answered = async {
        match pending.front_mut() {
            Some(oldest) => Event::Answered((&mut oldest.answer).await),
            None => std::future::pending().await,
        }
    };
    let request = async {
        if !reading {
            return std::future::pending().await;
        }
        match reader.next(stream).await {
            Ok(Some(request)) => Event::Request(request),
            Ok(None) => Event::Close("closed by the client".into()),
            Err(error) => Event::Close(error.to_string()),
        }
    };
    let idle_or_stopped = async {
        let stop = async {
            stopping.wait().await;
            Event::Stopping
        };
        match (waiting, stopped) {
            (true, true) => std::future::pending().await,
            (false, true) => Event::Close("the broker is stopping".into()),
            (true, false) => stop.await,
            (false, false) => {
                let idle = async {
                    crate::io::sleep(idle_timeout.saturating_sub(idle_since.elapsed())).await;
                    Event::Close("idle".into())
                };
                futures_lite::future::or(idle, stop).await
            }
        }
    };
    futures_lite::future::or(futures_lite::future::or(answered, request), idle_or_stopped).await
}

/// Writes every pending answer, in order.
async fn answer_pending(stream: &mut Stream, pending: &mut VecDeque<Pending>) -> Result<(), String> {
    while let Some(oldest) = pending.pop_front() {
        let outcome = oldest.answer.await;
        deliver(stream, outcome, oldest.api, oldest.started).await?;
    }
    Ok(())
}

/// Sends an answer (or nothing, for acks=0) and counts the request; `Err` closes the
/// connection.
async fn deliver(
    stream: &mut Stream,
    outcome: Outcome,
    api: Option<i16>,
    started: Instant,
) -> Result<(), String> {
    match outcome {
        Outcome::Silent => {}
        Outcome::Respond(chunks) => {
            stream.write_chunks(&chunks).await.map_err(|error| format!("write failed: {error}"))?;
            let sent: usize = chunks.iter().map(bytes::Bytes::len).sum();
            crate::metrics::count(|c| c.sent_bytes += sent as u64);
        }
        Outcome::Close(reason) => return Err(reason),
    }
    if let Some(api) = api {
        crate::metrics::count(|c| c.requests.entry(api).or_default().observe(started.elapsed()));
    }
    Ok(())
}

/// Counts the connection closed when the serving task ends, however it ends.
struct Closed;

impl Drop for Closed {
    fn drop(&mut self) {
        crate::metrics::count(|c| c.connections_open = c.connections_open.saturating_sub(1));
    }
}
