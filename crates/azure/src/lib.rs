//! Azure clients shared by MIC and NMI, written by hand on `reqwest` (see the research notes:
//! no maintained Rust SDK speaks ADAL v1, raw IMDS JSON or the compute identity PATCH).
//!
//! ```text
//! cloud (azure.json, environments) ──► arm (VM/VMSS identities, throttling, LRO)
//!                                        ▲
//! token (IMDS, Azure AD v1, JWT assertion) ┘  (ARM bearer tokens)
//! ```
//!
//! Nothing here logs a token, secret or assertion; client IDs are redacted in logs.

pub mod arm;
pub mod cloud;
mod http;
pub mod token;

pub use http::HttpOptions;
