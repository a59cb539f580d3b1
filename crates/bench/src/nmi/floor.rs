//! The floor: the least any NMI could cost on this path. A minimal hyper HTTP/1.1 server that
//! answers every request with one fixed token body, bound in the node namespace on NMI's
//! address and port, behind the same DNAT rule NMI installs (which this module installs itself).

use std::net::{Ipv4Addr, SocketAddr};
use std::thread::JoinHandle;

use aadpodid_testkit::netns::{IMDS_IP, Node};
use anyhow::{Context as _, bail};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// NMI's default listen address and port (the DNAT target).
pub(crate) const NMI_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 2579);
/// The chain NMI (ours and the original) puts in `nat PREROUTING`.
const CHAIN: &str = "aad-metadata";

/// A running floor server; stopped (and its thread joined) on drop.
pub(crate) struct Floor {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Floor {
    /// Serves `body` on [`NMI_ADDR`] inside `node`, on a runtime with two workers (as many
    /// cores as NMI gets here).
    pub(crate) fn start(node: &Node, body: Bytes) -> anyhow::Result<Self> {
        let listener = node.ns.bind(NMI_ADDR).context("binding the floor server in the node")?;
        listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                tokio::select! {
                    () = accept_loop(listener, body) => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, body: Bytes) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move {
                    http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
                        .body(Full::new(body))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Installs NMI's chain in `node` as the original writes it (`-A aad-metadata ! -s 127.0.0.1/32
/// -d 169.254.169.254/32 -p tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579`, then
/// `RETURN`, jumped to first from `PREROUTING`).
pub(crate) fn install_dnat(node: &Node) -> anyhow::Result<()> {
    let rule =
        format!("-A {CHAIN} -p tcp ! -s 127.0.0.1/32 -d {IMDS_IP}/32 --dport 80 -j DNAT --to-destination {NMI_ADDR}");
    iptables(node, &["-N", CHAIN])?;
    iptables(node, &rule.split_whitespace().collect::<Vec<_>>())?;
    iptables(node, &["-A", CHAIN, "-j", "RETURN"])?;
    iptables(node, &["-I", "PREROUTING", "1", "-j", CHAIN])
}

/// Removes NMI's chain from `node`, whoever installed it (a killed NMI leaves it behind).
pub(crate) fn remove_dnat(node: &Node) {
    let _ = iptables(node, &["-D", "PREROUTING", "-j", CHAIN]);
    let _ = iptables(node, &["-F", CHAIN]);
    let _ = iptables(node, &["-X", CHAIN]);
}

fn iptables(node: &Node, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-w", "-t", "nat"];
    full.extend_from_slice(args);
    let out = node.ns.run("iptables", &full).context("running iptables in the node")?;
    if !out.status.success() {
        bail!("iptables {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
