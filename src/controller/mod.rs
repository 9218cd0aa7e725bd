//! The controller quorum and this broker's membership in it.
//!
//! A cluster's metadata (today: its brokers and their liveness) lives in a Raft log kept by
//! the voters named in `controller_quorum_voters`, through openraft. Each node runs one
//! controller thread of its own, apart from the shards: a single-threaded tokio executor, as
//! openraft is built on tokio. On a voter it runs the Raft node (`log_store`, `machine`,
//! `network`) and the broker sessions of the active controller (`liveness`); on every node
//! it runs the agent that registers the broker and heartbeats (`agent`). The agent hands each
//! newer image to the shards through a watch channel, which each shard copies into its own
//! state: nothing on the request path reads shared memory.
//!
//! Voters bootstrap as KRaft's static quorum does: every voter starts with the same member
//! list and initializes the log with it if the log is empty, so any majority can elect the
//! first leader.

mod agent;
mod liveness;
mod log_store;
mod machine;
mod network;
pub mod state;
pub mod topics;
mod wire;

use crate::config::BrokerConfig;
use openraft::{BasicNode, Raft};
use state::{Command, Image, Outcome};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use topics::{Refusal, TopicChange};

openraft::declare_raft_types!(
    /// The controller log's types: metadata commands in, their outcomes out.
    pub TypeConfig:
        D = Command,
        R = Outcome,
);

/// What a broker knows of its cluster: the newest metadata image it was sent, and the node
/// that sent it (the active controller).
#[derive(Clone, Debug)]
pub struct ClusterView {
    pub image: Arc<Image>,
    pub controller: i32,
}

/// How often the Raft leader heartbeats its followers, and how long a follower waits without
/// one before it stands for election (a random time in the range), as KRaft's defaults.
const RAFT_HEARTBEAT: Duration = Duration::from_millis(200);
const ELECTION_TIMEOUT: (Duration, Duration) = (Duration::from_millis(1000), Duration::from_millis(2000));

/// A broker's line to the active controller, for changes clients ask for.
#[derive(Clone)]
pub struct ControllerHandle {
    changes: mpsc::UnboundedSender<agent::Request>,
}

impl ControllerHandle {
    /// Asks the active controller for `change`; answers the image that has it applied.
    pub async fn change(&self, change: TopicChange) -> Result<Arc<Image>, Refusal> {
        let stopped = || Refusal::Unavailable("the controller thread stopped".into());
        let (reply, answer) = oneshot::channel();
        let request = agent::Request::Change(agent::ChangeRequest { change, reply });
        self.changes.send(request).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// A block of producer ids no other broker is given: [first, end).
    pub async fn allocate_producer_ids(&self, broker: i32) -> Result<(i64, i64), Refusal> {
        let image = self.change(TopicChange::AllocateProducerIds { broker }).await?;
        // Blocks for this broker are asked one at a time, so the image shows this one.
        let first =
            image.producer_id_blocks.get(&broker).copied().ok_or_else(|| {
                Refusal::Unavailable("the controller's image lacks the block it gave".into())
            })?;
        Ok((first, first + state::PRODUCER_ID_BLOCK))
    }

    /// The active controller's newest image, fetched now (the one this broker has if the
    /// controller does not answer).
    pub async fn sync(&self) -> Option<Arc<Image>> {
        let (reply, answer) = oneshot::channel();
        self.changes.send(agent::Request::Sync(reply)).ok()?;
        answer.await.ok()?
    }

    /// Takes this broker out of the cluster for a graceful stop: the active controller fences
    /// it now rather than when its session would expire. Gives up after a while (the session
    /// then expires as after a crash).
    pub async fn leave(&self) {
        let (reply, answer) = oneshot::channel();
        if self.changes.send(agent::Request::Leave(reply)).is_ok() {
            // Whether or not the controller answered, the broker stops.
            let _answered = answer.await;
        }
    }
}

/// What the shards get from the controller thread.
#[derive(Clone)]
pub struct Joined {
    /// Each newer view of the cluster.
    pub views: watch::Receiver<Option<ClusterView>>,
    pub controller: ControllerHandle,
}

/// How long sending a voter a snapshot may take.
const SNAPSHOT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts this node's controller thread. `advertised` is the Kafka address this broker
/// registers, `peer` the address of its peer listener, if it has one.
pub fn start(
    config: &BrokerConfig,
    advertised: SocketAddr,
    peer: Option<SocketAddr>,
) -> Result<Joined, String> {
    let listener = match config.controller_address().map_err(|e| e.to_string())? {
        Some(address) => Some(bind(address)?),
        None => None,
    };
    let (published, view) = watch::channel(None);
    let identity = agent::Identity {
        id: config.node_id,
        host: advertised.ip().to_string(),
        port: advertised.port(),
        rack: config.cluster.rack.clone(),
        peer: peer.map(|peer| (peer.ip().to_string(), peer.port())),
        cores: u16::try_from(config.cores).unwrap_or(u16::MAX),
    };
    let agent = agent::Agent::new(
        identity,
        config.cluster.voters.clone(),
        config.cluster.heartbeat_interval,
        published,
    );
    let voter = listener.map(|listener| Voter {
        listener,
        dir: config.data_dir.join("controller"),
        node_id: config.node_id as u64,
        voters: config.cluster.voters.clone(),
        session_timeout: config.cluster.session_timeout,
        snapshot_entries: config.cluster.snapshot_entries,
        check_every: config.cluster.heartbeat_interval / 2,
    });
    let (started, outcome) = std::sync::mpsc::channel();
    let (changes, asked) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("ringmq-controller".into())
        .spawn(move || run(voter, agent, asked, started))
        .map_err(|e| format!("start the controller thread: {e}"))?;
    outcome.recv().map_err(|_| "the controller thread stopped while starting".to_string())??;
    Ok(Joined { views: view, controller: ControllerHandle { changes } })
}

fn bind(address: SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(address)
        .map_err(|e| format!("bind the controller listener {address}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| format!("controller listener {address}: {e}"))?;
    Ok(listener)
}

/// What a voter runs besides the agent.
struct Voter {
    listener: std::net::TcpListener,
    dir: std::path::PathBuf,
    node_id: u64,
    voters: Vec<(i32, String)>,
    session_timeout: Duration,
    snapshot_entries: u64,
    check_every: Duration,
}

fn run(
    voter: Option<Voter>,
    agent: agent::Agent,
    changes: mpsc::UnboundedReceiver<agent::Request>,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _caller_reports_it = started.send(Err(format!("controller runtime: {error}")));
            return;
        }
    };
    let tasks = tokio::task::LocalSet::new();
    tasks.block_on(&runtime, async move {
        if let Some(voter) = voter {
            match start_voter(voter).await {
                Ok(()) => {}
                Err(reason) => {
                    let _caller_reports_it = started.send(Err(reason));
                    return;
                }
            }
        }
        let _caller_waits = started.send(Ok(()));
        agent.run(changes).await;
    });
}

/// Opens the voter's Raft node, serves its peers and brokers, and fences silent brokers.
async fn start_voter(voter: Voter) -> Result<(), String> {
    let (raft, images) = open_voter(&voter).await?;
    let listener =
        tokio::net::TcpListener::from_std(voter.listener).map_err(|e| format!("controller listener: {e}"))?;
    let registry =
        Rc::new(RefCell::new(liveness::Registry::new(voter.node_id, voter.session_timeout, images)));
    tokio::task::spawn_local(network::serve(listener, raft.clone(), registry.clone()));
    tokio::task::spawn_local(liveness::fence_silent_brokers(registry, raft, voter.check_every));
    Ok(())
}

type Images = watch::Receiver<Arc<Image>>;

/// Opens the voter's log and state machine and starts its Raft node, initializing the log
/// with the quorum's members if it is empty.
async fn open_voter(voter: &Voter) -> Result<(Raft<TypeConfig>, Images), String> {
    let config = openraft::Config {
        cluster_name: "ringmq".into(),
        heartbeat_interval: RAFT_HEARTBEAT.as_millis() as u64,
        election_timeout_min: ELECTION_TIMEOUT.0.as_millis() as u64,
        election_timeout_max: ELECTION_TIMEOUT.1.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(voter.snapshot_entries),
        // Half a snapshot interval of log stays, so a follower a little behind catches up from
        // the log; one further behind is sent the snapshot.
        max_in_snapshot_log_to_keep: voter.snapshot_entries / 2,
        // A whole snapshot goes in one message, and the receiver syncs it to disk.
        install_snapshot_timeout: SNAPSHOT_SEND_TIMEOUT.as_millis() as u64,
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(|e| format!("controller settings: {e}"))?);
    let shown = voter.dir.display();
    let log = log_store::LogStore::open(&voter.dir).map_err(|e| format!("controller log in {shown}: {e}"))?;
    let (image, images) = watch::channel(Arc::new(Image::default()));
    let machine = machine::StateMachine::open(&voter.dir, image)
        .map_err(|e| format!("controller snapshot in {shown}: {e}"))?;
    let raft = Raft::new(voter.node_id, config, network::Peers, log, machine)
        .await
        .map_err(|e| format!("start the controller: {e}"))?;
    let members: BTreeMap<u64, BasicNode> =
        voter.voters.iter().map(|(id, addr)| (*id as u64, BasicNode { addr: addr.clone() })).collect();
    let initialized = raft.is_initialized().await.map_err(|e| format!("controller: {e}"))?;
    if !initialized && let Err(error) = raft.initialize(members).await {
        tracing::debug!(%error, "controller log initialized by another voter");
    }
    Ok((raft, images))
}

#[cfg(test)]
mod tests;
