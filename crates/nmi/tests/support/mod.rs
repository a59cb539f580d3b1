//! Shared pieces of NMI's end-to-end tests: a fixed node state for in-process tests, tool checks
//! (network namespaces are `aadpodid_testkit::netns`).

#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod lifecycle;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Mutex;

use aadpodid_api::{AssignedIdentityState, AzureIdentitySpec, AzurePodIdentityException};
use aadpodid_nmi::select::{AssignedView, BindingView, IdentityView, PodView};
use aadpodid_nmi::server::NodeState;
use aadpodid_nmi::tokens::SecretReader;
use futures::future::BoxFuture;

/// Fails (never skips) with the install command when a tool is missing.
pub fn require_tool(program: &str, probe: &[&str], install: &str) {
    let ok = Command::new(program).args(probe).output().is_ok_and(|o| o.status.success());
    assert!(ok, "`{program}` is required for this test; install it with: {install}");
}

/// Pods and their assigned identities, set by the test.
#[derive(Default)]
pub struct FixedNode {
    pub pods: Mutex<Vec<PodView>>,
    pub assigned: Mutex<BTreeMap<(String, String), Vec<AssignedView>>>,
}

impl FixedNode {
    pub fn add_pod(&self, namespace: &str, name: &str, ip: IpAddr) {
        self.pods.lock().unwrap().push(PodView {
            namespace: namespace.into(),
            name: name.into(),
            ip: Some(ip),
            phase: "Running".into(),
            ..Default::default()
        });
    }

    pub fn assign(&self, pod: (&str, &str), state: AssignedIdentityState, name: &str, spec: AzureIdentitySpec) {
        let identity = IdentityView { namespace: pod.0.into(), name: name.into(), spec, ..Default::default() };
        let mut assigned = self.assigned.lock().unwrap();
        assigned.entry((pod.0.into(), pod.1.into())).or_default().push(AssignedView { state, identity });
    }
}

impl NodeState for FixedNode {
    fn pods_with_ip(&self, ip: std::net::IpAddr) -> Vec<PodView> {
        self.pods.lock().unwrap().iter().filter(|p| p.has_ip(ip)).cloned().collect()
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<PodView> {
        self.pods.lock().unwrap().iter().find(|p| p.namespace == namespace && p.name == name).cloned()
    }
    fn exceptions(&self, _namespace: &str) -> Vec<AzurePodIdentityException> {
        Vec::new()
    }
    fn assigned(&self, namespace: &str, pod: &str) -> Vec<AssignedView> {
        self.assigned.lock().unwrap().get(&(namespace.into(), pod.into())).cloned().unwrap_or_default()
    }
    fn bindings(&self, _namespace: &str) -> Vec<BindingView> {
        Vec::new()
    }
    fn identities(&self, _namespace: &str) -> Vec<IdentityView> {
        Vec::new()
    }
}

/// Secret data by (namespace, name).
pub type SecretTable = BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>;

/// Secrets held in memory.
#[derive(Default)]
pub struct FixedSecrets(pub Mutex<SecretTable>);

impl SecretReader for FixedSecrets {
    fn secret_data<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Vec<u8>>, String>> {
        let found = self.0.lock().unwrap().get(&(namespace.into(), name.into())).cloned();
        Box::pin(async move { found.ok_or_else(|| format!("secrets \"{name}\" not found")) })
    }
}

/// The claims of a JWT, unverified (the simulator signed it; tests read who it is for).
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// A token source that only counts: every token it hands out is recorded, so a test can say no
/// token was ever issued. Its tokens are opaque strings naming the identity.
#[derive(Default)]
pub struct CountingTokens {
    /// The client IDs tokens were issued for, in order.
    pub issued_for: Mutex<Vec<String>>,
}

impl CountingTokens {
    pub fn issued(&self) -> usize {
        self.issued_for.lock().unwrap().len()
    }

    fn mint(&self, client_id: &str, resource: &str) -> aadpodid_nmi::token::TokenJson {
        self.issued_for.lock().unwrap().push(client_id.to_owned());
        aadpodid_nmi::token::TokenJson {
            access_token: format!("issued-for-{client_id}"),
            expires_in: "3599".into(),
            expires_on: "4102444800".into(),
            not_before: "1700000000".into(),
            resource: resource.into(),
            token_type: "Bearer".into(),
            client_id: Some(client_id.into()),
            ..Default::default()
        }
    }
}

impl aadpodid_nmi::server::TokenSource for CountingTokens {
    fn identity_tokens<'a>(
        &'a self,
        identity: &'a IdentityView,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Vec<aadpodid_nmi::token::TokenJson>, aadpodid_nmi::server::TokenFailure>> {
        let token = self.mint(identity.client_id(), resource);
        Box::pin(async move { Ok(vec![token]) })
    }
    fn node_token<'a>(
        &'a self,
        client_id: Option<&'a str>,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<aadpodid_nmi::token::TokenJson, aadpodid_nmi::server::TokenFailure>> {
        let token = self.mint(client_id.unwrap_or("system"), resource);
        Box::pin(async move { Ok(token) })
    }
}
