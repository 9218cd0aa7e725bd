//! Identities that must not be confused with one another or with plain integers.

use std::fmt;

/// A position in a partition's log, as Kafka numbers records.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub i64);

impl Offset {
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The epoch of the partition leader that appended a batch (stored in every batch header).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaderEpoch(pub i32);

impl LeaderEpoch {
    /// Kafka's value for "no epoch known" (`NO_PARTITION_LEADER_EPOCH`).
    pub const NONE: LeaderEpoch = LeaderEpoch(-1);
}

/// Milliseconds since the Unix epoch, as Kafka timestamps are.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimestampMs(pub i64);

impl TimestampMs {
    pub fn now() -> TimestampMs {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        TimestampMs(since_epoch.as_millis() as i64)
    }
}
