//! The images `hack/images.sh` builds (`target/images/{mic,nmi}.tar`), run with runc as a
//! kubelet's runtime would: each binary starts inside its image; the NMI image's iptables
//! programs the backend the node uses (legacy or nft, chosen by the wrapper) and its conntrack
//! deletes what NMI asks it to. Plus the Dockerfile and `hack/images.sh` agree on what goes in.
//!
//! Needs root, runc, the host's iptables-legacy/iptables-nft and conntrack, and the archives
//! (`bash hack/images.sh`; `hack/test.sh` builds them before the tests).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use aadpodid_sandbox::oci::{self, Archive};
use aadpodid_sandbox::runc::{self, Bind, Container};
use aadpodid_testkit::netns::Namespace;
use aadpodid_testkit::repo_root;

const TIMEOUT: Duration = Duration::from_secs(60);
/// The NMI DaemonSet's capabilities (charts/aad-pod-identity/templates/nmi-daemonset.yaml).
const NMI_CAPS: [&str; 3] = ["CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN", "CAP_NET_RAW"];

/// An image unpacked into a fresh root filesystem, with its config.
struct Unpacked {
    archive: Archive,
    dir: tempfile::TempDir,
}

impl Unpacked {
    fn new(name: &str) -> Self {
        let archive = Archive::open(&oci::archive(name).unwrap()).unwrap();
        let dir = tempfile::Builder::new().prefix("aadpodid-image-test-").tempdir().unwrap();
        archive.unpack(&dir.path().join("rootfs")).unwrap();
        Self { archive, dir }
    }

    fn rootfs(&self) -> std::path::PathBuf {
        self.dir.path().join("rootfs")
    }

    /// The image's entrypoint with `args`, as the image's user, no capabilities.
    fn entrypoint(&self, args: &[&str]) -> Container {
        let (uid, gid) = oci::user_ids(&self.archive.config.user, &self.rootfs()).unwrap();
        let mut argv = self.archive.config.entrypoint.clone();
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        Container { args: argv, env: self.archive.config.env.clone(), uid, gid, ..Container::default() }
    }

    /// `sh -c script` as the NMI DaemonSet runs its container: uid 0, its capabilities, the
    /// node's network namespace, the host's xtables lock.
    fn as_nmi_pod(&self, ns: &Namespace, script: &str, lock: &Path) -> Container {
        Container {
            args: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
            env: self.archive.config.env.clone(),
            capabilities: NMI_CAPS.map(str::to_owned).to_vec(),
            netns: Some(format!("/var/run/netns/{}", ns.name()).into()),
            binds: vec![Bind { source: lock.to_owned(), destination: "/run/xtables.lock".to_owned(), readonly: true }],
            ..Container::default()
        }
    }

    fn run(&self, container: &Container) -> Output {
        runc::run(&self.rootfs(), container, TIMEOUT).unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a host command inside `ns`; its output.
fn in_ns(ns: &Namespace, program: &str, args: &[&str]) -> Output {
    ns.run(program, args).unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[test]
fn mic_image_runs_mic_as_nonroot_without_a_shell() {
    let image = Unpacked::new("mic");
    assert_eq!(image.archive.reference.rsplit_once(':').map(|r| r.0), Some("localhost/aadpodid/mic"));
    assert_eq!(image.archive.config.entrypoint, ["/usr/bin/mic"]);
    assert_eq!(image.archive.config.user, "65532:65532");
    let out = image.run(&image.entrypoint(&["--help"]));
    assert!(out.status.success(), "mic --help in the image: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--cloudconfig"), "{}", text(&out));
    let rootfs = image.rootfs();
    assert!(!rootfs.join("usr/bin/sh").exists() && !rootfs.join("usr/bin/dash").exists(), "distroless: no shell");
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100, "the CA bundle holds the Mozilla roots");
}

#[test]
fn nmi_image_runs_nmi() {
    let image = Unpacked::new("nmi");
    assert_eq!(image.archive.reference.rsplit_once(':').map(|r| r.0), Some("localhost/aadpodid/nmi"));
    assert_eq!(image.archive.config.entrypoint, ["/usr/bin/nmi"]);
    let out = image.run(&image.entrypoint(&["--help"]));
    assert!(out.status.success(), "nmi --help in the image: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--node"), "{}", text(&out));
}

/// How a node's backend shows (what the kubelet leaves, or plain rule counts).
#[derive(Debug, Clone, Copy)]
enum NodeState {
    /// The kubelet's hint chain in the mangle table of this backend.
    Marker(&'static str),
    /// Two filter rules in this backend, none in the other.
    Rules(&'static str),
    /// Nothing anywhere.
    Empty,
}

fn prepare(ns: &Namespace, state: NodeState) {
    let host = |backend: &str, args: &[&str]| {
        let out = in_ns(ns, &format!("iptables-{backend}"), args);
        assert!(out.status.success(), "host iptables-{backend} {args:?}: {}", text(&out));
    };
    match state {
        NodeState::Marker(b) => host(b, &["-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]),
        NodeState::Rules(b) => {
            host(b, &["-w", "-A", "INPUT", "-s", "192.0.2.1/32", "-j", "DROP"]);
            host(b, &["-w", "-A", "INPUT", "-s", "192.0.2.2/32", "-j", "DROP"]);
        }
        NodeState::Empty => {}
    }
}

/// What NMI does at start-up, through the image's `iptables` (the wrapper), then which
/// backend the wrapper settled on.
const NMI_RULES: &str = "iptables -w -t nat -N aad-metadata \
    && iptables -w -t nat -A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579 \
    && iptables -w -t nat -I PREROUTING 1 -j aad-metadata \
    && iptables -w -t nat -S aad-metadata && iptables-save -t nat >/dev/null && readlink /usr/sbin/iptables";

#[test]
fn nmi_image_iptables_programs_the_backend_the_node_uses() {
    let cases = [
        (NodeState::Marker("legacy"), "legacy", false),
        (NodeState::Marker("nft"), "nft", false),
        (NodeState::Rules("legacy"), "legacy", false),
        (NodeState::Empty, "nft", false),
        // readOnlyRootFilesystem: the wrapper cannot repoint the names, but still picks.
        (NodeState::Marker("legacy"), "legacy", true),
    ];
    let lock = tempfile::NamedTempFile::new().unwrap();
    for (state, want, readonly) in cases {
        let image = Unpacked::new("nmi");
        let ns = Namespace::create("imgnode").unwrap();
        prepare(&ns, state);
        let mut container = image.as_nmi_pod(&ns, NMI_RULES, lock.path());
        container.readonly_rootfs = readonly;
        let out = image.run(&container);
        let case = format!("{state:?} (read-only root: {readonly})");
        assert!(out.status.success(), "{case}: NMI's rules through the image's iptables: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("--to-destination 127.0.0.1:2579"), "{case}: {}", text(&out));
        let link = stdout.lines().last().unwrap_or_default();
        if readonly {
            assert_eq!(link, "iptables-wrapper", "{case}: the names stay on the wrapper");
        } else {
            assert_eq!(link, format!("/usr/sbin/iptables-{want}"), "{case}: the wrapper repoints iptables");
        }
        let other = if want == "nft" { "legacy" } else { "nft" };
        let there = in_ns(&ns, &format!("iptables-{want}"), &["-w", "-t", "nat", "-S", "aad-metadata"]);
        assert!(
            String::from_utf8_lossy(&there.stdout).contains("-j DNAT --to-destination 127.0.0.1:2579"),
            "{case}: the rule is in the node's {want} backend: {}",
            text(&there)
        );
        let elsewhere = in_ns(&ns, &format!("iptables-{other}"), &["-w", "-t", "nat", "-S", "aad-metadata"]);
        assert!(!elsewhere.status.success(), "{case}: nothing in the {other} backend: {}", text(&elsewhere));
    }
}

#[test]
fn nmi_image_conntrack_deletes_tracked_connections_to_imds() {
    let image = Unpacked::new("nmi");
    let ns = Namespace::create("imgnode").unwrap();
    let flow = |sport: &str| {
        let args = [
            "-I",
            "-p",
            "tcp",
            "-s",
            "10.244.0.2",
            "-d",
            "169.254.169.254",
            "--sport",
            sport,
            "--dport",
            "80",
            "--reply-src",
            "169.254.169.254",
            "--reply-dst",
            "10.244.0.2",
            "--reply-port-src",
            "80",
            "--reply-port-dst",
            sport,
            "--state",
            "ESTABLISHED",
            "--timeout",
            "120",
            "-u",
            "SEEN_REPLY",
        ];
        let out = in_ns(&ns, "conntrack", &args);
        assert!(out.status.success(), "host conntrack -I: {}", text(&out));
    };
    flow("40001");
    flow("40002");
    let lock = tempfile::NamedTempFile::new().unwrap();
    // NMI's --enable-conntrack-deletion command, then what is left.
    let script = "conntrack -D -p tcp --orig-dst 169.254.169.254 --orig-port-dst 80; conntrack -L -p tcp --orig-dst 169.254.169.254";
    let out = image.run(&image.as_nmi_pod(&ns, script, lock.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 flow entries have been deleted"), "conntrack -D in the image: {}", text(&out));
    assert!(stderr.contains("0 flow entries have been shown"), "none left: {}", text(&out));
    let left = in_ns(&ns, "conntrack", &["-L", "-p", "tcp", "--orig-dst", "169.254.169.254"]);
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "host view: {}", text(&left));
}

#[test]
fn images_sh_pushes_both_images_to_a_registry() {
    // Debian's registry (docker-registry) on a free loopback port, plain HTTP.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let mut registry = std::process::Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry (apt-get install docker-registry)");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let repo = format!("127.0.0.1:{port}/aadpodid");
    // The release binaries the archives hold; a private output directory (others read target/images).
    let bins = oci::images_dir().join("../release");
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("hack/images.sh"))
        .args(["--push", &repo, "--insecure", "--bin-dir"])
        .arg(&bins)
        .arg("--out")
        .arg(dir.path().join("images"))
        .output()
        .unwrap();
    let inspect = |name: &str| {
        std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--config", &format!("docker://{repo}/{name}:v1.8.17")])
            .output()
            .unwrap()
    };
    let (mic, nmi) = (inspect("mic"), inspect("nmi"));
    let _ = registry.kill();
    let _ = registry.wait();
    assert!(ready, "the registry did not start");
    assert!(out.status.success(), "hack/images.sh --push: {}", text(&out));
    for (name, got, user) in [("mic", mic, "65532:65532"), ("nmi", nmi, "10001")] {
        let config: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap_or_default();
        assert_eq!(config["config"]["Entrypoint"][0], format!("/usr/bin/{name}"), "{name}: {}", text(&got));
        assert_eq!(config["config"]["User"], user, "{name}");
    }
}

/// The value of `NAME=...` (a shell assignment or Dockerfile `ARG`) in `text`, unquoted and
/// whitespace-normalised.
fn assigned(text: &str, name: &str) -> String {
    let value = text
        .lines()
        .map(|l| l.trim().trim_start_matches("ARG "))
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_default();
    value.trim_matches('"').split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn dockerfile_and_images_sh_build_the_same_contents() {
    let root = repo_root();
    let script = std::fs::read_to_string(root.join("hack/images.sh")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for name in ["SUITE", "MIC_PACKAGES", "NMI_PACKAGES"] {
        let (a, b) = (assigned(&script, name), assigned(&dockerfile, name));
        assert!(!a.is_empty() && a == b, "{name}: hack/images.sh has {a:?}, the Dockerfile {b:?}");
    }
    for (user, entry) in [("65532:65532", "/usr/bin/mic"), ("10001", "/usr/bin/nmi")] {
        assert!(
            dockerfile.contains(&format!("USER {user}\nENTRYPOINT [\"{entry}\"]")),
            "Dockerfile: {entry} as {user}"
        );
    }
    assert!(script.contains("MIC_USER=65532:65532") && script.contains("NMI_USER=10001"));
    let path = assigned(&script, "IMAGE_PATH");
    assert_eq!(dockerfile.matches(&format!("ENV PATH={path}\n")).count(), 2, "both images' PATH is {path}");
    assert!(dockerfile.contains("COPY hack/images/ "), "the Dockerfile uses hack/images/");
    for kind in ["mic", "nmi"] {
        assert!(
            dockerfile.contains(&format!("/finish-rootfs.sh {kind} ")),
            "the Dockerfile finishes {kind} the same way"
        );
    }
}
