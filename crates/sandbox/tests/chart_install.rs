//! `helm install` of charts/aad-pod-identity into a real apiserver (audit log at level
//! Metadata), our MIC and NMI run under the chart's service accounts through the walkthrough's flow
//! and the flows that need the rest of their RBAC, then:
//! - RBAC enough: the flows work and no request of either service account was forbidden;
//! - RBAC not too much: every (apiGroup, resource, verb) the chart grants them was used, except
//!   the explicit [`NEVER_USED`] list, which must match the unused set exactly;
//! - `helm uninstall` leaves none of the release's objects behind (CRDs stay, by Helm design).
//!
//! Needs root (network namespaces, iptables), Python azure-identity and the control-plane
//! tools (`bash hack/setup.sh`), and fresh `mic` and `nmi` binaries (`cargo test --workspace`
//! builds them; alone, run `cargo build -p aadpodid-mic -p aadpodid-nmi -p aadpodid-cli` first).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aadpodid_api::{AzureIdentity, AzureIdentityBinding, AzureIdentitySpec};
use aadpodid_sandbox::{Config, NAMESPACE, POD_NAMESPACE, RELEASE, Sandbox};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, SecretReference};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const MIC_SA: &str = "system:serviceaccount:aad-broker:aad-pod-identity-mic";
const NMI_SA: &str = "system:serviceaccount:aad-broker:aad-pod-identity-nmi";
/// MIC's type-upgrade record (`--config-map-name`, `--type-upgrade-status-key` defaults).
const UPGRADE_CONFIG_MAP: &str = "aad-pod-identity-config";
const UPGRADE_KEY: &str = "type-upgrade-status";
const SP_CLIENT_ID: &str = "0d3f5b7a-9c1e-4f2a-8b3c-4d5e6f7a8b9c";
const DEADLINE: Duration = Duration::from_secs(60);

/// Grants of the chart that neither component uses in any flow it can be driven through here,
/// with the reason. Asserted to be exactly the unused set: a grant that becomes used, or a new
/// unused grant, fails the test.
const NEVER_USED: &[(&str, &str, &str, &str, &str)] = &[
    // (service account, apiGroup, resource, verb, reason)
    (
        MIC_SA,
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "*",
        "kept from the upstream chart; our MIC never reads or writes CRDs",
    ),
    (MIC_SA, "", "configmaps", "update", "the type-upgrade record is created or merge-patched, never replaced"),
    (
        MIC_SA,
        "",
        "events",
        "patch",
        "client-go's recorder patches a repeated Event's count; ours writes each Event once (spam filter) and never patches",
    ),
    (
        MIC_SA,
        "aadpodidentity.k8s.io",
        "azureidentities",
        "get",
        "MIC reads identities from its watch cache (list/watch) only",
    ),
    (
        MIC_SA,
        "aadpodidentity.k8s.io",
        "azureidentitybindings",
        "get",
        "MIC reads bindings from its watch cache (list/watch) only",
    ),
    (
        NMI_SA,
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "get",
        "kept from the upstream chart; our NMI never reads CRDs",
    ),
    (
        NMI_SA,
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "list",
        "kept from the upstream chart; our NMI never reads CRDs",
    ),
    (NMI_SA, "", "pods", "get", "NMI finds pods in its node-scoped watch cache (list/watch) only"),
    (
        NMI_SA,
        "aadpodidentity.k8s.io",
        "azureassignedidentities",
        "get",
        "NMI reads assignments from its watch cache (list/watch) only",
    ),
    (
        NMI_SA,
        "aadpodidentity.k8s.io",
        "azurepodidentityexceptions",
        "get",
        "NMI reads exceptions from its watch cache (list/watch) only",
    ),
    (
        NMI_SA,
        "aadpodidentity.k8s.io",
        "azureidentities",
        "get",
        "standard mode takes identities from the assignments; managed mode watches them (list/watch), never gets",
    ),
    (
        NMI_SA,
        "aadpodidentity.k8s.io",
        "azureidentities",
        "list",
        "watched only in managed mode (operationMode=managed), not in this standard-mode install",
    ),
    (
        NMI_SA,
        "aadpodidentity.k8s.io",
        "azureidentities",
        "watch",
        "watched only in managed mode (operationMode=managed), not in this standard-mode install",
    ),
    (
        NMI_SA,
        "aadpodidentity.k8s.io",
        "azureidentitybindings",
        "get",
        "managed mode watches bindings (list/watch), never gets",
    ),
    (
        NMI_SA,
        "aadpodidentity.k8s.io",
        "azureidentitybindings",
        "list",
        "watched only in managed mode (operationMode=managed), not in this standard-mode install",
    ),
    (
        NMI_SA,
        "aadpodidentity.k8s.io",
        "azureidentitybindings",
        "watch",
        "watched only in managed mode (operationMode=managed), not in this standard-mode install",
    ),
];

fn step(text: &str) {
    println!("\n==> {text}");
}

/// Our binaries as `cargo test --workspace` builds them (`target/<profile>/{mic,nmi}`); a
/// missing or stale one fails with the command to run. (Building them from here would resolve
/// other dependency features than the workspace test build and rebuild half the tree.)
fn config() -> Config {
    let mut cfg = Config::locate().unwrap_or_else(|e| panic!("{e}"));
    let root = aadpodid_testkit::repo_root();
    let crates = ["mic", "nmi", "cli", "api", "azure", "runtime"].map(|c| root.join("crates").join(c));
    let newest_source = crates
        .iter()
        .flat_map(|c| {
            [newest_mtime(&c.join("src")), std::fs::metadata(c.join("Cargo.toml")).and_then(|m| m.modified()).ok()]
        })
        .max()
        .flatten();
    for bin in [&cfg.mic_bin, &cfg.nmi_bin, &cfg.cli_bin] {
        let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
        assert!(
            built.is_some() && built >= newest_source,
            "{} is older than its sources: run `cargo build -p aadpodid-mic -p aadpodid-nmi -p aadpodid-cli` (or \
             the whole `cargo test --workspace`) first",
            bin.display()
        );
    }
    cfg.audit = true;
    // A chart value that reaches MIC's args, and a quicker failover below.
    cfg.helm_set = vec!["mic.leaderElection.duration=5s".to_owned()];
    cfg
}

/// The newest modification time of the `.rs` files under `dir`.
fn newest_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

async fn poll<T, F: std::future::Future<Output = Option<T>>>(what: &str, f: impl FnMut() -> F) -> T {
    aadpodid_testkit::eventually(what, DEADLINE, f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_install_rbac_is_enough_and_not_too_much_and_uninstall_leaves_nothing() {
    if let Err(e) = aadpodid_sandbox::require_root() {
        panic!("this test must run as root and is never skipped: {e}");
    }
    let mut sb = Sandbox::start(config()).await.unwrap_or_else(|e| panic!("{e}"));
    let client = sb.client();

    step("helm install without an image fails and says how to build and set one");
    let args = ["install", RELEASE, aadpodid_sandbox::CHART, "--namespace", NAMESPACE, "--create-namespace"];
    let err = sb.helm(&args.map(str::to_owned)).await.expect_err("the chart has no default image");
    assert!(err.contains("hack/images.sh") && err.contains("--set image.repository="), "{err}");

    step("the walkthrough under the chart's service accounts");
    if let Err(e) = sb.walkthrough().await {
        panic!("{e}\n{}", sb.log_tails(30));
    }

    step("a type-1 (service principal) identity: NMI reads its Secret");
    sb.sim().register_service_principal_secret(SP_CLIENT_ID, "sp-secret-value");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "sp-credentials", "namespace": NAMESPACE},
        "stringData": {"clientSecret": "sp-secret-value"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), NAMESPACE).create(&PostParams::default(), &secret).await.unwrap();
    let mut sp = AzureIdentity::new(
        "sp-identity",
        AzureIdentitySpec {
            type_: Some(1),
            client_id: Some(SP_CLIENT_ID.to_owned()),
            tenant_id: Some(sb.sim().tenant_id().to_owned()),
            client_password: Some(SecretReference {
                name: Some("sp-credentials".to_owned()),
                namespace: Some(NAMESPACE.to_owned()),
            }),
            ad_endpoint: Some(sb.sim().aad_https_url()),
            ..Default::default()
        },
    );
    sp.metadata.namespace = Some(NAMESPACE.to_owned());
    Api::<AzureIdentity>::namespaced(client.clone(), NAMESPACE).create(&PostParams::default(), &sp).await.unwrap();
    let binding: AzureIdentityBinding = serde_json::from_value(json!({
        "apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
        "metadata": {"name": "sp-identity-binding", "namespace": NAMESPACE},
        "spec": {"azureIdentity": "sp-identity", "selector": "sp-identity"},
    }))
    .unwrap();
    Api::<AzureIdentityBinding>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    sb.create_pod(0, "sp-app", "sp-identity").await.unwrap_or_else(|e| panic!("{e}"));
    sb.wait_assigned(POD_NAMESPACE, "sp-app").await.unwrap_or_else(|e| panic!("{e}"));
    let token = sb.token_for("sp-app", "https://vault.azure.net/.default").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(token.appid, SP_CLIENT_ID, "the service principal's token");

    step("pods deleted: MIC deletes their assignments (and detaches myidentity from the VM)");
    for pod in ["sp-app", "myapp-on-vm"] {
        sb.delete_pod(pod).await.unwrap_or_else(|e| panic!("{e}"));
        sb.wait_unassigned(POD_NAMESPACE, pod).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let vm = sb.nodes()[1].name.clone();
    let id = sb.identity().expect("step 1 ran").id.clone();
    poll("myidentity detached from the VM", || {
        let ids = sb.sim().vm_identities(aadpodid_sandbox::RESOURCE_GROUP, &vm);
        let detached = ids.is_some_and(|i| !i.has_user(&id));
        async move { detached.then_some(()) }
    })
    .await;

    step("leader failover: the new leader redoes the type upgrade (configmap patch, CRD object updates)");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let cm = cms.get(UPGRADE_CONFIG_MAP).await.expect("MIC recorded the type upgrade");
    assert!(cm.data.as_ref().is_some_and(|d| d.contains_key(UPGRADE_KEY)), "{cm:?}");
    let forget = json!({"data": {UPGRADE_KEY: null}});
    cms.patch(UPGRADE_CONFIG_MAP, &PatchParams::default(), &Patch::Merge(&forget)).await.unwrap();
    let leader = sb.mic_leader().await.expect("a MIC leads");
    let status = sb.stop_mic(leader).await.expect("the leader was running");
    assert!(status.success(), "MIC exits cleanly on SIGTERM: {status}\n{}", sb.log_tails(20));
    let new_leader = poll("the other MIC replica leads", || async { sb.mic_leader().await }).await;
    assert_ne!(new_leader, leader);
    poll("the new leader recorded the type upgrade again", || async {
        let cm = cms.get(UPGRADE_CONFIG_MAP).await.ok()?;
        cm.data.as_ref().filter(|d| d.contains_key(UPGRADE_KEY)).map(drop)
    })
    .await;
    // Still serving after the failover.
    sb.token("myapp").await.unwrap_or_else(|e| panic!("{e}"));

    step("MIC and NMI stop on SIGTERM; NMI removes its iptables rules");
    for (what, status) in sb.stop_components().await {
        assert!(status.is_some_and(|s| s.success()), "{what} exits cleanly: {status:?}\n{}", sb.log_tails(20));
    }
    for node in sb.nodes() {
        let out = node.net.ns.run("iptables", &["-w", "-t", "nat", "-S", "aad-metadata"]).unwrap();
        assert!(!out.status.success(), "NMI's chain is gone on {}", node.name);
    }

    step("RBAC: nothing forbidden, every grant used (but the listed ones)");
    let audit = std::fs::read_to_string(sb.control_plane().audit_log_path()).expect("audit log");
    let (used, forbidden) = usage(&audit);
    assert!(forbidden.is_empty(), "RBAC not enough: forbidden requests {forbidden:#?}");
    let grants = chart_grants(&client).await;
    assert_eq!(grants.keys().cloned().collect::<BTreeSet<_>>(), BTreeSet::from([MIC_SA.to_owned(), NMI_SA.to_owned()]));
    let mut unused = BTreeSet::new();
    for (sa, rules) in &grants {
        let by_sa = used.get(sa).cloned().unwrap_or_default();
        for (group, resource, verb) in expand(rules) {
            let hit = if verb == "*" {
                by_sa.iter().any(|(g, r, _)| *g == group && *r == resource)
            } else {
                by_sa.contains(&(group.clone(), resource.clone(), verb.clone()))
            };
            if !hit {
                unused.insert((sa.clone(), group, resource, verb));
            }
        }
        println!("{sa} used: {by_sa:?}");
    }
    let allowed: BTreeSet<(String, String, String, String)> =
        NEVER_USED.iter().map(|(s, g, r, v, _)| ((*s).into(), (*g).into(), (*r).into(), (*v).into())).collect();
    let newly_unused: Vec<_> = unused.difference(&allowed).collect();
    let now_used: Vec<_> = allowed.difference(&unused).collect();
    assert!(
        newly_unused.is_empty() && now_used.is_empty(),
        "RBAC grants used ≠ expected.\n granted but never used (trim the chart or exercise them): {newly_unused:#?}\n \
         listed as never used but used now (drop them from NEVER_USED): {now_used:#?}"
    );

    step("helm uninstall leaves nothing of the release behind");
    let manifest =
        sb.helm(&["get".into(), "manifest".into(), RELEASE.into(), "-n".into(), NAMESPACE.into()]).await.unwrap();
    let manifest_path = sb.dir().join("manifest.yaml");
    std::fs::write(&manifest_path, &manifest).unwrap();
    let file = manifest_path.display().to_string();
    let before = sb.kubectl(&["get", "-f", &file, "-o", "name"], None).await.unwrap();
    let documents = manifest.split("\n---").filter(|d| d.contains("kind:")).count();
    assert_eq!(before.lines().count(), documents, "every object of the manifest exists before:\n{before}");
    assert!(before.contains("clusterrole.rbac.authorization.k8s.io/aad-pod-identity-mic"), "{before}");
    println!("\n$ helm uninstall {RELEASE} -n {NAMESPACE}");
    let out = sb.helm(&["uninstall".into(), RELEASE.into(), "-n".into(), NAMESPACE.into()]).await.unwrap();
    print!("{out}");
    let after = sb.kubectl(&["get", "-f", &file, "--ignore-not-found", "-o", "name"], None).await.unwrap();
    assert_eq!(after.trim(), "", "objects of the release left after helm uninstall");
    let kinds = sb.kubectl(&["api-resources", "--verbs=list", "-o", "name"], None).await.unwrap();
    let kinds = kinds.split_whitespace().collect::<Vec<_>>().join(",");
    for selector in
        [format!("app.kubernetes.io/instance={RELEASE}"), "app.kubernetes.io/name=aad-pod-identity".to_owned()]
    {
        let left = sb.kubectl(&["get", &kinds, "--all-namespaces", "-l", &selector, "-o", "name"], None).await.unwrap();
        assert_eq!(left.trim(), "", "objects labelled {selector} left after helm uninstall");
    }
    // Helm installs crds/ once and never deletes them (so uninstalling cannot delete every
    // user's AzureIdentities); they stay, with the users' objects.
    let crds = sb.kubectl(&["get", "crd", "-o", "name"], None).await.unwrap();
    let ours: Vec<&str> = crds.lines().filter(|l| l.ends_with(".aadpodidentity.k8s.io")).collect();
    assert_eq!(ours.len(), 4, "the four CRDs stay after helm uninstall: {crds}");
    let ids = Api::<AzureIdentity>::namespaced(client.clone(), NAMESPACE).list(&ListParams::default()).await.unwrap();
    assert!(ids.items.iter().any(|i| i.metadata.name.as_deref() == Some("myidentity")), "users' objects stay too");

    sb.shutdown().await;
}

type Grant = (String, String, String);

/// Per user: the (apiGroup, resource, verb) of every request that was not forbidden, and the
/// forbidden ones.
fn usage(audit: &str) -> (BTreeMap<String, BTreeSet<Grant>>, Vec<String>) {
    let mut used: BTreeMap<String, BTreeSet<Grant>> = BTreeMap::new();
    let mut forbidden = Vec::new();
    for line in audit.lines() {
        let Ok(ev) = serde_json::from_str::<Value>(line) else { continue };
        let user = ev["user"]["username"].as_str().unwrap_or_default();
        if user != MIC_SA && user != NMI_SA {
            continue;
        }
        let obj = &ev["objectRef"];
        let Some(resource) = obj["resource"].as_str() else { continue };
        let resource = match obj["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        };
        let group = obj["apiGroup"].as_str().unwrap_or_default().to_owned();
        let verb = ev["verb"].as_str().unwrap_or_default().to_owned();
        if ev["responseStatus"]["code"].as_u64() == Some(403) {
            forbidden.push(format!("{user} {verb} {group}/{resource} {}", ev["requestURI"]));
        } else {
            used.entry(user.to_owned()).or_default().insert((group, resource, verb));
        }
    }
    (used, forbidden)
}

/// The rules of the release's ClusterRoles, by the service account their bindings name.
async fn chart_grants(client: &kube::Client) -> BTreeMap<String, Vec<PolicyRule>> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    let bindings = Api::<ClusterRoleBinding>::all(client.clone()).list(&lp).await.unwrap();
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let mut grants: BTreeMap<String, Vec<PolicyRule>> = BTreeMap::new();
    for b in bindings {
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role = roles.get(&b.role_ref.name).await.unwrap();
        for s in b.subjects.iter().flatten().filter(|s| s.kind == "ServiceAccount") {
            let user = format!("system:serviceaccount:{}:{}", s.namespace.as_deref().unwrap_or_default(), s.name);
            grants.entry(user).or_default().extend(role.rules.iter().flatten().cloned());
        }
    }
    grants
}

/// Every (apiGroup, resource, verb) a list of rules grants.
fn expand(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(r.resource_names.is_none(), "a rule limited to names: {r:?}");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}
