//! The simulator handle shared by all faces ([`Simulator`]), its configuration ([`SimConfig`]) and a
//! running instance with its listeners ([`RunningSim`]).
//!
//! Locks (`std::sync::Mutex`) guard plain data and are never held across an `.await`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::task::AbortHandle;

use crate::faults::{Counters, Face, Fault, FaultKind, FaultTable, Load, TargetCounts, target_key};
use crate::jwt::{JwtError, SigningKey};
use crate::state::{ComputeKind, FederatedCredential, Identities, IdentityInfo, JwksSource, NodeRef, State};
use crate::tls::TlsMaterial;

/// The tenant used when none is configured.
pub const DEFAULT_TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The subscription used when none is configured.
pub const DEFAULT_SUBSCRIPTION_ID: &str = "2a1b3c4d-0000-4000-8000-00000000a51e";
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

/// How to start the simulator. `Default` gives loopback listeners on free ports, no ARM latency and
/// instant long-running operations (what most tests want).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// ARM over plain HTTP.
    pub arm_http_addr: SocketAddr,
    /// ARM over HTTPS.
    pub arm_https_addr: SocketAddr,
    /// Azure AD over plain HTTP.
    pub aad_http_addr: SocketAddr,
    /// Azure AD over HTTPS.
    pub aad_https_addr: SocketAddr,
    /// Tenant ID.
    pub tenant_id: String,
    /// Subscription ID.
    pub subscription_id: String,
    /// Region of everything created.
    pub location: String,
    /// Where to write `ca.pem` (and, on request, the Azure Stack environment file); `None` = a temporary
    /// directory removed with the [`RunningSim`].
    pub state_dir: Option<PathBuf>,
    /// Extra names (IP addresses or DNS names) for the HTTPS certificate, e.g. an address reachable from
    /// node network namespaces.
    pub tls_names: Vec<String>,
    /// Added to every ARM call (benchmarks: 1–2 s is realistic; tests: zero).
    pub arm_latency: Duration,
    /// How long a VM/VMSS write stays `InProgress` before its identities are applied.
    pub lro_duration: Duration,
    /// Lifetime of Azure AD tokens.
    pub aad_token_lifetime: Duration,
    /// Lifetime of IMDS (managed identity) tokens.
    pub imds_token_lifetime: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            arm_http_addr: lo,
            arm_https_addr: lo,
            aad_http_addr: lo,
            aad_https_addr: lo,
            tenant_id: DEFAULT_TENANT_ID.to_owned(),
            subscription_id: DEFAULT_SUBSCRIPTION_ID.to_owned(),
            location: "westus2".to_owned(),
            state_dir: None,
            tls_names: Vec::new(),
            arm_latency: Duration::ZERO,
            lro_duration: Duration::ZERO,
            aad_token_lifetime: Duration::from_secs(3599),
            imds_token_lifetime: Duration::from_secs(86399),
        }
    }
}

/// Timing knobs that can change while the simulator runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timing {
    /// Added to every ARM call.
    #[serde(with = "duration_ms")]
    pub arm_latency: Duration,
    /// How long writes stay `InProgress`.
    #[serde(with = "duration_ms")]
    pub lro_duration: Duration,
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// The URLs a running simulator serves on (set once its listeners are bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// ARM, plain HTTP, no trailing slash.
    pub arm_http: String,
    /// ARM, HTTPS.
    pub arm_https: String,
    /// Azure AD, plain HTTP.
    pub aad_http: String,
    /// Azure AD, HTTPS.
    pub aad_https: String,
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
/// all clones see the same state. Obtained from [`RunningSim`] (which derefs to it).
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
    fn new(cfg: &SimConfig) -> Result<Self, SimError> {
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

    /// Starts ARM and Azure AD on their HTTP and HTTPS listeners. Must be called inside a Tokio runtime.
    pub async fn start(cfg: SimConfig) -> Result<RunningSim, SimError> {
        RunningSim::start(cfg).await
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

    // === IMDS ===

    /// Serves a node's IMDS on `listener` (which may have been bound inside another network namespace).
    /// The server runs until the [`RunningSim`] is dropped or the returned handle is stopped.
    pub fn serve_imds(&self, listener: std::net::TcpListener, node: NodeRef) -> Result<ImdsHandle, SimError> {
        let addr = listener.local_addr().map_err(|e| SimError::Bind { addr: "imds".into(), source: e })?;
        listener.set_nonblocking(true).map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
        let _guard = self.inner.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
        let router = crate::imds::router(self.clone(), node.clone());
        let task = self.inner.runtime.spawn(crate::server::serve(listener, router, None));
        let abort = task.abort_handle();
        self.inner.imds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(abort.clone());
        tracing::info!(%addr, node = %node.node_name(), "IMDS serving");
        Ok(ImdsHandle { addr, node, abort })
    }

    /// Binds `addr` on this thread's network namespace and serves a node's IMDS there.
    pub fn serve_imds_on(&self, addr: SocketAddr, node: NodeRef) -> Result<ImdsHandle, SimError> {
        let listener =
            std::net::TcpListener::bind(addr).map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
        self.serve_imds(listener, node)
    }

    pub(crate) fn abort_all_imds(&self) {
        for h in self.inner.imds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            h.abort();
        }
    }
}

/// A running IMDS instance.
#[derive(Debug, Clone)]
pub struct ImdsHandle {
    addr: SocketAddr,
    node: NodeRef,
    abort: AbortHandle,
}

impl ImdsHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://<addr>`: the value for `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The node it serves.
    pub fn node(&self) -> &NodeRef {
        &self.node
    }
    /// Stops serving.
    pub fn stop(&self) {
        self.abort.abort();
    }
}

/// A started simulator: the listeners and the [`Simulator`] handle (through `Deref`). Dropping it stops
/// every server, IMDS instances included, and removes its temporary directory.
pub struct RunningSim {
    sim: Simulator,
    tasks: Vec<AbortHandle>,
    tls: TlsMaterial,
    state_dir: PathBuf,
    ca_path: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for RunningSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSim").field("endpoints", &self.sim.endpoints()).finish_non_exhaustive()
    }
}

impl std::ops::Deref for RunningSim {
    type Target = Simulator;
    fn deref(&self) -> &Simulator {
        &self.sim
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.sim.abort_all_imds();
    }
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), SimError> {
    let l =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
    let local = l.local_addr().map_err(|e| SimError::Bind { addr: addr.to_string(), source: e })?;
    Ok((l, local))
}

fn url_of(scheme: &str, addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
    match addr {
        SocketAddr::V6(_) if !addr.ip().is_unspecified() => format!("{scheme}://[{host}]:{}", addr.port()),
        _ => format!("{scheme}://{host}:{}", addr.port()),
    }
}

impl RunningSim {
    async fn start(cfg: SimConfig) -> Result<Self, SimError> {
        let sim = Simulator::new(&cfg)?;
        let (state_dir, tempdir) = match &cfg.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| SimError::Write { path: d.clone(), source: e })?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("azure-sim-")
                    .tempdir()
                    .map_err(|e| SimError::Write { path: std::env::temp_dir(), source: e })?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let tls = crate::tls::generate(&cfg.tls_names)?;
        let ca_path = state_dir.join("ca.pem");
        std::fs::write(&ca_path, &tls.ca_pem).map_err(|e| SimError::Write { path: ca_path.clone(), source: e })?;

        let (arm_http, arm_http_addr) = bind(cfg.arm_http_addr).await?;
        let (arm_https, arm_https_addr) = bind(cfg.arm_https_addr).await?;
        let (aad_http, aad_http_addr) = bind(cfg.aad_http_addr).await?;
        let (aad_https, aad_https_addr) = bind(cfg.aad_https_addr).await?;
        sim.set_endpoints(Endpoints {
            arm_http: url_of("http", arm_http_addr),
            arm_https: url_of("https", arm_https_addr),
            aad_http: url_of("http", aad_http_addr),
            aad_https: url_of("https", aad_https_addr),
        });
        let cfg_tls = Some(tls.server_config.clone());
        let arm_router = |scheme| crate::arm::router(sim.clone(), scheme);
        let aad_router = |scheme| crate::aad::router(sim.clone(), scheme);
        let tasks = vec![
            tokio::spawn(crate::server::serve(arm_http, arm_router("http"), None)).abort_handle(),
            tokio::spawn(crate::server::serve(arm_https, arm_router("https"), cfg_tls.clone())).abort_handle(),
            tokio::spawn(crate::server::serve(aad_http, aad_router("http"), None)).abort_handle(),
            tokio::spawn(crate::server::serve(aad_https, aad_router("https"), cfg_tls)).abort_handle(),
        ];
        tracing::info!(endpoints = ?sim.endpoints(), tenant = %sim.tenant_id(), "Azure simulator started");
        Ok(Self { sim, tasks, tls, state_dir, ca_path, _tempdir: tempdir })
    }

    /// The [`Simulator`] handle (also reachable through `Deref`).
    pub fn sim(&self) -> &Simulator {
        &self.sim
    }
    /// ARM over HTTP, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn arm_url(&self) -> String {
        self.sim.endpoints().arm_http
    }
    /// ARM over HTTPS (certificate signed by [`Self::ca_cert_pem`]).
    pub fn arm_https_url(&self) -> String {
        self.sim.endpoints().arm_https
    }
    /// Azure AD over HTTP: the authority host; token URLs are `<this>/<tenant>/oauth2/token`.
    pub fn aad_url(&self) -> String {
        self.sim.endpoints().aad_http
    }
    /// Azure AD over HTTPS.
    pub fn aad_https_url(&self) -> String {
        self.sim.endpoints().aad_https
    }
    /// Path of the CA certificate (PEM) that signed the HTTPS certificate.
    pub fn ca_cert_pem_path(&self) -> &Path {
        &self.ca_path
    }
    /// The CA certificate (PEM).
    pub fn ca_cert_pem(&self) -> &str {
        &self.tls.ca_pem
    }
    /// The CA certificate (DER), e.g. for `reqwest::Certificate::from_der`.
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.tls.ca_der
    }
    /// The directory holding `ca.pem` and environment files.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Writes an autorest Azure Stack environment file (for `cloud: AzureStackCloud` with
    /// `AZURE_ENVIRONMENT_FILEPATH`) pointing at the HTTPS (or, with `https = false`, HTTP) listeners,
    /// and returns its path (`<state dir>/azurestackcloud.json`).
    pub fn write_azure_stack_environment(&self, https: bool) -> Result<PathBuf, SimError> {
        let e = self.sim.endpoints();
        let (arm, aad) = if https { (e.arm_https, e.aad_https) } else { (e.arm_http, e.aad_http) };
        let doc = crate::envfile::azure_stack_environment(&arm, &aad);
        let path = self.state_dir.join("azurestackcloud.json");
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| SimError::Write { path: path.clone(), source: e })?;
        Ok(path)
    }
}
