use crate::constants::*;
use std::time::Duration;

/// When appended data is fdatasync'd, and so when an append is acknowledged.
///
/// Under every policy an append is acknowledged only after its bytes were written to the
/// segment file with O_DIRECT, so a crash of the process (SIGKILL) never loses an acknowledged
/// batch. The policy decides what a crash of the machine may lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Acknowledge once written; fdatasync after `messages` unsynced records or `interval`
    /// since the last fdatasync, whichever comes first (Kafka's `flush.messages` and
    /// `flush.ms`; `None` means never, as Kafka's defaults do). Rolls and clean shutdowns
    /// always sync.
    Interval { messages: Option<u64>, interval: Option<Duration> },
    /// Acknowledge only after fdatasync. Every append waiting at the same time shares one
    /// fdatasync (group commit).
    FsyncBeforeAck,
}

/// Whose clock stamps a batch: the producer's or the broker's (`message.timestamp.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Per-partition settings (Kafka's topic configs of the same names).
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_age_max: Option<Duration>,
    pub index_interval_bytes: u32,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
    pub flush: FlushPolicy,
    pub message_bytes_max: usize,
    pub timestamp_type: TimestampType,
    pub cache_bytes_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_age_max: Some(Duration::from_secs(7 * 24 * 3600)),
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::Interval { messages: None, interval: None },
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            timestamp_type: TimestampType::CreateTime,
            cache_bytes_max: BATCH_CACHE_BYTES_DEFAULT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("segment.bytes must be within {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}, got {0}")]
    SegmentBytes(u64),
    #[error("max.message.bytes must be within 1..={BATCH_BYTES_MAX}, got {0}")]
    MessageBytes(usize),
    #[error("index.interval.bytes must be positive")]
    IndexInterval,
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(ConfigError::SegmentBytes(self.segment_bytes));
        }
        if self.message_bytes_max == 0 || self.message_bytes_max > BATCH_BYTES_MAX {
            return Err(ConfigError::MessageBytes(self.message_bytes_max));
        }
        if self.index_interval_bytes == 0 {
            return Err(ConfigError::IndexInterval);
        }
        Ok(())
    }
}
