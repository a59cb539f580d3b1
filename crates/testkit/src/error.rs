//! The one error type of the testkit: each variant says what to fix.

use std::path::PathBuf;
use std::time::Duration;

/// Why the control plane or a helper failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hack/build-tools.sh failed ({status}); run it by hand to see why:\n{stderr}")]
    BuildTools { status: std::process::ExitStatus, stderr: String },
    #[error("{binary} not found in {dir}; run hack/build-tools.sh or set AADPODID_TOOLS_BIN")]
    MissingBinary { binary: &'static str, dir: PathBuf },
    #[error("cannot start {what} through setpriv (install the Debian package util-linux): {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Certs(#[from] rcgen::Error),
    #[error("{what} did not become ready within {deadline:?}; last log lines of {log}:\n{tail}")]
    NotReady { what: &'static str, deadline: Duration, log: PathBuf, tail: String },
    #[error("{what} exited during start-up ({status}); last log lines of {log}:\n{tail}")]
    Exited { what: &'static str, status: std::process::ExitStatus, log: PathBuf, tail: String },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("timed out after {deadline:?} waiting for {what}")]
    Timeout { what: String, deadline: Duration },
    #[error("waiting for {what}: {source}")]
    Wait {
        what: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
