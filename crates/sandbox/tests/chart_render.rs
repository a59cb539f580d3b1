//! The Helm chart `charts/aad-pod-identity`: `helm lint`, golden `helm template` output, and the
//! behaviours that matter (managed mode, adminsecret, azureIdentities, exact RBAC rules).
//!
//! Needs only the `helm` binary (no cluster). Regenerate the goldens with
//! `UPDATE_GOLDEN=1 cargo test -p aadpodid-sandbox --test chart_render`.

use std::path::PathBuf;
use std::process::Command;

use aadpodid_testkit::{Tools, repo_root};

const RELEASE: &str = "aadpodid";
const NAMESPACE: &str = "aadpodid-system";
/// The chart has no default image; every rendering here sets one (`.example` never resolves).
const IMAGE: &str = "image.repository=registry.example/aadpodid";

fn chart() -> PathBuf {
    repo_root().join("charts/aad-pod-identity")
}

fn helm(args: &[&str]) -> Result<String, String> {
    let tools = Tools::locate().expect("locating helm (hack/build-tools.sh)");
    let out = Command::new(&tools.helm)
        .args(args)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("aadpodid-helm-cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("aadpodid-helm-config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("aadpodid-helm-data"))
        .output()
        .expect("running helm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() { Ok(stdout) } else { Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))) }
}

/// `helm template` of the chart with `--set` pairs; panics when rendering fails.
fn template(sets: &[&str]) -> String {
    try_template(sets).unwrap_or_else(|e| panic!("helm template {sets:?} failed:\n{e}"))
}

fn try_template(sets: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec!["template", RELEASE, chart.to_str().unwrap(), "--namespace", NAMESPACE, "--set", IMAGE];
    for set in sets {
        args.push("--set");
        args.push(set);
    }
    helm(&args)
}

fn template_with_file(values: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let chart = chart();
    let file = file.to_str().unwrap();
    helm(&["template", RELEASE, chart.to_str().unwrap(), "--namespace", NAMESPACE, "--set", IMAGE, "-f", file])
        .unwrap_or_else(|e| panic!("helm template -f failed:\n{e}"))
}

/// One rendered object: its kind, name and text.
#[derive(Debug)]
struct Doc {
    kind: String,
    name: String,
    text: String,
}

fn docs(rendered: &str) -> Vec<Doc> {
    rendered
        .split("\n---\n")
        .filter_map(|text| {
            let kind = text.lines().find_map(|l| l.strip_prefix("kind: "))?.trim().to_string();
            let mut lines = text.lines().skip_while(|l| *l != "metadata:");
            let name = lines.find_map(|l| l.strip_prefix("  name: ")).unwrap_or_default().trim().to_string();
            Some(Doc { kind, name, text: text.to_string() })
        })
        .collect()
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> Option<&'a Doc> {
    docs.iter().find(|d| d.kind == kind && d.name == name)
}

fn flow_list(value: &str) -> Vec<String> {
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('"').to_string())
        .collect()
}

/// `(apiGroups, resources, verbs)` of a ClusterRole written with flow lists, as the chart does.
type Rule = (Vec<String>, Vec<String>, Vec<String>);

fn rules(doc: &Doc) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for line in doc.text.lines().skip_while(|l| *l != "rules:") {
        let line = line.trim();
        if let Some(groups) = line.strip_prefix("- apiGroups:") {
            out.push((flow_list(groups), Vec::new(), Vec::new()));
        } else if let Some(resources) = line.strip_prefix("resources:") {
            out.last_mut().expect("resources before apiGroups").1 = flow_list(resources);
        } else if let Some(verbs) = line.strip_prefix("verbs:") {
            out.last_mut().expect("verbs before apiGroups").2 = flow_list(verbs);
        }
    }
    out
}

fn table(rows: &[(&[&str], &[&str], &[&str])]) -> Vec<Rule> {
    let own = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    rows.iter().map(|(g, r, v)| (own(g), own(r), own(v))).collect()
}

#[test]
fn lint_passes() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for sets in [
        "operationMode=standard",
        "operationMode=managed",
        "forceNamespaced=true",
        "rbac.createUserFacingClusterRoles=true",
    ] {
        let out = helm(&["lint", chart, "--set", IMAGE, "--set", sets])
            .unwrap_or_else(|e| panic!("helm lint --set {sets}:\n{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn golden_templates() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let dir = chart().join("tests/golden");
    let mut failures = Vec::new();
    for (name, sets) in [
        ("defaults", &[][..]),
        ("managed", &["operationMode=managed"][..]),
        ("namespaced", &["forceNamespaced=true"][..]),
    ] {
        let rendered = template(sets);
        let path = dir.join(format!("{name}.yaml"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_default();
        if golden != rendered {
            failures.push(format!("{} differs from `helm template` {sets:?}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nif the change is intended, run `UPDATE_GOLDEN=1 cargo test -p aadpodid-sandbox --test chart_render` and review the diff",
        failures.join("\n")
    );
}

#[test]
fn without_an_image_rendering_fails_and_says_how_to_build_and_set_one() {
    let chart = chart();
    for args in [
        vec!["template", RELEASE, chart.to_str().unwrap()],
        vec!["template", RELEASE, chart.to_str().unwrap(), "--set", "operationMode=managed"],
    ] {
        let err = helm(&args).expect_err("no default image");
        for want in ["image.repository is not set", "hack/images.sh", "--set image.repository="] {
            assert!(err.contains(want), "{args:?}: {want:?} missing from:\n{err}");
        }
    }
    let rendered = template(&["image.repository=registry.example/aadpodid/"]);
    assert!(rendered.contains("image: \"registry.example/aadpodid/nmi:v1.8.17\""), "a trailing slash is dropped");
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let deploy = std::fs::read_to_string(repo_root().join("deploy/crds.yaml")).unwrap();
    let chart = std::fs::read_to_string(chart().join("crds/crd.yaml")).unwrap();
    assert!(
        deploy == chart,
        "charts/aad-pod-identity/crds/crd.yaml drifted from deploy/crds.yaml: run hack/generate.sh"
    );
}

#[test]
fn standard_mode_renders_mic_and_nmi() {
    let docs = docs(&template(&[]));
    for (kind, name) in [
        ("Deployment", "aad-pod-identity-mic"),
        ("ServiceAccount", "aad-pod-identity-mic"),
        ("ClusterRole", "aad-pod-identity-mic"),
        ("ClusterRoleBinding", "aad-pod-identity-mic"),
        ("DaemonSet", "aad-pod-identity-nmi"),
        ("ServiceAccount", "aad-pod-identity-nmi"),
        ("ClusterRole", "aad-pod-identity-nmi"),
        ("ClusterRoleBinding", "aad-pod-identity-nmi"),
        ("AzurePodIdentityException", "mic"),
        ("AzurePodIdentityException", "aks-addon-exception"),
    ] {
        assert!(find(&docs, kind, name).is_some(), "{kind} {name} missing");
    }
    assert!(!docs.iter().any(|d| d.kind == "Secret"), "no adminsecret, no Secret");
    assert!(!docs.iter().any(|d| d.kind == "PodDisruptionBudget"));
    assert!(!docs.iter().any(|d| d.kind == "Service"), "the chart renders no Service");

    let mic = find(&docs, "Deployment", "aad-pod-identity-mic").unwrap();
    for want in [
        "- --cloudconfig=/etc/kubernetes/azure.json",
        "- --logtostderr",
        "- name: MIC_POD_NAMESPACE",
        "fieldPath: metadata.namespace",
        "- name: FORCENAMESPACED\n              value: \"false\"",
        "runAsUser: 0",
        "readOnlyRootFilesystem: true",
        "path: /healthz\n              port: 8080",
        "image: \"registry.example/aadpodid/mic:v1.8.17\"",
    ] {
        assert!(mic.text.contains(want), "MIC Deployment lacks {want:?}:\n{}", mic.text);
    }
    assert!(!mic.text.contains("readinessProbe"));

    let nmi = find(&docs, "DaemonSet", "aad-pod-identity-nmi").unwrap();
    for want in [
        "hostNetwork: true",
        "dnsPolicy: ClusterFirstWithHostNet",
        "path: /run/xtables.lock",
        "path: /etc/default/kubelet",
        "- --node=$(NODE_NAME)",
        "- --http-probe-port=8085",
        "- --enableScaleFeatures=true",
        "- --metadata-header-required=true",
        "- --operation-mode=standard",
        "- --kubelet-config=/etc/default/kubelet",
        "- name: FORCENAMESPACED",
        "runAsUser: 0",
        "drop:\n                - ALL",
        "add:\n                - DAC_READ_SEARCH\n                - NET_ADMIN\n                - NET_RAW",
        "path: /healthz\n              port: 8085",
        "tier: node",
    ] {
        assert!(nmi.text.contains(want), "NMI DaemonSet lacks {want:?}:\n{}", nmi.text);
    }
    assert!(!nmi.text.contains("- --forceNamespaced"));
}

#[test]
fn managed_mode_renders_no_mic_objects() {
    let rendered = template(&["operationMode=managed"]);
    let docs = docs(&rendered);
    for doc in &docs {
        assert!(!doc.name.ends_with("-mic") && doc.name != "mic", "managed mode rendered {} {}", doc.kind, doc.name);
        assert!(!doc.text.contains("app.kubernetes.io/component: mic"), "managed mode rendered MIC object {doc:?}");
    }
    assert!(!docs.iter().any(|d| d.kind == "Deployment"));
    assert!(find(&docs, "AzurePodIdentityException", "aks-addon-exception").is_some());
    let nmi = find(&docs, "DaemonSet", "aad-pod-identity-nmi").unwrap();
    assert!(nmi.text.contains("- --operation-mode=managed"));
    assert!(nmi.text.contains("- --forceNamespaced"));
    assert!(!nmi.text.contains("FORCENAMESPACED"), "NMI gets FORCENAMESPACED in standard mode only");
    let role = find(&docs, "ClusterRole", "aad-pod-identity-nmi").unwrap();
    assert!(!role.text.contains("azureassignedidentities"));
}

#[test]
fn nmi_recognises_only_mic_in_the_release_namespace_with_its_service_account() {
    let nmi = |sets: &[&str]| find(&docs(&template(sets)), "DaemonSet", "aad-pod-identity-nmi").unwrap().text.clone();
    let standard = nmi(&[]);
    assert!(standard.contains("- --MICNamespace=aadpodid-system\n"), "{standard}");
    assert!(standard.contains("- --mic-service-account=aad-pod-identity-mic\n"), "{standard}");
    assert!(nmi(&["nmi.micNamespace=other"]).contains("- --MICNamespace=other\n"));
    for sets in [&["operationMode=managed"][..], &["rbac.enabled=false"][..]] {
        let text = nmi(sets);
        assert!(text.contains("- --mic-service-account=\n"), "no MIC service account, short-cut off: {sets:?}\n{text}");
    }
}

#[test]
fn force_namespaced_reaches_both_components() {
    let docs = docs(&template(&["forceNamespaced=true"]));
    for (kind, name) in [("Deployment", "aad-pod-identity-mic"), ("DaemonSet", "aad-pod-identity-nmi")] {
        let doc = find(&docs, kind, name).unwrap();
        assert!(doc.text.contains("- name: FORCENAMESPACED\n              value: \"true\""), "{kind}:\n{}", doc.text);
    }
}

#[test]
fn mic_exception_can_be_disabled() {
    let docs = docs(&template(&["installMICException=false"]));
    assert!(!docs.iter().any(|d| d.kind == "AzurePodIdentityException"));
}

const ADMINSECRET: &[&str] = &[
    "adminsecret.cloud=AzurePublicCloud",
    "adminsecret.subscriptionID=sub",
    "adminsecret.resourceGroup=rg",
    "adminsecret.vmType=vmss",
    "adminsecret.tenantID=tenant",
    "adminsecret.clientID=client",
    "adminsecret.clientSecret=secret",
];

#[test]
fn adminsecret_renders_secret_and_env() {
    let default_checksum = {
        let docs = docs(&template(&[]));
        let mic = find(&docs, "Deployment", "aad-pod-identity-mic").unwrap();
        mic.text.lines().find(|l| l.contains("checksum/config")).unwrap().to_string()
    };
    let docs = docs(&template(ADMINSECRET));
    let secret = find(&docs, "Secret", "aad-pod-identity-mic").expect("adminsecret renders Secret <name>-mic");
    for (key, value) in [
        ("Cloud", "AzurePublicCloud"),
        ("SubscriptionID", "sub"),
        ("ResourceGroup", "rg"),
        ("VMType", "vmss"),
        ("TenantID", "tenant"),
        ("ClientID", "client"),
        ("ClientSecret", "secret"),
    ] {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        assert!(secret.text.contains(&format!("  {key}: \"{encoded}\"")), "Secret lacks {key}:\n{}", secret.text);
    }
    assert!(!secret.text.contains("UseMSI"));

    let mic = find(&docs, "Deployment", "aad-pod-identity-mic").unwrap();
    for (env, key) in [
        ("CLOUD", "Cloud"),
        ("SUBSCRIPTION_ID", "SubscriptionID"),
        ("RESOURCE_GROUP", "ResourceGroup"),
        ("VM_TYPE", "VMType"),
        ("TENANT_ID", "TenantID"),
        ("CLIENT_ID", "ClientID"),
        ("CLIENT_SECRET", "ClientSecret"),
    ] {
        let want = format!(
            "- name: {env}\n              valueFrom:\n                secretKeyRef:\n                  name: aad-pod-identity-mic\n                  key: {key}\n"
        );
        assert!(mic.text.contains(&want), "MIC lacks env {env}:\n{}", mic.text);
    }
    assert!(!mic.text.contains("--cloudconfig"));
    assert!(!mic.text.contains("azure.json"));
    assert!(!mic.text.contains("runAsUser"));
    let checksum = mic.text.lines().find(|l| l.contains("checksum/config")).unwrap();
    assert_ne!(checksum, default_checksum, "checksum/config follows the Secret");

    let mut with_msi = ADMINSECRET.to_vec();
    with_msi.extend(["adminsecret.useMSI=true", "adminsecret.userAssignedMSIClientID=uami"]);
    let docs = self::docs(&template(&with_msi));
    let secret = find(&docs, "Secret", "aad-pod-identity-mic").unwrap();
    assert!(secret.text.contains("UseMSI: \"dHJ1ZQ==\""), "{}", secret.text);
    assert!(secret.text.contains("UserAssignedMSIClientID: \"dWFtaQ==\""), "{}", secret.text);
    let mic = find(&docs, "Deployment", "aad-pod-identity-mic").unwrap();
    assert!(mic.text.contains("- name: USE_MSI") && mic.text.contains("- name: USER_ASSIGNED_MSI_CLIENT_ID"));

    let err = try_template(&ADMINSECRET[..6]).expect_err("clientSecret is required");
    assert!(err.contains("adminsecret.clientSecret"), "{err}");
}

#[test]
fn optional_mic_flags_render_only_when_set() {
    let docs = docs(&template(&[
        "mic.probePort=9000",
        "mic.prometheusPort=8889",
        "mic.syncRetryDuration=60s",
        "mic.immutableUserMSIs={a,b}",
        "mic.leaderElection.namespace=ns1",
        "mic.podDisruptionBudget.minAvailable=1",
        "customUserAgent=ua",
    ]));
    let mic = find(&docs, "Deployment", "aad-pod-identity-mic").unwrap();
    for want in [
        "- --http-probe-port=9000",
        "- --prometheus-port=8889",
        "- --syncRetryDuration=60s",
        "- --immutable-user-msis=a,b",
        "- --leader-election-namespace=ns1",
        "- --custom-user-agent=ua",
        "port: 9000",
        "name: metrics",
    ] {
        assert!(mic.text.contains(want), "MIC lacks {want:?}:\n{}", mic.text);
    }
    let pdb = find(&docs, "PodDisruptionBudget", "mic-pdb").expect("PDB");
    assert!(pdb.text.contains("minAvailable: 1"));
    let nmi = find(&docs, "DaemonSet", "aad-pod-identity-nmi").unwrap();
    assert!(nmi.text.contains("- --custom-user-agent=ua"));
}

#[test]
fn nmi_keep_rules_on_exit_renders_only_when_set() {
    let flag = "- --keep-rules-on-exit=true";
    let default = docs(&template(&[]));
    let nmi = find(&default, "DaemonSet", "aad-pod-identity-nmi").unwrap();
    assert!(!nmi.text.contains("keep-rules-on-exit"), "off by default: NMI removes its rules on exit");
    let kept = docs(&template(&["nmi.keepRulesOnExit=true"]));
    let nmi = find(&kept, "DaemonSet", "aad-pod-identity-nmi").unwrap();
    assert!(nmi.text.contains(flag), "NMI lacks {flag:?}:\n{}", nmi.text);
}

#[test]
fn azure_identities_render_pairs() {
    let rendered = template_with_file(
        r#"
azureIdentities:
  id0:
    type: 0
    resourceID: /subscriptions/s/resourcegroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id0
    clientID: c0
    binding:
      selector: sel0
  id1:
    name: custom
    namespace: other
    type: 1
    tenantID: t1
    clientID: c1
    clientPassword: '{"name":"s","namespace":"other"}'
    binding:
      name: bind1
      selector: sel1
"#,
    );
    let list = docs(&rendered).into_iter().find(|d| d.kind == "List").expect("a v1 List");
    let text = &list.text;
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("kind: ")).collect();
    assert_eq!(kinds, ["List", "AzureIdentity", "AzureIdentityBinding", "AzureIdentity", "AzureIdentityBinding"]);
    for want in [
        "name: id0\n      namespace: aadpodid-system",
        "resourceID: \"/subscriptions/s/resourcegroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id0\"",
        "clientID: \"c0\"",
        "name: id0-binding",
        "azureIdentity: id0\n      selector: \"sel0\"",
        "name: custom\n      namespace: other",
        "tenantID: \"t1\"",
        "clientPassword: {\"name\":\"s\",\"namespace\":\"other\"}",
        "name: bind1\n      namespace: other",
        "azureIdentity: custom\n      selector: \"sel1\"",
    ] {
        assert!(text.contains(want), "identities lack {want:?}:\n{text}");
    }
}

#[test]
fn azure_identity_requires_resource_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, "azureIdentities:\n  x:\n    type: 0\n    clientID: c\n    binding:\n      selector: s\n")
        .unwrap();
    let chart = chart();
    let err = helm(&["template", RELEASE, chart.to_str().unwrap(), "--set", IMAGE, "-f", file.to_str().unwrap()])
        .expect_err("resourceID is required for type 0");
    assert!(err.contains("resourceID is required"), "{err}");
}

#[test]
fn mic_rbac_rules_are_exact() {
    let docs = docs(&template(&[]));
    let role = find(&docs, "ClusterRole", "aad-pod-identity-mic").unwrap();
    let expected = table(&[
        (&["apiextensions.k8s.io"], &["customresourcedefinitions"], &["*"]),
        (&[""], &["pods", "nodes"], &["list", "watch"]),
        (&[""], &["events"], &["create", "patch"]),
        (&[""], &["configmaps"], &["get", "create", "update", "patch"]),
        (&[""], &["endpoints"], &["create", "get", "update"]),
        (&["coordination.k8s.io"], &["leases"], &["get", "create", "update"]),
        (
            &["aadpodidentity.k8s.io"],
            &["azureidentitybindings", "azureidentities"],
            &["get", "list", "watch", "update"],
        ),
        (&["aadpodidentity.k8s.io"], &["azurepodidentityexceptions"], &["list", "update"]),
        (&["aadpodidentity.k8s.io"], &["azureassignedidentities"], &["*"]),
    ]);
    assert_eq!(rules(role), expected);
    let binding = find(&docs, "ClusterRoleBinding", "aad-pod-identity-mic").unwrap();
    assert!(binding.text.contains("name: aad-pod-identity-mic\n    namespace: aadpodid-system"), "{}", binding.text);

    let docs = self::docs(&template(&["rbac.pspEnabled=true"]));
    let role = find(&docs, "ClusterRole", "aad-pod-identity-mic").unwrap();
    let last = rules(role).pop().unwrap();
    assert_eq!(last, table(&[(&["policy"], &["podsecuritypolicies"], &["use"])]).remove(0));
    assert!(role.text.contains("resourceNames: [\"aad-pod-identity-psp-mic\"]"));
}

#[test]
fn nmi_rbac_rules_are_exact() {
    let common = |secrets: bool, assigned: bool| {
        let mut rows: Vec<(&[&str], &[&str], &[&str])> = vec![
            (&["apiextensions.k8s.io"], &["customresourcedefinitions"], &["get", "list"]),
            (&[""], &["pods"], &["get", "list", "watch"]),
        ];
        if secrets {
            rows.push((&[""], &["secrets"], &["get"]));
        }
        rows.push((
            &["aadpodidentity.k8s.io"],
            &["azureidentitybindings", "azureidentities", "azurepodidentityexceptions"],
            &["get", "list", "watch"],
        ));
        if assigned {
            rows.push((&["aadpodidentity.k8s.io"], &["azureassignedidentities"], &["get", "list", "watch"]));
        }
        table(&rows)
    };
    for (sets, secrets, assigned) in [
        (&[][..], true, true),
        (&["rbac.allowAccessToSecrets=false"][..], false, true),
        (&["operationMode=managed"][..], true, false),
    ] {
        let docs = docs(&template(sets));
        let role = find(&docs, "ClusterRole", "aad-pod-identity-nmi").unwrap();
        assert_eq!(rules(role), common(secrets, assigned), "{sets:?}");
    }
}

#[test]
fn rbac_disabled_renders_no_rbac() {
    let docs = docs(&template(&["rbac.enabled=false"]));
    for doc in &docs {
        assert!(
            !matches!(doc.kind.as_str(), "ClusterRole" | "ClusterRoleBinding" | "ServiceAccount"),
            "rbac.enabled=false rendered {} {}",
            doc.kind,
            doc.name
        );
        assert!(!doc.text.contains("serviceAccountName"));
    }
}

#[test]
fn user_facing_cluster_roles() {
    let docs = docs(&template(&["rbac.createUserFacingClusterRoles=true"]));
    let view = find(&docs, "ClusterRole", "aadpodid-aad-pod-identity-view").expect("view role");
    assert!(view.text.contains("rbac.authorization.k8s.io/aggregate-to-view: \"true\""));
    assert!(view.text.contains("- azureassignedidentities"));
    assert!(view.text.contains("verbs: [\"get\", \"list\", \"watch\"]"));
    let edit = find(&docs, "ClusterRole", "aadpodid-aad-pod-identity-edit").expect("edit role");
    assert!(!edit.text.contains("aggregate-to-view"));
    assert!(edit.text.contains("verbs: [\"create\", \"delete\", \"deletecollection\", \"patch\", \"update\"]"));
}

#[test]
fn psps_render_only_where_the_api_exists() {
    let docs = docs(&template(&["rbac.pspEnabled=true"]));
    assert!(!docs.iter().any(|d| d.kind == "PodSecurityPolicy"), "policy/v1beta1 PSPs are gone since k8s 1.25");

    let chart = chart();
    let render = |mode: &str| {
        let set = format!("rbac.pspEnabled=true,operationMode={mode}");
        let args = [
            "template",
            RELEASE,
            chart.to_str().unwrap(),
            "--set",
            &set,
            "--set",
            IMAGE,
            "--api-versions",
            "policy/v1beta1/PodSecurityPolicy",
        ];
        self::docs(&helm(&args).unwrap_or_else(|e| panic!("helm template {args:?}:\n{e}")))
    };
    let standard = render("standard");
    let nmi = find(&standard, "PodSecurityPolicy", "aad-pod-identity-psp-nmi").expect("NMI PSP");
    assert!(nmi.text.contains("hostNetwork: true"));
    assert!(nmi.text.contains("allowedCapabilities:\n    - NET_ADMIN\n    - DAC_READ_SEARCH\n    - NET_RAW"));
    let mic = find(&standard, "PodSecurityPolicy", "aad-pod-identity-psp-mic").expect("MIC PSP");
    assert!(!mic.text.contains("hostNetwork") && !mic.text.contains("allowedCapabilities"));

    let managed = render("managed");
    assert!(find(&managed, "PodSecurityPolicy", "aad-pod-identity-psp-nmi").is_some());
    assert!(find(&managed, "PodSecurityPolicy", "aad-pod-identity-psp-mic").is_none());
}

#[test]
fn pdb_api_version_follows_the_cluster() {
    let chart = chart();
    for (kube, want) in [("1.20.0", "apiVersion: policy/v1beta1"), ("1.30.0", "apiVersion: policy/v1\n")] {
        let args = [
            "template",
            RELEASE,
            chart.to_str().unwrap(),
            "--kube-version",
            kube,
            "--set",
            IMAGE,
            "--set",
            "mic.podDisruptionBudget.minAvailable=1",
            "--show-only",
            "templates/mic-pod-disruption-budget.yaml",
        ];
        let out = helm(&args).unwrap_or_else(|e| panic!("helm template {args:?}:\n{e}"));
        assert!(out.contains(want), "k8s {kube}: want {want:?}:\n{out}");
        assert!(out.contains("name: mic-pdb") && out.contains("minAvailable: 1"), "{out}");
    }
}
