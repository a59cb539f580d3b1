//! The sandbox on real kubelet nodes: `helm install` of the unchanged chart puts MIC's
//! Deployment and NMI's DaemonSet, from the images `hack/images.sh --node` built, on two nodes
//! (containerd, runc, CNI and a kubelet each, in network namespaces) through a real scheduler
//! and controller manager; `kubectl apply -f examples/identityconfig/`; two Deployments
//! labelled `aadpodidbinding` whose python3 azure-identity gets a token through
//! 169.254.169.254, each for its own identity only; a deleted pod's replacement gets its
//! identity again.
//!
//! Needs root, the node tools (`bash hack/build-node.sh`), Debian's containerd, runc and
//! containernetworking-plugins, and the archives (`bash hack/images.sh --node`); `hack/test.sh`
//! prepares all of them.

use aadpodid_sandbox::kubelet::KubeletSandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chart_runs_from_the_images_on_kubelet_nodes() {
    let mut sandbox = KubeletSandbox::start().await.unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = sandbox.walkthrough().await {
        panic!("{e}");
    }
}
