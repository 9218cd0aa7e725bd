//! Producer ids for InitProducerId, never handed out twice, across restarts too. Shard 0 owns
//! the allocator; it reserves ids a block at a time and hands them out from memory. A broker
//! alone reserves them on disk (`producer-ids` in the data directory holds the first id not
//! yet reserved); in a cluster the active controller gives out the blocks (KIP-730), so no two
//! brokers hand out the same id. A crash skips the rest of the block.

use crate::controller::ControllerHandle;
use crate::io;
use crate::log::checkpoint;
use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

pub const PRODUCER_IDS_FILE: &str = "producer-ids";

/// Ids reserved per write of the file.
const BLOCK: i64 = 1000;

pub struct ProducerIds {
    path: PathBuf,
    next: Cell<i64>,
    /// Ids below this are reserved durably and may be handed out.
    reserved: Cell<i64>,
    /// A reservation is being written; others wait for it in `waiting`.
    writing: Cell<bool>,
    waiting: RefCell<Vec<oneshot::Sender<()>>>,
}

impl ProducerIds {
    /// Starts after every id reserved before. A damaged file is an error: guessing could
    /// reuse ids.
    pub async fn load(data_dir: &Path) -> Result<ProducerIds, String> {
        let path = data_dir.join(PRODUCER_IDS_FILE);
        let data = io::read_small_file(&path).await.map_err(|e| format!("read {}: {e}", path.display()))?;
        let first = match data {
            None => 0,
            Some(data) => checkpoint::decode_counter(&data)
                .ok_or_else(|| format!("{} is damaged; refusing to reuse producer ids", path.display()))?,
        };
        Ok(ProducerIds {
            path,
            next: Cell::new(first),
            reserved: Cell::new(first),
            writing: Cell::new(false),
            waiting: RefCell::new(Vec::new()),
        })
    }

    /// A producer id no one was given before; in a cluster (`cluster`: the controller and this
    /// broker's node id), from a block the controller gave.
    pub async fn allocate(&self, cluster: Option<(&ControllerHandle, i32)>) -> Result<i64, String> {
        loop {
            let id = self.next.get();
            if id < self.reserved.get() {
                self.next.set(id + 1);
                return Ok(id);
            }
            if self.writing.replace(true) {
                let (wake, woken) = oneshot::channel();
                self.waiting.borrow_mut().push(wake);
                let _writer_finished = woken.await;
                continue;
            }
            let block = match cluster {
                None => self.reserve_on_disk(id).await,
                Some((controller, node)) => {
                    controller.allocate_producer_ids(node).await.map_err(|refusal| refusal.to_string())
                }
            };
            self.writing.set(false);
            for waiter in self.waiting.borrow_mut().drain(..) {
                let _ignored = waiter.send(());
            }
            let (first, end) = block?;
            self.next.set(first);
            self.reserved.set(end);
        }
    }

    /// Reserves the block from `first` in the file.
    async fn reserve_on_disk(&self, first: i64) -> Result<(i64, i64), String> {
        let end = first + BLOCK;
        let written = io::write_file_atomic(&self.path, checkpoint::encode_counter(end)).await;
        written.map_err(|e| format!("write {}: {e}", self.path.display()))?;
        Ok((first, end))
    }
}
