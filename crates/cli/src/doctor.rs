//! `aadpodid doctor`: is the installation whole? The CRDs against the ones this build ships,
//! exactly one MIC leader and it `Active`, an NMI on every node it should run on with its
//! iptables rules in place (its `/healthz` says `Active` only after the first rules pass),
//! and versions. Reads only; `/healthz` goes through the API server's pod proxy.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::CliError;
use crate::args::DoctorArgs;
use crate::cluster::{self, healthz};
use crate::explain::Mark;

/// What `doctor` found, line by line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DoctorReport {
    pub lines: Vec<(Mark, String)>,
}

impl DoctorReport {
    /// No problem found.
    pub fn healthy(&self) -> bool {
        self.lines.iter().all(|(m, _)| *m != Mark::Problem)
    }

    fn add(&mut self, mark: Mark, text: impl Into<String>) {
        self.lines.push((mark, text.into()));
    }
}

/// Runs every check; a check that cannot read something reports it as a problem.
pub async fn doctor(client: &Client, args: &DoctorArgs) -> Result<DoctorReport, CliError> {
    let mut r = DoctorReport::default();
    let timeout = Duration::from_secs(args.probe_timeout.max(1));
    let version = client.apiserver_version().await?;
    r.add(
        Mark::Info,
        format!(
            "Kubernetes {}.{} ({}); aadpodid {}",
            version.major,
            version.minor,
            version.git_version,
            aadpodid_runtime::VERSION
        ),
    );
    check_crds(&mut r, client).await?;
    let found = cluster::components(client).await?;
    let managed = found.nmi.iter().filter_map(|d| cluster::nmi_flags(d).ok()).any(|f| !f.standard_mode);
    match (found.mic.as_slice(), managed) {
        ([], true) => r.add(Mark::Info, "managed mode: no MIC"),
        ([], false) => {
            r.add(Mark::Problem, "no MIC Deployment found (labelled app.kubernetes.io/component=mic, or named mic)")
        }
        ([mic], _) => check_mic(&mut r, client, mic, timeout).await?,
        (many, _) => r.add(Mark::Problem, format!("{} MIC Deployments found; run one", many.len())),
    }
    match found.nmi.as_slice() {
        [] => r.add(Mark::Problem, "no NMI DaemonSet found (labelled app.kubernetes.io/component=nmi, or named nmi)"),
        [nmi] => check_nmi(&mut r, client, nmi, timeout).await?,
        many => r.add(Mark::Problem, format!("{} NMI DaemonSets found; run one", many.len())),
    }
    versions(&mut r, &found);
    Ok(r)
}

/// The parts of a CRD that decide what the API server keeps and shows.
fn crd_essentials(crd: &CustomResourceDefinition) -> Value {
    let versions: Vec<Value> = crd
        .spec
        .versions
        .iter()
        .map(|v| {
            serde_json::json!([v.name, v.served, v.storage, v.schema, v.additional_printer_columns, v.subresources])
        })
        .collect();
    serde_json::json!([crd.spec.group, crd.spec.names, crd.spec.scope, versions])
}

async fn check_crds(r: &mut DoctorReport, client: &Client) -> Result<(), CliError> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for ours in aadpodid_api::crds() {
        let name = ours.name_any();
        match api.get_opt(&name).await? {
            None => r.add(Mark::Problem, format!("CRD {name} is missing: kubectl apply -f deploy/crds.yaml (or the chart's crds/)")),
            Some(installed) if crd_essentials(&installed) == crd_essentials(&ours) => {
                r.add(Mark::Ok, format!("CRD {name} is current"));
            }
            Some(_) => r.add(
                Mark::Problem,
                format!("CRD {name} differs from this build's (schema or columns): kubectl apply --server-side -f deploy/crds.yaml (Helm never upgrades crds/)"),
            ),
        }
    }
    Ok(())
}

/// The pods of a workload, by its selector's `matchLabels`.
async fn pods_of(
    client: &Client,
    namespace: &str,
    match_labels: Option<&BTreeMap<String, String>>,
) -> Result<Vec<Pod>, kube::Error> {
    let selector = match_labels.into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
}

async fn check_mic(r: &mut DoctorReport, client: &Client, mic: &Deployment, timeout: Duration) -> Result<(), CliError> {
    let flags = match cluster::mic_flags(mic) {
        Ok(f) => f,
        Err(e) => {
            r.add(Mark::Problem, format!("MIC Deployment {}: {e}", cluster::key(mic)));
            return Ok(());
        }
    };
    let ns = mic.namespace().unwrap_or_default();
    let selector = mic.spec.as_ref().and_then(|s| s.selector.match_labels.as_ref());
    let pods = pods_of(client, &ns, selector).await?;
    let lease = Api::<Lease>::namespaced(client.clone(), &flags.leader_namespace).get_opt(&flags.leader_name).await?;
    let holder =
        lease.as_ref().and_then(|l| l.spec.as_ref()).and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    let mut active = Vec::new();
    for pod in &pods {
        let name = pod.name_any();
        match healthz(client, &ns, &name, flags.probe_port, timeout).await {
            Ok(body) if body == "Active" => active.push(name),
            Ok(body) => r.add(Mark::Info, format!("MIC pod {ns}/{name}: {body} (a follower)")),
            Err(e) => r.add(
                Mark::Problem,
                format!("MIC pod {ns}/{name} does not answer /healthz on port {}: {e}", flags.probe_port),
            ),
        }
    }
    match active.as_slice() {
        [one] if *one == holder => r.add(
            Mark::Ok,
            format!("MIC leader {ns}/{one} holds Lease {}/{} and is Active", flags.leader_namespace, flags.leader_name),
        ),
        [one] => r.add(
            Mark::Problem,
            format!(
                "MIC pod {ns}/{one} is Active but Lease {}/{} names {holder:?}",
                flags.leader_namespace, flags.leader_name
            ),
        ),
        [] => r.add(
            Mark::Problem,
            format!(
                "no MIC replica is Active (Lease {}/{} holder {holder:?}): nothing assigns identities",
                flags.leader_namespace, flags.leader_name
            ),
        ),
        many => r.add(
            Mark::Problem,
            format!("{} MIC replicas say Active ({}): more than one leader", many.len(), many.join(", ")),
        ),
    }
    Ok(())
}

/// The nodes a DaemonSet's `nodeSelector` admits (the chart tolerates every taint).
fn eligible(nodes: Vec<Node>, ds: &DaemonSet) -> Vec<Node> {
    let selector = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    nodes.into_iter().filter(|n| selector.iter().all(|(k, v)| n.labels().get(k) == Some(v))).collect()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn check_nmi(r: &mut DoctorReport, client: &Client, ds: &DaemonSet, timeout: Duration) -> Result<(), CliError> {
    let flags = match cluster::nmi_flags(ds) {
        Ok(f) => f,
        Err(e) => {
            r.add(Mark::Problem, format!("NMI DaemonSet {}: {e}", cluster::key(ds)));
            return Ok(());
        }
    };
    let ns = ds.namespace().unwrap_or_default();
    let pods = pods_of(client, &ns, ds.spec.as_ref().and_then(|s| s.selector.match_labels.as_ref())).await?;
    let nodes = eligible(Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items, ds);
    for node in &nodes {
        let node = node.name_any();
        let on_node = pods.iter().find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()));
        let Some(pod) = on_node else {
            r.add(Mark::Problem, format!("node {node}: no NMI pod: pods there get no tokens"));
            continue;
        };
        let name = pod.name_any();
        let ready = if is_ready(pod) { "Ready" } else { "not Ready" };
        match healthz(client, &ns, &name, flags.probe_port, timeout).await {
            Ok(body) if body == "Active" => {
                r.add(Mark::Ok, format!("node {node}: NMI {name} {ready}, iptables rules installed (Active)"))
            }
            Ok(body) => r.add(
                Mark::Problem,
                format!("node {node}: NMI {name} {ready} says {body:?}: its iptables rules are not installed yet"),
            ),
            Err(e) => r.add(
                Mark::Problem,
                format!("node {node}: NMI {name} ({ready}) does not answer /healthz on port {}: {e}", flags.probe_port),
            ),
        }
    }
    Ok(())
}

fn image(template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> Option<String> {
    template?.spec.as_ref()?.containers.first()?.image.clone()
}

fn versions(r: &mut DoctorReport, found: &cluster::Components) {
    let mic: Vec<String> = found.mic.iter().filter_map(|d| image(d.spec.as_ref().map(|s| &s.template))).collect();
    let nmi: Vec<String> = found.nmi.iter().filter_map(|d| image(d.spec.as_ref().map(|s| &s.template))).collect();
    r.add(Mark::Info, format!("images: MIC {}; NMI {}", mic.join(", "), nmi.join(", ")));
    let tag = |i: &String| i.rsplit_once(':').map(|(_, t)| t.to_owned()).unwrap_or_default();
    if let (Some(m), Some(n)) = (mic.first(), nmi.first())
        && tag(m) != tag(n)
    {
        r.add(
            Mark::Warn,
            format!("MIC and NMI run different versions ({} and {}): upgrade them together", tag(m), tag(n)),
        );
    }
}

impl std::fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::explain::write_lines(f, &self.lines)?;
        let verdict = if self.healthy() { "\nHealthy." } else { "\nProblems found." };
        writeln!(f, "{verdict}")
    }
}
