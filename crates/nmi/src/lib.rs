//! NMI, the Node Managed Identity daemon: intercepts pods' IMDS token requests (iptables DNAT
//! to this process) and answers with a token for the calling pod's own identity.
//!
//! ```text
//! main → run ─┬─ iptables (chain aad-metadata, reconciled)
//!             ├─ store (kube reflectors) ──► NodeState ──┐
//!             ├─ tokens (IMDS / Azure AD + cache) ──────┴─► server (axum; no kube)
//!             ├─ gate (503 until the caches sync) ──────────► in front of server
//!             ├─ listener (connection caps, timeouts) ────► server
//!             └─ probes, metrics                               query, select, limits, errors: pure
//! ```

pub mod args;
pub mod cache;
pub mod errors;
pub mod gate;
pub mod iptables;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod query;
mod run;
pub mod select;
pub mod server;
pub mod store;
pub mod token;
pub mod tokens;

pub use run::run;
