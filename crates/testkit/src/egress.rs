//! The API server's way to nodes and pods. A real cluster's API server reaches a pod's IP for
//! `pods/proxy` (and logs, exec) directly or through konnectivity; ours runs on loopback with
//! pods that are network namespaces or host processes. [`EgressProxy`] is an HTTP CONNECT
//! proxy on a Unix socket that the API server's egress selector (`cluster` traffic) dials; it
//! connects each `pod IP:port` to where that pod really listens: a port inside a network
//! namespace, or a host address.
//!
//! ```text
//! kube-apiserver ──CONNECT 10.244.0.1:8085──► EgressProxy ──setns(node netns)──► 127.0.0.1:8085 (NMI)
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// Where a pod address really listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An address of the test process's own network namespace.
    Host(SocketAddr),
    /// An address inside the named network namespace (`ip netns` name).
    Netns { netns: String, addr: SocketAddr },
}

/// An HTTP CONNECT proxy for the API server's `cluster` egress; stops when dropped.
pub struct EgressProxy {
    routes: Arc<Mutex<HashMap<SocketAddr, Target>>>,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl EgressProxy {
    /// Listens on a fresh Unix socket. Needs a Tokio runtime.
    pub fn start() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("aadpodid-egress-").tempdir()?;
        let socket = dir.path().join("egress.sock");
        let listener = UnixListener::bind(&socket)?;
        let routes: Arc<Mutex<HashMap<SocketAddr, Target>>> = Arc::default();
        let table = Arc::clone(&routes);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let table = Arc::clone(&table);
                tokio::spawn(async move {
                    let _ = serve(conn, &table).await;
                });
            }
        });
        Ok(Self { routes, socket, task, _dir: dir })
    }

    /// The socket the API server dials.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Makes `pod_addr` (a pod IP and port as the API server sees them) reach `target`.
    pub fn route(&self, pod_addr: SocketAddr, target: Target) {
        self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(pod_addr, target);
    }

    /// The `EgressSelectorConfiguration` sending `cluster` traffic through this proxy.
    pub fn selector_config(&self) -> String {
        format!(
            "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        udsName: {}\n",
            self.socket.display()
        )
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One CONNECT: read the request head, connect, answer 200 (or 502), then relay bytes.
async fn serve(conn: UnixStream, routes: &Mutex<HashMap<SocketAddr, Target>>) -> std::io::Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let requested = line.split_whitespace().nth(1).and_then(|a| a.parse::<SocketAddr>().ok());
    loop {
        let mut header = String::new();
        if conn.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let target =
        requested.and_then(|a| routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&a).cloned());
    let upstream = match target {
        Some(t) => connect(t).await.ok(),
        None => None,
    };
    let mut conn = conn.into_inner();
    let Some(mut upstream) = upstream else {
        return conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n").await;
    };
    conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await.map(drop)
}

async fn connect(target: Target) -> std::io::Result<TcpStream> {
    match target {
        Target::Host(addr) => TcpStream::connect(addr).await,
        Target::Netns { netns, addr } => {
            // A socket belongs to the namespace it was created in: make it on a thread of its
            // own that enters the namespace (never a pooled thread).
            let std_stream = tokio::task::spawn_blocking(move || {
                std::thread::spawn(move || connect_in(&netns, addr))
                    .join()
                    .map_err(|_| std::io::Error::other("thread"))?
            })
            .await
            .map_err(std::io::Error::other)??;
            std_stream.set_nonblocking(true)?;
            TcpStream::from_std(std_stream)
        }
    }
}

fn connect_in(netns: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let file = std::fs::File::open(format!("/var/run/netns/{netns}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::other)?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}
