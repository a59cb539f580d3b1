//! Installing the project's CRDs, exactly as `aadpodid_api::crds()` generates them.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::conditions;

use crate::{Error, await_condition};

/// Server-side applies the four CRDs and waits until each is `Established`. Idempotent, so
/// every test may call it on the shared control plane.
pub async fn install_crds(client: &Client) -> Result<(), Error> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let params = PatchParams::apply("aadpodid-testkit").force();
    let crds = aadpodid_api::crds();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(crd)).await?;
    }
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        await_condition(api.clone(), &name, conditions::is_crd_established(), Duration::from_secs(60)).await?;
    }
    Ok(())
}
