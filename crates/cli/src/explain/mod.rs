//! `aadpodid explain pod NAME`: reads the live state MIC and NMI decide on, replays their
//! decisions with their own code (`aadpodid_mic::decide`, `aadpodid_nmi::select`), and says
//! why the pod has or lacks each identity and what to do next.
//!
//! ```text
//! gather (kube, ARM: reads only) ──► Snapshot ──diagnose (pure)──► Explanation ──Display──► stdout
//! ```

mod diagnose;
mod render;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aadpodid_api::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};
use aadpodid_azure::HttpOptions;
use aadpodid_azure::arm::{Arm, ArmClient, ArmOptions, ArmTokenProvider, VmTarget};
use aadpodid_azure::cloud::{AzureEnvironment, CloudConfig, ENVIRONMENT_FILEPATH_VAR};
use aadpodid_azure::token::DEFAULT_IMDS_URL;
use aadpodid_runtime::decoded::list_all;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

pub use diagnose::{Explanation, Mark, diagnose};
pub use render::write_lines;

use crate::CliError;
use crate::args::ExplainPodArgs;
use crate::cluster::{self, Components};

/// How MIC and NMI are configured, as far as the decisions go, and where that was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub force_namespaced: bool,
    /// Where `force_namespaced` comes from, for the reader.
    pub source: String,
    /// NMI in managed mode: no MIC, NMI matches bindings itself.
    pub managed: bool,
    pub nmi: Option<cluster::NmiFlags>,
}

/// What ARM says about the node's VM or scale set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmView {
    pub target: VmTarget,
    /// User-assigned identity resource IDs on it, or why they could not be read.
    pub user_assigned: Result<Vec<String>, String>,
}

/// Everything `diagnose` reads, gathered once.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub pod: Pod,
    pub node: Option<Node>,
    pub bindings: Vec<AzureIdentityBinding>,
    pub identities: Vec<AzureIdentity>,
    pub assigned: Vec<AzureAssignedIdentity>,
    pub exceptions: Vec<AzurePodIdentityException>,
    pub events: Vec<Event>,
    pub settings: Settings,
    pub arm: Option<ArmView>,
}

/// Gathers the snapshot and diagnoses it. Reads only.
pub async fn explain_pod(client: &Client, default_ns: &str, args: &ExplainPodArgs) -> Result<Explanation, CliError> {
    let snapshot = gather(client, default_ns, args).await?;
    Ok(diagnose(&snapshot, k8s_openapi::jiff::Timestamp::now()))
}

async fn gather(client: &Client, default_ns: &str, args: &ExplainPodArgs) -> Result<Snapshot, CliError> {
    let ns = args.namespace.as_deref().unwrap_or(default_ns);
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(&args.name)
        .await?
        .ok_or_else(|| CliError::NotFound(format!("pod {ns}/{}", args.name)))?;
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
    let node = match &node_name {
        Some(n) => Api::<Node>::all(client.clone()).get_opt(n).await?,
        None => None,
    };
    // Decoded one by one, as MIC and NMI read them: an object they cannot read is left out
    // (and logged) rather than failing the whole explanation.
    let bindings = list_all::<AzureIdentityBinding>(client.clone()).await?;
    let identities = list_all::<AzureIdentity>(client.clone()).await?;
    let assigned = list_all::<AzureAssignedIdentity>(client.clone()).await?;
    let mut exceptions = list_all::<AzurePodIdentityException>(client.clone()).await?;
    exceptions.retain(|e| e.metadata.namespace.as_deref() == Some(ns));
    let settings = settings(&cluster::components(client).await?, args);
    let events = events(client, &pod, &bindings).await?;
    let arm = match (&args.azure_json, &node) {
        (Some(path), Some(node)) => Some(arm_view(path, args, node).await),
        _ => None,
    };
    Ok(Snapshot { pod, node, bindings, identities, assigned, exceptions, events, settings, arm })
}

/// MIC's flags from its Deployment when there is exactly one; `--force-namespaced` overrides.
fn settings(found: &Components, args: &ExplainPodArgs) -> Settings {
    let nmi = found.nmi.first().and_then(|d| cluster::nmi_flags(d).ok());
    let managed = nmi.as_ref().is_some_and(|n| !n.standard_mode);
    let (force_namespaced, source) = match (args.force_namespaced, found.mic.as_slice()) {
        (Some(v), _) => (v, "--force-namespaced".to_owned()),
        (None, [mic]) => match cluster::mic_flags(mic) {
            Ok(flags) => (flags.force_namespaced, format!("MIC Deployment {}", cluster::key(mic))),
            Err(e) => (false, format!("default: MIC Deployment {} unreadable ({e})", cluster::key(mic))),
        },
        (None, []) if managed => {
            let v = nmi.as_ref().is_some_and(|n| n.force_namespaced);
            (v, "NMI DaemonSet (managed mode)".to_owned())
        }
        (None, []) => {
            (false, "default: no MIC Deployment found; pass --force-namespaced if MIC runs with it".to_owned())
        }
        (None, many) => (false, format!("default: {} MIC Deployments found; pass --force-namespaced", many.len())),
    };
    Settings { force_namespaced, source, managed, nmi }
}

/// Events about the pod, and those of the bindings selecting its label that name it (MIC
/// writes most on both; removals only on the binding).
async fn events(client: &Client, pod: &Pod, bindings: &[AzureIdentityBinding]) -> Result<Vec<Event>, kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let by = |kind: &str, name: &str| {
        ListParams::default().fields(&format!("involvedObject.kind={kind},involvedObject.name={name}"))
    };
    let mut out = Api::<Event>::namespaced(client.clone(), &ns).list(&by("Pod", &pod.name_any())).await?.items;
    let label = pod.labels().get(aadpodid_api::names::POD_LABEL_KEY).cloned().unwrap_or_default();
    let name = pod.name_any();
    let about_pod = |e: &Event| {
        let m = e.message.as_deref().unwrap_or_default();
        m.contains(&format!("for pod {name}-{ns}-")) || m.ends_with(&format!("for pod {name}"))
    };
    for b in bindings.iter().filter(|b| b.spec.selector.as_deref() == Some(label.as_str()) && !label.is_empty()) {
        let bns = b.namespace().unwrap_or_default();
        let api = Api::<Event>::namespaced(client.clone(), &bns);
        out.extend(api.list(&by("AzureIdentityBinding", &b.name_any())).await?.items.into_iter().filter(about_pod));
    }
    Ok(out)
}

/// The node's VM or scale set and its user-assigned identities, read with azure.json's
/// credentials as MIC reads them. Failures are reported, not fatal.
async fn arm_view(azure_json: &Path, args: &ExplainPodArgs, node: &Node) -> ArmView {
    let (_, target) = aadpodid_mic::view::node_view(node);
    let user_assigned = match arm_client(azure_json, args) {
        Ok(arm) => match tokio::time::timeout(Duration::from_secs(60), arm.identities(&target)).await {
            Ok(Ok(ids)) => Ok(ids.user_assigned),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("ARM did not answer within 60 s".to_owned()),
        },
        Err(e) => Err(e),
    };
    ArmView { target, user_assigned }
}

fn arm_client(azure_json: &Path, args: &ExplainPodArgs) -> Result<ArmClient, String> {
    let config = CloudConfig::from_file(azure_json).map_err(|e| format!("{}: {e}", azure_json.display()))?;
    let env_file = args.azure_environment_file.clone();
    let lookup = |k: &str| match (&env_file, k == ENVIRONMENT_FILEPATH_VAR) {
        (Some(f), true) => Some(f.display().to_string()),
        _ => std::env::var(k).ok(),
    };
    let environment = AzureEnvironment::from_name(&config.cloud, lookup).map_err(|e| e.to_string())?;
    let http = match &args.extra_root_ca_file {
        Some(p) => HttpOptions::with_root_ca_pem(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => HttpOptions::default(),
    };
    let tokens = ArmTokenProvider::from_cloud_config(&config, &environment, &http, DEFAULT_IMDS_URL)
        .map_err(|e| e.to_string())?;
    let options = ArmOptions { http, ..ArmOptions::default() };
    ArmClient::new(&config, &environment, Arc::new(tokens), options).map_err(|e| e.to_string())
}
