//! The REST server's accept loop: plain HTTP or TLS, with limits so a slow or abusive client cannot starve the
//! health checks and `/failsafe`.
//!
//! - TLS handshakes and request headers must arrive within [`Limits::handshake_timeout`] /
//!   [`Limits::header_timeout`]; a request body within [`Limits::body_timeout`]; a body larger than
//!   [`Limits::max_body`] is refused with 413, from `Content-Length` before anything is read.
//! - A connection with no request in progress is closed after [`Limits::idle_timeout`].
//! - At most [`Limits::max_connections`] connections are kept: a new connection beyond that closes the connection
//!   idle for longest (none in a request), so a flood of idle or half-sent connections never locks out a health
//!   check; only when every connection is busy with a request is the new one refused.
//!
//! Handlers learn the peer's address and whether it presented a valid client certificate from the [`Peer`]
//! request extension.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::{debug, warn};

use super::tls::ServerTls;

/// The server's limits. The defaults suit a handful of monitoring systems, load balancers and peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 128,
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
        }
    }
}

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// A client certificate signed by `restapi.cafile` was presented (only with `verify_client`).
    pub client_cert: bool,
}

/// Serves `app` on `listener` until the listener fails for good.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<Arc<ServerTls>>, limits: Limits) {
    let app =
        app.layer(RequestBodyTimeoutLayer::new(limits.body_timeout)).layer(RequestBodyLimitLayer::new(limits.max_body));
    let conns = Arc::new(Conns::default());
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait for connections to close rather than spin.
                warn!("REST API: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(state) = conns.admit(limits.max_connections) else {
            debug!("REST API: refusing {addr}: all {} connections are busy", limits.max_connections);
            continue;
        };
        let (app, tls, conns) = (app.clone(), tls.clone(), conns.clone());
        tokio::spawn(async move {
            handle(tcp, addr, app, tls, limits, &state).await;
            conns.remove(state.id);
        });
    }
}

async fn handle(
    tcp: TcpStream,
    addr: SocketAddr,
    app: Router,
    tls: Option<Arc<ServerTls>>,
    limits: Limits,
    state: &Arc<ConnState>,
) {
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        serve_conn(tcp, Peer { addr, client_cert: false }, app, limits, state).await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let stream = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!("REST API: TLS handshake with {addr} failed: {e}");
                return;
            }
            Err(_) => return,
        },
        _ = state.close.notified() => return,
    };
    let client_cert = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
    serve_conn(stream, Peer { addr, client_cert }, app, limits, state).await;
}

async fn serve_conn<IO>(io: IO, peer: Peer, app: Router, limits: Limits, state: &Arc<ConnState>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = state.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer);
        let guard = InFlight::new(st.clone());
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await;
            drop(guard);
            resp
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!("REST API: connection from {}: {e}", peer.addr);
                }
                return;
            }
            _ = state.close.notified() => return,
            _ = tick.tick() => {
                if state.idle_for() > limits.idle_timeout {
                    return;
                }
            }
        }
    }
}

/// The open connections, to close the longest-idle one when the limit is reached.
#[derive(Default)]
struct Conns {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

struct ConnState {
    id: u64,
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` when the connection last became idle.
    idle_since: AtomicU64,
    close: Notify,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long no request has been in progress (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.now_ms().saturating_sub(self.idle_since.load(Ordering::SeqCst)))
    }
}

impl Conns {
    /// Registers a new connection, first closing the longest-idle one when `max` are open; `None` when all
    /// are busy with requests.
    fn admit(&self, max: usize) -> Option<Arc<ConnState>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= max.max(1) {
            let victim = open.values().filter(|c| c.in_flight.load(Ordering::SeqCst) == 0).max_by_key(|c| c.idle_for());
            let id = victim?.id;
            if let Some(v) = open.remove(&id) {
                v.close.notify_one();
            }
        }
        let state = Arc::new(ConnState {
            id: self.next.fetch_add(1, Ordering::SeqCst),
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            close: Notify::new(),
        });
        open.insert(state.id, state.clone());
        Some(state)
    }

    fn remove(&self, id: u64) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

/// Marks a request in progress on its connection; dropping it (also when the client goes away) ends it.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_makes_room() {
        let conns = Conns::default();
        let a = conns.admit(2).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = conns.admit(2).unwrap();
        let _busy = InFlight::new(b.clone());
        std::thread::sleep(Duration::from_millis(5));
        let c = conns.admit(2).expect("a is idle and makes room");
        assert!(!conns.open.lock().unwrap().contains_key(&a.id));
        let _busy_c = InFlight::new(c.clone());
        assert!(conns.admit(2).is_none(), "every connection is busy");
    }
}
