//! A TCP relay between one client and the API server that can model a network partition:
//! frozen, it forwards nothing in either direction but keeps every socket open; a client that
//! closes its side meanwhile loses whatever it had sent (nothing reaches the server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// A running relay; stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    /// Bytes delivered from clients to the server.
    to_server: AtomicU64,
    /// Connections accepted.
    accepted: AtomicU64,
}

impl Relay {
    /// Listens on a free local port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (frozen, _) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let (rx, st) = (frozen.subscribe(), stats.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::Relaxed);
                conns.spawn(connection(client, upstream, rx.clone(), st.clone()));
            }
        });
        Relay { addr, frozen, stats, task }
    }

    /// Stops forwarding in both directions; sockets stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again whatever the still-open connections hold, and anything new.
    pub fn unfreeze(&self) {
        self.frozen.send_replace(false);
    }

    /// Bytes delivered to the server so far.
    pub fn bytes_to_server(&self) -> u64 {
        self.stats.to_server.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_unfrozen(frozen: &mut watch::Receiver<bool>) -> bool {
    frozen.wait_for(|f| !*f).await.is_ok()
}

/// One relayed connection. The client is always read (so its close is seen at once); what it
/// sends waits in a queue while frozen. The server is read only while not frozen. When either
/// side closes, everything of this connection is dropped, queued bytes included.
async fn connection(client: TcpStream, upstream: SocketAddr, frozen: watch::Receiver<bool>, stats: Arc<Stats>) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let (queue_tx, mut queue_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = client_rx.read(&mut buf).await {
            if n == 0 || queue_tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut up_frozen = frozen.clone();
    tasks.spawn(async move {
        while let Some(chunk) = queue_rx.recv().await {
            if !wait_unfrozen(&mut up_frozen).await || server_tx.write_all(&chunk).await.is_err() {
                break;
            }
            stats.to_server.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let mut down_frozen = frozen;
    tasks.spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if !wait_unfrozen(&mut down_frozen).await {
                break;
            }
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !wait_unfrozen(&mut down_frozen).await || client_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    // The first side to finish ends the connection: the rest is aborted and its sockets closed.
    let _ = tasks.join_next().await;
    tasks.abort_all();
}
