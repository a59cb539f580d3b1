//! Temporary namespaces: one per test, so tests can share a control plane without seeing each
//! other's objects. Deletion is best-effort: without a controller-manager a deleted namespace
//! stays `Terminating`, which is harmless here.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::{Error, shared};

/// Label on every namespace made here, to find them when debugging a shared control plane.
pub const TEMP_NAMESPACE_LABEL: &str = "aadpodid-testkit/temp";

/// A namespace created for one test.
pub struct TempNamespace {
    client: Client,
    name: String,
}

impl std::fmt::Debug for TempNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempNamespace").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TempNamespace {
    /// Creates `<prefix>-<pid>-<n>`, unique within the control plane.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEMP_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        Ok(Self { client: client.clone(), name })
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks for deletion and does not wait (it never finishes without a controller-manager).
    pub async fn delete(self) {
        let _ = Api::<Namespace>::all(self.client).delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Runs `f` with a client for the [`shared`] control plane and a fresh namespace, then asks
/// for the namespace's deletion.
///
/// # Panics
/// When the shared control plane cannot start or the namespace cannot be created.
pub async fn with_temp_ns<F, Fut, T>(f: F) -> T
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = T>,
{
    let client = shared().client();
    let ns =
        TempNamespace::create(&client, "t").await.unwrap_or_else(|e| panic!("creating a temporary namespace: {e}"));
    let out = f(client, ns.name().to_owned()).await;
    ns.delete().await;
    out
}
