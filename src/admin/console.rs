//! `ringmq produce` and `ringmq consume`: quick looks at a topic of any Kafka-compatible broker.
//! Produce turns lines (stdin or a file) into records, keyed if asked, and writes them to each
//! partition's leader; consume prints records in a kcat-style format or as JSON lines, from a
//! chosen start, up to the end (or on, with --follow). Long runs report progress on stderr.

use super::{Connection, check, name};
use crate::bench::wire::{self, Reader, Writer};
use crate::types::TimestampMs;
use clap::Args;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const PRODUCE_VERSION: i16 = 8;
const FETCH_VERSION: i16 = 11;
const LIST_OFFSETS_VERSION: i16 = 5;
/// A batch is sent once it holds this many bytes, whatever --batch-records says.
const BATCH_BYTES_MAX: usize = 1 << 20;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// The topic (created if the broker creates topics on first use).
    pub topic: String,
    /// Write every record to this partition. Otherwise a keyed record goes where Kafka's Java
    /// client puts it (murmur2 of the key) and keyless ones fill one partition's batch, then
    /// the next one's.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Split each line at the first SEP into key and value (kcat's -K); a line without SEP
    /// has no key.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// A header added to every record; may be repeated.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Acknowledgements to wait for: 0, 1 or all (-1).
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Records per batch (one batch per partition per Produce request).
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    /// Report progress on stderr every second (the default when stderr is a terminal).
    #[arg(long)]
    pub progress: bool,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// The topic.
    pub topic: String,
    /// Read only this partition; may be repeated (default: every partition).
    #[arg(long = "partition")]
    pub partitions: Vec<i32>,
    /// Where to start: beginning, end, an offset N, -N (N before the end) or @MILLIS (the
    /// first record at or after that time).
    #[arg(long, default_value = "beginning", allow_hyphen_values = true)]
    pub offset: String,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long)]
    pub follow: bool,
    /// How to print each record (kcat's tokens): %t topic, %p partition, %o offset,
    /// %T timestamp, %k key, %s value, %h headers, %K and %S key and value sizes; \n \t \\.
    /// Ignored with --json, which prints one JSON object per record.
    #[arg(long, default_value = "%s\\n")]
    pub format: String,
    /// Report progress on stderr every second.
    #[arg(long)]
    pub progress: bool,
}

/// Partitions of a topic and the address of each one's leader.
pub(super) struct Layout {
    pub(super) leaders: BTreeMap<i32, SocketAddr>,
}

impl Layout {
    pub(super) fn of(address: SocketAddr, topic: &str, create: bool) -> Result<Layout, String> {
        // A topic created by this very lookup may have no leader yet: ask again, briefly.
        for _ in 0..50 {
            let response = super::metadata_creating(address, Some(&[topic]), create)?;
            let found = response.topics.first().ok_or("the broker answered for no topic")?;
            const LEADER_NOT_AVAILABLE: i16 = 5;
            let settling = found.error_code == LEADER_NOT_AVAILABLE
                || (found.error_code == 0 && found.partitions.iter().any(|p| p.leader_id.0 < 0));
            if !settling {
                check(found.error_code, None, &format!("look up {topic}"))?;
                let brokers = super::broker_addresses(&response)?;
                let mut leaders = BTreeMap::new();
                for partition in &found.partitions {
                    let leader =
                        brokers.get(&partition.leader_id.0).ok_or("a leader the broker did not list")?;
                    leaders.insert(partition.partition_index, *leader);
                }
                return Ok(Layout { leaders });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("{topic}: no leader for every partition after 5 s"))
    }

    fn leader(&self, partition: i32) -> Result<SocketAddr, String> {
        self.leaders.get(&partition).copied().ok_or_else(|| format!("no partition {partition}"))
    }
}

/// Connections to leaders, opened on first use.
#[derive(Default)]
struct Connections(HashMap<SocketAddr, (Writer, Reader)>);

impl Connections {
    fn to(&mut self, address: SocketAddr) -> Result<&mut (Writer, Reader), String> {
        Ok(match self.0.entry(address) {
            std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(wire::connect(address)?),
        })
    }
}

/// A progress line on stderr at most once a second.
struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        Progress { enabled, started: Instant::now(), last: Instant::now() }
    }

    fn tick(&mut self, verb: &str, records: u64, bytes: u64) {
        if self.enabled && self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            let seconds = self.started.elapsed().as_secs_f64();
            eprintln!(
                "{verb} {records} records, {:.1} MB ({:.0} records/s)",
                bytes as f64 / 1e6,
                records as f64 / seconds.max(1e-9)
            );
        }
    }
}

/// Kafka's default partitioner for a keyed record (Java's `Utils.murmur2`, made positive).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

/// What produce wrote to one partition.
#[derive(Default)]
struct Written {
    records: u64,
    first: Option<i64>,
    last: i64,
}

struct Producer {
    topic: String,
    acks: i16,
    compression: Compression,
    headers: Vec<(StrBytes, bytes::Bytes)>,
    layout: Layout,
    connections: Connections,
    written: BTreeMap<i32, Written>,
    bytes: u64,
}

impl Producer {
    /// Sends `records` to `partition` as one batch and waits for the answer (unless acks=0).
    fn send(&mut self, partition: i32, records: Vec<Record>) -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: self.compression };
        RecordBatchEncoder::encode(&mut batch, &records, &options)
            .map_err(|e| format!("encode a batch: {e}"))?;
        self.bytes += batch.len() as u64;
        let data = PartitionProduceData::default().with_index(partition).with_records(Some(batch.freeze()));
        let request =
            ProduceRequest::default().with_acks(self.acks).with_timeout_ms(30_000).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(name(&self.topic)))
                    .with_partition_data(vec![data]),
            ]);
        let (writer, reader) = self.connections.to(self.layout.leader(partition)?)?;
        writer.send(ApiKey::Produce, PRODUCE_VERSION, &request)?;
        let written = self.written.entry(partition).or_default();
        written.records += records.len() as u64;
        if self.acks == 0 {
            return Ok(()); // no answer comes
        }
        let (_, response): (i32, ProduceResponse) = reader.receive(ApiKey::Produce, PRODUCE_VERSION)?;
        for answer in response.responses.iter().flat_map(|t| &t.partition_responses) {
            let what = format!("produce to {}/{partition}", self.topic);
            check(answer.error_code, answer.error_message.as_ref(), &what)?;
            written.first.get_or_insert(answer.base_offset);
            written.last = answer.base_offset + records.len() as i64 - 1;
        }
        Ok(())
    }

    fn report(&self) -> (Value, String) {
        let total: u64 = self.written.values().map(|w| w.records).sum();
        let partitions: serde_json::Map<String, Value> = self
            .written
            .iter()
            .map(|(p, w)| {
                let offsets = w.first.map(|first| json!({"first_offset": first, "last_offset": w.last}));
                (p.to_string(), json!({"records": w.records, "offsets": offsets}))
            })
            .collect();
        let json = json!({"topic": self.topic, "records": total, "batch_bytes": self.bytes, "partitions": partitions});
        let spread: Vec<String> = self.written.iter().map(|(p, w)| format!("{p}: {}", w.records)).collect();
        (
            json,
            format!("produced {total} records to {} (partition: records {})", self.topic, spread.join(", ")),
        )
    }
}

fn acks(text: &str) -> Result<i16, String> {
    match text {
        "all" | "-1" => Ok(-1),
        "0" => Ok(0),
        "1" => Ok(1),
        other => Err(format!("--acks {other}: use 0, 1 or all")),
    }
}

/// `ringmq produce`: every line of the input becomes a record.
pub fn produce(args: ProduceArgs, connection: &Connection) -> Result<(), String> {
    let address = wire::resolve(&connection.bootstrap)?;
    let mut headers = Vec::new();
    for header in &args.headers {
        let (key, value) = super::key_value(header)?;
        headers.push((name(key), bytes::Bytes::copy_from_slice(value.as_bytes())));
    }
    let layout = Layout::of(address, &args.topic, true)?;
    let partitions = layout.leaders.len() as i32;
    if let Some(p) = args.partition.filter(|p| !(0..partitions).contains(p)) {
        return Err(format!("{}: no partition {p} (it has {partitions})", args.topic));
    }
    let input: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut producer = Producer {
        topic: args.topic.clone(),
        acks: acks(&args.acks)?,
        compression: crate::bench::compression(&args.compression)?,
        headers,
        layout,
        connections: Connections::default(),
        written: BTreeMap::new(),
        bytes: 0,
    };
    let mut progress = Progress::new(args.progress || std::io::stderr().is_terminal());
    let (batch_records, mut sticky, mut lines) = (args.batch_records.max(1), 0, 0u64);
    let mut pending: BTreeMap<i32, (Vec<Record>, usize)> = BTreeMap::new();
    for line in input.split(b'\n') {
        let line = line.map_err(|e| format!("read the input: {e}"))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        let (key, value) = split_line(line, args.key_separator.as_deref());
        let partition = match (args.partition, &key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => sticky,
        };
        let (records, bytes) = pending.entry(partition).or_default();
        *bytes += value.len() + key.as_ref().map_or(0, |k| k.len());
        let mut record = crate::record::plain(records.len() as i64, TimestampMs::now().0, key, Some(value));
        for (key, value) in &producer.headers {
            record.headers.insert(key.clone(), Some(value.clone()));
        }
        records.push(record);
        if records.len() >= batch_records || *bytes >= BATCH_BYTES_MAX {
            let (records, _) = pending.remove(&partition).unwrap_or_default();
            producer.send(partition, records)?;
            if partition == sticky {
                sticky = (sticky + 1) % partitions.max(1);
            }
        }
        lines += 1;
        progress.tick("produced", lines, producer.bytes);
    }
    for (partition, (records, _)) in std::mem::take(&mut pending) {
        producer.send(partition, records)?;
    }
    let (json, line) = producer.report();
    if connection.json {
        println!("{json}");
    } else {
        println!("{line}");
    }
    Ok(())
}

fn split_line(line: &[u8], separator: Option<&str>) -> (Option<bytes::Bytes>, bytes::Bytes) {
    let copy = bytes::Bytes::copy_from_slice;
    let Some(separator) = separator.map(str::as_bytes).filter(|s| !s.is_empty()) else {
        return (None, copy(line));
    };
    match line.windows(separator.len()).position(|w| w == separator) {
        Some(at) => (Some(copy(&line[..at])), copy(&line[at + separator.len()..])),
        None => (None, copy(line)),
    }
}

/// A piece of a --format: literal bytes or a field of the record.
#[derive(Debug, PartialEq)]
enum Piece {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    Headers,
    KeySize,
    ValueSize,
}

/// kcat's format tokens and backslash escapes.
fn parse_format(format: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = Vec::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        let field = match c {
            '%' => match chars.next() {
                Some('t') => Piece::Topic,
                Some('p') => Piece::Partition,
                Some('o') => Piece::Offset,
                Some('T') => Piece::Timestamp,
                Some('k') => Piece::Key,
                Some('s') => Piece::Value,
                Some('h') => Piece::Headers,
                Some('K') => Piece::KeySize,
                Some('S') => Piece::ValueSize,
                Some('%') => Piece::Literal(b"%".to_vec()),
                other => {
                    return Err(format!(
                        "--format: unknown token %{}",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            },
            '\\' => match chars.next() {
                Some('n') => Piece::Literal(b"\n".to_vec()),
                Some('t') => Piece::Literal(b"\t".to_vec()),
                Some('\\') => Piece::Literal(b"\\".to_vec()),
                Some(other) => Piece::Literal(format!("\\{other}").into_bytes()),
                None => Piece::Literal(b"\\".to_vec()),
            },
            other => {
                literal.extend_from_slice(other.to_string().as_bytes());
                continue;
            }
        };
        if let Piece::Literal(bytes) = field {
            literal.extend(bytes);
            continue;
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(field);
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

fn headers_text(record: &Record) -> String {
    let pairs = record.headers.iter().map(|(key, value)| {
        format!("{}={}", key.as_str(), value.as_ref().map(|v| String::from_utf8_lossy(v)).unwrap_or_default())
    });
    pairs.collect::<Vec<_>>().join(",")
}

fn write_formatted(
    out: &mut impl Write,
    pieces: &[Piece],
    topic: &str,
    partition: i32,
    record: &Record,
) -> std::io::Result<()> {
    let size = |bytes: &Option<bytes::Bytes>| bytes.as_ref().map_or(-1, |b| b.len() as i64);
    for piece in pieces {
        match piece {
            Piece::Literal(bytes) => out.write_all(bytes)?,
            Piece::Topic => out.write_all(topic.as_bytes())?,
            Piece::Partition => write!(out, "{partition}")?,
            Piece::Offset => write!(out, "{}", record.offset)?,
            Piece::Timestamp => write!(out, "{}", record.timestamp)?,
            Piece::Key => out.write_all(record.key.as_deref().unwrap_or_default())?,
            Piece::Value => out.write_all(record.value.as_deref().unwrap_or_default())?,
            Piece::Headers => out.write_all(headers_text(record).as_bytes())?,
            Piece::KeySize => write!(out, "{}", size(&record.key))?,
            Piece::ValueSize => write!(out, "{}", size(&record.value))?,
        }
    }
    Ok(())
}

fn record_json(topic: &str, partition: i32, record: &Record) -> Value {
    let text = |bytes: &Option<bytes::Bytes>| bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let headers: serde_json::Map<String, Value> =
        record.headers.iter().map(|(key, value)| (key.to_string(), json!(text(value)))).collect();
    json!({
        "topic": topic,
        "partition": partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": text(&record.key),
        "value": text(&record.value),
        "headers": headers,
    })
}

/// Where consume starts in each partition.
enum Start {
    Beginning,
    End,
    At(i64),
    BeforeEnd(i64),
    Time(i64),
}

fn parse_start(text: &str) -> Result<Start, String> {
    let bad = || format!("--offset {text}: use beginning, end, N, -N or @MILLIS");
    Ok(match text {
        "beginning" => Start::Beginning,
        "end" => Start::End,
        _ if text.starts_with('@') => Start::Time(text[1..].parse().map_err(|_| bad())?),
        _ if text.starts_with('-') => Start::BeforeEnd(text[1..].parse().map_err(|_| bad())?),
        _ => Start::At(text.parse().map_err(|_| bad())?),
    })
}

/// The offset of each of `partitions` at `timestamp` (-1 latest, -2 earliest), asked of leaders.
pub(super) fn list_offsets(
    layout: &Layout,
    topic: &str,
    partitions: &[i32],
    timestamp: i64,
) -> Result<BTreeMap<i32, i64>, String> {
    let mut offsets = BTreeMap::new();
    for &partition in partitions {
        let wanted =
            ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(timestamp);
        let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
            ListOffsetsTopic::default().with_name(TopicName(name(topic))).with_partitions(vec![wanted]),
        ]);
        let answer: ListOffsetsResponse =
            wire::call(layout.leader(partition)?, ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request)?;
        for p in answer.topics.iter().flat_map(|t| &t.partitions) {
            check(p.error_code, None, &format!("offsets of {topic}/{}", p.partition_index))?;
            offsets.insert(p.partition_index, p.offset);
        }
    }
    Ok(offsets)
}

/// A partition being read: the next offset wanted and, unless following, where to stop.
struct Position {
    next: i64,
    end: i64,
}

fn start_positions(
    layout: &Layout,
    topic: &str,
    partitions: &[i32],
    start: &Start,
) -> Result<BTreeMap<i32, Position>, String> {
    let ends = list_offsets(layout, topic, partitions, -1)?;
    let starts = match start {
        Start::Beginning => list_offsets(layout, topic, partitions, -2)?,
        Start::End => ends.clone(),
        Start::At(offset) => partitions.iter().map(|&p| (p, *offset)).collect(),
        Start::BeforeEnd(back) => {
            let earliest = list_offsets(layout, topic, partitions, -2)?;
            ends.iter()
                .map(|(&p, &end)| (p, (end - back).max(earliest.get(&p).copied().unwrap_or(0))))
                .collect()
        }
        Start::Time(ms) => {
            let found = list_offsets(layout, topic, partitions, *ms)?;
            found
                .into_iter()
                .map(|(p, offset)| (p, if offset < 0 { ends.get(&p).copied().unwrap_or(0) } else { offset }))
                .collect()
        }
    };
    Ok(partitions
        .iter()
        .map(|&p| {
            (
                p,
                Position {
                    next: starts.get(&p).copied().unwrap_or(0),
                    end: ends.get(&p).copied().unwrap_or(0),
                },
            )
        })
        .collect())
}

struct Consumer {
    topic: String,
    follow: bool,
    count: Option<u64>,
    json: bool,
    pieces: Vec<Piece>,
    printed: u64,
    bytes: u64,
}

impl Consumer {
    fn done(&self, positions: &BTreeMap<i32, Position>) -> bool {
        self.count.is_some_and(|count| self.printed >= count)
            || (!self.follow && positions.values().all(|p| p.next >= p.end))
    }

    /// One Fetch of the partitions led by `leader`; prints what came back.
    fn fetch(
        &mut self,
        connection: &mut (Writer, Reader),
        wanted: Vec<FetchPartition>,
        positions: &mut BTreeMap<i32, Position>,
        out: &mut impl Write,
    ) -> Result<(), String> {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(16 << 20)
            .with_topics(vec![
                FetchTopic::default().with_topic(TopicName(name(&self.topic))).with_partitions(wanted),
            ]);
        connection.0.send(ApiKey::Fetch, FETCH_VERSION, &request)?;
        let (_, response): (i32, FetchResponse) = connection.1.receive(ApiKey::Fetch, FETCH_VERSION)?;
        for answer in response.responses.iter().flat_map(|t| &t.partitions) {
            check(answer.error_code, None, &format!("fetch {}/{}", self.topic, answer.partition_index))?;
            let Some(position) = positions.get_mut(&answer.partition_index) else { continue };
            let Some(data) = &answer.records else { continue };
            let extent = wire::batch_extent(data);
            let mut whole = data.slice(..extent.bytes);
            self.bytes += whole.len() as u64;
            let batches = RecordBatchDecoder::decode_all(&mut whole)
                .map_err(|e| format!("decode fetched records: {e}"))?;
            for record in batches.iter().flat_map(|set| &set.records) {
                let wanted = record.offset >= position.next && (self.follow || record.offset < position.end);
                if !record.control && wanted && self.count.is_none_or(|count| self.printed < count) {
                    self.print(out, answer.partition_index, record)?;
                }
            }
            if let Some(next) = extent.next {
                position.next = position.next.max(next);
            }
        }
        Ok(())
    }

    fn print(&mut self, out: &mut impl Write, partition: i32, record: &Record) -> Result<(), String> {
        let written = if self.json {
            writeln!(out, "{}", record_json(&self.topic, partition, record))
        } else {
            write_formatted(out, &self.pieces, &self.topic, partition, record)
        };
        written.map_err(|e| format!("write the output: {e}"))?;
        self.printed += 1;
        Ok(())
    }
}

/// `ringmq consume`: prints the topic's records from the chosen start to the end (or on).
pub fn consume(args: ConsumeArgs, connection: &Connection) -> Result<(), String> {
    let address = wire::resolve(&connection.bootstrap)?;
    let layout = Layout::of(address, &args.topic, false)?;
    let partitions: Vec<i32> = if args.partitions.is_empty() {
        layout.leaders.keys().copied().collect()
    } else {
        args.partitions.clone()
    };
    for &partition in &partitions {
        layout.leader(partition)?;
    }
    let mut positions = start_positions(&layout, &args.topic, &partitions, &parse_start(&args.offset)?)?;
    let mut consumer = Consumer {
        topic: args.topic.clone(),
        follow: args.follow,
        count: args.count,
        json: connection.json,
        pieces: parse_format(&args.format)?,
        printed: 0,
        bytes: 0,
    };
    let mut connections = Connections::default();
    let mut progress = Progress::new(args.progress);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while !consumer.done(&positions) {
        let mut by_leader: BTreeMap<SocketAddr, Vec<FetchPartition>> = BTreeMap::new();
        for (&partition, position) in positions.iter().filter(|(_, p)| args.follow || p.next < p.end) {
            let wanted = FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(position.next)
                .with_partition_max_bytes(1 << 20);
            by_leader.entry(layout.leader(partition)?).or_default().push(wanted);
        }
        for (leader, wanted) in by_leader {
            consumer.fetch(connections.to(leader)?, wanted, &mut positions, &mut out)?;
        }
        out.flush().map_err(|e| format!("write the output: {e}"))?;
        progress.tick("consumed", consumer.printed, consumer.bytes);
    }
    out.flush().map_err(|e| format!("write the output: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_kcat_tokens_and_escapes() {
        let pieces = parse_format("%t/%p@%o %k=%s [%h] %K %S\\t%%\\n").expect("parses");
        let mut record = crate::record::plain(7, 1234, Some(bytes::Bytes::from_static(b"key")), None);
        record.headers.insert(name("h"), Some(bytes::Bytes::from_static(b"v")));
        let mut out = Vec::new();
        write_formatted(&mut out, &pieces, "orders", 2, &record).expect("written");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "orders/2@7 key= [h=v] 3 -1\t%\n");
        assert!(parse_format("%x").is_err());
    }

    #[test]
    fn the_key_partitioner_is_kafkas_murmur2() {
        // Kafka's Utils.murmur2("hello") is 2132663229 (positive already); 2132663229 % 7 = 4.
        assert_eq!(murmur2::murmur2(b"hello", murmur2::KAFKA_SEED), 2132663229);
        assert_eq!(partition_for_key(b"hello", 7), 4);
    }

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(
            split_line(b"k:v:w", Some(":")),
            (Some(bytes::Bytes::from_static(b"k")), bytes::Bytes::from_static(b"v:w"))
        );
        assert_eq!(split_line(b"plain", Some(":")), (None, bytes::Bytes::from_static(b"plain")));
        assert_eq!(split_line(b"a::b", Some("::")).0.as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn a_fetch_ending_inside_a_batch_keeps_only_whole_batches() {
        let batch =
            crate::record::encode(&[crate::record::plain(0, 1, None, Some(bytes::Bytes::from_static(b"v")))])
                .expect("batch");
        let mut two = batch.to_vec();
        two.extend_from_slice(&batch[..batch.len() - 3]);
        assert_eq!(wire::batch_extent(&two).bytes, batch.len());
        assert_eq!(wire::batch_extent(&two[..5]).bytes, 0);
    }
}
