//! Broker sessions, kept by the active controller (the Raft leader) in memory, as in KRaft:
//! registrations and heartbeats are answered here; a broker whose heartbeats stop for
//! `broker_session_timeout_ms` is fenced by a log entry. Sessions are not replicated: a new
//! leader starts every registered broker's session afresh, so a broker is never fenced for the
//! time it took to elect one.

use super::TypeConfig;
use super::state::{Command, Image, Outcome};
use super::topics::{self, Refusal, TopicChange};
use super::wire::{BrokerReply, BrokerRequest};
use openraft::Raft;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

struct Session {
    epoch: u64,
    incarnation: [u8; 16],
    seen: Instant,
}

/// How long a held heartbeat waits after the image changes, so one answer carries a run of
/// changes.
const CHANGE_RUN: Duration = Duration::from_millis(5);
/// The longest a heartbeat's answer is held for a newer image, whatever the broker asks.
const HEARTBEAT_WAIT_MAX: Duration = Duration::from_secs(10);

pub struct Registry {
    node_id: u64,
    session_timeout: Duration,
    image: watch::Receiver<Arc<Image>>,
    sessions: HashMap<i32, Session>,
    /// Registrations (broker, epoch) whose broker left by controlled shutdown.
    left: std::collections::HashSet<(i32, u64)>,
}

impl Registry {
    pub fn new(node_id: u64, session_timeout: Duration, image: watch::Receiver<Arc<Image>>) -> Registry {
        Registry { node_id, session_timeout, image, sessions: HashMap::new(), left: Default::default() }
    }

    fn controller(&self) -> i32 {
        self.node_id as i32
    }

    /// Answers a broker: only the leader registers and tracks brokers.
    pub async fn answer(
        this: &Rc<RefCell<Registry>>,
        raft: &Raft<TypeConfig>,
        request: BrokerRequest,
    ) -> BrokerReply {
        let leader = raft.metrics().borrow().current_leader;
        let node_id = this.borrow().node_id;
        if leader != Some(node_id) {
            return BrokerReply::NotController { leader: leader.map(|id| id as i32) };
        }
        match request {
            BrokerRequest::Register(broker) => {
                let (id, incarnation) = (broker.id, broker.incarnation);
                if this.borrow().is_duplicate(id, incarnation) {
                    return BrokerReply::Duplicate;
                }
                let command = Command::Register(broker);
                match write(raft, command).await {
                    Some(Outcome::Registered { epoch }) => {
                        let mut registry = this.borrow_mut();
                        registry.sessions.insert(id, Session { epoch, incarnation, seen: Instant::now() });
                        BrokerReply::Accepted {
                            epoch,
                            controller: registry.controller(),
                            image: Some(registry.image()),
                        }
                    }
                    _ => BrokerReply::NotController { leader: None },
                }
            }
            BrokerRequest::Heartbeat { id, epoch, known, wait_ms } => {
                let wait = Duration::from_millis(u64::from(wait_ms)).min(HEARTBEAT_WAIT_MAX);
                Registry::heartbeat(this, raft, (id, epoch), known, wait).await
            }
            BrokerRequest::Change(change) => Registry::change(this, raft, change).await,
            BrokerRequest::Unregister { id, epoch } => Registry::unregister(this, raft, id, epoch).await,
        }
    }

    /// Fences a stopping broker now, and forgets its session.
    async fn unregister(
        this: &Rc<RefCell<Registry>>,
        raft: &Raft<TypeConfig>,
        id: i32,
        epoch: u64,
    ) -> BrokerReply {
        let image = this.borrow().image();
        let live = image.brokers.get(&id).is_some_and(|broker| broker.epoch == epoch && !broker.fenced);
        if live && write(raft, Command::Fence { id, epoch }).await.is_none() {
            return BrokerReply::NotController { leader: None };
        }
        let mut registry = this.borrow_mut();
        if registry.sessions.get(&id).is_some_and(|session| session.epoch == epoch) {
            registry.sessions.remove(&id);
        }
        // A heartbeat of that registration still in flight must not unfence it. Entries of
        // registrations since replaced are dropped.
        registry.left.insert((id, epoch));
        registry
            .left
            .retain(|(id, epoch)| image.brokers.get(id).is_some_and(|broker| broker.epoch == *epoch));
        tracing::info!(broker = id, epoch, "a broker left the cluster");
        BrokerReply::Unregistered
    }

    async fn change(
        this: &Rc<RefCell<Registry>>,
        raft: &Raft<TypeConfig>,
        change: TopicChange,
    ) -> BrokerReply {
        let image = this.borrow().image();
        let creating = matches!(change, TopicChange::Create { .. });
        let moving = matches!(change, TopicChange::Reassign { .. });
        let name = change.name().to_string();
        let command = match topics::plan(&image, change) {
            Ok(command) => command,
            Err(refusal) => return BrokerReply::Refused(refusal),
        };
        match write(raft, command).await {
            Some(Outcome::Applied) => {
                let registry = this.borrow();
                BrokerReply::Changed { controller: registry.controller(), image: registry.image() }
            }
            // Another change to the same topic was applied first.
            Some(_) if creating => BrokerReply::Refused(Refusal::AlreadyExists(name)),
            // The partition changed meanwhile: its in-sync replicas would all have left.
            Some(_) if moving => BrokerReply::Refused(Refusal::InvalidReplicaAssignment(format!(
                "{name}: no in-sync replica would stay"
            ))),
            Some(_) => BrokerReply::Refused(Refusal::UnknownTopic(name)),
            None => BrokerReply::NotController { leader: None },
        }
    }

    /// Records broker `id`'s heartbeat (at `epoch`) and answers with the image once it is newer
    /// than `known`, or after `wait`.
    async fn heartbeat(
        this: &Rc<RefCell<Registry>>,
        raft: &Raft<TypeConfig>,
        (id, epoch): (i32, u64),
        known: u64,
        wait: Duration,
    ) -> BrokerReply {
        let record = this.borrow().image.borrow().brokers.get(&id).cloned();
        let left = this.borrow().left.contains(&(id, epoch));
        let Some(record) = record.filter(|record| record.epoch == epoch && !left) else {
            return BrokerReply::StaleEpoch;
        };
        this.borrow_mut()
            .sessions
            .insert(id, Session { epoch, incarnation: record.incarnation, seen: Instant::now() });
        if record.fenced && write(raft, Command::Unfence { id, epoch }).await.is_none() {
            return BrokerReply::NotController { leader: None };
        }
        let mut images = this.borrow().image.clone();
        // Nothing is borrowed while waiting; a timeout just answers with nothing new.
        // `wait_for` answers with a guard on the watch's lock: it is dropped here, at the end of
        // this statement, before anything else is awaited (the state machine publishing on this
        // same thread would block on it).
        let waited = tokio::time::timeout(wait, images.wait_for(|image| image.applied > known))
            .await
            .map(|newer| newer.is_ok());
        match waited {
            // The state machine is gone (Raft stopped): not a controller any more.
            Ok(false) => return BrokerReply::NotController { leader: None },
            // Changes often come in runs (a topic and its leaders, several topics): one answer
            // a moment later carries the run.
            Ok(true) => tokio::time::sleep(CHANGE_RUN).await,
            Err(_timed_out) => {}
        }
        let registry = this.borrow();
        let image = registry.image();
        let newer = image.applied > known;
        BrokerReply::Accepted { epoch, controller: registry.controller(), image: newer.then_some(image) }
    }

    fn image(&self) -> Image {
        Image::clone(&self.image.borrow())
    }

    /// Another process with this node id registered and is still heartbeating.
    fn is_duplicate(&self, id: i32, incarnation: [u8; 16]) -> bool {
        let live = self.image.borrow().brokers.get(&id).is_some_and(|record| !record.fenced);
        live && self.sessions.get(&id).is_some_and(|session| {
            session.incarnation != incarnation && session.seen.elapsed() < self.session_timeout
        })
    }

    /// The live brokers whose sessions expired, starting a session for any it has none for.
    fn expired(&mut self) -> Vec<(i32, u64)> {
        let image = self.image.borrow().clone();
        let mut expired = Vec::new();
        for broker in image.live_brokers() {
            let session = self.sessions.entry(broker.id).or_insert(Session {
                epoch: broker.epoch,
                incarnation: broker.incarnation,
                seen: Instant::now(),
            });
            if session.epoch != broker.epoch {
                *session =
                    Session { epoch: broker.epoch, incarnation: broker.incarnation, seen: Instant::now() };
            }
            if session.seen.elapsed() >= self.session_timeout {
                expired.push((broker.id, broker.epoch));
            }
        }
        expired
    }
}

/// Proposes `command`; `None` when this node is not (or stopped being) the leader.
async fn write(raft: &Raft<TypeConfig>, command: Command) -> Option<Outcome> {
    match raft.client_write(command).await {
        Ok(written) => Some(written.data),
        Err(error) => {
            tracing::debug!(%error, "metadata write refused");
            None
        }
    }
}

/// While this node leads, fences brokers whose sessions expire; checks every `period`.
pub async fn fence_silent_brokers(registry: Rc<RefCell<Registry>>, raft: Raft<TypeConfig>, period: Duration) {
    let mut metrics = raft.metrics();
    let mut leader = None;
    loop {
        tokio::time::sleep(period).await;
        let (now_leader, term) = {
            let metrics = metrics.borrow_and_update();
            (metrics.current_leader, metrics.current_term)
        };
        if now_leader != leader {
            tracing::info!(leader = ?now_leader, term, "the controller quorum's leader changed");
            leader = now_leader;
        }
        let leading = leader == Some(registry.borrow().node_id);
        if !leading {
            registry.borrow_mut().sessions.clear();
            continue;
        }
        let unnamed = registry.borrow().image.borrow().cluster_id.is_empty();
        if unnamed {
            write(&raft, Command::NameCluster { id: uuid::Uuid::new_v4().simple().to_string() }).await;
        }
        let expired = registry.borrow_mut().expired();
        for (id, epoch) in expired {
            tracing::info!(broker = id, epoch, "fencing a broker that stopped heartbeating");
            write(&raft, Command::Fence { id, epoch }).await;
        }
    }
}
