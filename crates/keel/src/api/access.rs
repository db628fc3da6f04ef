//! Who may call the REST API's unsafe methods (everything but GET, HEAD and OPTIONS), as Patroni's
//! `check_access`: `restapi.allowlist` (addresses, networks, host names) and `allowlist_include_members` (the
//! members' `api_url` hosts) first (403 "Access is denied"), then the client certificate when `verify_client` asks
//! for one (403), then basic auth (401, in each handler).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use keel_core::view::ClusterView;
use tracing::warn;

use super::listener::Peer;
use super::server::BasicAuth;
use crate::config::RestApi;
use crate::dcs::{ClusterStore, KvBackend};

/// The endpoints that accept unsafe methods, for the start-up warning when no authentication protects them.
pub const WRITE_ENDPOINTS: &str = "PATCH/PUT /config, POST /switchover, DELETE /switchover, POST /failover, \
     POST /restart, DELETE /restart, POST /reload, POST /reinitialize, POST /failsafe, POST /slots/recreate";

/// `restapi.allowlist` resolved to networks, and `allowlist_include_members`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub networks: Vec<IpNet>,
    pub include_members: bool,
}

impl Allowlist {
    /// Whether any address check applies (to a request that `with_members` may be judged by member addresses).
    pub fn applies(&self, with_members: bool) -> bool {
        !self.networks.is_empty() || (with_members && self.include_members)
    }

    /// Whether `ip` is in the list or among `members` (the members' resolved addresses).
    pub fn allows(&self, ip: IpAddr, members: &[IpAddr]) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip)) || members.contains(&ip)
    }
}

/// Access settings of the `restapi` section, checked: an allowlist entry that is neither an address, a network nor
/// a resolvable host name, and `authentication` with only one of username/password, are refused.
pub async fn from_config(rest: &RestApi) -> Result<(Allowlist, Option<BasicAuth>), String> {
    let mut networks = Vec::new();
    for entry in rest.allowlist.iter().flatten() {
        networks.extend(resolve_entry(entry).await?);
    }
    let allowlist = Allowlist { networks, include_members: rest.allowlist_include_members.unwrap_or(false) };
    let auth = match rest.authentication.as_ref().map(|a| (&a.username, &a.password)) {
        None | Some((None, None)) => None,
        Some((Some(u), Some(p))) => Some(BasicAuth { username: u.clone(), password: p.clone() }),
        Some(_) => {
            return Err("restapi.authentication needs both username and password (with one only, the API would \
                        accept anyone)"
                .into())
        }
    };
    Ok((allowlist, auth))
}

/// The one start-up warning when nothing protects the write endpoints (Patroni's default, kept for
/// compatibility).
pub fn open_endpoints_warning(allowlist: &Allowlist, auth: Option<&BasicAuth>) -> Option<String> {
    if auth.is_some() {
        return None;
    }
    let limited = if allowlist.applies(true) { " (limited to the allowlist's addresses)" } else { "" };
    Some(format!(
        "restapi.authentication is not set: anyone who can reach the REST API{limited} may call {WRITE_ENDPOINTS}; \
         set restapi.authentication (and ctl.authentication for keel's commands) to require credentials"
    ))
}

async fn resolve_entry(entry: &str) -> Result<Vec<IpNet>, String> {
    let entry = entry.trim();
    if entry.contains('/') {
        let net: IpNet = entry.parse().map_err(|e| format!("restapi.allowlist {entry:?} is not a network: {e}"))?;
        return Ok(vec![net.trunc()]);
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(vec![IpNet::from(ip.to_canonical())]);
    }
    let ips = resolve(entry, 8080).await;
    if ips.is_empty() {
        return Err(format!("restapi.allowlist {entry:?} is not an address, a network or a resolvable host name"));
    }
    Ok(ips.into_iter().map(IpNet::from).collect())
}

/// The addresses of `host` (an address, or a name looked up within a second); empty when it does not resolve.
pub async fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip.to_canonical()];
    }
    match tokio::time::timeout(Duration::from_secs(1), tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip().to_canonical()).collect(),
        Ok(Err(e)) => {
            warn!("cannot resolve {host}: {e}");
            Vec::new()
        }
        Err(_) => {
            warn!("resolving {host} took longer than a second");
            Vec::new()
        }
    }
}

/// The host of a URL such as `https://10.0.0.2:8008/patroni`, and its port (80/443 by scheme when absent).
pub fn url_host(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?.rsplit('@').next()?;
    let default = if scheme == "https" { 443 } else { 80 };
    match crate::config::split_port(authority) {
        Some((h, p)) => Some((h.to_string(), p)),
        None if !authority.is_empty() => Some((authority.to_string(), default)),
        None => None,
    }
}

/// The addresses of the members' `api_url` hosts, from the store (none when it cannot be read).
pub async fn member_addresses<K: KvBackend>(store: &ClusterStore<K>) -> Vec<IpAddr> {
    let Ok(range) = store.backend().range(store.prefix()).await else { return Vec::new() };
    let view = ClusterView::from_entries(range.entries);
    let mut ips = Vec::new();
    for (host, port) in view.members.values().filter_map(|m| m.api_url.as_deref().and_then(url_host)) {
        ips.extend(resolve(&host, port).await);
    }
    ips
}

/// Only a member of the cluster may announce itself as the failsafe primary: `name` must be in the failsafe key
/// the agent last read, and the request must come from an address of that member's `api_url` host (when the
/// server knows the peer's address).
pub async fn sender_is_member(
    members: Option<&BTreeMap<String, String>>,
    name: &str,
    peer: Option<Peer>,
) -> Result<(), String> {
    let Some(api_url) = members.and_then(|m| m.get(name)) else {
        return Err(format!("{name:?} is not a member of the cluster's failsafe key"));
    };
    let Some(peer) = peer else { return Ok(()) };
    let ips = match url_host(api_url) {
        Some((host, port)) => resolve(&host, port).await,
        None => Vec::new(),
    };
    if ips.contains(&peer.addr.ip().to_canonical()) {
        Ok(())
    } else {
        Err(format!("the request for member {name:?} came from {}, not from its api_url {api_url}", peer.addr.ip()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(yaml_allowlist: &[&str]) -> RestApi {
        RestApi {
            listen: "127.0.0.1:8008".into(),
            connect_address: None,
            authentication: None,
            certfile: None,
            keyfile: None,
            cafile: None,
            verify_client: None,
            ciphers: None,
            keyfile_password: None,
            allowlist: Some(yaml_allowlist.iter().map(|s| s.to_string()).collect()),
            allowlist_include_members: None,
        }
    }

    #[tokio::test]
    async fn entries_are_networks_addresses_or_names() {
        let (a, _) = from_config(&rest(&["10.0.0.0/8", "192.168.1.7", "localhost"])).await.unwrap();
        assert!(a.allows("10.1.2.3".parse().unwrap(), &[]));
        assert!(a.allows("192.168.1.7".parse().unwrap(), &[]));
        assert!(a.allows("127.0.0.1".parse().unwrap(), &[]));
        assert!(!a.allows("192.168.1.8".parse().unwrap(), &[]));
        assert!(a.allows("::ffff:10.0.0.1".parse().unwrap(), &[]), "IPv4-mapped addresses count as IPv4");
        let err = from_config(&rest(&["10.0.0.0/99"])).await.unwrap_err();
        assert!(err.contains("10.0.0.0/99"), "{err}");
        let err = from_config(&rest(&["no-such-host.invalid"])).await.unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://10.0.0.2:8008/patroni"), Some(("10.0.0.2".into(), 8008)));
        assert_eq!(url_host("http://h/patroni"), Some(("h".into(), 80)));
        assert_eq!(url_host("postgres://u@[::1]:5432/db"), Some(("[::1]".into(), 5432)));
        assert_eq!(url_host("nonsense"), None);
    }

    #[test]
    fn the_warning_names_the_write_endpoints() {
        let w = open_endpoints_warning(&Allowlist::default(), None).unwrap();
        assert!(w.contains("POST /switchover") && w.contains("restapi.authentication"), "{w}");
        let auth = BasicAuth { username: "u".into(), password: "p".into() };
        assert_eq!(open_endpoints_warning(&Allowlist::default(), Some(&auth)), None);
    }
}
