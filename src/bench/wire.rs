//! A blocking Kafka connection for the load generator: requests encoded with the
//! kafka-protocol crate, written whole; responses read in order (Kafka answers a connection's
//! requests in the order they were sent). Writer and reader can live on different threads
//! (`split`), so a producer keeps several requests in flight.

use crate::codec::{self, put_unsigned_varint};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest response accepted (a fetch answer is bounded by the request's max bytes).
const RESPONSE_BYTES_MAX: usize = 256 << 20;
const CLIENT_ID: &str = "ringmq-bench";

pub fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))
}

pub struct Writer {
    stream: TcpStream,
    next_correlation: i32,
    /// Each request is encoded into this one buffer, sized first. A fresh frame per request,
    /// grown from 256 bytes, cost the generator page faults and the copies of each growth: an
    /// 8 s produce run at ~450 MB/s took 8.1-8.8 s of its CPU before, 5.0-5.2 s after.
    frame: BytesMut,
}

pub struct Reader {
    stream: TcpStream,
    /// The last response's body: its allocation is read into again once every slice of it
    /// the caller kept is dropped, as a client's allocator hands back memory it freed.
    last: Option<Bytes>,
    /// Answers read into a buffer used before (the tests' witness that reuse happens).
    reused: u64,
}

/// Opens a connection (Nagle off: requests go out as they are written).
pub fn connect(address: SocketAddr) -> Result<(Writer, Reader), String> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(10))
        .map_err(|e| format!("connect {address}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let reader = Reader { stream: stream.try_clone().map_err(|e| e.to_string())?, last: None, reused: 0 };
    Ok((Writer { stream, next_correlation: 1, frame: BytesMut::new() }, reader))
}

impl Writer {
    /// Sends one request; returns its correlation id.
    pub fn send(&mut self, api: ApiKey, version: i16, request: &impl Encodable) -> Result<i32, String> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        self.frame.clear();
        encode_frame(&mut self.frame, api, version, correlation, request)?;
        self.stream.write_all(&self.frame).map_err(|e| format!("send {api:?}: {e}"))?;
        Ok(correlation)
    }
}

/// A request as sent: size, header, body.
pub fn request_frame(
    api: ApiKey,
    version: i16,
    correlation: i32,
    request: &impl Encodable,
) -> Result<Bytes, String> {
    let mut frame = BytesMut::new();
    encode_frame(&mut frame, api, version, correlation, request)?;
    Ok(frame.freeze())
}

/// Produce requests the generator writes itself (`Writer::send_produce`): the first flexible
/// version, whose layout `produce_envelope` follows.
pub const PRODUCE_VERSION: i16 = 9;

impl Writer {
    /// Sends a produce request (v9) for `partitions` of `topic`, each with its record batches;
    /// returns its correlation id. The envelope is encoded here and the batches go to the socket
    /// from where they lie, in one vectored write: copying them into a frame first, as `send`
    /// does, cost the generator a copy of every byte it produces (`bench::batch`).
    pub fn send_produce(
        &mut self,
        acks: i16,
        timeout_ms: i32,
        topic: &str,
        partitions: &[(i32, Bytes)],
    ) -> Result<i32, String> {
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        self.frame.clear();
        let cuts = produce_envelope(&mut self.frame, correlation, acks, timeout_ms, topic, partitions);
        let mut slices = Vec::with_capacity(2 * partitions.len() + 1);
        let mut from = 0;
        for ((_, batch), cut) in partitions.iter().zip(cuts) {
            slices.push(std::io::IoSlice::new(&self.frame[from..cut]));
            slices.push(std::io::IoSlice::new(batch));
            from = cut;
        }
        slices.push(std::io::IoSlice::new(&self.frame[from..]));
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match self.stream.write_vectored(slices) {
                Ok(0) => return Err("send Produce: the connection closed".into()),
                Ok(written) => std::io::IoSlice::advance_slices(&mut slices, written),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("send Produce: {e}")),
            }
        }
        Ok(correlation)
    }
}

/// Writes a produce request v9 frame into `frame` without its record batches: size, request
/// header v2, then the body with each partition's records field holding only its length.
/// Returns, per partition, where in `frame` its batch bytes belong.
fn produce_envelope(
    frame: &mut BytesMut,
    correlation: i32,
    acks: i16,
    timeout_ms: i32,
    topic: &str,
    partitions: &[(i32, Bytes)],
) -> Vec<usize> {
    frame.put_i32(0); // size, set below
    frame.put_i16(ApiKey::Produce as i16);
    frame.put_i16(PRODUCE_VERSION);
    frame.put_i32(correlation);
    codec::put_string(frame, CLIENT_ID);
    frame.put_u8(0); // no tagged fields
    frame.put_u8(0); // transactional id: null
    frame.put_i16(acks);
    frame.put_i32(timeout_ms);
    put_unsigned_varint(frame, 2); // one topic
    put_unsigned_varint(frame, topic.len() as u64 + 1);
    frame.put_slice(topic.as_bytes());
    put_unsigned_varint(frame, partitions.len() as u64 + 1);
    let mut cuts = Vec::with_capacity(partitions.len());
    let mut batches = 0;
    for (index, batch) in partitions {
        frame.put_i32(*index);
        put_unsigned_varint(frame, batch.len() as u64 + 1);
        cuts.push(frame.len());
        batches += batch.len();
        frame.put_u8(0); // the partition's tagged fields
    }
    frame.put_u8(0); // the topic's tagged fields
    frame.put_u8(0); // the request's tagged fields
    let size = (frame.len() + batches - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    cuts
}

/// Appends a request's frame (size, header, body) to the empty `frame`, reserving its whole
/// size first.
fn encode_frame(
    frame: &mut BytesMut,
    api: ApiKey,
    version: i16,
    correlation: i32,
    request: &impl Encodable,
) -> Result<(), String> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let header_version = api.request_header_version(version);
    let head = header.compute_size(header_version).map_err(|e| e.to_string())?;
    let body = request.compute_size(version).map_err(|e| format!("size {api:?} v{version}: {e}"))?;
    frame.reserve(4 + head + body);
    frame.put_i32(0);
    header.encode(frame, header_version).map_err(|e| e.to_string())?;
    request.encode(frame, version).map_err(|e| format!("encode {api:?} v{version}: {e}"))?;
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// A response's size field checked against the limit.
pub fn response_size(size: [u8; 4]) -> Result<usize, String> {
    let size = i32::from_be_bytes(size);
    usize::try_from(size).ok().filter(|&s| s <= RESPONSE_BYTES_MAX).ok_or(format!("response size {size}"))
}

/// Decodes a response (without its size); returns its correlation id too.
pub fn decode_response<T: Decodable>(api: ApiKey, version: i16, mut body: Bytes) -> Result<(i32, T), String> {
    let header =
        ResponseHeader::decode(&mut body, api.response_header_version(version)).map_err(|e| e.to_string())?;
    let response = T::decode(&mut body, version).map_err(|e| format!("decode {api:?} v{version}: {e}"))?;
    Ok((header.correlation_id, response))
}

impl Reader {
    /// Reads the next response and decodes it; returns its correlation id too.
    pub fn receive<T: Decodable>(&mut self, api: ApiKey, version: i16) -> Result<(i32, T), String> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(|e| format!("read {api:?} response: {e}"))?;
        let size = response_size(size)?;
        // Read straight into spare capacity: zero-filling a 64 MiB fetch first would cost as much.
        // A fresh buffer that large is a fresh mapping whose every page faults in (glibc maps
        // allocations over 32 MiB anew each time): reading consume-tail's 45 MB fetches into new
        // buffers cost the generator more than the broker's sending them.
        let mut body = match self.last.take().map(Bytes::try_into_mut) {
            Some(Ok(reused)) => {
                self.reused += 1;
                Vec::from(reused)
            }
            _ => Vec::new(),
        };
        body.clear();
        body.reserve(size);
        (&mut self.stream)
            .take(size as u64)
            .read_to_end(&mut body)
            .map_err(|e| format!("read {api:?} response: {e}"))?;
        if body.len() < size {
            return Err(format!("{api:?} response cut short: {} of {size} bytes", body.len()));
        }
        let body = Bytes::from(body);
        self.last = Some(body.clone());
        decode_response(api, version, body)
    }
}

/// One request and its answer on a fresh connection.
pub fn call<T: Decodable>(
    address: SocketAddr,
    api: ApiKey,
    version: i16,
    request: &impl Encodable,
) -> Result<T, String> {
    let (mut writer, mut reader) = connect(address)?;
    writer.send(api, version, request)?;
    Ok(reader.receive(api, version)?.1)
}

/// The whole batches at the start of a fetched partition's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    /// Records they hold.
    pub records: u64,
    /// The offset after the last of them.
    pub next: Option<i64>,
    /// How many leading bytes they take (a fetch may end inside a batch).
    pub bytes: usize,
}

/// Walks the record batches of a fetched partition without decoding records. Stops at a
/// partial batch (a fetch may end inside one).
pub fn batch_extent(mut records: &[u8]) -> Extent {
    const BASE_OFFSET_AND_LENGTH: usize = 12;
    const LAST_OFFSET_DELTA_AT: usize = 23;
    const RECORDS_COUNT_AT: usize = 57;
    let mut extent = Extent::default();
    while records.len() >= RECORDS_COUNT_AT + 4 {
        let base = (&records[..8]).get_i64();
        let length = (&records[8..12]).get_i32();
        let Some(total) = usize::try_from(length).ok().map(|l| l + BASE_OFFSET_AND_LENGTH) else { break };
        if total > records.len() || total < RECORDS_COUNT_AT + 4 {
            break;
        }
        let last_delta = (&records[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]).get_i32();
        let in_batch = (&records[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4]).get_i32();
        extent.records += u64::try_from(in_batch).unwrap_or(0);
        extent.next = Some(base + i64::from(last_delta) + 1);
        extent.bytes += total;
        records = &records[total..];
    }
    extent
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};

    /// The envelope with the batches in their places is, byte for byte, the crate's encoding of
    /// the same request, and what the broker decodes.
    #[test]
    fn a_produce_envelope_with_its_batches_is_the_crates_frame() {
        for (topic, sizes) in
            [("t", vec![100usize]), ("a-topic-name", vec![16_500, 0, 300, 70_000]), ("x", vec![])]
        {
            let partitions: Vec<(i32, Bytes)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| (i as i32 * 3, crate::testing::payload(i as u64, size)))
                .collect();
            let mut envelope = BytesMut::new();
            let cuts = produce_envelope(&mut envelope, 77, -1, 30_000, topic, &partitions);
            let mut ours = Vec::new();
            let mut from = 0;
            for ((_, batch), cut) in partitions.iter().zip(cuts) {
                ours.extend_from_slice(&envelope[from..cut]);
                ours.extend_from_slice(batch);
                from = cut;
            }
            ours.extend_from_slice(&envelope[from..]);

            let data = partitions
                .iter()
                .map(|(index, batch)| {
                    PartitionProduceData::default().with_index(*index).with_records(Some(batch.clone()))
                })
                .collect();
            let request =
                ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partition_data(data),
                ]);
            let crates = request_frame(ApiKey::Produce, PRODUCE_VERSION, 77, &request).expect("encode");
            assert_eq!(Bytes::from(ours), crates, "{topic} {sizes:?}");
        }
    }
    use kafka_protocol::messages::ApiVersionsResponse;

    /// Two answers of the same size: the second is read into the first one's allocation once
    /// the caller has dropped the first, and into a new one while it still holds it.
    #[test]
    fn a_response_is_read_into_the_last_ones_buffer_once_it_is_free() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            for correlation in 1..=3 {
                let mut frame = BytesMut::new();
                frame.put_i32(0);
                ResponseHeader::default()
                    .with_correlation_id(correlation)
                    .encode(&mut frame, 0)
                    .expect("header");
                ApiVersionsResponse::default().encode(&mut frame, 0).expect("body");
                let size = (frame.len() - 4) as i32;
                frame[..4].copy_from_slice(&size.to_be_bytes());
                stream.write_all(&frame).expect("write");
            }
        });
        let (_writer, mut reader) = connect(address).expect("connect");
        let body = |reader: &Reader| reader.last.as_ref().map(|b| b.as_ptr()).expect("a body");
        let first: (i32, ApiVersionsResponse) = reader.receive(ApiKey::ApiVersions, 0).expect("first");
        let first_body = body(&reader);
        let held = reader.last.clone();
        let second: (i32, ApiVersionsResponse) = reader.receive(ApiKey::ApiVersions, 0).expect("second");
        assert_ne!(body(&reader), first_body, "a buffer still held is not read into");
        assert_eq!(reader.reused, 0);
        drop(held);
        let second_body = body(&reader);
        let third: (i32, ApiVersionsResponse) = reader.receive(ApiKey::ApiVersions, 0).expect("third");
        assert_eq!(reader.reused, 1, "a free buffer is read into again");
        assert_eq!(body(&reader), second_body, "the same allocation");
        assert_eq!((first.0, second.0, third.0), (1, 2, 3));
        server.join().expect("server");
    }
}
