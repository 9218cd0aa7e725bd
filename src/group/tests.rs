//! The coordinator on a real partition log, in one executor: the protocol's errors and
//! fencing, and committed offsets surviving a reopen, compaction and expiry.

use super::*;
use crate::config::BrokerConfig;
use crate::io::block_on;
use crate::log::LogConfig;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use std::time::Duration;

fn config() -> GroupConfig {
    GroupConfig { initial_rebalance_delay: Duration::ZERO, ..BrokerConfig::defaults().groups }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

async fn open_coordinator(dir: &std::path::Path, config: GroupConfig) -> Rc<Coordinator> {
    let log = Log::open(dir, LogConfig::default()).await.expect("open the offsets partition");
    let coordinator = Coordinator::new(config, 1);
    coordinator.load(0, Rc::new(log)).await.expect("load");
    coordinator
}

fn join_request(member_id: &str, instance: Option<&str>) -> JoinGroupRequest {
    let protocol =
        JoinGroupRequestProtocol::default().with_name(text("range")).with_metadata(Bytes::from_static(b"m"));
    JoinGroupRequest::default()
        .with_group_id(GroupId(text("g")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(text(member_id))
        .with_group_instance_id(instance.map(text))
        .with_protocol_type(text("consumer"))
        .with_protocols(vec![protocol])
}

fn sync_request(member_id: &str, generation: i32, assignment: &'static [u8]) -> SyncGroupRequest {
    let assignments = vec![
        SyncGroupRequestAssignment::default()
            .with_member_id(text(member_id))
            .with_assignment(Bytes::from_static(assignment)),
    ];
    SyncGroupRequest::default()
        .with_group_id(GroupId(text("g")))
        .with_generation_id(generation)
        .with_member_id(text(member_id))
        .with_assignments(assignments)
}

fn heartbeat(coordinator: &Coordinator, member_id: &str, generation: i32, instance: Option<&str>) -> i16 {
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(text("g")))
        .with_generation_id(generation)
        .with_member_id(text(member_id))
        .with_group_instance_id(instance.map(text));
    coordinator.heartbeat(request).error_code
}

fn commit_request(offset: i64) -> OffsetCommitRequest {
    let partition =
        OffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(offset);
    let topic =
        OffsetCommitRequestTopic::default().with_name(TopicName(text("t"))).with_partitions(vec![partition]);
    OffsetCommitRequest::default()
        .with_group_id(GroupId(text("g")))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![topic])
}

fn committed(coordinator: &Coordinator) -> Option<i64> {
    let query = Some(vec![("t".to_string(), vec![0])]);
    let found = coordinator.fetch_offsets("g", &query, None, false).expect("fetch");
    found[0].1[0].1.as_ref().expect("stable").as_ref().map(|value| value.offset)
}

#[test]
fn members_join_sync_and_are_fenced_by_generation_and_member_id() {
    let dir = tempfile::tempdir().expect("dir");
    block_on(async {
        let coordinator = open_coordinator(dir.path(), config()).await;
        let client = ClientInfo { client_id: "c".into(), client_host: "/127.0.0.1".into() };
        let first = coordinator.join(join_request("", None), 5, &client).await;
        assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
        let member = first.member_id.to_string();
        let joined = coordinator.join(join_request(&member, None), 5, &client).await;
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
        assert_eq!((joined.leader.as_str(), joined.members.len()), (member.as_str(), 1));

        let stale = coordinator.sync(sync_request(&member, 2, b"x")).await;
        assert_eq!(stale.error_code, ResponseError::IllegalGeneration.code());
        let stranger = coordinator.sync(sync_request("nobody", 1, b"x")).await;
        assert_eq!(stranger.error_code, ResponseError::UnknownMemberId.code());
        let synced = coordinator.sync(sync_request(&member, 1, b"assignment")).await;
        assert_eq!((synced.error_code, &synced.assignment[..]), (0, &b"assignment"[..]));
        assert_eq!(heartbeat(&coordinator, &member, 1, None), 0);
        assert_eq!(heartbeat(&coordinator, &member, 0, None), ResponseError::IllegalGeneration.code());

        // A commit outside the group while it has members is refused; the member's own is not.
        let outsider = coordinator.commit(commit_request(5), |_, _| Some(uuid::Uuid::nil())).await;
        assert_eq!(outsider.topics[0].partitions[0].error_code, ResponseError::UnknownMemberId.code());
        let own = commit_request(5).with_generation_id_or_member_epoch(1).with_member_id(text(&member));
        assert_eq!(
            coordinator.commit(own, |_, _| Some(uuid::Uuid::nil())).await.topics[0].partitions[0].error_code,
            0
        );
        assert_eq!(committed(&coordinator), Some(5));
    });
}

#[test]
fn a_static_member_rejoining_a_stable_group_keeps_the_generation_and_fences_its_old_id() {
    let dir = tempfile::tempdir().expect("dir");
    block_on(async {
        let coordinator = open_coordinator(dir.path(), config()).await;
        let client = ClientInfo::default();
        let joined = coordinator.join(join_request("", Some("instance-1")), 5, &client).await;
        let old = joined.member_id.to_string();
        assert_eq!((joined.error_code, joined.generation_id), (0, 1));
        let synced = coordinator.sync(sync_request(&old, 1, b"mine")).await;
        assert_eq!(synced.error_code, 0);

        let again = coordinator.join(join_request("", Some("instance-1")), 5, &client).await;
        let new = again.member_id.to_string();
        assert_eq!((again.error_code, again.generation_id), (0, 1), "no rebalance");
        assert_ne!(new, old);
        let fenced = heartbeat(&coordinator, &old, 1, Some("instance-1"));
        assert_eq!(fenced, ResponseError::FencedInstanceId.code());
        let resynced = coordinator.sync(sync_request(&new, 1, b"ignored")).await;
        assert_eq!(&resynced.assignment[..], b"mine", "the stored assignment carries over");
    });
}

#[test]
fn offsets_survive_reopen_and_compaction_and_expire_once_the_group_is_idle() {
    let dir = tempfile::tempdir().expect("dir");
    block_on(async {
        let coordinator = open_coordinator(dir.path(), config()).await;
        let commits = COMPACT_SLACK_RECORDS + 100;
        for offset in 0..commits {
            let response = coordinator.commit(commit_request(offset), |_, _| Some(uuid::Uuid::nil())).await;
            assert_eq!(response.topics[0].partitions[0].error_code, 0);
        }
        let log = coordinator.log_for("g").expect("the partition is ours");
        assert_eq!(log.log_start_offset().0, 0);
        coordinator.maintain().await;
        assert_eq!(log.log_start_offset().0, commits, "everything before the rewritten entries is gone");
        log.close().await.expect("close");

        let reopened = open_coordinator(dir.path(), config()).await;
        assert_eq!(committed(&reopened), Some(commits - 1));
        reopened.log_for("g").expect("ours").close().await.expect("close");

        let expiring = GroupConfig { offsets_retention: Duration::ZERO, ..config() };
        let expired = open_coordinator(dir.path(), expiring.clone()).await;
        expired.maintain().await;
        assert_eq!(committed(&expired), None);
        expired.log_for("g").expect("ours").close().await.expect("close");
        let stored = open_coordinator(dir.path(), expiring).await;
        assert_eq!(committed(&stored), None, "the expiry is stored");
    });
}

#[test]
fn groups_land_on_the_partition_kafka_would_choose() {
    // Java: "my-group".hashCode() == -1906497762, "test-group".hashCode() == 627841412.
    assert_eq!(partition_for("my-group", 50), 12);
    assert_eq!(partition_for("test-group", 50), 12);
    assert_eq!(partition_for("", 16), 0);
    assert!((0..16).contains(&partition_for("ü-gruppe", 16)));
}

fn consumer_heartbeat(
    member_id: &str,
    epoch: i32,
    owned: Option<Vec<i32>>,
    topic: uuid::Uuid,
) -> ConsumerGroupHeartbeatRequest {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    let joining = epoch == 0;
    ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(text("g")))
        .with_member_id(text(member_id))
        .with_member_epoch(epoch)
        .with_rebalance_timeout_ms(if joining { 30_000 } else { -1 })
        .with_subscribed_topic_names(joining.then(|| vec![TopicName(text("t"))]))
        .with_topic_partitions(
            owned.map(|p| vec![TopicPartitions::default().with_topic_id(topic).with_partitions(p)]),
        )
}

fn assigned(response: &ConsumerGroupHeartbeatResponse) -> Option<Vec<i32>> {
    let assignment = response.assignment.as_ref()?;
    Some(assignment.topic_partitions.iter().flat_map(|t| t.partitions.iter().copied()).collect())
}

#[test]
fn consumer_group_members_get_partitions_only_once_their_previous_owner_let_go() {
    let dir = tempfile::tempdir().expect("dir");
    block_on(async {
        let coordinator = open_coordinator(dir.path(), config()).await;
        let topic = uuid::Uuid::new_v4();
        let topics: consumer::TopicMap = [("t".to_string(), (topic, 4))].into();
        let client = ClientInfo::default();
        let beat = |request| coordinator.consumer_heartbeat(request, &topics, &client);

        let a = beat(consumer_heartbeat("a", 0, None, topic));
        assert_eq!((a.error_code, assigned(&a)), (0, Some(vec![0, 1, 2, 3])));
        let a_epoch = a.member_epoch;
        let acked = beat(consumer_heartbeat("a", a_epoch, Some(vec![0, 1, 2, 3]), topic));
        assert_eq!((acked.error_code, assigned(&acked)), (0, None), "nothing new to send");

        let b = beat(consumer_heartbeat("b", 0, None, topic));
        assert_eq!(assigned(&b), Some(vec![]), "a still owns everything");
        let told = beat(consumer_heartbeat("a", a_epoch, None, topic));
        let keep = assigned(&told).expect("a is told to give up two partitions");
        assert_eq!((keep.len(), told.member_epoch), (2, a_epoch), "a keeps its epoch until it revokes");
        let still = beat(consumer_heartbeat("b", b.member_epoch, Some(vec![]), topic));
        assert_eq!(assigned(&still), None, "b waits while a holds its partitions");

        let released = beat(consumer_heartbeat("a", a_epoch, Some(keep.clone()), topic));
        assert!(released.member_epoch > a_epoch, "a moves to the new epoch once it let go");
        let stale = beat(consumer_heartbeat("a", a_epoch - 1, None, topic));
        assert_eq!(stale.error_code, ResponseError::FencedMemberEpoch.code());
        let got = beat(consumer_heartbeat("b", b.member_epoch, Some(vec![]), topic));
        let mut all = assigned(&got).expect("b gets the released partitions");
        all.extend(keep);
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);

        let left = beat(consumer_heartbeat("b", -1, None, topic));
        assert_eq!(left.member_epoch, -1);
        let back = beat(consumer_heartbeat("a", released.member_epoch, None, topic));
        assert_eq!(assigned(&back), Some(vec![0, 1, 2, 3]), "a takes everything after b left");
    });
}

#[test]
fn a_regex_subscription_takes_every_matching_topic_and_only_those() {
    let dir = tempfile::tempdir().expect("dir");
    block_on(async {
        let coordinator = open_coordinator(dir.path(), config()).await;
        let (wanted, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let topics: consumer::TopicMap =
            [("orders-eu".to_string(), (wanted, 2)), ("audit".to_string(), (other, 2))].into();
        let join = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(text("g")))
            .with_member_id(text("m"))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_regex(Some(text("orders-.*")));
        let joined = coordinator.consumer_heartbeat(join, &topics, &ClientInfo::default());
        let assignment = joined.assignment.expect("an assignment");
        let got: Vec<(uuid::Uuid, Vec<i32>)> =
            assignment.topic_partitions.iter().map(|t| (t.topic_id, t.partitions.clone())).collect();
        assert_eq!(got, vec![(wanted, vec![0, 1])]);
        let bad = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(text("g")))
            .with_member_id(text("n"))
            .with_member_epoch(0)
            .with_subscribed_topic_regex(Some(text("(unclosed")));
        let refused = coordinator.consumer_heartbeat(bad, &topics, &ClientInfo::default());
        assert_eq!(refused.error_code, ResponseError::InvalidRegularExpression.code());
        let described = coordinator.describe_consumer("g", &topics);
        let members: Vec<String> = described.members.iter().map(|m| m.member_id.to_string()).collect();
        assert_eq!(members, vec!["m".to_string()], "a refused heartbeat changes nothing");
    });
}

fn txn_commit_request(offset: i64) -> TxnOffsetCommitRequest {
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    let partition =
        TxnOffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(offset);
    let topic = TxnOffsetCommitRequestTopic::default()
        .with_name(TopicName(text("t")))
        .with_partitions(vec![partition]);
    TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(text("tx")))
        .with_group_id(GroupId(text("g")))
        .with_producer_id(ProducerId(5))
        .with_producer_epoch(0)
        .with_generation_id(-1)
        .with_topics(vec![topic])
}

#[test]
fn transactional_offsets_wait_for_their_marker_across_compaction_and_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    block_on(async {
        let coordinator = open_coordinator(dir.path(), config()).await;
        for offset in 0..COMPACT_SLACK_RECORDS + 100 {
            coordinator.commit(commit_request(offset), |_, _| Some(uuid::Uuid::nil())).await;
        }
        let codes = coordinator.txn_commit(&txn_commit_request(777_777), |_, _| true).await;
        assert_eq!(codes, vec![vec![0]]);
        let plain = committed(&coordinator);
        let query = Some(vec![("t".to_string(), vec![0])]);
        let stable = coordinator.fetch_offsets("g", &query, None, true).expect("fetch");
        assert_eq!(stable[0].1[0].1, Err(ResponseError::UnstableOffsetCommit), "pending: not stable");
        coordinator.maintain().await;
        let log = coordinator.log_for("g").expect("ours");
        assert!(log.log_start_offset().0 > 0, "compacted");
        log.close().await.expect("close");

        let reopened = open_coordinator(dir.path(), config()).await;
        assert_eq!(committed(&reopened), plain, "still pending after compaction and reopen");
        let log = reopened.log_for("g").expect("ours");
        log.append_marker(5, 0, true, 0, crate::types::LeaderEpoch(0))
            .expect("marker")
            .durable
            .await
            .expect("durable");
        reopened.complete_transaction(0, 5, true);
        assert_eq!(committed(&reopened), Some(777_777), "settled by the commit marker");
        log.close().await.expect("close");

        let replayed = open_coordinator(dir.path(), config()).await;
        assert_eq!(committed(&replayed), Some(777_777), "the marker is replayed");
    });
}
