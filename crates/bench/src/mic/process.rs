//! A MIC under test as a child process (ours or the original), so `/proc` shows its own memory
//! and CPU, pointed at the benchmark's apiserver and simulator.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::procstat::{self, Usage};

/// Which MIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    Ours,
    Original,
}

impl Flavor {
    pub(super) fn label(self) -> &'static str {
        match self {
            Flavor::Ours => "ours",
            Flavor::Original => "original",
        }
    }
}

/// The files both MICs read: the same for ours and the original.
#[derive(Debug, Clone)]
pub(super) struct Files {
    pub(super) kubeconfig: PathBuf,
    /// azure.json with `cloud: AzureStackCloud` and a service principal.
    pub(super) azure_json: PathBuf,
    /// The autorest environment file (`AZURE_ENVIRONMENT_FILEPATH`) pointing at the simulator.
    pub(super) env_file: PathBuf,
    /// The simulator's CA (PEM).
    pub(super) ca_pem: PathBuf,
    /// Where each run's log goes.
    pub(super) log_dir: PathBuf,
}

/// A running MIC; killed on drop.
#[derive(Debug)]
pub(super) struct MicProcess {
    child: Child,
    pid: u32,
    probe_port: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl MicProcess {
    /// Starts `bin` with the flags its flavour needs; `tag` makes the leader-election lock and
    /// the log file unique to this run, so no run waits for an earlier run's lease.
    pub(super) fn spawn(flavor: Flavor, bin: &Path, files: &Files, tag: &str) -> anyhow::Result<Self> {
        let probe_port = free_port()?;
        let log = files.log_dir.join(format!("{tag}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--kubeconfig={}", files.kubeconfig.display()))
            .arg(format!("--cloudconfig={}", files.azure_json.display()))
            .arg(format!("--leader-election-name=mic-{tag}"))
            .arg(format!("--leader-election-instance={tag}"))
            .arg(format!("--http-probe-port={probe_port}"))
            .arg(format!("--prometheus-port={}", free_port()?))
            .env("MIC_POD_NAMESPACE", "default")
            .env("AZURE_ENVIRONMENT_FILEPATH", &files.env_file)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        match flavor {
            // Ours trusts extra roots through its own (hidden) flag.
            Flavor::Ours => cmd.arg(format!("--extra-root-ca-file={}", files.ca_pem.display())),
            // Go's crypto/x509 reads SSL_CERT_FILE instead of the system roots.
            Flavor::Original => cmd.env("SSL_CERT_FILE", &files.ca_pem),
        };
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the MIC exited at once")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        eprintln!("bench mic: {tag}: {} started (pid {pid}, log {})", flavor.label(), log.display());
        Ok(Self { child, pid, probe_port, log, http })
    }

    /// Waits until the probe answers `Active` (leader and sync loop running).
    pub(super) async fn wait_active(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let url = format!("http://127.0.0.1:{}/healthz", self.probe_port);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("MIC exited with {status} before becoming active; log tail:\n{}", self.log_tail());
            }
            if let Ok(resp) = self.http.get(&url).send().await
                && resp.text().await.is_ok_and(|t| t.trim() == "Active")
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("MIC not active after {timeout:?}; log tail:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Memory and CPU so far; `None` once it has exited.
    pub(super) fn usage(&self) -> Option<Usage> {
        procstat::read(self.pid)
    }

    /// Whether it is still running.
    pub(super) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log (for errors).
    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills it (SIGKILL) and reaps it.
    pub(super) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(aadpodid_testkit::free_port()?)
}
