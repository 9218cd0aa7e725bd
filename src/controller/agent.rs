//! The broker's side of the quorum: registers this broker, heartbeats every
//! `broker_heartbeat_interval_ms`, follows the active controller when told it moved, and
//! publishes every newer metadata image it is sent to the shards.

use super::ClusterView;
use super::network::Peer;
use super::wire::{BrokerReply, BrokerRequest, Request, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
    published: watch::Sender<Option<ClusterView>>,
}

/// How long to wait before asking again after no controller answered.
const RETRY_AFTER: Duration = Duration::from_millis(100);

impl Agent {
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
            peers: HashMap::new(),
            target: 0,
            epoch: None,
            known: 0,
            interval,
            published,
        }
    }

    pub async fn run(mut self) {
        loop {
            let pause = self.exchange().await;
            tokio::time::sleep(pause).await;
        }
    }

    /// One registration or heartbeat; returns how long to wait before the next.
    async fn exchange(&mut self) -> Duration {
        let identity = &self.identity;
        let request = Request::Broker(match self.epoch {
            None => BrokerRequest::Register {
                id: identity.id,
                incarnation: self.incarnation,
                host: identity.host.clone(),
                port: identity.port,
                rack: identity.rack.clone(),
            },
            Some(epoch) => BrokerRequest::Heartbeat { id: identity.id, epoch, known: self.known },
        });
        let (id, addr) = self.controllers[self.target % self.controllers.len()].clone();
        let peer = self.peers.entry(id).or_insert_with(|| Peer::new(addr));
        match peer.call(&request, self.interval).await {
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
                let controller_moved =
                    self.published.borrow().as_ref().is_some_and(|view| view.controller != controller);
                if let Some(image) = image {
                    self.known = image.applied;
                    self.published.send_replace(Some(ClusterView { image: Arc::new(image), controller }));
                } else if controller_moved {
                    self.published.send_modify(|view| {
                        if let Some(view) = view {
                            view.controller = controller;
                        }
                    });
                }
                self.interval
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
