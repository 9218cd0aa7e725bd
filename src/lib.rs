//! ringmq: a Kafka-compatible message broker, thread-per-core and shared-nothing.
//!
//! Module map (see README.md, "Architecture"):
//! - `admin`: `ringmq topic …`, the admin CLI over the Kafka protocol.
//! - `batch`: the Kafka record batch v2 header: validation, offset assignment.
//! - `log`: a partition's log on one core: segments, indexes, flusher, recovery, retention.
//! - `batch_cache`: the newest batches of a partition in memory, for tail reads.
//! - `server`: `ringmq serve`: shards, connections, Kafka request handlers.
//! - `shard`: one core's partitions and topic table; cross-core messages.
//! - `group`: the consumer-group coordinator; groups live on the core owning their offsets partition.
//! - `txn`: the transaction coordinator; a transactional id lives on the core owning its
//!   `__transaction_state` partition.
//! - `codec`: the classic big-endian fields of the coordinators' internal records.
//! - `bench`: `ringmq bench`, the Kafka-protocol load generator and this machine's baselines.
//! - `metrics`: per-core counters and their Prometheus rendering.
//! - `tune`: `ringmq tune`, the machine checks and changes a broker wants.
//! - `config`: the broker's settings (defaults, TOML, environment, flags).
//! - `io`: the runtime edge (glommio, O_DIRECT files, timers); the only module naming glommio.

pub mod admin;
pub mod batch;
pub mod batch_cache;
pub mod bench;
pub mod codec;
pub mod config;
pub mod constants;
pub mod controller;
pub mod group;
pub mod io;
pub mod log;
pub mod metrics;
pub mod record;
pub mod server;
pub mod shard;
pub mod tune;
pub mod txn;
pub mod types;

#[doc(hidden)]
pub mod testing;
