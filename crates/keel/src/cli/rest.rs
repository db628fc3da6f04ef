//! Calls to the members' REST APIs, as patronictl makes them: the member's `api_url` (e.g.
//! `http://10.0.0.2:8008/patroni`) with its path replaced by the endpoint, basic auth from
//! `ctl.authentication` or `restapi.authentication`, TLS from the `ctl` section (see [`crate::cli::tls`]).

use std::time::Duration;

use serde_json::Value;

use crate::cli::ctl::{CtlError, CtlResult};
use crate::config::Config;

/// How long connecting to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A member's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The member could not be asked: no API URL, connection refused, timeout, broken connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Rest {
    client: reqwest::Client,
    auth: Option<(String, Option<String>)>,
}

impl Rest {
    /// A client with the `ctl` section's TLS settings and its (or `restapi`'s) authentication, as patronictl.
    pub fn new(config: &Config) -> CtlResult<Rest> {
        let client = crate::cli::tls::http_client(config, CONNECT_TIMEOUT).map_err(CtlError::Usage)?;
        let auth = config.ctl_auth().and_then(|a| a.username.clone().map(|u| (u, a.password.clone())));
        Ok(Rest { client, auth })
    }

    /// `GET <api>/<endpoint>` as JSON (`None` when the answer is not JSON), waiting at most `timeout`.
    pub async fn get_json(
        &self,
        api_url: Option<&str>,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<(Reply, Option<Value>), Unreachable> {
        let reply = self.send(reqwest::Method::GET, api_url, endpoint, None, timeout).await?;
        let json = serde_json::from_str(&reply.body).ok();
        Ok((reply, json))
    }

    /// `DELETE <api>/<endpoint>`, waiting at most `timeout`.
    pub async fn delete(&self, api_url: Option<&str>, endpoint: &str, timeout: Duration) -> Result<Reply, Unreachable> {
        self.send(reqwest::Method::DELETE, api_url, endpoint, None, timeout).await
    }

    /// `POST <api>/<endpoint>` with a JSON body (none when `body` is `None`), waiting at most `timeout`.
    pub async fn post(
        &self,
        api_url: Option<&str>,
        endpoint: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, Unreachable> {
        self.send(reqwest::Method::POST, api_url, endpoint, body, timeout).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        api_url: Option<&str>,
        endpoint: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, Unreachable> {
        let api_url = api_url.ok_or_else(|| Unreachable("the member publishes no api_url".to_string()))?;
        let url = endpoint_url(api_url, endpoint)
            .ok_or_else(|| Unreachable(format!("the member's api_url {api_url:?} is not an http(s) URL")))?;
        let mut req = self.client.request(method, &url).timeout(timeout);
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, password.as_deref());
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| Unreachable(describe(&url, &e)))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| Unreachable(describe(&url, &e)))?;
        Ok(Reply { status, body: body.trim().to_string() })
    }
}

fn describe(url: &str, e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest nests its causes ("error sending request" > "client error" > "tcp connect error" > the OS error):
    // the innermost one says what happened.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    format!("{url}: {what} ({detail})")
}

/// `http://host:port/patroni` + `switchover` → `http://host:port/switchover` (Patroni replaces the path).
pub fn endpoint_url(api_url: &str, endpoint: &str) -> Option<String> {
    let (scheme, rest) = api_url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().filter(|a| !a.is_empty())?;
    Some(format!("{scheme}://{authority}/{}", endpoint.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_replaces_the_path() {
        assert_eq!(
            endpoint_url("http://127.0.0.1:8008/patroni", "switchover").as_deref(),
            Some("http://127.0.0.1:8008/switchover")
        );
        assert_eq!(endpoint_url("https://h:1", "/restart").as_deref(), Some("https://h:1/restart"));
        assert_eq!(endpoint_url("postgres://h:1/x", "restart"), None);
        assert_eq!(endpoint_url("http:///x", "restart"), None);
    }
}
