//! Controller connections: the client side openraft uses to reach the other voters (one
//! connection per peer, reopened after a failure), and the listener that answers them and the
//! brokers.

use super::TypeConfig;
use super::liveness::Registry;
use super::machine;
use super::wire::{self, Request, Response};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, Snapshot, Vote};
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// A connection to one controller or broker-facing controller address.
pub struct Peer {
    addr: String,
    stream: Option<TcpStream>,
}

impl Peer {
    pub fn new(addr: String) -> Peer {
        Peer { addr, stream: None }
    }

    /// Sends `request` and waits up to `ttl` for the answer; a failure drops the connection.
    pub async fn call(&mut self, request: &Request, ttl: Duration) -> std::io::Result<Response> {
        let answer = match tokio::time::timeout(ttl, self.exchange(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{} did not answer", self.addr),
            )),
        };
        // After a failure, or an answer from a node that could not take the message (it is
        // stopping), the next call opens a new connection.
        if matches!(answer, Err(_) | Ok(Response::Failed(_))) {
            self.stream = None;
        }
        answer
    }

    /// The connection is held by the exchange and given back only once the answer is read: a
    /// call abandoned midway (a caller's timeout) closes it, so a late answer can never be
    /// taken for the next request's.
    async fn exchange(&mut self, request: &Request) -> std::io::Result<Response> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(&self.addr).await?;
                stream.set_nodelay(true)?;
                stream
            }
        };
        wire::write_frame(&mut stream, request).await?;
        let answer = wire::read_frame(&mut stream)
            .await?
            .ok_or_else(|| wire::invalid("the controller closed the connection"))?;
        self.stream = Some(stream);
        Ok(answer)
    }
}

/// Opens a `Peer` for each voter openraft replicates to.
pub struct Peers;

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = Peer;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> Peer {
        Peer::new(node.addr.clone())
    }
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

fn unexpected<E: std::error::Error>(response: &Response) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&wire::invalid(&format!("unexpected answer {response:?}"))))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let response = self.call(&wire::append_request_w(&rpc), option.hard_ttl()).await;
        match response.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))? {
            Response::Appended(appended) => Ok(wire::appended(&appended)),
            other => Err(unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        _rpc: openraft::raft::InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<openraft::raft::InstallSnapshotResponse<u64>, InstallSnapshotError> {
        // With `generic-snapshot-data` openraft sends snapshots whole, by `full_snapshot`.
        Err(RPCError::Network(NetworkError::new(&wire::invalid("snapshots are sent whole"))))
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>> {
        let response = self.call(&wire::vote_request_w(&rpc), option.hard_ttl()).await;
        match response.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))? {
            Response::Voted { vote, granted, last } => Ok(wire::vote_response(&vote, granted, last.as_ref())),
            other => Err(unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let (meta, data) = machine::to_send(&snapshot);
        let request = Request::Snapshot { vote: wire::vote_w(&vote), meta, data };
        let response = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            response = self.call(&request, option.hard_ttl()) => response,
        };
        match response.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))? {
            Response::Installed { vote } => Ok(SnapshotResponse::new(wire::vote(&vote))),
            other => Err(StreamingError::Network(NetworkError::new(&wire::invalid(&format!(
                "unexpected answer {other:?}"
            ))))),
        }
    }
}

/// Answers voters and brokers on `listener` until the process ends.
pub async fn serve(listener: TcpListener, raft: Raft<TypeConfig>, registry: Rc<RefCell<Registry>>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "controller accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (raft, registry) = (raft.clone(), registry.clone());
        tokio::task::spawn_local(async move {
            if let Err(error) = answer(stream, raft, registry).await {
                tracing::debug!(%error, "controller connection closed");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    raft: Raft<TypeConfig>,
    registry: Rc<RefCell<Registry>>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    while let Some(request) = wire::read_frame::<Request, _>(&mut stream).await? {
        let response = match request {
            Request::Broker(request) => Response::Broker(Registry::answer(&registry, &raft, request).await),
            raft_request => answer_raft(&raft, raft_request).await,
        };
        wire::write_frame(&mut stream, &response).await?;
    }
    Ok(())
}

async fn answer_raft(raft: &Raft<TypeConfig>, request: Request) -> Response {
    let failed = |e: &dyn std::fmt::Display| Response::Failed(e.to_string());
    match request {
        Request::Append { .. } => match wire::append_request(&request) {
            Some(append) => match raft.append_entries(append).await {
                Ok(appended) => Response::Appended(wire::appended_w(&appended)),
                Err(error) => failed(&error),
            },
            None => failed(&"not an append"),
        },
        Request::Vote { vote, last } => {
            let request =
                VoteRequest { vote: wire::vote(&vote), last_log_id: last.as_ref().map(wire::log_id) };
            match raft.vote(request).await {
                Ok(answer) => Response::Voted {
                    vote: wire::vote_w(&answer.vote),
                    granted: answer.vote_granted,
                    last: answer.last_log_id.as_ref().map(wire::log_id_w),
                },
                Err(error) => failed(&error),
            }
        }
        Request::Snapshot { vote, meta, data } => {
            match raft.install_full_snapshot(wire::vote(&vote), machine::received(&meta, data)).await {
                Ok(answer) => Response::Installed { vote: wire::vote_w(&answer.vote) },
                Err(error) => failed(&error),
            }
        }
        Request::Broker(_) => failed(&"a broker request"),
    }
}
