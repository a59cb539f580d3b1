//! # aadpodid-azure-sim: a stand-in for Azure that keeps state and speaks the real wire formats
//!
//! Three faces over one in-memory state ([`Simulator`]):
//!
//! ```text
//!   ARM (http + https) ──┐                      ┌── IMDS node "vm-1"        (serve_imds)
//!   AAD (http + https) ──┼── Simulator (state) ─┼── IMDS node "pool_0"
//!   /admin (on ARM)    ──┘                      └── IMDS node "pool_1" ...
//! ```
//!
//! A token comes out of a node's IMDS only if the identity was attached to the node's VM (or its VMSS)
//! through ARM *and the write's long-running operation has completed*.
//!
//! ## Library use (tests)
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use aadpodid_azure_sim::{Simulator, SimConfig, NodeRef};
//! let sim = Simulator::start(SimConfig::default()).await?;
//! sim.create_vmss("node-rg", "pool", 2);
//! let id = sim.create_user_assigned_identity("id-rg", "reader");
//! let imds = sim.serve_imds(std::net::TcpListener::bind("127.0.0.1:0")?, NodeRef::vmss_instance("pool", 0))?;
//! let token = sim.arm_token()?; // bearer for ARM, or get one from the AAD face
//! // PATCH {arm_url}/subscriptions/{sub}/resourceGroups/node-rg/providers/Microsoft.Compute/
//! //       virtualMachineScaleSets/pool?api-version=2019-12-01  {"identity":{"type":"UserAssigned",
//! //       "userAssignedIdentities":{"<id.id>":{}}}}, then poll Azure-AsyncOperation, then
//! // GET {imds.url()}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...  (Metadata: true)
//! # let _ = (sim.arm_url(), id, imds, token); Ok(()) }
//! ```
//! [`SimConfig::default`] binds everything on `127.0.0.1` free ports, with no ARM latency and instant
//! long-running operations. Set [`SimConfig::lro_duration`] (or [`Simulator::set_lro_duration`]) to make
//! writes stay `InProgress`, and [`SimConfig::arm_latency`] for realistic benchmarks (1–2 s).
//!
//! ## Stand-alone: the `azure-sim` binary
//! The tests and the local sandbox (`crates/sandbox`) embed the simulator through this library, because
//! they need the handle for faults and read-backs. The `azure-sim` binary runs the same simulator as a
//! process of its own, for manual testing: pointing our MIC and NMI, the original ones or an Azure SDK at
//! it by hand, or building a sandbox of your own out of network-namespace nodes.
//!
//! `azure-sim serve` runs until Ctrl-C:
//! - `--arm-http`, `--arm-https`, `--aad-http`, `--aad-https` `<addr:port>`: the four listeners (fixed
//!   loopback ports by default, so scripts can rely on them; `/admin` is on both ARM ones);
//! - `--tenant-id`, `--subscription-id`, `--location`: the world's identifiers;
//! - `--seed <file>`: VMs, scale sets, identities, service principals and federated credentials to
//!   create at start, YAML or JSON (format in [`seed`]; the same document `POST /admin/seed` takes);
//! - `--state-dir <dir>`: where `ca.pem`, `azurestackcloud.json` and `endpoints.json` are written;
//! - `--tls-name <ip or dns>` (repeatable): extra names for the HTTPS certificate, e.g. the host address
//!   nodes in network namespaces reach it by (ARM also accepts tokens for its URL under that name);
//! - `--arm-latency`, `--lro-duration` (`1500ms`, `2s`, ...): as [`SimConfig::arm_latency`] and
//!   [`SimConfig::lro_duration`];
//! - `--env-file-http`: write `azurestackcloud.json` with the plain-HTTP listeners, for clients that
//!   cannot be given the run's CA;
//! - `--imds <node>@<addr>` or `--imds <node>@<netns>/<addr>` (repeatable): an IMDS for a node, where
//!   node is `vm:<name>` or `vmss:<name>:<instance>` (`vm:<rg>/<name>` pins the resource group). Given a
//!   network namespace (named as `ip netns add` names it), the listener is bound inside it, so processes
//!   of that "node" reach IMDS at its real address, e.g. `vm:node-1@node-1/169.254.169.254:80` once the
//!   namespace has `169.254.169.254` on an interface.
//!
//! Once listening, `serve` prints one JSON line on stdout (endpoints, tenant, subscription, CA path,
//! environment-file path, IMDS URLs) and writes the same to `endpoints.json`, so a script can wait for
//! it and read the ports. Logs go to stderr, filtered by `RUST_LOG` (default `info`). The original MIC
//! finds the simulator with `cloud: AzureStackCloud`, `AZURE_ENVIRONMENT_FILEPATH=<state dir>/azurestackcloud.json`
//! and `SSL_CERT_FILE=<state dir>/ca.pem`.
//!
//! `azure-sim --help` shows the defaults and a worked example.
//!
//! `azure-sim identity create -g <rg> -n <name> [-o json] [--admin-url <url>]` creates a user-assigned
//! identity in a running simulator (through `POST /admin/identities`; the URL also comes from
//! `AZURE_SIM_ADMIN_URL`) and prints it as `az identity create -o json` would, so getting-started steps
//! written for the Azure CLI can be followed by hand.
//!
//! ## ARM face
//! - `GET|PUT|PATCH /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}`
//!   and `.../virtualMachineScaleSets/{vmss}`; paths case-insensitive. `identity.type` `None`,
//!   `SystemAssigned`, `UserAssigned`, `SystemAssigned, UserAssigned`; `userAssignedIdentities` keyed by
//!   resource ID (compared case-insensitively), values `{principalId, clientId}`.
//!   PATCH merges: `{}` attaches, `null` detaches, others are untouched; a PATCH that leaves
//!   `UserAssigned` with no identity is a 400 `InvalidParameter` (send `SystemAssigned` or `None`, as the
//!   original MIC does). PUT replaces the identity block (and creates the VM/VMSS if missing).
//! - Writes answer 200 (201 when a PUT creates) with the model (`provisioningState: Updating` while the
//!   operation runs), `Azure-AsyncOperation: .../providers/Microsoft.Compute/locations/{loc}/operations/{id}`
//!   and, when the LRO duration is non-zero, `Retry-After`. Polling answers `{"status":"InProgress"}` then
//!   `{"status":"Succeeded"}`. GETs show the new model at once; IMDS sees it when the operation completes.
//!   Writes to one VM/VMSS queue behind each other.
//! - Errors are `{"error":{"code","message"}}`: missing api-version → 400 `MissingApiVersionParameter`;
//!   unknown → 400 `InvalidApiVersionParameter` (see [`arm::COMPUTE_API_VERSIONS`]); unknown VM/VMSS/identity
//!   → 404 `ResourceNotFound`; unknown subscription → 404 `SubscriptionNotFound`; attaching identities that
//!   do not exist → 404 `FailedIdentityOperation` whose message quotes the bad IDs single-quoted and
//!   comma-separated (`... identities '<id1>,<id2>' were not found ...`), which the original MIC's
//!   extraction regex parses; malformed IDs → 400 `LinkedInvalidPropertyId`; bad JSON → 400
//!   `InvalidRequestContent`.
//! - `PUT|GET|DELETE .../providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}`;
//!   `GET /subscriptions` and `GET /subscriptions/{id}` (the Azure CLI lists them after login).
//! - A bearer token issued by the AAD face (or [`Simulator::arm_token`]) for `https://management.azure.com/`
//!   (with or without slash; also `https://management.core.windows.net/` and the simulator's own ARM URLs)
//!   is required: otherwise 401 `AuthenticationFailed` / `InvalidAuthenticationToken` /
//!   `ExpiredAuthenticationToken` / `InvalidAuthenticationTokenAudience` with `WWW-Authenticate`.
//!
//! Operation names (for faults and counters): `vm_get`, `vm_update` (PATCH), `vm_create_or_update` (PUT),
//! the same with `vmss_`, `identity_get|create_or_update|delete`, `operation_get` (LRO polls),
//! `subscriptions_list`, `subscription_get`.
//!
//! ## Azure AD face
//! `POST /{tenant}/oauth2/token` (v1, `resource`; string `expires_in`, `expires_on`, `not_before`,
//! `ext_expires_in`) and `POST /{tenant}/oauth2/v2.0/token` (v2, `scope` ending `/.default`; numeric
//! `expires_in`), client credentials with `client_secret`, a certificate `client_assertion` (RS256 JWT with
//! `x5t` of a registered certificate, `iss` = `sub` = client ID, `aud` = the token endpoint) or a federated
//! `client_assertion` (issuer + subject + audience `api://AzureADTokenExchange`, verified with the
//! registered JWKS). Tokens are RS256 JWTs with `aud`, `iss` (`https://sts.windows.net/<tid>/`), `tid`,
//! `oid`, `appid`, `exp`, `nbf`, `iat` (and `xms_mirid` for managed identities), verifiable with the JWKS at
//! `/{tenant}/discovery/keys`, `/{tenant}/discovery/v2.0/keys`, `/common/discovery/keys`; discovery at
//! `/{tenant}/v2.0/.well-known/openid-configuration` and `/{tenant}/.well-known/openid-configuration`.
//! Errors: wrong secret → 401 `invalid_client` AADSTS7000215; unknown client → 400 `unauthorized_client`
//! AADSTS700016; bad assertion signature → 401 `invalid_client` AADSTS700027; no matching federated
//! credential → 400 `invalid_request` AADSTS70021; missing parameter → 400 AADSTS900144; unknown tenant →
//! 400 AADSTS90002. Operation names: `token`, `keys`, `openid_configuration`.
//! User-assigned identities are also AAD clients (federated credentials can be registered on them).
//!
//! ## IMDS face (one per node)
//! `GET /metadata/identity/oauth2/token` exactly as Azure's IMDS: `Metadata: true` required, any
//! `X-Forwarded-For` rejected, `api-version` required (400 with `newest-versions`), `resource` required,
//! at most one of `client_id`, `object_id` (`principal_id`), `msi_res_id` (`mi_res_id`); duplicate
//! parameters rejected. Identity not on the node → 400 `{"error":"invalid_request","error_description":
//! "Identity not found"}`; several user-assigned and no selector and no system-assigned → 400 with IMDS's
//! "Multiple user assigned identities exist..." text. Success: all-string JSON `access_token, client_id,
//! expires_in, expires_on, ext_expires_in, not_before, resource, token_type`. Also `/metadata/instance`
//! (compute block) and `/metadata/versions`; other paths 404. Paths are read leniently before routing, as
//! a Windows HTTP server would (escapes and `%uXXXX` decoded, `\` as `/`, dot segments and trailing dots
//! dropped, any case), so `/metadata/identity/oauth2/%74oken` is the token endpoint. Operation names: `imds_token`, `instance`,
//! `versions`; fault targets are node names (VM name or `<vmss>_<instance>`).
//!
//! ## Faults and counters
//! [`Simulator::inject`] a [`Fault`] (face, optional operation, optional target, kind = latency, 429 with
//! `Retry-After`, status code, down = connection closed without an answer, or — for ARM writes —
//! `FailOperation`: the write is accepted but its async operation ends `{"status":"Failed","error":...}`
//! and nothing changes; for the next N calls or forever). Scenario helpers: [`Simulator::delete_vm`],
//! [`Simulator::delete_vmss`], [`Simulator::set_vmss_capacity`], [`Simulator::set_provisioning_state`]
//! (e.g. `Deleting`). [`Simulator::counters`] counts every call per `face/operation` (faulted ones included) and
//! ARM reads/writes per VM/VMSS ([`Counters::arm_writes`]; keyed `vm/<name>` or `vmss/<name>`, lowercased,
//! without the resource group). Writes are PUT/PATCH calls that got past faults and authentication,
//! whatever their outcome. Authenticated ARM calls are also counted per caller, by the token's `appid`
//! ([`Counters::caller_writes`]), so two clients with their own credentials can be told apart.
//! IMDS token calls also record their load peaks: the most in progress at once
//! ([`Counters::peak_concurrent`]) and the most started within one second ([`Counters::peak_per_second`]),
//! injected latency included. [`Simulator::revoke_service_principal_secret`] revokes a client secret and
//! [`Simulator::delete_user_assigned_identity`] deletes an identity (refusals for token caches).
//!
//! ## Admin API (on both ARM listeners, no auth)
//! `GET /admin/info`, `GET /admin/state`, `POST /admin/seed` (seed YAML/JSON, see [`seed`]),
//! `POST /admin/vms {resourceGroup,name}`, `POST /admin/vmss {resourceGroup,name,instances}`,
//! `POST /admin/identities {resourceGroup,name[,clientId,principalId]}` (answers like
//! `az identity create -o json`), `POST /admin/service-principals {clientId[,secret][,certificatePem]}`,
//! `POST /admin/federated-credentials {clientId,issuer,subject,jwks}`, `GET|POST|DELETE /admin/faults`
//! (a [`Fault`] as JSON, e.g. `{"face":"arm","operation":"vmss_update","kind":{"type":"throttle",
//! "retryAfter":"5s"},"count":1}`), `GET|DELETE /admin/counters`, `GET|PUT /admin/timing
//! {armLatency,lroDuration}` (milliseconds).
//!
//! ## HTTPS and the original MIC
//! ARM and AAD also listen on HTTPS with a certificate for `127.0.0.1`, `::1`, `localhost` (and
//! [`SimConfig::tls_names`]) signed by a CA generated for the run, written to
//! [`RunningSim::ca_cert_pem_path`]. [`RunningSim::write_azure_stack_environment`] writes the autorest
//! environment file for `cloud: AzureStackCloud` + `AZURE_ENVIRONMENT_FILEPATH`.
#![recursion_limit = "256"]

pub mod aad;
pub mod admin;
pub mod arm;
mod config;
mod der;
pub mod envfile;
pub mod faults;
pub mod imds;
pub mod jwt;
pub mod seed;
mod server;
mod sim;
mod start;
pub mod state;
pub mod tls;

pub use config::{DEFAULT_SUBSCRIPTION_ID, DEFAULT_TENANT_ID, Endpoints, SimConfig, Timing};
pub use faults::{Counters, Face, Fault, FaultKind, TargetCounts};
pub use sim::{BUILTIN_CLIENT_ID, SimError, Simulator};
pub use start::{ImdsHandle, RunningSim};
pub use state::{AttachedIdentity, ComputeKind, Identities, IdentityInfo, NodeRef, SystemIdentity};
