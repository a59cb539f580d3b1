//! Running a command of an unpacked image with `runc`, as a kubelet's runtime would start the
//! container: the image's root filesystem, user and environment, only the capabilities asked
//! for, optionally inside an existing network namespace (a node's, for `hostNetwork`).
//!
//! The runtime spec sets no rlimits: raising one needs `CAP_SYS_RESOURCE`, which this machine's
//! sandbox lacks (podman's defaults fail on it; containerd's CRI only lowers `NOFILE`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A bind mount from the host into the container.
#[derive(Debug, Clone)]
pub struct Bind {
    /// Host path.
    pub source: PathBuf,
    /// Path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// How to run one process of an image.
#[derive(Debug, Clone, Default)]
pub struct Container {
    /// The full command line (entrypoint included).
    pub args: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// User and group id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Capabilities such as `CAP_NET_ADMIN` (bounding, effective and permitted); none if empty.
    pub capabilities: Vec<String>,
    /// A network namespace to join (e.g. `/var/run/netns/<node>`); a new empty one if `None`.
    pub netns: Option<PathBuf>,
    /// Bind mounts.
    pub binds: Vec<Bind>,
    /// Mount the root filesystem read-only (`readOnlyRootFilesystem`).
    pub readonly_rootfs: bool,
}

/// The OCI runtime spec for `container` on `rootfs`, with cgroups under `cgroup`.
pub fn spec(rootfs: &Path, container: &Container, cgroup: &str) -> Value {
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    namespaces.push(match &container.netns {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    });
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    for b in &container.binds {
        let mode = if b.readonly { "ro" } else { "rw" };
        mounts.push(
            json!({"destination": b.destination, "type": "bind", "source": b.source, "options": ["rbind", mode]}),
        );
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": container.uid, "gid": container.gid},
            "args": container.args,
            "env": container.env,
            "cwd": "/",
            "capabilities": {
                "bounding": container.capabilities,
                "effective": container.capabilities,
                "permitted": container.capabilities,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": container.readonly_rootfs},
        "hostname": "container",
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroup,
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// Runs `container` on `rootfs` to completion (killed after `timeout`); its output.
pub fn run(rootfs: &Path, container: &Container, timeout: Duration) -> Result<Output, String> {
    let dir = tempfile::Builder::new().prefix("aadpodid-runc-").tempdir().map_err(|e| e.to_string())?;
    let id = format!("aadpodid-{}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::SeqCst));
    let cgroup = format!("/{id}");
    let config = spec(rootfs, container, &cgroup);
    std::fs::write(dir.path().join("config.json"), config.to_string()).map_err(|e| e.to_string())?;
    let state = dir.path().join("state");
    let secs = timeout.as_secs().max(1).to_string();
    // `timeout` sends SIGTERM to runc, which forwards it; `--kill-after` ends a stuck one.
    let out = Command::new("timeout")
        .args(["--kill-after=5", &secs, "runc", "--root"])
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(dir.path())
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running runc (apt-get install runc): {e}"))?;
    let _ = Command::new("runc").arg("--root").arg(&state).args(["delete", "--force", &id]).output();
    Ok(out)
}
