//! NMI's listener on real sockets: connection caps per pod and per node, the header read and
//! idle timeouts, each pod's request rate and the node's requests in flight. Pods are loopback
//! source addresses (127.0.0.2, 127.0.0.3, ...), which Linux accepts without configuration.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aadpodid_api::{AssignedIdentityState, AzureIdentitySpec};
use aadpodid_nmi::limits::{Limits, Rate};
use aadpodid_nmi::metrics::Metrics;
use aadpodid_nmi::select::RetryPolicy;
use aadpodid_nmi::server::{AppState, Config};
use support::{CountingTokens, FixedNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const VICTIM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const ACCOMPLICE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// A pod with no identity: its token requests wait out the identity retries.
const WAITER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const TOKEN_REQUEST: &str = "GET /metadata/identity/oauth2/token?resource=https%3A%2F%2Fvault.azure.net HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n";

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
        max_connections: 64,
        max_connections_per_pod: 4,
        max_requests_in_flight: 64,
        pod_rate: Rate { per_second: 0, burst: 1 },
        ..Limits::default()
    }
}

/// NMI's listener on 127.0.0.1 with pods at the four addresses above (all but the waiter with an identity).
async fn start(limits: Limits) -> (SocketAddr, Arc<CountingTokens>) {
    let node = Arc::new(FixedNode::default());
    for (name, ip) in [("attacker", ATTACKER), ("victim", VICTIM), ("accomplice", ACCOMPLICE), ("waiter", WAITER)] {
        node.add_pod("apps", name, IpAddr::V4(ip));
        if name != "waiter" {
            let spec = AzureIdentitySpec { client_id: Some(format!("client-{name}")), ..Default::default() };
            node.assign(("apps", name), AssignedIdentityState::Assigned, &format!("id-{name}"), spec);
        }
    }
    let tokens = Arc::new(CountingTokens::default());
    let config = Config {
        retry: RetryPolicy { created: 40, assigned: 1, interval_secs: 0 },
        retry_interval: Duration::from_millis(100),
        limits,
        ..Config::default()
    };
    let state = AppState::new(config, node, tokens.clone(), Metrics::new().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = state.config.limits.clone();
    tokio::spawn(aadpodid_nmi::listener::serve(listener, aadpodid_nmi::server::router(state), limits));
    (addr, tokens)
}

async fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((src, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends one token request and reads its answer (the connection is closed after it).
async fn token_from(src: Ipv4Addr, addr: SocketAddr) -> (u16, String) {
    let mut conn = connect_from(src, addr).await;
    conn.write_all(format!("{TOKEN_REQUEST}Connection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_string(&mut answer)).await.unwrap().unwrap();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// Waits until the server closes `conn` (EOF or reset); returns how long that took.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), conn.read(&mut buf)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

fn still_open(conn: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(conn.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Opens `n` connections from `src` that send a request head one byte at a time, forever.
async fn slowloris(src: Ipv4Addr, addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let conn = connect_from(src, addr).await;
        conn.writable().await.unwrap();
        conns.push(conn);
    }
    for conn in &conns {
        conn.try_write(b"G").unwrap();
    }
    conns
}

#[tokio::test]
async fn a_slowloris_pod_holds_only_its_own_connections_and_loses_them_at_the_header_timeout() {
    let (addr, tokens) = start(limits()).await;
    let mut slow = slowloris(ATTACKER, addr, 4).await;
    let trickle: Vec<_> = TOKEN_REQUEST.bytes().skip(1).collect();

    let mut fifth = connect_from(ATTACKER, addr).await;
    closed_within(&mut fifth, Duration::from_secs(1)).await;
    assert!(slow.iter().all(still_open), "the pod's first four connections are kept");

    let started = Instant::now();
    let (status, answer) = token_from(VICTIM, addr).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("issued-for-client-victim"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1), "served at once: {:?}", started.elapsed());

    // Byte by byte does not extend the deadline: each slow head is cut at the header timeout.
    let mut sent = 0;
    let cut = loop {
        for conn in &slow {
            let _ = conn.try_write(&trickle[sent % trickle.len()..=sent % trickle.len()]);
        }
        sent += 1;
        if slow.iter().all(|c| !still_open(c)) {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "slow heads never cut");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(cut >= Duration::from_millis(1500), "cut at the header timeout, not before: {cut:?}");
    for conn in &mut slow {
        closed_within(conn, Duration::from_secs(1)).await;
    }
    let (status, _) = token_from(ATTACKER, addr).await;
    assert_eq!(status, 200, "the slots are given back");
    assert_eq!(tokens.issued(), 2);
}

#[tokio::test]
async fn the_node_cap_closes_new_connections_beyond_it() {
    let (addr, _) = start(Limits { max_connections: 6, ..limits() }).await;
    let _slow = slowloris(ATTACKER, addr, 4).await;
    let _more = slowloris(ACCOMPLICE, addr, 2).await;
    let mut victim = connect_from(VICTIM, addr).await;
    closed_within(&mut victim, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_new_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let (addr, _) = start(limits()).await;
    let mut silent = connect_from(VICTIM, addr).await;
    let took = closed_within(&mut silent, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn a_kept_alive_connection_may_idle_longer_than_the_header_timeout() {
    let (addr, _) =
        start(Limits { header_read_timeout: Duration::from_secs(1), idle_timeout: Duration::from_secs(4), ..limits() })
            .await;
    let mut conn = connect_from(VICTIM, addr).await;
    conn.write_all(format!("{TOKEN_REQUEST}\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idled = closed_within(&mut conn, Duration::from_secs(15)).await;
    assert!(idled >= Duration::from_millis(3500), "idle timeout, not header timeout: {idled:?}");
}

#[tokio::test]
async fn a_pod_over_its_rate_gets_429_with_retry_after_and_others_are_served() {
    let (addr, tokens) = start(Limits { pod_rate: Rate { per_second: 1, burst: 3 }, ..limits() }).await;
    for _ in 0..3 {
        assert_eq!(token_from(ATTACKER, addr).await.0, 200);
    }
    let (status, answer) = token_from(ATTACKER, addr).await;
    assert_eq!(status, 429, "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "{answer}");
    assert!(!answer.contains("issued-for"), "{answer}");
    assert_eq!(token_from(VICTIM, addr).await.0, 200, "another pod has its own budget");
    assert_eq!(tokens.issued(), 4);
}

#[tokio::test]
async fn requests_beyond_the_node_in_flight_cap_get_503_with_retry_after() {
    let (addr, _) = start(Limits { max_requests_in_flight: 1, ..limits() }).await;
    let waiting = tokio::spawn(token_from(WAITER, addr));
    let started = Instant::now();
    let refused = loop {
        let (status, answer) = token_from(VICTIM, addr).await;
        if status == 503 {
            break answer;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "the waiting request never held the slot");
    };
    assert!(refused.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"), "{refused}");
    assert_eq!(waiting.await.unwrap().0, 404, "the waiting pod has no identity");
    assert_eq!(token_from(VICTIM, addr).await.0, 200, "the slot is given back");
}
