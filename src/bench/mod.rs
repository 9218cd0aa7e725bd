//! `ringmq bench`: a load generator that speaks the Kafka protocol itself, so the same run can
//! measure ringmq, Kafka or Redpanda. `produce`, `consume` and `e2e` report throughput and
//! HdrHistogram latency percentiles, as a ratio of this machine's own limits measured in the
//! same run (`baseline`); `plot` draws percentile spectra of several runs in one SVG.
//!
//! - `load`: producer and consumer connections (threads, blocking sockets).
//! - `wire`: requests and responses on one connection.
//! - `baseline`: O_DIRECT write/read bandwidth, fdatasync latency, loopback TCP bandwidth.
//! - `report`: the summary, `--json`, the `.hgrm` file and the SVG plot.

pub mod baseline;
mod batch;
mod load;
pub mod report;
pub mod wire;

use bytes::Bytes;
use hdrhistogram::Histogram;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Produce records and report throughput and produce latency.
    Produce(LoadArgs),
    /// Fetch a topic (from its start, or its end with --from latest) and report throughput.
    Consume(LoadArgs),
    /// Produce and consume at once; latency is from each record's send to its receipt.
    E2e(LoadArgs),
    /// This machine's limits: O_DIRECT write and read, fdatasync, loopback TCP.
    Baseline(BaselineArgs),
    /// Draw the percentile spectra of .hgrm files into one SVG.
    Plot(PlotArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// A broker of the cluster to measure.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    #[arg(long, default_value = "ringmq-bench")]
    pub topic: String,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Record value size in bytes; with --record-size-max, sizes are spread evenly between.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    #[arg(long)]
    pub record_size_max: Option<usize>,
    /// Distinct keys (0: records have no key).
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
    /// Bytes of record values per produce batch.
    #[arg(long, default_value_t = 16384)]
    pub batch_bytes: usize,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    pub compression: String,
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub acks: i16,
    /// Batches per produce request, each for the next partition: a Kafka client sends one
    /// request per broker holding a ready batch for each of several partitions.
    #[arg(long, default_value_t = 1)]
    pub batches_per_request: usize,
    /// Producer (or consumer) connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Produce requests in flight per connection in closed loop.
    #[arg(long, default_value_t = 5)]
    pub in_flight: usize,
    /// Target records/s over all connections (open loop); unset: as fast as acknowledged.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to measure, after the warm-up (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Stop after this many records instead (the duration still bounds the run).
    #[arg(long)]
    pub records: Option<u64>,
    /// Pin the generator's threads to this core.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Consume from `earliest` or `latest`.
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// The data consumed is recent (in the broker's cache): compare with the loopback baseline
    /// rather than the O_DIRECT read one.
    #[arg(long)]
    pub tail: bool,
    /// Consume: a partition read to the end it had at the start is read again from where it
    /// started, until the duration ends. A steady read of the same (cached) records, as many
    /// consumers of one tail do, rather than a run as short as one fetch.
    #[arg(long)]
    pub rewind: bool,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Write the latency percentile distribution here (HdrHistogram .hgrm format).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write an SVG percentile plot of this run here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Skip measuring this machine's baseline first.
    #[arg(long)]
    pub no_baseline: bool,
    /// Directory on the disk whose O_DIRECT limits are the baseline.
    #[arg(long, default_value = ".")]
    pub baseline_dir: PathBuf,
}

#[derive(clap::Args, Clone, Debug)]
pub struct BaselineArgs {
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Network message size for the loopback measurement.
    #[arg(long, default_value_t = 16384)]
    pub message_bytes: usize,
    #[arg(long)]
    pub cpu: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Clone, Debug)]
pub struct PlotArgs {
    /// .hgrm files, each drawn as one line named after its file.
    #[arg(required = true)]
    pub hgrm: Vec<PathBuf>,
    #[arg(long, short)]
    pub out: PathBuf,
}

/// `10s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) =
        text.split_at(text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len()));
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 10s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// Everything a run needs, resolved.
pub struct LoadSettings {
    pub bootstrap: SocketAddr,
    pub topic: String,
    pub partitions: i32,
    pub record_bytes: usize,
    pub record_bytes_max: usize,
    pub keys: u64,
    pub batch_bytes: usize,
    pub batches_per_request: usize,
    pub compression: Compression,
    pub acks: i16,
    pub connections: usize,
    pub in_flight: usize,
    pub rate: Option<f64>,
    pub started: Instant,
    pub warmup: Duration,
    pub duration: Duration,
    pub records: Option<u64>,
    pub cpu: Option<usize>,
    /// Consumers start each partition again once they reach its end (`--rewind`).
    pub rewind: bool,
    /// Set when the producers of an e2e run are done: consumers drain, then stop.
    pub producers_done: AtomicBool,
}

impl LoadSettings {
    pub fn record_size(&self, n: u64) -> usize {
        if self.record_bytes_max <= self.record_bytes {
            return self.record_bytes;
        }
        let spread = (self.record_bytes_max - self.record_bytes + 1) as u64;
        // A cheap, deterministic spread (multiplicative hash of the record number).
        self.record_bytes + (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % spread as usize
    }

    pub fn records_per_batch(&self) -> usize {
        let average = (self.record_bytes + self.record_bytes_max.max(self.record_bytes)) / 2;
        (self.batch_bytes / average.max(1)).max(1)
    }

    pub fn warm_end(&self) -> Instant {
        self.started + self.warmup
    }

    pub fn deadline(&self) -> Instant {
        self.started + self.warmup + self.duration
    }

    /// Consumers of an e2e run keep reading a little after the producers stop.
    fn consume_deadline(&self) -> Instant {
        self.deadline() + Duration::from_secs(5)
    }

    fn budget_spent(&self, counters: &Counters) -> bool {
        self.records.is_some_and(|budget| counters.sent.load(Ordering::Relaxed) >= budget)
    }

    fn consumed_enough(&self, counters: &Counters) -> bool {
        let consumed = counters.records.load(Ordering::Relaxed);
        if self.producers_done.load(Ordering::Relaxed) {
            return consumed >= counters.produced.load(Ordering::Relaxed);
        }
        self.records.is_some_and(|budget| consumed >= budget)
    }
}

/// Live totals for the progress line (all records, warm-up included).
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// e2e: what the producers had acknowledged when they stopped.
    pub produced: AtomicU64,
}

/// What one thread measured after the warm-up.
pub struct Measured {
    pub records: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
    /// E2e only: the producers' latency per request in the same run, from when it was due to
    /// its acknowledgement, so a slow record is seen to be slow to be written or to be read.
    pub produce_latency_us: Option<Histogram<u64>>,
}

impl Measured {
    pub fn new() -> Measured {
        Measured {
            records: 0,
            bytes: 0,
            errors: 0,
            latency_us: load::latency_histogram(),
            produce_latency_us: None,
        }
    }

    fn record(&mut self, records: u64, bytes: u64, latency: Duration) {
        self.count(records, bytes);
        self.latency_us.saturating_record(latency.as_micros() as u64);
    }

    fn count(&mut self, records: u64, bytes: u64) {
        self.records += records;
        self.bytes += bytes;
    }

    fn merge(&mut self, other: Measured) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.errors += other.errors;
        // Both histograms have the same bounds, so adding cannot fail.
        let _same_bounds = self.latency_us.add(&other.latency_us);
    }
}

impl Default for Measured {
    fn default() -> Self {
        Measured::new()
    }
}

/// Incompressible-looking filler for record values.
fn filler(len: usize) -> Bytes {
    crate::testing::payload(0x5eed, len)
}

pub(crate) fn compression(name: &str) -> Result<Compression, String> {
    Ok(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => return Err(format!("--compression {other}: use none, gzip, snappy, lz4 or zstd")),
    })
}

/// The topic's partition count, creating it first if `--partitions` asks for that.
fn prepare_topic(bootstrap: SocketAddr, args: &LoadArgs) -> Result<i32, String> {
    let name = TopicName(StrBytes::from_string(args.topic.clone()));
    if let Some(partitions) = args.partitions {
        let topic = CreatableTopic::default()
            .with_name(name.clone())
            .with_num_partitions(partitions)
            .with_replication_factor(-1);
        let request = CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(30_000);
        let response: CreateTopicsResponse = wire::call(bootstrap, ApiKey::CreateTopics, 5, &request)?;
        let code = response.topics.first().map_or(0, |t| t.error_code);
        const TOPIC_ALREADY_EXISTS: i16 = 36;
        if code != 0 && code != TOPIC_ALREADY_EXISTS {
            return Err(format!("creating topic {}: error {code}", args.topic));
        }
    }
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name))]))
        .with_allow_auto_topic_creation(false);
    let response: MetadataResponse = wire::call(bootstrap, ApiKey::Metadata, 9, &request)?;
    let topic = response.topics.first().ok_or("no topic in the metadata response")?;
    if topic.error_code != 0 || topic.partitions.is_empty() {
        return Err(format!(
            "topic {} is not there (error {}); pass --partitions N to create it",
            args.topic, topic.error_code
        ));
    }
    Ok(topic.partitions.len() as i32)
}

fn settings(args: &LoadArgs) -> Result<LoadSettings, String> {
    if args.rewind && args.from == "latest" {
        return Err("--rewind reads from where a partition started to its end: not with --from latest".into());
    }
    let bootstrap = wire::resolve(&args.bootstrap)?;
    let partitions = prepare_topic(bootstrap, args)?;
    if args.record_size == 0 || args.batch_bytes == 0 || args.connections == 0 {
        return Err("--record-size, --batch-bytes and --connections must be positive".into());
    }
    Ok(LoadSettings {
        bootstrap,
        topic: args.topic.clone(),
        partitions,
        record_bytes: args.record_size,
        record_bytes_max: args.record_size_max.unwrap_or(args.record_size),
        keys: args.keys,
        batch_bytes: args.batch_bytes,
        batches_per_request: args.batches_per_request.max(1),
        compression: compression(&args.compression)?,
        acks: args.acks,
        connections: args.connections,
        in_flight: args.in_flight,
        rate: args.rate.filter(|rate| *rate > 0.0),
        started: Instant::now(),
        warmup: args.warmup,
        duration: args.duration,
        records: args.records,
        cpu: args.cpu,
        rewind: args.rewind,
        producers_done: AtomicBool::new(false),
    })
}

/// Prints records/s and MB/s once a second until `done`.
fn progress(counters: Arc<Counters>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut records, mut bytes) = (0, 0);
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let (r, b) = (counters.records.load(Ordering::Relaxed), counters.bytes.load(Ordering::Relaxed));
            let errors = counters.errors.load(Ordering::Relaxed);
            eprintln!(
                "{:>12} records/s {:>10.1} MB/s   errors {errors}",
                r - records,
                (b - bytes) as f64 / 1e6
            );
            (records, bytes) = (r, b);
        }
    })
}

/// Runs `ringmq bench <command>`.
pub fn run(command: BenchCommand) -> Result<(), String> {
    let args = match command {
        BenchCommand::Baseline(args) => {
            let measured = baseline::measure(&args.dir, args.message_bytes, args.cpu)?;
            return report::print_baseline(&measured, args.json);
        }
        BenchCommand::Plot(args) => return report::plot_files(&args.hgrm, &args.out),
        BenchCommand::Produce(ref args) | BenchCommand::Consume(ref args) | BenchCommand::E2e(ref args) => {
            args.clone()
        }
    };
    let workload = match command {
        BenchCommand::Produce(_) => report::Workload::Produce,
        BenchCommand::Consume(_) if args.from == "latest" || args.tail => report::Workload::ConsumeTail,
        BenchCommand::Consume(_) => report::Workload::Consume,
        _ => report::Workload::E2e,
    };
    let baseline = if args.no_baseline {
        None
    } else {
        Some(baseline::measure(&args.baseline_dir, args.batch_bytes, args.cpu)?)
    };
    let settings = Arc::new(settings(&args)?);
    let steal_before = report::cpu_times();
    let counters = Arc::new(Counters::default());
    let done = Arc::new(AtomicBool::new(false));
    let ticker = (!args.json).then(|| progress(counters.clone(), done.clone()));
    let measured = match workload {
        report::Workload::Produce => load::produce(&settings, &counters),
        report::Workload::Consume | report::Workload::ConsumeTail => {
            let offsets = load::start_offsets(&settings, args.from != "latest")?;
            load::consume(&settings, &counters, offsets, false)
        }
        report::Workload::E2e => e2e(&settings, &counters),
    };
    // Taken before the progress thread is joined: it wakes once a second, and the wait for it
    // is no part of the run.
    let ended = Instant::now();
    done.store(true, Ordering::Relaxed);
    if let Some(ticker) = ticker {
        let _ = ticker.join();
    }
    let elapsed = settings.deadline().min(ended).saturating_duration_since(settings.warm_end());
    let mut summary = report::Summary::new(workload, &args, measured?, elapsed, baseline);
    summary.cpu_steal_percent = report::steal_percent(steal_before, report::cpu_times());
    report::finish(&summary, &args)
}

/// Consumers start at the end of the topic, then producers run; latency is per record.
fn e2e(settings: &Arc<LoadSettings>, counters: &Arc<Counters>) -> Result<Measured, String> {
    let offsets = load::start_offsets(settings, false)?;
    let consumers = {
        let (settings, counters) = (settings.clone(), counters.clone());
        std::thread::spawn(move || load::consume(&settings, &counters, offsets, true))
    };
    let producer_counters = Arc::new(Counters::default());
    let produced = load::produce(settings, &producer_counters);
    counters.produced.store(producer_counters.records.load(Ordering::Relaxed), Ordering::Relaxed);
    settings.producers_done.store(true, Ordering::Relaxed);
    let mut measured = consumers.join().map_err(|_| "the consumers panicked".to_string())??;
    let produced = produced?;
    measured.errors += produced.errors;
    measured.produce_latency_us = Some(produced.latency_us);
    Ok(measured)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn settings() -> LoadSettings {
        LoadSettings {
            bootstrap: SocketAddr::from(([127, 0, 0, 1], 9092)),
            topic: "t".into(),
            partitions: 1,
            record_bytes: 100,
            record_bytes_max: 300,
            keys: 0,
            batch_bytes: 16384,
            batches_per_request: 1,
            compression: Compression::None,
            acks: 1,
            connections: 1,
            in_flight: 1,
            rate: None,
            started: Instant::now(),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            records: None,
            cpu: None,
            rewind: false,
            producers_done: AtomicBool::new(false),
        }
    }

    #[test]
    fn durations_and_record_sizes_parse_and_spread() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err() && parse_duration("5h").is_err());
        let settings = settings();
        let sizes: Vec<usize> = (0..10_000).map(|n| settings.record_size(n)).collect();
        assert!(sizes.iter().all(|s| (100..=300).contains(s)));
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!((190.0..210.0).contains(&mean), "evenly spread: mean {mean}");
    }
}
