//! A slow or abusive client cannot starve the health checks: while hundreds of idle connections, half-sent
//! headers, stalled bodies and oversized bodies hit the REST API, `/health` keeps answering within a second, and
//! the abusive connections are closed by the header, body and idle timeouts.

mod restkit;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::api::listener::Limits;
use keel::api::tls::{ServerTls, ServerTlsFiles, VerifyClient};
use keel::cli::tls::http_client;
use keel_testkit::TestPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: Limits = Limits {
    max_connections: 64,
    handshake_timeout: Duration::from_secs(2),
    header_timeout: Duration::from_secs(2),
    body_timeout: Duration::from_secs(2),
    idle_timeout: Duration::from_secs(3),
    max_body: 64 * 1024,
};

/// `/health` on a fresh connection every 200 ms for `span`; every answer must be 200 within a second.
async fn health_keeps_answering(client: &reqwest::Client, url: &str, span: Duration) {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < span {
        let t = Instant::now();
        let r = client.get(url).timeout(Duration::from_secs(1)).send().await;
        let status = r.map(|r| r.status().as_u16()).unwrap_or_else(|e| panic!("/health #{n} failed: {e:?}"));
        assert_eq!(status, 200, "/health #{n}");
        assert!(t.elapsed() < Duration::from_secs(1), "/health #{n} took {:?}", t.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens `n` connections that send nothing (or only part of a request header, when `partial`).
async fn flood(port: u16, n: usize, partial: bool) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else { continue };
        if partial {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        }
        conns.push(s);
    }
    conns
}

/// Whether the server closed `s` (EOF, reset, or an error status followed by the close) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn plain_client() -> reqwest::Client {
    keel::cli::tls::install_crypto_provider();
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_through_idle_floods_slow_headers_and_big_bodies() {
    let srv = restkit::start(None, None, LIMITS).await;
    let port = srv.addr.port();
    let base = format!("http://127.0.0.1:{port}");
    let client = plain_client();

    // Many more idle and half-sent connections than the limit.
    let mut idle = flood(port, 150, false).await;
    let mut slow = flood(port, 50, true).await;
    // A trickle of header bytes does not keep a connection alive past the header timeout.
    let mut trickle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    trickle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    health_keeps_answering(&client, &format!("{base}/health"), Duration::from_secs(2)).await;
    for _ in 0..10 {
        if trickle.write_all(b"X-A: b\r\n").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(closed_by_server(&mut trickle, Duration::from_secs(3)).await, "slow headers outlived the timeout");

    // An oversized body is refused from its Content-Length, before the server waits for it.
    let mut big = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let t = Instant::now();
    big.write_all(
        b"PATCH /config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), big.read(&mut head)).await.expect("413 in time").unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&head[..n]));
    assert!(t.elapsed() < Duration::from_secs(1));
    // A chunked body past the limit is cut off too.
    let chunk = vec![b'x'; 100 * 1024];
    let r = client.post(format!("{base}/config")).body(chunk).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // A stalled body is given up after the body timeout.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stalled.write_all(b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\"").await.unwrap();
    health_keeps_answering(&client, &format!("{base}/health"), Duration::from_secs(1)).await;
    assert!(closed_by_server(&mut stalled, Duration::from_secs(4)).await, "a stalled body outlived the timeout");

    // The idle and half-sent connections are closed by the server (evicted or timed out), not kept forever.
    for s in idle.iter_mut().chain(slow.iter_mut()).take(20) {
        assert!(closed_by_server(s, Duration::from_secs(6)).await, "an idle connection was kept open");
    }
    health_keeps_answering(&client, &format!("{base}/health"), Duration::from_secs(1)).await;
    // The unsafe endpoints answer as well (failsafe is off here: 502, promptly).
    let r = client.post(format!("{base}/failsafe")).body("{}").timeout(Duration::from_secs(1)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_that_never_come_do_not_lock_out_health_checks() {
    let pki = TestPki::generate().expect("certificates");
    let files = ServerTlsFiles {
        certfile: pki.path("server.pem"),
        keyfile: Some(pki.path("server.key")),
        cafile: None,
        verify_client: VerifyClient::None,
        ciphers: None,
        keyfile_password: None,
    };
    let srv = restkit::start(Some(Arc::new(ServerTls::new(files).unwrap())), None, LIMITS).await;
    let port = srv.addr.port();
    let cfg = restkit::config("", &format!("  cacert: {}\n", pki.path("ca.pem").display()));
    let client = http_client(&cfg, Duration::from_secs(1)).unwrap();
    let mut silent = flood(port, 150, false).await;
    health_keeps_answering(&client, &format!("https://127.0.0.1:{port}/health"), Duration::from_secs(3)).await;
    for s in silent.iter_mut().take(20) {
        assert!(closed_by_server(s, Duration::from_secs(6)).await, "a silent TLS connection was kept open");
    }
}
