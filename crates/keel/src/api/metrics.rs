//! `GET /metrics`: Prometheus text built from the node status, with Patroni's metric names and a `keel_` set for
//! what Patroni does not publish.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use keel_core::view::Role;

use crate::status::{unix_seconds, NodeStatus};

type Labels = Vec<(String, String)>;

/// Renders the metrics for one scrape.
pub fn render(st: &NodeStatus) -> Result<String, std::fmt::Error> {
    let labels: Labels = vec![("scope".into(), st.scope.clone()), ("name".into(), st.name.clone())];
    let mut registry = Registry::default();
    let mut gauge = |name: &str, help: &str, value: i64| {
        let family = Family::<Labels, Gauge>::default();
        family.get_or_create(&labels).set(value);
        registry.register(name, help, family);
    };
    let lsn = |l: Option<keel_core::lsn::Lsn>| l.map(|l| l.0 as i64).unwrap_or(0);
    let flag = |b: bool| i64::from(b);
    let is_primary = st.is_leader && st.role == Some(Role::Primary);
    gauge("patroni_postgres_running", "Value is 1 if PostgreSQL is running, 0 otherwise.", flag(st.is_running()));
    gauge("patroni_primary", "Value is 1 if this node is the leader, 0 otherwise.", flag(is_primary));
    gauge(
        "patroni_replica",
        "Value is 1 if this node is a replica, 0 otherwise.",
        flag(st.role == Some(Role::Replica)),
    );
    gauge("patroni_standby_leader", "Value is 1 if this node is the standby leader, 0 otherwise.", 0);
    gauge(
        "patroni_sync_standby",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        flag(st.is_sync_standby()),
    );
    gauge("patroni_xlog_location", "Current WAL location on the primary.", lsn(st.wal_location));
    gauge("patroni_xlog_received_location", "WAL location received on a replica.", lsn(st.received_location));
    gauge("patroni_xlog_replayed_location", "WAL location replayed on a replica.", lsn(st.replayed_location));
    gauge("patroni_xlog_paused", "Value is 1 if WAL replay is paused.", flag(st.replay_paused));
    gauge(
        "patroni_postgres_server_version",
        "Version of PostgreSQL (if running).",
        st.server_version.map(i64::from).unwrap_or(0),
    );
    gauge("patroni_cluster_unlocked", "Value is 1 if the cluster has no leader.", flag(st.cluster_unlocked));
    gauge(
        "patroni_failsafe_mode_is_active",
        "Value is 1 if failsafe mode is active.",
        flag(st.failsafe_mode_is_active),
    );
    gauge("patroni_postgres_timeline", "PostgreSQL timeline.", st.timeline.map(i64::from).unwrap_or(0));
    gauge(
        "patroni_postgres_streaming",
        "Value is 1 if the replica streams from its upstream.",
        flag(st.replication_state.as_deref() == Some("streaming")),
    );
    gauge(
        "patroni_dcs_last_seen",
        "Unix time of the last successful store read.",
        st.dcs_last_seen.map(|s| s as i64).unwrap_or(0),
    );
    gauge("patroni_pending_restart", "Value is 1 if PostgreSQL needs a restart.", flag(st.pending_restart));
    gauge("patroni_is_paused", "Value is 1 if the cluster is in maintenance mode.", flag(st.pause));
    gauge(
        "keel_replica_lag_bytes",
        "Bytes this replica's replay is behind the leader's published position.",
        st.replica_lag().map(|l| l as i64).unwrap_or(0),
    );
    gauge(
        "patroni_quorum_standby",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        flag(st.is_quorum_standby()),
    );
    gauge(
        "patroni_postgres_in_archive_recovery",
        "Value is 1 if PostgreSQL is replicating from archive, 0 otherwise.",
        flag(st.replication_state.as_deref() == Some("in archive recovery")),
    );
    gauge(
        "patroni_version",
        "Keel's version as Patroni shows its own: semver without periods.",
        padded_semver(&st.version),
    );
    gauge("patroni_postgres_state", POSTGRES_STATE_HELP, st.state.metric_value());
    gauge("keel_leader_lock_held", "Value is 1 if this node holds the leader key.", flag(st.is_leader));
    let seconds = |t: Option<std::time::SystemTime>| t.map(unix_seconds).unwrap_or(0.0);
    for (name, help, value) in [
        ("patroni_postmaster_start_time", "Epoch seconds since PostgreSQL started.", seconds(st.postmaster_start_time)),
        (
            "patroni_xlog_replayed_timestamp",
            "Current timestamp of the replayed WAL, 0 if null.",
            seconds(st.replayed_timestamp),
        ),
    ] {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        family.get_or_create(&labels).set(value);
        registry.register(name, help, family);
    }
    // Per slot: lag behind the primary, WAL retained, and readiness of copied logical slots.
    let slots = st.slots.get("slots").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
    let lag = Family::<Labels, Gauge>::default();
    let retained = Family::<Labels, Gauge>::default();
    let ready = Family::<Labels, Gauge>::default();
    for s in &slots {
        let Some(name) = s.get("name").and_then(serde_json::Value::as_str) else { continue };
        let mut l = labels.clone();
        l.push(("slot".into(), name.to_string()));
        if let Some(v) = s.get("lag_bytes").and_then(serde_json::Value::as_i64) {
            lag.get_or_create(&l).set(v);
        }
        if let Some(v) = s.get("wal_retained_bytes").and_then(serde_json::Value::as_i64) {
            retained.get_or_create(&l).set(v);
        }
        if let Some(r) = s.get("readiness").and_then(serde_json::Value::as_str) {
            ready.get_or_create(&l).set(i64::from(r == "Ready"));
        }
    }
    registry.register("keel_slot_lag_bytes", "Bytes a slot on this node is behind the primary's copy.", lag);
    registry.register("keel_slot_wal_retained_bytes", "WAL bytes a slot on this node holds back.", retained);
    registry.register("keel_slot_ready", "Value is 1 if a copied logical slot is safe to use after promotion.", ready);
    // Why copies are not ready (one series per slot with its reason code), and slots the leader cannot create.
    let unready = Family::<Labels, Gauge>::default();
    let listed = |key: &str| st.slots.get(key).and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
    for (key, code) in [("unready", "code"), ("slot_errors", "code")] {
        for u in listed(key) {
            let (Some(name), Some(c)) = (u.get("slot").and_then(|v| v.as_str()), u.get(code).and_then(|v| v.as_str()))
            else {
                continue;
            };
            let mut l = labels.clone();
            l.push(("slot".into(), name.to_string()));
            l.push(("reason".into(), c.to_string()));
            unready.get_or_create(&l).set(1);
        }
    }
    registry.register(
        "keel_slot_unusable",
        "Value is 1 for a logical slot that is not ready on this node (or that the leader cannot create), by reason.",
        unready,
    );
    let breaks = st.slots.get("continuity_breaks").and_then(serde_json::Value::as_array).map_or(0, Vec::len);
    let family = Family::<Labels, Gauge>::default();
    family.get_or_create(&labels).set(breaks as i64);
    registry.register(
        "keel_slot_continuity_breaks",
        "Permanent logical slots missing on this primary although consumers may have used them.",
        family,
    );
    // The promotion check of this node's last promotion, per permanent logical slot.
    let divergence = Family::<Labels, Gauge>::default();
    let redelivery = Family::<Labels, Gauge>::default();
    let checked =
        st.slots.pointer("/promotion/slots").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
    for s in &checked {
        let Some(name) = s.get("slot").and_then(serde_json::Value::as_str) else { continue };
        let mut l = labels.clone();
        l.push(("slot".into(), name.to_string()));
        let bytes = s.get("bytes").and_then(serde_json::Value::as_i64).unwrap_or(0);
        let verdict = s.get("verdict").and_then(serde_json::Value::as_str);
        divergence.get_or_create(&l).set(if verdict == Some("divergence") { bytes } else { 0 });
        redelivery.get_or_create(&l).set(if verdict == Some("redelivery") { bytes } else { 0 });
    }
    registry.register(
        "keel_slot_promotion_divergence_bytes",
        "At this node's last promotion: bytes a logical slot's consumers had confirmed past the end of this node's WAL.",
        divergence,
    );
    registry.register(
        "keel_slot_promotion_redelivery_bytes",
        "At this node's last promotion: bytes a logical slot's copy trailed the old primary (sent again).",
        redelivery,
    );
    // On the primary: how far each logical slot's consumer is ahead of each failover candidate's flushed WAL.
    let ahead_bytes = Family::<Labels, Gauge>::default();
    let sent_beyond = Family::<Labels, Gauge>::default();
    for a in listed("consumers_ahead") {
        let (Some(slot), Some(member)) =
            (a.get("slot").and_then(|v| v.as_str()), a.get("member").and_then(|v| v.as_str()))
        else {
            continue;
        };
        let mut l = labels.clone();
        l.push(("slot".into(), slot.to_string()));
        l.push(("member".into(), member.to_string()));
        if let Some(b) = a.get("bytes").and_then(serde_json::Value::as_i64) {
            ahead_bytes.get_or_create(&l).set(b);
        }
        let beyond = a.get("sent_beyond").and_then(serde_json::Value::as_bool).unwrap_or(false);
        sent_beyond.get_or_create(&l).set(i64::from(beyond));
    }
    registry.register(
        "keel_slot_consumer_ahead_bytes",
        "On the primary: bytes a logical slot's consumer confirmed past what a failover candidate has flushed.",
        ahead_bytes,
    );
    registry.register(
        "keel_slot_consumer_sent_beyond",
        "On the primary: 1 if a logical slot's consumer was sent a change a failover candidate has not flushed.",
        sent_beyond,
    );
    register_native(st, &labels, &mut registry);
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// The failover-slot mode, native readiness per failover slot, and the managed `synchronized_standby_slots`.
fn register_native(st: &NodeStatus, labels: &Labels, registry: &mut Registry) {
    use serde_json::Value;
    let mode = Family::<Labels, Gauge>::default();
    if let Some(m) = st.slots.get("failover_slots_mode").and_then(Value::as_str) {
        let mut l = labels.clone();
        l.push(("mode".into(), m.to_string()));
        mode.get_or_create(&l).set(1);
    }
    registry.register("keel_failover_slots_mode", "Value is 1 for the failover-slot mode in force.", mode);
    let ready = Family::<Labels, Gauge>::default();
    let rows = |ptr: &str| st.slots.pointer(ptr).and_then(Value::as_array).cloned().unwrap_or_default();
    for r in rows("/native/readiness") {
        let (Some(slot), Some(ok)) = (r.get("slot").and_then(Value::as_str), r.get("ready").and_then(Value::as_bool))
        else {
            continue;
        };
        let mut l = labels.clone();
        l.push(("slot".into(), slot.to_string()));
        ready.get_or_create(&l).set(i64::from(ok));
    }
    registry.register(
        "keel_failover_slot_synced_ready",
        "Native mode: value is 1 if this standby's synced copy of a failover slot is safe to use after promotion.",
        ready,
    );
    let listed = Family::<Labels, Gauge>::default();
    for m in rows("/native/synchronized_standby_slots/members") {
        let (Some(member), Some(on)) =
            (m.get("member").and_then(Value::as_str), m.get("listed").and_then(Value::as_bool))
        else {
            continue;
        };
        let mut l = labels.clone();
        l.push(("member".into(), member.to_string()));
        listed.get_or_create(&l).set(i64::from(on));
    }
    registry.register(
        "keel_synchronized_standby_slot_listed",
        "Native mode, primary: value is 1 if the member's slot is in synchronized_standby_slots.",
        listed,
    );
}

const POSTGRES_STATE_HELP: &str = "Numeric representation of PostgreSQL state: 0=initdb, 1=initdb_failed, \
    2=custom_bootstrap, 3=custom_bootstrap_failed, 4=creating_replica, 5=running, 6=starting, 7=bootstrap_starting, \
    8=start_failed, 9=restarting, 10=restart_failed, 11=stopping, 12=stopped, 13=stop_failed, 14=crashed.";

/// `patroni_version`: each semver part as two digits (`4.1.5` → 40105), 0 when the version does not parse.
fn padded_semver(version: &str) -> i64 {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    core.split('.').try_fold(0i64, |acc, part| part.parse::<i64>().ok().map(|p| acc * 100 + p.min(99))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patroni_versions() {
        assert_eq!(padded_semver("4.1.5"), 40105);
        assert_eq!(padded_semver("0.1.0-dev"), 100);
        assert_eq!(padded_semver("garbage"), 0);
    }

    #[test]
    fn renders_patroni_names_with_labels() {
        let st = NodeStatus {
            scope: "batman".into(),
            name: "n1".into(),
            state: keel_core::member_state::MemberState::Running,
            role: Some(Role::Primary),
            is_leader: true,
            timeline: Some(3),
            ..Default::default()
        };
        let text = render(&st).unwrap();
        assert!(text.contains("patroni_primary{scope=\"batman\",name=\"n1\"} 1"), "{text}");
        assert!(text.contains("patroni_postgres_timeline{scope=\"batman\",name=\"n1\"} 3"));
        assert!(text.contains("keel_leader_lock_held{scope=\"batman\",name=\"n1\"} 1"));
        assert!(text.contains("patroni_postgres_state{scope=\"batman\",name=\"n1\"} 5"), "{text}");
        assert!(text.contains("patroni_quorum_standby{scope=\"batman\",name=\"n1\"} 0"));
        assert!(text.contains("patroni_postmaster_start_time{scope=\"batman\",name=\"n1\"} 0"), "{text}");
        let st = NodeStatus {
            slots: serde_json::json!({"promotion": {"slots": [
                {"slot": "cdc", "verdict": "divergence", "bytes": 512},
                {"slot": "other", "verdict": "in_step"},
            ]}}),
            ..st
        };
        let text = render(&st).unwrap();
        assert!(
            text.contains("keel_slot_promotion_divergence_bytes{scope=\"batman\",name=\"n1\",slot=\"cdc\"} 512"),
            "{text}"
        );
        assert!(text.contains("keel_slot_promotion_redelivery_bytes{scope=\"batman\",name=\"n1\",slot=\"other\"} 0"));
        let st = NodeStatus {
            slots: serde_json::json!({
                "unready": [{"slot": "cdc", "code": "needs_missing_wal", "reason": "needs WAL"}],
                "slot_errors": [{"slot": "cdc2", "code": "database_missing", "error": "no database"}],
            }),
            ..st
        };
        let text = render(&st).unwrap();
        for (slot, reason) in [("cdc", "needs_missing_wal"), ("cdc2", "database_missing")] {
            let series =
                format!("keel_slot_unusable{{scope=\"batman\",name=\"n1\",slot=\"{slot}\",reason=\"{reason}\"}} 1");
            assert!(text.contains(&series), "{text}");
        }
        let st = NodeStatus {
            slots: serde_json::json!({"consumers_ahead": [
                {"slot": "cdc", "member": "n2", "bytes": 4096, "sent_beyond": true},
                {"slot": "cdc", "member": "n3", "bytes": null, "sent_beyond": false},
            ]}),
            ..st
        };
        let text = render(&st).unwrap();
        let l = |m: &str| format!("{{scope=\"batman\",name=\"n1\",slot=\"cdc\",member=\"{m}\"}}");
        assert!(text.contains(&format!("keel_slot_consumer_ahead_bytes{} 4096", l("n2"))), "{text}");
        assert!(!text.contains(&format!("keel_slot_consumer_ahead_bytes{}", l("n3"))), "{text}");
        assert!(text.contains(&format!("keel_slot_consumer_sent_beyond{} 1", l("n2"))), "{text}");
        assert!(text.contains(&format!("keel_slot_consumer_sent_beyond{} 0", l("n3"))), "{text}");
    }

    #[test]
    fn renders_the_native_failover_slot_series() {
        let st = NodeStatus {
            scope: "batman".into(),
            name: "n1".into(),
            slots: serde_json::json!({
                "failover_slots_mode": "native",
                "native": {
                    "readiness": [{"slot": "cdc", "ready": true}, {"slot": "own", "ready": false}],
                    "synchronized_standby_slots": {"value": "n2", "members": [
                        {"member": "n2", "listed": true}, {"member": "n3", "listed": false},
                    ]},
                },
            }),
            ..Default::default()
        };
        let text = render(&st).unwrap();
        for series in [
            "keel_failover_slots_mode{scope=\"batman\",name=\"n1\",mode=\"native\"} 1",
            "keel_failover_slot_synced_ready{scope=\"batman\",name=\"n1\",slot=\"cdc\"} 1",
            "keel_failover_slot_synced_ready{scope=\"batman\",name=\"n1\",slot=\"own\"} 0",
            "keel_synchronized_standby_slot_listed{scope=\"batman\",name=\"n1\",member=\"n2\"} 1",
            "keel_synchronized_standby_slot_listed{scope=\"batman\",name=\"n1\",member=\"n3\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing in {text}");
        }
    }
}
