//! In a cluster, the group and transaction coordinators follow the leadership of their
//! internal topics (`__consumer_offsets`, `__transaction_state`), which are replicated like any
//! topic: the core owning a partition this broker comes to lead reads it and takes its groups
//! or transactional ids over (completing transactions left prepared); one whose partition
//! moves to another leader drops them. Until a partition is read, requests for its keys answer
//! COORDINATOR_NOT_AVAILABLE and the clients look the coordinator up again.

use super::Shard;
use crate::group::OFFSETS_TOPIC;
use crate::io;
use crate::txn::TRANSACTION_TOPIC;
use std::rc::Rc;
use std::time::Duration;

/// How soon a coordinator partition whose read failed is read again.
const LOAD_RETRY: Duration = Duration::from_secs(1);

impl Shard {
    /// Has this core's coordinators take the internal partitions this broker now leads and give
    /// up the ones it no longer leads.
    pub(super) fn follow_coordination(self: &Rc<Self>) {
        if self.controller().is_none() {
            return;
        }
        for topic in [OFFSETS_TOPIC, TRANSACTION_TOPIC] {
            let Some(meta) = self.topic(topic) else { continue };
            for partition in 0..meta.partitions() {
                if self.owner(&meta, partition) != Some(self.id) {
                    continue;
                }
                let leads = self.leads(topic, partition);
                let epoch = self.leader_epoch(topic, partition).0;
                let read_in = self.replication.coordinated.borrow().get(&(topic, partition)).copied();
                if self.is_loaded(topic, partition) && (!leads || read_in != Some(epoch)) {
                    self.unload(topic, partition);
                    tracing::info!(topic, partition, "gave up a coordinator partition (new leader or epoch)");
                }
                let load = leads
                    && !self.is_loaded(topic, partition)
                    && self.replication.loading.borrow_mut().insert((topic, partition));
                if load {
                    let shard = self.clone();
                    io::spawn_detached(async move { shard.take_over(topic, partition).await });
                }
            }
        }
    }

    fn is_loaded(&self, topic: &str, partition: i32) -> bool {
        match topic {
            OFFSETS_TOPIC => self.groups.is_loaded(partition),
            _ => self.txns.is_loaded(partition),
        }
    }

    fn unload(&self, topic: &'static str, partition: i32) {
        self.replication.coordinated.borrow_mut().remove(&(topic, partition));
        match topic {
            OFFSETS_TOPIC => self.groups.unload(partition),
            _ => self.txns.unload(partition),
        }
    }

    /// Reads `partition` of the internal `topic` and serves its keys, unless leadership (or its
    /// epoch) moved on meanwhile; transactions found prepared are completed. A failed read is
    /// tried again after `LOAD_RETRY`.
    async fn take_over(self: Rc<Self>, topic: &'static str, partition: i32) {
        let epoch = self.leader_epoch(topic, partition).0;
        let loaded = match self.log(topic, partition) {
            None => Err("no log".to_string()),
            Some(log) if topic == OFFSETS_TOPIC => self.groups.load(partition, log).await,
            Some(log) => self.txns.load(partition, log).await.map(|prepared| {
                for id in &prepared {
                    let (shard, id) = (self.clone(), id.clone());
                    io::spawn_detached(async move { shard.txns.resume(&shard, &id).await });
                }
                prepared.len()
            }),
        };
        self.replication.loading.borrow_mut().remove(&(topic, partition));
        match loaded {
            Ok(count) => {
                self.replication.coordinated.borrow_mut().insert((topic, partition), epoch);
                tracing::info!(topic, partition, count, epoch, "took over a coordinator partition");
            }
            Err(error) => {
                tracing::error!(topic, partition, %error, "reading a coordinator partition failed; trying again");
                let shard = self.clone();
                io::spawn_detached(async move {
                    io::sleep(LOAD_RETRY).await;
                    shard.follow_coordination();
                });
            }
        }
        // Leadership (or its epoch) moved while reading: the next view's check reads it again.
        if !self.leads(topic, partition) || self.leader_epoch(topic, partition).0 != epoch {
            self.unload(topic, partition);
            self.follow_coordination();
        }
    }
}
