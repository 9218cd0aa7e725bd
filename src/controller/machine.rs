//! The controller's state machine: applies committed entries to the metadata image, publishes
//! every new image, and keeps one snapshot (`controller/snapshot`: the image in rkyv, with the
//! log id and membership it stands for) so the log before it can be purged.

use super::TypeConfig;
use super::log_store::replace_file;
use super::state::{Image, Outcome};
use super::wire::{self, SnapshotMetaW};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

const SNAPSHOT_FILE: &str = "snapshot";

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaW,
    /// The image, rkyv-encoded.
    image: Vec<u8>,
}

pub struct StateMachine {
    dir: PathBuf,
    image: Image,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    published: watch::Sender<Arc<Image>>,
}

impl StateMachine {
    /// Starts from the snapshot under `dir`, if there is one; the log replays the rest.
    pub fn open(dir: &Path, published: watch::Sender<Arc<Image>>) -> std::io::Result<StateMachine> {
        let mut machine = StateMachine {
            dir: dir.to_path_buf(),
            image: Image::default(),
            applied: None,
            membership: StoredMembership::default(),
            published,
        };
        if let Some(file) = read_snapshot(dir)? {
            machine.load(&file)?;
        }
        Ok(machine)
    }

    fn load(&mut self, file: &SnapshotFile) -> std::io::Result<()> {
        self.image =
            Image::decode(&file.image).map_err(|e| wire::invalid(&format!("snapshot image: {e}")))?;
        self.applied = file.meta.last.as_ref().map(wire::log_id);
        self.membership = wire::stored_membership(file.meta.membership_log, &file.meta.membership);
        self.published.send_replace(Arc::new(self.image.clone()));
        Ok(())
    }
}

fn read_snapshot(dir: &Path) -> std::io::Result<Option<SnapshotFile>> {
    wire::read_frame_file(&dir.join(SNAPSHOT_FILE))
}

fn write_snapshot(dir: &Path, file: &SnapshotFile) -> std::io::Result<()> {
    let bytes = wire::frame(file).map_err(|e| wire::invalid(&e.to_string()))?;
    replace_file(&dir.join(SNAPSHOT_FILE), &bytes)
}

fn snapshot_error(error: std::io::Error) -> StorageError<u64> {
    StorageError::IO { source: StorageIOError::write_snapshot(None, &error) }
}

fn meta_w(meta: &SnapshotMeta<u64, BasicNode>) -> SnapshotMetaW {
    SnapshotMetaW {
        last: meta.last_log_id.as_ref().map(wire::log_id_w),
        membership_log: meta.last_membership.log_id().as_ref().map(wire::log_id_w),
        membership: wire::membership_w(meta.last_membership.membership()),
        id: meta.snapshot_id.clone(),
    }
}

fn meta(w: &SnapshotMetaW) -> SnapshotMeta<u64, BasicNode> {
    SnapshotMeta {
        last_log_id: w.last.as_ref().map(wire::log_id),
        last_membership: wire::stored_membership(w.membership_log, &w.membership),
        snapshot_id: w.id.clone(),
    }
}

/// What a snapshot is built from: a copy of the state machine at one moment.
pub struct SnapshotBuilder {
    dir: PathBuf,
    image: Image,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let image = self.image.encode().map_err(|e| snapshot_error(std::io::Error::other(e.to_string())))?;
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.applied.map_or(0, |id| id.index),
                uuid::Uuid::new_v4().simple()
            ),
        };
        // Built on a task of its own: a snapshot installed meanwhile may be newer. Keep that one.
        let on_disk = read_snapshot(&self.dir).map_err(snapshot_error)?;
        if let Some(newer) =
            on_disk.filter(|disk| disk.meta.last.map(|l| l.index) >= self.applied.map(|l| l.index))
        {
            return Ok(received(&newer.meta, newer.image));
        }
        let file = SnapshotFile { meta: meta_w(&meta), image };
        write_snapshot(&self.dir, &file).map_err(snapshot_error)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(file.image)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            let index = entry.log_id.index;
            outcomes.push(match entry.payload {
                EntryPayload::Normal(command) => self.image.apply(index, &command),
                EntryPayload::Blank => {
                    self.image.skip(index);
                    Outcome::Applied
                }
                EntryPayload::Membership(membership) => {
                    self.image.skip(index);
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::Applied
                }
            });
        }
        self.published.send_replace(Arc::new(self.image.clone()));
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            image: self.image.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let file = SnapshotFile { meta: meta_w(meta), image: snapshot.into_inner() };
        // Checked before it replaces the snapshot on disk: a bad one must not stop restarts.
        Image::decode(&file.image)
            .map_err(|e| snapshot_error(wire::invalid(&format!("snapshot image: {e}"))))?;
        write_snapshot(&self.dir, &file).map_err(snapshot_error)?;
        self.load(&file).map_err(snapshot_error)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let file = read_snapshot(&self.dir)
            .map_err(|e| StorageError::IO { source: StorageIOError::read_snapshot(None, &e) })?;
        Ok(file.map(|file| Snapshot { meta: meta(&file.meta), snapshot: Box::new(Cursor::new(file.image)) }))
    }
}

/// Converts a snapshot received over the wire.
pub fn received(meta_w: &SnapshotMetaW, data: Vec<u8>) -> Snapshot<TypeConfig> {
    Snapshot { meta: meta(meta_w), snapshot: Box::new(Cursor::new(data)) }
}

/// Converts a snapshot to send over the wire.
pub fn to_send(snapshot: &Snapshot<TypeConfig>) -> (SnapshotMetaW, Vec<u8>) {
    (meta_w(&snapshot.meta), snapshot.snapshot.get_ref().clone())
}
