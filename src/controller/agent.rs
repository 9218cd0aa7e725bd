//! The broker's side of the quorum: registers this broker, heartbeats every
//! `broker_heartbeat_interval_ms`, follows the active controller when told it moved, and
//! publishes every newer metadata image it is sent to the shards.

use super::ClusterView;
use super::network::Peer;
use super::state::{Image, Registration};
use super::topics::{Refusal, TopicChange};
use super::wire::{BrokerReply, BrokerRequest, Request as WireRequest, Response};
use std::collections::HashMap;
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

/// How long a topic change may wait for an active controller, at most; heartbeats wait
/// meanwhile, so never more than half the broker's session.
const CHANGE_TIMEOUT_MAX: Duration = Duration::from_secs(15);

/// Who this broker is, as it registers.
pub struct Identity {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

pub struct Agent {
    identity: Identity,
    incarnation: [u8; 16],
    controllers: Vec<(i32, String)>,
    peers: HashMap<i32, Peer>,
    /// The controller to ask next: the known leader, or the next voter in turn.
    target: usize,
    epoch: Option<u64>,
    known: u64,
    interval: Duration,
    change_timeout: Duration,
    published: watch::Sender<Option<ClusterView>>,
}

/// How long to wait before asking again after no controller answered.
const RETRY_AFTER: Duration = Duration::from_millis(100);

impl Agent {
    /// `interval` between heartbeats, within a session of `session`.
    pub fn new(
        identity: Identity,
        controllers: Vec<(i32, String)>,
        (interval, session): (Duration, Duration),
        published: watch::Sender<Option<ClusterView>>,
    ) -> Agent {
        Agent {
            identity,
            incarnation: *uuid::Uuid::new_v4().as_bytes(),
            controllers,
            peers: HashMap::new(),
            target: 0,
            epoch: None,
            known: 0,
            interval,
            change_timeout: CHANGE_TIMEOUT_MAX.min(session / 2),
            published,
        }
    }

    /// Heartbeats, and forwards the shards' topic changes, until the process ends.
    pub async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut next_beat = Instant::now();
        loop {
            // A heartbeat may be held by the controller for up to an interval (a long poll); a
            // shard's request does not wait for it: the heartbeat is dropped (its connection
            // closed) and sent again after.
            let request = {
                let beat = async {
                    tokio::time::sleep_until(next_beat).await;
                    self.exchange().await
                };
                tokio::select! {
                    pause = beat => {
                        next_beat = Instant::now() + pause;
                        None
                    }
                    Some(request) = requests.recv() => Some(request),
                }
            };
            match request {
                None => {}
                Some(Request::Change(request)) => {
                    let answer = self.change(request.change).await;
                    // The asking request may have given up.
                    drop(request.reply.send(answer));
                }
                Some(Request::Sync(reply)) => {
                    let image = self.sync().await;
                    let _asker_may_be_gone = reply.send(image);
                }
                Some(Request::Leave(reply)) => {
                    self.leave().await;
                    let _stopping_anyway = reply.send(());
                    // Stopping: no more heartbeats, which would register the broker again.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Asks the active controller for `change`, following it if it moves.
    async fn change(&mut self, change: TopicChange) -> Result<Arc<Image>, Refusal> {
        let request = WireRequest::Broker(BrokerRequest::Change(change));
        match self.ask_controller(&request, self.change_timeout).await {
            Some(BrokerReply::Changed { controller, image }) => Ok(self.publish(image, controller)),
            Some(BrokerReply::Refused(refusal)) => Err(refusal),
            _ => Err(Refusal::Unavailable("no active controller answered in time".into())),
        }
    }

    /// A heartbeat the controller answers at once, with its image if newer than this broker's;
    /// the newest image this broker has after it.
    async fn sync(&mut self) -> Option<Arc<Image>> {
        if let Some(epoch) = self.epoch {
            let request = WireRequest::Broker(BrokerRequest::Heartbeat {
                id: self.identity.id,
                epoch,
                known: self.known,
                wait_ms: 0,
            });
            if let Some(BrokerReply::Accepted { image: Some(image), controller, .. }) =
                self.ask_controller(&request, self.interval).await
            {
                self.publish(image, controller);
            }
        }
        self.published.borrow().as_ref().map(|view| view.image.clone())
    }

    /// Has the active controller fence this broker now.
    async fn leave(&mut self) {
        let Some(epoch) = self.epoch else { return };
        let request = WireRequest::Broker(BrokerRequest::Unregister { id: self.identity.id, epoch });
        match self.ask_controller(&request, LEAVE_TIMEOUT).await {
            Some(BrokerReply::Unregistered) => tracing::info!(broker = self.identity.id, "left the cluster"),
            other => tracing::warn!(
                broker = self.identity.id,
                ?other,
                "the controller did not take the broker out"
            ),
        }
    }

    /// Sends `request` to the active controller, following it if it moves, until it answers
    /// with anything but "not the controller" or `timeout` passes.
    async fn ask_controller(&mut self, request: &WireRequest, timeout: Duration) -> Option<BrokerReply> {
        let deadline = Instant::now() + timeout;
        loop {
            let (id, addr) = self.controllers[self.target % self.controllers.len()].clone();
            let peer = self.peers.entry(id).or_insert_with(|| Peer::new(addr));
            let wait = deadline.saturating_duration_since(Instant::now());
            let pause = match peer.call(request, wait).await {
                Ok(Response::Broker(BrokerReply::NotController { leader })) => self.next_controller(leader),
                Ok(Response::Broker(reply)) => return Some(reply),
                _ => self.next_controller(None),
            };
            if Instant::now() + pause >= deadline {
                return None;
            }
            tokio::time::sleep(pause).await;
        }
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

    /// One registration or heartbeat; returns how long to wait before the next.
    async fn exchange(&mut self) -> Duration {
        let identity = &self.identity;
        let request = WireRequest::Broker(match self.epoch {
            None => BrokerRequest::Register(Registration {
                id: identity.id,
                incarnation: self.incarnation,
                host: identity.host.clone(),
                port: identity.port,
                rack: identity.rack.clone(),
            }),
            Some(epoch) => BrokerRequest::Heartbeat {
                id: identity.id,
                epoch,
                known: self.known,
                wait_ms: u32::try_from(self.interval.as_millis()).unwrap_or(u32::MAX),
            },
        });
        let (id, addr) = self.controllers[self.target % self.controllers.len()].clone();
        let peer = self.peers.entry(id).or_insert_with(|| Peer::new(addr));
        // The controller may hold a heartbeat an interval; allow it that and an interval more.
        match peer.call(&request, 2 * self.interval).await {
            Ok(Response::Broker(reply)) => self.follow(reply),
            Ok(other) => {
                tracing::warn!(controller = id, ?other, "unexpected controller answer");
                self.next_controller(None)
            }
            Err(error) => {
                tracing::debug!(controller = id, %error, "controller unreachable");
                self.next_controller(None)
            }
        }
    }

    fn follow(&mut self, reply: BrokerReply) -> Duration {
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
                match image {
                    Some(image) => drop(self.publish(image, controller)),
                    None => self.publish_controller(controller),
                }
                // The controller held the heartbeat until something changed or an interval
                // passed: the next one goes at once.
                Duration::ZERO
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
