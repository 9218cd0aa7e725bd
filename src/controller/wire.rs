//! How controllers and brokers talk, and how the controller log is written: rkyv mirrors of the
//! Raft messages (openraft's own types carry serde, not rkyv), and frames of
//! `[length u32][crc32 u32][rkyv body]`, little endian, bounded and checked on read.

use super::TypeConfig;
use super::state::{Command, Image, Registration};
use super::topics::{Refusal, TopicChange};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote,
};
use std::collections::{BTreeMap, BTreeSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest frame either side accepts: a snapshot of a large cluster fits many times over.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LogIdW {
    pub term: u64,
    pub node: u64,
    pub index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct VoteW {
    pub term: u64,
    pub node: u64,
    pub committed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MembershipW {
    /// The voter sets: one, or two during a joint change.
    pub configs: Vec<Vec<u64>>,
    /// Every node's controller address.
    pub nodes: Vec<(u64, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum PayloadW {
    Blank,
    Normal(Command),
    Membership(MembershipW),
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EntryW {
    pub log_id: LogIdW,
    pub payload: PayloadW,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotMetaW {
    pub last: Option<LogIdW>,
    pub membership_log: Option<LogIdW>,
    pub membership: MembershipW,
    pub id: String,
}

/// What a broker sends the controller quorum.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum BrokerRequest {
    Register(Registration),
    /// `known` is the version of the image the broker holds; the controller may hold the
    /// answer up to `wait_ms` for a newer one (a long poll, so changes reach brokers at once).
    Heartbeat {
        id: i32,
        epoch: u64,
        known: u64,
        wait_ms: u32,
    },
    /// A change to the topics, on behalf of a client.
    Change(TopicChange),
    /// The broker registered at `epoch` is stopping (Kafka's controlled shutdown).
    Unregister {
        id: i32,
        epoch: u64,
    },
}

/// The quorum's answer to a broker.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum BrokerReply {
    /// Registered or alive at `epoch`; `image` is sent when newer than the broker's.
    Accepted {
        epoch: u64,
        controller: i32,
        image: Option<Image>,
    },
    /// Ask the leader instead (if one is known).
    NotController {
        leader: Option<i32>,
    },
    /// The epoch is no longer this broker's registration: register again.
    StaleEpoch,
    /// Another process with this node id is alive.
    Duplicate,
    /// The change is in the log and applied: the image with it.
    Changed {
        controller: i32,
        image: Image,
    },
    Refused(Refusal),
    /// The stopping broker is fenced.
    Unregistered,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Request {
    Append { vote: VoteW, prev: Option<LogIdW>, entries: Vec<EntryW>, commit: Option<LogIdW> },
    Vote { vote: VoteW, last: Option<LogIdW> },
    Snapshot { vote: VoteW, meta: SnapshotMetaW, data: Vec<u8> },
    Broker(BrokerRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Response {
    Appended(AppendedW),
    Voted {
        vote: VoteW,
        granted: bool,
        last: Option<LogIdW>,
    },
    Installed {
        vote: VoteW,
    },
    Broker(BrokerReply),
    /// The receiving Raft node could not take the message (it is stopping).
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum AppendedW {
    Success,
    Partial(Option<LogIdW>),
    Conflict,
    HigherVote(VoteW),
}

pub fn log_id_w(id: &LogId<u64>) -> LogIdW {
    LogIdW { term: id.leader_id.term, node: id.leader_id.node_id, index: id.index }
}

pub fn log_id(w: &LogIdW) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(w.term, w.node), w.index)
}

pub fn vote_w(vote: &Vote<u64>) -> VoteW {
    VoteW { term: vote.leader_id.term, node: vote.leader_id.node_id, committed: vote.committed }
}

pub fn vote(w: &VoteW) -> Vote<u64> {
    if w.committed { Vote::new_committed(w.term, w.node) } else { Vote::new(w.term, w.node) }
}

pub fn membership_w(membership: &Membership<u64, BasicNode>) -> MembershipW {
    MembershipW {
        configs: membership.get_joint_config().iter().map(|set| set.iter().copied().collect()).collect(),
        nodes: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
    }
}

pub fn membership(w: &MembershipW) -> Membership<u64, BasicNode> {
    let configs: Vec<BTreeSet<u64>> = w.configs.iter().map(|set| set.iter().copied().collect()).collect();
    let nodes: BTreeMap<u64, BasicNode> =
        w.nodes.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
    Membership::new(configs, nodes)
}

pub fn stored_membership(log: Option<LogIdW>, w: &MembershipW) -> StoredMembership<u64, BasicNode> {
    StoredMembership::new(log.as_ref().map(log_id), membership(w))
}

pub fn entry_w(entry: &Entry<TypeConfig>) -> EntryW {
    let payload = match &entry.payload {
        EntryPayload::Blank => PayloadW::Blank,
        EntryPayload::Normal(command) => PayloadW::Normal(command.clone()),
        EntryPayload::Membership(m) => PayloadW::Membership(membership_w(m)),
    };
    EntryW { log_id: log_id_w(&entry.log_id), payload }
}

pub fn entry(w: &EntryW) -> Entry<TypeConfig> {
    let payload = match &w.payload {
        PayloadW::Blank => EntryPayload::Blank,
        PayloadW::Normal(command) => EntryPayload::Normal(command.clone()),
        PayloadW::Membership(m) => EntryPayload::Membership(membership(m)),
    };
    Entry { log_id: log_id(&w.log_id), payload }
}

pub fn append_request(w: &Request) -> Option<AppendEntriesRequest<TypeConfig>> {
    match w {
        Request::Append { vote: v, prev, entries, commit } => Some(AppendEntriesRequest {
            vote: vote(v),
            prev_log_id: prev.as_ref().map(log_id),
            entries: entries.iter().map(entry).collect(),
            leader_commit: commit.as_ref().map(log_id),
        }),
        _ => None,
    }
}

pub fn append_request_w(request: &AppendEntriesRequest<TypeConfig>) -> Request {
    Request::Append {
        vote: vote_w(&request.vote),
        prev: request.prev_log_id.as_ref().map(log_id_w),
        entries: request.entries.iter().map(entry_w).collect(),
        commit: request.leader_commit.as_ref().map(log_id_w),
    }
}

pub fn appended_w(response: &AppendEntriesResponse<u64>) -> AppendedW {
    match response {
        AppendEntriesResponse::Success => AppendedW::Success,
        AppendEntriesResponse::PartialSuccess(at) => AppendedW::Partial(at.as_ref().map(log_id_w)),
        AppendEntriesResponse::Conflict => AppendedW::Conflict,
        AppendEntriesResponse::HigherVote(v) => AppendedW::HigherVote(vote_w(v)),
    }
}

pub fn appended(w: &AppendedW) -> AppendEntriesResponse<u64> {
    match w {
        AppendedW::Success => AppendEntriesResponse::Success,
        AppendedW::Partial(at) => AppendEntriesResponse::PartialSuccess(at.as_ref().map(log_id)),
        AppendedW::Conflict => AppendEntriesResponse::Conflict,
        AppendedW::HigherVote(v) => AppendEntriesResponse::HigherVote(vote(v)),
    }
}

pub fn vote_request_w(request: &VoteRequest<u64>) -> Request {
    Request::Vote { vote: vote_w(&request.vote), last: request.last_log_id.as_ref().map(log_id_w) }
}

pub fn vote_response(granted_vote: &VoteW, granted: bool, last: Option<&LogIdW>) -> VoteResponse<u64> {
    VoteResponse { vote: vote(granted_vote), vote_granted: granted, last_log_id: last.map(log_id) }
}

/// What a frame can carry: rkyv types whose archives are checked before they are read.
pub trait Decode:
    Sized
    + rkyv::Archive<
        Archived: for<'a> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>,
        > + rkyv::Deserialize<Self, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    >
{
}

impl<T> Decode for T where
    T: rkyv::Archive<
            Archived: for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>,
            > + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
        >
{
}

/// One frame: length, CRC32 of the body, the rkyv body.
pub fn frame<T>(value: &T) -> Result<Vec<u8>, rkyv::rancor::Error>
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
{
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(value)?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a frame's body after checking its CRC.
pub fn unframe<T>(crc: u32, body: &[u8]) -> std::io::Result<T>
where
    T: Decode,
{
    if crc32fast::hash(body) != crc {
        return Err(invalid("frame CRC mismatch"));
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned).map_err(|e| invalid(&format!("bad frame: {e}")))
}

pub fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

pub async fn write_frame<T, W>(out: &mut W, value: &T) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
{
    let bytes = frame(value).map_err(|e| invalid(&format!("encode: {e}")))?;
    out.write_all(&bytes).await?;
    out.flush().await
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames.
pub async fn read_frame<T, R>(input: &mut R) -> std::io::Result<Option<T>>
where
    R: tokio::io::AsyncRead + Unpin,
    T: Decode,
{
    let mut head = [0u8; 8];
    match input.read_exact(&mut head).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let (length, crc) = split_head(head);
    if length > FRAME_BYTES_MAX {
        return Err(invalid(&format!("frame of {length} bytes is over the limit")));
    }
    // Memory follows the bytes that arrive, not the length a peer claims.
    let mut body = Vec::with_capacity(length.min(64 << 10));
    input.take(length as u64).read_to_end(&mut body).await?;
    if body.len() < length {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "frame cut short"));
    }
    unframe(crc, &body).map(Some)
}

/// Reads a file holding one frame (written whole and renamed into place, so a damaged one is
/// not a torn write but an error); `None` if there is no file.
pub fn read_frame_file<T>(path: &std::path::Path) -> std::io::Result<Option<T>>
where
    T: Decode,
{
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let too_short = || invalid(&format!("{} is cut short", path.display()));
    let head: [u8; 8] = bytes.get(..8).and_then(|h| h.try_into().ok()).ok_or_else(too_short)?;
    let (length, crc) = split_head(head);
    let body = bytes.get(8..8 + length).ok_or_else(too_short)?;
    unframe(crc, body).map(Some)
}

pub fn split_head(head: [u8; 8]) -> (usize, u32) {
    let length = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    (length, crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_messages_survive_the_wire() {
        let members =
            BTreeMap::from([(1, BasicNode { addr: "127.0.0.1:1".into() }), (2, BasicNode::default())]);
        let entries = vec![
            Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(2, 1), 5),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(2, 1), 6),
                payload: EntryPayload::Normal(Command::Fence { id: 3, epoch: 4 }),
            },
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(2, 1), 7),
                payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2])], members)),
            },
        ];
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 2), 4)),
            entries,
            leader_commit: None,
        };
        let bytes = frame(&append_request_w(&request)).expect("frame");
        let (length, crc) = split_head(bytes[..8].try_into().expect("head"));
        assert_eq!(length, bytes.len() - 8);
        let back: Request = unframe(crc, &bytes[8..]).expect("unframe");
        let decoded = append_request(&back).expect("an append");
        assert_eq!(decoded.vote, request.vote);
        assert_eq!(decoded.prev_log_id, request.prev_log_id);
        assert_eq!(decoded.entries, request.entries);

        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(unframe::<Request>(crc, &damaged[8..]).is_err(), "a flipped bit is caught");
    }
}
