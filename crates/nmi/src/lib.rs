//! NMI, the Node Managed Identity daemon: intercepts pods' IMDS token requests (iptables DNAT
//! to this process) and answers with a token for the calling pod's own identity.
//!
//! ```text
//! main → run ─┬─ iptables (chain aad-metadata, reconciled)
//!             ├─ store (kube reflectors) ──► NodeState ─┐
//!             ├─ tokens (IMDS / Azure AD + cache) ──────┼─► server (axum; no kube) ◄─ pods
//!             └─ probes, metrics                          │    query, select, errors: pure
//! ```

pub mod cache;
pub mod errors;
pub mod metrics;
pub mod query;
pub mod select;
pub mod server;
pub mod token;
