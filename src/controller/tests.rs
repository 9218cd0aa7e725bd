//! The quorum in one process: real logs, state machines and TCP connections between voters.

use super::*;
use std::path::Path;

const WAIT: Duration = Duration::from_secs(20);

fn voter(id: u64, voters: &[(i32, String)], dir: &Path, listener: std::net::TcpListener) -> Voter {
    Voter {
        listener,
        dir: dir.join("controller"),
        node_id: id,
        voters: voters.to_vec(),
        session_timeout: Duration::from_secs(60),
        snapshot_entries: 4,
        check_every: Duration::from_millis(50),
    }
}

/// Opens a voter and answers its peers, without the broker-facing duties.
async fn serve_voter(voter: Voter) -> (Raft<TypeConfig>, Images) {
    let (raft, images) = open_voter(&voter).await.expect("open the voter");
    let listener = tokio::net::TcpListener::from_std(voter.listener).expect("listener");
    let registry =
        Rc::new(RefCell::new(liveness::Registry::new(voter.node_id, voter.session_timeout, images.clone())));
    tokio::task::spawn_local(network::serve(listener, raft.clone(), registry));
    (raft, images)
}

fn register(id: i32) -> Command {
    Command::Register(state::Registration {
        id,
        incarnation: [id as u8; 16],
        host: "127.0.0.1".into(),
        port: 9092,
        rack: None,
        peer: None,
        cores: 1,
    })
}

#[test]
fn a_voter_that_missed_purged_entries_catches_up_from_a_snapshot() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
        let listeners: Vec<std::net::TcpListener> =
            (0..3).map(|_| bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind")).collect();
        let voters: Vec<(i32, String)> = listeners
            .iter()
            .enumerate()
            .map(|(at, l)| (at as i32 + 1, l.local_addr().expect("address").to_string()))
            .collect();
        let mut listeners = listeners.into_iter();
        let mut next = || listeners.next().expect("a listener");
        // Voter 3's port is bound but nobody answers on it yet.
        let (one, _) = serve_voter(voter(1, &voters, dirs[0].path(), next())).await;
        let (two, _) = serve_voter(voter(2, &voters, dirs[1].path(), next())).await;
        let absent = next();

        let elected = one.wait(Some(WAIT)).metrics(|m| m.current_leader.is_some(), "a leader").await;
        let leader = if elected.expect("elected").current_leader == Some(1) { &one } else { &two };
        for id in 0..20 {
            leader.client_write(register(100 + id)).await.expect("write");
        }
        let purged =
            leader.wait(Some(WAIT)).metrics(|m| m.purged.is_some_and(|p| p.index >= 8), "log purged").await;
        let last = purged.expect("purged").last_applied.expect("applied").index;

        let (three, images) = serve_voter(voter(3, &voters, dirs[2].path(), absent)).await;
        let caught_up = three.wait(Some(WAIT)).applied_index_at_least(Some(last), "voter 3 caught up").await;
        assert!(caught_up.expect("caught up").snapshot.is_some(), "voter 3 was sent a snapshot");
        assert!(dirs[2].path().join("controller").join("snapshot").exists());
        let image = images.borrow().clone();
        assert_eq!(image.brokers.len(), 20);
        assert!(image.applied >= last);
    });
}
