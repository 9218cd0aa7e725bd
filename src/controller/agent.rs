//! The broker's side of the quorum, as two tasks on the controller thread sharing this broker's
//! standing (`Agent`), each with connections of its own:
//! - heartbeats: registers the broker, then heartbeats (long polls the controller holds up to
//!   `broker_heartbeat_interval_ms`), follows the active controller when told it moved, and
//!   publishes every newer metadata image to the shards;
//! - requests: the shards' topic changes, syncs and the leave of a stopping broker.
//!
//! A shard's request therefore never cuts a heartbeat or a registration short.

use super::ClusterView;
use super::network::Peer;
use super::state::{Image, Registration};
use super::topics::{Refusal, TopicChange};
use super::wire::{BrokerReply, BrokerRequest, Request as WireRequest, Response};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A topic change a shard asks for, and where the answer goes.
pub struct ChangeRequest {
    pub change: TopicChange,
    pub reply: oneshot::Sender<Result<Arc<Image>, Refusal>>,
}

/// What the shards ask of the agent.
pub enum Request {
    Change(ChangeRequest),
    /// The broker is stopping: leave the cluster, then answer.
    Leave(oneshot::Sender<()>),
    /// Fetch the active controller's newest image now; answer with it.
    Sync(oneshot::Sender<Option<Arc<Image>>>),
}

/// How long a stopping broker waits for the controller to take it out.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a topic change may wait for an active controller.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// A sync is answered from the image at hand when another finished this recently.
const SYNC_FRESH: Duration = Duration::from_millis(50);
/// The longest a sync waits for the controller: it holds up a client's request.
const SYNC_TIMEOUT_MAX: Duration = Duration::from_millis(500);

/// Who this broker is, as it registers.
pub struct Identity {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// The peer listener's address, if the broker has one.
    pub peer: Option<(String, u16)>,
    pub cores: u16,
}

/// This broker's standing with the quorum, shared by the agent's two tasks (one thread).
pub struct Agent {
    identity: Identity,
    incarnation: [u8; 16],
    controllers: Vec<(i32, String)>,
    /// The controller to ask next: the known leader, or the next voter in turn.
    target: usize,
    epoch: Option<u64>,
    known: u64,
    interval: Duration,
    published: watch::Sender<Option<ClusterView>>,
    /// The last heartbeat reached the active controller.
    reachable: bool,
    last_sync: Option<Instant>,
    /// The broker is stopping and left the cluster: no more heartbeats or changes.
    left: bool,
}

/// How long to wait before asking again after no controller answered.
const RETRY_AFTER: Duration = Duration::from_millis(100);

type Shared = Rc<RefCell<Agent>>;
type Peers = HashMap<i32, Peer>;

impl Agent {
    /// Heartbeats every `interval` (the longest the controller holds one).
    pub fn new(
        identity: Identity,
        controllers: Vec<(i32, String)>,
        interval: Duration,
        published: watch::Sender<Option<ClusterView>>,
    ) -> Agent {
        Agent {
            identity,
            incarnation: *uuid::Uuid::new_v4().as_bytes(),
            controllers,
            target: 0,
            epoch: None,
            known: 0,
            interval,
            published,
            reachable: false,
            last_sync: None,
            left: false,
        }
    }

    /// Heartbeats, and answers the shards' requests, until the process ends.
    pub async fn run(self, requests: mpsc::UnboundedReceiver<Request>) {
        let agent = Rc::new(RefCell::new(self));
        tokio::task::spawn_local(heartbeats(agent.clone()));
        serve_requests(agent, requests).await;
    }

    fn target_controller(&self) -> (i32, String) {
        self.controllers[self.target % self.controllers.len()].clone()
    }

    /// A registration, or a heartbeat the controller may hold up to `wait`.
    fn heartbeat_request(&self, wait: Duration) -> WireRequest {
        let identity = &self.identity;
        WireRequest::Broker(match self.epoch {
            None => BrokerRequest::Register(Registration {
                id: identity.id,
                incarnation: self.incarnation,
                host: identity.host.clone(),
                port: identity.port,
                rack: identity.rack.clone(),
                peer: identity.peer.clone(),
                cores: identity.cores,
            }),
            Some(epoch) => BrokerRequest::Heartbeat {
                id: identity.id,
                epoch,
                known: self.known,
                wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            },
        })
    }

    fn current_image(&self) -> Option<Arc<Image>> {
        self.published.borrow().as_ref().map(|view| view.image.clone())
    }

    /// Hands a newer image, or news of another active controller, to the shards.
    fn publish(&mut self, image: Image, controller: i32) -> Arc<Image> {
        let image = Arc::new(image);
        if image.applied > self.known {
            self.known = image.applied;
            self.published.send_replace(Some(ClusterView { image: image.clone(), controller }));
        } else {
            self.publish_controller(controller);
        }
        image
    }

    fn publish_controller(&mut self, controller: i32) {
        let moved = self.published.borrow().as_ref().is_some_and(|view| view.controller != controller);
        if moved {
            self.published.send_modify(|view| {
                if let Some(view) = view {
                    view.controller = controller;
                }
            });
        }
    }

    /// Takes a heartbeat's answer; returns the pause before the next. `early`: it came back
    /// well before the interval the controller may hold it.
    fn follow(&mut self, reply: BrokerReply, early: bool) -> Duration {
        match reply {
            BrokerReply::Accepted { epoch, controller, image } => {
                if self.epoch != Some(epoch) {
                    tracing::info!(
                        broker = self.identity.id,
                        epoch,
                        controller,
                        "registered with the controller quorum"
                    );
                }
                self.epoch = Some(epoch);
                let newer = image.is_some();
                match image {
                    Some(image) => drop(self.publish(image, controller)),
                    None => self.publish_controller(controller),
                }
                // The controller held the heartbeat until something changed or an interval
                // passed: the next one goes at once, unless it came back early with nothing
                // new (then it was not held, and heartbeats must not spin).
                if early && !newer { self.interval / 2 } else { Duration::ZERO }
            }
            BrokerReply::NotController { leader } => self.next_controller(leader),
            BrokerReply::StaleEpoch => {
                tracing::info!(broker = self.identity.id, "registration outdated; registering again");
                self.epoch = None;
                Duration::ZERO
            }
            BrokerReply::Duplicate => {
                tracing::warn!(
                    broker = self.identity.id,
                    "another process is registered with this node id; retrying"
                );
                self.interval
            }
            BrokerReply::Changed { .. } | BrokerReply::Refused(_) | BrokerReply::Unregistered => {
                tracing::warn!(broker = self.identity.id, "a change answered a heartbeat");
                self.interval
            }
        }
    }

    /// Turns to `leader` if named, else to the next voter; returns the pause before asking.
    fn next_controller(&mut self, leader: Option<i32>) -> Duration {
        match leader.and_then(|leader| self.controllers.iter().position(|(id, _)| *id == leader)) {
            Some(at) if at != self.target % self.controllers.len() => {
                self.target = at;
                Duration::ZERO
            }
            _ => {
                self.target = (self.target + 1) % self.controllers.len();
                RETRY_AFTER
            }
        }
    }
}

/// Registers, then heartbeats, until the broker leaves.
async fn heartbeats(agent: Shared) {
    let mut peers = Peers::new();
    loop {
        let (request, (id, addr), interval) = {
            let agent = agent.borrow();
            if agent.left {
                return;
            }
            (agent.heartbeat_request(agent.interval), agent.target_controller(), agent.interval)
        };
        let peer = peers.entry(id).or_insert_with(|| Peer::new(addr));
        let sent = Instant::now();
        // The controller may hold a heartbeat an interval; allow it that and an interval more.
        let answer = peer.call(&request, 2 * interval).await;
        let pause = {
            let mut agent = agent.borrow_mut();
            if agent.left {
                return;
            }
            agent.reachable = matches!(answer, Ok(Response::Broker(_)));
            match answer {
                Ok(Response::Broker(reply)) => agent.follow(reply, sent.elapsed() < interval / 2),
                Ok(other) => {
                    tracing::warn!(controller = id, ?other, "unexpected controller answer");
                    agent.next_controller(None)
                }
                Err(error) => {
                    tracing::debug!(controller = id, %error, "controller unreachable");
                    agent.next_controller(None)
                }
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Answers the shards' requests, one at a time.
async fn serve_requests(agent: Shared, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut peers = Peers::new();
    while let Some(request) = requests.recv().await {
        match request {
            Request::Change(request) => {
                let answer = change(&agent, &mut peers, request.change).await;
                // The asking request may have given up.
                drop(request.reply.send(answer));
            }
            Request::Sync(reply) => {
                let image = sync(&agent, &mut peers).await;
                let _asker_may_be_gone = reply.send(image);
            }
            Request::Leave(reply) => {
                leave(&agent, &mut peers).await;
                let _stopping_anyway = reply.send(());
            }
        }
    }
}

/// Asks the active controller for `change`, following it if it moves.
async fn change(agent: &Shared, peers: &mut Peers, change: TopicChange) -> Result<Arc<Image>, Refusal> {
    if agent.borrow().left {
        return Err(Refusal::Unavailable("the broker is stopping".into()));
    }
    let request = WireRequest::Broker(BrokerRequest::Change(change));
    match ask_controller(agent, peers, &request, CHANGE_TIMEOUT).await {
        Some(BrokerReply::Changed { controller, image }) => Ok(agent.borrow_mut().publish(image, controller)),
        Some(BrokerReply::Refused(refusal)) => Err(refusal),
        _ => Err(Refusal::Unavailable("no active controller answered in time".into())),
    }
}

/// The active controller's image if newer than this broker's (a heartbeat answered at once);
/// the newest image this broker has after it. Answered from the image at hand when the broker
/// is not registered, the controller was unreachable at the last heartbeat, or a sync just
/// finished, so a client's request waits little even with the quorum down.
async fn sync(agent: &Shared, peers: &mut Peers) -> Option<Arc<Image>> {
    let (request, timeout) = {
        let agent = agent.borrow();
        let fresh = agent.last_sync.is_some_and(|at| at.elapsed() < SYNC_FRESH);
        if agent.left || agent.epoch.is_none() || !agent.reachable || fresh {
            return agent.current_image();
        }
        (agent.heartbeat_request(Duration::ZERO), SYNC_TIMEOUT_MAX.min(agent.interval))
    };
    let answer = ask_controller(agent, peers, &request, timeout).await;
    let mut agent = agent.borrow_mut();
    if let Some(BrokerReply::Accepted { image: Some(image), controller, .. }) = answer {
        agent.publish(image, controller);
    }
    agent.last_sync = Some(Instant::now());
    agent.current_image()
}

/// Has the active controller fence this broker now; heartbeats stop first, so none can bring
/// the broker back.
async fn leave(agent: &Shared, peers: &mut Peers) {
    let (epoch, id) = {
        let mut agent = agent.borrow_mut();
        agent.left = true;
        (agent.epoch, agent.identity.id)
    };
    let Some(epoch) = epoch else { return };
    let request = WireRequest::Broker(BrokerRequest::Unregister { id, epoch });
    match ask_controller(agent, peers, &request, LEAVE_TIMEOUT).await {
        Some(BrokerReply::Unregistered) => tracing::info!(broker = id, "left the cluster"),
        other => tracing::warn!(broker = id, ?other, "the controller did not take the broker out"),
    }
}

/// Sends `request` to the active controller, following it if it moves, until it answers with
/// anything but "not the controller" or `timeout` passes.
async fn ask_controller(
    agent: &Shared,
    peers: &mut Peers,
    request: &WireRequest,
    timeout: Duration,
) -> Option<BrokerReply> {
    let deadline = Instant::now() + timeout;
    loop {
        let (id, addr) = agent.borrow().target_controller();
        let peer = peers.entry(id).or_insert_with(|| Peer::new(addr));
        let wait = deadline.saturating_duration_since(Instant::now());
        let answer = peer.call(request, wait).await;
        let pause = match answer {
            Ok(Response::Broker(BrokerReply::NotController { leader })) => {
                agent.borrow_mut().next_controller(leader)
            }
            Ok(Response::Broker(reply)) => return Some(reply),
            _ => agent.borrow_mut().next_controller(None),
        };
        if Instant::now() + pause >= deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
    }
}
