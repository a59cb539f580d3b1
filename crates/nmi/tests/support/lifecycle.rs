//! Pieces for NMI's start-up and shutdown tests: a tap on the node's IMDS address that records
//! which sources reach it (a pod's address there means the pod bypassed NMI), a relay to the
//! API server that holds connections until released (watches that cannot sync), and plain
//! HTTP requests to 169.254.169.254 sent from inside a pod's network namespace.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aadpodid_testkit::netns::{IMDS_IP, Namespace, Node, Pod};
use nix::sched::{CloneFlags, setns};

// === ImdsTap ===

/// The node's IMDS address, relayed to the simulator's IMDS; remembers each connection's source.
pub struct ImdsTap {
    hits: Arc<Mutex<Vec<(Instant, IpAddr)>>>,
}

impl ImdsTap {
    /// Binds 169.254.169.254:80 in `node` and relays every connection to `target`.
    pub fn start(node: &Node, target: SocketAddr) -> Self {
        let listener = node.imds_listener().expect("bind the node's IMDS address");
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, peer)) = listener.accept().await {
                seen.lock().unwrap().push((Instant::now(), peer.ip()));
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { hits }
    }

    /// When connections from `ip` reached the node's IMDS.
    pub fn hits_from(&self, ip: Ipv4Addr) -> Vec<Instant> {
        self.hits.lock().unwrap().iter().filter(|(_, peer)| *peer == IpAddr::V4(ip)).map(|(at, _)| *at).collect()
    }
}

// === HeldRelay ===

/// A relay to the API server inside a namespace whose connections wait until [`HeldRelay::release`].
pub struct HeldRelay {
    pub addr: SocketAddr,
    release_tx: tokio::sync::watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
}

impl HeldRelay {
    pub fn start(ns: &Namespace, target: SocketAddr) -> Self {
        let listener = ns.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind the held relay");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut release_rx = release_rx.clone();
                tokio::spawn(async move {
                    if release_rx.wait_for(|released| *released).await.is_err() {
                        return;
                    }
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, release_tx, accepted }
    }

    /// Connections accepted so far (held or relayed).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Relays the held connections and every later one.
    pub fn release(&self) {
        self.release_tx.send_replace(true);
    }
}

// === Requests from a pod ===

/// What a pod's request to 169.254.169.254 got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing listens where the request went (NMI gone, rules kept).
    Refused,
    Http {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
    Failed(String),
}

impl Reply {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Refused | Self::Failed(_) => None,
        }
    }
}

/// Runs `f` on a new thread inside the named network namespace (a pooled thread must never
/// change its namespace).
fn in_netns<T: Send + 'static>(ns: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let path = format!("/var/run/netns/{ns}");
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// `GET http://169.254.169.254<path>` with `Metadata: true`, one fresh connection.
fn request(path: &str, timeout: Duration) -> Reply {
    let addr = SocketAddr::from((IMDS_IP, 80));
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Reply::Refused,
        Err(e) => return Reply::Failed(e.to_string()),
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    if let Err(e) = stream.write_all(req.as_bytes()).and_then(|()| stream.read_to_end(&mut raw)) {
        return Reply::Failed(e.to_string());
    }
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> Reply {
    let Some((head, body)) = raw.split_once("\r\n\r\n") else { return Reply::Failed(format!("no HTTP reply: {raw}")) };
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
    let Some(status) = status else { return Reply::Failed(format!("no status line: {raw}")) };
    let retry_after = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("retry-after"))
        .map(|(_, value)| value.trim().to_owned());
    Reply::Http { status, retry_after, body: body.to_owned() }
}

/// One request from inside `pod` (5 s timeout).
pub async fn get(pod: &Pod, path: &str) -> Reply {
    let (ns, path) = (pod.ns.name().to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || in_netns(ns, move || request(&path, Duration::from_secs(5)))).await.unwrap()
}

// === Prober ===

/// Requests from inside a pod every `every`, each on a fresh connection, until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<(Instant, Reply)>>,
}

impl Prober {
    pub fn start(pod: &Pod, path: &str, every: Duration) -> Self {
        let (ns, path) = (pod.ns.name().to_owned(), path.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicUsize::new(0));
        let (stopping, counter) = (stop.clone(), made.clone());
        let thread = std::thread::spawn(move || {
            in_netns(ns, move || {
                let mut replies = Vec::new();
                while !stopping.load(Ordering::SeqCst) {
                    let at = Instant::now();
                    replies.push((at, request(&path, Duration::from_secs(1))));
                    counter.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(every.saturating_sub(at.elapsed()));
                }
                replies
            })
        });
        Self { stop, made, thread }
    }

    /// Requests made so far.
    pub fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    /// Stops probing; every request made, with when it was sent.
    pub async fn stop(self) -> Vec<(Instant, Reply)> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("prober panicked")).await.unwrap()
    }
}
