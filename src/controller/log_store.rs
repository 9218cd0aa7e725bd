//! The controller's Raft log and vote, on disk.
//!
//! `controller/log` is a sequence of frames (`wire::frame`), each an entry, a truncation or a
//! purge; replaying them rebuilds the log. A torn or corrupt tail (a crash mid-append) is cut
//! at the last good frame. Appends are acknowledged to openraft only after `fdatasync`. When
//! dead records outnumber live entries the file is rewritten beside itself and renamed over.
//! `controller/vote` holds the vote, replaced atomically.
//!
//! One task owns the files and the entries in memory; the store and its readers (which
//! openraft drives from different tasks) ask it by message.

use super::TypeConfig;
use super::wire::{self, EntryW, LogIdW, VoteW};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum Record {
    Entry(EntryW),
    /// Entries from this index on are gone.
    Truncate(u64),
    /// Entries up to and including this one are gone.
    Purge(LogIdW),
}

type Reply<T> = oneshot::Sender<std::io::Result<T>>;

enum Op {
    State(Reply<(Option<LogIdW>, Option<LogIdW>)>),
    Entries(u64, u64, Reply<Vec<EntryW>>),
    Append(Vec<EntryW>, Reply<()>),
    Truncate(u64, Reply<()>),
    Purge(LogIdW, Reply<()>),
    SaveVote(VoteW, Reply<()>),
    ReadVote(Reply<Option<VoteW>>),
}

/// The log as openraft sees it: a handle on the task that owns it.
#[derive(Clone)]
pub struct LogStore {
    ops: mpsc::UnboundedSender<Op>,
}

struct Files {
    dir: PathBuf,
    log: File,
    /// Records in the file, live or not.
    records: usize,
    entries: BTreeMap<u64, EntryW>,
    purged: Option<LogIdW>,
    vote: Option<VoteW>,
}

impl LogStore {
    /// Opens (or creates) the log under `dir` and starts the task owning it.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        let files = Files::open(dir)?;
        let (ops, queue) = mpsc::unbounded_channel();
        tokio::spawn(files.serve(queue));
        Ok(LogStore { ops })
    }

    async fn ask<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> std::io::Result<T> {
        let (reply, answer) = oneshot::channel();
        self.ops.send(op(reply)).map_err(|_| std::io::Error::other("the controller log is closed"))?;
        answer.await.map_err(|_| std::io::Error::other("the controller log is closed"))?
    }
}

fn read_error(error: std::io::Error) -> StorageError<u64> {
    StorageError::IO { source: StorageIOError::read_logs(&error) }
}

fn write_error(error: std::io::Error) -> StorageError<u64> {
    StorageError::IO { source: StorageIOError::write_logs(&error) }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(&at) => at,
            Bound::Excluded(&at) => at.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&at) => at.saturating_add(1),
            Bound::Excluded(&at) => at,
            Bound::Unbounded => u64::MAX,
        };
        let entries = self.ask(|reply| Op::Entries(start, end, reply)).await.map_err(read_error)?;
        Ok(entries.iter().map(wire::entry).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let (purged, last) = self.ask(Op::State).await.map_err(read_error)?;
        Ok(LogState {
            last_purged_log_id: purged.as_ref().map(wire::log_id),
            last_log_id: last.as_ref().map(wire::log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let vote = wire::vote_w(vote);
        self.ask(|reply| Op::SaveVote(vote, reply))
            .await
            .map_err(|e| StorageError::IO { source: StorageIOError::write_vote(&e) })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let vote = self
            .ask(Op::ReadVote)
            .await
            .map_err(|e| StorageError::IO { source: StorageIOError::read_vote(&e) })?;
        Ok(vote.as_ref().map(wire::vote))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<EntryW> = entries.into_iter().map(|entry| wire::entry_w(&entry)).collect();
        let written = self.ask(|reply| Op::Append(entries, reply)).await;
        let failure = written.as_ref().err().map(|e| std::io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(written);
        match failure {
            Some(error) => Err(write_error(error)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.ask(|reply| Op::Truncate(log_id.index, reply)).await.map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let at = wire::log_id_w(&log_id);
        self.ask(|reply| Op::Purge(at, reply)).await.map_err(write_error)
    }
}

const LOG_FILE: &str = "log";
const VOTE_FILE: &str = "vote";

impl Files {
    fn open(dir: &Path) -> std::io::Result<Files> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes)?;
        let mut files = Files {
            dir: dir.to_path_buf(),
            log,
            records: 0,
            entries: BTreeMap::new(),
            purged: None,
            vote: wire::read_frame_file(&dir.join(VOTE_FILE))?,
        };
        let good = files.replay(&bytes);
        if good < bytes.len() {
            tracing::warn!(path = %path.display(), at = good, dropped = bytes.len() - good, "cutting a torn controller log tail");
            files.log.set_len(good as u64)?;
            files.log.sync_data()?;
        }
        Ok(files)
    }

    /// Applies every whole, intact record in `bytes`; returns how many bytes they span.
    fn replay(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while let Some(head) = bytes.get(at..at + 8) {
            let (length, crc) = wire::split_head(head.try_into().unwrap_or([0; 8]));
            let Some(body) = bytes.get(at + 8..at + 8 + length) else { break };
            let Ok(record) = wire::unframe::<Record>(crc, body) else { break };
            self.apply(record);
            self.records += 1;
            at += 8 + length;
        }
        at
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Entry(entry) => {
                self.entries.insert(entry.log_id.index, entry);
            }
            Record::Truncate(from) => {
                self.entries.split_off(&from);
            }
            Record::Purge(upto) => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.purged = Some(upto);
            }
        }
    }

    async fn serve(mut self, mut queue: mpsc::UnboundedReceiver<Op>) {
        while let Some(op) = queue.recv().await {
            // A caller that gave up does not stop the log: unanswered replies are dropped.
            match op {
                Op::State(reply) => drop(reply.send(Ok((self.purged, self.last())))),
                Op::Entries(start, end, reply) => {
                    let entries = self.entries.range(start..end.max(start)).map(|(_, e)| e.clone()).collect();
                    drop(reply.send(Ok(entries)))
                }
                Op::Append(entries, reply) => {
                    drop(reply.send(self.write(entries.into_iter().map(Record::Entry).collect())))
                }
                Op::Truncate(from, reply) => drop(reply.send(self.write(vec![Record::Truncate(from)]))),
                Op::Purge(upto, reply) => drop(reply.send(self.write(vec![Record::Purge(upto)]))),
                Op::SaveVote(vote, reply) => drop(reply.send(self.save_vote(vote))),
                Op::ReadVote(reply) => drop(reply.send(Ok(self.vote))),
            }
        }
    }

    fn last(&self) -> Option<LogIdW> {
        self.entries.values().next_back().map(|entry| entry.log_id).or(self.purged)
    }

    /// Appends `records` durably, then applies them in memory.
    fn write(&mut self, records: Vec<Record>) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for record in &records {
            bytes.extend(wire::frame(record).map_err(|e| wire::invalid(&e.to_string()))?);
        }
        self.log.write_all(&bytes)?;
        self.log.sync_data()?;
        self.records += records.len();
        for record in records {
            self.apply(record);
        }
        if self.records > 2 * self.entries.len() + 1024 {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Replaces the file with one holding only the live entries (and the purge point).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut live: Vec<Record> = self.purged.map(Record::Purge).into_iter().collect();
        live.extend(self.entries.values().cloned().map(Record::Entry));
        let mut bytes = Vec::new();
        for record in &live {
            bytes.extend(wire::frame(record).map_err(|e| wire::invalid(&e.to_string()))?);
        }
        let path = self.dir.join(LOG_FILE);
        replace_file(&path, &bytes)?;
        self.log = OpenOptions::new().append(true).open(&path)?;
        self.records = live.len();
        Ok(())
    }

    fn save_vote(&mut self, vote: VoteW) -> std::io::Result<()> {
        let bytes = wire::frame(&vote).map_err(|e| wire::invalid(&e.to_string()))?;
        replace_file(&self.dir.join(VOTE_FILE), &bytes)?;
        self.vote = Some(vote);
        Ok(())
    }
}

/// Writes `bytes` to `path` so a crash leaves the old or the new file, never a mix.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::Command;

    fn entry(index: u64, term: u64) -> EntryW {
        EntryW {
            log_id: LogIdW { term, node: 1, index },
            payload: wire::PayloadW::Normal(Command::Fence { id: 1, epoch: index }),
        }
    }

    #[test]
    fn the_log_replays_after_a_restart_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut files = Files::open(dir.path()).expect("open");
            files.write((1..=5).map(|i| Record::Entry(entry(i, 1))).collect()).expect("append");
            files.write(vec![Record::Truncate(4)]).expect("truncate");
            files.write(vec![Record::Entry(entry(4, 2))]).expect("append");
            files.write(vec![Record::Purge(entry(1, 1).log_id)]).expect("purge");
            files.save_vote(VoteW { term: 2, node: 1, committed: true }).expect("vote");
        }
        let path = dir.path().join(LOG_FILE);
        let intact = std::fs::metadata(&path).expect("stat").len();
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        let torn = wire::frame(&Record::Entry(entry(5, 2))).expect("frame");
        file.write_all(&torn[..torn.len() - 3]).expect("write a torn frame");
        drop(file);

        let files = Files::open(dir.path()).expect("reopen");
        assert_eq!(files.entries.keys().copied().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(files.entries[&4].log_id.term, 2, "the truncated entry was replaced");
        assert_eq!(files.purged, Some(entry(1, 1).log_id));
        assert_eq!(files.vote, Some(VoteW { term: 2, node: 1, committed: true }));
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), intact, "the torn frame is cut");
    }

    #[test]
    fn a_rewrite_keeps_only_live_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = Files::open(dir.path()).expect("open");
        for i in 1..=3000 {
            files.write(vec![Record::Entry(entry(i, 1))]).expect("append");
            if i % 10 == 0 {
                files.write(vec![Record::Purge(entry(i - 5, 1).log_id)]).expect("purge");
            }
        }
        assert!(files.records < 2 * files.entries.len() + 1024 + 2);
        let reopened = Files::open(dir.path()).expect("reopen");
        assert_eq!(reopened.entries, files.entries);
        assert_eq!(reopened.purged, files.purged);
    }
}
