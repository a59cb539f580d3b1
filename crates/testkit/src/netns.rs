//! Network-namespace nodes and pods, as a node looks to NMI (end-to-end tests, the sandbox and
//! the benchmarks):
//!
//! ```text
//!  pod ns (eth0 10.244.0.k/32) ══veth══ node ns (vp<k> 10.244.0.1/32, route_localnet=1)
//!                                        lo: 127.0.0.1, 169.254.169.254/32 (the simulator's IMDS)
//!                                        NMI (ip netns exec) + its iptables rules in nat
//! ```
//!
//! Everything lives in private namespaces with unique names; nothing touches the root
//! namespace's interfaces, routes or iptables. Services of the test process (API server, the
//! simulator's Azure AD/ARM) are made reachable inside a namespace by [`Namespace::forward`]: a
//! listener bound inside the namespace whose connections are relayed from the test process.
//! Dropping a [`Node`] or [`Pod`] kills its processes and deletes its namespace.
//! Needs root, `ip` (iproute2) and, for NMI, `iptables`.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// The IMDS address every node serves on.
pub const IMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The node's address as pods see it (their gateway) for [`Node::create`]; see [`Node::gateway`].
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

fn io_err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Runs `ip <args>` (optionally inside namespace `ns`) and fails with its stderr.
fn ip(ns: Option<&str>, args: &[&str]) -> io::Result<String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["netns", "exec", ns, "ip"]);
    }
    let out =
        cmd.args(args).output().map_err(|e| io_err(format!("running ip {args:?}: {e} (apt-get install iproute2)")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io_err(format!("ip {args:?} in {ns:?}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn sysctl(ns: &str, key: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &format!("echo {value} > {path}")]).output()?;
    if out.status.success() { Ok(()) } else { Err(io_err(format!("sysctl {key}={value} in {ns} failed"))) }
}

// === Namespace ===

/// A named network namespace with loopback up; deleted (with its processes killed) on drop.
pub struct Namespace {
    name: String,
    children: Mutex<Vec<Child>>,
    forwards: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Namespace {
    /// Creates `aadpodid-<prefix>-<pid>-<n>` with `lo` up.
    pub fn create(prefix: &str) -> io::Result<Self> {
        let n = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let name = format!("aadpodid-{prefix}-{}-{n}", std::process::id());
        ip(None, &["netns", "add", &name])?;
        let ns = Self { name, children: Mutex::new(Vec::new()), forwards: Mutex::new(Vec::new()) };
        ip(Some(&ns.name), &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it creates live there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let file = File::open(&path)?;
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| io_err(format!("setns {path}: {e}")))?;
                f()
            })
            .join()
            .map_err(|_| io_err("namespace thread panicked"))?
        })
    }

    /// A TCP listener bound inside this namespace.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.enter(|| TcpListener::bind(addr))
    }

    /// `ip netns exec <ns> <program>`: a command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace to completion.
    pub fn run(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        self.command(program).args(args).stdin(Stdio::null()).output()
    }

    /// Spawns a long-running process inside the namespace; it is killed on drop unless reaped.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<u32> {
        let child = cmd.spawn()?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(child);
        Ok(pid)
    }

    /// The exit status of a spawned child if it has already exited.
    pub fn try_wait(&self, pid: u32) -> Option<std::process::ExitStatus> {
        let mut children = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        children.iter_mut().find(|c| c.id() == pid).and_then(|c| c.try_wait().ok().flatten())
    }

    /// Takes a spawned child back (e.g. to signal it and wait for its exit status).
    pub fn take_child(&self, pid: u32) -> Option<Child> {
        let mut children = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = children.iter().position(|c| c.id() == pid)?;
        Some(children.remove(index))
    }

    /// Makes `target` (reachable from the test process) reachable inside this namespace at
    /// `listen` (e.g. `127.0.0.1:0`); returns the bound address. Needs a Tokio runtime.
    pub fn forward(&self, listen: SocketAddr, target: SocketAddr) -> io::Result<SocketAddr> {
        let std_listener = self.bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        self.forwards.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(task);
        Ok(local)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for task in self.forwards.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            task.abort();
        }
        for mut child in self.children.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = ip(None, &["netns", "del", &self.name]);
    }
}

// === Node ===

/// A node: a namespace owning the IMDS address, with pods attached by veth pairs.
pub struct Node {
    pub ns: Namespace,
    next_pod: AtomicU32,
    /// Second octet of this node's pod addresses (`10.<octet>.x.y`); 244 for [`Node::create`].
    octet: u8,
}

impl Node {
    /// A node namespace with `169.254.169.254/32` on `lo` and `route_localnet` enabled, so the
    /// original's DNAT to 127.0.0.1 works for pod traffic (kube-proxy sets it on real nodes).
    pub fn create() -> io::Result<Self> {
        Self::create_with_pod_range(244)
    }

    /// Like [`Node::create`], but pods get `10.<octet>.0.2`, `.3`, … behind gateway
    /// `10.<octet>.0.1`, so pods of several nodes have distinct IPs (as on a real cluster,
    /// where NMI tells pods apart by source address). `244` is [`Node::create`]'s range.
    pub fn create_with_pod_range(octet: u8) -> io::Result<Self> {
        let ns = Namespace::create("node")?;
        ip(Some(ns.name()), &["addr", "add", &format!("{IMDS_IP}/32"), "dev", "lo"])?;
        sysctl(ns.name(), "net.ipv4.conf.all.route_localnet", "1")?;
        sysctl(ns.name(), "net.ipv4.conf.default.route_localnet", "1")?;
        Ok(Self { ns, next_pod: AtomicU32::new(2), octet })
    }

    /// The node's address as its pods see it (their gateway): `10.<octet>.0.1`.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 0, 1)
    }

    /// A listener on the node's IMDS address, for the simulator's `serve_imds`.
    pub fn imds_listener(&self) -> io::Result<TcpListener> {
        self.ns.bind(SocketAddr::from((IMDS_IP, 80)))
    }

    /// A new pod namespace joined to this node by a veth pair, with the next free IP
    /// (10.244.0.2, .3, … or the node's own range) and a default route through the node.
    pub fn add_pod(&self) -> io::Result<Pod> {
        let k = self.next_pod.fetch_add(1, Ordering::SeqCst);
        let pod_ip =
            Ipv4Addr::new(10, self.octet, u8::try_from(k / 250).unwrap_or(0), u8::try_from(k % 250).unwrap_or(0));
        let gateway = self.gateway();
        let ns = Namespace::create("pod")?;
        let node_if = format!("vp{k}");
        let node = Some(self.ns.name());
        ip(node, &["link", "add", &node_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        ip(node, &["addr", "add", &format!("{gateway}/32"), "dev", &node_if])?;
        sysctl(self.ns.name(), &format!("net.ipv4.conf.{node_if}.route_localnet"), "1")?;
        ip(node, &["link", "set", &node_if, "up"])?;
        ip(node, &["route", "add", &format!("{pod_ip}/32"), "dev", &node_if])?;
        let pod = Some(ns.name());
        ip(pod, &["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"])?;
        ip(pod, &["link", "set", "eth0", "up"])?;
        ip(pod, &["route", "add", &format!("{gateway}/32"), "dev", "eth0"])?;
        ip(pod, &["route", "add", "default", "via", &gateway.to_string(), "dev", "eth0"])?;
        Ok(Pod { ns, ip: pod_ip })
    }

    /// `iptables -t nat -S <chain>` inside the node (`Err` when the chain does not exist).
    pub fn iptables_list(&self, chain: &str) -> io::Result<String> {
        let out = self.ns.run("iptables", &["-w", "-t", "nat", "-S", chain])?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io_err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
        }
    }
}

// === Pod ===

/// A pod: its own namespace with one address, reachable from its node.
pub struct Pod {
    pub ns: Namespace,
    pub ip: Ipv4Addr,
}

impl Pod {
    /// `ip netns exec <pod> <program>`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.ns.command(program)
    }

    /// Adds another address to the pod's interface (to test spoofed sources).
    pub fn add_address(&self, addr: Ipv4Addr) -> io::Result<()> {
        ip(Some(self.ns.name()), &["addr", "add", &format!("{addr}/32"), "dev", "eth0"]).map(drop)
    }
}
