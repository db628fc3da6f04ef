//! Manual failovers and switchovers against the readiness gate: which logical slots would be at risk if the
//! requested member took over now. The REST API and the CLI refuse such a request unless it is forced, and say
//! which slots are at risk.

use std::fmt;

use super::config::{FailoverSlotReadiness, SlotsConfig};
use crate::view::ClusterView;

/// Members that could take over, each with the logical slots whose copies there are not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotsAtRisk {
    /// (member, unready slots); an empty slot list means the member publishes no readiness at all.
    pub members: Vec<(String, Vec<String>)>,
}

impl fmt::Display for SlotsAtRisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (member, slots)) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if slots.is_empty() {
                write!(f, "{member}: slot readiness unknown (not published)")?;
            } else {
                write!(f, "{member}: {} not ready", slots.join(", "))?;
            }
        }
        Ok(())
    }
}

/// The slots at risk if `candidate` (or, without one, whichever member the race picks) became the primary now.
/// `None` when the gate is off, when the candidate's copies are all ready, or, without a candidate, when at least
/// one member that could take over is ready (the race prefers it).
pub fn manual_failover_risk(view: &ClusterView, candidate: Option<&str>) -> Option<SlotsAtRisk> {
    let config = SlotsConfig::from_dynamic(&view.dynamic_config());
    if config.effective_gate() == FailoverSlotReadiness::Off {
        return None;
    }
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let unready = |name: &str| -> Option<Vec<String>> {
        match view.members.get(name).and_then(|m| m.slots_readiness.as_ref()) {
            Some(r) if r.ready => None,
            Some(r) => Some(r.unready.clone()),
            None => Some(Vec::new()),
        }
    };
    let members: Vec<(String, Vec<String>)> = match candidate {
        Some(c) => unready(c).map(|s| vec![(c.to_string(), s)]).unwrap_or_default(),
        None => {
            let could_take_over: Vec<&str> = view
                .members
                .values()
                .filter(|m| Some(m.name.as_str()) != leader && m.is_running() && !m.tags.no_failover())
                .map(|m| m.name.as_str())
                .collect();
            let at_risk: Vec<(String, Vec<String>)> =
                could_take_over.iter().filter_map(|n| unready(n).map(|s| (n.to_string(), s))).collect();
            if at_risk.len() < could_take_over.len() {
                Vec::new()
            } else {
                at_risk
            }
        }
    };
    (!members.is_empty()).then_some(SlotsAtRisk { members })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::RawEntry;

    fn view(config: &str, members: &[(&str, &str)]) -> ClusterView {
        let mut entries = vec![
            RawEntry { key: "config".into(), value: config.into(), mod_revision: 1, lease: 0 },
            RawEntry { key: "leader".into(), value: "n1".into(), mod_revision: 1, lease: 0 },
        ];
        for (name, data) in members {
            entries.push(RawEntry {
                key: format!("members/{name}"),
                value: data.to_string(),
                mod_revision: 1,
                lease: 0,
            });
        }
        ClusterView::from_entries(entries)
    }

    const LOGICAL: &str = r#"{"slots":{"cdc":{"type":"logical","database":"postgres","plugin":"test_decoding"}}}"#;
    const READY: &str = r#"{"state":"running","keel_slots":{"ready":true,"unready":[]}}"#;
    const UNREADY: &str = r#"{"state":"running","keel_slots":{"ready":false,"unready":["cdc"]}}"#;
    const SILENT: &str = r#"{"state":"running"}"#;

    #[test]
    fn named_candidate() {
        let v = view(LOGICAL, &[("n1", READY), ("n2", UNREADY), ("n3", READY), ("n4", SILENT)]);
        let risk = manual_failover_risk(&v, Some("n2")).unwrap();
        assert_eq!(risk.members, vec![("n2".to_string(), vec!["cdc".to_string()])]);
        assert_eq!(risk.to_string(), "n2: cdc not ready");
        assert_eq!(manual_failover_risk(&v, Some("n3")), None);
        assert_eq!(
            manual_failover_risk(&v, Some("n4")).unwrap().to_string(),
            "n4: slot readiness unknown (not published)"
        );
    }

    #[test]
    fn any_candidate_is_fine_while_one_is_ready() {
        let v = view(LOGICAL, &[("n1", READY), ("n2", UNREADY), ("n3", READY)]);
        assert_eq!(manual_failover_risk(&v, None), None);
        let v = view(LOGICAL, &[("n1", READY), ("n2", UNREADY), ("n3", SILENT)]);
        assert_eq!(
            manual_failover_risk(&v, None).unwrap().to_string(),
            "n2: cdc not ready; n3: slot readiness unknown (not published)"
        );
    }

    #[test]
    fn gate_off_or_no_logical_slots_means_no_risk() {
        let off = r#"{"failover_slot_readiness":"off","slots":{"cdc":{"type":"logical","database":"postgres","plugin":"test_decoding"}}}"#;
        assert_eq!(manual_failover_risk(&view(off, &[("n2", UNREADY)]), Some("n2")), None);
        assert_eq!(manual_failover_risk(&view("{}", &[("n2", UNREADY)]), Some("n2")), None);
        let no_slots = r#"{"postgresql":{"use_slots":false},"slots":{"cdc":{"type":"logical","database":"postgres","plugin":"test_decoding"}}}"#;
        assert_eq!(manual_failover_risk(&view(no_slots, &[("n2", UNREADY)]), Some("n2")), None);
    }
}
