//! The simulator handle shared by all faces ([`Simulator`]): the state behind a lock, faults, counters,
//! timing and token minting. It knows nothing of listeners or routers, so the faces can depend on it
//! and start-up (`start.rs`) can depend on both.
//!
//! Locks (`std::sync::Mutex`) guard plain data and are never held across an `.await`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::task::AbortHandle;

use crate::config::{Endpoints, SimConfig, Timing};
use crate::faults::{Counters, Face, Fault, FaultKind, FaultTable, Load, TargetCounts, target_key};
use crate::jwt::{JwtError, SigningKey};
use crate::state::{ComputeKind, FederatedCredential, Identities, IdentityInfo, JwksSource, NodeRef, State};

/// The client ID of the built-in app the simulator mints [`Simulator::arm_token`] tokens for.
pub const BUILTIN_CLIENT_ID: &str = "5ab1e000-0000-4000-8000-000000000001";

/// Why the simulator could not start or a seeding call failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A listener could not be bound or used.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the CA certificate or the environment file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS material could not be generated.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The signing key could not be generated or a token could not be signed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// No Tokio runtime to run the servers on.
    #[error("no Tokio runtime: call from inside one")]
    NoRuntime,
    /// An argument was invalid (e.g. a JWKS that is neither JSON nor a URL).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    faults: Mutex<FaultTable>,
    counters: Mutex<Counters>,
    load: Mutex<Load>,
    timing: RwLock<Timing>,
    endpoints: RwLock<Endpoints>,
    imds: Mutex<Vec<AbortHandle>>,
    pub(crate) key: SigningKey,
    pub(crate) tenant_id: String,
    pub(crate) subscription_id: String,
    pub(crate) aad_token_lifetime: Duration,
    pub(crate) imds_token_lifetime: Duration,
    /// [`SimConfig::tls_names`]: other names ARM is reached by, valid in token audiences too.
    pub(crate) tls_names: Vec<String>,
    pub(crate) http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// A handle to the simulated Azure: seeding, fault injection, counters and read-backs. Cheap to clone;
/// all clones see the same state. Obtained from [`RunningSim`](crate::RunningSim) (which derefs to it).
#[derive(Clone)]
pub struct Simulator {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("tenant_id", &self.inner.tenant_id).finish_non_exhaustive()
    }
}

/// What an access token is issued to.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    pub(crate) object_id: String,
    pub(crate) client_id: String,
    /// `0` public client, `1` secret, `2` certificate or assertion.
    pub(crate) appidacr: &'static str,
    pub(crate) mi_resource_id: Option<String>,
}

/// A call in progress (see [`Simulator::in_flight`]).
pub(crate) struct InFlight {
    sim: Simulator,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.sim.load_mut().end(&self.key);
    }
}

/// A freshly minted token and its times (unix seconds).
#[derive(Debug, Clone)]
pub(crate) struct Minted {
    pub(crate) token: String,
    pub(crate) not_before: u64,
    pub(crate) expires_on: u64,
    pub(crate) expires_in: u64,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Simulator {
    pub(crate) fn new(cfg: &SimConfig) -> Result<Self, SimError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SimError::NoRuntime)?;
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SimError::Invalid(format!("building the JWKS client: {e}")))?;
        let mut state = State::new(&cfg.tenant_id, &cfg.subscription_id, &cfg.location);
        state.ensure_client(BUILTIN_CLIENT_ID);
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                faults: Mutex::new(FaultTable::default()),
                counters: Mutex::new(Counters::default()),
                load: Mutex::new(Load::default()),
                timing: RwLock::new(Timing { arm_latency: cfg.arm_latency, lro_duration: cfg.lro_duration }),
                endpoints: RwLock::new(Endpoints::default()),
                imds: Mutex::new(Vec::new()),
                key: SigningKey::generate()?,
                tenant_id: cfg.tenant_id.clone(),
                subscription_id: cfg.subscription_id.clone(),
                aad_token_lifetime: cfg.aad_token_lifetime,
                imds_token_lifetime: cfg.imds_token_lifetime,
                tls_names: cfg.tls_names.clone(),
                http,
                runtime,
            }),
        })
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state with every due operation applied.
    pub(crate) fn settled(&self) -> MutexGuard<'_, State> {
        let mut s = self.state();
        s.settle(Instant::now());
        s
    }

    fn counters_mut(&self) -> MutexGuard<'_, Counters> {
        self.inner.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn faults_mut(&self) -> MutexGuard<'_, FaultTable> {
        self.inner.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tenant ID.
    pub fn tenant_id(&self) -> &str {
        &self.inner.tenant_id
    }

    /// Subscription ID.
    pub fn subscription_id(&self) -> &str {
        &self.inner.subscription_id
    }

    /// Region of created resources.
    pub fn location(&self) -> String {
        self.state().location.clone()
    }

    /// The listener URLs.
    pub fn endpoints(&self) -> Endpoints {
        self.inner.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn set_endpoints(&self, e: Endpoints) {
        *self.inner.endpoints.write().unwrap_or_else(std::sync::PoisonError::into_inner) = e;
    }

    /// Current timing knobs.
    pub fn timing(&self) -> Timing {
        *self.inner.timing.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the ARM latency and the LRO duration while running.
    pub fn set_timing(&self, t: Timing) {
        *self.inner.timing.write().unwrap_or_else(std::sync::PoisonError::into_inner) = t;
    }

    /// Sets the ARM latency (added to every ARM call).
    pub fn set_arm_latency(&self, d: Duration) {
        let mut t = self.timing();
        t.arm_latency = d;
        self.set_timing(t);
    }

    /// Sets how long VM/VMSS writes stay `InProgress` before they apply.
    pub fn set_lro_duration(&self, d: Duration) {
        let mut t = self.timing();
        t.lro_duration = d;
        self.set_timing(t);
    }

    // === seeding ===

    /// Creates a VM (idempotent).
    pub fn create_vm(&self, resource_group: &str, name: &str) {
        self.state().ensure_compute(ComputeKind::Vm, resource_group, name, 1);
    }

    /// Creates a VMSS with `instances` instances `0..instances` (idempotent).
    pub fn create_vmss(&self, resource_group: &str, name: &str, instances: u32) {
        self.state().ensure_compute(ComputeKind::Vmss, resource_group, name, instances);
    }

    /// Deletes a VM; its node's IMDS answers 404 afterwards. Returns whether it existed.
    pub fn delete_vm(&self, resource_group: &str, name: &str) -> bool {
        self.state().remove_compute(ComputeKind::Vm, resource_group, name)
    }

    /// Deletes a VMSS and all its instances. Returns whether it existed.
    pub fn delete_vmss(&self, resource_group: &str, name: &str) -> bool {
        self.state().remove_compute(ComputeKind::Vmss, resource_group, name)
    }

    /// Scales a VMSS to `instances` instances (`0..instances`). Returns whether it exists.
    pub fn set_vmss_capacity(&self, resource_group: &str, name: &str, instances: u32) -> bool {
        let mut s = self.state();
        s.compute_mut(ComputeKind::Vmss, resource_group, name).map(|c| c.instances = instances).is_some()
    }

    /// Forces the `provisioningState` ARM reports for a VM/VMSS (e.g. `Some("Deleting")`, which the
    /// original MIC refuses to update); `None` returns to the computed state. Returns whether it exists.
    pub fn set_provisioning_state(
        &self,
        kind: ComputeKind,
        resource_group: &str,
        name: &str,
        state: Option<&str>,
    ) -> bool {
        let mut s = self.state();
        s.compute_mut(kind, resource_group, name).map(|c| c.provisioning_override = state.map(str::to_owned)).is_some()
    }

    /// Creates a user-assigned identity with fresh client and principal IDs, or returns the existing one.
    pub fn create_user_assigned_identity(&self, resource_group: &str, name: &str) -> IdentityInfo {
        self.state().create_identity(resource_group, name, None, None)
    }

    /// Creates a user-assigned identity with the given client and principal IDs (seed files, fixtures),
    /// or returns the existing one unchanged.
    pub fn create_user_assigned_identity_with_ids(
        &self,
        resource_group: &str,
        name: &str,
        client_id: &str,
        principal_id: &str,
    ) -> IdentityInfo {
        self.state().create_identity(resource_group, name, Some(client_id), Some(principal_id))
    }

    /// Deletes a user-assigned identity as ARM's DELETE does: copies attached to VMs stay, but
    /// IMDS no longer finds it. True if it existed.
    pub fn delete_user_assigned_identity(&self, resource_group: &str, name: &str) -> bool {
        self.state().delete_identity(resource_group, name)
    }

    /// The user-assigned identity `name` in `resource_group`, if it exists.
    pub fn identity(&self, resource_group: &str, name: &str) -> Option<IdentityInfo> {
        self.state().identity(resource_group, name).cloned()
    }

    /// Registers (or adds) a client secret for an app; the app is created if unknown.
    pub fn register_service_principal_secret(&self, client_id: &str, secret: &str) {
        self.state().add_secret(client_id, secret);
    }

    /// Revokes one client secret of an app (as deleting it in the portal); true if it was registered.
    pub fn revoke_service_principal_secret(&self, client_id: &str, secret: &str) -> bool {
        self.state().remove_secret(client_id, secret)
    }

    /// Registers a DER X.509 certificate (RSA key) for an app; assertions signed by its key and carrying
    /// its `x5t` are accepted.
    pub fn register_service_principal_certificate(&self, client_id: &str, cert_der: &[u8]) -> Result<(), SimError> {
        crate::jwt::rsa_from_cert_der(cert_der).map_err(|e| SimError::Invalid(e.to_string()))?;
        self.state().add_certificate(client_id, cert_der.to_vec());
        Ok(())
    }

    /// Registers a federated identity credential: assertions issued by `issuer` for `subject` with audience
    /// `api://AzureADTokenExchange`, verified against `jwks_json_or_url` (a JWKS document or its URL).
    pub fn register_federated_credential(
        &self,
        client_id: &str,
        issuer: &str,
        subject: &str,
        jwks_json_or_url: &str,
    ) -> Result<(), SimError> {
        let jwks = JwksSource::parse(jwks_json_or_url).map_err(SimError::Invalid)?;
        self.state().add_federated(
            client_id,
            FederatedCredential {
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
                audiences: vec!["api://AzureADTokenExchange".to_owned()],
                jwks,
            },
        );
        Ok(())
    }

    // === read-backs ===

    /// The identities of a VM as ARM shows them (the model, including writes still in progress).
    pub fn vm_identities(&self, resource_group: &str, name: &str) -> Option<Identities> {
        self.settled().compute(ComputeKind::Vm, resource_group, name).map(|c| c.model.clone())
    }

    /// The identities of a VMSS as ARM shows them.
    pub fn vmss_identities(&self, resource_group: &str, name: &str) -> Option<Identities> {
        self.settled().compute(ComputeKind::Vmss, resource_group, name).map(|c| c.model.clone())
    }

    /// The identities a node's IMDS can issue tokens for (only completed operations).
    pub fn node_identities(&self, node: &NodeRef) -> Option<Identities> {
        self.settled().node_compute(node).map(|c| c.applied.clone())
    }

    /// Waits (polling every 20 ms) until every write to every VM/VMSS has completed, or `timeout` passes;
    /// returns whether they completed.
    pub async fn wait_for_operations(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.all_operations_done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether every write to every VM/VMSS has completed.
    pub fn all_operations_done(&self) -> bool {
        let s = self.settled();
        s.computes().all(|c| c.model == c.applied)
    }

    // === faults and counters ===

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        tracing::info!(face = fault.face.as_str(), operation = ?fault.operation, kind = ?fault.kind, count = ?fault.count, "Fault injected");
        self.faults_mut().add(fault);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.faults_mut().clear();
    }

    /// The faults still in force.
    pub fn faults(&self) -> Vec<Fault> {
        self.faults_mut().list()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.counters_mut().clone()
    }

    /// Resets every counter to zero.
    pub fn reset_counters(&self) {
        *self.counters_mut() = Counters::default();
        self.load_mut().reset_window();
    }

    fn load_mut(&self) -> MutexGuard<'_, Load> {
        self.inner.load.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a call of `face`/`op` in progress until the guard drops, for the load peaks
    /// ([`Counters::peak_concurrent`], [`Counters::peak_per_second`]).
    pub(crate) fn in_flight(&self, face: Face, op: &str) -> InFlight {
        let key = format!("{}/{op}", face.as_str());
        let mut load = self.load_mut();
        load.begin(&key, Instant::now(), &mut self.counters_mut());
        InFlight { sim: self.clone(), key }
    }

    /// Shortcut for `counters().arm_writes(kind, name)`; `kind` is `"vm"` or `"vmss"`.
    pub fn arm_writes(&self, kind: &str, name: &str) -> u64 {
        self.counters_mut().arm_writes(kind, name)
    }

    pub(crate) fn count_caller(&self, appid: &str, op: &str) {
        *self.counters_mut().callers.entry(format!("{appid}/{op}")).or_default() += 1;
    }

    pub(crate) fn count_target(&self, kind: ComputeKind, name: &str, write: bool) {
        let mut c = self.counters_mut();
        let t: &mut TargetCounts = c.targets.entry(target_key(kind.as_str(), name)).or_default();
        if write {
            t.writes += 1;
        } else {
            t.reads += 1;
        }
    }

    /// Counts a call, applies latency (faults and, for ARM, the configured latency) and returns the
    /// answering fault, if any.
    pub(crate) async fn gate(&self, face: Face, op: &str, target: Option<&str>) -> Option<FaultKind> {
        *self.counters_mut().calls.entry(format!("{}/{op}", face.as_str())).or_default() += 1;
        let (mut delay, answer) = self.faults_mut().take(face, op, target);
        if face == Face::Arm {
            delay += self.timing().arm_latency;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        answer
    }

    // === tokens ===

    /// The issuer of every token: `https://sts.windows.net/<tenant>/`.
    pub fn issuer(&self) -> String {
        format!("https://sts.windows.net/{}/", self.inner.tenant_id)
    }

    /// The JWKS that verifies every token the simulator issues.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.inner.key.jwk(&self.issuer())]})
    }

    pub(crate) fn mint(&self, subject: &Subject, audience: &str, lifetime: Duration) -> Result<Minted, JwtError> {
        let now = unix_now();
        let nbf = now.saturating_sub(300);
        let exp = now + lifetime.as_secs();
        let iss = self.issuer();
        let mut claims = json!({
            "aud": audience,
            "iss": iss,
            "iat": nbf,
            "nbf": nbf,
            "exp": exp,
            "aio": "simulated",
            "appid": subject.client_id,
            "appidacr": subject.appidacr,
            "idp": iss,
            "idtyp": "app",
            "oid": subject.object_id,
            "rh": "0.simulated",
            "sub": subject.object_id,
            "tid": self.inner.tenant_id,
            "uti": uuid::Uuid::new_v4().simple().to_string(),
            "ver": "1.0",
        });
        if let Some(mirid) = &subject.mi_resource_id {
            claims["xms_mirid"] = json!(mirid);
        }
        let token = self.inner.key.sign(&claims)?;
        Ok(Minted { token, not_before: nbf, expires_on: exp, expires_in: exp.saturating_sub(now) })
    }

    /// A valid ARM bearer token (audience `https://management.azure.com/`) for the built-in app, so tests
    /// can call ARM without going through Azure AD first.
    pub fn arm_token(&self) -> Result<String, SimError> {
        let subject = Subject {
            object_id: self.state().ensure_client(BUILTIN_CLIENT_ID),
            client_id: BUILTIN_CLIENT_ID.to_owned(),
            appidacr: "1",
            mi_resource_id: None,
        };
        Ok(self.mint(&subject, "https://management.azure.com/", self.inner.aad_token_lifetime)?.token)
    }

    // === IMDS bookkeeping (serving is in `start.rs`) ===

    /// The runtime the simulator was created on; IMDS servers started from other threads run there.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Remembers a running IMDS server so that dropping the [`RunningSim`](crate::RunningSim) stops it.
    pub(crate) fn track_imds(&self, abort: AbortHandle) {
        self.inner.imds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(abort);
    }

    pub(crate) fn abort_all_imds(&self) {
        for h in self.inner.imds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            h.abort();
        }
    }
}
