//! Unit tests of the group state machine (deterministic clock: every call gets
//! `now`), of persistence in `__consumer_offsets`, and of response encoding.

use super::group::{GroupState, JoinResult, SyncResult};
use super::machine::{CommitParams, Config, Groups, JoinParams, OffsetToCommit, Reply, SyncParams};
use super::GroupCoordinator;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use std::sync::Arc;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn params(
    group: &str,
    member: &str,
    instance: Option<&str>,
    protocols: &[(&str, &str)],
) -> JoinParams {
    JoinParams {
        group_id: group.into(),
        member_id: member.into(),
        group_instance_id: instance.map(String::from),
        client_id: "client".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|(n, m)| (n.to_string(), Bytes::from(m.to_string())))
            .collect(),
        require_known_member_id: true,
    }
}

fn range() -> Vec<(&'static str, &'static str)> {
    vec![("range", "meta")]
}

fn now_result<T: std::fmt::Debug>(r: Reply<T>) -> T {
    match r {
        Reply::Now(t) => t,
        Reply::Later(_) => panic!("expected an immediate answer"),
    }
}

fn later<T>(r: Reply<T>) -> tokio::sync::oneshot::Receiver<T> {
    match r {
        Reply::Later(rx) => rx,
        Reply::Now(_) => panic!("expected a delayed answer"),
    }
}

fn ready<T>(rx: &mut tokio::sync::oneshot::Receiver<T>) -> T {
    rx.try_recv().expect("answer is ready")
}

fn pending<T>(rx: &mut tokio::sync::oneshot::Receiver<T>) {
    assert!(
        matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "answer must still wait"
    );
}

/// KIP-394 round: empty id -> MEMBER_ID_REQUIRED, then join with it.
fn join_new(
    g: &mut Groups,
    group: &str,
    now: i64,
) -> (String, tokio::sync::oneshot::Receiver<JoinResult>) {
    let first = now_result(g.join(params(group, "", None, &range()), now));
    assert_eq!(first.error, ResponseError::MemberIdRequired.code());
    assert!(!first.member_id.is_empty());
    let id = first.member_id.clone();
    let rx = later(g.join(params(group, &id, None, &range()), now));
    (id, rx)
}

fn sync(
    g: &mut Groups,
    group: &str,
    member: &str,
    generation: i32,
    assignments: Vec<(String, Bytes)>,
    now: i64,
) -> Reply<SyncResult> {
    g.sync(
        SyncParams {
            group_id: group.into(),
            generation,
            member_id: member.into(),
            group_instance_id: None,
            protocol_type: None,
            protocol_name: None,
            assignments,
        },
        now,
    )
}

/// A Stable group of `n` dynamic members; returns their ids (leader first) and the generation.
fn stable_group(g: &mut Groups, group: &str, n: usize, now: i64) -> (Vec<String>, i32) {
    let mut ids = Vec::new();
    let mut rxs = Vec::new();
    // First member alone completes a generation; the others join together.
    for _ in 0..n {
        let first = now_result(g.join(params(group, "", None, &range()), now));
        ids.push(first.member_id);
    }
    for id in &ids {
        rxs.push(later(g.join(params(group, id, None, &range()), now)));
    }
    let results: Vec<JoinResult> = rxs.iter_mut().map(ready).collect();
    let generation = results[0].generation;
    assert!(results
        .iter()
        .all(|r| r.error == 0 && r.generation == generation));
    let leader = results[0].leader.clone();
    let mut syncs = Vec::new();
    for id in ids.iter().filter(|i| **i != leader) {
        syncs.push(later(sync(g, group, id, generation, vec![], now)));
    }
    let assignments = ids
        .iter()
        .map(|i| (i.clone(), Bytes::from(format!("asg-{i}"))))
        .collect();
    let leader_sync = sync(g, group, &leader, generation, assignments, now);
    let mut leader_rx = later(leader_sync);
    assert_eq!(
        ready(&mut leader_rx).assignment,
        Bytes::from(format!("asg-{leader}"))
    );
    for rx in &mut syncs {
        let r = ready(rx);
        assert_eq!(r.error, 0);
        assert!(!r.assignment.is_empty());
    }
    assert_eq!(g.group(group).map(|x| x.state), Some(GroupState::Stable));
    let mut ordered = vec![leader.clone()];
    ordered.extend(ids.into_iter().filter(|i| *i != leader));
    (ordered, generation)
}

#[test]
fn kip394_join_sync_heartbeat() {
    let mut g = Groups::new(Config::default());
    let (id, mut rx) = join_new(&mut g, "g", 0);
    let r = ready(&mut rx);
    assert_eq!(
        (r.error, r.generation, r.leader.as_str()),
        (0, 1, id.as_str())
    );
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].metadata, Bytes::from("meta"));
    let mut s = later(sync(
        &mut g,
        "g",
        &id,
        1,
        vec![(id.clone(), Bytes::from("a"))],
        0,
    ));
    assert_eq!(ready(&mut s).assignment, Bytes::from("a"));
    assert_eq!(g.heartbeat("g", &id, None, 1, 10), 0);
    assert_eq!(
        g.heartbeat("g", &id, None, 0, 10),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        g.heartbeat("g", "nobody", None, 1, 10),
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        g.heartbeat("nogroup", &id, None, 1, 10),
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(g.rebalances, 1);
}

#[test]
fn invalid_join_requests() {
    let mut g = Groups::new(Config::default());
    let mut p = params("g", "", None, &range());
    p.session_timeout_ms = 10;
    assert_eq!(
        now_result(g.join(p, 0)).error,
        ResponseError::InvalidSessionTimeout.code()
    );
    assert_eq!(
        now_result(g.join(params("", "", None, &range()), 0)).error,
        ResponseError::InvalidGroupId.code()
    );
    assert_eq!(
        now_result(g.join(params("g", "x", None, &range()), 0)).error,
        ResponseError::UnknownMemberId.code()
    );
    let (ids, _) = stable_group(&mut g, "g", 1, 0);
    let other = params("g", "", None, &[("roundrobin", "m")]);
    assert_eq!(
        now_result(g.join(other, 0)).error,
        ResponseError::InconsistentGroupProtocol.code()
    );
    let mut wrong_type = params("g", "", None, &range());
    wrong_type.protocol_type = "connect".into();
    assert_eq!(
        now_result(g.join(wrong_type, 0)).error,
        ResponseError::InconsistentGroupProtocol.code()
    );
    assert_eq!(ids.len(), 1);
}

#[test]
fn second_member_causes_exactly_one_rebalance() {
    let mut g = Groups::new(Config::default());
    let (ids, gen) = stable_group(&mut g, "g", 1, 0);
    let before = g.rebalances;
    let (b, mut b_rx) = join_new(&mut g, "g", 100);
    pending(&mut b_rx);
    assert_eq!(
        g.group("g").map(|x| x.state),
        Some(GroupState::PreparingRebalance)
    );
    assert_eq!(
        g.heartbeat("g", &ids[0], None, gen, 200),
        ResponseError::RebalanceInProgress.code()
    );
    // Commits are still allowed while the group prepares to rebalance.
    let commit = CommitParams {
        group_id: "g".into(),
        generation: gen,
        member_id: ids[0].clone(),
        group_instance_id: None,
    };
    assert_eq!(g.validate_commit(&commit, 200), Ok(()));
    let mut a_rx = later(g.join(params("g", &ids[0], None, &range()), 300));
    let (a, b_res) = (ready(&mut a_rx), ready(&mut b_rx));
    assert_eq!(a.generation, gen + 1);
    assert_eq!(b_res.generation, gen + 1);
    assert_eq!(a.leader, ids[0], "the old leader stays leader");
    assert_eq!(a.members.len(), 2);
    assert!(b_res.members.is_empty());
    assert_eq!(b_res.member_id, b);
    assert_eq!(g.rebalances, before + 1);
    // Followers' SyncGroup waits for the leader's; every answer has an assignment blob.
    let mut b_sync = later(sync(&mut g, "g", &b, gen + 1, vec![], 400));
    pending(&mut b_sync);
    assert_eq!(
        g.heartbeat("g", &b, None, gen + 1, 400),
        0,
        "heartbeats in CompletingRebalance are fine"
    );
    assert_eq!(
        g.validate_commit(&commit, 400),
        Err(ResponseError::IllegalGeneration)
    );
    let c2 = CommitParams {
        generation: gen + 1,
        ..commit.clone()
    };
    assert_eq!(
        g.validate_commit(&c2, 400),
        Err(ResponseError::RebalanceInProgress)
    );
    let mut a_sync = later(sync(
        &mut g,
        "g",
        &ids[0],
        gen + 1,
        vec![(ids[0].clone(), Bytes::from("p0"))],
        500,
    ));
    assert_eq!(ready(&mut a_sync).assignment, Bytes::from("p0"));
    let bs = ready(&mut b_sync);
    assert_eq!(
        (bs.error, bs.assignment.len()),
        (0, 0),
        "a member the leader left out gets an empty blob"
    );
    assert_eq!(g.validate_commit(&c2, 600), Ok(()));
    assert_eq!(g.rebalances, before + 1);
}

#[test]
fn session_expiry_rebalances_once() {
    let mut g = Groups::new(Config::default());
    let (ids, gen) = stable_group(&mut g, "g", 3, 0);
    let before = g.rebalances;
    // ids[0] and ids[1] keep heartbeating; ids[2] dies.
    let mut t = 0;
    while t < i64::from(SESSION) - 1000 {
        t += 1000;
        assert_eq!(g.heartbeat("g", &ids[0], None, gen, t), 0);
        assert_eq!(g.heartbeat("g", &ids[1], None, gen, t), 0);
        g.tick(t);
    }
    assert_eq!(g.group("g").map(|x| x.state), Some(GroupState::Stable));
    t = i64::from(SESSION);
    g.tick(t);
    assert_eq!(
        g.group("g").map(|x| x.state),
        Some(GroupState::PreparingRebalance)
    );
    assert_eq!(g.group("g").map(|x| x.members.len()), Some(2));
    assert_eq!(
        g.heartbeat("g", &ids[1], None, gen, t),
        ResponseError::RebalanceInProgress.code()
    );
    let mut r0 = later(g.join(params("g", &ids[0], None, &range()), t));
    pending(&mut r0);
    let mut r1 = later(g.join(params("g", &ids[1], None, &range()), t + 10));
    assert_eq!(ready(&mut r0).generation, gen + 1);
    assert_eq!(ready(&mut r1).generation, gen + 1);
    assert_eq!(g.rebalances, before + 1);
}

#[test]
fn rebalance_timeout_drops_members_that_do_not_rejoin() {
    let mut g = Groups::new(Config::default());
    let (ids, gen) = stable_group(&mut g, "g", 2, 0);
    let mut r0 = later(g.join(params("g", &ids[0], None, &range()), 100));
    pending(&mut r0);
    // ids[1] keeps heartbeating (so no session expiry) but never rejoins.
    let mut t = 100;
    while t < 100 + i64::from(REBALANCE) - 1 {
        t += 1000;
        t = t.min(100 + i64::from(REBALANCE) - 1);
        let _ = g.heartbeat("g", &ids[1], None, gen, t);
        g.tick(t);
        if t == 100 + i64::from(REBALANCE) - 1 {
            break;
        }
    }
    pending(&mut r0);
    g.tick(100 + i64::from(REBALANCE));
    let r = ready(&mut r0);
    assert_eq!((r.error, r.generation, r.members.len()), (0, gen + 1, 1));
    assert_eq!(
        g.heartbeat("g", &ids[1], None, gen, t),
        ResponseError::UnknownMemberId.code()
    );
}

#[test]
fn leave_group_batch_and_pending_members() {
    let mut g = Groups::new(Config::default());
    let (ids, _) = stable_group(&mut g, "g", 3, 0);
    let codes = g.leave(
        "g",
        &[
            (ids[1].clone(), None),
            (ids[2].clone(), None),
            ("ghost".into(), None),
        ],
        10,
    );
    assert_eq!(codes, vec![0, 0, ResponseError::UnknownMemberId.code()]);
    assert_eq!(
        g.group("g").map(|x| x.state),
        Some(GroupState::PreparingRebalance)
    );
    let mut r = later(g.join(params("g", &ids[0], None, &range()), 20));
    assert_eq!(ready(&mut r).members.len(), 1);
    let codes = g.leave("g", &[(ids[0].clone(), None)], 30);
    assert_eq!(codes, vec![0]);
    assert_eq!(g.group("g").map(|x| x.state), Some(GroupState::Empty));
    assert_eq!(
        g.leave("nogroup", &[("x".into(), None)], 30),
        vec![ResponseError::UnknownMemberId.code()]
    );
}

#[test]
fn static_member_rejoin_keeps_assignment_without_rebalance() {
    let mut g = Groups::new(Config::default());
    // Two static members.
    let mut a = later(g.join(params("g", "", Some("ia"), &range()), 0));
    let a_res = ready(&mut a);
    let mut b = later(g.join(params("g", "", Some("ib"), &range()), 10));
    let a_id = a_res.member_id.clone();
    let mut a2 = later(g.join(params("g", &a_id, Some("ia"), &range()), 20));
    let (a2r, br) = (ready(&mut a2), ready(&mut b));
    assert_eq!(a2r.generation, br.generation);
    let gen = br.generation;
    let b_id = br.member_id.clone();
    let leader = a2r.leader.clone();
    assert_eq!(leader, a_id);
    let mut bs = later(g.sync(
        SyncParams {
            group_id: "g".into(),
            generation: gen,
            member_id: b_id.clone(),
            group_instance_id: Some("ib".into()),
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments: vec![],
        },
        30,
    ));
    let _ = later(sync(
        &mut g,
        "g",
        &a_id,
        gen,
        vec![(a_id.clone(), "A".into()), (b_id.clone(), "B".into())],
        30,
    ));
    assert_eq!(ready(&mut bs).assignment, Bytes::from("B"));
    let before = g.rebalances;
    // b restarts: a new process joins with an empty member id and the same instance id.
    let r = now_result(g.join(params("g", "", Some("ib"), &range()), 5_000));
    assert_eq!(r.error, 0);
    assert_ne!(r.member_id, b_id, "a new member id");
    assert_eq!(r.generation, gen);
    assert!(r.members.is_empty(), "a follower is not asked to assign");
    assert!(!r.skip_assignment);
    let new_b = r.member_id.clone();
    let s = now_result(g.sync(
        SyncParams {
            group_id: "g".into(),
            generation: gen,
            member_id: new_b.clone(),
            group_instance_id: Some("ib".into()),
            protocol_type: None,
            protocol_name: None,
            assignments: vec![],
        },
        5_001,
    ));
    assert_eq!(s.assignment, Bytes::from("B"), "the old assignment");
    assert_eq!(g.rebalances, before, "no rebalance");
    assert_eq!(g.group("g").map(|x| x.state), Some(GroupState::Stable));
    assert_eq!(
        g.heartbeat("g", &a_id, Some("ia"), gen, 5_002),
        0,
        "the others are not disturbed"
    );
    assert_eq!(
        g.heartbeat("g", &b_id, Some("ib"), gen, 5_002),
        ResponseError::FencedInstanceId.code()
    );
    // The static leader rejoining: members listed, told to skip the assignment.
    let r = now_result(g.join(params("g", "", Some("ia"), &range()), 6_000));
    assert_eq!((r.error, r.generation, r.skip_assignment), (0, gen, true));
    assert_eq!(r.leader, r.member_id);
    assert_eq!(r.members.len(), 2);
    assert_eq!(g.rebalances, before);
    // A static member whose subscription changed forces a rebalance.
    let changed = later(g.join(params("g", "", Some("ib"), &[("range", "other")]), 7_000));
    drop(changed);
    assert_eq!(g.rebalances, before + 1);
}

#[test]
fn static_member_expires_after_session_timeout() {
    let mut g = Groups::new(Config::default());
    let mut a = later(g.join(params("g", "", Some("ia"), &range()), 0));
    let r = ready(&mut a);
    let _ = later(sync(&mut g, "g", &r.member_id, r.generation, vec![], 0));
    g.tick(i64::from(SESSION) + 1);
    assert_eq!(g.group("g").map(|x| x.state), Some(GroupState::Empty));
    assert!(g.group("g").is_some_and(|x| x.static_members.is_empty()));
}

#[test]
fn protocol_selection_votes_then_leader_order() {
    let mut g = Groups::new(Config::default());
    let mut a = later(g.join(
        params(
            "g",
            "",
            Some("a"),
            &[("cooperative-sticky", "x"), ("range", "y")],
        ),
        0,
    ));
    let a_id = ready(&mut a).member_id;
    let mut b = later(g.join(
        params(
            "g",
            "",
            Some("b"),
            &[("range", "y"), ("cooperative-sticky", "x")],
        ),
        1,
    ));
    let mut a2 = later(g.join(
        params(
            "g",
            &a_id,
            Some("a"),
            &[("cooperative-sticky", "x"), ("range", "y")],
        ),
        2,
    ));
    // One vote each: the leader's preference wins.
    assert_eq!(
        ready(&mut a2).protocol_name.as_deref(),
        Some("cooperative-sticky")
    );
    assert_eq!(
        ready(&mut b).protocol_name.as_deref(),
        Some("cooperative-sticky")
    );
}

#[test]
fn offsets_commit_fetch_and_validation() {
    let mut g = Groups::new(Config::default());
    let simple = CommitParams {
        group_id: "s".into(),
        generation: -1,
        member_id: String::new(),
        group_instance_id: None,
    };
    assert_eq!(g.validate_commit(&simple, 0), Ok(()));
    let offs = vec![
        OffsetToCommit {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            leader_epoch: 3,
            metadata: Some("hello".into()),
        },
        OffsetToCommit {
            topic: "t".into(),
            partition: 1,
            offset: 7,
            leader_epoch: -1,
            metadata: None,
        },
        OffsetToCommit {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            leader_epoch: -1,
            metadata: Some("x".repeat(5000)),
        },
    ];
    assert_eq!(
        g.commit("s", offs, 0),
        vec![0, 0, ResponseError::OffsetMetadataTooLarge.code()]
    );
    let fetched = g.fetch("s", Some(vec![("t".into(), vec![0, 1, 2])]));
    let parts = &fetched[0].1;
    let p0 = parts[0].1.clone().unwrap();
    assert_eq!(
        (p0.offset, p0.leader_epoch, p0.metadata.as_str()),
        (5, 3, "hello")
    );
    assert_eq!(parts[1].1.as_ref().map(|c| c.metadata.as_str()), Some(""));
    assert!(parts[2].1.is_none());
    let all = g.fetch("s", None);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.len(), 2);
    assert!(g.fetch("unknown", None).is_empty());
    // Member validation.
    let (ids, gen) = stable_group(&mut g, "g", 1, 0);
    let base = CommitParams {
        group_id: "g".into(),
        generation: gen,
        member_id: ids[0].clone(),
        group_instance_id: None,
    };
    assert_eq!(g.validate_commit(&base, 0), Ok(()));
    assert_eq!(
        g.validate_commit(
            &CommitParams {
                generation: gen + 5,
                ..base.clone()
            },
            0
        ),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        g.validate_commit(
            &CommitParams {
                member_id: "zz".into(),
                ..base.clone()
            },
            0
        ),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        g.validate_commit(
            &CommitParams {
                generation: -1,
                member_id: String::new(),
                ..base.clone()
            },
            0
        ),
        Err(ResponseError::UnknownMemberId),
        "a simple commit to a group with members"
    );
    assert_eq!(
        g.validate_commit(
            &CommitParams {
                group_id: "new".into(),
                generation: 3,
                ..base.clone()
            },
            0
        ),
        Err(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        g.validate_commit(
            &CommitParams {
                group_id: String::new(),
                ..base
            },
            0
        ),
        Err(ResponseError::InvalidGroupId)
    );
}

#[test]
fn delete_groups_and_offsets() {
    let mut g = Groups::new(Config::default());
    let (ids, _) = stable_group(&mut g, "busy", 1, 0);
    assert_eq!(g.delete_group("busy"), ResponseError::NonEmptyGroup.code());
    assert_eq!(
        g.delete_group("none"),
        ResponseError::GroupIdNotFound.code()
    );
    let simple = CommitParams {
        group_id: "e".into(),
        generation: -1,
        member_id: String::new(),
        group_instance_id: None,
    };
    g.validate_commit(&simple, 0).unwrap();
    g.commit(
        "e",
        vec![OffsetToCommit {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        }],
        0,
    );
    g.writes.clear();
    assert_eq!(g.delete_group("e"), 0);
    assert!(g.group("e").is_none());
    assert_eq!(
        g.writes.len(),
        2,
        "an offset tombstone and a group tombstone"
    );
    // OffsetDelete: subscribed topics are refused (the subscription names "t").
    let sub = subscription(&["t"]);
    let mut g = Groups::new(Config::default());
    let first = now_result(g.join(
        params("c", "", None, &[("range", "")]).with_metadata(sub.clone()),
        0,
    ));
    let mut p = params("c", &first.member_id, None, &[("range", "")]);
    p.protocols = vec![("range".into(), sub)];
    let mut r = later(g.join(p, 0));
    let gen = ready(&mut r).generation;
    let _ = later(sync(&mut g, "c", &first.member_id, gen, vec![], 0));
    let cp = CommitParams {
        group_id: "c".into(),
        generation: gen,
        member_id: first.member_id.clone(),
        group_instance_id: None,
    };
    g.validate_commit(&cp, 0).unwrap();
    let offs = ["t", "u"].iter().map(|t| OffsetToCommit {
        topic: t.to_string(),
        partition: 0,
        offset: 1,
        leader_epoch: -1,
        metadata: None,
    });
    g.commit("c", offs.collect(), 0);
    let res = g
        .delete_offsets("c", vec![("t".into(), vec![0]), ("u".into(), vec![0])])
        .unwrap();
    assert_eq!(
        res[0].1,
        vec![(0, ResponseError::GroupSubscribedToTopic.code())]
    );
    assert_eq!(res[1].1, vec![(0, 0)]);
    assert_eq!(g.fetch("c", None).len(), 1);
    assert_eq!(
        g.delete_offsets("nope", vec![]).err(),
        Some(ResponseError::GroupIdNotFound)
    );
    assert_eq!(ids.len(), 1);
}

trait WithMetadata {
    fn with_metadata(self, m: Bytes) -> Self;
}
impl WithMetadata for JoinParams {
    fn with_metadata(mut self, m: Bytes) -> Self {
        for p in &mut self.protocols {
            p.1 = m.clone();
        }
        self
    }
}

fn subscription(topics: &[&str]) -> Bytes {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let sub = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.to_string()))
            .collect(),
    );
    let mut buf = bytes::BytesMut::new();
    bytes::BufMut::put_i16(&mut buf, 1);
    sub.encode(&mut buf, 1).unwrap();
    buf.freeze()
}

#[test]
fn offsets_of_empty_groups_expire() {
    let config = Config {
        offsets_retention_ms: 1000,
        ..Config::default()
    };
    let mut g = Groups::new(config);
    let simple = CommitParams {
        group_id: "s".into(),
        generation: -1,
        member_id: String::new(),
        group_instance_id: None,
    };
    g.validate_commit(&simple, 0).unwrap();
    g.commit(
        "s",
        vec![OffsetToCommit {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        }],
        0,
    );
    g.expire_offsets(999);
    assert_eq!(g.fetch("s", None).len(), 1);
    g.expire_offsets(1000);
    assert!(g.fetch("s", None).is_empty());
    assert!(
        g.group("s").is_none(),
        "an empty group without offsets goes away"
    );
    // A group with members keeps its offsets.
    let (ids, gen) = stable_group(&mut g, "m", 1, 0);
    let cp = CommitParams {
        group_id: "m".into(),
        generation: gen,
        member_id: ids[0].clone(),
        group_instance_id: None,
    };
    g.validate_commit(&cp, 0).unwrap();
    g.commit(
        "m",
        vec![OffsetToCommit {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            leader_epoch: -1,
            metadata: None,
        }],
        0,
    );
    g.expire_offsets(5000);
    assert_eq!(g.fetch("m", None).len(), 1);
}

#[test]
fn concurrent_rebalances_never_answer_unknown_member() {
    // Several groups rebalancing at interleaved times: every member accepted in the
    // current generation gets answers other than UNKNOWN_MEMBER_ID.
    let mut g = Groups::new(Config::default());
    let groups = ["g1", "g2", "g3"];
    let mut members: Vec<(usize, String)> = Vec::new();
    for (gi, name) in groups.iter().enumerate() {
        for _ in 0..3 {
            let r = now_result(g.join(params(name, "", None, &range()), 0));
            members.push((gi, r.member_id));
        }
    }
    let mut rxs: Vec<_> = members
        .iter()
        .map(|(gi, id)| later(g.join(params(groups[*gi], id, None, &range()), 1)))
        .collect();
    let results: Vec<JoinResult> = rxs.iter_mut().map(ready).collect();
    let mut sync_rx = Vec::new();
    for ((gi, id), r) in members.iter().zip(&results) {
        assert_eq!(r.error, 0);
        let assignments = if r.leader == *id {
            r.members
                .iter()
                .map(|m| (m.member_id.clone(), Bytes::from("x")))
                .collect()
        } else {
            vec![]
        };
        sync_rx.push(sync(&mut g, groups[*gi], id, r.generation, assignments, 2));
        for ((gj, other), ro) in members.iter().zip(&results) {
            let code = g.heartbeat(groups[*gj], other, None, ro.generation, 2);
            assert_ne!(code, ResponseError::UnknownMemberId.code());
        }
    }
    for reply in sync_rx {
        let s = match reply {
            Reply::Now(s) => s,
            Reply::Later(mut rx) => ready(&mut rx),
        };
        assert_eq!(s.error, 0);
        assert_eq!(s.assignment, Bytes::from("x"));
    }
}

// ---------------------------------------------------------------- persistence

#[test]
fn offsets_and_groups_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open_log = || {
        Arc::new(
            weir_storage::Log::open(
                &dir.path().join("__consumer_offsets-0"),
                weir_storage::LogConfig::default(),
            )
            .unwrap(),
        )
    };
    let (member, gen) = {
        let c = GroupCoordinator::new(Config::default());
        c.open(vec![open_log()], 0).unwrap();
        let ((ids, gen), _) = c.run(|g| stable_group(g, "g", 2, 0));
        let cp = CommitParams {
            group_id: "g".into(),
            generation: gen,
            member_id: ids[0].clone(),
            group_instance_id: None,
        };
        let (codes, durable) = c.run(|g| {
            g.validate_commit(&cp, 0).unwrap();
            g.commit(
                "g",
                vec![OffsetToCommit {
                    topic: "t".into(),
                    partition: 3,
                    offset: 42,
                    leader_epoch: 2,
                    metadata: Some("meta data".into()),
                }],
                0,
            )
        });
        assert_eq!(codes, vec![0]);
        assert!(!durable.is_empty());
        // Simple group committed then deleted: must stay deleted.
        c.run(|g| {
            let s = CommitParams {
                group_id: "gone".into(),
                generation: -1,
                member_id: String::new(),
                group_instance_id: None,
            };
            g.validate_commit(&s, 0).unwrap();
            g.commit(
                "gone",
                vec![OffsetToCommit {
                    topic: "t".into(),
                    partition: 0,
                    offset: 1,
                    leader_epoch: -1,
                    metadata: None,
                }],
                0,
            );
            assert_eq!(g.delete_group("gone"), 0);
        });
        (ids[0].clone(), gen)
    };
    let c = GroupCoordinator::new(Config::default());
    c.open(vec![open_log()], 100).unwrap();
    let fetched = c.read(|g| g.fetch("g", None));
    let committed = fetched[0].1[0].1.clone().unwrap();
    assert_eq!((fetched[0].0.as_str(), fetched[0].1[0].0), ("t", 3));
    assert_eq!(
        (
            committed.offset,
            committed.leader_epoch,
            committed.metadata.as_str()
        ),
        (42, 2, "meta data")
    );
    assert!(c.read(|g| g.group("gone").is_none()));
    // The group comes back Stable, with its members and generation.
    let summary = c.read(|g| g.describe("g")).unwrap();
    assert_eq!(summary.state, GroupState::Stable);
    assert_eq!(summary.members.len(), 2);
    assert_eq!(c.run(|g| g.heartbeat("g", &member, None, gen, 200)).0, 0);
    assert!(summary.members.iter().all(|m| !m.assignment.is_empty()));
}

// ---------------------------------------------------------------- encoding

#[test]
fn responses_encode_for_every_advertised_version() {
    use crate::handlers::api_versions::advertised;
    use crate::handlers::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use weir_protocol::request::encode_response;

    let full_join = JoinResult {
        error: 0,
        generation: 3,
        protocol_type: Some("consumer".into()),
        protocol_name: Some("range".into()),
        leader: "m1".into(),
        member_id: "m1".into(),
        members: vec![super::group::JoinedMember {
            member_id: "m1".into(),
            group_instance_id: Some("i".into()),
            metadata: Bytes::from("md"),
        }],
        skip_assignment: true,
    };
    let error_join = JoinResult::error(ResponseError::MemberIdRequired.code(), "m9");
    let sync_full = SyncResult {
        error: 0,
        protocol_type: Some("consumer".into()),
        protocol_name: Some("range".into()),
        assignment: Bytes::from("a"),
    };
    let check = |key: ApiKey, body: &dyn Fn(i16) -> ResponseKind| {
        let (min, max) = advertised(key).unwrap_or_else(|| panic!("{key:?} not advertised"));
        for v in min..=max {
            encode_response(key, v, 1, &body(v)).unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
        }
    };
    check(ApiKey::JoinGroup, &|v| {
        ResponseKind::JoinGroup(join_group::response(full_join.clone(), v))
    });
    check(ApiKey::JoinGroup, &|v| {
        ResponseKind::JoinGroup(join_group::response(error_join.clone(), v))
    });
    check(ApiKey::SyncGroup, &|v| {
        ResponseKind::SyncGroup(sync_group::response(sync_full.clone(), v))
    });
    check(ApiKey::SyncGroup, &|v| {
        ResponseKind::SyncGroup(sync_group::response(SyncResult::error(27), v))
    });

    // The handlers that answer from the broker: a real broker in a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let args = crate::config::ServeArgs {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let config = crate::config::BrokerConfig::load(&args).unwrap();
    let broker = crate::state::Broker::open(config).unwrap();
    broker
        .create_topic("t", 2, -1, Default::default(), false)
        .unwrap();
    let (ids, gen) = broker
        .groups
        .run(|g| stable_group(g, "g", 2, crate::metadata::now_ms()))
        .0;
    broker.groups.run(|g| {
        let cp = CommitParams {
            group_id: "g".into(),
            generation: gen,
            member_id: ids[0].clone(),
            group_instance_id: None,
        };
        g.validate_commit(&cp, 0).unwrap();
        g.commit(
            "g",
            vec![OffsetToCommit {
                topic: "t".into(),
                partition: 0,
                offset: 9,
                leader_epoch: 4,
                metadata: Some("m".into()),
            }],
            0,
        );
    });
    let ctx = |key: ApiKey, v: i16| RequestContext {
        header: RequestHeader::default()
            .with_request_api_version(v)
            .with_client_id(Some(StrBytes::from_static_str("c"))),
        api_key: key,
        peer: "127.0.0.1:1".parse().unwrap(),
    };
    let gid = || GroupId(StrBytes::from_static_str("g"));
    check(ApiKey::Heartbeat, &|v| {
        let req = HeartbeatRequest::default()
            .with_group_id(gid())
            .with_member_id(StrBytes::from_string(ids[0].clone()))
            .with_generation_id(gen + 7);
        ResponseKind::Heartbeat(heartbeat::handle(&broker, &ctx(ApiKey::Heartbeat, v), req))
    });
    check(ApiKey::LeaveGroup, &|v| {
        let m = leave_group_request::MemberIdentity::default()
            .with_member_id(StrBytes::from_static_str("nobody"))
            .with_group_instance_id(if v >= 3 {
                Some(StrBytes::from_static_str("i"))
            } else {
                None
            });
        let req = LeaveGroupRequest::default()
            .with_group_id(gid())
            .with_member_id(StrBytes::from_static_str("nobody"))
            .with_members(vec![m]);
        ResponseKind::LeaveGroup(leave_group::handle(
            &broker,
            &ctx(ApiKey::LeaveGroup, v),
            req,
        ))
    });
    check(ApiKey::OffsetFetch, &|v| {
        let topics = vec![offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_indexes(vec![0, 1])];
        let groups = vec![offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(gid())
            .with_topics(None)];
        let req = OffsetFetchRequest::default()
            .with_group_id(gid())
            .with_topics(Some(topics))
            .with_groups(groups);
        let resp = offset_fetch::handle(&broker, &ctx(ApiKey::OffsetFetch, v), req);
        let (offset, meta) = if v >= 8 {
            let p = &resp.groups[0].topics[0].partitions[0];
            (p.committed_offset, p.metadata.clone())
        } else {
            let p = &resp.topics[0].partitions[0];
            (p.committed_offset, p.metadata.clone())
        };
        assert_eq!((offset, meta.as_deref()), (9, Some("m")), "v{v}");
        ResponseKind::OffsetFetch(resp)
    });
    check(ApiKey::DescribeGroups, &|v| {
        let req = DescribeGroupsRequest::default()
            .with_groups(vec![gid(), GroupId(StrBytes::from_static_str("nope"))]);
        let resp = describe_groups::handle(&broker, &ctx(ApiKey::DescribeGroups, v), req);
        assert_eq!(resp.groups[0].group_state.as_str(), "Stable");
        assert_eq!(resp.groups[0].members.len(), 2);
        ResponseKind::DescribeGroups(resp)
    });
    check(ApiKey::ListGroups, &|v| {
        let req = ListGroupsRequest::default()
            .with_states_filter(vec![StrBytes::from_static_str("stable")]);
        let resp = list_groups::handle(&broker, &ctx(ApiKey::ListGroups, v), req);
        assert_eq!(resp.groups.len(), 1);
        ResponseKind::ListGroups(resp)
    });
    // OffsetCommit / DeleteGroups / OffsetDelete answer asynchronously.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = broker.clone();
    check(ApiKey::OffsetCommit, &|v| {
        let p = offset_commit_request::OffsetCommitRequestPartition::default()
            .with_partition_index(1)
            .with_committed_offset(5);
        let t = offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![p.clone(), p.with_partition_index(77)]);
        let req = OffsetCommitRequest::default()
            .with_group_id(gid())
            .with_generation_id_or_member_epoch(gen)
            .with_member_id(StrBytes::from_string(ids[1].clone()))
            .with_topics(vec![t]);
        let resp = rt
            .block_on(offset_commit::handle(
                &b,
                &ctx(ApiKey::OffsetCommit, v),
                req,
            ))
            .unwrap();
        let ResponseKind::OffsetCommit(r) = &resp else {
            panic!()
        };
        let codes: Vec<i16> = r.topics[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(
            codes,
            vec![0, ResponseError::UnknownTopicOrPartition.code()]
        );
        resp
    });
    check(ApiKey::DeleteGroups, &|v| {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![gid()]);
        rt.block_on(delete_groups::handle(
            &b,
            &ctx(ApiKey::DeleteGroups, v),
            req,
        ))
        .unwrap()
    });
    check(ApiKey::OffsetDelete, &|v| {
        let t = offset_delete_request::OffsetDeleteRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![
                offset_delete_request::OffsetDeleteRequestPartition::default()
                    .with_partition_index(0),
            ]);
        let req = OffsetDeleteRequest::default()
            .with_group_id(gid())
            .with_topics(vec![t]);
        rt.block_on(offset_delete::handle(
            &b,
            &ctx(ApiKey::OffsetDelete, v),
            req,
        ))
        .unwrap()
    });
    broker.shutdown().unwrap();
}
