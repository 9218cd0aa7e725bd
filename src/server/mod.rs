//! `ringmq serve`: the Kafka-compatible broker.
//!
//! One pinned executor per core (a shard). Every shard listens on the same address
//! (SO_REUSEPORT), so the kernel spreads connections over the cores, and serves its
//! connections to completion: `connection` reads frames, `handlers` answers them.
//! What the shards share is immutable (`Broker`).

mod connection;
mod errors;
mod fetch_response;
mod frame;
mod handlers;
mod versions;

use crate::config::{BrokerConfig, ConfigError};
use crate::io;
use crate::shard::topics::TopicTable;
use crate::shard::{MESH_CHANNEL_CAPACITY, Shard, ShardMessage};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// What every shard knows about this broker; fixed at start.
pub struct Broker {
    pub node_id: i32,
    pub cluster_id: String,
    pub listen: SocketAddr,
    pub advertised: SocketAddr,
    pub request_bytes_max: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Shard(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Starts the shards, prints one line when every one of them accepts connections, and serves
/// until the process is stopped.
pub fn serve(config: BrokerConfig) -> Result<(), ServeError> {
    config.validate()?;
    let data_dir = config.data_dir.display().to_string();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io_error(format!("create data directory {data_dir}")))?;
    let cluster_id = cluster_id(&config.data_dir)?;
    let (reservation, listen) =
        io::reserve_address(config.listen).map_err(io_error(format!("bind {}", config.listen)))?;
    let broker = Arc::new(Broker {
        node_id: config.node_id,
        cluster_id,
        listen,
        advertised: config.advertised(listen),
        request_bytes_max: config.socket_request_max_bytes,
        idle_timeout: config.connections_max_idle,
    });
    let topics = TopicTable::load(&config.data_dir).map_err(|e| ServeError::Shard(e.to_string()))?;
    let (ready, shards_ready) = mpsc::channel::<Result<(), String>>();
    let cores = config.cores;
    let start = ShardStart {
        broker: broker.clone(),
        config: Arc::new(config),
        topics,
        mesh: io::mesh(cores, MESH_CHANNEL_CAPACITY),
        ready,
    };
    let shards = std::thread::spawn(move || io::run_sharded(cores, move |_| shard_main(start.clone())));
    for _ in 0..cores {
        match shards_ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(ServeError::Shard(reason)),
            Err(_) => return Err(ServeError::Shard("a shard stopped while starting".into())),
        }
    }
    drop(reservation);
    let mut stdout = std::io::stdout().lock();
    let line = format!(
        "ringmq ready: kafka listener {listen} (advertised {}), {cores} cores, data in {data_dir}",
        broker.advertised
    );
    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).map_err(io_error("write to stdout"))?;
    drop(stdout);
    match shards.join() {
        Ok(result) => result.map_err(io_error("run shards")),
        Err(_) => Err(ServeError::Shard("a shard panicked".into())),
    }
}

/// What every shard starts from; cloned into each.
#[derive(Clone)]
struct ShardStart {
    broker: Arc<Broker>,
    config: Arc<BrokerConfig>,
    topics: TopicTable,
    mesh: io::MeshBuilder<ShardMessage>,
    ready: mpsc::Sender<Result<(), String>>,
}

async fn shard_main(start: ShardStart) {
    let ShardStart { broker, config, topics, mesh, ready } = start;
    let started = match mesh.join().await {
        Ok(mesh) => Shard::start(mesh, config, topics).await,
        Err(error) => Err(error.to_string()),
    };
    let shard = match started {
        Ok(shard) => shard,
        Err(reason) => {
            let _main_thread_reports_it = ready.send(Err(reason));
            return;
        }
    };
    let id = shard.id();
    let listener = match io::Listener::bind(broker.listen) {
        Ok(listener) => listener,
        Err(error) => {
            let _main_thread_reports_it =
                ready.send(Err(format!("core {id}: listen on {}: {error}", broker.listen)));
            return;
        }
    };
    let _main_thread_waits = ready.send(Ok(()));
    loop {
        match listener.accept().await {
            Ok(stream) => io::spawn_detached(connection::serve(stream, broker.clone(), shard.clone())),
            Err(error) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(shard = id, %error, "accept failed");
                io::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The cluster id, created on the first start and kept in the data directory.
fn cluster_id(data_dir: &Path) -> Result<String, ServeError> {
    let path = data_dir.join("cluster.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(format!("read {}", path.display()))(error)),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tmp = data_dir.join("cluster.id.tmp");
    std::fs::write(&tmp, &id)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(io_error(format!("write {}", path.display())))?;
    Ok(id)
}
