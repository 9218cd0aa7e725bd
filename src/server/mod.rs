//! `ringmq serve`: the Kafka-compatible broker.
//!
//! One pinned executor per core (a shard). Every shard listens on the same address
//! (SO_REUSEPORT), so the kernel spreads connections over the cores, and serves its
//! connections to completion: `connection` reads frames, `handlers` answers them.
//! What the shards share is immutable (`Broker`).

mod admin;
mod connection;
mod errors;
#[doc(hidden)] // public for benches/hot_paths.rs only
pub mod fetch_response;
mod fetch_session;
mod frame;
mod handlers;
#[doc(hidden)] // for benches/hot_paths.rs
pub use handlers::decode_request;
mod versions;

use crate::config::{BrokerConfig, ConfigError};
use crate::io;
use crate::shard::topics::TopicTable;
use crate::shard::{MESH_CHANNEL_CAPACITY, Shard, ShardMessage};
use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The admin HTTP listener's address.
    pub admin: SocketAddr,
    /// The peer listener's address, if the broker has one.
    pub peer: Option<SocketAddr>,
    /// Set once every core accepts Kafka connections (`/ready`).
    pub ready: std::sync::atomic::AtomicBool,
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
    abort_on_panic();
    let data_dir = config.data_dir.display().to_string();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io_error(format!("create data directory {data_dir}")))?;
    let (broker, reservations) = bind(&config, cluster_id(&config.data_dir)?)?;
    let listen = broker.listen;
    let mut topics = TopicTable::load(&config.data_dir).map_err(|e| ServeError::Shard(e.to_string()))?;
    let internal = [
        (crate::group::OFFSETS_TOPIC, config.groups.offsets_topic_partitions),
        (crate::txn::TRANSACTION_TOPIC, config.transactions.state_topic_partitions),
    ];
    for (name, partitions) in internal {
        topics
            .ensure_internal_topic(name, &config.data_dir, partitions, config.cores)
            .map_err(|e| ServeError::Shard(e.to_string()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).map_err(io_error("install signal handler"))?;
    }
    let cluster = if config.cluster.is_clustered() {
        let peer = broker.peer.map(|peer| advertised_peer(peer, broker.advertised));
        Some(crate::controller::start(&config, broker.advertised, peer).map_err(ServeError::Shard)?)
    } else {
        None
    };
    let (ready, shards_ready) = mpsc::channel::<Result<(), String>>();
    let (cores, spin) = (config.cores, config.spin_before_park);
    let start = ShardStart {
        broker: broker.clone(),
        config: Arc::new(config),
        topics,
        cluster,
        mesh: io::mesh(cores, MESH_CHANNEL_CAPACITY),
        ready,
        stop,
    };
    let shards = std::thread::spawn(move || io::run_sharded(cores, spin, move |_| shard_main(start.clone())));
    for _ in 0..cores {
        match shards_ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(ServeError::Shard(reason)),
            Err(_) => return Err(ServeError::Shard("a shard stopped while starting".into())),
        }
    }
    drop(reservations);
    let admin = broker.admin;
    let peer_line = broker.peer.map(|peer| format!(", peer listener {peer}")).unwrap_or_default();
    broker.ready.store(true, std::sync::atomic::Ordering::Release);
    let mut stdout = std::io::stdout().lock();
    let line = format!(
        "ringmq ready: kafka listener {listen} (advertised {}){peer_line}, admin listener {admin}, {cores} cores, data in {data_dir}",
        broker.advertised
    );
    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).map_err(io_error("write to stdout"))?;
    drop(stdout);
    match shards.join() {
        Ok(result) => result.map_err(io_error("run shards"))?,
        Err(_) => return Err(ServeError::Shard("a shard panicked".into())),
    }
    if let Err(error) = writeln!(std::io::stdout(), "ringmq stopped: every partition log closed") {
        tracing::info!(%error, "stopped (stdout is gone)");
    }
    Ok(())
}

/// What every shard starts from; cloned into each.
#[derive(Clone)]
struct ShardStart {
    broker: Arc<Broker>,
    config: Arc<BrokerConfig>,
    topics: TopicTable,
    /// The controller thread's views of the cluster and line to the active controller; `None`
    /// on a one-node broker.
    cluster: Option<crate::controller::Joined>,
    mesh: io::MeshBuilder<ShardMessage>,
    ready: mpsc::Sender<Result<(), String>>,
    /// Set by SIGTERM or SIGINT.
    stop: Arc<AtomicBool>,
}

async fn shard_main(start: ShardStart) {
    let ShardStart { broker, config, topics, cluster, mesh, ready, stop } = start;
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
    let stopping = io::Latch::default();
    if id == 0 {
        match io::Listener::bind(broker.admin) {
            Ok(admin) => {
                io::spawn_detached(admin::serve(admin, shard.clone(), broker.clone(), stopping.clone()))
            }
            Err(error) => {
                let _main_thread_reports_it =
                    ready.send(Err(format!("admin listener on {}: {error}", broker.admin)));
                return;
            }
        }
    }
    if let Some(address) = broker.peer {
        match io::Listener::bind(address) {
            Ok(peers) => {
                io::spawn_detached(serve_peers(peers, broker.clone(), shard.clone(), stopping.clone()))
            }
            Err(error) => {
                let _main_thread_reports_it = ready.send(Err(format!("peer listener on {address}: {error}")));
                return;
            }
        }
    }
    if let Some(joined) = cluster {
        shard.set_controller(joined.controller);
        io::spawn_detached(follow_cluster(shard.clone(), joined.views));
        io::spawn_detached(watch_followers(shard.clone(), stopping.clone()));
    }
    let _main_thread_waits = ready.send(Ok(()));
    io::spawn_detached(apply_retention(shard.clone(), stopping.clone()));
    io::spawn_detached(abort_timed_out_transactions(shard.clone(), stopping.clone()));
    io::spawn_detached(watch_for_stop(shard.clone(), stop, stopping.clone()));
    let connections = Connections::default();
    while let Some(stream) = next_connection(&listener, &stopping, "kafka").await {
        let open = connections.opened();
        let (broker, shard, stopping) = (broker.clone(), shard.clone(), stopping.clone());
        io::spawn_detached(async move {
            connection::serve(stream, broker, shard, stopping).await;
            drop(open);
        });
    }
    drop(listener);
    futures_lite::future::or(connections.all_closed(), io::sleep(SHUTDOWN_DRAIN_MAX)).await;
    shard.close_logs().await;
}

/// Reserves the Kafka, admin and peer listeners' addresses (a port 0 becomes the one the
/// system chose) until every shard listens on them: the broker as the shards know it, and
/// the reservations.
fn bind(
    config: &BrokerConfig,
    cluster_id: String,
) -> Result<(Arc<Broker>, Vec<socket2::Socket>), ServeError> {
    let (reservation, listen) =
        io::reserve_address(config.listen).map_err(io_error(format!("bind {}", config.listen)))?;
    let (admin_reservation, admin) = io::reserve_address(config.admin_listen)
        .map_err(io_error(format!("bind the admin listener {}", config.admin_listen)))?;
    let mut reservations = vec![reservation, admin_reservation];
    let peer = match config.cluster.peer_listen {
        Some(address) => {
            let (reservation, bound) = io::reserve_address(address)
                .map_err(io_error(format!("bind the peer listener {address}")))?;
            reservations.push(reservation);
            Some(bound)
        }
        None => None,
    };
    let broker = Arc::new(Broker {
        node_id: config.node_id,
        cluster_id,
        listen,
        advertised: config.advertised(listen),
        request_bytes_max: config.socket_request_max_bytes,
        idle_timeout: config.connections_max_idle,
        admin,
        peer,
        ready: std::sync::atomic::AtomicBool::new(false),
    });
    Ok((broker, reservations))
}

/// Where other brokers are told to reach the peer listener bound at `peer`: its own address,
/// or the advertised Kafka host when it listens on every interface.
fn advertised_peer(peer: SocketAddr, advertised: SocketAddr) -> SocketAddr {
    if peer.ip().is_unspecified() { SocketAddr::new(advertised.ip(), peer.port()) } else { peer }
}

/// Serves other brokers on the peer listener: the same Kafka protocol as clients speak.
async fn serve_peers(listener: io::Listener, broker: Arc<Broker>, shard: Rc<Shard>, stopping: io::Latch) {
    while let Some(stream) = next_connection(&listener, &stopping, "peer").await {
        crate::metrics::count(|c| c.peer_connections_accepted += 1);
        let (broker, shard, stopping) = (broker.clone(), shard.clone(), stopping.clone());
        io::spawn_detached(connection::serve(stream, broker, shard, stopping));
    }
}

type ClusterViews = tokio::sync::watch::Receiver<Option<crate::controller::ClusterView>>;

/// How soon a view of the cluster not wholly applied is tried again.
const VIEW_RETRY: Duration = Duration::from_secs(1);

/// Copies each newer view of the cluster into this core's own state; a view not wholly
/// applied is tried again after a second, or as soon as a newer one comes.
async fn follow_cluster(shard: Rc<Shard>, mut views: ClusterViews) {
    loop {
        // Copied out first: the watch's lock must not be held while the view is applied.
        let view = views.borrow_and_update().clone();
        let applied = match view {
            Some(view) => shard.follow(view).await,
            None => true,
        };
        if applied {
            if views.changed().await.is_err() {
                return;
            }
        } else {
            let retry = async {
                io::sleep(VIEW_RETRY).await;
                false
            };
            let stopped = futures_lite::future::or(async { views.changed().await.is_err() }, retry).await;
            if stopped {
                // No newer view will come; keep trying this one.
                io::sleep(VIEW_RETRY).await;
            }
        }
    }
}

/// Drops followers that stopped catching up from the in-sync replicas of the partitions this
/// shard leads, checking four times per `replica_lag_time_max_ms`, until the stop.
async fn watch_followers(shard: Rc<Shard>, stopping: io::Latch) {
    let every = (shard.config().cluster.replica_lag_max / 4).max(Duration::from_millis(100));
    while !stopping.is_set() {
        futures_lite::future::or(io::sleep(every), stopping.wait()).await;
        shard.shrink_lagging_isrs();
    }
}

/// Applies retention (and expires and compacts group offsets) on this shard every `log_retention_check_interval_ms` until the stop.
async fn apply_retention(shard: Rc<Shard>, stopping: io::Latch) {
    let interval = shard.config().retention_check_interval;
    while !stopping.is_set() {
        futures_lite::future::or(io::sleep(interval), stopping.wait()).await;
        if !stopping.is_set() {
            shard.enforce_retention().await;
            shard.groups().maintain().await;
            shard.txns().maintain().await;
        }
    }
}

/// Aborts the transactions on this shard that outlived their timeout, every
/// `transaction_abort_timed_out_transaction_cleanup_interval_ms` until the stop.
async fn abort_timed_out_transactions(shard: Rc<Shard>, stopping: io::Latch) {
    let interval = shard.config().transactions.abort_check_interval;
    while !stopping.is_set() {
        futures_lite::future::or(io::sleep(interval), stopping.wait()).await;
        if !stopping.is_set() {
            shard.txns().abort_timed_out(&shard);
        }
    }
}

/// The next connection `listener` accepts on this core, or `None` once the broker stops.
async fn next_connection(listener: &io::Listener, stopping: &io::Latch, name: &str) -> Option<io::Stream> {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopping.wait().await;
            None
        })
        .await;
        match accepted? {
            Ok(stream) => return Some(stream),
            Err(error) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(listener = name, %error, "accept failed");
                io::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How long a graceful stop waits for in-flight requests before closing the logs anyway.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

/// Turns the process-wide stop flag (set by a signal handler, which can do nothing else) into
/// this shard's latch. In a cluster, shard 0 first takes the broker out of it (Kafka's
/// controlled shutdown), so clients and coordinators move on at once and a restart is not
/// refused as a second process with this node id.
async fn watch_for_stop(shard: Rc<Shard>, stop: Arc<AtomicBool>, stopping: io::Latch) {
    while !stop.load(Ordering::Relaxed) {
        io::sleep(Duration::from_millis(50)).await;
    }
    if shard.id() == 0
        && let Some(controller) = shard.controller()
    {
        controller.leave().await;
    }
    stopping.set();
}

/// The open connections of one shard, so a graceful stop can wait for them.
#[derive(Default)]
struct Connections {
    open: Rc<Cell<usize>>,
    closed: io::Signal,
}

struct OpenConnection {
    open: Rc<Cell<usize>>,
    closed: io::Signal,
}

impl Connections {
    fn opened(&self) -> OpenConnection {
        self.open.set(self.open.get() + 1);
        OpenConnection { open: self.open.clone(), closed: self.closed.clone() }
    }

    async fn all_closed(&self) {
        while self.open.get() > 0 {
            self.closed.wait().await;
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.set(self.open.get() - 1);
        self.closed.notify();
    }
}

/// A panic is a bug; a broker with one core dead would keep its port (SO_REUSEPORT) and
/// swallow the connections the kernel gives that core. Better to exit and be restarted.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
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
