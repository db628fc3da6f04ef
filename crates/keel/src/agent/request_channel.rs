//! The request-reply channel from the REST API to the HA loop, for the operations only the agent may perform
//! (restart, reload, reinitialize).
//!
//! The API owns an [`AgentHandle`] (a `tokio::sync::mpsc::Sender<AgentRequest>`); the agent owns the matching
//! receiver from [`agent_channel`] and must, between or during its cycles:
//!
//! - drain the receiver (`try_recv` each cycle, or `select!` on `recv` while sleeping, so a request is picked up
//!   within `loop_wait` at worst);
//! - answer every request that carries a `reply` exactly once, with the [`AgentReply`] documented on each variant.
//!   Dropping a reply sender without answering makes the API answer `503 the HA loop did not answer`;
//! - treat [`AgentRequest::Wakeup`] as "run the next cycle now" (it has no reply).
//!
//! The API has already checked authentication and validated the request body (and, for an immediate restart, the
//! filters against the latest [`NodeStatus`](crate::status::NodeStatus)); the agent re-checks what only it can
//! know (an action already in progress, the state at the scheduled time).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// The answer to an [`AgentRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReply {
    /// Done (or started, for asynchronous actions); the message is sent to the client.
    Done(String),
    /// Accepted for later (a scheduled restart).
    Scheduled(String),
    /// Refused because something conflicting is already scheduled or running.
    Conflict(String),
    /// Could not be done; the message says why.
    Failed(String),
}

/// Where the agent sends its [`AgentReply`].
pub type ReplyTo = oneshot::Sender<AgentReply>;

/// `POST /restart` after validation. Filters that are `None`/`false` do not restrict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestartRequest {
    /// Restart only when this node has this role (`primary`, `standby_leader` or `replica`).
    pub role: Option<String>,
    /// Restart only when the running server version (`server_version_num`, e.g. 150002) is below this one.
    pub postgres_version: Option<u32>,
    /// Restart only when PostgreSQL reports a pending restart.
    pub restart_pending: bool,
    /// Give up (and report failure) when the restart takes longer than this.
    pub timeout: Option<Duration>,
    /// ISO 8601 instant with a time zone, in the future (already checked), when the restart should happen.
    /// `None`: restart now.
    pub schedule: Option<String>,
}

/// What the API asks the HA loop to do.
#[derive(Debug)]
pub enum AgentRequest {
    /// Restart PostgreSQL (Patroni's `Ha.restart` / `schedule_future_restart`). Reply:
    /// - immediate (`schedule: None`): `Done("restarted successfully")` (200) or `Failed(reason)` (503), e.g.
    ///   `"restart conditions are not satisfied"`, `"<action> already in progress"`, `"postgres is still starting"`;
    /// - scheduled: `Scheduled("Restart scheduled")` (202) or `Conflict("Another restart is already scheduled")`
    ///   (409).
    Restart { request: RestartRequest, reply: ReplyTo },
    /// `DELETE /restart`: drop the scheduled restart. Reply `Done(..)` (200) when one was deleted, `Failed(..)`
    /// (404) when none was scheduled.
    CancelScheduledRestart { reply: ReplyTo },
    /// Re-read the local configuration file and apply it (Patroni's SIGHUP). Reply `Done(..)` once the reload was
    /// queued (the API answers 202 `reload scheduled`), `Failed(reason)` (503) if it cannot be.
    Reload { reply: ReplyTo },
    /// Wipe the data directory and clone again (with `from_leader`, take the base backup from the leader even
    /// when a `clonefrom` member could serve it). Patroni's `force` (cancel a running asynchronous action first)
    /// is accepted by the API and has nothing to cancel here: Keel runs every action inside its loop.
    /// Reply `Done(..)` (200 `reinitialize started`) or `Failed(reason)` (503), e.g. `"I am the leader, can not
    /// reinitialize"`, `"Cluster has no leader, can not reinitialize"`, `"<action> already in progress"`.
    Reinitialize { from_leader: bool, reply: ReplyTo },
    /// Re-create a permanent logical slot despite a continuity break (`keel slots recreate NAME`). Reply
    /// `Done(..)` when the leader will create it in its next cycle, `Failed(reason)` (412) when this node is not
    /// the leader or the slot is not a permanent logical slot.
    RecreateSlot { slot: String, reply: ReplyTo },
    /// Something in the store changed on the API's initiative (config, failover key): run the next cycle now.
    /// No reply.
    Wakeup,
}

/// Why the agent could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentUnavailable {
    #[error("the HA loop is not running")]
    Closed,
    #[error("the HA loop did not answer")]
    NoAnswer,
    #[error("the HA loop did not answer within {0:?}")]
    Timeout(Duration),
}

/// The API's side of the channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    tx: mpsc::Sender<AgentRequest>,
    /// How long a request-reply may take before the API gives up (the agent may still carry it out).
    reply_timeout: Duration,
}

/// How many requests may wait for the agent before senders wait for room.
pub const AGENT_QUEUE: usize = 16;

/// A connected pair: the handle for the API and the receiver for the agent loop.
pub fn agent_channel(reply_timeout: Duration) -> (AgentHandle, mpsc::Receiver<AgentRequest>) {
    let (tx, rx) = mpsc::channel(AGENT_QUEUE);
    (AgentHandle { tx, reply_timeout }, rx)
}

impl AgentHandle {
    /// Sends a request built around a fresh reply channel and waits for the answer (bounded by the reply timeout).
    pub async fn call(&self, build: impl FnOnce(ReplyTo) -> AgentRequest) -> Result<AgentReply, AgentUnavailable> {
        let (reply, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.reply_timeout;
        match tokio::time::timeout_at(deadline, self.tx.send(build(reply))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(AgentUnavailable::Closed),
            Err(_) => return Err(AgentUnavailable::Timeout(self.reply_timeout)),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(AgentUnavailable::NoAnswer),
            Err(_) => Err(AgentUnavailable::Timeout(self.reply_timeout)),
        }
    }

    /// Asks for an early cycle; never waits (a full queue already guarantees one).
    pub fn wakeup(&self) {
        let _ = self.tx.try_send(AgentRequest::Wakeup);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn call_gets_the_reply_or_reports_why_not() {
        let (h, mut rx) = agent_channel(Duration::from_secs(5));
        let agent = tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                match req {
                    AgentRequest::Reload { reply } => {
                        let _ = reply.send(AgentReply::Done("ok".into()));
                    }
                    AgentRequest::Reinitialize { reply, .. } => drop(reply),
                    _ => {}
                }
            }
        });
        assert_eq!(h.call(|reply| AgentRequest::Reload { reply }).await, Ok(AgentReply::Done("ok".into())));
        let no_answer = h.call(|reply| AgentRequest::Reinitialize { from_leader: false, reply }).await;
        assert_eq!(no_answer, Err(AgentUnavailable::NoAnswer));
        agent.abort();
        let _ = agent.await;
        assert_eq!(h.call(|reply| AgentRequest::Reload { reply }).await, Err(AgentUnavailable::Closed));
    }

    #[tokio::test]
    async fn call_times_out() {
        let (h, _rx) = agent_channel(Duration::from_millis(50));
        let r = h.call(|reply| AgentRequest::Reload { reply }).await;
        assert_eq!(r, Err(AgentUnavailable::Timeout(Duration::from_millis(50))));
    }
}
