//! The transaction coordinator (Kafka's TransactionCoordinator). Every transactional id
//! belongs to one partition of the internal `__transaction_state` topic (the Java hash of the
//! id, as for groups) and so to the core that owns that partition: that core holds the id's
//! state, writes it to that partition in Kafka's format (`store`) and drives its transactions:
//!
//! - InitProducerId gives the id a producer id and a new epoch, fencing older producers, and
//!   aborts a transaction the previous producer left open;
//! - AddPartitionsToTxn / AddOffsetsToTxn record the partitions a transaction writes to;
//! - EndTxn writes PrepareCommit / PrepareAbort, then a marker to every partition of the
//!   transaction (on that partition's core), then CompleteCommit / CompleteAbort;
//! - transactions that outlive their timeout are aborted with a bumped epoch.
//!
//! State changes only once they are durable in the log; while one operation on an id is in
//! flight, others on the same id get CONCURRENT_TRANSACTIONS. A Prepare state found on load
//! (a crash between prepare and complete) is completed then.

pub mod store;

use crate::config::TxnConfig;
use crate::log::Log;
use crate::shard::{MarkerError, Shard};
use crate::types::TimestampMs;
use kafka_protocol::error::ResponseError;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;
pub use store::Status;
use store::{Entry, TransactionValue};

/// The internal topic holding the transaction coordinator's state.
pub const TRANSACTION_TOPIC: &str = "__transaction_state";
/// Longest transactional id accepted (ids are written into the transaction log's keys).
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = 1024;
/// Entries per batch when a partition's live entries are written again.
const COMPACT_BATCH_RECORDS: usize = 1_000;
/// Records beyond twice the live ones a partition may hold before it is compacted.
const COMPACT_SLACK_RECORDS: i64 = 10_000;
/// Between attempts to write a marker or a state that must eventually be written.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The partition of `__transaction_state` that holds `transactional_id`.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::partition_for(transactional_id, partitions)
}

/// One transactional id's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub status: Status,
    /// The partitions the running transaction wrote to (or may write to).
    pub partitions: BTreeSet<(String, i32)>,
    /// When the running transaction began; -1 if none runs.
    pub start_ms: i64,
    pub last_update_ms: i64,
    /// The epoch before the coordinator fenced the producer (a timed-out transaction): the
    /// fenced producer may still re-initialise with it (KIP-360). Kept in memory only.
    pub fenced_epoch: Option<i16>,
    /// The epoch before the last InitProducerId bumped it: a retry of that request (its answer
    /// lost) gets the current epoch again instead of being fenced. Kept in memory only.
    pub previous_epoch: Option<i16>,
}

impl Transaction {
    fn value(&self) -> TransactionValue {
        TransactionValue {
            producer_id: self.producer_id,
            epoch: self.epoch,
            timeout_ms: self.timeout_ms,
            status: self.status,
            partitions: self.partitions.clone(),
            last_update_ms: self.last_update_ms,
            start_ms: self.start_ms,
        }
    }

    fn from_value(value: TransactionValue) -> Transaction {
        Transaction {
            producer_id: value.producer_id,
            epoch: value.epoch,
            timeout_ms: value.timeout_ms,
            status: value.status,
            partitions: value.partitions,
            start_ms: value.start_ms,
            last_update_ms: value.last_update_ms,
            fenced_epoch: None,
            previous_epoch: None,
        }
    }

    /// Whether `producer_id` at `epoch` is this id's current producer.
    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != self.epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Ok(())
    }
}

/// One transactional id as DescribeTransactions and ListTransactions show it.
#[derive(Clone, Debug)]
pub struct Described {
    pub transactional_id: String,
    pub transaction: Transaction,
}

/// Marks a transactional id busy for one operation; dropping it ends the operation.
struct Claim<'a> {
    coordinator: &'a Coordinator,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.coordinator.busy.borrow_mut().remove(&self.id);
    }
}

/// One core's share of the transaction coordinator.
pub struct Coordinator {
    config: TxnConfig,
    transactions: RefCell<HashMap<String, Transaction>>,
    /// Ids with an operation in flight.
    busy: RefCell<HashSet<String>>,
    /// The partitions of the transaction topic this core owns, by index.
    logs: RefCell<BTreeMap<i32, Rc<Log>>>,
    /// How many partitions the transaction topic has.
    partitions: i32,
}

impl Coordinator {
    pub fn new(config: TxnConfig, partitions: i32) -> Rc<Coordinator> {
        Rc::new(Coordinator {
            config,
            transactions: RefCell::new(HashMap::new()),
            busy: RefCell::new(HashSet::new()),
            logs: RefCell::new(BTreeMap::new()),
            partitions,
        })
    }

    /// Starts an operation on `id`: its current state, if it has one.
    fn claim(&self, id: &str) -> Result<(Claim<'_>, Option<Transaction>), ResponseError> {
        if id.is_empty() || id.len() > TRANSACTIONAL_ID_BYTES_MAX {
            return Err(ResponseError::InvalidRequest);
        }
        if !self.busy.borrow_mut().insert(id.to_string()) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        let claim = Claim { coordinator: self, id: id.to_string() };
        Ok((claim, self.transactions.borrow().get(id).cloned()))
    }

    fn log_for(&self, id: &str) -> Result<Rc<Log>, ResponseError> {
        let partition = partition_for(id, self.partitions);
        self.logs.borrow().get(&partition).cloned().ok_or(ResponseError::NotCoordinator)
    }

    /// Writes `transaction` as `id`'s state and, once it is durable, makes it the state here.
    async fn store(&self, id: &str, transaction: Transaction) -> Result<Transaction, ResponseError> {
        self.write(id, Some(transaction.value())).await?;
        self.transactions.borrow_mut().insert(id.to_string(), transaction.clone());
        Ok(transaction)
    }

    /// Writes `id`'s state (`None`: a tombstone) to its partition and waits until it is durable.
    async fn write(&self, id: &str, value: Option<TransactionValue>) -> Result<(), ResponseError> {
        let entry = Entry { transactional_id: id.to_string(), value };
        let log = self.log_for(id)?;
        let batch = store::encode(&[entry], TimestampMs::now().0).map_err(|reason| {
            tracing::error!(id, reason, "cannot encode a transaction state");
            ResponseError::UnknownServerError
        })?;
        let epoch = log.current_epoch();
        let written = match log.append(&batch, epoch) {
            Ok(appended) => crate::group::replicated(log, appended, epoch).await,
            Err(error) => Err(error.into()),
        };
        written.map_err(|error| {
            tracing::warn!(id, %error, "writing a transaction state failed");
            ResponseError::CoordinatorNotAvailable
        })
    }

    /// `store`, retried until it succeeds: for states that must follow markers already written.
    async fn store_until_done(&self, id: &str, transaction: Transaction) -> Transaction {
        loop {
            match self.store(id, transaction.clone()).await {
                Ok(stored) => return stored,
                Err(ResponseError::NotCoordinator) => return transaction,
                Err(_) => crate::io::sleep(RETRY_BACKOFF).await,
            }
        }
    }

    /// InitProducerId with a transactional id: the producer id and epoch the producer is to
    /// use from now on. `expected`: the producer id and epoch a re-initialising producer had
    /// (KIP-360), or `None`.
    pub async fn init_producer_id(
        &self,
        shard: &Rc<Shard>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        let timeout_max = self.config.timeout_max.as_millis().min(i32::MAX as u128) as i32;
        if timeout_ms <= 0 || timeout_ms > timeout_max {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let (_claim, existing) = self.claim(id)?;
        let now = TimestampMs::now().0;
        let Some(mut transaction) = existing else {
            let producer_id =
                shard.allocate_producer_id().await.ok_or(ResponseError::CoordinatorNotAvailable)?;
            let transaction = Transaction {
                producer_id,
                epoch: 0,
                timeout_ms,
                status: Status::Empty,
                partitions: BTreeSet::new(),
                start_ms: -1,
                last_update_ms: now,
                fenced_epoch: None,
                previous_epoch: None,
            };
            let stored = self.store(id, transaction).await?;
            return Ok((stored.producer_id, stored.epoch));
        };
        if let Some((producer_id, epoch)) = expected.filter(|&(producer_id, _)| producer_id >= 0) {
            let same_producer = producer_id == transaction.producer_id;
            if same_producer
                && transaction.previous_epoch == Some(epoch)
                && transaction.status != Status::Ongoing
            {
                return Ok((transaction.producer_id, transaction.epoch));
            }
            let current = transaction.epoch == epoch || transaction.fenced_epoch == Some(epoch);
            if !same_producer || !current {
                return Err(ResponseError::ProducerFenced);
            }
        }
        match transaction.status {
            Status::Ongoing => {
                // The previous producer left a transaction open: fence it and abort. It stays
                // fenced: only a coordinator timeout lets a producer re-initialise from an
                // epoch it lost.
                let mut fenced = Coordinator::fence(transaction);
                fenced.fenced_epoch = None;
                fenced.previous_epoch = None;
                let aborted = self.complete(shard, id, fenced, false).await?;
                Ok((aborted.producer_id, aborted.epoch))
            }
            Status::PrepareCommit | Status::PrepareAbort | Status::PrepareEpochFence => {
                Err(ResponseError::ConcurrentTransactions)
            }
            _ => {
                let before = transaction.epoch;
                bump_epoch(shard, &mut transaction).await?;
                transaction.previous_epoch = Some(before);
                transaction.timeout_ms = timeout_ms;
                transaction.status = Status::Empty;
                transaction.partitions.clear();
                transaction.start_ms = -1;
                transaction.last_update_ms = now;
                transaction.fenced_epoch = None;
                let stored = self.store(id, transaction).await?;
                Ok((stored.producer_id, stored.epoch))
            }
        }
    }

    /// Bumps the epoch of a transaction being aborted by the coordinator, so the producer that
    /// ran it is fenced (Kafka's PrepareEpochFence). With the epochs used up, the markers go
    /// out at the last epoch and the producer id changes at the next InitProducerId: markers
    /// must carry the id that wrote the records.
    fn fence(mut transaction: Transaction) -> Transaction {
        let before = transaction.epoch;
        if before < i16::MAX - 1 {
            transaction.epoch += 1;
        }
        transaction.fenced_epoch = Some(before);
        transaction
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn, with the group's offsets partition): the
    /// transaction may now write to `partitions`.
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Result<(), ResponseError> {
        let (_claim, existing) = self.claim(id)?;
        let mut transaction = existing.ok_or(ResponseError::InvalidProducerIdMapping)?;
        transaction.check_producer(producer_id, epoch)?;
        match transaction.status {
            Status::PrepareCommit | Status::PrepareAbort | Status::PrepareEpochFence => {
                return Err(ResponseError::ConcurrentTransactions);
            }
            Status::Dead => return Err(ResponseError::InvalidTxnState),
            Status::Ongoing
                if partitions.iter().all(|partition| transaction.partitions.contains(partition)) =>
            {
                return Ok(());
            }
            Status::Ongoing => {}
            Status::Empty | Status::CompleteCommit | Status::CompleteAbort => {
                transaction.partitions.clear();
                transaction.start_ms = TimestampMs::now().0;
            }
        }
        transaction.status = Status::Ongoing;
        transaction.partitions.extend(partitions);
        transaction.last_update_ms = TimestampMs::now().0;
        self.store(id, transaction).await.map(|_| ())
    }

    /// EndTxn: commits or aborts the running transaction. A retry of an EndTxn that completed
    /// succeeds again.
    pub async fn end_transaction(
        &self,
        shard: &Rc<Shard>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commits: bool,
    ) -> Result<(), ResponseError> {
        let (_claim, existing) = self.claim(id)?;
        let transaction = existing.ok_or(ResponseError::InvalidProducerIdMapping)?;
        transaction.check_producer(producer_id, epoch)?;
        match (transaction.status, commits) {
            (Status::Ongoing, _) => self.complete(shard, id, transaction, commits).await.map(|_| ()),
            (Status::CompleteCommit, true) | (Status::CompleteAbort, false) => Ok(()),
            (Status::PrepareCommit | Status::PrepareAbort | Status::PrepareEpochFence, _) => {
                Err(ResponseError::ConcurrentTransactions)
            }
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// Prepares, marks every partition and completes a transaction (the caller holds the claim).
    /// Once the prepare state is durable the transaction will end this way: markers and the
    /// completion are retried until written.
    async fn complete(
        &self,
        shard: &Rc<Shard>,
        id: &str,
        mut transaction: Transaction,
        commits: bool,
    ) -> Result<Transaction, ResponseError> {
        transaction.status = if commits { Status::PrepareCommit } else { Status::PrepareAbort };
        transaction.last_update_ms = TimestampMs::now().0;
        let prepared = self.store(id, transaction).await?;
        Ok(self.finish(shard, id, prepared).await)
    }

    /// Writes the markers of a prepared transaction and its completion.
    async fn finish(&self, shard: &Rc<Shard>, id: &str, mut transaction: Transaction) -> Transaction {
        let commits = transaction.status == Status::PrepareCommit;
        let (producer_id, epoch) = (transaction.producer_id, transaction.epoch);
        let writes: Vec<_> = transaction
            .partitions
            .iter()
            .map(|(topic, partition)| {
                let (shard, topic, partition) = (shard.clone(), topic.clone(), *partition);
                crate::io::spawn_local(async move {
                    loop {
                        let marker = crate::shard::Marker { producer_id, epoch, commits };
                        match shard.write_marker(&topic, partition, marker).await {
                            Ok(()) => return,
                            // As Kafka does: a partition that refuses the marker (a newer epoch
                            // of the producer wrote there) is given up, not retried forever.
                            Err(MarkerError::Refused(reason)) => {
                                tracing::warn!(
                                    topic,
                                    partition,
                                    reason,
                                    "a partition refused a transaction marker"
                                );
                                return;
                            }
                            Err(MarkerError::Retry(reason)) => {
                                tracing::warn!(
                                    topic,
                                    partition,
                                    reason,
                                    "writing a transaction marker failed; retrying"
                                );
                                crate::io::sleep(RETRY_BACKOFF).await;
                            }
                        }
                    }
                })
            })
            .collect();
        for write in writes {
            write.await;
        }
        transaction.status = if commits { Status::CompleteCommit } else { Status::CompleteAbort };
        transaction.partitions.clear();
        transaction.start_ms = -1;
        transaction.last_update_ms = TimestampMs::now().0;
        self.store_until_done(id, transaction).await
    }

    /// Aborts, fencing their producers, the transactions that outlived their timeout; each on
    /// a task of its own, so one slow abort does not hold up the others.
    pub fn abort_timed_out(self: &Rc<Self>, shard: &Rc<Shard>) {
        let now = TimestampMs::now().0;
        let expired: Vec<String> = self
            .transactions
            .borrow()
            .iter()
            .filter(|(_, t)| t.status == Status::Ongoing && timed_out(t, now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let (coordinator, shard) = (self.clone(), shard.clone());
            crate::io::spawn_detached(async move { coordinator.abort_if_timed_out(&shard, &id).await });
        }
    }

    async fn abort_if_timed_out(&self, shard: &Rc<Shard>, id: &str) {
        let Ok((_claim, Some(transaction))) = self.claim(id) else { return };
        if transaction.status != Status::Ongoing || !timed_out(&transaction, TimestampMs::now().0) {
            return;
        }
        tracing::info!(id, producer_id = transaction.producer_id, "aborting a timed-out transaction");
        if let Err(error) = self.complete(shard, id, Coordinator::fence(transaction), false).await {
            tracing::warn!(id, %error, "aborting a timed-out transaction failed; the next check retries");
        }
    }

    /// Takes over `partition` of the transaction topic: reads it from its start and rebuilds
    /// the ids it holds. Returns the ids whose transaction was prepared but not completed.
    pub async fn load(&self, partition: i32, log: Rc<Log>) -> Result<Vec<String>, String> {
        // Nothing left from an earlier time this core coordinated the partition.
        self.unload(partition);
        let chunks = crate::group::read_partition(&log).await?;
        for chunk in &chunks {
            for entry in store::decode(chunk)? {
                let mut transactions = self.transactions.borrow_mut();
                match entry.value {
                    Some(value) => {
                        transactions.insert(entry.transactional_id, Transaction::from_value(value))
                    }
                    None => transactions.remove(&entry.transactional_id),
                };
            }
        }
        self.logs.borrow_mut().insert(partition, log);
        let prepared = self
            .transactions
            .borrow()
            .iter()
            .filter(|(id, t)| {
                partition_for(id, self.partitions) == partition
                    && matches!(
                        t.status,
                        Status::PrepareCommit | Status::PrepareAbort | Status::PrepareEpochFence
                    )
            })
            .map(|(id, _)| id.clone())
            .collect();
        Ok(prepared)
    }

    /// Whether this core coordinates `id` now: it leads the id's transaction partition and has
    /// read it.
    pub fn serves(&self, id: &str) -> bool {
        self.is_loaded(partition_for(id, self.partitions))
    }

    pub fn is_loaded(&self, partition: i32) -> bool {
        self.logs.borrow().contains_key(&partition)
    }

    /// Gives up `partition` of the transaction topic (another broker leads it now): its ids
    /// leave this core's memory; an operation in flight fails when it writes.
    pub fn unload(&self, partition: i32) {
        self.logs.borrow_mut().remove(&partition);
        let partitions = self.partitions;
        self.transactions.borrow_mut().retain(|id, _| partition_for(id, partitions) != partition);
    }

    /// Completes a transaction found prepared on load.
    pub async fn resume(&self, shard: &Rc<Shard>, id: &str) {
        let Ok((_claim, Some(mut transaction))) = self.claim(id) else { return };
        if transaction.status == Status::PrepareEpochFence {
            transaction.status = Status::PrepareAbort;
        }
        tracing::info!(
            id,
            status = transaction.status.name(),
            "completing a transaction prepared before a restart"
        );
        self.finish(shard, id, transaction).await;
    }

    /// The state of `id`, if this core knows it.
    pub fn describe(&self, id: &str) -> Option<Transaction> {
        self.transactions.borrow().get(id).cloned()
    }

    /// Every id this core knows whose state and producer pass the filters (empty: any).
    pub fn list(
        &self,
        statuses: &[String],
        producer_ids: &[i64],
        running_longer_than_ms: i64,
    ) -> Vec<Described> {
        let now = TimestampMs::now().0;
        self.transactions
            .borrow()
            .iter()
            .filter(|(_, t)| statuses.is_empty() || statuses.iter().any(|s| s == t.status.name()))
            .filter(|(_, t)| producer_ids.is_empty() || producer_ids.contains(&t.producer_id))
            .filter(|(_, t)| {
                running_longer_than_ms < 0 || (t.start_ms >= 0 && now - t.start_ms > running_longer_than_ms)
            })
            .map(|(id, t)| Described { transactional_id: id.clone(), transaction: t.clone() })
            .collect()
    }

    /// Periodic upkeep: forgets ids idle longer than `transactional_id_expiration_ms` with no
    /// transaction running, then compacts each transaction partition this core owns.
    pub async fn maintain(&self) {
        let now = TimestampMs::now().0;
        let expiration = self.config.id_expiration.as_millis() as i64;
        let expired: Vec<String> = self
            .transactions
            .borrow()
            .iter()
            .filter(|(_, t)| {
                matches!(t.status, Status::Empty | Status::CompleteCommit | Status::CompleteAbort)
            })
            .filter(|(_, t)| now.saturating_sub(t.last_update_ms) >= expiration)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let Ok((_claim, Some(current))) = self.claim(&id) else { continue };
            let idle =
                matches!(current.status, Status::Empty | Status::CompleteCommit | Status::CompleteAbort)
                    && now.saturating_sub(current.last_update_ms) >= expiration;
            if !idle {
                continue;
            }
            match self.write(&id, None).await {
                Ok(()) => {
                    self.transactions.borrow_mut().remove(&id);
                    tracing::info!(id, "transactional id expired");
                }
                Err(error) => tracing::warn!(id, %error, "expiring a transactional id failed"),
            }
        }
        let logs: Vec<(i32, Rc<Log>)> = self.logs.borrow().iter().map(|(p, log)| (*p, log.clone())).collect();
        for (partition, log) in logs {
            if let Err(error) = self.compact(partition, &log).await {
                tracing::warn!(partition, %error, "compacting a transaction partition failed");
            }
        }
    }

    /// Writes the live entries of one partition again and deletes what they supersede, when
    /// most of the partition is superseded.
    async fn compact(&self, partition: i32, log: &Log) -> Result<(), String> {
        if !self.busy.borrow().is_empty() {
            // A state being written is not in memory yet: copying memory now could put an
            // older state after it. The next round compacts.
            return Ok(());
        }
        let entries: Vec<Entry> = self
            .transactions
            .borrow()
            .iter()
            .filter(|(id, _)| partition_for(id, self.partitions) == partition)
            .map(|(id, t)| Entry { transactional_id: id.clone(), value: Some(t.value()) })
            .collect();
        let records = log.log_end_offset().0 - log.log_start_offset().0;
        if records <= 2 * entries.len() as i64 + COMPACT_SLACK_RECORDS {
            return Ok(());
        }
        let now = TimestampMs::now().0;
        let batches = entries
            .chunks(COMPACT_BATCH_RECORDS)
            .map(|chunk| store::encode(chunk, now))
            .collect::<Result<Vec<_>, _>>()?;
        log.supersede_with(&batches).await.map_err(|e| e.to_string())?;
        tracing::info!(partition, records, live = entries.len(), "compacted a transaction partition");
        Ok(())
    }
}

/// Whether a running transaction has outlived its timeout at `now`.
fn timed_out(transaction: &Transaction, now: i64) -> bool {
    now.saturating_sub(transaction.start_ms) > i64::from(transaction.timeout_ms)
}

/// The next epoch of the id's producer; when epochs run out, a new producer id at epoch 0.
async fn bump_epoch(shard: &Rc<Shard>, transaction: &mut Transaction) -> Result<(), ResponseError> {
    if transaction.epoch >= i16::MAX - 1 {
        transaction.producer_id =
            shard.allocate_producer_id().await.ok_or(ResponseError::CoordinatorNotAvailable)?;
        transaction.epoch = 0;
    } else {
        transaction.epoch += 1;
    }
    Ok(())
}
