//! The plain manifests in `deploy/infra` (for users without Helm): rendered from the chart by
//! `hack/render-deploy.sh`, so they must match a fresh rendering, and a real API server must
//! accept every object in them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use aadpodid_testkit::{Tools, install_crds, repo_root, shared};

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn plain_manifests_match_a_fresh_rendering_of_the_chart() {
    let tools = Tools::locate().expect("locating helm (hack/build-tools.sh)");
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo_root().join("hack/render-deploy.sh"))
        .arg(fresh.path())
        .env("AADPODID_HELM", &tools.helm)
        .env("HELM_CACHE_HOME", fresh.path().join(".helm-cache"))
        .env("HELM_CONFIG_HOME", fresh.path().join(".helm-config"))
        .env("HELM_DATA_HOME", fresh.path().join(".helm-data"))
        .output()
        .expect("running hack/render-deploy.sh");
    assert!(out.status.success(), "render-deploy.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let checked_in = files(&repo_root().join("deploy/infra"));
    let rendered: BTreeMap<_, _> =
        files(fresh.path()).into_iter().filter(|(path, _)| !path.starts_with(".helm-cache")).collect();
    let names = |m: &BTreeMap<PathBuf, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&checked_in), names(&rendered), "deploy/infra has other files than the chart renders");
    for (path, text) in &rendered {
        assert!(
            checked_in[path] == *text,
            "deploy/infra/{} drifted from the chart: run hack/generate.sh",
            path.display()
        );
    }
    // The variants differ where the original's did.
    let rbac = &checked_in[Path::new("deployment-rbac.yaml")];
    let plain = &checked_in[Path::new("deployment.yaml")];
    let managed = &checked_in[Path::new("managed-mode-deployment.yaml")];
    let secret = &checked_in[Path::new("noazurejson/deployment-rbac.yaml")];
    assert!(rbac.contains("kind: ClusterRoleBinding") && !plain.contains("kind: ClusterRole"));
    assert!(!managed.contains("kind: Deployment") && managed.contains("kind: DaemonSet"));
    assert!(secret.contains("ClientSecret: <base64-encoded-clientSecret>"), "{secret}");
    assert!(!rbac.contains("helm.sh/chart") && !rbac.contains("managed-by: Helm"));
}

#[tokio::test]
async fn every_plain_manifest_is_accepted_by_a_real_apiserver() {
    let cp = shared();
    install_crds(&cp.client()).await.unwrap();
    for (path, text) in files(&repo_root().join("deploy/infra")) {
        // The noazurejson Secret carries placeholders that are not base64 by design.
        let applied = if text.contains("<base64-encoded-") {
            text.lines().filter(|l| !l.contains("<base64-encoded-")).collect::<Vec<_>>().join("\n")
        } else {
            text
        };
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), applied).unwrap();
        let out = cp.kubectl(&["apply", "--dry-run=server", "-f", file.path().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "kubectl apply --dry-run=server -f deploy/infra/{}:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let objects = String::from_utf8_lossy(&out.stdout).lines().count();
        assert!(objects >= 2, "deploy/infra/{} applied only {objects} objects", path.display());
    }
}
