//! Real nodes for the sandbox's kubelet mode: containerd (Debian's, with runc and the CNI
//! plugins) and a kubelet (`hack/build-node.sh`) inside a node's network namespace, registered
//! to the sandbox's control plane; and the scheduler and controller manager that turn a chart's
//! Deployment and DaemonSet into pods on them.
//!
//! ```text
//!  host: kube-apiserver, etcd, kube-scheduler, kube-controller-manager, Azure simulator
//!  node netns (nsenter --net; host mount namespace): containerd ── runc ── pods
//!     lo: node IP, 169.254.169.254 (IMDS), the cloud IP (ARM/AAD relays), 127.0.0.1 (API relay)
//!     cni0 bridge 10.<n>.128.1/24 ── pod netns (CNI bridge + host-local)
//!     nat: 10.0.0.1:443 (the `kubernetes` Service, routed via lo) DNAT to the API relay, as kube-proxy would
//! ```
//!
//! Everything a node makes lives under its own directory (`/tmp/aadpodid-node-<pid>-<n>`) and
//! cgroup (`/aadpodid-node-<pid>-<n>` in every cgroup v1 hierarchy); dropping a [`KubeletNode`]
//! kills its containers, shims, containerd and kubelet, unmounts and removes both.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aadpodid_testkit::{ControlPlane, KUBERNETES_SERVICE_IP};

use crate::workload::Proc;

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);
const NODE_PREFIX: &str = "aadpodid-node-";
const CGROUP_V1: &str = "/sys/fs/cgroup";
const START_DEADLINE: Duration = Duration::from_secs(120);

/// The binaries of `hack/build-node.sh`.
#[derive(Debug, Clone)]
pub struct NodeTools {
    /// The kubelet.
    pub kubelet: PathBuf,
    /// kube-scheduler.
    pub scheduler: PathBuf,
    /// kube-controller-manager.
    pub controller_manager: PathBuf,
}

impl NodeTools {
    /// `AADPODID_NODE_BIN`, else the stable symlink `~/.cache/aadpodid/node/bin`.
    pub fn locate() -> Result<Self, String> {
        let bin = std::env::var_os("AADPODID_NODE_BIN").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            std::env::var_os("AADPODID_NODE_DIR")
                .map_or_else(|| home.join(".cache/aadpodid/node"), PathBuf::from)
                .join("bin")
        });
        let find = |name: &str| {
            let p = bin.join(name);
            if p.is_file() { Ok(p) } else { Err(format!("{} is missing: run `bash hack/build-node.sh`", p.display())) }
        };
        Ok(Self {
            kubelet: find("kubelet")?,
            scheduler: find("kube-scheduler")?,
            controller_manager: find("kube-controller-manager")?,
        })
    }
}

fn host_env() -> BTreeMap<String, String> {
    let path = std::env::var("PATH").unwrap_or_default();
    BTreeMap::from([("PATH".to_owned(), format!("{path}:/usr/local/sbin:/usr/sbin:/sbin"))])
}

fn free_port() -> Result<u16, String> {
    aadpodid_testkit::free_port().map_err(|e| format!("finding a free port: {e}"))
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("running {what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Puts `addr/32` on `lo` of network namespace `ns`.
pub(crate) fn ip_addr_add(ns: &str, addr: Ipv4Addr) -> Result<(), String> {
    run(Command::new("ip").args(["-n", ns, "addr", "add", &format!("{addr}/32"), "dev", "lo"]), "ip addr add").map(drop)
}

// === Controllers ===

/// kube-scheduler and kube-controller-manager on the host, as the admin.
pub struct Controllers {
    scheduler: Proc,
    controller_manager: Proc,
}

impl Controllers {
    /// Starts both against `cp` (which must keep ServiceAccount admission on), logging into `dir`.
    pub fn start(cp: &ControlPlane, tools: &NodeTools, dir: &Path) -> Result<Self, String> {
        let kubeconfig = cp.kubeconfig_path().display().to_string();
        let common = |port: u16| {
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".to_owned(),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", dir.join("controller-certs").display()),
            ]
        };
        let scheduler = Proc::spawn_in_netns(
            "kube-scheduler".to_owned(),
            None,
            &tools.scheduler,
            &common(free_port()?),
            &host_env(),
            dir.join("kube-scheduler.log"),
        )?;
        let mut args = common(free_port()?);
        args.extend([
            format!("--service-account-private-key-file={}", cp.pki_file("sa.key").display()),
            format!("--root-ca-file={}", cp.pki_file("ca.crt").display()),
            "--use-service-account-credentials=false".to_owned(),
        ]);
        let controller_manager = Proc::spawn_in_netns(
            "kube-controller-manager".to_owned(),
            None,
            &tools.controller_manager,
            &args,
            &host_env(),
            dir.join("kube-controller-manager.log"),
        )?;
        Ok(Self { scheduler, controller_manager })
    }

    /// The logs' last lines, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        [&self.scheduler, &self.controller_manager]
            .iter()
            .map(|p| format!("== {} ({}) ==\n{}\n", p.what, p.log.display(), p.log_tail(lines)))
            .collect()
    }
}

// === KubeletNode ===

/// Where a node sits: its network namespace and addresses.
#[derive(Debug, Clone)]
pub struct NodePlace {
    /// The Node object's name.
    pub name: String,
    /// `spec.providerID` the kubelet registers.
    pub provider_id: String,
    /// The node's network namespace (`ip netns` name).
    pub netns: String,
    /// The node's address (put on its `lo`).
    pub node_ip: Ipv4Addr,
    /// The pods' subnet on this node, e.g. `10.244.128.0/24`.
    pub pod_subnet: String,
    /// The API server's address on the host; relayed to the same address inside the node.
    pub apiserver: SocketAddr,
}

/// containerd and a kubelet running one node.
pub struct KubeletNode {
    /// The Node object's name.
    pub name: String,
    kubelet: Option<Proc>,
    containerd: Option<Proc>,
    dir: PathBuf,
    cgroup: String,
}

impl KubeletNode {
    /// Starts containerd and the kubelet for `place`, registered to `cp`; returns once
    /// containerd answers (the Node becomes Ready later: see [`crate::node`] users).
    pub fn start(cp: &ControlPlane, tools: &NodeTools, place: &NodePlace) -> Result<Self, String> {
        sweep_stale();
        let id = format!("{NODE_PREFIX}{}-{}", std::process::id(), NEXT_NODE.fetch_add(1, Ordering::SeqCst));
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(dir.join("cni")).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string()).map_err(|e| e.to_string())?;
        let mut node =
            Self { name: place.name.clone(), kubelet: None, containerd: None, dir, cgroup: format!("/{id}") };
        node.prepare_network(place)?;
        make_cgroup(&node.cgroup)?;
        node.start_containerd(place)?;
        node.start_kubelet(cp, tools, place)?;
        Ok(node)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The node IP on `lo`, and the `kubernetes` Service stand-in in the node's nat table.
    fn prepare_network(&self, place: &NodePlace) -> Result<(), String> {
        let ns = place.netns.as_str();
        ip_addr_add(ns, place.node_ip)?;
        // A real node has a default route, so its own processes (hostNetwork pods such as NMI)
        // reach Service IPs, and kube-proxy's OUTPUT rules rewrite them; this node's only
        // route is its pod bridge, so the `kubernetes` Service gets one of its own.
        let service_route = format!("{KUBERNETES_SERVICE_IP}/32");
        run(Command::new("ip").args(["-n", ns, "route", "replace", &service_route, "dev", "lo"]), "ip route replace")?;
        let target = place.apiserver.to_string();
        let service = [
            "-d",
            &format!("{KUBERNETES_SERVICE_IP}/32"),
            "-p",
            "tcp",
            "--dport",
            "443",
            "-j",
            "DNAT",
            "--to-destination",
            &target,
        ];
        let ipt = |args: &[&str]| {
            run(Command::new("ip").args(["netns", "exec", ns, "iptables", "-w", "-t", "nat"]).args(args), "iptables")
        };
        ipt(&["-N", "AADPODID-SERVICES"])?;
        ipt(&[&["-A", "AADPODID-SERVICES"][..], &service[..]].concat())?;
        ipt(&["-A", "PREROUTING", "-j", "AADPODID-SERVICES"])?;
        ipt(&["-A", "OUTPUT", "-j", "AADPODID-SERVICES"])?;
        let cni = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "aadpodid",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "dataDir": self.dir.join("cni-ipam"),
                          "ranges": [[{"subnet": place.pod_subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(self.dir.join("cni/10-aadpodid.conflist"), cni.to_string()).map_err(|e| e.to_string())
    }

    fn start_containerd(&mut self, place: &NodePlace) -> Result<(), String> {
        let d = self.dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/containerd\"\nstate = \"{d}/containerd-state\"\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/containerd-opt\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.10.1\"\n\
             \x20 restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = \"overlayfs\"\n\
             \x20   default_runtime_name = \"runc\"\n\
             \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n      runtime_type = \"io.containerd.runc.v2\"\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n    conf_dir = \"{d}/cni\"\n"
        );
        let path = self.dir.join("containerd.toml");
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        let args = vec!["--config".to_owned(), path.display().to_string()];
        let containerd = Proc::spawn_in_netns(
            format!("containerd on {}", place.name),
            Some(&place.netns),
            Path::new("containerd"),
            &args,
            &host_env(),
            self.dir.join("containerd.log"),
        )?;
        let containerd = self.containerd.insert(containerd);
        let start = Instant::now();
        while !self.dir.join("containerd.sock").exists() {
            if let Some(status) = containerd.exited() {
                return Err(format!("containerd exited ({status}):\n{}", containerd.log_tail(20)));
            }
            if start.elapsed() > START_DEADLINE {
                return Err(format!("containerd did not start:\n{}", containerd.log_tail(20)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn start_kubelet(&mut self, cp: &ControlPlane, tools: &NodeTools, place: &NodePlace) -> Result<(), String> {
        let d = &self.dir;
        let config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": false},
                               "x509": {"clientCAFile": cp.pki_file("ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": "127.0.0.1",
            "port": free_port()?,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port()?,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup,
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{}", self.socket().display()),
            "providerID": place.provider_id,
            "podLogsDir": d.join("pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            // This machine's disk and memory are shared; nothing here should be evicted.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
        });
        let path = d.join("kubelet.json");
        std::fs::write(&path, config.to_string()).map_err(|e| e.to_string())?;
        let args = vec![
            format!("--config={}", path.display()),
            format!("--kubeconfig={}", cp.kubeconfig_path().display()),
            format!("--root-dir={}", d.join("kubelet").display()),
            format!("--cert-dir={}", d.join("kubelet-pki").display()),
            format!("--hostname-override={}", place.name),
            format!("--node-ip={}", place.node_ip),
            "--v=1".to_owned(),
        ];
        let kubelet = Proc::spawn_in_netns(
            format!("kubelet {}", place.name),
            Some(&place.netns),
            &tools.kubelet,
            &args,
            &host_env(),
            d.join("kubelet.log"),
        )?;
        self.kubelet = Some(kubelet);
        Ok(())
    }

    /// `ctr images import` of an OCI archive into this node's containerd (as a registry pull
    /// would leave it).
    pub fn import(&self, archive: &Path) -> Result<(), String> {
        run(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["-n", "k8s.io", "images", "import"])
                .arg(archive),
            "ctr images import",
        )
        .map(drop)
    }

    /// The log of `container` in pod `namespace/pod` (every restart, oldest first), as the
    /// kubelet wrote it; empty if there is none yet.
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        self.pod_logs_matching(&format!("{namespace}_{pod}_"), container)
    }

    /// Like [`KubeletNode::pod_log`] for every pod whose `<namespace>_<name>_<uid>` starts with
    /// `prefix`.
    pub fn pod_logs_matching(&self, prefix: &str, container: &str) -> String {
        let Ok(entries) = std::fs::read_dir(self.dir.join("pod-logs")) else { return String::new() };
        let mut text = String::new();
        for entry in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)) {
            let mut files: Vec<PathBuf> = std::fs::read_dir(entry.path().join(container))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            for f in files {
                text += &std::fs::read_to_string(f).unwrap_or_default();
            }
        }
        text
    }

    /// The last lines of the kubelet's and containerd's logs.
    pub fn log_tails(&self, lines: usize) -> String {
        self.kubelet
            .iter()
            .chain(&self.containerd)
            .map(|p| format!("== {} ({}) ==\n{}\n", p.what, p.log.display(), p.log_tail(lines)))
            .collect()
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        // The kubelet first, so that it restarts nothing; containerd after its containers.
        drop(self.kubelet.take());
        teardown(&self.dir, &self.cgroup, || drop(self.containerd.take()));
    }
}

/// Creates `cgroup` in every cgroup v1 hierarchy (cpuset with its parent's CPUs and memory
/// nodes, which a new cpuset does not inherit).
fn make_cgroup(cgroup: &str) -> Result<(), String> {
    for hierarchy in hierarchies() {
        let dir = hierarchy.join(cgroup.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if hierarchy.ends_with("cpuset") {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = std::fs::read_to_string(hierarchy.join(file)).unwrap_or_default();
                std::fs::write(dir.join(file), value.trim())
                    .map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

fn hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir(CGROUP_V1)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.ends_with("unified"))
        .collect()
}

/// Every directory under `dir`, deepest first.
fn subdirs_deepest_first(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
        all.push(d);
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    all
}

/// Kills everything a node left: its containers (every process in its cgroup), the shims of
/// its containerd, then `stop_runtime`; unmounts what is mounted under `dir`, removes the
/// cgroup and the directory. Best-effort: used on drop and for nodes of dead processes.
fn teardown(dir: &Path, cgroup: &str, stop_runtime: impl FnOnce()) {
    for hierarchy in hierarchies() {
        for d in subdirs_deepest_first(&hierarchy.join(cgroup.trim_start_matches('/'))) {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                quiet(Command::new("kill").args(["-KILL", pid]));
            }
        }
    }
    let socket = dir.join("containerd.sock").display().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("/usr/bin/containerd-shim") && cmdline.contains(&socket) {
            quiet(Command::new("kill").args(["-KILL", &entry.file_name().to_string_lossy()]));
        }
    }
    stop_runtime();
    let prefix = format!("{}/", dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> =
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        quiet(Command::new("umount").args(["-l", p]));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for hierarchy in hierarchies() {
        for d in subdirs_deepest_first(&hierarchy.join(cgroup.trim_start_matches('/'))) {
            // A killed process leaves its cgroup a moment later.
            while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs a best-effort clean-up command, its output discarded (a process or mount may be gone).
fn quiet(cmd: &mut Command) {
    let _ = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Tears down nodes whose creating process is gone (a killed earlier run).
fn sweep_stale() {
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(NODE_PREFIX) {
            continue;
        }
        let Ok(pid) = std::fs::read_to_string(entry.path().join("owner.pid")) else { continue };
        if !Path::new("/proc").join(pid.trim()).exists() {
            teardown(&entry.path(), &format!("/{name}"), || {});
        }
    }
}
