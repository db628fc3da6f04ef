//! Table tests for every slot rule of patroni.md §1 (and Keel's additions), readiness transitions, and property
//! tests for the drop safety rules.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::copycheck::{CopyFailure, CopyProblem, Position, Rebuild};
use super::readiness::*;
use super::*;
use crate::dynconfig::DynamicConfig;
use crate::lsn::Lsn;
use crate::time::Millis;
use crate::view::{ClusterView, RawEntry, Tags};

fn cfg(v: Value) -> SlotsConfig {
    SlotsConfig::from_dynamic(&DynamicConfig::from_value(v))
}

fn view(config: &Value, members: &[(&str, Value)], leader: Option<&str>, status: Value) -> ClusterView {
    let mut e = vec![("config".to_string(), config.to_string()), ("status".to_string(), status.to_string())];
    if let Some(l) = leader {
        e.push(("leader".into(), l.into()));
    }
    for (n, m) in members {
        e.push((format!("members/{n}"), m.to_string()));
    }
    ClusterView::from_entries(e.into_iter().enumerate().map(|(i, (key, value))| RawEntry {
        key,
        value,
        mod_revision: i as i64 + 1,
        lease: 0,
    }))
}

fn desired_for(v: &ClusterView, c: &SlotsConfig, name: &str, role: NodeRole, pg: u32) -> DesiredSlots {
    let tags = v.members.get(name).map(|m| m.tags.clone()).unwrap_or_default();
    desired_slots(&DesiredInput { name, role, tags: &tags, pg_major: pg, view: v, config: c })
}

fn phys(lsn: Option<u64>, active: bool) -> (SlotKind, Option<Lsn>, bool) {
    (SlotKind::Physical, lsn.map(Lsn), active)
}

fn summary(d: &DesiredSlots) -> BTreeMap<String, (SlotKind, Option<Lsn>, bool)> {
    d.slots.iter().map(|(n, s)| (n.clone(), (s.kind.clone(), s.lsn, s.expected_active))).collect()
}

fn logical(db: &str, plugin: &str) -> SlotKind {
    SlotKind::Logical { database: db.into(), plugin: plugin.into() }
}

// ---------------------------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn permanent_slot_validation_rules() {
    let c = cfg(json!({"slots": {
        "ph_null": null, "ph_zero": 0, "ph_empty": {}, "ph_typed": {"type": "physical", "lsn": 5},
        "lg": {"database": "db", "plugin": "pgoutput", "lsn": 100},
        "lg_typed": {"type": "logical", "database": "db", "plugin": "p"},
        "half": {"database": "db"},
        "pg-1": null, "Bad": null, "bad_logical": {"type": "logical", "database": "db"},
        "bad_type": {"type": "foo"}, "bad_scalar": 1, "bad_ct": {"cluster_type": "weird"},
        "ph_std": {"cluster_type": "standby"}, "ph_pri": {"cluster_type": "primary"}
    }}));
    let names: Vec<&str> = c.permanent.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["bad_ct", "half", "lg", "lg_typed", "ph_empty", "ph_null", "ph_pri", "ph_std", "ph_typed", "ph_zero"]
    );
    assert_eq!(c.permanent["lg"].kind, logical("db", "pgoutput"));
    assert_eq!(c.permanent["half"].kind, SlotKind::Physical, "type inferred physical without plugin");
    assert_eq!(c.permanent["ph_std"].cluster_type, config::ClusterType::Standby);
    assert!(c.notes.contains(&SlotNote::InvalidName { name: "pg-1".into() }));
    assert!(c.notes.contains(&SlotNote::InvalidName { name: "Bad".into() }));
    let bad: BTreeSet<&str> = c
        .notes
        .iter()
        .filter_map(|n| match n {
            SlotNote::BadValue { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(bad, BTreeSet::from(["bad_logical", "bad_type", "bad_scalar"]));
    assert!(c.notes.iter().any(|n| matches!(n, SlotNote::BadClusterType { .. })));
    assert!(config::valid_slot_name(&"a".repeat(63)) && !config::valid_slot_name(&"a".repeat(64)));
    assert!(!config::valid_slot_name(""));
}

#[test]
fn legacy_keys_and_non_map_slots() {
    assert!(cfg(json!({"permanent_replication_slots": {"a": null}})).permanent.contains_key("a"));
    assert!(cfg(json!({"permanent_slots": {"b": null}})).permanent.contains_key("b"));
    let both = cfg(json!({"slots": {"x": null}, "permanent_slots": {"y": null}}));
    assert!(both.permanent.contains_key("x") && !both.permanent.contains_key("y"));
    let c = cfg(json!({"slots": [1]}));
    assert!(c.permanent.is_empty());
    assert_eq!(c.notes, vec![SlotNote::SlotsNotAMap { key: "slots".into() }]);
}

#[test]
fn ignore_slots_matchers_any_subset() {
    let c = cfg(json!({"ignore_slots": [
        {"name": "u0", "database": "d", "plugin": "p", "type": "logical"},
        {"name": "u1", "database": "d", "plugin": "p"},
        {"name": "u2", "database": "d"},
        {"name": "u3"},
        {"type": "physical", "name": "ph"},
        "garbage"
    ]}));
    assert_eq!(c.ignore.len(), 5);
    assert_eq!(c.notes.len(), 1);
    for n in ["u0", "u1", "u2", "u3"] {
        assert!(c.is_ignored(n, "logical", Some("d"), Some("p")), "{n}");
    }
    assert!(!c.is_ignored("u0", "logical", Some("d"), Some("other")));
    assert!(!c.is_ignored("u2", "logical", Some("other"), Some("p")));
    // A matcher with a database never matches a physical slot.
    assert!(!c.is_ignored("u2", "physical", None, None));
    assert!(c.is_ignored("u3", "physical", None, None));
    assert!(c.is_ignored("ph", "physical", None, None) && !c.is_ignored("ph", "logical", Some("d"), Some("p")));
    assert!(!c.is_ignored("dummy", "logical", Some("d"), Some("p")));
}

#[test]
fn keel_options() {
    assert_eq!(cfg(json!({})).readiness, FailoverSlotReadiness::Prefer);
    assert_eq!(cfg(json!({"failover_slot_readiness": "STRICT"})).readiness, FailoverSlotReadiness::Strict);
    assert_eq!(cfg(json!({"failover_slot_readiness": "off"})).readiness, FailoverSlotReadiness::Off);
    let bad = cfg(json!({"failover_slot_readiness": "maybe"}));
    assert_eq!(bad.readiness, FailoverSlotReadiness::Prefer);
    assert!(matches!(bad.notes[..], [SlotNote::BadReadinessPolicy { .. }]));
    assert!(cfg(json!({"failover_slot_recreate": true})).recreate_missing_logical);
    let bad = cfg(json!({"failover_slot_recreate": [1]}));
    assert!(!bad.recreate_missing_logical && matches!(bad.notes[..], [SlotNote::BadRecreateFlag { .. }]));
    for n in &bad.notes {
        assert!(!n.to_string().is_empty());
    }
}

#[test]
fn failover_slots_mode_per_major() {
    use SlotSyncMethod::{Copy, Native};
    let table = [
        (json!({}), [(15, Copy), (16, Copy), (17, Native), (18, Native)]),
        (json!({"failover_slots": "auto"}), [(15, Copy), (16, Copy), (17, Native), (18, Native)]),
        (json!({"failover_slots": "Native"}), [(15, Copy), (16, Copy), (17, Native), (18, Native)]),
        (json!({"failover_slots": "copy"}), [(15, Copy), (16, Copy), (17, Copy), (18, Copy)]),
    ];
    for (doc, want) in table {
        let c = cfg(doc.clone());
        assert!(c.notes.is_empty(), "{doc}: {:?}", c.notes);
        for (major, method) in want {
            assert_eq!(c.sync_method(major), method, "{doc} on {major}");
        }
    }
    let native = cfg(json!({"failover_slots": "native"}));
    assert!(matches!(native.notes_for_major(16)[..], [SlotNote::NativeNeedsPg17 { major: 16 }]));
    assert!(native.notes_for_major(17).is_empty() && cfg(json!({})).notes_for_major(15).is_empty());
    let bad = cfg(json!({"failover_slots": true}));
    assert_eq!(bad.failover_slots, FailoverSlotsMode::Auto);
    assert!(matches!(bad.notes[..], [SlotNote::BadFailoverSlotsMode { .. }]));
    assert!(bad.notes[0].to_string().contains("auto, native or copy"));
}

// ---------------------------------------------------------------------------------------------------------------
// Desired slots.

fn example() -> (ClusterView, SlotsConfig) {
    let config = json!({"member_slots_ttl": 1800, "slots": {
        "ph_any": null, "ph_standby": {"type": "physical", "cluster_type": "standby"},
        "ph_primary": {"type": "physical", "cluster_type": "primary"},
        "lg": {"type": "logical", "database": "postgres", "plugin": "test_decoding"},
        "pg-1": null, "Bad-Name": null,
        "node_b": {"type": "logical", "database": "postgres", "plugin": "test_decoding"}
    }});
    let members = [
        ("node-a", json!({"role": "primary", "state": "running", "xlog_location": 1000})),
        ("node_b", json!({"role": "replica", "state": "running", "xlog_location": 900})),
        (
            "node.c",
            json!({"role": "replica", "state": "running", "xlog_location": 800,
                          "tags": {"replicatefrom": "node_b"}}),
        ),
        ("node-d", json!({"role": "replica", "state": "running", "tags": {"nofailover": true}})),
    ];
    let status = json!({"optime": 1000, "slots": {"ph_any": 990, "lg": 950, "node_b": 900, "node_a": 1000},
                        "retain_slots": ["node_b", "node_c", "gone_node"]});
    let v = view(&config, &members, Some("node-a"), status);
    let c = SlotsConfig::from_dynamic(&v.dynamic_config());
    (v, c)
}

/// patroni.md §1.11, with Keel's deliberate difference: `cluster_type: standby` slots are not desired.
#[test]
fn worked_example_primary() {
    let (v, c) = example();
    let d = desired_for(&v, &c, "node-a", NodeRole::Primary, 16);
    let want: BTreeMap<String, _> = [
        ("gone_node", phys(None, false)),
        ("lg", (logical("postgres", "test_decoding"), Some(Lsn(950)), false)),
        ("node_b", phys(Some(900), true)),
        ("node_c", phys(Some(800), false)),
        ("node_d", phys(None, true)),
        ("ph_any", phys(Some(990), true)),
        ("ph_primary", phys(None, true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(summary(&d), want);
    assert_eq!(d.slots["gone_node"].origin, SlotOrigin::Retained);
    assert!(d.notes.contains(&SlotNote::LogicalConflictsWithMember { name: "node_b".into() }));
    assert!(c.notes.contains(&SlotNote::InvalidName { name: "pg-1".into() }));
    assert!(c.notes.contains(&SlotNote::InvalidName { name: "Bad-Name".into() }));
}

#[test]
fn worked_example_replica_and_nofailover() {
    let (v, c) = example();
    let d = desired_for(&v, &c, "node_b", NodeRole::Replica, 16);
    let want: BTreeMap<String, _> = [
        ("gone_node", phys(None, false)),
        ("lg", (logical("postgres", "test_decoding"), Some(Lsn(950)), false)),
        // The logical slot named after node_b is accepted on node_b itself (it has no member slot for itself).
        ("node_b", (logical("postgres", "test_decoding"), Some(Lsn(900)), false)),
        ("node_a", phys(Some(1000), false)),
        ("node_c", phys(Some(800), true)),
        ("node_d", phys(None, false)),
        ("ph_any", phys(Some(990), false)),
        ("ph_primary", phys(None, false)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(summary(&d), want);
    // On node.c the logical node_b conflicts with node_b's member slot.
    let dc = desired_for(&v, &c, "node.c", NodeRole::Replica, 16);
    assert_eq!(dc.slots["node_b"].kind, SlotKind::Physical);
    assert!(dc.notes.contains(&SlotNote::LogicalConflictsWithMember { name: "node_b".into() }));
    assert!(desired_for(&v, &c, "node-d", NodeRole::Replica, 16).slots.is_empty());
    assert_eq!(slot_name_on_primary(&v, "node.c", &v.members["node.c"].tags).as_deref(), Some("node_b"));
    let hsf = |n: &str| {
        let tags = v.members[n].tags.clone();
        enforce_hot_standby_feedback(&DesiredInput {
            name: n,
            role: NodeRole::Replica,
            tags: &tags,
            pg_major: 16,
            view: &v,
            config: &c,
        })
    };
    assert!(hsf("node_b"));
    assert!(!hsf("node-d"));
}

#[test]
fn hot_standby_feedback_for_a_cascade_without_own_logical_slots() {
    // n2 is nofailover (no permanent slots of its own) but n3 cascades from it and keeps logical slots.
    let config = json!({"slots": {"lg": {"database": "db", "plugin": "p"}}});
    let members = [
        ("n1", json!({"role": "primary"})),
        ("n2", json!({"tags": {"nofailover": true}})),
        ("n3", json!({"tags": {"replicatefrom": "n2"}})),
    ];
    let v = view(&config, &members, Some("n1"), json!({"optime": 1}));
    let c = SlotsConfig::from_dynamic(&v.dynamic_config());
    let tags = v.members["n2"].tags.clone();
    let inp = DesiredInput { name: "n2", role: NodeRole::Replica, tags: &tags, pg_major: 16, view: &v, config: &c };
    assert!(desired_slots(&inp).logical_names().next().is_none());
    assert!(enforce_hot_standby_feedback(&inp));
    let no_logical = cfg(json!({}));
    assert!(!enforce_hot_standby_feedback(&DesiredInput { config: &no_logical, ..inp }));
}

#[test]
fn mode_b_when_ttl_zero_or_pg10() {
    let members = [
        ("n1", json!({"role": "primary"})),
        ("n2", json!({})),
        ("n3", json!({"tags": {"replicatefrom": "n2"}, "xlog_location": 70})),
        ("n4", json!({"tags": {"replicatefrom": "gone"}})),
    ];
    for (ttl, pg) in [(0, 16), (1800, 10)] {
        let config = json!({"member_slots_ttl": ttl});
        let v = view(&config, &members, Some("n1"), json!({"optime": 100, "slots": {"n2": 90}}));
        let c = SlotsConfig::from_dynamic(&v.dynamic_config());
        let p = desired_for(&v, &c, "n1", NodeRole::Primary, pg);
        assert_eq!(p.slots.keys().collect::<Vec<_>>(), ["n2", "n4"], "ttl={ttl} pg={pg}");
        let r = desired_for(&v, &c, "n2", NodeRole::Replica, pg);
        assert_eq!(summary(&r), BTreeMap::from([("n3".to_string(), phys(Some(70), true))]));
    }
}

#[test]
fn nostream_use_slots_and_nofailover() {
    let members = [("n1", json!({"role": "primary"})), ("n2", json!({"tags": {"nostream": true}})), ("n3", json!({}))];
    let config = json!({"slots": {"lg": {"database": "d", "plugin": "p"}, "ph": null}});
    let v = view(&config, &members, Some("n1"), json!({"optime": 1}));
    let c = SlotsConfig::from_dynamic(&v.dynamic_config());
    let p = desired_for(&v, &c, "n1", NodeRole::Primary, 16);
    assert_eq!(p.slots.keys().collect::<Vec<_>>(), ["lg", "n3", "ph"], "no slot for the nostream member");
    // The nostream node itself gets only permanent physical slots (its feedback does not reach the primary).
    let s = desired_for(&v, &c, "n2", NodeRole::Replica, 16);
    assert_eq!(s.slots.keys().collect::<Vec<_>>(), ["n1", "n3", "ph"]);
    // use_slots: false turns everything off.
    let off = json!({"postgresql": {"use_slots": false}, "slots": {"ph": null}});
    let v2 = view(&off, &members, Some("n1"), json!({"optime": 1, "retain_slots": ["x"]}));
    let c2 = SlotsConfig::from_dynamic(&v2.dynamic_config());
    assert!(desired_for(&v2, &c2, "n1", NodeRole::Primary, 16).slots.is_empty());
}

#[test]
fn permanent_physical_named_after_member() {
    // member_slots_ttl 0 (Mode B): n2 is a member; slots: {n2: null} keeps its slot even when it is gone.
    let config = json!({"member_slots_ttl": 0, "slots": {"n2": null}});
    let members = [("n1", json!({"role": "primary"})), ("n2", json!({}))];
    let v = view(&config, &members, Some("n1"), json!({"optime": 100, "slots": {"n2": 80}}));
    let c = SlotsConfig::from_dynamic(&v.dynamic_config());
    // On n2 itself: never for ourselves.
    let tags = Tags::default();
    let on_n2 = DesiredInput { name: "n2", role: NodeRole::Replica, tags: &tags, pg_major: 16, view: &v, config: &c };
    assert!(desired_slots(&on_n2).slots.is_empty());
    // The seed fix: has_permanent_slots is true although the desired set is empty.
    assert!(has_permanent_slots(&on_n2));
    assert!(should_query_slots(&on_n2));
    // On the primary: the member slot wins (kept, advanced from the published position).
    let p = desired_for(&v, &c, "n1", NodeRole::Primary, 16);
    assert_eq!(p.slots["n2"].origin, SlotOrigin::Member { member: "n2".into() });
    // After n2's key expired, the permanent slot remains.
    let v_gone = view(&config, &members[..1], Some("n1"), json!({"optime": 100, "slots": {"n2": 80}}));
    let p = desired_for(&v_gone, &c, "n1", NodeRole::Primary, 16);
    assert_eq!(summary(&p), BTreeMap::from([("n2".to_string(), phys(Some(80), true))]));
    assert_eq!(p.slots["n2"].origin, SlotOrigin::Permanent);
    // No permanent slots at all: nothing to query with ttl 0.
    let plain = cfg(json!({"member_slots_ttl": 0}));
    assert!(!should_query_slots(&DesiredInput { config: &plain, ..on_n2 }));
}

#[test]
fn permanent_physical_for_a_cascading_member_uses_its_xlog_location() {
    let config = json!({"member_slots_ttl": 0, "slots": {"n3": null}});
    let members = [
        ("n1", json!({"role": "primary"})),
        ("n2", json!({})),
        ("n3", json!({"tags": {"replicatefrom": "n2"}, "xlog_location": 500})),
    ];
    let v = view(&config, &members, Some("n1"), json!({"optime": 600, "slots": {"n3": 400}}));
    let c = SlotsConfig::from_dynamic(&v.dynamic_config());
    let p = desired_for(&v, &c, "n1", NodeRole::Primary, 16);
    // A(B active, C inactive): n3 streams from n2, so the leader's copy is inactive and advanced to 500.
    assert_eq!(summary(&p)["n3"], phys(Some(500), false));
}

#[test]
fn pg10_disables_permanent_logical_slots() {
    let config = json!({"slots": {"lg": {"database": "d", "plugin": "p"}}});
    let v = view(&config, &[("n1", json!({}))], Some("n1"), json!({"optime": 1}));
    let c = SlotsConfig::from_dynamic(&v.dynamic_config());
    let d = desired_for(&v, &c, "n1", NodeRole::Primary, 10);
    assert!(d.slots.is_empty());
    assert_eq!(d.notes, vec![SlotNote::LogicalNeedsPg11 { names: vec!["lg".into()] }]);
}

#[test]
fn shared_slot_names_are_noted() {
    let v = view(&json!({}), &[("n1", json!({})), ("a-b", json!({})), ("a.b", json!({}))], Some("n1"), json!({}));
    let c = cfg(json!({}));
    let d = desired_for(&v, &c, "n1", NodeRole::Primary, 16);
    assert_eq!(d.slots.len(), 1);
    assert!(matches!(&d.notes[..], [SlotNote::SharedSlotName { slot, .. }] if slot == "a_b"));
}

// ---------------------------------------------------------------------------------------------------------------
// Reconcile.

fn desired(entries: &[(&str, SlotKind, SlotOrigin, Option<u64>, bool)]) -> DesiredSlots {
    DesiredSlots {
        slots: entries
            .iter()
            .map(|(n, k, o, l, a)| {
                (
                    n.to_string(),
                    DesiredSlot { kind: k.clone(), origin: o.clone(), lsn: l.map(Lsn), expected_active: *a },
                )
            })
            .collect(),
        notes: vec![],
    }
}

fn known(slots: &[(&str, ActualSlot)]) -> ActualSlots {
    ActualSlots::Known(slots.iter().map(|(n, s)| (n.to_string(), s.clone())).collect())
}

struct Ctx {
    config: SlotsConfig,
    recreate: BTreeSet<String>,
    recopy: BTreeSet<String>,
}

impl Ctx {
    fn new(config: Value) -> Ctx {
        Ctx { config: cfg(config), recreate: BTreeSet::new(), recopy: BTreeSet::new() }
    }

    fn ctx(&self, role: NodeRole) -> ReconcileContext<'_> {
        ReconcileContext {
            role,
            pg_major: 16,
            config: &self.config,
            paused: false,
            leader: match role {
                NodeRole::Primary => LeaderState::Me,
                NodeRole::Replica => LeaderState::Other("n1".into()),
            },
            running_primary: role == NodeRole::Primary,
            replay_lsn: Some(Lsn(1000)),
            failsafe_active: false,
            recreate_requested: &self.recreate,
            recopy_requested: &self.recopy,
        }
    }
}

fn perm_logical(lsn: Option<u64>) -> (&'static str, SlotKind, SlotOrigin, Option<u64>, bool) {
    ("lg", logical("db", "p"), SlotOrigin::Permanent, lsn, false)
}

fn member(
    name: &'static str,
    lsn: Option<u64>,
    active: bool,
) -> (&'static str, SlotKind, SlotOrigin, Option<u64>, bool) {
    (name, SlotKind::Physical, SlotOrigin::Member { member: name.into() }, lsn, active)
}

#[test]
fn unknown_actual_list_plans_nothing() {
    let c = Ctx::new(json!({}));
    let d = desired(&[member("n2", Some(10), false), perm_logical(Some(5))]);
    assert!(reconcile(&d, &ActualSlots::Unknown, &c.ctx(NodeRole::Primary)).is_empty());
    assert!(reconcile(&d, &ActualSlots::Unknown, &c.ctx(NodeRole::Replica)).is_empty());
}

#[test]
fn drops_unknown_slots_except_paused_active_ignored_and_native() {
    let c = Ctx::new(json!({"ignore_slots": [{"name": "keep", "type": "logical"}]}));
    let mut active = ActualSlot::physical(Some(Lsn(1)));
    active.active = true;
    let mut native = ActualSlot::logical("db", "p", Some(Lsn(1)));
    native.failover = true;
    let mut synced = ActualSlot::logical("db", "p", Some(Lsn(1)));
    synced.synced = true;
    let actual = known(&[
        ("stray", ActualSlot::physical(Some(Lsn(1)))),
        ("busy", active),
        ("keep", ActualSlot::logical("x", "y", Some(Lsn(1)))),
        ("pg17", native),
        ("pg17s", synced),
    ]);
    let d = desired(&[]);
    for role in [NodeRole::Primary, NodeRole::Replica] {
        let plan = reconcile(&d, &actual, &c.ctx(role));
        assert_eq!(plan, vec![SlotAction::Drop { slot: "stray".into(), reason: DropReason::Unknown }]);
        let paused = ReconcileContext { paused: true, ..c.ctx(role) };
        assert!(reconcile(&d, &actual, &paused).is_empty());
    }
}

#[test]
fn creates_missing_physical_and_logical_on_primary() {
    let c = Ctx::new(json!({}));
    let d = desired(&[member("n2", None, true), perm_logical(None)]);
    let plan = reconcile(&d, &known(&[]), &c.ctx(NodeRole::Primary));
    assert_eq!(
        plan,
        vec![
            SlotAction::CreateLogical {
                slot: "lg".into(),
                database: "db".into(),
                plugin: "p".into(),
                reason: CreateReason::Missing
            },
            SlotAction::CreatePhysical { slot: "n2".into(), reason: CreateReason::Missing },
        ]
    );
}

#[test]
fn continuity_break_instead_of_silent_recreate() {
    let mut c = Ctx::new(json!({}));
    let d = desired(&[perm_logical(Some(950))]);
    let plan = reconcile(&d, &known(&[]), &c.ctx(NodeRole::Primary));
    assert_eq!(plan, vec![SlotAction::ContinuityBreak { slot: "lg".into(), last_published: Lsn(950) }]);
    // Operator request.
    c.recreate.insert("lg".into());
    let plan = reconcile(&d, &known(&[]), &c.ctx(NodeRole::Primary));
    assert!(matches!(
        &plan[..],
        [SlotAction::CreateLogical { reason: CreateReason::ContinuityBreakRequested { last_published: Lsn(950) }, .. }]
    ));
    // Configuration opt-in.
    let c = Ctx::new(json!({"failover_slot_recreate": true}));
    let plan = reconcile(&d, &known(&[]), &c.ctx(NodeRole::Primary));
    assert!(matches!(
        &plan[..],
        [SlotAction::CreateLogical { reason: CreateReason::ContinuityBreakAllowedByConfig { .. }, .. }]
    ));
}

#[test]
fn replica_copies_logical_only_with_a_published_position_and_a_leader() {
    let mut c = Ctx::new(json!({}));
    let d = desired(&[perm_logical(Some(950))]);
    let plan = reconcile(&d, &known(&[]), &c.ctx(NodeRole::Replica));
    assert_eq!(
        plan,
        vec![SlotAction::CopyLogical {
            slot: "lg".into(),
            database: "db".into(),
            plugin: "p".into(),
            leader: "n1".into(),
            reason: CreateReason::Missing
        }]
    );
    assert!(reconcile(&desired(&[perm_logical(None)]), &known(&[]), &c.ctx(NodeRole::Replica)).is_empty());
    let no_leader = ReconcileContext { leader: LeaderState::NoLeader, ..c.ctx(NodeRole::Replica) };
    assert!(reconcile(&d, &known(&[]), &no_leader).is_empty());
    let failsafe = ReconcileContext { failsafe_active: true, ..c.ctx(NodeRole::Replica) };
    assert!(reconcile(&d, &known(&[]), &failsafe).is_empty());
    // The copy check asked for a re-copy: drop, then copy again, in one plan.
    c.recopy.insert("lg".into());
    let have = known(&[("lg", ActualSlot::logical("db", "p", Some(Lsn(900))))]);
    let plan = reconcile(&d, &have, &c.ctx(NodeRole::Replica));
    assert!(
        matches!(
            &plan[..],
            [
                SlotAction::Drop { reason: DropReason::UnusableCopy, .. },
                SlotAction::CopyLogical { reason: CreateReason::Recreate(DropReason::UnusableCopy), .. }
            ]
        ),
        "{plan:?}"
    );
    // Never on the primary, never while the copy is in use.
    assert!(reconcile(&d, &have, &c.ctx(NodeRole::Primary)).iter().all(|a| !a.is_drop()));
    let mut active = ActualSlot::logical("db", "p", Some(Lsn(900)));
    active.active = true;
    assert!(reconcile(&d, &known(&[("lg", active)]), &c.ctx(NodeRole::Replica)).is_empty());
}

#[test]
fn advances_are_capped_and_skip_active_and_expected_active() {
    let c = Ctx::new(json!({}));
    let d = desired(&[
        member("n_a", Some(2000), false),
        member("n_b", Some(900), false),
        member("n_c", Some(2000), true),
        perm_logical(Some(1500)),
    ]);
    let actual = known(&[
        ("n_a", ActualSlot::physical(Some(Lsn(100)))),
        ("n_b", ActualSlot::physical(Some(Lsn(950)))),
        ("n_c", ActualSlot::physical(Some(Lsn(100)))),
        ("lg", ActualSlot::logical("db", "p", Some(Lsn(500)))),
    ]);
    let plan = reconcile(&d, &actual, &c.ctx(NodeRole::Replica));
    assert_eq!(plan, vec![SlotAction::AdvancePhysical { slot: "n_a".into(), to: Lsn(1000) }]);
    // The logical copy is the follower's, with the same rule: the published 1500 capped at replay 1000.
    let lg = AdvanceInput {
        role: NodeRole::Replica,
        leader: None,
        published: Some(Lsn(1500)),
        replay: Some(Lsn(1000)),
        current: Some(Lsn(500)),
        unproven: false,
    };
    assert_eq!(advance_step(&lg), AdvanceStep::To(Lsn(1000)));
    assert_eq!(advance_step(&AdvanceInput { replay: None, ..lg }), AdvanceStep::Unknown);
    // On the primary: physical not capped, logical never advanced (consumers move it).
    let plan = reconcile(&d, &actual, &c.ctx(NodeRole::Primary));
    assert_eq!(plan, vec![SlotAction::AdvancePhysical { slot: "n_a".into(), to: Lsn(2000) }]);
    // Unknown replay position: no advance on a replica.
    let blind = ReconcileContext { replay_lsn: None, ..c.ctx(NodeRole::Replica) };
    assert!(reconcile(&d, &actual, &blind).is_empty());
    // PG 10 cannot advance.
    let old = ReconcileContext { pg_major: 10, ..c.ctx(NodeRole::Replica) };
    assert!(reconcile(&d, &actual, &old).is_empty());
}

#[test]
fn lost_mismatch_xmin_and_no_restart_lsn_are_dropped_and_recreated() {
    let c = Ctx::new(json!({}));
    let mut lost = ActualSlot::physical(Some(Lsn(5)));
    lost.wal_status = Some(WalStatus::Lost);
    let mut xmin = ActualSlot::physical(Some(Lsn(5)));
    xmin.xmin = Some(Xid(1234));
    let d = desired(&[
        member("n_lost", None, false),
        member("n_xmin", None, false),
        member("n_norestart", None, false),
        ("n_mis", logical("db", "p"), SlotOrigin::Permanent, None, false),
    ]);
    let actual = known(&[
        ("n_lost", lost.clone()),
        ("n_xmin", xmin.clone()),
        ("n_norestart", ActualSlot::physical(None)),
        ("n_mis", ActualSlot::logical("db", "other", Some(Lsn(1)))),
    ]);
    let plan = reconcile(&d, &actual, &c.ctx(NodeRole::Replica));
    let drops: Vec<(&str, &DropReason)> = plan
        .iter()
        .filter_map(|a| match a {
            SlotAction::Drop { slot, reason } => Some((slot.as_str(), reason)),
            _ => None,
        })
        .collect();
    assert_eq!(drops.len(), 4, "{plan:?}");
    assert!(drops.contains(&("n_lost", &DropReason::Lost)));
    assert!(drops.contains(&("n_xmin", &DropReason::Xmin { xmin: Xid(1234) })));
    assert!(drops.contains(&("n_norestart", &DropReason::NoRestartLsn)));
    for s in ["n_lost", "n_xmin", "n_norestart"] {
        let i = plan.iter().position(|a| a.slot() == s && a.is_drop()).unwrap();
        assert!(matches!(&plan[i + 1], SlotAction::CreatePhysical { reason: CreateReason::Recreate(_), .. }));
    }
    // The mismatched logical slot on a replica: dropped, not copied (no published position).
    assert!(!plan.iter().any(|a| matches!(a, SlotAction::CopyLogical { .. })));
    // On the primary a mismatch is re-created right away (the operator changed the definition).
    let plan = reconcile(
        &desired(&[perm_logical(Some(9))]),
        &known(&[("lg", ActualSlot::physical(Some(Lsn(1))))]),
        &c.ctx(NodeRole::Primary),
    );
    assert!(matches!(
        &plan[..],
        [
            SlotAction::Drop { .. },
            SlotAction::CreateLogical { reason: CreateReason::Recreate(DropReason::Mismatch { .. }), .. }
        ]
    ));
    // A lost logical slot on the primary with a published position: drop, then a continuity break.
    let mut lost_lg = ActualSlot::logical("db", "p", Some(Lsn(1)));
    lost_lg.wal_status = Some(WalStatus::Lost);
    let plan = reconcile(&desired(&[perm_logical(Some(9))]), &known(&[("lg", lost_lg)]), &c.ctx(NodeRole::Primary));
    assert!(matches!(
        &plan[..],
        [SlotAction::Drop { reason: DropReason::Lost, .. }, SlotAction::ContinuityBreak { .. }]
    ));
    // xmin cleanup waits for a leader, and on the key holder for promotion; retained and expected-active are spared.
    let d = desired(&[member("n_xmin", None, false)]);
    let actual = known(&[("n_xmin", xmin.clone())]);
    let no_leader = ReconcileContext { leader: LeaderState::NoLeader, ..c.ctx(NodeRole::Replica) };
    assert!(reconcile(&d, &actual, &no_leader).is_empty());
    let not_promoted = ReconcileContext { running_primary: false, ..c.ctx(NodeRole::Primary) };
    assert!(reconcile(&d, &actual, &not_promoted).is_empty());
    let retained = desired(&[("n_xmin", SlotKind::Physical, SlotOrigin::Retained, None, false)]);
    assert!(reconcile(&retained, &actual, &c.ctx(NodeRole::Replica)).is_empty());
    assert!(reconcile(&desired(&[member("n_xmin", None, true)]), &actual, &c.ctx(NodeRole::Primary)).is_empty());
    // Paused or active: nothing dropped.
    let paused = ReconcileContext { paused: true, ..c.ctx(NodeRole::Replica) };
    assert!(
        reconcile(&desired(&[member("n_lost", None, false)]), &known(&[("n_lost", lost.clone())]), &paused).is_empty()
    );
    let mut lost_active = lost;
    lost_active.active = true;
    assert!(reconcile(
        &desired(&[member("n_lost", None, false)]),
        &known(&[("n_lost", lost_active)]),
        &c.ctx(NodeRole::Replica)
    )
    .is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// Published status and retention.

#[test]
fn published_status_lists_managed_slots_and_own_flush() {
    let (v, c) = example();
    let d = desired_for(&v, &c, "node-a", NodeRole::Primary, 16);
    let actual = known(&[
        ("node_b", ActualSlot::physical(Some(Lsn(900)))),
        ("ph_any", ActualSlot::physical(Some(Lsn(990)))),
        ("stray", ActualSlot::physical(Some(Lsn(1)))),
        ("node_c", ActualSlot::logical("x", "y", Some(Lsn(3)))),
    ]);
    let input = PublishInput {
        me: "node-a",
        view: &v,
        config: &c,
        desired: &d,
        actual: &actual,
        flush_lsn: Some(Lsn(1000)),
        pg_major: 16,
    };
    let mut clock = RetainClock::on_promotion(&v.status.retain_slots, Millis(0));
    let (st, notes) = published_status(&input, &mut clock, Millis(1000));
    // lg is missing here but was published: the break stays visible. stray and the mismatched node_c are not.
    let want: BTreeMap<String, Lsn> =
        [("lg", 950), ("node_a", 1000), ("node_b", 900), ("ph_any", 990)].map(|(k, l)| (k.to_string(), Lsn(l))).into();
    assert_eq!(st.slots, want);
    assert_eq!(st.optime, Some(Lsn(1000)));
    assert!(notes.is_empty());
    assert_eq!(st.retain_slots, ["gone_node", "node_a", "node_b", "node_c"]);
    // 1800 s later only the slots refreshed at 1000 ms remain; gone_node and node_c expire.
    let (st, notes) = published_status(&input, &mut clock, Millis(1_800_000));
    assert_eq!(st.retain_slots, ["node_a", "node_b"]);
    assert_eq!(notes.len(), 2);
    // Unknown slot list: keep the published positions of desired slots.
    let blind = PublishInput { actual: &ActualSlots::Unknown, ..input };
    assert!(published_slots(&blind).contains_key("ph_any"));
    assert!(published_slots(&PublishInput { pg_major: 10, ..input }).is_empty());
    // Unknown flush position: no optime and no own slot, never 0.
    let unknown_flush = PublishInput { flush_lsn: None, ..input };
    assert!(!published_slots(&unknown_flush).contains_key("node_a"));
    assert_eq!(published_status(&unknown_flush, &mut clock, Millis(1_800_001)).0.optime, None);
}

#[test]
fn ttl_zero_publishes_only_permanent_slots() {
    let config = json!({"member_slots_ttl": 0, "slots": {"node1": null, "perm_ph": null, "lg": {"database": "d", "plugin": "p"}}});
    let members = [("node1", json!({})), ("node2", json!({}))];
    let v = view(&config, &members, Some("node1"), json!({"optime": 1000}));
    let c = SlotsConfig::from_dynamic(&v.dynamic_config());
    let d = desired_for(&v, &c, "node1", NodeRole::Primary, 16);
    let actual = known(&[
        ("node2", ActualSlot::physical(Some(Lsn(990)))),
        ("perm_ph", ActualSlot::physical(Some(Lsn(950)))),
        ("lg", ActualSlot::logical("d", "p", Some(Lsn(940)))),
    ]);
    let input = PublishInput {
        me: "node1",
        view: &v,
        config: &c,
        desired: &d,
        actual: &actual,
        flush_lsn: Some(Lsn(1000)),
        pg_major: 16,
    };
    let want: BTreeMap<String, Lsn> =
        [("lg", 940), ("node1", 1000), ("perm_ph", 950)].map(|(k, l)| (k.to_string(), Lsn(l))).into();
    assert_eq!(published_slots(&input), want);
    let (st, _) = published_status(&input, &mut RetainClock::default(), Millis(5));
    assert!(st.retain_slots.is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// Readiness.

#[test]
fn xid_comparison_wraps_around() {
    assert!(Xid(100).precedes(Xid(200)));
    assert!(!Xid(200).precedes(Xid(100)));
    // Across the wrap: 4_294_967_000 is older than 500.
    assert!(Xid(4_294_967_000).precedes(Xid(500)));
    assert!(!Xid(500).precedes(Xid(4_294_967_000)));
    assert!(Xid(7).precedes_or_equals(Xid(7)));
    // Special xids compare as plain numbers.
    assert!(Xid(2).precedes(Xid(4_000_000_000)));
    assert!(!Xid(4_000_000_000).precedes(Xid(2)));
}

fn local(catalog_xmin: u32, restart: u64, flush: u64) -> LocalLogicalSlot {
    LocalLogicalSlot {
        catalog_xmin: Some(Xid(catalog_xmin)),
        restart_lsn: Some(Lsn(restart)),
        confirmed_flush_lsn: Some(Lsn(flush)),
        wal_status: Some(WalStatus::Reserved),
        invalidated: false,
    }
}

fn obs(
    event: Option<ReadinessEvent>,
    l: LocalLogicalSlot,
    p: PrimaryPhysicalSlot,
    s: Option<u32>,
) -> ReadinessObservation {
    ReadinessObservation {
        event,
        local: Some(l),
        replay_lsn: Some(Lsn(1000)),
        primary_physical: p,
        primary_logical_catalog_xmin: s.map(Xid),
        problem: None,
    }
}

fn walk(start: u32) {
    use PrimaryPhysicalSlot::*;
    // PostgreSQL's xid counter skips the special xids 0-2 when it wraps.
    let x = |d: u32| {
        let v = start.wrapping_add(d);
        if v < start {
            v + FIRST_NORMAL_XID
        } else {
            v
        }
    };
    let (s, r) = step(
        &SlotReadiness::MISSING,
        &obs(Some(ReadinessEvent::Copied), local(x(10), 100, 200), NullCatalogXmin, Some(x(10))),
    );
    assert_eq!((s.stage, r), (Stage::Copied, ReadinessReason::CatalogXminNull));
    // First non-NULL P: p0 = S.catalog_xmin on A = x(12); P = x(11) has not reached it.
    let (s, r) = step(&s, &obs(None, local(x(10), 100, 200), CatalogXmin(Xid(x(11))), Some(x(12))));
    assert_eq!(s.p0, Some(Xid(x(12))));
    assert_eq!(
        (s.stage, r),
        (Stage::Copied, ReadinessReason::WaitingForPrimaryHorizon { p0: Xid(x(12)), primary: Xid(x(11)) })
    );
    // P passes p0 but the copy is older than P: not protected.
    let (s2, r) = step(&s, &obs(None, local(x(10), 100, 200), CatalogXmin(Xid(x(13))), Some(x(20))));
    assert!(matches!(r, ReadinessReason::CopyOlderThanPrimaryHorizon { .. }) && s2.stage == Stage::Copied);
    // Copy advanced locally (catalog_xmin x(15)); p0 <= P = x(13) <= x(15): protected.
    let (s, r) = step(&s2, &obs(None, local(x(15), 100, 200), CatalogXmin(Xid(x(13))), Some(x(20))));
    assert_eq!((s.stage, r), (Stage::Protected, ReadinessReason::WaitingForAdvance));
    let (s, r) =
        step(&s, &obs(Some(ReadinessEvent::AdvanceSucceeded), local(x(15), 100, 300), CatalogXmin(Xid(x(13))), None));
    assert_eq!((s.stage, r), (Stage::Advanced, ReadinessReason::WaitingForLocalSnapshot));
    let (s, r) = step(&s, &obs(None, local(x(16), 150, 300), CatalogXmin(Xid(x(14))), None));
    assert_eq!((s.stage, r), (Stage::Ready, ReadinessReason::Ready));
    // Leader gone: readiness is kept.
    let (s_unknown, _) = step(&s, &obs(None, local(x(16), 150, 300), Unknown, None));
    assert_eq!(s_unknown.stage, Stage::Ready);
    // P's catalog_xmin seen NULL: start over.
    let (s3, r) = step(&s, &obs(None, local(x(16), 150, 300), NullCatalogXmin, None));
    assert_eq!((s3.stage, s3.p0, r), (Stage::Copied, None, ReadinessReason::CatalogXminNull));
    // Re-copy resets everything.
    let (s4, _) =
        step(&s, &obs(Some(ReadinessEvent::Copied), local(x(16), 150, 300), CatalogXmin(Xid(x(14))), Some(x(14))));
    assert!(!s4.advanced && s4.stage == Stage::Protected);
}

#[test]
fn readiness_walk_and_wraparound() {
    walk(1_000);
    walk(u32::MAX - 12); // crosses 2^32 in the middle of the walk
}

#[test]
fn readiness_failures() {
    use PrimaryPhysicalSlot::*;
    let ready =
        SlotReadiness { stage: Stage::Ready, p0: Some(Xid(10)), advanced: true, installed_restart_lsn: Some(Lsn(1)) };
    let good = local(20, 100, 200);
    let (s, r) =
        step(&ready, &ReadinessObservation { local: None, ..obs(None, good.clone(), CatalogXmin(Xid(15)), None) });
    assert_eq!((s, r), (SlotReadiness::MISSING, ReadinessReason::SlotMissing));
    let (s, r) = step(&ready, &obs(None, good.clone(), Missing, None));
    assert_eq!((s.stage, s.p0, r), (Stage::Copied, None, ReadinessReason::PrimaryPhysicalSlotMissing));
    let failed = ReadinessEvent::AdvanceFailed(CopyFailure::Timeout);
    let (s, r) = step(&ready, &obs(Some(failed), good.clone(), CatalogXmin(Xid(15)), None));
    assert_eq!((s.stage, s.advanced, r), (Stage::Copied, false, ReadinessReason::AdvanceFailed(CopyFailure::Timeout)));
    let mut lost = good.clone();
    lost.wal_status = Some(WalStatus::Lost);
    assert_eq!(step(&ready, &obs(None, lost, CatalogXmin(Xid(15)), None)).1, ReadinessReason::Unhealthy);
    let ahead = local(20, 100, 2000);
    assert!(matches!(
        step(&ready, &obs(None, ahead, CatalogXmin(Xid(15)), None)).1,
        ReadinessReason::AheadOfReplay { .. }
    ));
    // A slot found without a copy event (agent restart) starts at Copied; p0 cannot be recorded without S.
    let (s, r) = step(&SlotReadiness::MISSING, &obs(None, good, CatalogXmin(Xid(15)), None));
    assert_eq!((s.stage, r), (Stage::Copied, ReadinessReason::PrimaryLogicalUnknown));
    // Unknown primary never establishes protection.
    let (s, r) = step(&s, &obs(None, local(20, 100, 200), Unknown, Some(12)));
    assert_eq!((s.stage, r), (Stage::Copied, ReadinessReason::PrimaryUnknown));
}

/// A copy with a typed problem (missing WAL, ahead of the primary, stale, database missing) is never ready, so the
/// member publishes `ready: false` and the readiness gate prefers a member with usable copies.
#[test]
fn copies_with_problems_are_never_ready() {
    use PrimaryPhysicalSlot::*;
    let ready =
        SlotReadiness { stage: Stage::Ready, p0: Some(Xid(10)), advanced: true, installed_restart_lsn: Some(Lsn(1)) };
    let problems = [
        CopyProblem::NeedsMissingWal { needs: Some(Lsn(10)), oldest_wal: Some(Lsn(20)) },
        CopyProblem::AheadOfPrimary { position: Position::ConfirmedFlush, copy: Lsn(300), primary: Lsn(200) },
        CopyProblem::Stale { cause: Rebuild::Rewind },
        CopyProblem::DatabaseMissing { database: "app".into() },
        CopyProblem::Invalidated,
    ];
    for p in problems {
        let o = ReadinessObservation {
            problem: Some(p.clone()),
            ..obs(None, local(20, 150, 200), CatalogXmin(Xid(15)), None)
        };
        let (s, r) = step(&ready, &o);
        assert_eq!((s.stage, s.advanced, s.p0), (Stage::Copied, false, None), "{p:?}");
        assert_eq!(r.code(), p.code());
        assert_eq!(r, ReadinessReason::Unusable(p.clone()));
        let states = BTreeMap::from([("cdc".to_string(), s)]);
        assert_eq!(
            SlotsReadiness::summarize(["cdc"], &states),
            SlotsReadiness { ready: false, unready: vec!["cdc".into()] }
        );
        // A withheld copy (none made, because it would need missing WAL) shows its reason too.
        let withheld = ReadinessObservation { local: None, ..o };
        assert_eq!(step(&SlotReadiness::MISSING, &withheld), (SlotReadiness::MISSING, ReadinessReason::Unusable(p)));
    }
}

#[test]
fn summary_and_member_key_shape() {
    let states = BTreeMap::from([
        ("a".to_string(), SlotReadiness { stage: Stage::Ready, p0: None, advanced: true, installed_restart_lsn: None }),
        ("b".to_string(), SlotReadiness::MISSING),
    ]);
    let s = SlotsReadiness::summarize(["a", "b", "c"], &states);
    assert_eq!(s, SlotsReadiness { ready: false, unready: vec!["b".into(), "c".into()] });
    assert_eq!(s.to_json(), json!({"ready": false, "unready": ["b", "c"]}));
    assert_eq!(SlotsReadiness::from_json(&s.to_json()), Some(s));
    assert!(SlotsReadiness::summarize(["a"], &states).ready);
    assert_eq!(
        SlotsReadiness::from_json(&json!({"unready": []})),
        Some(SlotsReadiness { ready: true, unready: vec![] })
    );
    assert_eq!(SlotsReadiness::from_json(&json!({"ready": true, "unready": ["x"]})).map(|r| r.ready), Some(false));
    assert_eq!(SlotsReadiness::from_json(&json!("junk")), None);
    assert_eq!(SlotsReadiness::from_json(&json!({})), None);
    let v = view(&json!({}), &[("n2", json!({"keel_slots": {"ready": "on"}}))], None, json!({}));
    assert_eq!(v.members["n2"].slots_readiness, Some(SlotsReadiness { ready: true, unready: vec![] }));
}

// ---------------------------------------------------------------------------------------------------------------
// Properties.

mod props {
    use proptest::prelude::*;

    use super::*;

    fn arb_actual() -> impl Strategy<Value = ActualSlot> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(3u32..100),
            0u8..3,
            prop::option::of(0u64..2000),
        )
            .prop_map(|(logical_kind, active, failover, lost, xmin, plugin, pos)| {
                let mut s = if logical_kind {
                    ActualSlot::logical("db", ["p", "q", "r"][plugin as usize], pos.map(Lsn))
                } else {
                    ActualSlot::physical(pos.map(Lsn))
                };
                s.active = active;
                s.failover = failover;
                s.xmin = xmin.map(Xid);
                s.wal_status = lost.then_some(WalStatus::Lost);
                s
            })
    }

    const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Never drop a slot we are unsure about: unknown list → no actions; paused → no drops; active, ignored or
        /// PG 17 failover slots are never dropped; only existing slots are dropped.
        #[test]
        fn never_drops_what_it_is_unsure_about(
            actual in prop::collection::vec(prop::option::of(arb_actual()), 6),
            want in prop::collection::vec(prop::option::of((any::<bool>(), prop::option::of(1u64..2000), any::<bool>())), 6),
            ignore_mask in 0u8..64,
            paused in any::<bool>(),
            primary in any::<bool>(),
        ) {
            let ignore: Vec<Value> = NAMES.iter().enumerate().filter(|(i, _)| ignore_mask & (1 << i) != 0)
                .map(|(_, n)| json!({"name": n})).collect();
            let c = Ctx::new(json!({"ignore_slots": ignore}));
            let role = if primary { NodeRole::Primary } else { NodeRole::Replica };
            let ctx = ReconcileContext { paused, ..c.ctx(role) };
            let actual: BTreeMap<String, ActualSlot> = NAMES.iter().zip(&actual)
                .filter_map(|(n, s)| s.clone().map(|s| (n.to_string(), s))).collect();
            let d = DesiredSlots {
                slots: NAMES.iter().zip(&want).filter_map(|(n, w)| w.map(|(lg, lsn, act)| (n.to_string(), DesiredSlot {
                    kind: if lg { logical("db", "p") } else { SlotKind::Physical },
                    origin: SlotOrigin::Permanent,
                    lsn: lsn.map(Lsn),
                    expected_active: act,
                }))).collect(),
                notes: vec![],
            };
            prop_assert!(reconcile(&d, &ActualSlots::Unknown, &ctx).is_empty());
            let plan = reconcile(&d, &ActualSlots::Known(actual.clone()), &ctx);
            for a in &plan {
                if let SlotAction::Drop { slot, .. } = a {
                    let s = actual.get(slot);
                    prop_assert!(s.is_some(), "dropped a slot that does not exist: {slot}");
                    let s = s.unwrap();
                    prop_assert!(!paused, "dropped {slot} in pause");
                    prop_assert!(!s.active, "dropped active {slot}");
                    prop_assert!(!c.config.is_ignored(slot, s.kind.type_str(), None, None), "dropped ignored {slot}");
                    prop_assert!(!s.natively_managed(), "dropped a native failover slot {slot}");
                }
                // Never a fresh logical slot on the primary where a position had been published, unasked.
                if let SlotAction::CreateLogical { slot, reason, .. } = a {
                    let published = d.slots[slot].lsn.is_some();
                    let mismatch = matches!(reason, CreateReason::Recreate(DropReason::Mismatch { .. }));
                    prop_assert!(!published || mismatch, "silently re-created {slot}: {reason:?}");
                }
                prop_assert!(!(primary && matches!(a, SlotAction::CopyLogical { .. })), "copy on the primary: {a:?}");
                prop_assert!(
                    primary || !matches!(a, SlotAction::CreateLogical { .. } | SlotAction::ContinuityBreak { .. }),
                    "primary-only action on a replica: {a:?}"
                );
            }
        }

        /// Readiness never jumps to Ready without protection, a successful advance and a moved restart_lsn.
        #[test]
        fn ready_needs_every_condition(
            steps in prop::collection::vec((0u8..4, prop::option::of(0u32..40), 0u8..4, prop::option::of(0u32..40), 0u64..300), 1..30),
            base in any::<u32>(),
        ) {
            let mut st = SlotReadiness::MISSING;
            let x = |d: u32| Xid(base.wrapping_add(d).max(FIRST_NORMAL_XID));
            for (ev, cat, prim, s_cat, restart) in steps {
                let event = match ev { 0 => Some(ReadinessEvent::Copied), 1 => Some(ReadinessEvent::AdvanceSucceeded), 2 => Some(ReadinessEvent::AdvanceFailed(CopyFailure::MissingWal)), _ => None };
                let primary_physical = match prim {
                    0 => PrimaryPhysicalSlot::Unknown,
                    1 => PrimaryPhysicalSlot::NullCatalogXmin,
                    _ => cat.map_or(PrimaryPhysicalSlot::Missing, |c| PrimaryPhysicalSlot::CatalogXmin(x(c))),
                };
                let o = ReadinessObservation {
                    event: event.clone(),
                    local: Some(LocalLogicalSlot { catalog_xmin: s_cat.map(x), restart_lsn: Some(Lsn(restart)), confirmed_flush_lsn: Some(Lsn(restart)), wal_status: None, invalidated: false }),
                    replay_lsn: Some(Lsn(1000)),
                    primary_physical,
                    primary_logical_catalog_xmin: s_cat.map(|c| x(c / 2)),
                    problem: None,
                };
                let (next, _) = step(&st, &o);
                if next.stage == Stage::Ready {
                    prop_assert!(next.advanced && next.p0.is_some());
                    prop_assert!(event != Some(ReadinessEvent::Copied) && !matches!(event, Some(ReadinessEvent::AdvanceFailed(_))));
                    prop_assert!(next.installed_restart_lsn.is_none_or(|r| Lsn(restart) > r));
                }
                st = next;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The leader's member slots come from the plan alone, and the plan settles.

/// Runs `reconcile` on the leader `n1` for `cycles` cycles, applying each plan to the slot list as the agent does.
/// Returns every plan and the slots left.
fn leader_cycles(v: &ClusterView, cycles: usize, start: &[&str]) -> (Vec<Vec<SlotAction>>, Vec<String>) {
    let c = SlotsConfig::from_dynamic(&v.dynamic_config());
    let d = desired_for(v, &c, "n1", NodeRole::Primary, 16);
    let mut have: BTreeMap<String, ActualSlot> =
        start.iter().map(|n| (n.to_string(), ActualSlot::physical(Some(Lsn(10))))).collect();
    let (recreate, recopy) = (BTreeSet::new(), BTreeSet::new());
    let ctx = ReconcileContext {
        role: NodeRole::Primary,
        pg_major: 16,
        config: &c,
        paused: false,
        leader: LeaderState::Me,
        running_primary: true,
        replay_lsn: None,
        failsafe_active: false,
        recreate_requested: &recreate,
        recopy_requested: &recopy,
    };
    let mut plans = Vec::new();
    for _ in 0..cycles {
        let plan = reconcile(&d, &ActualSlots::Known(have.clone()), &ctx);
        for a in &plan {
            match a {
                SlotAction::CreatePhysical { slot, .. } => {
                    have.insert(slot.clone(), ActualSlot::physical(Some(Lsn(10))));
                }
                SlotAction::Drop { slot, .. } => {
                    have.remove(slot);
                }
                _ => {}
            }
        }
        plans.push(plan);
    }
    (plans, have.into_keys().collect())
}

/// `member_slots_ttl: 0` with a `replicatefrom` member: the leader keeps no slot for a member that streams from
/// another member (Patroni's Mode B `leader_filter`), drops one it finds once, and never creates it again (the agent
/// used to re-create every non-`nostream` member's slot after the plan, so the slot was dropped and re-created
/// every cycle).
#[test]
fn leader_member_slots_settle_with_replicatefrom() {
    let members = |n3: Value| {
        [("n1", json!({"role": "primary"})), ("n2", json!({})), ("n3", n3), ("n4", json!({"tags": {"nostream": true}}))]
    };
    // ttl, n3's member key, slots the leader starts with → slots it keeps.
    type Row = (u64, Value, &'static [&'static str], &'static [&'static str]);
    let table: &[Row] = &[
        // Mode B: n3 streams from n2, which exists: n2 holds n3's slot, the leader does not.
        (0, json!({"tags": {"replicatefrom": "n2"}}), &[], &["n2"]),
        (0, json!({"tags": {"replicatefrom": "n2"}}), &["n2", "n3"], &["n2"]),
        // Mode B: n3 streams from the leader, or from a member that is gone: the leader holds its slot.
        (0, json!({"tags": {"replicatefrom": "n1"}}), &[], &["n2", "n3"]),
        (0, json!({"tags": {"replicatefrom": "gone"}}), &["n3"], &["n2", "n3"]),
        // Mode A: every member that streams, wherever from.
        (1800, json!({"tags": {"replicatefrom": "n2"}}), &[], &["n2", "n3"]),
        (1800, json!({}), &["n4"], &["n2", "n3"]),
    ];
    for (ttl, n3, start, want) in table {
        let config = json!({"member_slots_ttl": ttl});
        let v = view(&config, &members(n3.clone()), Some("n1"), json!({"optime": 100}));
        let (plans, have) = leader_cycles(&v, 3, start);
        let label = format!("ttl={ttl} n3={n3} start={start:?}");
        assert_eq!(have, want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{label}");
        assert!(plans[1..].iter().all(Vec::is_empty), "{label}: the plan does not settle: {plans:?}");
        // Nothing is created that the same or a later cycle drops.
        let created: BTreeSet<&str> = plans
            .iter()
            .flatten()
            .filter(|a| matches!(a, SlotAction::CreatePhysical { .. }))
            .map(SlotAction::slot)
            .collect();
        assert!(created.iter().all(|s| want.contains(s)), "{label}: created {created:?}");
    }
}

/// PostgreSQL 17 and 18 sync slots only from the primary: in native mode a standby cascading from another standby
/// keeps its copies as in copy mode; a member naming the leader, itself or a missing member does not cascade.
#[test]
fn a_cascading_standby_keeps_copies_in_native_mode() {
    use super::native::node_method;
    let members = [
        ("n1", json!({"role": "primary"})),
        ("n2", json!({})),
        ("n3", json!({"tags": {"replicatefrom": "n2"}})),
        ("n4", json!({"tags": {"replicatefrom": "n1"}})),
        ("n5", json!({"tags": {"replicatefrom": "gone"}})),
        ("n6", json!({"tags": {"replicatefrom": "n6"}})),
    ];
    let v = view(&json!({}), &members, Some("n1"), json!({"optime": 1}));
    let cascading = |n: &str| super::cascades(&v, n, &v.members[n].tags);
    assert!(cascading("n3"));
    for n in ["n1", "n2", "n4", "n5", "n6"] {
        assert!(!cascading(n), "{n}");
    }
    let (native, copy) = (SlotSyncMethod::Native, SlotSyncMethod::Copy);
    assert_eq!(node_method(native, NodeRole::Replica, true), copy);
    assert_eq!(node_method(native, NodeRole::Replica, false), native);
    assert_eq!(node_method(native, NodeRole::Primary, true), native);
    assert_eq!(node_method(copy, NodeRole::Replica, false), copy);
}
