//! Component tests of the ARM, Azure AD and IMDS clients against the in-process Azure simulator.
//! Each test starts its own simulator on loopback ports.

use std::slice::from_ref;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aadpodid_azure::HttpOptions;
use aadpodid_azure::arm::{
    Arm, ArmClient, ArmCredential, ArmError, ArmObserver, ArmOperation, ArmOptions, ArmTokenProvider, IdentityType,
    ProtectedClientIds, StaticToken, TokenSource, VmTarget,
};
use aadpodid_azure::cloud::{AzureEnvironment, CloudConfig};
use aadpodid_azure::token::{AadClient, ClientCertificate, IdentitySelector, ImdsClient, RetryPolicy, TokenError};
use aadpodid_azure_sim::{ComputeKind, Face, Fault, FaultKind, NodeRef, RunningSim, SimConfig, Simulator};
use serde_json::json;

const RG: &str = "node-rg";
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Recorder(Mutex<Vec<(ArmOperation, bool)>>);

impl ArmObserver for Recorder {
    fn observe(&self, operation: ArmOperation, _elapsed: Duration, ok: bool) {
        self.0.lock().unwrap().push((operation, ok));
    }
}

struct Fixture {
    sim: RunningSim,
    arm: ArmClient,
    recorder: Arc<Recorder>,
}

fn cloud_config(sim: &RunningSim) -> CloudConfig {
    CloudConfig {
        cloud: "AzureStackCloud".into(),
        tenant_id: sim.sim().tenant_id().to_owned(),
        subscription_id: sim.sim().subscription_id().to_owned(),
        resource_group: RG.into(),
        ..CloudConfig::default()
    }
}

fn environment(sim: &RunningSim, https: bool) -> AzureEnvironment {
    let path = sim.write_azure_stack_environment(https).unwrap();
    let path = path.to_string_lossy().into_owned();
    AzureEnvironment::from_name("AzureStackCloud", |key| (key == "AZURE_ENVIRONMENT_FILEPATH").then(|| path.clone()))
        .unwrap()
}

fn fast_options(recorder: &Arc<Recorder>) -> ArmOptions {
    ArmOptions {
        poll_interval: Duration::from_millis(50),
        retry_interval: Duration::from_millis(20),
        transient_backoff: Duration::from_millis(10),
        observer: Some(recorder.clone() as Arc<dyn ArmObserver>),
        ..ArmOptions::default()
    }
}

async fn fixture() -> Fixture {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let tokens: Arc<dyn TokenSource> = Arc::new(StaticToken(sim.sim().arm_token().unwrap()));
    let arm = ArmClient::new(&cloud_config(&sim), &environment(&sim, false), tokens, fast_options(&recorder)).unwrap();
    Fixture { sim, arm, recorder }
}

fn uami(sim: &RunningSim, name: &str) -> String {
    sim.sim().create_user_assigned_identity(RG, name).id
}

fn writes(sim: &RunningSim, kind: &str, name: &str) -> u64 {
    sim.sim().arm_writes(kind, name)
}

fn lower(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_lowercase()).collect();
    v.sort();
    v
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually<F: Fn() -> bool>(what: &str, check: F) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === ARM ===

#[tokio::test]
async fn two_identities_attach_in_one_patch_and_one_can_be_removed_again() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "pool", 2);
    let (a, b) = (uami(&f.sim, "id-a"), uami(&f.sim, "id-b"));
    let pool = VmTarget::Vmss("pool".into());

    f.arm.update_user_msi(&pool, &[a.clone(), b.clone()], &[]).await.unwrap();
    assert_eq!(writes(&f.sim, "vmss", "pool"), 1);
    let now = f.arm.identities(&pool).await.unwrap();
    assert_eq!(now.user_assigned, lower(&[&a, &b]));
    assert_eq!(now.identity_type, Some(IdentityType::UserAssigned));

    f.arm.update_user_msi(&pool, &[], from_ref(&a)).await.unwrap();
    assert_eq!(writes(&f.sim, "vmss", "pool"), 2);
    let ids = f.sim.sim().vmss_identities(RG, "pool").unwrap();
    assert!(!ids.has_user(&a) && ids.has_user(&b));

    f.arm.update_user_msi(&pool, &[], &[b]).await.unwrap();
    let after = f.arm.identities(&pool).await.unwrap();
    assert!(after.user_assigned.is_empty());
    assert_eq!(after.identity_type.unwrap_or(IdentityType::None), IdentityType::None);

    let seen = f.recorder.0.lock().unwrap().clone();
    assert!(seen.contains(&(ArmOperation::VmssGet, true)) && seen.contains(&(ArmOperation::VmssUpdate, true)));
}

#[tokio::test]
async fn nothing_to_change_sends_no_patch_and_empty_lists_no_request() {
    let f = fixture().await;
    f.sim.sim().create_vm(RG, "vm-1");
    let a = uami(&f.sim, "id-a");
    let vm = VmTarget::Vm("vm-1".into());
    f.arm.update_user_msi(&vm, from_ref(&a), &[]).await.unwrap();
    f.arm.update_user_msi(&vm, &[a.to_uppercase()], &[]).await.unwrap();
    f.arm.update_user_msi(&vm, &[], &[uami(&f.sim, "never-attached")]).await.unwrap();
    assert_eq!(writes(&f.sim, "vm", "vm-1"), 1);
    let reads_before = f.sim.sim().counters().calls(Face::Arm, "vm_get");
    f.arm.update_user_msi(&vm, &[], &[]).await.unwrap();
    assert_eq!(f.sim.sim().counters().calls(Face::Arm, "vm_get"), reads_before);
}

#[tokio::test]
async fn the_system_assigned_identity_survives_adding_and_removing_user_identities() {
    let f = fixture().await;
    f.sim.sim().create_vm(RG, "vm-sys");
    let url = format!(
        "{}/subscriptions/{}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/vm-sys?api-version=2019-12-01",
        f.sim.arm_url().trim_end_matches('/'),
        f.sim.sim().subscription_id()
    );
    let enable = reqwest::Client::new()
        .patch(url)
        .bearer_auth(f.sim.sim().arm_token().unwrap())
        .json(&json!({"identity": {"type": "SystemAssigned"}}))
        .send()
        .await
        .unwrap();
    assert!(enable.status().is_success(), "{}", enable.status());
    let vm = VmTarget::Vm("vm-sys".into());
    let before = f.arm.identities(&vm).await.unwrap();
    let principal = before.principal_id.clone().expect("system identity has a principal");
    assert_eq!(before.identity_type, Some(IdentityType::SystemAssigned));

    let a = uami(&f.sim, "id-a");
    f.arm.update_user_msi(&vm, from_ref(&a), &[]).await.unwrap();
    let with_user = f.arm.identities(&vm).await.unwrap();
    assert_eq!(with_user.identity_type, Some(IdentityType::SystemAssignedUserAssigned));
    assert_eq!(with_user.principal_id.as_deref(), Some(principal.as_str()));

    f.arm.update_user_msi(&vm, &[], &[a]).await.unwrap();
    let back = f.arm.identities(&vm).await.unwrap();
    assert_eq!(back.identity_type, Some(IdentityType::SystemAssigned));
    assert_eq!(back.principal_id.as_deref(), Some(principal.as_str()));
    assert!(back.user_assigned.is_empty());
}

/// Whatever the caller asks to detach, identities whose client ID ARM reports as protected stay
/// on the scale set (and on a VM); the others go, and additions in the same update still happen.
#[tokio::test]
async fn identities_arm_reports_with_a_protected_client_id_are_never_detached() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let (kubelet, pinned) = (
        sim.sim().create_user_assigned_identity(RG, "agentpool"),
        sim.sim().create_user_assigned_identity(RG, "pinned"),
    );
    let options = ArmOptions {
        protected: ProtectedClientIds::new([kubelet.client_id.to_uppercase(), pinned.client_id.clone()]),
        ..fast_options(&Arc::new(Recorder::default()))
    };
    let tokens: Arc<dyn TokenSource> = Arc::new(StaticToken(sim.sim().arm_token().unwrap()));
    let arm = ArmClient::new(&cloud_config(&sim), &environment(&sim, false), tokens, options).unwrap();
    sim.sim().create_vmss(RG, "pool", 2);
    sim.sim().create_vm(RG, "vm-1");
    let (app, late) = (uami(&sim, "app"), uami(&sim, "late"));
    for target in [VmTarget::Vmss("pool".into()), VmTarget::Vm("vm-1".into())] {
        let all = [kubelet.id.clone(), pinned.id.clone(), app.clone()];
        arm.update_user_msi(&target, &all, &[]).await.unwrap();
        let seen = arm.identities(&target).await.unwrap();
        assert_eq!(
            seen.client_ids.get(&kubelet.id.to_lowercase()),
            Some(&kubelet.client_id),
            "ARM's client IDs are read"
        );

        let remove: Vec<String> = all.iter().map(|id| id.to_uppercase()).collect();
        arm.update_user_msi(&target, from_ref(&late), &remove).await.unwrap();
        let after = arm.identities(&target).await.unwrap();
        assert_eq!(after.user_assigned, lower(&[&kubelet.id, &pinned.id, &late]), "{target}");
        assert_eq!(after.identity_type, Some(IdentityType::UserAssigned));

        let writes_before = sim.sim().arm_writes(if target.is_vmss() { "vmss" } else { "vm" }, target.name());
        arm.update_user_msi(&target, &[], &[kubelet.id.clone(), pinned.id.clone()]).await.unwrap();
        let writes_after = sim.sim().arm_writes(if target.is_vmss() { "vmss" } else { "vm" }, target.name());
        assert_eq!(writes_after, writes_before, "only protected removals: no PATCH at all");
    }
}

#[tokio::test]
async fn more_than_150_identities_go_out_in_sequential_chunks() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "big", 1);
    let ids: Vec<String> = (0..301).map(|n| uami(&f.sim, &format!("id-{n:03}"))).collect();
    let big = VmTarget::Vmss("big".into());
    f.arm.update_user_msi(&big, &ids, &[]).await.unwrap();
    assert_eq!(writes(&f.sim, "vmss", "big"), 3);
    assert_eq!(f.arm.identities(&big).await.unwrap().user_assigned.len(), 301);
}

#[tokio::test]
async fn long_running_updates_are_awaited_until_they_complete() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "slow", 1);
    f.sim.sim().set_lro_duration(Duration::from_millis(1200));
    let a = uami(&f.sim, "id-a");
    let started = Instant::now();
    f.arm.update_user_msi(&VmTarget::Vmss("slow".into()), from_ref(&a), &[]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1000), "returned before the operation finished");
    assert!(f.sim.sim().all_operations_done());
    assert!(f.sim.sim().node_identities(&NodeRef::vmss_instance("slow", 0)).unwrap().has_user(&a));
}

#[tokio::test]
async fn a_429_blocks_reads_until_retry_after_passes_without_calling_arm() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "pool", 1);
    f.sim.sim().create_vm(RG, "vm-1");
    let pool = VmTarget::Vmss("pool".into());
    f.sim
        .sim()
        .inject(Fault::new(Face::Arm, FaultKind::throttle(Duration::from_secs(1))).operation("vmss_get").times(1));

    let first = f.arm.identities(&pool).await.unwrap_err();
    let throttled_at = Instant::now();
    assert!(matches!(first, ArmError::Throttled { operation: ArmOperation::VmssGet, .. }), "{first:?}");
    let calls = f.sim.sim().counters().calls(Face::Arm, "vmss_get");
    let blocked = f.arm.identities(&pool).await.unwrap_err();
    assert!(blocked.to_string().starts_with("VMSSGet client throttled, retry after:"), "{blocked}");
    assert_eq!(f.sim.sim().counters().calls(Face::Arm, "vmss_get"), calls, "a blocked call must not reach ARM");
    f.arm.identities(&VmTarget::Vm("vm-1".into())).await.expect("VM reads are not blocked by VMSS throttling");

    let start = Instant::now();
    loop {
        match f.arm.identities(&pool).await {
            Ok(_) => break,
            Err(ArmError::Throttled { .. }) => assert!(start.elapsed() < DEADLINE, "still throttled"),
            Err(other) => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let blocked_for = throttled_at.elapsed();
    assert!(blocked_for >= Duration::from_millis(800), "block lifted too early: {blocked_for:?}");
}

#[tokio::test]
async fn an_absurd_retry_after_blocks_writes_for_at_most_the_cap() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "pool", 1);
    let a = uami(&f.sim, "id-a");
    let pool = VmTarget::Vmss("pool".into());
    let huge = Duration::from_secs(u64::MAX);
    f.sim.sim().inject(Fault::new(Face::Arm, FaultKind::throttle(huge)).operation("vmss_update").times(1));

    let err = f.arm.update_user_msi(&pool, std::slice::from_ref(&a), &[]).await.unwrap_err();
    let cap = ArmOptions::default().max_retry_after;
    assert_eq!(err.retry_after(), Some(cap), "Retry-After: 18446744073709551615 is cut to the cap: {err:?}");
    let attempts = f.sim.sim().counters().calls(Face::Arm, "vmss_update");
    let again = f.arm.update_user_msi(&pool, std::slice::from_ref(&a), &[]).await.unwrap_err();
    assert!(again.retry_after().is_some_and(|w| w <= cap), "still blocked, within the cap: {again:?}");
    assert_eq!(f.sim.sim().counters().calls(Face::Arm, "vmss_update"), attempts, "blocked without calling ARM");
}

#[tokio::test]
async fn a_429_on_update_blocks_writes_but_not_reads() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "pool", 1);
    let (a, b) = (uami(&f.sim, "id-a"), uami(&f.sim, "id-b"));
    let pool = VmTarget::Vmss("pool".into());
    f.sim
        .sim()
        .inject(Fault::new(Face::Arm, FaultKind::throttle(Duration::from_secs(30))).operation("vmss_update").times(1));

    let err = f.arm.update_user_msi(&pool, &[a], &[]).await.unwrap_err();
    assert!(matches!(err, ArmError::Throttled { operation: ArmOperation::VmssUpdate, .. }), "{err:?}");
    assert!(err.retry_after().unwrap() > Duration::from_secs(20));
    let attempts = f.sim.sim().counters().calls(Face::Arm, "vmss_update");
    let again = f.arm.update_user_msi(&pool, &[b], &[]).await.unwrap_err();
    assert!(again.to_string().starts_with("VMSSUpdate client throttled"), "{again}");
    assert_eq!(f.sim.sim().counters().calls(Face::Arm, "vmss_update"), attempts);
    f.arm.identities(&pool).await.expect("reads stay open");
    assert!(f.recorder.0.lock().unwrap().contains(&(ArmOperation::VmssUpdate, false)));
}

#[tokio::test]
async fn transient_server_errors_are_retried() {
    let f = fixture().await;
    f.sim.sim().create_vm(RG, "vm-1");
    f.sim.sim().inject(Fault::new(Face::Arm, FaultKind::status(503)).operation("vm_get").times(2));
    f.arm.identities(&VmTarget::Vm("vm-1".into())).await.unwrap();
    assert_eq!(f.sim.sim().counters().calls(Face::Arm, "vm_get"), 3);
}

#[tokio::test]
async fn a_missing_vm_is_not_found() {
    let f = fixture().await;
    let err = f.arm.identities(&VmTarget::Vm("ghost".into())).await.unwrap_err();
    assert!(matches!(err, ArmError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn a_nonexistent_identity_is_pruned_the_valid_one_lands_and_the_original_error_is_returned() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "pool", 1);
    let good = uami(&f.sim, "id-good");
    let ghost = format!(
        "/subscriptions/{}/resourcegroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ghost",
        f.sim.sim().subscription_id()
    );
    let pool = VmTarget::Vmss("pool".into());
    let err = f.arm.update_user_msi(&pool, &[good.clone(), ghost.clone()], &[]).await.unwrap_err();
    let ArmError::BadIdentities { ids, source } = &err else { panic!("expected BadIdentities, got {err:?}") };
    assert_eq!(ids.iter().map(|i| i.to_lowercase()).collect::<Vec<_>>(), [ghost.to_lowercase()]);
    assert!(source.to_string().contains("FailedIdentityOperation"), "{source}");
    assert!(err.to_string().contains("FailedIdentityOperation"));
    let on_vmss = f.sim.sim().vmss_identities(RG, "pool").unwrap();
    assert!(on_vmss.has_user(&good));
    assert!(!on_vmss.has_user(&ghost));
    assert_eq!(writes(&f.sim, "vmss", "pool"), 2, "one rejected PATCH, one retry");
}

#[tokio::test]
async fn user_assigned_identities_can_be_looked_up() {
    let f = fixture().await;
    let created = f.sim.sim().create_user_assigned_identity(RG, "lookup");
    let found = f.arm.user_assigned_identity(&created.id).await.unwrap();
    assert_eq!((found.client_id, found.principal_id), (created.client_id, created.principal_id));
}

// === Azure AD ===

fn aad_over_https(sim: &RunningSim) -> AadClient {
    AadClient::new(&HttpOptions::with_root_ca_pem(sim.ca_cert_pem().as_bytes().to_vec())).unwrap()
}

#[tokio::test]
async fn service_principal_secret_gets_a_v1_token_over_https_with_the_simulator_ca() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.sim().register_service_principal_secret("sp-client", "sp-secret");
    let aad = aad_over_https(&sim);
    let token = aad
        .client_secret_token(
            &sim.aad_https_url(),
            sim.sim().tenant_id(),
            "sp-client",
            "sp-secret",
            "https://vault.azure.net",
        )
        .await
        .unwrap();
    assert!(!token.access_token.is_empty());
    assert_eq!(token.token_type, "Bearer");
    assert!(token.expires_on.parse::<u64>().unwrap() > 1_700_000_000);
    assert_eq!(token.client_id.as_deref(), Some("sp-client"));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_401() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.sim().register_service_principal_secret("sp-client", "sp-secret");
    let err = aad_over_https(&sim)
        .client_secret_token(
            &sim.aad_https_url(),
            sim.sim().tenant_id(),
            "sp-client",
            "nope",
            "https://vault.azure.net",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Refused { status: 401, .. }), "{err:?}");
    assert!(err.is_refusal());
}

#[tokio::test]
async fn an_untrusted_https_authority_is_a_transport_error_not_a_refusal() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let err = AadClient::new(&HttpOptions::default())
        .unwrap()
        .client_secret_token(&sim.aad_https_url(), sim.sim().tenant_id(), "c", "s", "r")
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Transport(_)), "{err:?}");
    assert!(!err.is_refusal());
}

#[tokio::test]
async fn service_principal_certificate_from_pkcs12_gets_a_token() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["sp".to_owned()]).unwrap().self_signed(&key).unwrap();
    sim.sim().register_service_principal_certificate("cert-client", cert.der()).unwrap();
    let chain = p12_keystore::PrivateKeyChain::new(
        b"k".as_slice(),
        p12_keystore::PrivateKey::from_der(&key.serialize_der()).unwrap(),
        [p12_keystore::Certificate::from_der(cert.der()).unwrap()],
    );
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry("sp", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    let pfx = store.writer("pw").write().unwrap();

    let certificate = ClientCertificate::from_pkcs12(&pfx, "pw").unwrap();
    let token = aad_over_https(&sim)
        .client_certificate_token(
            &sim.aad_https_url(),
            sim.sim().tenant_id(),
            "cert-client",
            &certificate,
            "https://vault.azure.net",
        )
        .await
        .unwrap();
    assert!(!token.access_token.is_empty());
}

#[tokio::test]
async fn multi_tenant_tokens_come_back_primary_first_and_fail_as_a_whole() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.sim().register_service_principal_secret("sp-client", "sp-secret");
    let aad = aad_over_https(&sim);
    let tenant = sim.sim().tenant_id().to_owned();
    let tokens = aad
        .multi_tenant_secret_tokens(
            &sim.aad_https_url(),
            &tenant,
            from_ref(&tenant),
            "sp-client",
            "sp-secret",
            "https://vault.azure.net",
        )
        .await
        .unwrap();
    assert_eq!(tokens.len(), 2);
    let err = aad
        .multi_tenant_secret_tokens(
            &sim.aad_https_url(),
            &tenant,
            &["other-tenant".to_owned()],
            "sp-client",
            "sp-secret",
            "r",
        )
        .await
        .unwrap_err();
    assert!(err.is_refusal(), "{err:?}");
}

#[tokio::test]
async fn arm_works_end_to_end_with_a_service_principal_from_azure_json_over_https() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.sim().register_service_principal_secret("mic-client", "mic-secret");
    sim.sim().create_vmss(RG, "pool", 1);
    let mut config = cloud_config(&sim);
    config.client_id = "mic-client".into();
    config.client_secret = "mic-secret".into();
    let env = environment(&sim, true);
    let http = HttpOptions::with_root_ca_pem(sim.ca_cert_pem().as_bytes().to_vec());
    let provider = ArmTokenProvider::new(
        ArmCredential::from_cloud_config(&config, &env),
        env.management_resource(),
        AadClient::new(&http).unwrap(),
        ImdsClient::new("http://127.0.0.1:9").unwrap(),
    );
    let options = ArmOptions { http, poll_interval: Duration::from_millis(50), ..ArmOptions::default() };
    let arm = ArmClient::new(&config, &env, Arc::new(provider), options).unwrap();
    let a = uami(&sim, "id-a");
    let pool = VmTarget::Vmss("pool".into());
    arm.update_user_msi(&pool, from_ref(&a), &[]).await.unwrap();
    assert!(arm.identities(&pool).await.unwrap().has_user_assigned(&a));
    assert_eq!(sim.sim().counters().calls(Face::Aad, "token"), 1, "the ARM token is cached");
}

// === IMDS ===

fn imds_for(sim: &RunningSim, node: NodeRef) -> ImdsClient {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = sim.sim().serve_imds(listener, node).unwrap();
    ImdsClient::with_options(&handle.url(), &HttpOptions::default(), RetryPolicy::immediate(1)).unwrap()
}

#[tokio::test]
async fn imds_issues_tokens_for_attached_identities_only() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "pool", 2);
    let attached = f.sim.sim().create_user_assigned_identity(RG, "attached");
    let detached = f.sim.sim().create_user_assigned_identity(RG, "detached");
    f.arm.update_user_msi(&VmTarget::Vmss("pool".into()), from_ref(&attached.id), &[]).await.unwrap();
    let imds = imds_for(&f.sim, NodeRef::vmss_instance("pool", 1));
    eventually("the identity to reach the node", || {
        f.sim.sim().node_identities(&NodeRef::vmss_instance("pool", 1)).is_some_and(|i| i.has_user(&attached.id))
    })
    .await;

    let resource = "https://vault.azure.net";
    let by_client = imds.token(resource, &IdentitySelector::ClientId(attached.client_id.clone())).await.unwrap();
    assert!(!by_client.access_token.is_empty());
    assert_eq!(by_client.client_id.as_deref(), Some(attached.client_id.as_str()));
    assert!(by_client.expires_on.parse::<u64>().is_ok());
    imds.token(resource, &IdentitySelector::ResourceId(attached.id.clone())).await.unwrap();
    imds.token(resource, &IdentitySelector::ObjectId(attached.principal_id.clone())).await.unwrap();

    let refused = imds.token(resource, &IdentitySelector::ClientId(detached.client_id)).await.unwrap_err();
    assert!(matches!(refused, TokenError::Refused { status: 400, .. }), "{refused:?}");
    assert!(refused.is_refusal());
}

#[tokio::test]
async fn imds_retries_retriable_statuses_and_gives_up_after_its_attempts() {
    let f = fixture().await;
    f.sim.sim().create_vm(RG, "vm-1");
    let a = f.sim.sim().create_user_assigned_identity(RG, "id-a");
    f.arm.update_user_msi(&VmTarget::Vm("vm-1".into()), from_ref(&a.id), &[]).await.unwrap();
    let imds = imds_for(&f.sim, NodeRef::vm("vm-1")).with_retry(RetryPolicy::immediate(3));
    let selector = IdentitySelector::ClientId(a.client_id.clone());
    let before = f.sim.sim().counters().face_total(Face::Imds);

    f.sim.sim().inject(Fault::new(Face::Imds, FaultKind::status(500)).times(2));
    imds.token("https://vault.azure.net", &selector).await.unwrap();
    assert_eq!(f.sim.sim().counters().face_total(Face::Imds) - before, 3);

    f.sim.sim().inject(Fault::new(Face::Imds, FaultKind::status(503)).times(3));
    let err = imds.token("https://vault.azure.net", &selector).await.unwrap_err();
    assert!(matches!(err, TokenError::Refused { status: 503, .. }), "{err:?}");
}

#[tokio::test]
async fn unreachable_imds_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let imds = ImdsClient::with_options(&url, &HttpOptions::default(), RetryPolicy::immediate(2)).unwrap();
    let err = imds.token("https://vault.azure.net", &IdentitySelector::SystemAssigned).await.unwrap_err();
    assert!(matches!(err, TokenError::Transport(_)), "{err:?}");
    assert!(!err.is_refusal());
}

#[tokio::test]
async fn dropping_a_pending_imds_call_cancels_it_promptly() {
    let f = fixture().await;
    f.sim.sim().create_vm(RG, "vm-1");
    let imds = imds_for(&f.sim, NodeRef::vm("vm-1")).with_retry(RetryPolicy::adal());
    f.sim.sim().inject(Fault::new(Face::Imds, FaultKind::status(500)));
    let started = Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_millis(300), imds.token("r", &IdentitySelector::SystemAssigned)).await;
    assert!(outcome.is_err(), "the call should still be backing off");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn failed_reads_are_reported_to_the_observer() {
    let f = fixture().await;
    f.arm.identities(&VmTarget::Vm("ghost".into())).await.unwrap_err();
    assert_eq!(f.recorder.0.lock().unwrap().as_slice(), [(ArmOperation::VmGet, false)]);
}

#[tokio::test]
async fn a_deleting_scale_set_is_refused_without_a_patch() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "doomed", 1);
    assert!(f.sim.sim().set_provisioning_state(ComputeKind::Vmss, RG, "doomed", Some("Deleting")));
    let a = uami(&f.sim, "id-a");
    let doomed = VmTarget::Vmss("doomed".into());
    let err = f.arm.update_user_msi(&doomed, from_ref(&a), &[]).await.unwrap_err();
    assert!(matches!(err, ArmError::Deleting { .. }), "{err:?}");
    assert_eq!(writes(&f.sim, "vmss", "doomed"), 0);
    assert_eq!(f.arm.identities(&doomed).await.unwrap().provisioning_state.as_deref(), Some("Deleting"));
}

#[tokio::test]
async fn a_failed_long_running_operation_is_an_error() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "pool", 1);
    let a = uami(&f.sim, "id-a");
    let fail = FaultKind::FailOperation { code: "InternalExecutionError".into(), message: "boom".into() };
    f.sim.sim().inject(Fault::new(Face::Arm, fail).operation("vmss_update").times(1));
    let err = f.arm.update_user_msi(&VmTarget::Vmss("pool".into()), from_ref(&a), &[]).await.unwrap_err();
    assert!(matches!(&err, ArmError::OperationFailed { code, .. } if code == "InternalExecutionError"), "{err:?}");
    assert!(!f.sim.sim().vmss_identities(RG, "pool").unwrap().has_user(&a));
}

#[tokio::test]
async fn a_linked_authorization_failure_in_the_operation_prunes_the_named_identity() {
    let f = fixture().await;
    f.sim.sim().create_vmss(RG, "pool", 1);
    let (good, denied) = (uami(&f.sim, "id-good"), uami(&f.sim, "id-denied"));
    let message = format!(
        "The client has permission to perform action 'Microsoft.Compute/virtualMachineScaleSets/write' on scope 'pool', however the current tenant is not authorized to access linked subscription on the linked scope(s) '{denied}' or the linked scope(s) are invalid."
    );
    let fail = FaultKind::FailOperation { code: "LinkedAuthorizationFailed".into(), message };
    f.sim.sim().inject(Fault::new(Face::Arm, fail).operation("vmss_update").times(1));
    let err =
        f.arm.update_user_msi(&VmTarget::Vmss("pool".into()), &[good.clone(), denied.clone()], &[]).await.unwrap_err();
    let ArmError::BadIdentities { ids, source } = &err else { panic!("expected BadIdentities, got {err:?}") };
    assert_eq!(ids.as_slice(), from_ref(&denied));
    assert!(matches!(**source, ArmError::OperationFailed { .. }), "{source:?}");
    let on_vmss = f.sim.sim().vmss_identities(RG, "pool").unwrap();
    assert!(on_vmss.has_user(&good) && !on_vmss.has_user(&denied));
}
