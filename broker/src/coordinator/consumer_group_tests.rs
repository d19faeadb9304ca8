//! Unit tests of the KIP-848 consumer group state machine (deterministic clock),
//! its persistence, and the encoding of its responses at every advertised version.

use super::consumer_group::{assign_range, assign_uniform, HeartbeatParams, HeartbeatResult, Tp};
use super::machine::{CommitParams, Config, Groups, JoinParams, Reply};
use super::GroupCoordinator;
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use uuid::Uuid;

type Topics = HashMap<String, (Uuid, i32)>;

fn topics(list: &[(&str, i32)]) -> Topics {
    list.iter()
        .enumerate()
        .map(|(i, (n, p))| (n.to_string(), (Uuid::from_u128(i as u128 + 1), *p)))
        .collect()
}

struct Hb<'a> {
    topics: &'a Topics,
    p: HeartbeatParams,
}

fn hb<'a>(topics: &'a Topics, member: &str, epoch: i32) -> Hb<'a> {
    Hb {
        topics,
        p: HeartbeatParams {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: if epoch == 0 { 60_000 } else { -1 },
            subscribed: (epoch == 0).then(|| vec!["t".to_string()]),
            owned: (epoch == 0).then(Vec::new),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            ..Default::default()
        },
    }
}

impl Hb<'_> {
    fn owned(mut self, parts: &[(&str, i32)]) -> Self {
        let mut by: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
        for (t, p) in parts {
            by.entry(self.topics[*t].0).or_default().push(*p);
        }
        self.p.owned = Some(by.into_iter().collect());
        self
    }
    fn subscribe(mut self, t: &[&str]) -> Self {
        self.p.subscribed = Some(t.iter().map(|s| s.to_string()).collect());
        self
    }
    fn instance(mut self, i: &str) -> Self {
        self.p.instance_id = Some(i.into());
        self
    }
    fn assignor(mut self, a: &str) -> Self {
        self.p.server_assignor = Some(a.into());
        self
    }
    fn send(self, g: &mut Groups, now: i64) -> HeartbeatResult {
        g.consumer_heartbeat(self.p, self.topics, now)
    }
}

/// The assignment in a response, by name.
fn parts(topics: &Topics, r: &HeartbeatResult) -> Option<BTreeSet<Tp>> {
    let a = r.assignment.as_ref()?;
    let mut out = BTreeSet::new();
    for (id, ps) in a {
        let name = topics.iter().find(|(_, (i, _))| i == id).unwrap().0.clone();
        out.extend(ps.iter().map(|p| (name.clone(), *p)));
    }
    Some(out)
}

fn as_owned(s: &BTreeSet<Tp>) -> Vec<(&str, i32)> {
    s.iter().map(|(t, p)| (t.as_str(), *p)).collect()
}

fn ok(r: &HeartbeatResult) {
    assert_eq!(r.error, 0, "{:?}", r.message);
}

#[test]
fn a_partition_moves_only_after_its_owner_revoked_it() {
    let t = topics(&[("t", 6)]);
    let mut g = Groups::new(Config::default());
    let a = hb(&t, "", 0).send(&mut g, 0);
    ok(&a);
    let a_id = a.member_id.clone().unwrap();
    assert_eq!(a.member_epoch, 1);
    assert_eq!(a.heartbeat_interval_ms, 5000);
    let a_parts = parts(&t, &a).unwrap();
    assert_eq!(a_parts.len(), 6);
    // B joins: its target is half of A's partitions, which A still owns.
    let b = hb(&t, "", 0).send(&mut g, 10);
    ok(&b);
    let b_id = b.member_id.clone().unwrap();
    assert_eq!(b.member_epoch, 2);
    assert_eq!(parts(&t, &b).unwrap().len(), 0);
    // A must revoke three; it keeps epoch 1 until it acknowledges.
    let a2 = hb(&t, &a_id, 1).send(&mut g, 20);
    ok(&a2);
    assert_eq!(a2.member_epoch, 1);
    let a_keep = parts(&t, &a2).unwrap();
    assert_eq!(a_keep.len(), 3);
    // B gets nothing while A still owns them (A reports nothing new).
    let b2 = hb(&t, &b_id, 2).send(&mut g, 30);
    ok(&b2);
    assert_eq!(b2.assignment, None);
    let a3 = hb(&t, &a_id, 1).send(&mut g, 35);
    assert_eq!((a3.member_epoch, a3.assignment.clone()), (1, None));
    // A acknowledges: it moves to epoch 2; B then gets the rest.
    let a4 = hb(&t, &a_id, 1).owned(&as_owned(&a_keep)).send(&mut g, 40);
    ok(&a4);
    assert_eq!(a4.member_epoch, 2);
    let b3 = hb(&t, &b_id, 2).send(&mut g, 50);
    ok(&b3);
    let b_parts = parts(&t, &b3).unwrap();
    assert_eq!(b_parts.len(), 3);
    assert!(b_parts.is_disjoint(&a_keep));
    let st = g.describe_consumer("g").unwrap();
    assert_eq!(st.state, "Stable");
    // A third member: 2 each, no overlap.
    let c = hb(&t, "", 0).send(&mut g, 60);
    let c_id = c.member_id.clone().unwrap();
    assert_eq!(c.member_epoch, 3);
    let mut owned: HashMap<String, BTreeSet<Tp>> = HashMap::from([
        (a_id.clone(), a_keep),
        (b_id.clone(), b_parts),
        (c_id.clone(), BTreeSet::new()),
    ]);
    let mut epochs: HashMap<String, i32> =
        HashMap::from([(a_id.clone(), 2), (b_id.clone(), 2), (c_id.clone(), 3)]);
    // Members heartbeat in turn, acknowledging what they were told, until stable.
    for round in 0..6 {
        for id in [&a_id, &b_id, &c_id] {
            let mine = owned[id].clone();
            let r = hb(&t, id, epochs[id])
                .owned(&as_owned(&mine))
                .send(&mut g, 100 + round * 10);
            ok(&r);
            epochs.insert(id.clone(), r.member_epoch);
            if let Some(p) = parts(&t, &r) {
                // Never given a partition another member still owns.
                for (other, theirs) in &owned {
                    if other != id {
                        assert!(
                            p.difference(&mine).all(|tp| !theirs.contains(tp)),
                            "round {round}"
                        );
                    }
                }
                owned.insert(id.clone(), p);
            }
        }
    }
    let all: BTreeSet<Tp> = owned.values().flatten().cloned().collect();
    assert_eq!(all.len(), 6);
    assert!(owned.values().all(|s| s.len() == 2), "{owned:?}");
    assert!(epochs.values().all(|e| *e == 3));
    assert_eq!(g.describe_consumer("g").unwrap().state, "Stable");
    // C leaves: the others share everything.
    let l = hb(&t, &c_id, -1).send(&mut g, 200);
    assert_eq!((l.error, l.member_epoch), (0, -1));
    let ra = hb(&t, &a_id, 3).send(&mut g, 210);
    assert_eq!(ra.member_epoch, 4);
    let rb = hb(&t, &b_id, 3).send(&mut g, 210);
    assert_eq!(rb.member_epoch, 4);
    let union: BTreeSet<Tp> = parts(&t, &ra)
        .unwrap()
        .union(&parts(&t, &rb).unwrap())
        .cloned()
        .collect();
    assert_eq!(union.len(), 6);
}

#[test]
fn expired_and_fenced_members() {
    let t = topics(&[("t", 4)]);
    let mut g = Groups::new(Config::default());
    let a = hb(&t, "", 0).send(&mut g, 0);
    let a_id = a.member_id.unwrap();
    let b = hb(&t, "", 0).send(&mut g, 0);
    let b_id = b.member_id.unwrap();
    // Wrong epochs and unknown members.
    let r = hb(&t, &a_id, 7).send(&mut g, 1);
    assert_eq!(r.error, ResponseError::FencedMemberEpoch.code());
    let r = hb(&t, "nobody", 1).send(&mut g, 1);
    assert_eq!(r.error, ResponseError::UnknownMemberId.code());
    let r = hb(&t, &a_id, 0).assignor("nope").send(&mut g, 1);
    assert_eq!(r.error, ResponseError::UnsupportedAssignor.code());
    // B stays silent: after the session timeout it is gone and A gets all.
    g.tick(44_000);
    assert_eq!(g.describe_consumer("g").unwrap().members.len(), 2);
    let r = hb(&t, &a_id, 1).send(&mut g, 44_000);
    ok(&r);
    g.tick(45_001);
    assert_eq!(g.describe_consumer("g").unwrap().members.len(), 1);
    let r = hb(&t, &a_id, r.member_epoch)
        .owned(&[])
        .send(&mut g, 45_002);
    ok(&r);
    assert_eq!(parts(&t, &r).unwrap().len(), 4);
    let r = hb(&t, &b_id, 2).send(&mut g, 45_003);
    assert_eq!(r.error, ResponseError::UnknownMemberId.code());
    // A fenced member rejoins with its id (epoch 0) and gets its partitions back.
    let r = hb(&t, &a_id, 0).send(&mut g, 45_004);
    ok(&r);
    assert_eq!(parts(&t, &r).unwrap().len(), 4);
    // A member that does not revoke within its rebalance timeout is fenced.
    let c = hb(&t, "", 0).send(&mut g, 50_000);
    let c_id = c.member_id.unwrap();
    let r = hb(&t, &a_id, r.member_epoch).send(&mut g, 50_001);
    assert_eq!(parts(&t, &r).unwrap().len(), 2);
    for now in [60_000, 100_000] {
        let _ = hb(&t, &c_id, c.member_epoch).send(&mut g, now);
        g.tick(now);
    }
    g.tick(111_000);
    let members = g.describe_consumer("g").unwrap().members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].member.member_id, c_id);
}

#[test]
fn static_members_leave_temporarily_and_are_replaced() {
    let t = topics(&[("t", 4)]);
    let mut g = Groups::new(Config::default());
    let s1 = hb(&t, "", 0).instance("i1").send(&mut g, 0);
    let s1_id = s1.member_id.clone().unwrap();
    let s2 = hb(&t, "", 0).instance("i2").send(&mut g, 0);
    ok(&s2);
    let r = hb(&t, &s1_id, 1).instance("i1").send(&mut g, 1);
    let r = hb(&t, &s1_id, 1)
        .instance("i1")
        .owned(&as_owned(&parts(&t, &r).unwrap()))
        .send(&mut g, 2);
    assert_eq!(r.member_epoch, 2);
    let s1_parts = g
        .describe_consumer("g")
        .unwrap()
        .members
        .into_iter()
        .find(|m| m.member.member_id == s1_id)
        .unwrap()
        .member
        .assigned;
    // Another process with the same instance id while s1 is active.
    let dup = hb(&t, "", 0).instance("i1").send(&mut g, 3);
    assert_eq!(dup.error, ResponseError::UnreleasedInstanceId.code());
    // s1 leaves temporarily: no rebalance, its partitions stay reserved.
    let epoch_before = g.describe_consumer("g").unwrap().epoch;
    let l = hb(&t, &s1_id, -2).instance("i1").send(&mut g, 4);
    assert_eq!((l.error, l.member_epoch), (0, -2));
    assert_eq!(g.describe_consumer("g").unwrap().epoch, epoch_before);
    // Its replacement takes over the assignment and epoch.
    let n = hb(&t, "", 0).instance("i1").send(&mut g, 5);
    ok(&n);
    assert_ne!(n.member_id.as_deref(), Some(s1_id.as_str()));
    assert_eq!(n.member_epoch, 2);
    assert_eq!(parts(&t, &n).unwrap(), s1_parts);
    assert_eq!(g.describe_consumer("g").unwrap().epoch, epoch_before);
    // The old member id is fenced.
    let old = hb(&t, &s1_id, 2).instance("i1").send(&mut g, 6);
    assert_eq!(old.error, ResponseError::FencedInstanceId.code());
}

#[test]
fn subscription_and_partition_count_changes_rebalance() {
    let mut t = topics(&[("t", 2), ("u", 2)]);
    let mut g = Groups::new(Config::default());
    let a = hb(&t, "", 0).send(&mut g, 0);
    let a_id = a.member_id.clone().unwrap();
    assert_eq!(parts(&t, &a).unwrap().len(), 2);
    let r = hb(&t, &a_id, 1).subscribe(&["t", "u"]).send(&mut g, 1);
    assert_eq!((r.member_epoch, parts(&t, &r).unwrap().len()), (2, 4));
    t.get_mut("u").unwrap().1 = 5;
    let r = hb(&t, &a_id, 2).send(&mut g, 2);
    assert_eq!((r.member_epoch, parts(&t, &r).unwrap().len()), (3, 7));
    // Unchanged: no assignment in the answer.
    let r = hb(&t, &a_id, 3).send(&mut g, 3);
    assert_eq!((r.member_epoch, r.assignment), (3, None));
    // A full request gets it again.
    let r = hb(&t, &a_id, 3)
        .subscribe(&["t", "u"])
        .owned(&[])
        .send(&mut g, 4);
    let mut full = hb(&t, &a_id, 3).subscribe(&["t", "u"]);
    full.p.rebalance_timeout_ms = 1000;
    let r2 = full
        .owned(&as_owned(&parts(&t, &r).unwrap_or_default()))
        .send(&mut g, 5);
    assert_eq!(parts(&t, &r2).unwrap().len(), 7);
}

#[test]
fn assignors() {
    let members = |ids: &[&str], t: &[&str]| -> Vec<(String, Vec<String>)> {
        ids.iter()
            .map(|i| (i.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect()
    };
    let counts = BTreeMap::from([("t".to_string(), 3), ("u".to_string(), 4)]);
    let r = assign_range(&members(&["b", "a"], &["t"]), &counts);
    assert_eq!(r["a"], BTreeSet::from([("t".into(), 0), ("t".into(), 1)]));
    assert_eq!(r["b"], BTreeSet::from([("t".into(), 2)]));
    let m3 = members(&["a", "b", "c"], &["t", "u"]);
    let u = assign_uniform(&m3, &counts, &BTreeMap::new());
    let sizes: Vec<usize> = u.values().map(|s| s.len()).collect();
    assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
    assert_eq!(u.values().map(|s| s.len()).sum::<usize>(), 7);
    // Sticky: a fourth member takes partitions without moving the others'.
    let m4 = members(&["a", "b", "c", "d"], &["t", "u"]);
    let u4 = assign_uniform(&m4, &counts, &u);
    for id in ["a", "b", "c"] {
        assert!(u4[id].is_subset(&u[id]), "{id}");
    }
    assert!(u4["d"].len() >= 1);
    // Heterogeneous subscriptions: only subscribers get a topic's partitions.
    let mixed = vec![
        ("a".to_string(), vec!["t".to_string()]),
        ("b".to_string(), vec!["t".to_string(), "u".to_string()]),
    ];
    let h = assign_uniform(&mixed, &counts, &BTreeMap::new());
    assert!(h["a"].iter().all(|(t, _)| t == "t"));
    assert_eq!(h["a"].len() + h["b"].len(), 7);
    // The group picks the assignor its members name.
    let t = topics(&[("t", 3)]);
    let mut g = Groups::new(Config::default());
    let a = hb(&t, "", 0).assignor("range").send(&mut g, 0);
    ok(&a);
    assert_eq!(g.describe_consumer("g").unwrap().assignor, "range");
}

#[test]
fn protocols_do_not_mix_and_commits_check_the_member_epoch() {
    let t = topics(&[("t", 2)]);
    let mut g = Groups::new(Config::default());
    let a = hb(&t, "", 0).send(&mut g, 0);
    let a_id = a.member_id.unwrap();
    let join = JoinParams {
        group_id: "g".into(),
        member_id: String::new(),
        group_instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"x"))],
        require_known_member_id: true,
    };
    match g.join(join.clone(), 1) {
        Reply::Now(r) => assert_eq!(r.error, ResponseError::InconsistentGroupProtocol.code()),
        Reply::Later(_) => panic!("classic join of a consumer group must fail"),
    }
    // Epoch checks of offset commits and fetches.
    let commit = |member: &str, epoch: i32| CommitParams {
        group_id: "g".into(),
        generation: epoch,
        member_id: member.into(),
        group_instance_id: None,
    };
    assert_eq!(g.validate_commit(&commit(&a_id, 1), 2), Ok(()));
    assert_eq!(
        g.validate_commit(&commit(&a_id, 0), 2),
        Err(ResponseError::StaleMemberEpoch)
    );
    assert_eq!(
        g.validate_commit(&commit(&a_id, 5), 2),
        Err(ResponseError::FencedMemberEpoch)
    );
    assert_eq!(
        g.validate_commit(&commit("x", 1), 2),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        g.validate_commit(&commit("", -1), 2),
        Err(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        g.validate_offset_fetch("g", Some(&a_id), 0),
        Err(ResponseError::StaleMemberEpoch)
    );
    assert_eq!(g.validate_offset_fetch("g", Some(&a_id), 1), Ok(()));
    assert_eq!(g.validate_offset_fetch("g", None, -1), Ok(()));
    assert_eq!(g.delete_group("g"), ResponseError::NonEmptyGroup.code());
    let listed = g.list();
    assert_eq!(
        (listed[0].group_type, listed[0].state_name),
        ("consumer", "Stable")
    );
    // Once empty, the group may become classic again (and the other way round).
    hb(&t, &a_id, -1).send(&mut g, 3);
    assert_eq!(g.validate_commit(&commit("", -1), 4), Ok(()));
    assert_eq!(g.list()[0].state_name, "Empty");
    match g.join(join, 5) {
        Reply::Now(r) => assert_eq!(r.error, ResponseError::MemberIdRequired.code()),
        Reply::Later(_) => panic!("expected MEMBER_ID_REQUIRED"),
    }
    assert!(g.group("g").unwrap().consumer.is_none());
    let mut classic = Groups::new(Config::default());
    let mut join2 = JoinParams {
        group_id: "c".into(),
        member_id: String::new(),
        group_instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"x"))],
        require_known_member_id: false,
    };
    join2.group_id = "c".into();
    let _ = classic.join(join2, 0);
    let mut p = hb(&t, "", 0);
    p.p.group_id = "c".into();
    assert_eq!(
        p.send(&mut classic, 1).error,
        ResponseError::GroupIdNotFound.code()
    );
}

#[test]
fn consumer_groups_survive_reopen() {
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
    let t = topics(&[("t", 4)]);
    let (a_id, epoch, assigned) = {
        let c = GroupCoordinator::new(Config::default());
        c.open(vec![open_log()], 0).unwrap();
        let (a, durable) = c.run(|g| hb(&t, "", 0).instance("i").send(g, 0));
        assert!(!durable.is_empty());
        let (b, _) = c.run(|g| hb(&t, "", 0).send(g, 0));
        let (b2, _) = c.run(|g| hb(&t, b.member_id.as_deref().unwrap(), 2).send(g, 1));
        let _ = b2;
        let a_id = a.member_id.unwrap();
        let (r, _) = c.run(|g| hb(&t, &a_id, 1).instance("i").send(g, 1));
        let kept = parts(&t, &r).unwrap();
        let (r, _) = c.run(|g| {
            hb(&t, &a_id, 1)
                .instance("i")
                .owned(&as_owned(&kept))
                .send(g, 2)
        });
        (a_id, r.member_epoch, kept)
    };
    let c = GroupCoordinator::new(Config::default());
    c.open(vec![open_log()], 100).unwrap();
    let d = c.read(|g| g.describe_consumer("g")).unwrap();
    assert_eq!(d.members.len(), 2);
    assert_eq!(d.epoch, 2);
    let a = d
        .members
        .iter()
        .find(|m| m.member.member_id == a_id)
        .unwrap();
    assert_eq!((a.member.epoch, &a.member.assigned), (epoch, &assigned));
    assert_eq!(a.member.instance_id.as_deref(), Some("i"));
    // The member carries on with its epoch.
    let (r, _) = c.run(|g| hb(&t, &a_id, epoch).instance("i").send(g, 200));
    ok(&r);
    assert_eq!(r.member_epoch, epoch);
    // Sessions restart at load: nobody expires before load + timeout.
    c.run(|g| g.tick(100 + 44_000));
    assert_eq!(
        c.read(|g| g.describe_consumer("g")).unwrap().members.len(),
        2
    );
}

#[test]
fn consumer_group_responses_encode_for_every_advertised_version() {
    use crate::handlers::api_versions::advertised;
    use crate::handlers::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;
    use weir_protocol::request::encode_response;

    let check = |key: ApiKey, body: &dyn Fn(i16) -> ResponseKind| {
        let (min, max) = advertised(key).unwrap_or_else(|| panic!("{key:?} not advertised"));
        for v in min..=max {
            encode_response(key, v, 1, &body(v)).unwrap_or_else(|e| panic!("{key:?} v{v}: {e}"));
        }
    };
    check(ApiKey::ConsumerGroupHeartbeat, &|_| {
        ResponseKind::ConsumerGroupHeartbeat(consumer_group_heartbeat::response(HeartbeatResult {
            error: 0,
            message: None,
            member_id: Some("m".into()),
            member_epoch: 3,
            heartbeat_interval_ms: 5000,
            assignment: Some(vec![(Uuid::from_u128(7), vec![0, 1])]),
        }))
    });
    check(ApiKey::ConsumerGroupHeartbeat, &|_| {
        ResponseKind::ConsumerGroupHeartbeat(consumer_group_heartbeat::response(HeartbeatResult {
            error: ResponseError::FencedMemberEpoch.code(),
            message: Some("fenced".into()),
            ..Default::default()
        }))
    });

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
    let ctx = |key: ApiKey, v: i16| RequestContext {
        header: RequestHeader::default()
            .with_request_api_version(v)
            .with_client_id(Some(StrBytes::from_static_str("c"))),
        api_key: key,
        peer: "127.0.0.1:1".parse().unwrap(),
    };
    let gid = || GroupId(StrBytes::from_static_str("g"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let b = broker.clone();
    let mut member = String::new();
    for v in 0..=1 {
        let req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(gid())
            .with_member_id(StrBytes::from_string(if v == 1 {
                "client-made-id".into()
            } else {
                String::new()
            }))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_static_str("t"))]))
            .with_topic_partitions(Some(vec![]));
        let resp = rt
            .block_on(consumer_group_heartbeat::handle(
                &b,
                &ctx(ApiKey::ConsumerGroupHeartbeat, v),
                req,
            ))
            .unwrap();
        let ResponseKind::ConsumerGroupHeartbeat(r) = &resp else {
            panic!()
        };
        assert_eq!(r.error_code, 0, "{:?}", r.error_message);
        if v == 1 {
            assert_eq!(r.member_id.as_deref(), Some("client-made-id"));
        } else {
            member = r.member_id.as_deref().unwrap().to_string();
        }
        encode_response(ApiKey::ConsumerGroupHeartbeat, v, 1, &resp).unwrap();
    }
    let _ = member;
    check(ApiKey::ConsumerGroupDescribe, &|v| {
        let req = ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![gid(), GroupId(StrBytes::from_static_str("nope"))]);
        let resp =
            consumer_group_describe::handle(&broker, &ctx(ApiKey::ConsumerGroupDescribe, v), req);
        assert_eq!(resp.groups[0].members.len(), 2);
        assert_eq!(
            resp.groups[1].error_code,
            ResponseError::GroupIdNotFound.code()
        );
        ResponseKind::ConsumerGroupDescribe(resp)
    });
    check(ApiKey::ListGroups, &|v| {
        let req = ListGroupsRequest::default();
        let resp = list_groups::handle(&broker, &ctx(ApiKey::ListGroups, v), req);
        assert_eq!(resp.groups.len(), 1);
        if v >= 5 {
            assert_eq!(resp.groups[0].group_type.as_str(), "consumer");
        }
        ResponseKind::ListGroups(resp)
    });
    check(ApiKey::DescribeGroups, &|v| {
        let req = DescribeGroupsRequest::default().with_groups(vec![gid()]);
        let resp = describe_groups::handle(&broker, &ctx(ApiKey::DescribeGroups, v), req);
        assert_eq!(resp.groups[0].protocol_type.as_str(), "consumer");
        assert_eq!(resp.groups[0].members.len(), 2);
        ResponseKind::DescribeGroups(resp)
    });
    check(ApiKey::OffsetFetch, &|v| {
        let groups = vec![offset_fetch_request::OffsetFetchRequestGroup::default()
            .with_group_id(gid())
            .with_member_id(if v >= 9 {
                Some(StrBytes::from_static_str("client-made-id"))
            } else {
                None
            })
            .with_member_epoch(if v >= 9 { 0 } else { -1 })
            .with_topics(None)];
        let req = OffsetFetchRequest::default()
            .with_group_id(gid())
            .with_groups(groups);
        let resp = offset_fetch::handle(&broker, &ctx(ApiKey::OffsetFetch, v), req);
        if v >= 9 {
            assert_eq!(
                resp.groups[0].error_code,
                ResponseError::StaleMemberEpoch.code()
            );
        }
        ResponseKind::OffsetFetch(resp)
    });
    broker.shutdown().unwrap();
}
