//! What `explain` and `doctor` read about the installation itself: MIC's Deployment and NMI's
//! DaemonSet (found by the chart's or the original manifests' labels and names), their flags
//! parsed with MIC's and NMI's own parsers, and `/healthz` through the API server's pod proxy.

use std::time::Duration;

use aadpodid_nmi::select::{MicIdentity, RetryPolicy};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// MIC's Deployments and NMI's DaemonSets, in any namespace.
#[derive(Clone, Debug, Default)]
pub struct Components {
    pub mic: Vec<Deployment>,
    pub nmi: Vec<DaemonSet>,
}

/// Lists Deployments and DaemonSets of every namespace and keeps MIC's and NMI's.
pub async fn components(client: &Client) -> Result<Components, kube::Error> {
    let lp = ListParams::default();
    let mic = Api::<Deployment>::all(client.clone()).list(&lp).await?.items;
    let nmi = Api::<DaemonSet>::all(client.clone()).list(&lp).await?.items;
    Ok(Components {
        mic: mic.into_iter().filter(|d| is_component(d, "mic")).collect(),
        nmi: nmi.into_iter().filter(|d| is_component(d, "nmi")).collect(),
    })
}

/// The chart's `app.kubernetes.io/component`, the original manifests' `component` label, or a
/// name `mic`/`…-mic` (and the same for nmi).
fn is_component<K: ResourceExt>(obj: &K, component: &str) -> bool {
    let labels = obj.labels();
    let label = |k: &str| labels.get(k).map(String::as_str) == Some(component);
    let name = obj.name_any();
    label("app.kubernetes.io/component")
        || label("component")
        || name == component
        || name.ends_with(&format!("-{component}"))
}

/// `namespace/name` of an object.
pub fn key<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

fn first_container(template: Option<&PodTemplateSpec>) -> Option<&Container> {
    template?.spec.as_ref()?.containers.first()
}

/// The container's args, and `FORCENAMESPACED=true` from its env (both components read it).
fn args_and_env(container: &Container) -> (Vec<String>, bool) {
    let args = container.args.clone().unwrap_or_default();
    let env_true = container
        .env
        .iter()
        .flatten()
        .any(|e| e.name == "FORCENAMESPACED" && e.value.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true")));
    (args, env_true)
}

/// What `explain` and `doctor` need of MIC's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MicFlags {
    pub force_namespaced: bool,
    /// Namespace and name of the leader-election Lease (and Endpoints).
    pub leader_namespace: String,
    pub leader_name: String,
    pub probe_port: u16,
}

/// MIC's flags from its Deployment, parsed by MIC's own parser.
pub fn mic_flags(deployment: &Deployment) -> Result<MicFlags, String> {
    let container = first_container(deployment.spec.as_ref().map(|s| &s.template)).ok_or("no container")?;
    let (args, env_true) = args_and_env(container);
    let argv = std::iter::once("mic".to_owned()).chain(args);
    let parsed =
        <aadpodid_mic::args::Args as clap::Parser>::try_parse_from(aadpodid_runtime::goflags::normalize_args(argv))
            .map_err(|e| format!("MIC's args do not parse: {}", e.kind()))?;
    Ok(MicFlags {
        force_namespaced: parsed.force_namespaced || env_true,
        leader_namespace: parsed.leader_election_namespace,
        leader_name: parsed.leader_election_name,
        probe_port: parsed.http_probe_port,
    })
}

/// What `explain` and `doctor` need of NMI's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NmiFlags {
    pub standard_mode: bool,
    pub force_namespaced: bool,
    pub probe_port: u16,
    pub retry: RetryPolicy,
    pub mic: Option<MicIdentity>,
}

/// NMI's flags from its DaemonSet, parsed by NMI's own parser.
pub fn nmi_flags(daemonset: &DaemonSet) -> Result<NmiFlags, String> {
    let container = first_container(daemonset.spec.as_ref().map(|s| &s.template)).ok_or("no container")?;
    let (args, env_true) = args_and_env(container);
    let argv = std::iter::once("nmi".to_owned()).chain(args);
    let parsed =
        <aadpodid_nmi::args::Args as clap::Parser>::try_parse_from(aadpodid_runtime::goflags::normalize_args(argv))
            .map_err(|e| format!("NMI's args do not parse: {}", e.kind()))?;
    let standard_mode = parsed.operation_mode != "managed";
    Ok(NmiFlags {
        standard_mode,
        force_namespaced: parsed.force_namespaced || env_true,
        probe_port: parsed.http_probe_port,
        retry: RetryPolicy {
            created: parsed.retry_attempts_for_created,
            assigned: parsed.retry_attempts_for_assigned,
            interval_secs: parsed.find_identity_retry_interval,
        },
        mic: MicIdentity::from_flags(standard_mode, &parsed.mic_namespace, &parsed.mic_service_account),
    })
}

/// `GET /healthz` of a pod's port through the API server's pod proxy: MIC and NMI answer
/// `Active` or `Not Active`. Works wherever `kubectl get --raw` does (needs `pods/proxy` get).
pub async fn healthz(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
    timeout: Duration,
) -> Result<String, String> {
    let uri = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/healthz");
    let request = http::Request::get(uri).body(Vec::new()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.request_text(request)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(kube::Error::Api(e))) => Err(format!("{} ({})", e.message.trim(), e.code)),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(body)) => Ok(body.trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's rendered objects of `kind` (its golden `helm template` output).
    fn golden<K: serde::de::DeserializeOwned>(file: &str, kind: &str) -> K {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../charts/aad-pod-identity/tests/golden")
            .join(file);
        let text = std::fs::read_to_string(path).unwrap();
        let doc = crate::check::split_documents(&text)
            .into_iter()
            .find(|d| d.contains(&format!("\nkind: {kind}\n")))
            .unwrap();
        serde_saphyr::from_str(&doc).unwrap()
    }

    #[test]
    fn the_charts_mic_and_nmi_flags_are_read_with_their_own_parsers() {
        let mic = mic_flags(&golden::<Deployment>("defaults.yaml", "Deployment")).unwrap();
        assert_eq!(
            mic,
            MicFlags {
                force_namespaced: false,
                leader_namespace: "default".into(),
                leader_name: "aad-pod-identity-mic".into(),
                probe_port: 8080
            }
        );
        let nmi = nmi_flags(&golden::<DaemonSet>("defaults.yaml", "DaemonSet")).unwrap();
        assert!(nmi.standard_mode && !nmi.force_namespaced);
        assert_eq!(nmi.probe_port, 8085);
        assert_eq!(nmi.mic.map(|m| m.service_account), Some("aad-pod-identity-mic".to_owned()));
    }

    #[test]
    fn force_namespaced_from_the_charts_environment_and_managed_mode_are_seen() {
        let golden_ns = golden::<Deployment>("namespaced.yaml", "Deployment");
        assert!(mic_flags(&golden_ns).unwrap().force_namespaced);
        assert!(nmi_flags(&golden::<DaemonSet>("namespaced.yaml", "DaemonSet")).unwrap().force_namespaced);
        assert!(!nmi_flags(&golden::<DaemonSet>("managed.yaml", "DaemonSet")).unwrap().standard_mode);
    }
}
