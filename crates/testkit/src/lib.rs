//! Test support: a real `kube-apiserver` + `etcd` on loopback, temporary namespaces, the CRDs,
//! and polling helpers. Dev-only: never a dependency of a shipped crate.
//!
//! ```text
//! tools (hack/build-tools.sh) -> ControlPlane (certs, etcd, kube-apiserver, kubeconfig)
//!                                   -> shared() -> with_temp_ns / install_crds / await_condition
//! ```
//!
//! One control plane per test binary ([`shared`]), each test in its own namespace
//! ([`with_temp_ns`]), keeps integration tests fast (start-up costs a few seconds, a namespace
//! milliseconds). [`ControlPlane::start`] gives a private one that is torn down on drop.
//!
//! The binaries come from `AADPODID_TOOLS_BIN`, else from the stable symlink that
//! `hack/build-tools.sh` maintains (`${AADPODID_TOOLS_DIR:-$HOME/.cache/aadpodid/tools}/bin`);
//! when neither has them, the script is run, so `cargo test` works on its own (the first build
//! takes minutes). The symlink is not re-checked against `hack/controlplane`: after changing
//! the wrapper module or a tool version, run `hack/build-tools.sh` (CI does, before the tests).
//! kubectl is the one built with the apiserver (same 1.34 release), not whatever is on `PATH`.
//! Children are started through `setpriv --pdeathsig KILL` (util-linux) from
//! one long-lived thread, so they die with the test process even though statics are never
//! dropped.
//!
//! # What this cluster is not
//! Only etcd and kube-apiserver run: there is no controller-manager, scheduler or kubelet.
//! - No garbage collection: owner references are never followed, and deleted namespaces stay
//!   `Terminating` for ever (namespace deletion here is best-effort and nobody waits for it).
//! - No default service accounts and no token controller (the `ServiceAccount` admission
//!   plugin is off); create a ServiceAccount yourself before a TokenRequest.
//! - Pods are never scheduled or run. A pod with `spec.nodeName` set is **not** removed by a
//!   normal delete, because no kubelet confirms it: delete pods with
//!   `DeleteParams::default().grace_period(0)`. Tests set `status.podIP` and `status.phase`
//!   themselves through the status subresource.
//! - The service-account issuer is `https://127.0.0.1:<port>` with a generated RSA key, and
//!   `/openid/v1/jwks` is served, so federated-credential flows can be exercised.
//!
//! A [`kube::Client`] is tied to the Tokio runtime it was built on, and every `#[tokio::test]`
//! has its own runtime: call [`ControlPlane::client`] inside each test, never cache a client in
//! a static.

mod certs;
mod controlplane;
mod crds;
mod egress;
mod error;
mod host;
mod namespace;
pub mod netns;
mod process;
mod tools;
mod wait;

pub use controlplane::{ControlPlane, KUBERNETES_SERVICE_IP, Options, shared};
pub use crds::install_crds;
pub use egress::{EgressProxy, Target as EgressTarget};
pub use error::Error;
pub use host::{free_port, is_root, require_root};
pub use namespace::{TEMP_NAMESPACE_LABEL, TempNamespace, with_temp_ns};
pub use tools::{Tools, repo_root};
pub use wait::{await_condition, eventually, poll_until};
