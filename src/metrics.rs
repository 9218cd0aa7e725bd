//! Metrics, kept per core: each shard's thread counts into its own thread-local `Counters`
//! (nothing shared, nothing locked). A scrape asks every core for a `CoreSnapshot` by message
//! and renders them together in Prometheus' text format (`render`); the admin listener serves
//! it (`server/admin.rs`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (100 µs to 10 s).
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A latency histogram with `LATENCY_BUCKETS` (the last count is everything above them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub counts: [u64; LATENCY_BUCKETS.len() + 1],
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket =
            LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What one topic's records did on one core.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicCounters {
    pub produced_bytes: u64,
    pub produced_records: u64,
    pub fetched_bytes: u64,
}

/// Everything one core counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// By API key: requests answered and their latency (frame read to answer written).
    pub requests: BTreeMap<i16, Histogram>,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    pub connections_accepted: u64,
    pub peer_connections_accepted: u64,
    pub connections_open: u64,
    pub topics: BTreeMap<String, TopicCounters>,
    /// Record bytes Fetch answers sent from the cache's or a read's own buffers.
    pub fetch_record_bytes: u64,
    /// Incremental fetch sessions (KIP-227) this core holds, and fetches that continued one.
    pub fetch_sessions: u64,
    pub fetch_incremental: u64,
    /// Record bytes copied in user space while reading logs (`ReadBatches::to_vec`: the
    /// coordinators' loads; never Fetch).
    pub log_read_copied_bytes: u64,
    pub disk_writes: u64,
    pub disk_written_bytes: u64,
    /// Segment writes whose batches were copied into their buffers as they were appended
    /// (`log::write_queue`); the others' were copied when written.
    pub disk_writes_staged: u64,
    pub disk_reads: u64,
    pub disk_read_bytes: u64,
    pub disk_writes_in_flight: u64,
    /// Bytes of segment files allocated ahead of their writes (`io::WriteFile`).
    pub disk_allocated_ahead_bytes: u64,
    pub disk_reads_in_flight: u64,
    /// Cold-read read-ahead (`log::read_ahead`): started, taken by the read it was for, and
    /// dropped before any read took it (for room, or its segment or generation is gone).
    pub read_ahead_started: u64,
    pub read_ahead_used: u64,
    pub read_ahead_dropped: u64,
    pub fsync: Histogram,
    /// Segment writes: submitted to complete (both pieces of a split write).
    pub disk_write: Histogram,
    /// Segment rolls: from sealing the full segment to the new one taking writes. The
    /// partition's appends wait meanwhile.
    pub segment_roll: Histogram,
}

impl Counters {
    /// `topic`'s counters on this core, created on first use (the name is copied only then).
    pub fn topic_mut(&mut self, topic: &str) -> &mut TopicCounters {
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.to_string(), TopicCounters::default());
        }
        self.topics.get_mut(topic).expect("inserted above")
    }
}

thread_local! {
    static CORE: RefCell<Counters> = RefCell::new(Counters::default());
}

/// Updates this core's counters. Never held across an await.
pub fn count(update: impl FnOnce(&mut Counters)) {
    CORE.with(|counters| update(&mut counters.borrow_mut()));
}

/// This core's counters now.
pub fn counters() -> Counters {
    CORE.with(|counters| counters.borrow().clone())
}

/// One partition's state at a scrape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionGauges {
    pub topic: String,
    pub partition: i32,
    pub size_bytes: u64,
    pub segments: usize,
    pub log_start: i64,
    pub high_watermark: i64,
    pub last_stable: i64,
    pub cache_bytes: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub producers: usize,
}

/// What one core reports at a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreSnapshot {
    pub core: usize,
    pub counters: Counters,
    pub partitions: Vec<PartitionGauges>,
    /// (group, topic, partition, committed offset) of the groups this core coordinates.
    pub committed: Vec<(String, String, i32, i64)>,
}

/// Kafka's name of an API key, for labels.
fn api_name(key: i16) -> String {
    kafka_protocol::messages::ApiKey::try_from(key)
        .map_or_else(|_| format!("api{key}"), |api| format!("{api:?}"))
}

/// Label values escaped as the text format requires.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _infallible = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        let _infallible = if labels.is_empty() {
            writeln!(self.0, "{name} {value}")
        } else {
            writeln!(self.0, "{name}{{{}}} {value}", labels.join(","))
        };
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(histogram.counts) {
            cumulative += count;
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, cumulative);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with_le, histogram.count());
        self.sample(&format!("{name}_sum"), labels, histogram.sum_seconds);
        self.sample(&format!("{name}_count"), labels, histogram.count());
    }

    /// One metric with one sample per core.
    fn per_core(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        cores: &[CoreSnapshot],
        value: fn(&Counters) -> u64,
    ) {
        self.header(name, kind, help);
        for core in cores {
            self.sample(name, &[("core", &core.core.to_string())], value(&core.counters));
        }
    }
}

/// What this broker's newest metadata image says of the cluster (a one-node broker: itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterGauges {
    /// Whether this node is the active controller.
    pub active_controller: bool,
    pub live_brokers: u64,
    pub fenced_brokers: u64,
    /// Partitions without a leader.
    pub offline_partitions: u64,
    /// Partitions this broker leads.
    pub leader_partitions: u64,
    /// Partitions this broker leads with fewer in-sync replicas than replicas.
    pub under_replicated_partitions: u64,
    /// The image's version (the controller log index it was built to).
    pub metadata_version: u64,
}

/// The cluster gauges' names, help texts and values.
type ClusterMetric = (&'static str, &'static str, fn(&ClusterGauges) -> u64);

const CLUSTER: [ClusterMetric; 6] = [
    ("ringmq_cluster_active_controller", "1 if this node is the active controller.", |g| {
        u64::from(g.active_controller)
    }),
    ("ringmq_cluster_offline_partitions", "Partitions without a leader.", |g| g.offline_partitions),
    ("ringmq_leader_partitions", "Partitions this broker leads.", |g| g.leader_partitions),
    (
        "ringmq_under_replicated_partitions",
        "Partitions this broker leads with fewer in-sync replicas than replicas.",
        |g| g.under_replicated_partitions,
    ),
    (
        "ringmq_cluster_metadata_version",
        "The controller log index this broker's metadata image was built to.",
        |g| g.metadata_version,
    ),
    ("ringmq_cluster_fenced_brokers", "Brokers fenced for missing their heartbeats.", |g| g.fenced_brokers),
];

fn render_cluster(out: &mut Out, gauges: &ClusterGauges) {
    for (name, help, value) in CLUSTER {
        out.header(name, "gauge", help);
        out.sample(name, &[], value(gauges));
    }
    out.header("ringmq_cluster_brokers", "gauge", "Live brokers in this broker's metadata image.");
    out.sample("ringmq_cluster_brokers", &[], gauges.live_brokers);
}

/// The Prometheus text exposition (format 0.0.4) of every core's snapshot and the cluster.
pub fn render(cores: &[CoreSnapshot], cluster: &ClusterGauges) -> String {
    let mut out = Out(String::with_capacity(16 << 10));
    out.header("ringmq_requests_total", "counter", "Kafka requests answered, by core and API.");
    for core in cores {
        for (&api, histogram) in &core.counters.requests {
            out.sample(
                "ringmq_requests_total",
                &[("core", &core.core.to_string()), ("api", &api_name(api))],
                histogram.count(),
            );
        }
    }
    out.header(
        "ringmq_request_duration_seconds",
        "histogram",
        "Time from a request's last byte read to its answer written, by core and API.",
    );
    for core in cores {
        for (&api, histogram) in &core.counters.requests {
            let labels = [("core", core.core.to_string()), ("api", api_name(api))];
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            out.histogram("ringmq_request_duration_seconds", &labels, histogram);
        }
    }
    render_counters(&mut out, cores);
    render_topics(&mut out, cores);
    render_partitions(&mut out, cores);
    render_cluster(&mut out, cluster);
    out.0
}

/// A per-core metric's name, type, help text and how to read it from `Counters`.
type CoreMetric = (&'static str, &'static str, &'static str, fn(&Counters) -> u64);

/// The per-core counters and gauges read straight from `Counters`.
const PER_CORE: [CoreMetric; 18] = [
    ("ringmq_network_received_bytes_total", "counter", "Bytes of Kafka requests received.", |c| {
        c.received_bytes
    }),
    ("ringmq_network_sent_bytes_total", "counter", "Bytes of Kafka responses sent.", |c| c.sent_bytes),
    ("ringmq_connections_accepted_total", "counter", "Kafka client connections accepted.", |c| {
        c.connections_accepted
    }),
    ("ringmq_connections", "gauge", "Kafka client connections open.", |c| c.connections_open),
    (
        "ringmq_peer_connections_accepted_total",
        "counter",
        "Connections accepted on the peer listener (other brokers' replica fetches and markers).",
        |c| c.peer_connections_accepted,
    ),
    ("ringmq_fetch_sessions", "gauge", "Incremental fetch sessions (KIP-227) held.", |c| c.fetch_sessions),
    (
        "ringmq_fetch_incremental_total",
        "counter",
        "Fetches that continued an incremental fetch session.",
        |c| c.fetch_incremental,
    ),
    (
        "ringmq_fetch_record_bytes_total",
        "counter",
        "Record bytes Fetch answers sent from the buffers they were cached or read into.",
        |c| c.fetch_record_bytes,
    ),
    (
        "ringmq_log_read_copied_bytes_total",
        "counter",
        "Record bytes copied in user space while reading logs (coordinator loads; Fetch copies none).",
        |c| c.log_read_copied_bytes,
    ),
    ("ringmq_disk_writes_total", "counter", "O_DIRECT segment writes submitted to io_uring.", |c| {
        c.disk_writes
    }),
    ("ringmq_disk_written_bytes_total", "counter", "Bytes written to segments.", |c| c.disk_written_bytes),
    (
        "ringmq_disk_writes_staged_total",
        "counter",
        "Segment writes whose batches were copied into them as they were appended, not when written.",
        |c| c.disk_writes_staged,
    ),
    (
        "ringmq_disk_allocated_ahead_bytes_total",
        "counter",
        "Bytes of segment files allocated ahead of their writes, so that those need not grow the file.",
        |c| c.disk_allocated_ahead_bytes,
    ),
    ("ringmq_disk_reads_total", "counter", "O_DIRECT segment reads.", |c| c.disk_reads),
    ("ringmq_disk_read_bytes_total", "counter", "Bytes read from segments.", |c| c.disk_read_bytes),
    ("ringmq_read_ahead_started_total", "counter", "Cold-read read-aheads started.", |c| {
        c.read_ahead_started
    }),
    ("ringmq_read_ahead_used_total", "counter", "Read-aheads a later read took instead of reading.", |c| {
        c.read_ahead_used
    }),
    (
        "ringmq_read_ahead_dropped_total",
        "counter",
        "Read-aheads dropped unused (no room, their segment deleted, their log truncated).",
        |c| c.read_ahead_dropped,
    ),
];

/// The per-core counters: network, connections, Fetch, disk.
fn render_counters(out: &mut Out, cores: &[CoreSnapshot]) {
    for (name, kind, help, value) in PER_CORE {
        out.per_core(name, kind, help, cores, value);
    }
    out.header("ringmq_disk_in_flight", "gauge", "Segment reads and writes submitted and not yet complete.");
    for core in cores {
        let label = core.core.to_string();
        out.sample(
            "ringmq_disk_in_flight",
            &[("core", &label), ("op", "write")],
            core.counters.disk_writes_in_flight,
        );
        out.sample(
            "ringmq_disk_in_flight",
            &[("core", &label), ("op", "read")],
            core.counters.disk_reads_in_flight,
        );
    }
    type Latency = (&'static str, &'static str, fn(&Counters) -> &Histogram);
    let disk_latencies: [Latency; 3] = [
        ("ringmq_disk_write_duration_seconds", "O_DIRECT write latency of segment files.", |c| &c.disk_write),
        ("ringmq_fsync_duration_seconds", "fdatasync latency of segment files.", |c| &c.fsync),
        (
            "ringmq_segment_roll_duration_seconds",
            "Segment rolls, the full segment sealed to the new one open; the partition's writes wait.",
            |c| &c.segment_roll,
        ),
    ];
    for (name, help, histogram) in disk_latencies {
        out.header(name, "histogram", help);
        for core in cores {
            out.histogram(name, &[("core", &core.core.to_string())], histogram(&core.counters));
        }
    }
}

/// A metric's name, help text and how to read it from `T`.
type Metric<T, V> = (&'static str, &'static str, fn(&T) -> V);

fn render_topics(out: &mut Out, cores: &[CoreSnapshot]) {
    let mut topics: BTreeMap<&str, TopicCounters> = BTreeMap::new();
    for (topic, counters) in cores.iter().flat_map(|core| &core.counters.topics) {
        let total = topics.entry(topic).or_default();
        total.produced_bytes += counters.produced_bytes;
        total.produced_records += counters.produced_records;
        total.fetched_bytes += counters.fetched_bytes;
    }
    let metrics: [Metric<TopicCounters, u64>; 3] = [
        ("ringmq_topic_produced_bytes_total", "Record batch bytes appended, by topic.", |t| t.produced_bytes),
        ("ringmq_topic_produced_records_total", "Records appended, by topic.", |t| t.produced_records),
        ("ringmq_topic_fetched_bytes_total", "Record batch bytes sent to consumers, by topic.", |t| {
            t.fetched_bytes
        }),
    ];
    for (name, help, value) in metrics {
        out.header(name, "counter", help);
        for (topic, counters) in &topics {
            out.sample(name, &[("topic", topic)], value(counters));
        }
    }
}

fn render_partitions(out: &mut Out, cores: &[CoreSnapshot]) {
    let partitions: Vec<&PartitionGauges> = cores.iter().flat_map(|core| &core.partitions).collect();
    let gauges: [Metric<PartitionGauges, i64>; 7] = [
        ("ringmq_log_size_bytes", "Bytes of a partition's segments.", |p| p.size_bytes as i64),
        ("ringmq_log_segments", "Segments of a partition.", |p| p.segments as i64),
        ("ringmq_log_start_offset", "A partition's first readable offset.", |p| p.log_start),
        ("ringmq_high_watermark", "A partition's high watermark (next offset readable).", |p| {
            p.high_watermark
        }),
        (
            "ringmq_last_stable_offset",
            "A partition's last stable offset (read_committed readers stop there).",
            |p| p.last_stable,
        ),
        ("ringmq_batch_cache_bytes", "Bytes a partition holds in its batch cache.", |p| p.cache_bytes as i64),
        ("ringmq_idempotent_producers", "Producers whose sequences a partition remembers.", |p| {
            p.producers as i64
        }),
    ];
    for (name, help, value) in gauges {
        out.header(name, "gauge", help);
        for p in &partitions {
            out.sample(name, &[("topic", &p.topic), ("partition", &p.partition.to_string())], value(p));
        }
    }
    let counters: [Metric<PartitionGauges, u64>; 2] = [
        ("ringmq_batch_cache_hits_total", "Reads a partition's batch cache answered.", |p| p.cache_hits),
        ("ringmq_batch_cache_misses_total", "Reads that went to a partition's segments.", |p| p.cache_misses),
    ];
    for (name, help, value) in counters {
        out.header(name, "counter", help);
        for p in &partitions {
            out.sample(name, &[("topic", &p.topic), ("partition", &p.partition.to_string())], value(p));
        }
    }
    let high: BTreeMap<(&str, i32), i64> =
        partitions.iter().map(|p| ((p.topic.as_str(), p.partition), p.high_watermark)).collect();
    out.header(
        "ringmq_consumer_group_lag",
        "gauge",
        "Records between a group's committed offset and the partition's high watermark.",
    );
    for core in cores {
        for (group, topic, partition, offset) in &core.committed {
            if let Some(&end) = high.get(&(topic.as_str(), *partition)) {
                let labels = [
                    ("group", group.as_str()),
                    ("topic", topic.as_str()),
                    ("partition", &partition.to_string()),
                ];
                out.sample("ringmq_consumer_group_lag", &labels, (end - offset).max(0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_the_text_format_holds() {
        let mut histogram = Histogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let mut counters = Counters::default();
        counters.requests.insert(0, histogram);
        counters.topics.insert(
            "orders\"x".into(),
            TopicCounters { produced_bytes: 10, produced_records: 2, fetched_bytes: 7 },
        );
        let partition = PartitionGauges {
            topic: "orders\"x".into(),
            partition: 1,
            size_bytes: 4096,
            segments: 1,
            log_start: 0,
            high_watermark: 100,
            last_stable: 90,
            cache_bytes: 10,
            cache_hits: 3,
            cache_misses: 1,
            producers: 2,
        };
        let core = CoreSnapshot {
            core: 0,
            counters,
            partitions: vec![partition],
            committed: vec![("g".into(), "orders\"x".into(), 1, 40)],
        };
        let cluster = ClusterGauges {
            active_controller: true,
            live_brokers: 3,
            offline_partitions: 2,
            ..Default::default()
        };
        let text = render(&[core], &cluster);
        assert!(text.contains("ringmq_cluster_active_controller 1\n"), "{text}");
        assert!(text.contains("ringmq_cluster_offline_partitions 2\n"));
        assert!(text.contains("ringmq_cluster_brokers 3\n"));
        assert!(text.contains("ringmq_requests_total{core=\"0\",api=\"Produce\"} 3"), "{text}");
        assert!(
            text.contains(
                "ringmq_request_duration_seconds_bucket{core=\"0\",api=\"Produce\",le=\"0.0001\"} 1"
            )
        );
        assert!(
            text.contains(
                "ringmq_request_duration_seconds_bucket{core=\"0\",api=\"Produce\",le=\"0.005\"} 2"
            )
        );
        assert!(
            text.contains("ringmq_request_duration_seconds_bucket{core=\"0\",api=\"Produce\",le=\"+Inf\"} 3")
        );
        assert!(text.contains("ringmq_topic_produced_bytes_total{topic=\"orders\\\"x\"} 10"));
        assert!(
            text.contains("ringmq_consumer_group_lag{group=\"g\",topic=\"orders\\\"x\",partition=\"1\"} 60")
        );
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a sample is a series and a value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.starts_with("ringmq_"), "{line}");
        }
    }
}
