//! Incremental fetch sessions (KIP-227). A consumer that fetches the same partitions again and
//! again opens a session with a full Fetch (epoch 0); later requests (epoch 1, 2, …) name only
//! the partitions whose position changed or that it drops, and the answer names only the
//! partitions with something new: records, an error, or a moved high watermark, last stable
//! offset or log start. With many partitions this keeps both directions small.
//!
//! Sessions belong to the core whose connection opened them (a client keeps its connection, so
//! its requests return to that core). A session id unknown here, say after a reconnect landed
//! on another core, is FETCH_SESSION_ID_NOT_FOUND, and the client starts over with a full fetch.
//! Each core keeps at most its share of `max_incremental_fetch_session_cache_slots`; when full,
//! a session unused for `min_incremental_fetch_session_eviction_ms` makes room, and otherwise
//! the new fetch goes without a session, as in Kafka.

use crate::server::fetch_response::TopicResult;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::messages::fetch_request::FetchPartition;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Partitions all of one core's sessions may hold together: a bound on the memory clients can
/// make a core keep (a cached partition is about 150 bytes).
const PARTITIONS_PER_CORE_MAX: usize = 500_000;

/// The epoch of a full fetch that opens no session.
const FINAL_EPOCH: i32 = -1;

/// How a Fetch names a topic: by id from v13, by name before.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TopicKey {
    Name(String),
    Id(uuid::Uuid),
}

impl TopicKey {
    fn new(version: i16, name: &str, id: uuid::Uuid) -> TopicKey {
        if version >= 13 { TopicKey::Id(id) } else { TopicKey::Name(name.to_string()) }
    }
}

/// What a session last told the client about a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    error_code: i16,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
}

/// Never sent: the first answer for a partition always names it.
const NOTHING_SENT: Sent =
    Sent { error_code: -1, high_watermark: -1, last_stable_offset: -1, log_start_offset: -1 };

struct Cached {
    fetch: FetchPartition,
    sent: Sent,
}

struct Session {
    /// The epoch the next incremental fetch must carry.
    epoch: i32,
    last_used: Instant,
    /// The order partitions are read and answered in; answered ones move to the back, so that
    /// a response-size limit does not starve the same partitions every time.
    order: Vec<(TopicKey, i32)>,
    partitions: HashMap<(TopicKey, i32), Cached>,
}

#[derive(Default)]
struct Sessions {
    sessions: HashMap<i32, Session>,
    /// Partitions cached over all sessions (bounded by PARTITIONS_PER_CORE_MAX).
    partitions: usize,
}

thread_local! {
    static SESSIONS: RefCell<Sessions> = RefCell::new(Sessions::default());
}

/// The session cache's settings, for the broker as a whole.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub slots: usize,
    pub eviction: Duration,
    pub cores: usize,
}

/// What one Fetch reads and how its answer is shaped.
pub struct Context {
    /// The session id the answer carries: 0 when the fetch has no session.
    pub session_id: i32,
    /// The partitions to read, grouped by topic in answer order, each with what the session
    /// last sent for it (an incremental answer leaves out those with nothing new).
    pub topics: Vec<(TopicKey, Vec<(FetchPartition, Sent)>)>,
    incremental: bool,
}

/// Opens, continues or closes the request's session and says what to read.
pub fn begin(request: &mut FetchRequest, version: i16, limits: Limits) -> Result<Context, ResponseError> {
    let (id, epoch) =
        if version >= 7 { (request.session_id, request.session_epoch) } else { (0, FINAL_EPOCH) };
    SESSIONS.with_borrow_mut(|sessions| {
        if epoch > 0 {
            return sessions.continue_session(id, epoch, request, version);
        }
        sessions.close(id);
        let topics: Vec<(TopicKey, Vec<(FetchPartition, Sent)>)> = std::mem::take(&mut request.topics)
            .into_iter()
            .map(|topic| {
                let key = TopicKey::new(version, &topic.topic, topic.topic_id);
                (key, topic.partitions.into_iter().map(|p| (p, NOTHING_SENT)).collect())
            })
            .collect();
        let session_id = if epoch == 0 { sessions.open(&topics, limits) } else { 0 };
        Ok(Context { session_id, topics, incremental: false })
    })
}

/// Leaves out of an incremental answer the partitions with nothing new, and remembers what the
/// answer tells the client. `answer` is in the order of `context.topics`.
pub fn settle(context: &Context, answer: &mut [TopicResult]) {
    if context.session_id == 0 {
        return; // a full answer without a session: nothing to leave out or remember
    }
    let mut answered = Vec::new();
    for ((key, wanted), topic) in context.topics.iter().zip(answer.iter_mut()) {
        let mut at = 0;
        topic.partitions.retain(|result| {
            let (_, before) = &wanted[at];
            at += 1;
            let sent = Sent {
                error_code: result.error_code,
                high_watermark: result.high_watermark,
                last_stable_offset: result.last_stable_offset,
                log_start_offset: result.log_start_offset,
            };
            let news = result.error_code != 0 || !result.records.is_empty() || sent != *before;
            if news {
                answered.push(((key.clone(), result.partition), sent));
            }
            news || !context.incremental
        });
    }
    SESSIONS.with_borrow_mut(|sessions| {
        if let Some(session) = sessions.sessions.get_mut(&context.session_id) {
            session.remember(answered, context.incremental);
        }
    });
}

impl Sessions {
    fn close(&mut self, id: i32) {
        if let Some(session) = self.sessions.remove(&id) {
            self.partitions -= session.partitions.len();
            crate::metrics::count(|c| c.fetch_sessions = c.fetch_sessions.saturating_sub(1));
        }
    }

    /// A new session over `topics`, or 0 if this core has no room for it.
    fn open(&mut self, topics: &[(TopicKey, Vec<(FetchPartition, Sent)>)], limits: Limits) -> i32 {
        let count: usize = topics.iter().map(|(_, partitions)| partitions.len()).sum();
        if count == 0 || !self.make_room(count, limits) {
            return 0;
        }
        let mut session =
            Session { epoch: 1, last_used: Instant::now(), order: Vec::new(), partitions: HashMap::new() };
        for (key, partitions) in topics {
            for (fetch, _) in partitions {
                session.upsert(key.clone(), fetch.clone());
            }
        }
        let id = loop {
            let id = (uuid::Uuid::new_v4().as_u128() as i32) & i32::MAX;
            if id != 0 && !self.sessions.contains_key(&id) {
                break id;
            }
        };
        self.partitions += session.partitions.len();
        self.sessions.insert(id, session);
        crate::metrics::count(|c| c.fetch_sessions += 1);
        id
    }

    /// Whether a session of `count` partitions fits, evicting the least recently used session
    /// if it has been idle long enough.
    fn make_room(&mut self, count: usize, limits: Limits) -> bool {
        if limits.slots == 0 {
            return false;
        }
        let slots = (limits.slots / limits.cores.max(1)).max(1);
        if self.sessions.len() >= slots {
            let idle =
                self.sessions.iter().min_by_key(|(_, session)| session.last_used).map(|(&id, s)| (id, s));
            match idle {
                Some((id, session)) if session.last_used.elapsed() >= limits.eviction => self.close(id),
                _ => return false,
            }
        }
        self.partitions + count <= PARTITIONS_PER_CORE_MAX
    }

    fn continue_session(
        &mut self,
        id: i32,
        epoch: i32,
        request: &mut FetchRequest,
        version: i16,
    ) -> Result<Context, ResponseError> {
        let session = self.sessions.get_mut(&id).ok_or(ResponseError::FetchSessionIdNotFound)?;
        if session.epoch != epoch {
            return Err(ResponseError::InvalidFetchSessionEpoch);
        }
        let before = session.partitions.len();
        for topic in std::mem::take(&mut request.topics) {
            let key = TopicKey::new(version, &topic.topic, topic.topic_id);
            for fetch in topic.partitions {
                session.upsert(key.clone(), fetch);
            }
        }
        for topic in std::mem::take(&mut request.forgotten_topics_data) {
            let key = TopicKey::new(version, &topic.topic, topic.topic_id);
            for partition in topic.partitions {
                session.partitions.remove(&(key.clone(), partition));
            }
        }
        session.order.retain(|key| session.partitions.contains_key(key));
        session.epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
        session.last_used = Instant::now();
        let topics = session.wanted();
        let after = session.partitions.len();
        self.partitions = self.partitions + after - before;
        if self.partitions > PARTITIONS_PER_CORE_MAX {
            self.close(id);
            return Err(ResponseError::FetchSessionIdNotFound);
        }
        crate::metrics::count(|c| c.fetch_incremental += 1);
        Ok(Context { session_id: id, topics, incremental: true })
    }
}

impl Session {
    fn upsert(&mut self, key: TopicKey, fetch: FetchPartition) {
        let entry = (key, fetch.partition);
        match self.partitions.get_mut(&entry) {
            Some(cached) => cached.fetch = fetch,
            None => {
                self.order.push(entry.clone());
                self.partitions.insert(entry, Cached { fetch, sent: NOTHING_SENT });
            }
        }
    }

    /// The session's partitions in order, consecutive partitions of a topic grouped together.
    fn wanted(&self) -> Vec<(TopicKey, Vec<(FetchPartition, Sent)>)> {
        let mut topics: Vec<(TopicKey, Vec<(FetchPartition, Sent)>)> = Vec::new();
        for entry in &self.order {
            let Some(cached) = self.partitions.get(entry) else { continue };
            let wanted = (cached.fetch.clone(), cached.sent);
            match topics.last_mut() {
                Some((key, partitions)) if *key == entry.0 => partitions.push(wanted),
                _ => topics.push((entry.0.clone(), vec![wanted])),
            }
        }
        topics
    }

    /// Records what was sent; after an incremental answer the partitions it named go to the
    /// back of the order.
    fn remember(&mut self, answered: Vec<((TopicKey, i32), Sent)>, rotate: bool) {
        for (entry, sent) in &answered {
            if let Some(cached) = self.partitions.get_mut(entry) {
                cached.sent = *sent;
            }
        }
        if rotate && !answered.is_empty() {
            let moved: std::collections::HashSet<&(TopicKey, i32)> =
                answered.iter().map(|(e, _)| e).collect();
            let (back, mut front): (Vec<_>, Vec<_>) = self.order.drain(..).partition(|e| moved.contains(e));
            front.extend(back);
            self.order = front;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(partitions: i32) -> Vec<(TopicKey, Vec<(FetchPartition, Sent)>)> {
        let wanted =
            (0..partitions).map(|p| (FetchPartition::default().with_partition(p), NOTHING_SENT)).collect();
        vec![(TopicKey::Name("t".into()), wanted)]
    }

    #[test]
    fn a_full_cache_evicts_only_sessions_idle_long_enough() {
        let patient = Limits { slots: 4, eviction: Duration::from_secs(3600), cores: 2 };
        let mut sessions = Sessions::default();
        let first = sessions.open(&topics(3), patient);
        let second = sessions.open(&topics(2), patient);
        assert!(first != 0 && second != 0 && first != second);
        assert_eq!(sessions.open(&topics(1), patient), 0, "this core's two slots are taken and busy");
        let eager = Limits { eviction: Duration::ZERO, ..patient };
        let third = sessions.open(&topics(1), eager);
        assert_ne!(third, 0);
        assert!(!sessions.sessions.contains_key(&first), "the least recently used session made room");
        assert_eq!(sessions.partitions, 3);
        assert_eq!(sessions.open(&topics(0), eager), 0, "an empty fetch opens no session");
        let off = Limits { slots: 0, ..eager };
        assert_eq!(sessions.open(&topics(1), off), 0, "no slots: no sessions");
    }

    #[test]
    fn the_partition_budget_bounds_what_clients_make_a_core_keep() {
        let limits = Limits { slots: 1000, eviction: Duration::ZERO, cores: 1 };
        let mut sessions = Sessions::default();
        let big = i32::try_from(PARTITIONS_PER_CORE_MAX).expect("fits") - 10;
        assert_ne!(sessions.open(&topics(big), limits), 0);
        assert_eq!(sessions.open(&topics(11), limits), 0, "over the budget: a fetch without a session");
        assert_ne!(sessions.open(&topics(10), limits), 0);
    }
}
