//! Producer ids for InitProducerId, never handed out twice, across restarts too. Shard 0 owns
//! the allocator; it reserves ids on disk a block at a time (`producer-ids` in the data
//! directory holds the first id not yet reserved) and hands them out from memory. A crash
//! skips the rest of the block.

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

    /// A producer id no one was given before.
    pub async fn allocate(&self) -> std::io::Result<i64> {
        let id = self.next.get();
        self.next.set(id + 1);
        while id >= self.reserved.get() {
            if self.writing.replace(true) {
                let (wake, woken) = oneshot::channel();
                self.waiting.borrow_mut().push(wake);
                let _writer_finished = woken.await;
                continue;
            }
            let until = self.next.get() + BLOCK;
            let written = io::write_file_atomic(&self.path, checkpoint::encode_counter(until)).await;
            self.writing.set(false);
            for waiter in self.waiting.borrow_mut().drain(..) {
                let _ignored = waiter.send(());
            }
            written?;
            self.reserved.set(self.reserved.get().max(until));
        }
        Ok(id)
    }
}
