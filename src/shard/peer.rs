//! Requests this broker sends another: a Kafka request and its answer. A `Link` keeps its
//! connection for the next request (a follower core's fetches from one leader); `call` opens
//! one for a single request (what crosses brokers rarely: transaction markers), so a slow
//! broker holds up only its own requests.

use crate::bench::wire;
use crate::io;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};
use std::net::SocketAddr;
use std::time::Duration;

/// Sends `request` to `address` on a connection of its own and decodes the answer, within
/// `timeout`.
pub async fn call<T: Decodable>(
    address: SocketAddr,
    api: ApiKey,
    version: i16,
    request: &impl Encodable,
    timeout: Duration,
) -> Result<T, String> {
    Link::new(address).call(api, version, request, timeout).await
}

/// A connection to another broker, one request at a time, opened when first needed and
/// again after a failure.
pub struct Link {
    address: SocketAddr,
    stream: Option<io::Stream>,
    correlation: i32,
}

impl Link {
    pub fn new(address: SocketAddr) -> Link {
        Link { address, stream: None, correlation: 0 }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Sends `request` and decodes its answer, within `timeout`. After a failure the
    /// connection is dropped (an answer may still be on its way) and the next call opens
    /// another.
    pub async fn call<T: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &impl Encodable,
        timeout: Duration,
    ) -> Result<T, String> {
        let address = self.address;
        self.correlation = self.correlation.wrapping_add(1);
        let frame = wire::request_frame(api, version, self.correlation, request)?;
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => connect(address, timeout).await?,
        };
        let exchange = async {
            stream.write_chunks(&[frame]).await.map_err(|e| format!("send {api:?} to {address}: {e}"))?;
            let mut size = [0u8; 4];
            stream.read_exact(&mut size).await.map_err(|e| format!("read {api:?} answer: {e}"))?;
            let mut body = vec![0u8; wire::response_size(size)?];
            stream.read_exact(&mut body).await.map_err(|e| format!("read {api:?} answer: {e}"))?;
            wire::decode_response::<T>(api, version, body.into())
        };
        let timed_out = async {
            io::sleep(timeout).await;
            Err(format!("{address} did not answer {api:?} within {timeout:?}"))
        };
        let (correlation, response) = futures_lite::future::or(exchange, timed_out).await?;
        if correlation != self.correlation {
            return Err(format!("{address} answered request {correlation}, not {}", self.correlation));
        }
        self.stream = Some(stream);
        Ok(response)
    }
}

async fn connect(address: SocketAddr, timeout: Duration) -> Result<io::Stream, String> {
    let timed_out = async {
        io::sleep(timeout).await;
        Err(format!("connect {address}: no answer within {timeout:?}"))
    };
    let connect = async { io::Stream::connect(address).await.map_err(|e| format!("connect {address}: {e}")) };
    futures_lite::future::or(connect, timed_out).await
}
