//! The broker's settings: embedded defaults, overridden by a TOML file (`--config`), then by
//! environment variables (`RINGMQ_<KEY>`), then by flags. One table (`SETTINGS`) names every
//! key, its default and its meaning, so all sources are parsed the same way and an unknown key
//! or a bad value is an error that names the key.

use crate::constants::BATCH_CACHE_BYTES_DEFAULT;
use crate::log::{FlushPolicy, LogConfig, TimestampType};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// The admin HTTP listener: Prometheus metrics, health and readiness.
    pub admin_listen: SocketAddr,
    /// The address clients are told to connect to; defaults to `listen`.
    pub advertised_listener: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub cores: usize,
    pub node_id: i32,
    pub socket_request_max_bytes: usize,
    pub connections_max_idle: Duration,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub retention_check_interval: Duration,
    /// How long a partition remembers an idle idempotent producer (Kafka's
    /// `producer.id.expiration.ms`).
    pub producer_id_expiration: Duration,
    pub spin_before_park: Duration,
    /// Incremental fetch sessions (KIP-227) the broker keeps, shared out among its cores, and
    /// how long one must be unused before a new one may take its place.
    pub fetch_session_slots: usize,
    pub fetch_session_eviction: Duration,
    pub cluster: ClusterConfig,
    pub groups: GroupConfig,
    pub transactions: TxnConfig,
    /// Defaults of the per-topic settings (Kafka's `log.*` broker defaults).
    pub topic_defaults: LogConfig,
}

/// How this broker joins a cluster (Kafka's `controller.quorum.*` and `broker.*` settings).
#[derive(Clone, Debug, Default)]
pub struct ClusterConfig {
    /// The controller quorum: node id and controller address of each voter. Empty means a
    /// one-node cluster without a controller, the zero-config default.
    pub voters: Vec<(i32, String)>,
    /// Where this node's controller listens, if it is a voter; defaults to its voter address.
    pub controller_listen: Option<SocketAddr>,
    /// A listener for other brokers (replica fetches, transaction markers), apart from the
    /// clients'; without it brokers use the Kafka listener.
    pub peer_listen: Option<SocketAddr>,
    pub rack: Option<String>,
    pub heartbeat_interval: Duration,
    /// A broker silent for this long is fenced: clients are no longer sent to it.
    pub session_timeout: Duration,
    /// Controller log entries between snapshots of the metadata image.
    pub snapshot_entries: u64,
    /// A follower that has not caught up with its leader for this long leaves the in-sync
    /// replicas (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_max: Duration,
}

impl ClusterConfig {
    /// Whether this node is a broker of a cluster with a controller quorum.
    pub fn is_clustered(&self) -> bool {
        !self.voters.is_empty()
    }
}

/// Parses `ID@HOST:PORT,…`.
fn parse_voters(text: &str) -> Result<Vec<(i32, String)>, String> {
    let mut voters: Vec<(i32, String)> = Vec::new();
    for voter in text.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let (id, address) = voter.split_once('@').ok_or_else(|| format!("{voter}: expected ID@HOST:PORT"))?;
        let id: i32 = id.trim().parse().map_err(|_| format!("{voter}: the node id is not a number"))?;
        if id < 0 {
            return Err(format!("{voter}: node ids are not negative"));
        }
        address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .ok_or_else(|| format!("{voter}: expected HOST:PORT"))?;
        if voters.iter().any(|(known, _)| *known == id) {
            return Err(format!("node {id} is listed twice"));
        }
        voters.push((id, address.trim().to_string()));
    }
    Ok(voters)
}

/// The group coordinator's settings (Kafka's `group.*` and `offsets.*`).
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// How long the first rebalance of an empty group waits for more members to join.
    pub initial_rebalance_delay: Duration,
    pub session_timeout_min: Duration,
    pub session_timeout_max: Duration,
    /// Members one group may have.
    pub size_max: usize,
    /// Partitions of the internal `__consumer_offsets` topic (fixed once it exists).
    pub offsets_topic_partitions: i32,
    /// Replicas of each `__consumer_offsets` partition in a cluster.
    pub offsets_topic_replication: i16,
    /// How long the committed offsets of an empty group are kept.
    pub offsets_retention: Duration,
    /// KIP-848 consumer groups: how often members heartbeat, and how long one may be silent.
    pub consumer_heartbeat_interval: Duration,
    pub consumer_session_timeout: Duration,
}

/// The transaction coordinator's settings (Kafka's `transaction.*` and `transactional.id.*`).
#[derive(Clone, Debug)]
pub struct TxnConfig {
    /// Partitions of the internal `__transaction_state` topic (fixed once it exists).
    pub state_topic_partitions: i32,
    /// Replicas of each `__transaction_state` partition in a cluster.
    pub state_topic_replication: i16,
    /// The longest transaction timeout a producer may ask for.
    pub timeout_max: Duration,
    /// How often open transactions are checked against their timeout.
    pub abort_check_interval: Duration,
    /// How long an idle transactional id's state is kept.
    pub id_expiration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown setting `{0}` (see `ringmq config defaults`)")]
    UnknownKey(String),
    #[error("setting `{key}`: {reason}")]
    BadValue { key: String, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
}

/// One setting: its key, its default (as text, as a user would write it) and its meaning.
pub struct Setting {
    pub key: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
    apply: fn(&mut BrokerConfig, &str) -> Result<(), String>,
}

fn parse<T: std::str::FromStr>(value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse::<T>().map_err(|e| format!("`{value}`: {e}"))
}

/// An optional address: empty means none.
fn optional_address(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.is_empty() { Ok(None) } else { address(value).map(Some) }
}

fn address(value: &str) -> Result<SocketAddr, String> {
    value
        .to_socket_addrs()
        .map_err(|e| format!("`{value}` is not HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("`{value}` resolves to no address"))
}

/// Milliseconds, with -1 meaning "no limit" as in Kafka.
fn optional_ms(value: &str) -> Result<Option<i64>, String> {
    match parse::<i64>(value)? {
        -1 => Ok(None),
        ms if ms >= 0 => Ok(Some(ms)),
        ms => Err(format!("{ms} must be -1 or at least 0")),
    }
}

pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        default: "127.0.0.1:9092",
        meaning: "address of the Kafka listener (every core accepts on it)",
        apply: |c, v| {
            c.listen = address(v)?;
            Ok(())
        },
    },
    Setting {
        key: "admin_listen",
        default: "127.0.0.1:9644",
        meaning: "address of the admin HTTP listener: /metrics (Prometheus), /health, /ready",
        apply: |c, v| {
            c.admin_listen = address(v)?;
            Ok(())
        },
    },
    Setting {
        key: "advertised_listener",
        default: "",
        meaning: "HOST:PORT clients are told to connect to; empty means the listen address",
        apply: |c, v| {
            c.advertised_listener = optional_address(v)?;
            Ok(())
        },
    },
    Setting {
        key: "data_dir",
        default: "./ringmq-data",
        meaning: "directory holding every partition's log",
        apply: |c, v| {
            c.data_dir = PathBuf::from(v);
            Ok(())
        },
    },
    Setting {
        key: "cores",
        default: "",
        meaning: "shards (pinned executors); empty means one per available core",
        apply: |c, v| {
            let available = available_cores();
            c.cores = if v.is_empty() { available } else { parse(v)? };
            if c.cores == 0 || c.cores > available {
                return Err(format!("{} must be within 1..={available} (available cores)", c.cores));
            }
            Ok(())
        },
    },
    Setting {
        key: "node_id",
        default: "0",
        meaning: "this broker's id in metadata",
        apply: |c, v| {
            c.node_id = parse(v)?;
            Ok(())
        },
    },
    Setting {
        key: "controller_quorum_voters",
        default: "",
        meaning: "the controller quorum as ID@HOST:PORT,... (flag --controllers); empty runs one node without a controller",
        apply: |c, v| {
            c.cluster.voters = parse_voters(v)?;
            Ok(())
        },
    },
    Setting {
        key: "peer_listen",
        default: "",
        meaning: "a listener for other brokers' replica fetches and transaction markers, apart from the clients' (flag --peer-listen); empty means they use the Kafka listener",
        apply: |c, v| {
            c.cluster.peer_listen = optional_address(v)?;
            Ok(())
        },
    },
    Setting {
        key: "controller_listen",
        default: "",
        meaning: "where this node's controller listens (flag --controller-listen); empty means its address in controller_quorum_voters",
        apply: |c, v| {
            c.cluster.controller_listen = optional_address(v)?;
            Ok(())
        },
    },
    Setting {
        key: "broker_rack",
        default: "",
        meaning: "the rack clients and replica placement see for this broker; empty means none",
        apply: |c, v| {
            c.cluster.rack = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
    },
    Setting {
        key: "broker_heartbeat_interval_ms",
        default: "2000",
        meaning: "how often a broker tells the controller quorum it is alive",
        apply: |c, v| {
            c.cluster.heartbeat_interval = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "broker_session_timeout_ms",
        default: "9000",
        meaning: "a broker whose heartbeats stop for this long is fenced",
        apply: |c, v| {
            c.cluster.session_timeout = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "replica_lag_time_max_ms",
        default: "30000",
        meaning: "a follower that has not caught up with its leader for this long leaves the in-sync replicas",
        apply: |c, v| {
            c.cluster.replica_lag_max = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "controller_snapshot_entries",
        default: "2000",
        meaning: "controller log entries between snapshots of the metadata image; the log before a snapshot is dropped",
        apply: |c, v| {
            c.cluster.snapshot_entries = parse(v)?;
            if c.cluster.snapshot_entries == 0 {
                return Err("must be at least 1".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "socket_request_max_bytes",
        default: "104857600",
        meaning: "largest request accepted; a larger frame closes the connection",
        apply: |c, v| {
            c.socket_request_max_bytes = parse(v)?;
            if c.socket_request_max_bytes < 1024 {
                return Err("must be at least 1024".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "connections_max_idle_ms",
        default: "600000",
        meaning: "a connection that sends nothing for this long is closed (also bounds a stalled request)",
        apply: |c, v| {
            c.connections_max_idle = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "auto_create_topics_enable",
        default: "true",
        meaning: "create a topic on first use by Metadata or Produce",
        apply: |c, v| {
            c.auto_create_topics = parse(v)?;
            Ok(())
        },
    },
    Setting {
        key: "num_partitions",
        default: "1",
        meaning: "partitions of an auto-created topic",
        apply: |c, v| {
            c.num_partitions = parse(v)?;
            if c.num_partitions < 1 {
                return Err("must be at least 1".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "group_initial_rebalance_delay_ms",
        default: "3000",
        meaning: "how long the first rebalance of an empty group waits for more members to join",
        apply: |c, v| {
            c.groups.initial_rebalance_delay = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "group_min_session_timeout_ms",
        default: "6000",
        meaning: "shortest session.timeout.ms a group member may ask for",
        apply: |c, v| {
            c.groups.session_timeout_min = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "group_max_session_timeout_ms",
        default: "1800000",
        meaning: "longest session.timeout.ms a group member may ask for",
        apply: |c, v| {
            c.groups.session_timeout_max = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "group_max_size",
        default: "1000",
        meaning: "members one consumer group may have",
        apply: |c, v| {
            c.groups.size_max = parse(v)?;
            if c.groups.size_max == 0 {
                return Err("must be at least 1".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "offsets_topic_num_partitions",
        default: "16",
        meaning: "partitions of the internal __consumer_offsets topic, which spread groups over the cores (fixed once the topic exists)",
        apply: |c, v| {
            c.groups.offsets_topic_partitions = parse(v)?;
            if !(1..=1000).contains(&c.groups.offsets_topic_partitions) {
                return Err("must be 1 to 1000".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "offsets_topic_replication_factor",
        default: "3",
        meaning: "replicas of each __consumer_offsets partition in a cluster, so groups survive the loss of a broker; groups have no coordinator until that many brokers are live",
        apply: |c, v| {
            c.groups.offsets_topic_replication = parse(v)?;
            if c.groups.offsets_topic_replication < 1 {
                return Err("must be at least 1".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "transaction_state_log_replication_factor",
        default: "3",
        meaning: "replicas of each __transaction_state partition in a cluster, so transactions survive the loss of a broker; transactions have no coordinator until that many brokers are live",
        apply: |c, v| {
            c.transactions.state_topic_replication = parse(v)?;
            if c.transactions.state_topic_replication < 1 {
                return Err("must be at least 1".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "transaction_state_log_num_partitions",
        default: "16",
        meaning: "partitions of the internal __transaction_state topic, which spread transactional ids over the cores (fixed once the topic exists)",
        apply: |c, v| {
            c.transactions.state_topic_partitions = parse(v)?;
            if !(1..=1000).contains(&c.transactions.state_topic_partitions) {
                return Err("must be 1 to 1000".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "transaction_max_timeout_ms",
        default: "900000",
        meaning: "the longest transaction.timeout.ms a producer may use; InitProducerId asking for more fails",
        apply: |c, v| {
            c.transactions.timeout_max = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "transaction_abort_timed_out_transaction_cleanup_interval_ms",
        default: "10000",
        meaning: "how often each core aborts the transactions that outlived their timeout",
        apply: |c, v| {
            c.transactions.abort_check_interval = Duration::from_millis(parse(v)?);
            if c.transactions.abort_check_interval.is_zero() {
                return Err("must be positive".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "transactional_id_expiration_ms",
        default: "604800000",
        meaning: "how long the state of a transactional id with no transaction running is kept after its last use",
        apply: |c, v| {
            c.transactions.id_expiration = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "group_consumer_heartbeat_interval_ms",
        default: "5000",
        meaning: "heartbeat interval of members of consumer groups that use the KIP-848 protocol (group.protocol=consumer)",
        apply: |c, v| {
            c.groups.consumer_heartbeat_interval = Duration::from_millis(parse(v)?);
            if c.groups.consumer_heartbeat_interval.is_zero() {
                return Err("must be positive".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "group_consumer_session_timeout_ms",
        default: "45000",
        meaning: "a KIP-848 consumer-group member silent this long is removed from its group",
        apply: |c, v| {
            c.groups.consumer_session_timeout = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "offsets_retention_minutes",
        default: "10080",
        meaning: "how long the committed offsets of a group without members are kept",
        apply: |c, v| {
            c.groups.offsets_retention = Duration::from_secs(60 * parse::<u64>(v)?);
            Ok(())
        },
    },
    Setting {
        key: "spin_before_park_us",
        default: "200",
        meaning: "an idle core polls this long before sleeping (0: sleep at once). A sleeping core is woken by an interrupt, which on a VM is an exit and a reschedule: on a 2-vCPU VM, 200 took half-rate produce from p99 18-37 ms to 5.4-11 ms (three alternating runs each) and 100 the cross-core round trip from ~40 to ~13 us (benches/shard_hop.rs). A core with nothing to do for this long still sleeps",
        apply: |c, v| {
            c.spin_before_park = Duration::from_micros(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "log_retention_check_interval_ms",
        default: "300000",
        meaning: "how often each core applies retention (time and size) to its partitions",
        apply: |c, v| {
            c.retention_check_interval = Duration::from_millis(parse(v)?);
            if c.retention_check_interval.is_zero() {
                return Err("must be positive".into());
            }
            Ok(())
        },
    },
    Setting {
        key: "producer_id_expiration_ms",
        default: "86400000",
        meaning: "how long a partition keeps the sequence state of an idempotent producer that stopped writing to it (checked with retention)",
        apply: |c, v| {
            c.producer_id_expiration = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "max_incremental_fetch_session_cache_slots",
        default: "1000",
        meaning: "incremental fetch sessions (KIP-227) the broker keeps, shared out among its cores; 0 turns them off and every fetch is a full one",
        apply: |c, v| {
            c.fetch_session_slots = parse(v)?;
            Ok(())
        },
    },
    Setting {
        key: "min_incremental_fetch_session_eviction_ms",
        default: "120000",
        meaning: "how long a fetch session must go unused before a new one may evict it",
        apply: |c, v| {
            c.fetch_session_eviction = Duration::from_millis(parse(v)?);
            Ok(())
        },
    },
    Setting {
        key: "log_segment_bytes",
        default: "1073741824",
        meaning: "default segment.bytes",
        apply: |c, v| {
            c.topic_defaults.segment_bytes = parse(v)?;
            Ok(())
        },
    },
    Setting {
        key: "log_retention_ms",
        default: "604800000",
        meaning: "default retention.ms (-1: keep forever)",
        apply: |c, v| {
            c.topic_defaults.retention_ms = optional_ms(v)?;
            Ok(())
        },
    },
    Setting {
        key: "log_retention_bytes",
        default: "-1",
        meaning: "default retention.bytes per partition (-1: no limit)",
        apply: |c, v| {
            c.topic_defaults.retention_bytes = optional_ms(v)?.map(|bytes| bytes as u64);
            Ok(())
        },
    },
    Setting {
        key: "log_flush_policy",
        default: "interval",
        meaning: "`interval` (acknowledge once written; fsync per flush_messages / flush_ms) or `fsync` (acknowledge after a group fdatasync)",
        apply: |c, v| {
            c.topic_defaults.flush = match v {
                "fsync" => FlushPolicy::FsyncBeforeAck,
                "interval" => FlushPolicy::Interval { messages: None, interval: None },
                other => return Err(format!("`{other}` is neither `interval` nor `fsync`")),
            };
            Ok(())
        },
    },
    Setting {
        key: "message_max_bytes",
        default: "1048588",
        meaning: "default max.message.bytes (largest record batch)",
        apply: |c, v| {
            c.topic_defaults.message_bytes_max = parse(v)?;
            Ok(())
        },
    },
    Setting {
        key: "log_message_timestamp_type",
        default: "CreateTime",
        meaning: "default message.timestamp.type: CreateTime or LogAppendTime",
        apply: |c, v| {
            c.topic_defaults.timestamp_type = match v {
                "CreateTime" => TimestampType::CreateTime,
                "LogAppendTime" => TimestampType::LogAppendTime,
                other => return Err(format!("`{other}` is neither CreateTime nor LogAppendTime")),
            };
            Ok(())
        },
    },
    Setting {
        key: "batch_cache_bytes",
        default: "8388608",
        meaning: "in-memory cache of the newest batches, per partition",
        apply: |c, v| {
            c.topic_defaults.cache_bytes_max = parse(v)?;
            Ok(())
        },
    },
];

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl BrokerConfig {
    /// The embedded defaults alone.
    pub fn defaults() -> BrokerConfig {
        let mut config = BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9092)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9644)),
            advertised_listener: None,
            data_dir: PathBuf::from("./ringmq-data"),
            cores: available_cores(),
            node_id: 0,
            socket_request_max_bytes: 100 << 20,
            connections_max_idle: Duration::from_secs(600),
            auto_create_topics: true,
            num_partitions: 1,
            retention_check_interval: Duration::from_secs(300),
            producer_id_expiration: Duration::ZERO,
            spin_before_park: Duration::ZERO,
            fetch_session_slots: 0,
            fetch_session_eviction: Duration::ZERO,
            cluster: ClusterConfig::default(),
            groups: GroupConfig {
                initial_rebalance_delay: Duration::ZERO,
                session_timeout_min: Duration::ZERO,
                session_timeout_max: Duration::ZERO,
                size_max: 0,
                offsets_topic_partitions: 0,
                offsets_topic_replication: 0,
                offsets_retention: Duration::ZERO,
                consumer_heartbeat_interval: Duration::ZERO,
                consumer_session_timeout: Duration::ZERO,
            },
            transactions: TxnConfig {
                state_topic_partitions: 0,
                state_topic_replication: 0,
                timeout_max: Duration::ZERO,
                abort_check_interval: Duration::ZERO,
                id_expiration: Duration::ZERO,
            },
            topic_defaults: LogConfig { cache_bytes_max: BATCH_CACHE_BYTES_DEFAULT, ..LogConfig::default() },
        };
        for setting in SETTINGS {
            (setting.apply)(&mut config, setting.default).expect("embedded defaults are valid");
        }
        config
    }

    /// Applies `key = value`, naming the key in any error.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let setting =
            SETTINGS.iter().find(|s| s.key == key).ok_or_else(|| ConfigError::UnknownKey(key.into()))?;
        (setting.apply)(self, value).map_err(|reason| ConfigError::BadValue { key: key.into(), reason })
    }

    /// Applies every top-level key of a TOML document.
    pub fn apply_toml(&mut self, path: &str, text: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File { path: path.into(), reason: e.to_string() })?;
        for (key, value) in &table {
            let value = match value {
                toml::Value::String(text) => text.clone(),
                toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_) => {
                    value.to_string()
                }
                other => {
                    let reason = format!("expected a string, number or boolean, found {}", other.type_str());
                    return Err(ConfigError::BadValue { key: key.clone(), reason });
                }
            };
            self.set(key, &value)?;
        }
        Ok(())
    }

    /// Applies `RINGMQ_<KEY>` variables (upper case) as `lookup` finds them.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for setting in SETTINGS {
            if let Some(value) = lookup(&format!("RINGMQ_{}", setting.key.to_uppercase())) {
                self.set(setting.key, &value)?;
            }
        }
        Ok(())
    }

    /// The address clients connect to, given the concrete listen address.
    pub fn advertised(&self, bound: SocketAddr) -> SocketAddr {
        self.advertised_listener.unwrap_or(bound)
    }

    /// Checks what no single setting can: an advertised address clients can reach.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        let bad =
            |key: &str, reason: &str| Err(ConfigError::BadValue { key: key.into(), reason: reason.into() });
        if cluster.session_timeout <= cluster.heartbeat_interval {
            return bad("broker_session_timeout_ms", "must exceed broker_heartbeat_interval_ms");
        }
        if !cluster.is_clustered() {
            if cluster.peer_listen.is_some() {
                return bad(
                    "peer_listen",
                    "only a cluster's brokers have peers: set controller_quorum_voters",
                );
            }
            return Ok(());
        }
        if self.node_id < 0 {
            return bad("node_id", "a cluster member needs a node id of 0 or more");
        }
        let voter = cluster.voters.iter().any(|(id, _)| *id == self.node_id);
        if !voter && cluster.controller_listen.is_some() {
            return bad("controller_listen", "this node is not in controller_quorum_voters");
        }
        Ok(())
    }

    /// Where this node's controller listens, if it is one of the voters.
    pub fn controller_address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some((_, voter)) = self.cluster.voters.iter().find(|(id, _)| *id == self.node_id) else {
            return Ok(None);
        };
        match self.cluster.controller_listen {
            Some(listen) => Ok(Some(listen)),
            None => address(voter)
                .map(Some)
                .map_err(|reason| ConfigError::BadValue { key: "controller_quorum_voters".into(), reason }),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.advertised_listener.is_none() && self.listen.ip().is_unspecified() {
            let reason =
                format!("listening on {} needs an advertised_listener clients can reach", self.listen);
            return Err(ConfigError::BadValue { key: "advertised_listener".into(), reason });
        }
        self.validate_cluster()?;
        if self.groups.consumer_session_timeout <= self.groups.consumer_heartbeat_interval {
            let reason = "must exceed group_consumer_heartbeat_interval_ms".to_string();
            return Err(ConfigError::BadValue { key: "group_consumer_session_timeout_ms".into(), reason });
        }
        if self.groups.session_timeout_min > self.groups.session_timeout_max {
            let reason = "is above group_max_session_timeout_ms".to_string();
            return Err(ConfigError::BadValue { key: "group_min_session_timeout_ms".into(), reason });
        }
        self.topic_defaults
            .validate()
            .map_err(|e| ConfigError::BadValue { key: "log_*".into(), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_override_in_order_and_errors_name_the_key() {
        let mut config = BrokerConfig::defaults();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(config.data_dir, PathBuf::from("./ringmq-data"));
        config
            .apply_toml(
                "f.toml",
                "listen = \"127.0.0.1:9999\"\nnum_partitions = 3\nlog_flush_policy = \"fsync\"",
            )
            .expect("toml");
        assert_eq!((config.listen.port(), config.num_partitions), (9999, 3));
        assert_eq!(config.topic_defaults.flush, FlushPolicy::FsyncBeforeAck);
        config.apply_env(|name| (name == "RINGMQ_NUM_PARTITIONS").then(|| "5".to_string())).expect("env");
        assert_eq!(config.num_partitions, 5);

        let unknown = config.apply_toml("f.toml", "lissten = \"x\"");
        assert_eq!(unknown, Err(ConfigError::UnknownKey("lissten".into())));
        let bad = config.set("num_partitions", "zero");
        assert!(matches!(bad, Err(ConfigError::BadValue { key, .. }) if key == "num_partitions"));
        assert!(matches!(config.set("cores", "100000"), Err(ConfigError::BadValue { .. })));
        assert!(matches!(config.apply_toml("f.toml", "listen = ["), Err(ConfigError::File { .. })));
    }

    #[test]
    fn an_unspecified_listen_address_needs_an_advertised_one() {
        let mut config = BrokerConfig::defaults();
        config.set("listen", "0.0.0.0:9092").expect("listen");
        assert!(config.validate().is_err());
        config.set("advertised_listener", "127.0.0.1:9092").expect("advertised");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn the_quorum_is_parsed_and_checked() {
        let mut config = BrokerConfig::defaults();
        assert!(!config.cluster.is_clustered());
        config.set("controller_quorum_voters", "1@127.0.0.1:9093, 2@localhost:9094").expect("voters");
        assert_eq!(
            config.cluster.voters,
            [(1, "127.0.0.1:9093".to_string()), (2, "localhost:9094".to_string())]
        );
        config.set("node_id", "1").expect("node id");
        assert_eq!(
            config.controller_address().expect("address"),
            Some("127.0.0.1:9093".parse().expect("addr"))
        );
        config.set("node_id", "5").expect("node id");
        assert_eq!(config.controller_address().expect("address"), None, "node 5 is a broker only");
        config.set("controller_listen", "127.0.0.1:9999").expect("listen");
        assert!(config.validate().is_err(), "only a voter has a controller listener");
        for bad in ["1@", "x@127.0.0.1:1", "1@127.0.0.1:1,1@127.0.0.1:2", "-1@127.0.0.1:1", "127.0.0.1:1"] {
            assert!(config.set("controller_quorum_voters", bad).is_err(), "{bad}");
        }
    }
}
