//! Peer probes: `GET /patroni` of other members, in parallel, as the leader race needs them.

use std::time::Duration;

use keel_core::ha::{PeerProbe, PeerStatus, ProbeResult};
use keel_core::lsn::Lsn;
use keel_core::view::{ClusterView, Tags};
use serde_json::Value;

/// Patroni's probe timeout: 2 s, no retry.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the fields the leader race needs from a `/patroni` document. `None` when it is not one.
pub fn peer_status_from_json(v: &Value) -> Option<PeerStatus> {
    let obj = v.as_object()?;
    let state = obj.get("state").and_then(Value::as_str)?;
    let role = obj.get("role").and_then(Value::as_str).unwrap_or("");
    let xlog = obj.get("xlog");
    let get = |k: &str| xlog.and_then(|x| x.get(k)).and_then(Value::as_u64).map(Lsn);
    let in_recovery = !matches!(role, "primary" | "master");
    let wal_position = if in_recovery {
        match (get("received_location"), get("replayed_location")) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    } else {
        get("location")
    };
    Some(PeerStatus {
        pg_running: state == "running",
        in_recovery,
        wal_position,
        timeline: obj.get("timeline").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok()),
        tags: obj.get("tags").map(Tags::from_json).unwrap_or_default(),
    })
}

/// The URL to probe `name` at: its member key's `api_url`, else the one the `failsafe` key lists (a member
/// whose key expired during a store outage is still probed, as Patroni races against the failsafe members too).
fn probe_url(view: &ClusterView, name: &str) -> Option<String> {
    view.members
        .get(name)
        .and_then(|m| m.api_url.clone())
        .or_else(|| view.failsafe.as_ref().and_then(|f| f.get(name)).cloned())
}

/// Probes the named members concurrently (see [`probe_url`]). A member without a URL, or that does not answer a
/// `/patroni` document in time, is `Unreachable`.
pub async fn probe_peers(client: &reqwest::Client, view: &ClusterView, members: &[String]) -> Vec<PeerProbe> {
    let tasks = members.iter().map(|name| {
        let url = probe_url(view, name);
        let client = client.clone();
        let name = name.clone();
        async move {
            let result = match url {
                Some(url) => match fetch(&client, &url).await {
                    Some(st) => ProbeResult::Reachable(st),
                    None => ProbeResult::Unreachable,
                },
                None => ProbeResult::Unreachable,
            };
            PeerProbe { name, result }
        }
    });
    futures::future::join_all(tasks).await
}

async fn fetch(client: &reqwest::Client, url: &str) -> Option<PeerStatus> {
    let resp = client.get(url).timeout(PROBE_TIMEOUT).send().await.ok()?;
    let body: Value = resp.json().await.ok()?;
    peer_status_from_json(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_primary_and_replica_documents() {
        let p =
            peer_status_from_json(&json!({"state":"running","role":"primary","xlog":{"location":500},"timeline":2}))
                .unwrap();
        assert!(p.is_running_primary());
        assert_eq!(p.wal_position, Some(Lsn(500)));
        let r = peer_status_from_json(&json!({"state":"running","role":"replica",
            "xlog":{"received_location":400,"replayed_location":300},"tags":{"nofailover":true}}))
        .unwrap();
        assert!(r.in_recovery && r.tags.no_failover());
        assert_eq!(r.wal_position, Some(Lsn(400)));
        assert!(peer_status_from_json(&json!([1])).is_none());
        assert!(peer_status_from_json(&json!({"role":"replica"})).is_none());
    }

    #[test]
    fn members_listed_only_in_the_failsafe_key_are_probed_at_their_listed_url() {
        let listed = [("n1".to_string(), "http://127.0.0.1:8008/patroni".to_string())];
        let view = ClusterView { failsafe: Some(listed.into()), ..ClusterView::default() };
        assert_eq!(probe_url(&view, "n1").as_deref(), Some("http://127.0.0.1:8008/patroni"));
        assert_eq!(probe_url(&view, "n2"), None);
    }
}
