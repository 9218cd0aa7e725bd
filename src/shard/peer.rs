//! Requests this broker sends another: a Kafka request and its answer on a connection of its
//! own. Used for what crosses brokers rarely (transaction markers), so a connection per request
//! costs little and a slow broker holds up only its own requests.

use crate::bench::wire;
use crate::io;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};
use std::net::SocketAddr;
use std::time::Duration;

/// Sends `request` to `address` and decodes the answer, within `timeout`.
pub async fn call<T: Decodable>(
    address: SocketAddr,
    api: ApiKey,
    version: i16,
    request: &impl Encodable,
    timeout: Duration,
) -> Result<T, String> {
    let frame = wire::request_frame(api, version, 1, request)?;
    let exchange = async {
        let mut stream = io::Stream::connect(address).await.map_err(|e| format!("connect {address}: {e}"))?;
        stream.write_chunks(&[frame]).await.map_err(|e| format!("send {api:?} to {address}: {e}"))?;
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).await.map_err(|e| format!("read {api:?} answer: {e}"))?;
        let mut body = vec![0u8; wire::response_size(size)?];
        stream.read_exact(&mut body).await.map_err(|e| format!("read {api:?} answer: {e}"))?;
        wire::decode_response(api, version, body.into()).map(|(_, response)| response)
    };
    let timed_out = async {
        io::sleep(timeout).await;
        Err(format!("{address} did not answer {api:?} within {timeout:?}"))
    };
    futures_lite::future::or(exchange, timed_out).await
}
