//! The admin HTTP listener, served by shard 0: `/metrics` (Prometheus text format, gathered
//! from every core by message), `/health` (the process answers) and `/ready` (every core
//! accepts Kafka connections and the broker is not stopping). HTTP/1.x `GET` only, one request
//! per connection; a request head over `HEAD_BYTES_MAX` or slower than `HEAD_TIMEOUT` is
//! dropped.

use super::Broker;
use crate::io::{self, Latch, Listener, Stream};
use crate::shard::Shard;
use bytes::Bytes;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const HEAD_BYTES_MAX: usize = 8 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts admin connections until the broker stops.
pub async fn serve(listener: Listener, shard: Rc<Shard>, broker: Arc<Broker>, stopping: Latch) {
    while let Some(stream) = super::next_connection(&listener, &stopping, "admin").await {
        let (shard, broker, stopping) = (shard.clone(), broker.clone(), stopping.clone());
        io::spawn_detached(async move { answer(stream, &shard, &broker, &stopping).await });
    }
}

async fn answer(mut stream: Stream, shard: &Rc<Shard>, broker: &Broker, stopping: &Latch) {
    if stream.set_read_timeout(Some(HEAD_TIMEOUT)).is_err() {
        return;
    }
    let Some(path) = read_path(&mut stream).await else {
        let _closing =
            stream.write_chunks(&[response("400 Bad Request", "text/plain", "bad request\n".into())]).await;
        return;
    };
    let reply = match path.as_str() {
        "/metrics" => response("200 OK", "text/plain; version=0.0.4", scrape(shard).await),
        "/health" => response("200 OK", "text/plain", "ok\n".into()),
        "/ready" if broker.ready.load(Ordering::Acquire) && !stopping.is_set() => {
            response("200 OK", "text/plain", "ready\n".into())
        }
        "/ready" => response("503 Service Unavailable", "text/plain", "not ready\n".into()),
        _ => response("404 Not Found", "text/plain", "not found\n".into()),
    };
    if let Err(error) = stream.write_chunks(&[reply]).await {
        tracing::debug!(%error, "admin answer not sent");
    }
}

/// The path of a `GET` request (query string dropped), once its head has arrived.
async fn read_path(stream: &mut Stream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buf).await.ok().filter(|&read| read > 0)?;
        head.extend_from_slice(&buf[..read]);
        if head.len() > HEAD_BYTES_MAX {
            return None;
        }
    }
    let line = head.split(|&byte| byte == b'\r').next()?;
    let mut words = std::str::from_utf8(line).ok()?.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    if method != "GET" || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some(target.split('?').next().unwrap_or(target).to_string())
}

fn response(status: &str, content_type: &str, body: String) -> Bytes {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    Bytes::from(head + &body)
}

/// Every core's metrics, rendered.
pub async fn scrape(shard: &Rc<Shard>) -> String {
    let mut cores = Vec::with_capacity(shard.shards());
    for core in 0..shard.shards() {
        if let Some(snapshot) = shard.run_on(core, |shard| async move { shard.metrics_snapshot() }).await {
            cores.push(snapshot);
        }
    }
    crate::metrics::render(&cores, &cluster_gauges(shard))
}

/// The cluster as this broker's newest image has it; a one-node broker is its own controller
/// and leads every partition it holds.
fn cluster_gauges(shard: &Shard) -> crate::metrics::ClusterGauges {
    let node = shard.config().node_id;
    let Some(view) = shard.cluster() else {
        let alone = shard.controller().is_none();
        let leader_partitions = shard.all_topics().iter().map(|topic| topic.partitions() as u64).sum();
        return crate::metrics::ClusterGauges {
            active_controller: alone,
            live_brokers: 1,
            leader_partitions: if alone { leader_partitions } else { 0 },
            ..Default::default()
        };
    };
    let image = &view.image;
    let partitions = || image.topics.values().flat_map(|topic| topic.partitions.iter());
    let led = || partitions().filter(|partition| partition.leader == node);
    crate::metrics::ClusterGauges {
        active_controller: view.controller == node,
        live_brokers: image.live_brokers().count() as u64,
        fenced_brokers: image.brokers.values().filter(|broker| broker.fenced).count() as u64,
        offline_partitions: partitions().filter(|p| p.leader == crate::controller::state::NO_LEADER).count()
            as u64,
        leader_partitions: led().count() as u64,
        under_replicated_partitions: led().filter(|p| p.isr.len() < p.replicas.len()).count() as u64,
        metadata_version: image.applied,
    }
}
