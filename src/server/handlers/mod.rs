//! Request dispatch: checks the API and version, decodes the request, runs the handler of that
//! API (one file each) and encodes the response frame. Kafka error codes are chosen by the
//! handlers; a request that cannot be understood closes the connection, as Kafka does.

mod admin;
mod api_versions;
mod configs;
mod create_topics;
mod fetch;
mod groups;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;
mod reassign;
mod transactions;

use super::frame::REQUEST_PREFIX_BYTES;
use super::{Broker, versions};
use crate::group::ClientInfo;
use crate::shard::Shard;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// What the connection does with a request.
pub enum Outcome {
    /// Write these chunks, in order, as the response frame.
    Respond(Vec<Bytes>),
    /// Send nothing (a produce with acks=0).
    Silent,
    /// Close the connection without answering.
    Close(String),
}

fn be_i16(frame: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([frame[at], frame[at + 1]])
}

/// A request frame, understood: what the handlers get.
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    /// The client id from the request header ("" if none).
    pub client_id: String,
    pub body: RequestKind,
}

/// What to do with a frame that is not a request we serve.
pub enum Refused {
    /// Answer this frame's ApiVersions request, in version 0 (KIP-511).
    UnsupportedApiVersions { correlation_id: i32 },
    /// Close the connection, for this reason.
    Close(String),
}

/// Decodes a request frame (everything after the size), checking the API and version first.
/// Pure: no I/O, no state, every input gives an answer (fuzzed in `tests::fuzz`).
pub fn decode_request(frame: Bytes) -> Result<Request, Refused> {
    if frame.len() < REQUEST_PREFIX_BYTES {
        return Err(Refused::Close(format!("request of {} bytes has no header", frame.len())));
    }
    let (api_key, version) = (be_i16(&frame, 0), be_i16(&frame, 2));
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api) = ApiKey::try_from(api_key) else {
        return Err(Refused::Close(format!("unknown API key {api_key}")));
    };
    tracing::trace!(?api, version, correlation_id, "request");
    if !versions::supported(api, version) {
        if api == ApiKey::ApiVersions {
            return Err(Refused::UnsupportedApiVersions { correlation_id });
        }
        return Err(Refused::Close(format!("unsupported version {version} of {api:?}")));
    }
    let mut body = frame;
    let header = match RequestHeader::decode(&mut body, api.request_header_version(version)) {
        Ok(header) => header,
        Err(error) => return Err(Refused::Close(format!("bad {api:?} v{version} request header: {error}"))),
    };
    let client_id = header.client_id.map(|id| id.to_string()).unwrap_or_default();
    match RequestKind::decode(api, &mut body, version) {
        Ok(request) => Ok(Request { api, version, correlation_id, client_id, body: request }),
        Err(error) => Err(Refused::Close(format!("bad {api:?} v{version} request: {error}"))),
    }
}

/// A request's answer: given, or to come.
pub enum Started {
    Answered(Outcome),
    /// A produce whose batches have their place in their partitions; the answer follows.
    Answering(Pin<Box<dyn Future<Output = Outcome>>>),
}

/// The API key of a request frame, if it is long enough to have one.
pub fn api_key(frame: &[u8]) -> Option<i16> {
    (frame.len() >= 2).then(|| be_i16(frame, 0))
}

/// Whether a request (by its `api_key`) is a Produce: the one request a connection pipelines.
pub fn is_produce(api: Option<i16>) -> bool {
    api == Some(ApiKey::Produce as i16)
}

/// Starts answering one request frame from a client at `client_host` (Kafka's "/1.2.3.4"
/// form): a produce returns once its batches are placed (`produce::start`), any other
/// request once answered.
pub async fn start(broker: &Broker, shard: &Rc<Shard>, frame: Bytes, client_host: &str) -> Started {
    let request = match decode_request(frame) {
        Ok(request) => request,
        Err(Refused::UnsupportedApiVersions { correlation_id }) => {
            let response = ResponseKind::ApiVersions(api_versions::unsupported_version());
            return Started::Answered(encode(ApiKey::ApiVersions, 0, correlation_id, &response));
        }
        Err(Refused::Close(reason)) => return Started::Answered(Outcome::Close(reason)),
    };
    let Request { api, version, correlation_id, body: RequestKind::Produce(produce), .. } = request else {
        return Started::Answered(answer(broker, shard, request, client_host).await);
    };
    let response = produce::start(shard, produce).await;
    Started::Answering(Box::pin(async move {
        match response.await {
            Some(response) => encode(api, version, correlation_id, &ResponseKind::Produce(response)),
            None => Outcome::Silent,
        }
    }))
}

/// Answers any request but a produce.
async fn answer(broker: &Broker, shard: &Rc<Shard>, request: Request, client_host: &str) -> Outcome {
    let Request { api, version, correlation_id, client_id, body: request } = request;
    let client = ClientInfo { client_id, client_host: client_host.to_string() };
    let request = match group_request(broker, shard, request, version, client).await {
        Ok(response) => return encode(api, version, correlation_id, &response),
        Err(other) => other,
    };
    let request = match transaction_request(shard, request, version).await {
        Ok(response) => return encode(api, version, correlation_id, &response),
        Err(other) => other,
    };
    let response = match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::handle()),
        RequestKind::Metadata(request) => {
            ResponseKind::Metadata(metadata::handle(broker, shard, request, version).await)
        }
        RequestKind::CreateTopics(request) => {
            ResponseKind::CreateTopics(create_topics::handle(shard, request).await)
        }
        RequestKind::Fetch(request) => {
            return Outcome::Respond(fetch::handle(shard, request, version, correlation_id).await);
        }
        RequestKind::DescribeConfigs(request) => {
            ResponseKind::DescribeConfigs(configs::describe(broker, shard, request).await)
        }
        RequestKind::AlterConfigs(request) => {
            ResponseKind::AlterConfigs(configs::alter(shard, request).await)
        }
        RequestKind::IncrementalAlterConfigs(request) => {
            ResponseKind::IncrementalAlterConfigs(configs::incremental_alter(shard, request).await)
        }
        RequestKind::DescribeCluster(_) => {
            ResponseKind::DescribeCluster(admin::describe_cluster(broker, shard))
        }
        RequestKind::DeleteTopics(request) => {
            ResponseKind::DeleteTopics(admin::delete_topics(shard, request).await)
        }
        RequestKind::CreatePartitions(request) => {
            ResponseKind::CreatePartitions(admin::create_partitions(shard, request).await)
        }
        RequestKind::AlterPartitionReassignments(request) => {
            ResponseKind::AlterPartitionReassignments(reassign::alter(shard, request, version).await)
        }
        RequestKind::ListPartitionReassignments(request) => {
            ResponseKind::ListPartitionReassignments(reassign::list(shard, request).await)
        }
        RequestKind::DeleteRecords(request) => {
            ResponseKind::DeleteRecords(admin::delete_records(shard, request).await)
        }
        RequestKind::ListOffsets(request) => {
            ResponseKind::ListOffsets(list_offsets::handle(shard, request).await)
        }
        RequestKind::OffsetForLeaderEpoch(request) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch::handle(shard, request).await)
        }
        _ => return Outcome::Close(format!("{api:?} has no handler")),
    };
    encode(api, version, correlation_id, &response)
}

/// Answers the producer and transaction APIs; any other request comes back as it was.
async fn transaction_request(
    shard: &Rc<Shard>,
    request: RequestKind,
    version: i16,
) -> Result<ResponseKind, RequestKind> {
    Ok(match request {
        RequestKind::InitProducerId(request) => {
            ResponseKind::InitProducerId(transactions::init_producer_id(shard, request, version).await)
        }
        RequestKind::AddPartitionsToTxn(request) => {
            ResponseKind::AddPartitionsToTxn(transactions::add_partitions(shard, request, version).await)
        }
        RequestKind::AddOffsetsToTxn(request) => {
            ResponseKind::AddOffsetsToTxn(transactions::add_offsets(shard, request, version).await)
        }
        RequestKind::EndTxn(request) => {
            ResponseKind::EndTxn(transactions::end_txn(shard, request, version).await)
        }
        RequestKind::WriteTxnMarkers(request) => {
            ResponseKind::WriteTxnMarkers(transactions::write_markers(shard, request).await)
        }
        RequestKind::TxnOffsetCommit(request) => {
            ResponseKind::TxnOffsetCommit(transactions::txn_offset_commit(shard, request, version).await)
        }
        RequestKind::DescribeTransactions(request) => {
            ResponseKind::DescribeTransactions(transactions::describe(shard, request).await)
        }
        RequestKind::ListTransactions(request) => {
            ResponseKind::ListTransactions(transactions::list(shard, request).await)
        }
        other => return Err(other),
    })
}

/// Answers the group coordinator's APIs; any other request comes back as it was.
async fn group_request(
    broker: &Broker,
    shard: &Rc<Shard>,
    request: RequestKind,
    version: i16,
    client: ClientInfo,
) -> Result<ResponseKind, RequestKind> {
    Ok(match request {
        RequestKind::FindCoordinator(request) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(broker, shard, request, version).await)
        }
        RequestKind::JoinGroup(request) => {
            ResponseKind::JoinGroup(groups::join(shard, request, version, client).await)
        }
        RequestKind::SyncGroup(request) => ResponseKind::SyncGroup(groups::sync(shard, request).await),
        RequestKind::Heartbeat(request) => ResponseKind::Heartbeat(groups::heartbeat(shard, request).await),
        RequestKind::LeaveGroup(request) => {
            ResponseKind::LeaveGroup(groups::leave(shard, request, version).await)
        }
        RequestKind::OffsetCommit(request) => {
            ResponseKind::OffsetCommit(groups::offset_commit(shard, request).await)
        }
        RequestKind::OffsetFetch(request) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(shard, request, version).await)
        }
        RequestKind::OffsetDelete(request) => {
            ResponseKind::OffsetDelete(groups::offset_delete(shard, request).await)
        }
        RequestKind::DescribeGroups(request) => {
            ResponseKind::DescribeGroups(groups::describe(shard, request, version).await)
        }
        RequestKind::ListGroups(request) => ResponseKind::ListGroups(groups::list(shard, request).await),
        RequestKind::DeleteGroups(request) => {
            ResponseKind::DeleteGroups(groups::delete(shard, request).await)
        }
        RequestKind::ConsumerGroupHeartbeat(request) => {
            ResponseKind::ConsumerGroupHeartbeat(groups::consumer_heartbeat(shard, request, client).await)
        }
        RequestKind::ConsumerGroupDescribe(request) => {
            ResponseKind::ConsumerGroupDescribe(groups::consumer_describe(shard, request).await)
        }
        other => return Err(other),
    })
}

/// The size-prefixed response frame.
fn encode(api: ApiKey, version: i16, correlation_id: i32, response: &ResponseKind) -> Outcome {
    let mut frame = BytesMut::with_capacity(256);
    frame.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut frame, api.response_header_version(version))
        .and_then(|()| response.encode(&mut frame, version));
    if let Err(error) = encoded {
        // Our own response does not fit the version the client asked for: a bug, but the
        // client must not be left waiting for an answer that will never come.
        return Outcome::Close(format!("cannot encode {api:?} v{version} response: {error}"));
    }
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Outcome::Respond(vec![frame.freeze()])
}

#[cfg(test)]
mod tests;
