//! The ARM HTTP client: VM/VMSS GET and identity PATCH, long-running-operation polling,
//! transient retries, per-operation `Retry-After` blocking and bad-identity pruning.
//! Decisions come from [`super::plan`]; this file only sends and reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, info, warn};
use url::Url;

use super::plan::{self, Change, IdentityPatch, IdentityType};
use super::{
    Arm, ArmError, ArmObserver, ArmOperation, NodeIdentities, ProtectedClientIds, TokenSource, UpdateDecision, VmTarget,
};
use crate::cloud::{AzureEnvironment, CloudConfig};
use crate::http::HttpOptions;

/// The compute API version of the original (`compute/mgmt/2019-12-01`).
pub const API_VERSION: &str = "2019-12-01";
/// The managed-identity API version for [`ArmClient::user_assigned_identity`].
pub const IDENTITY_API_VERSION: &str = "2023-01-31";
/// Statuses autorest retried for the original (429 removed by MIC on purpose).
const TRANSIENT_STATUSES: [u16; 5] = [408, 500, 502, 503, 504];

/// Tunables of [`ArmClient`]; the defaults are the original's where it had one.
#[derive(Clone)]
pub struct ArmOptions {
    /// Transport settings (extra root CA for the simulator, timeouts).
    pub http: HttpOptions,
    /// Pause between long-running-operation polls when ARM sends no `Retry-After` (original: 5 s).
    pub poll_interval: Duration,
    /// Give up waiting for a long-running operation after this long (autorest: 15 min).
    pub operation_timeout: Duration,
    /// Retries after pruning rejected identities (`--update-user-msi-max-retry`, default 2).
    pub max_retries: u32,
    /// Pause before such a retry (`--update-user-msi-retry-interval`, default 1 s).
    pub retry_interval: Duration,
    /// Attempts for 408/500/502/503/504 and transport errors (autorest: 3).
    pub transient_attempts: u32,
    /// First pause between transient attempts, doubled each time unless ARM sends `Retry-After`.
    pub transient_backoff: Duration,
    /// Entries per identity PATCH (ARM's limit: 150).
    pub max_identities_per_request: usize,
    /// The longest wait a `Retry-After` header can impose (blocking, retrying or polling);
    /// longer asks are cut to it.
    pub max_retry_after: Duration,
    /// Receives one observation per operation, for metrics.
    pub observer: Option<Arc<dyn ArmObserver>>,
    /// Identities never detached, recognised by the client ID ARM reports for them.
    pub protected: ProtectedClientIds,
}

impl Default for ArmOptions {
    fn default() -> Self {
        Self {
            http: HttpOptions::default(),
            poll_interval: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(15 * 60),
            max_retries: 2,
            retry_interval: Duration::from_secs(1),
            transient_attempts: 3,
            transient_backoff: Duration::from_secs(1),
            max_identities_per_request: plan::MAX_IDENTITIES_PER_REQUEST,
            max_retry_after: Duration::from_secs(300),
            observer: None,
            protected: ProtectedClientIds::default(),
        }
    }
}

impl std::fmt::Debug for ArmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmOptions")
            .field("poll_interval", &self.poll_interval)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_interval", &self.retry_interval)
            .field("transient_attempts", &self.transient_attempts)
            .field("max_identities_per_request", &self.max_identities_per_request)
            .field("max_retry_after", &self.max_retry_after)
            .field("observer", &self.observer.is_some())
            .field("protected", &self.protected)
            .finish_non_exhaustive()
    }
}

/// A user-assigned identity as ARM describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserAssignedIdentity {
    pub id: String,
    pub name: String,
    pub client_id: String,
    pub principal_id: String,
    pub tenant_id: String,
}

/// ARM client for one subscription and resource group. Share it (`Arc`): the throttling state
/// is per client, as in the original.
pub struct ArmClient {
    http: reqwest::Client,
    base: Url,
    subscription_id: String,
    resource_group: String,
    tokens: Arc<dyn TokenSource>,
    options: ArmOptions,
    blocked_until: Mutex<[Option<Instant>; 4]>,
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("base", &self.base.as_str())
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

// === Wire shapes ===

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Resource {
    identity: Option<ResourceIdentity>,
    properties: Option<ResourceProperties>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ResourceIdentity {
    #[serde(rename = "type")]
    type_: Option<String>,
    principal_id: Option<String>,
    tenant_id: Option<String>,
    user_assigned_identities: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ResourceProperties {
    provisioning_state: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorBody {
    error: Option<ErrorDetail>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OperationStatus {
    status: String,
    error: Option<ErrorDetail>,
}

impl Resource {
    fn into_identities(self) -> NodeIdentities {
        let provisioning_state = self.properties.and_then(|p| p.provisioning_state);
        let Some(identity) = self.identity else { return NodeIdentities { provisioning_state, ..Default::default() } };
        let entries = identity.user_assigned_identities.unwrap_or_default();
        let mut user_assigned: Vec<String> = entries.keys().map(|id| id.to_lowercase()).collect();
        user_assigned.sort();
        user_assigned.dedup();
        let client_ids = entries
            .iter()
            .filter_map(|(id, v)| Some((id.to_lowercase(), v.get("clientId")?.as_str()?.to_owned())))
            .filter(|(_, client_id)| !client_id.is_empty())
            .collect();
        NodeIdentities {
            identity_type: Some(IdentityType::parse(identity.type_.as_deref().unwrap_or_default())),
            user_assigned,
            client_ids,
            principal_id: identity.principal_id.filter(|s| !s.is_empty()),
            tenant_id: identity.tenant_id.filter(|s| !s.is_empty()),
            provisioning_state,
        }
    }
}

fn is_terminal(state: &str) -> bool {
    ["Succeeded", "Failed", "Canceled"].iter().any(|s| s.eq_ignore_ascii_case(state))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty())
}

/// Reads an error response into [`ArmError::Http`], keeping ARM's code and message.
async fn http_error(response: Response) -> ArmError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<ErrorBody>(&text).ok().and_then(|b| b.error);
    match detail {
        Some(d) => ArmError::Http { status, code: d.code, message: d.message },
        None => ArmError::Http { status, code: String::new(), message: text.chars().take(2048).collect() },
    }
}

// === ArmClient ===

impl ArmClient {
    /// A client for the config's subscription and resource group at the environment's ARM
    /// endpoint, authenticating with `tokens`.
    pub fn new(
        config: &CloudConfig,
        environment: &AzureEnvironment,
        tokens: Arc<dyn TokenSource>,
        options: ArmOptions,
    ) -> Result<Self, ArmError> {
        let endpoint = environment.resource_manager_endpoint.trim();
        let base = Url::parse(endpoint)
            .map_err(|e| ArmError::Config(format!("resource manager endpoint {endpoint:?}: {e}")))?;
        if base.cannot_be_a_base() {
            return Err(ArmError::Config(format!("resource manager endpoint {endpoint:?} is not a base URL")));
        }
        for (what, value) in [("subscriptionId", &config.subscription_id), ("resourceGroup", &config.resource_group)] {
            if value.trim().is_empty() || value.contains('/') {
                return Err(ArmError::Config(format!("{what} {value:?} is empty or invalid")));
            }
        }
        let http = options.http.build(false).map_err(|e| ArmError::Config(e.to_string()))?;
        Ok(Self {
            http,
            base,
            subscription_id: config.subscription_id.clone(),
            resource_group: config.resource_group.clone(),
            tokens,
            options,
            blocked_until: Mutex::new([None; 4]),
        })
    }

    /// The resource group every call uses.
    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }

    fn url_for_segments(&self, segments: &[&str], api_version: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.set_query(Some(&format!("api-version={api_version}")));
        url
    }

    fn resource_url(&self, target: &VmTarget) -> Url {
        let segments = [
            "subscriptions",
            &self.subscription_id,
            "resourceGroups",
            &self.resource_group,
            "providers",
            "Microsoft.Compute",
            target.resource_type(),
            target.name(),
        ];
        self.url_for_segments(&segments, API_VERSION)
    }

    // --- throttling ---

    fn check_throttle(&self, operation: ArmOperation) -> Result<(), ArmError> {
        let blocked = self.blocked_until.lock().map(|b| b[operation.index()]).unwrap_or(None);
        match blocked.and_then(|until| until.checked_duration_since(Instant::now())) {
            Some(retry_after) if !retry_after.is_zero() => Err(ArmError::Throttled { operation, retry_after }),
            _ => Ok(()),
        }
    }

    /// After a failed call: block the operation for `Retry-After` (or lift the block if none).
    fn record_retry_after(&self, operation: ArmOperation, retry_after: Option<Duration>) {
        if let Some(wait) = retry_after {
            warn!(operation = operation.as_str(), ?wait, "ARM asked to retry later, blocking the operation");
        }
        if let Ok(mut blocked) = self.blocked_until.lock() {
            blocked[operation.index()] = retry_after.and_then(|wait| Instant::now().checked_add(wait));
        }
    }

    fn observe(&self, operation: ArmOperation, started: Instant, ok: bool) {
        if let Some(observer) = &self.options.observer {
            observer.observe(operation, started.elapsed(), ok);
        }
    }

    // --- sending ---

    /// Sends with a bearer token, retrying transport errors and transient statuses.
    async fn send(&self, method: Method, url: &Url, body: Option<&Value>) -> Result<Response, ArmError> {
        let bearer = self.tokens.bearer_token().await.map_err(ArmError::Auth)?;
        let attempts = self.options.transient_attempts.max(1);
        let mut backoff = self.options.transient_backoff;
        let mut attempt = 1;
        loop {
            let mut request = self.http.request(method.clone(), url.clone()).bearer_auth(&bearer);
            if let Some(body) = body {
                request = request.json(body);
            }
            let outcome = request.send().await;
            let wait = match &outcome {
                Ok(r) if !TRANSIENT_STATUSES.contains(&r.status().as_u16()) => {
                    return outcome.map_err(ArmError::Transport);
                }
                Ok(r) => self.retry_after(r.headers()).unwrap_or(backoff),
                Err(_) => backoff,
            };
            if attempt >= attempts {
                return outcome.map_err(ArmError::Transport);
            }
            debug!(%method, attempt, ?wait, "Transient ARM failure, retrying");
            tokio::time::sleep(wait.min(self.options.max_retry_after)).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    /// Reads a failed response, blocking `operation` per its `Retry-After`; 429 is [`ArmError::Throttled`].
    async fn failed(&self, operation: ArmOperation, response: Response) -> ArmError {
        let retry_after = self.retry_after(response.headers());
        self.record_retry_after(operation, retry_after);
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return ArmError::Throttled { operation, retry_after: retry_after.unwrap_or_default() };
        }
        http_error(response).await
    }

    // --- GET ---

    async fn get_resource(&self, target: &VmTarget) -> Result<NodeIdentities, ArmError> {
        let operation = target.read_operation();
        let started = Instant::now();
        let result = self.get_resource_unobserved(target, operation).await;
        self.observe(operation, started, result.is_ok());
        result
    }

    async fn get_resource_unobserved(
        &self,
        target: &VmTarget,
        operation: ArmOperation,
    ) -> Result<NodeIdentities, ArmError> {
        self.check_throttle(operation)?;
        let response = match self.send(Method::GET, &self.resource_url(target), None).await {
            Ok(r) => r,
            Err(e) => {
                self.record_retry_after(operation, None);
                return Err(e);
            }
        };
        match response.status() {
            StatusCode::OK => {
                let resource: Resource =
                    response.json().await.map_err(|e| ArmError::InvalidResponse(format!("{target}: {e}")))?;
                Ok(resource.into_identities())
            }
            StatusCode::NOT_FOUND => {
                self.record_retry_after(operation, None);
                Err(ArmError::NotFound { target: target.clone(), resource_group: self.resource_group.clone() })
            }
            _ => Err(self.failed(operation, response).await),
        }
    }

    // --- PATCH ---

    /// Sends the patch's chunks in order, each awaited to completion. On failure returns the
    /// error and the part of the delta not yet applied (the failed chunk and the rest).
    async fn apply_patch(
        &self,
        target: &VmTarget,
        patch: &IdentityPatch,
    ) -> Result<(), (ArmError, BTreeMap<String, Change>)> {
        let operation = target.write_operation();
        let started = Instant::now();
        let result = self.apply_patch_unobserved(target, patch, operation).await;
        self.observe(operation, started, result.is_ok());
        result
    }

    async fn apply_patch_unobserved(
        &self,
        target: &VmTarget,
        patch: &IdentityPatch,
        operation: ArmOperation,
    ) -> Result<(), (ArmError, BTreeMap<String, Change>)> {
        self.check_throttle(operation).map_err(|e| (e, patch.delta.clone()))?;
        let url = self.resource_url(target);
        let chunks = plan::chunks(&patch.delta, self.options.max_identities_per_request);
        for (index, chunk) in chunks.iter().enumerate() {
            let rest = || chunks[index..].iter().flatten().map(|(id, c)| (id.clone(), *c)).collect();
            debug!(%target, chunk = index, entries = chunk.len(), identity_type = patch.identity_type.as_str(), "Patching identities");
            let response = match self.send(Method::PATCH, &url, Some(&patch.body(chunk))).await {
                Ok(r) => r,
                Err(e) => {
                    self.record_retry_after(operation, None);
                    return Err((e, rest()));
                }
            };
            if !matches!(response.status(), StatusCode::OK | StatusCode::CREATED | StatusCode::ACCEPTED) {
                return Err((self.failed(operation, response).await, rest()));
            }
            self.wait_for_completion(&url, response).await.map_err(|e| (e, rest()))?;
        }
        Ok(())
    }

    /// Waits for a PATCH to finish: `Azure-AsyncOperation`, else `Location`, else the
    /// resource's own `provisioningState`.
    async fn wait_for_completion(&self, resource_url: &Url, response: Response) -> Result<(), ArmError> {
        let headers = response.headers().clone();
        let status = response.status();
        let now = Instant::now();
        let deadline = now.checked_add(self.options.operation_timeout).unwrap_or(now);
        if let Some(async_url) = header(&headers, "azure-asyncoperation").and_then(|u| Url::parse(u).ok()) {
            return self.poll_async_operation(&async_url, deadline).await;
        }
        if status == StatusCode::ACCEPTED {
            if let Some(location) = header(&headers, "location").and_then(|u| Url::parse(u).ok()) {
                return self.poll_location(&location, deadline).await;
            }
            return self.poll_resource(resource_url, deadline).await;
        }
        let resource: Resource = response.json().await.unwrap_or_default();
        match resource.properties.and_then(|p| p.provisioning_state) {
            Some(state) if !is_terminal(&state) => self.poll_resource(resource_url, deadline).await,
            Some(state) if !state.eq_ignore_ascii_case("Succeeded") => {
                Err(ArmError::OperationFailed { status: state, code: String::new(), message: String::new() })
            }
            _ => Ok(()),
        }
    }

    /// The response's `Retry-After`, capped by [`ArmOptions::max_retry_after`].
    fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        header(headers, "retry-after")
            .and_then(|v| plan::retry_after_within(v, SystemTime::now(), self.options.max_retry_after))
    }

    fn poll_delay(&self, headers: &HeaderMap) -> Duration {
        self.retry_after(headers).unwrap_or(self.options.poll_interval)
    }

    async fn sleep_until_next_poll(&self, delay: Duration, deadline: Instant) -> Result<(), ArmError> {
        if delay > deadline.saturating_duration_since(Instant::now()) {
            return Err(ArmError::OperationTimeout(self.options.operation_timeout));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn poll_async_operation(&self, url: &Url, deadline: Instant) -> Result<(), ArmError> {
        loop {
            let response = self.send(Method::GET, url, None).await?;
            if !response.status().is_success() {
                return Err(http_error(response).await);
            }
            let delay = self.poll_delay(response.headers());
            let body: OperationStatus =
                response.json().await.map_err(|e| ArmError::InvalidResponse(format!("operation status: {e}")))?;
            if body.status.eq_ignore_ascii_case("Succeeded") {
                return Ok(());
            }
            if is_terminal(&body.status) {
                let detail = body.error.unwrap_or_default();
                return Err(ArmError::OperationFailed {
                    status: body.status,
                    code: detail.code,
                    message: detail.message,
                });
            }
            self.sleep_until_next_poll(delay, deadline).await?;
        }
    }

    async fn poll_location(&self, url: &Url, deadline: Instant) -> Result<(), ArmError> {
        loop {
            let response = self.send(Method::GET, url, None).await?;
            match response.status() {
                StatusCode::ACCEPTED => {
                    let delay = self.poll_delay(response.headers());
                    self.sleep_until_next_poll(delay, deadline).await?;
                }
                s if s.is_success() => return Ok(()),
                _ => return Err(http_error(response).await),
            }
        }
    }

    async fn poll_resource(&self, url: &Url, deadline: Instant) -> Result<(), ArmError> {
        loop {
            let response = self.send(Method::GET, url, None).await?;
            if !response.status().is_success() {
                return Err(http_error(response).await);
            }
            let delay = self.poll_delay(response.headers());
            let resource: Resource =
                response.json().await.map_err(|e| ArmError::InvalidResponse(format!("resource: {e}")))?;
            match resource.properties.and_then(|p| p.provisioning_state) {
                Some(state) if !is_terminal(&state) => self.sleep_until_next_poll(delay, deadline).await?,
                Some(state) if !state.eq_ignore_ascii_case("Succeeded") => {
                    return Err(ArmError::OperationFailed {
                        status: state,
                        code: String::new(),
                        message: String::new(),
                    });
                }
                _ => return Ok(()),
            }
        }
    }

    // --- update_user_msi ---

    async fn update(&self, target: &VmTarget, add: &[String], remove: &[String]) -> Result<(), ArmError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let current = self.get_resource(target).await?;
        let removals = current.split_removals(remove, &self.options.protected);
        if !removals.kept.is_empty() {
            let names: Vec<&str> = removals.kept.iter().filter_map(|id| id.rsplit('/').next()).collect();
            warn!(%target, kept = ?names, "Not detaching identities whose client ID ARM reports as protected");
        }
        let remove = removals.allowed.as_slice();
        let patch = match current.decide_update(add, remove) {
            UpdateDecision::NoChange => {
                debug!(%target, "Identities already as wanted, no PATCH");
                return Ok(());
            }
            UpdateDecision::Deleting => {
                return Err(ArmError::Deleting { target: target.clone(), resource_group: self.resource_group.clone() });
            }
            UpdateDecision::Patch(patch) => patch,
        };
        info!(%target, assign = add.len(), unassign = remove.len(), "Updating user-assigned identities");
        let Err((original, remaining)) = self.apply_patch(target, &patch).await else { return Ok(()) };
        let bad = self.retry_without_bad_identities(target, &patch, &original, remaining).await;
        if bad.is_empty() {
            return Err(original);
        }
        Err(ArmError::BadIdentities { ids: bad, source: Box::new(original) })
    }

    /// The original's retry: while the error names rejected identities and pruning them leaves
    /// something to send, retry (at most `max_retries` times) without them. Returns every
    /// identity pruned; the caller returns the original error regardless.
    async fn retry_without_bad_identities(
        &self,
        target: &VmTarget,
        patch: &IdentityPatch,
        original: &ArmError,
        mut remaining: BTreeMap<String, Change>,
    ) -> Vec<String> {
        let mut pruned = Vec::new();
        let mut message = original.to_string();
        for _ in 0..self.options.max_retries {
            if !plan::is_bad_identity_error(&message) {
                break;
            }
            let bad = plan::extract_bad_identities(&message);
            let before = remaining.len();
            for id in &bad {
                remaining.remove(&id.to_lowercase());
            }
            let removed_any = remaining.len() < before;
            pruned.extend(bad);
            if !removed_any || remaining.is_empty() {
                break;
            }
            warn!(%target, remaining = remaining.len(), "Retrying identity update without rejected identities");
            tokio::time::sleep(self.options.retry_interval).await;
            let retry = IdentityPatch { identity_type: patch.identity_type, delta: remaining.clone() };
            match self.apply_patch(target, &retry).await {
                Ok(()) => break,
                Err((error, rest)) => {
                    message = error.to_string();
                    remaining = rest;
                }
            }
        }
        pruned.sort();
        pruned.dedup();
        pruned
    }

    /// A user-assigned identity by resource ID (client, principal and tenant IDs).
    pub async fn user_assigned_identity(&self, resource_id: &str) -> Result<UserAssignedIdentity, ArmError> {
        aadpodid_api::view::validate_resource_id(resource_id).map_err(|e| ArmError::Config(e.to_string()))?;
        let segments: Vec<&str> = resource_id.split('/').filter(|s| !s.is_empty()).collect();
        let url = self.url_for_segments(&segments, IDENTITY_API_VERSION);
        let response = self.send(Method::GET, &url, None).await?;
        if !response.status().is_success() {
            return Err(http_error(response).await);
        }
        let body: Value = response.json().await.map_err(|e| ArmError::InvalidResponse(format!("identity: {e}")))?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let properties = &body["properties"];
        Ok(UserAssignedIdentity {
            id: text(&body["id"]),
            name: text(&body["name"]),
            client_id: text(&properties["clientId"]),
            principal_id: text(&properties["principalId"]),
            tenant_id: text(&properties["tenantId"]),
        })
    }
}

#[async_trait::async_trait]
impl Arm for ArmClient {
    async fn identities(&self, target: &VmTarget) -> Result<NodeIdentities, ArmError> {
        self.get_resource(target).await
    }

    async fn update_user_msi(&self, target: &VmTarget, add: &[String], remove: &[String]) -> Result<(), ArmError> {
        self.update(target, add, remove).await
    }
}
