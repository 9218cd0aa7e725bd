//! The cluster metadata the controller quorum replicates: the commands its log carries and the
//! image they build. Applying a command is deterministic (no clock, no I/O), so every
//! controller that applies the same log holds the same image.

use std::collections::BTreeMap;

/// A broker as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BrokerRecord {
    pub id: i32,
    /// Chosen by the broker process when it starts: a second process with the same node id has
    /// another one, and is refused while the first one's session lives.
    pub incarnation: [u8; 16],
    /// The index of the log entry that registered this incarnation; heartbeats and fences
    /// name it, so a stale one cannot touch a newer registration.
    pub epoch: u64,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Missed its heartbeats: clients are not sent to it.
    pub fenced: bool,
}

/// Everything the metadata log has said so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Image {
    /// The index of the last log entry applied: the image's version.
    pub applied: u64,
    /// Chosen by the first active controller; empty until then.
    pub cluster_id: String,
    pub brokers: BTreeMap<i32, BrokerRecord>,
}

impl Image {
    /// The brokers clients may be sent to, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values().filter(|broker| !broker.fenced)
    }
}

/// A change to the metadata, as the log carries it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Command {
    /// A broker (re)started: its registration replaces any earlier one and is unfenced.
    Register { id: i32, incarnation: [u8; 16], host: String, port: u16, rack: Option<String> },
    /// The broker registered at `epoch` missed its heartbeats.
    Fence { id: i32, epoch: u64 },
    /// The broker registered at `epoch`, fenced, heartbeats again.
    Unfence { id: i32, epoch: u64 },
    /// Names the cluster, once: a later one is ignored.
    NameCluster { id: String },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Register { id, host, port, .. } => write!(f, "register broker {id} at {host}:{port}"),
            Command::Fence { id, epoch } => write!(f, "fence broker {id} (epoch {epoch})"),
            Command::Unfence { id, epoch } => write!(f, "unfence broker {id} (epoch {epoch})"),
            Command::NameCluster { id } => write!(f, "name the cluster {id}"),
        }
    }
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The broker's registration, with its epoch.
    Registered {
        epoch: u64,
    },
    Applied,
    /// The command named an epoch that is no longer the broker's: nothing changed.
    Stale,
}

impl Image {
    /// Applies the command at log index `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        self.applied = index;
        match command {
            Command::Register { id, incarnation, host, port, rack } => {
                let record = BrokerRecord {
                    id: *id,
                    incarnation: *incarnation,
                    epoch: index,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    fenced: false,
                };
                self.brokers.insert(*id, record);
                Outcome::Registered { epoch: index }
            }
            Command::NameCluster { id } if self.cluster_id.is_empty() => {
                self.cluster_id = id.clone();
                Outcome::Applied
            }
            Command::NameCluster { .. } => Outcome::Stale,
            Command::Fence { id, epoch } | Command::Unfence { id, epoch } => {
                match self.brokers.get_mut(id).filter(|broker| broker.epoch == *epoch) {
                    Some(broker) => {
                        broker.fenced = matches!(command, Command::Fence { .. });
                        Outcome::Applied
                    }
                    None => Outcome::Stale,
                }
            }
        }
    }

    /// Marks a log entry without a command (a leader's first entry, a membership change).
    pub fn skip(&mut self, index: u64) {
        self.applied = index;
    }

    pub fn encode(&self) -> Result<Vec<u8>, rkyv::rancor::Error> {
        Ok(rkyv::to_bytes::<rkyv::rancor::Error>(self)?.into_vec())
    }

    pub fn decode(bytes: &[u8]) -> Result<Image, rkyv::rancor::Error> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<Image, rkyv::rancor::Error>(&aligned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(id: i32, incarnation: u8) -> Command {
        Command::Register {
            id,
            incarnation: [incarnation; 16],
            host: "127.0.0.1".into(),
            port: 9092,
            rack: None,
        }
    }

    #[test]
    fn fences_name_the_registration_they_mean() {
        let mut image = Image::default();
        assert_eq!(image.apply(3, &register(1, 7)), Outcome::Registered { epoch: 3 });
        assert_eq!(image.apply(4, &Command::Fence { id: 1, epoch: 3 }), Outcome::Applied);
        assert_eq!(image.live_brokers().count(), 0);
        assert_eq!(image.apply(5, &register(1, 8)), Outcome::Registered { epoch: 5 });
        assert_eq!(image.apply(6, &Command::Fence { id: 1, epoch: 3 }), Outcome::Stale, "an old epoch");
        assert_eq!(image.live_brokers().map(|b| b.incarnation[0]).collect::<Vec<_>>(), [8]);
        assert_eq!(image.apply(7, &Command::Fence { id: 2, epoch: 5 }), Outcome::Stale, "no such broker");
        assert_eq!(image.applied, 7);
        assert_eq!(image.apply(8, &Command::NameCluster { id: "a".into() }), Outcome::Applied);
        assert_eq!(image.apply(9, &Command::NameCluster { id: "b".into() }), Outcome::Stale, "named once");
        assert_eq!(image.cluster_id, "a");
        let decoded = Image::decode(&image.encode().expect("encode")).expect("decode");
        assert_eq!(decoded, image);
    }
}
