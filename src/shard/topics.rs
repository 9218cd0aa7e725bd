//! The topics this broker holds: names, ids, partition owners (shard per partition) and
//! per-topic config overrides. Every shard has its own copy; shard 0 owns the truth, persists
//! it (`topics.toml` in the data directory) and tells the others of every change.

use crate::config::BrokerConfig;
use crate::log::{FlushPolicy, LogConfig, TimestampType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub const TOPICS_FILE: &str = "topics.toml";
/// Kafka's limit on topic names.
const TOPIC_NAME_BYTES_MAX: usize = 249;
/// The owner of a partition other brokers hold, in a cluster.
pub const NOT_HOSTED: u16 = u16::MAX;
/// Most partitions one topic may have on this broker.
pub const PARTITIONS_MAX: i32 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// The topic id (UUID) clients see in Metadata and Fetch v13+.
    pub id: uuid::Uuid,
    /// The shard owning each partition, by partition index.
    pub owners: Vec<u16>,
    /// Topic config overrides, by Kafka name (`retention.ms`, …).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

impl TopicMeta {
    pub fn partitions(&self) -> i32 {
        self.owners.len() as i32
    }

    /// The shard owning `partition`; `None` if there is no such partition or, in a cluster,
    /// if other brokers hold it.
    pub fn owner(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.owners.get(p))
            .filter(|&&shard| shard != NOT_HOSTED)
            .map(|&shard| usize::from(shard))
    }

    pub fn has_partition(&self, partition: i32) -> bool {
        (0..self.partitions()).contains(&partition)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopicTable {
    #[serde(default)]
    topics: BTreeMap<String, TopicMeta>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicsFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
}

impl TopicTable {
    pub fn get(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn by_id(&self, id: uuid::Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|topic| topic.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &TopicMeta> {
        self.topics.values()
    }

    pub fn insert(&mut self, topic: TopicMeta) {
        self.topics.insert(topic.name.clone(), topic);
    }

    pub fn remove(&mut self, name: &str) {
        self.topics.remove(name);
    }

    pub fn load(data_dir: &Path) -> Result<TopicTable, TopicsFileError> {
        let path = data_dir.join(TOPICS_FILE);
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| TopicsFileError::Corrupt { path: shown, reason: e.to_string() }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(TopicTable::default()),
            Err(source) => Err(TopicsFileError::Io { path: shown, source }),
        }
    }

    /// The table as written to `topics.toml`.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        toml::to_string(self).map(String::into_bytes).map_err(|e| e.to_string())
    }

    /// Adds the group coordinator's internal topic if it does not exist yet, its partitions
    /// spread over `cores` in turn, and writes the table. Runs before the shards start.
    /// Creates a coordinator's internal topic (`__consumer_offsets`, `__transaction_state`) if
    /// it does not exist, its partitions spread over the cores, and saves the table.
    pub fn ensure_internal_topic(
        &mut self,
        name: &str,
        data_dir: &Path,
        partitions: i32,
        cores: usize,
    ) -> Result<(), TopicsFileError> {
        if self.get(name).is_some() {
            return Ok(());
        }
        // Never deleted by time or size; the coordinator compacts it itself.
        let configs = [("retention.ms", "-1"), ("retention.bytes", "-1"), ("segment.bytes", "104857600")];
        self.insert(TopicMeta {
            name: name.to_string(),
            id: uuid::Uuid::new_v4(),
            owners: (0..partitions).map(|p| (p as usize % cores.max(1)) as u16).collect(),
            configs: configs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        });
        let path = data_dir.join(TOPICS_FILE);
        let tmp = data_dir.join(format!("{TOPICS_FILE}.tmp"));
        let io = |source| TopicsFileError::Io { path: path.display().to_string(), source };
        let encoded = self
            .encode()
            .map_err(|reason| TopicsFileError::Corrupt { path: path.display().to_string(), reason })?;
        std::fs::write(&tmp, encoded)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
            .map_err(io)
    }
}

/// Whether `name` is a topic clients may not produce to or delete (Kafka's internal topics).
pub fn is_internal(name: &str) -> bool {
    name == crate::group::OFFSETS_TOPIC || name == crate::txn::TRANSACTION_TOPIC
}

/// Kafka's rule: 1..=249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!("topic name must have 1 to {TOPIC_NAME_BYTES_MAX} characters"));
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be `.` or `..`".into());
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!(
            "topic name contains `{bad}`; allowed are ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// A partition's directory: `<data-dir>/<topic>-<partition>`.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> std::path::PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{key}: `{value}` is not a valid number"))
}

/// Kafka's topic config letting a replica outside the in-sync set lead when none in it is
/// left, losing what only they had.
pub const UNCLEAN_ELECTION: &str = "unclean.leader.election.enable";

/// The log settings of a topic: the broker's defaults with the topic's overrides.
pub fn log_config(config: &BrokerConfig, overrides: &BTreeMap<String, String>) -> Result<LogConfig, String> {
    let mut log = config.topic_defaults.clone();
    let (mut flush_messages, mut flush_interval) = (None, None);
    for (key, value) in overrides {
        match key.as_str() {
            "retention.ms" => log.retention_ms = Some(number::<i64>(key, value)?).filter(|ms| *ms >= 0),
            "retention.bytes" => log.retention_bytes = u64::try_from(number::<i64>(key, value)?).ok(),
            "segment.bytes" => log.segment_bytes = number(key, value)?,
            "segment.ms" => log.segment_age_max = Some(Duration::from_millis(number(key, value)?)),
            "max.message.bytes" => log.message_bytes_max = number(key, value)?,
            "index.interval.bytes" => log.index_interval_bytes = number(key, value)?,
            "flush.messages" => flush_messages = Some(number::<u64>(key, value)?),
            "flush.ms" => flush_interval = Some(Duration::from_millis(number(key, value)?)),
            "message.timestamp.type" => {
                log.timestamp_type = match value.as_str() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    other => return Err(format!("{key}: `{other}` is neither CreateTime nor LogAppendTime")),
                }
            }
            // Accepted and stored: what Kafka clients set routinely and the log honours anyway.
            "cleanup.policy" if value == "delete" => {}
            // Read by the partition's leader when an acks=all produce comes.
            "min.insync.replicas" => {
                if number::<i32>(key, value)? < 1 {
                    return Err(format!("{key}: must be at least 1"));
                }
            }
            // Read by the controller when no in-sync replica is left to lead.
            UNCLEAN_ELECTION if value == "true" || value == "false" => {}
            UNCLEAN_ELECTION => return Err(format!("{key}: `{value}` is neither true nor false")),
            other => return Err(format!("unsupported topic config `{other}`")),
        }
    }
    // flush.messages / flush.ms tune the interval policy. Under a broker that fsyncs before
    // every acknowledgement they change nothing: that is already stronger, and a log never
    // switches between the two while it runs.
    if let FlushPolicy::Interval { messages, interval } = log.flush {
        log.flush = FlushPolicy::Interval {
            messages: flush_messages.or(messages),
            interval: flush_interval.or(interval),
        };
    }
    log.validate().map_err(|e| e.to_string())?;
    Ok(log)
}

/// Every topic config this broker understands with its effective value for a topic with
/// `overrides`: (name, value, whether the topic overrides it).
pub fn describe(
    config: &BrokerConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<(String, String, bool)>, String> {
    let log = log_config(config, overrides)?;
    const UNBOUNDED: i64 = i64::MAX; // Kafka's value for "never" in flush.*
    let (flush_messages, flush_ms) = match log.flush {
        FlushPolicy::Interval { messages, interval } => {
            (messages.map_or(UNBOUNDED, |m| m as i64), interval.map_or(UNBOUNDED, |i| i.as_millis() as i64))
        }
        FlushPolicy::FsyncBeforeAck => (1, 0),
    };
    let timestamp_type = match log.timestamp_type {
        TimestampType::CreateTime => "CreateTime",
        TimestampType::LogAppendTime => "LogAppendTime",
    };
    let effective = [
        ("cleanup.policy", "delete".to_string()),
        ("flush.messages", flush_messages.to_string()),
        ("flush.ms", flush_ms.to_string()),
        ("index.interval.bytes", log.index_interval_bytes.to_string()),
        ("max.message.bytes", log.message_bytes_max.to_string()),
        ("message.timestamp.type", timestamp_type.to_string()),
        ("min.insync.replicas", overrides.get("min.insync.replicas").cloned().unwrap_or_else(|| "1".into())),
        ("retention.bytes", log.retention_bytes.map_or(-1, |b| b as i64).to_string()),
        ("retention.ms", log.retention_ms.unwrap_or(-1).to_string()),
        ("segment.bytes", log.segment_bytes.to_string()),
        ("segment.ms", log.segment_age_max.map_or(UNBOUNDED, |d| d.as_millis() as i64).to_string()),
        (UNCLEAN_ELECTION, overrides.get(UNCLEAN_ELECTION).cloned().unwrap_or_else(|| "false".into())),
    ];
    Ok(effective
        .into_iter()
        .map(|(name, value)| (name.to_string(), value, overrides.contains_key(name)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        assert!(validate_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a/b", "spaces here", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overrides_map_to_log_settings_and_unknown_ones_are_refused() {
        let config = BrokerConfig::defaults();
        let overrides: BTreeMap<String, String> =
            [("retention.ms", "1000"), ("segment.bytes", "1048576"), ("flush.messages", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let log = log_config(&config, &overrides).expect("valid");
        assert_eq!((log.retention_ms, log.segment_bytes), (Some(1000), 1 << 20));
        assert_eq!(log.flush, FlushPolicy::Interval { messages: Some(1), interval: None });
        let unknown: BTreeMap<String, String> = [("no.such".to_string(), "1".to_string())].into();
        assert!(log_config(&config, &unknown).is_err());
    }

    #[test]
    fn the_table_round_trips_through_its_file() {
        let mut table = TopicTable::default();
        let configs = [("retention.ms".to_string(), "5".to_string())].into();
        table.insert(TopicMeta {
            name: "t".into(),
            id: uuid::Uuid::new_v4(),
            owners: vec![0, 1, 0],
            configs,
        });
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join(TOPICS_FILE), table.encode().expect("encode")).expect("write");
        let loaded = TopicTable::load(dir.path()).expect("load");
        assert_eq!(loaded.get("t"), table.get("t"));
        assert_eq!(loaded.get("t").and_then(|t| t.owner(2)), Some(0));
    }
}
