//! Failsafe mode, the primary's side: when the store is unreachable, ask every member listed in the `failsafe`
//! key to accept us (`POST /failsafe`, as Patroni does); only if all of them answer `200 Accepted` may this node
//! stay primary. Each member's `lsn` response header is returned for slot bookkeeping.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_core::lsn::Lsn;
use serde_json::{json, Value};
use tracing::warn;

/// Patroni's timeout for one failsafe POST.
pub const FAILSAFE_TIMEOUT: Duration = Duration::from_secs(2);

/// Result of one exchange: `None` if some member did not accept, else each member's reported WAL position.
pub async fn confirm(
    client: &reqwest::Client,
    me: &str,
    failsafe: Option<&BTreeMap<String, String>>,
    body: &Value,
    auth: Option<(&str, &str)>,
) -> Option<BTreeMap<String, Option<Lsn>>> {
    let members = failsafe?;
    if !members.contains_key(me) {
        warn!("failsafe: this node is not listed in the failsafe key; cannot stay primary without the store");
        return None;
    }
    let posts = members.iter().filter(|(name, _)| name.as_str() != me).map(|(name, api_url)| {
        let url = failsafe_url(api_url);
        let client = client.clone();
        async move {
            let mut req = client.post(&url).timeout(FAILSAFE_TIMEOUT).json(body);
            if let Some((u, p)) = auth {
                req = req.basic_auth(u, Some(p));
            }
            let outcome = match req.send().await {
                Ok(resp) if resp.status().as_u16() == 200 => {
                    let lsn = resp.headers().get("lsn").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
                    let body = resp.text().await.unwrap_or_default();
                    (body.trim() == "Accepted").then_some(lsn.map(Lsn))
                }
                Ok(resp) => {
                    warn!("failsafe: {name} answered {}", resp.status());
                    None
                }
                Err(e) => {
                    warn!("failsafe: {name} is not reachable: {e}");
                    None
                }
            };
            (name.clone(), outcome)
        }
    });
    let answers = futures::future::join_all(posts).await;
    let mut out = BTreeMap::new();
    for (name, outcome) in answers {
        out.insert(name, outcome?);
    }
    Some(out)
}

/// `http://host:port/failsafe` from a member's `api_url` (`http://host:port/patroni`).
fn failsafe_url(api_url: &str) -> String {
    let base = match api_url.find("://").map(|i| i + 3) {
        Some(start) => match api_url[start..].find('/') {
            Some(slash) => &api_url[..start + slash],
            None => api_url,
        },
        None => api_url,
    };
    format!("{base}/failsafe")
}

/// The body the primary announces itself with.
pub fn announcement(me: &str, conn_url: &str, api_url: &str, slots: &BTreeMap<String, Lsn>) -> Value {
    let slots: serde_json::Map<String, Value> = slots.iter().map(|(k, v)| (k.clone(), v.0.into())).collect();
    json!({"name": me, "conn_url": conn_url, "api_url": api_url, "slots": slots})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(failsafe_url("http://127.0.0.1:8008/patroni"), "http://127.0.0.1:8008/failsafe");
        assert_eq!(failsafe_url("http://h:1"), "http://h:1/failsafe");
    }

    #[tokio::test]
    async fn a_node_missing_from_the_key_cannot_stay() {
        crate::cli::tls::install_crypto_provider();
        let client = reqwest::Client::new();
        let mut m = BTreeMap::new();
        m.insert("other".to_string(), "http://127.0.0.1:9/patroni".to_string());
        assert!(confirm(&client, "me", Some(&m), &json!({}), None).await.is_none());
        assert!(confirm(&client, "me", None, &json!({}), None).await.is_none());
        m.clear();
        m.insert("me".to_string(), "http://127.0.0.1:9/patroni".to_string());
        assert_eq!(confirm(&client, "me", Some(&m), &json!({}), None).await, Some(BTreeMap::new()));
    }
}
