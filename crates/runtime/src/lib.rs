//! The process edge that MIC and NMI share, in the kubert shape without the dependency:
//! logging set-up, the `/healthz` and `/metrics` servers, signals, the kube client, the
//! original's Go-style flag spellings, the termination log, and watches that decode each
//! object on its own.
//!
//! Nothing here decides anything about identities; it only starts and stops things.

mod admin;
pub mod decoded;
pub mod goflags;
mod kubeclient;
mod logging;
mod signal;
mod version;

pub use admin::{Health, metrics_router, probe_router, serve};
pub use kubeclient::{KubeClientError, KubeTimeouts, kube_client, kube_client_with, kube_config};
pub use logging::{LogFormat, LoggingError, init_tracing};
pub use signal::shutdown_signal;
pub use version::{VERSION, user_agent};

/// Writes a fatal start-up error where Kubernetes shows it in `kubectl describe pod`.
/// Best effort: outside a pod the file does not exist and nothing happens.
pub fn write_termination_log(message: &str) {
    let _ = std::fs::write("/dev/termination-log", message);
}
