//! In a cluster, the group coordinator follows the leadership of `__consumer_offsets`, which
//! is replicated like any topic: the core owning a partition this broker comes to lead reads
//! it and takes its groups over; one whose partition moves to another leader drops them.
//! Until a partition is read, its groups' requests answer COORDINATOR_NOT_AVAILABLE and the
//! clients look the coordinator up again. (The transaction coordinator's topic stays with
//! each broker, its partitions each on one replica.)

use super::Shard;
use crate::group::OFFSETS_TOPIC;
use crate::io;
use std::rc::Rc;

impl Shard {
    /// Has this core's group coordinator take the offsets partitions this broker now leads
    /// and give up the ones it no longer leads.
    pub(super) fn follow_coordination(self: &Rc<Self>) {
        if self.controller().is_none() {
            return;
        }
        let Some(topic) = self.topic(OFFSETS_TOPIC) else { return };
        for partition in 0..topic.partitions() {
            if self.owner(&topic, partition) != Some(self.id) {
                continue;
            }
            let leads = self.leads(OFFSETS_TOPIC, partition);
            if !leads && self.groups.is_loaded(partition) {
                self.groups.unload(partition);
                tracing::info!(partition, "gave up an offsets partition to its new leader");
            }
            if leads
                && !self.groups.is_loaded(partition)
                && self.replication.loading.borrow_mut().insert(partition)
            {
                let shard = self.clone();
                io::spawn_detached(async move { shard.take_over_groups(partition).await });
            }
        }
    }

    /// Reads offsets partition `partition` and serves its groups, unless leadership moved on
    /// meanwhile. A failed read is tried again with the next view.
    async fn take_over_groups(self: Rc<Self>, partition: i32) {
        let loaded = match self.log(OFFSETS_TOPIC, partition) {
            Some(log) => self.groups.load(partition, log).await,
            None => Err("no log".to_string()),
        };
        self.replication.loading.borrow_mut().remove(&partition);
        match loaded {
            Ok(records) => tracing::info!(partition, records, "took over an offsets partition"),
            Err(error) => tracing::error!(partition, %error, "reading an offsets partition failed"),
        }
        if !self.leads(OFFSETS_TOPIC, partition) {
            self.groups.unload(partition);
        }
    }
}
