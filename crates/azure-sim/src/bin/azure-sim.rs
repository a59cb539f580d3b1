//! `azure-sim`: run the Azure simulator as a process of its own (manual testing, hand-built sandboxes), or
//! talk to a running one. What it offers is documented for users in the library's crate docs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aadpodid_azure_sim::seed::Seed;
use aadpodid_azure_sim::{NodeRef, SimConfig, Simulator};
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

const LONG_ABOUT: &str = "\
Azure simulator: ARM (VM/VMSS identities, user-assigned identities), Azure AD (client credentials with
secret, certificate or federated assertion) and one IMDS per simulated node, all in memory.

Stand-alone use (manual testing, or a sandbox of your own with network-namespace nodes):
  # start ARM/AAD on fixed loopback ports, seed the world, write ca.pem + azurestackcloud.json,
  # and serve IMDS for node-1 inside network namespace `node-1` at 169.254.169.254:80
  azure-sim serve --state-dir /tmp/azure-sim --seed sandbox.yaml \\
      --imds vm:node-1@node-1/169.254.169.254:80 --imds vmss:pool:0@127.0.0.1:2579
  # the node's netns must exist (/var/run/netns/<name>, e.g. `ip netns add node-1`) and have
  # 169.254.169.254 on an interface; ARM/AAD must be reachable from it (use --arm-http 0.0.0.0:7070 and
  # --tls-name <host address> when the nodes reach the host through a veth address).
  # then, from another shell:
  azure-sim identity create -g id-rg -n keyvault-reader -o json   # like `az identity create`
  curl -s localhost:7070/admin/counters                             # ARM/AAD/IMDS call counts
  curl -s -XPOST localhost:7070/admin/faults -d '{\"face\":\"arm\",\"operation\":\"vmss_update\",\"kind\":{\"type\":\"throttle\",\"retryAfter\":\"5s\"},\"count\":1}'

On start, `serve` prints one JSON line on stdout with the endpoints, tenant, subscription, CA and
environment-file paths (also written to <state dir>/endpoints.json). Tokens for ARM come from the AAD
face (`<aad>/<tenant>/oauth2/token`, resource https://management.azure.com/) or from IMDS.
Point the original MIC at it with cloud: AzureStackCloud and AZURE_ENVIRONMENT_FILEPATH=<state dir>/azurestackcloud.json
(and SSL_CERT_FILE=<state dir>/ca.pem). Logs go to stderr; RUST_LOG sets the filter (default info).";

#[derive(Debug, Parser)]
#[command(name = "azure-sim", version, about = "Azure simulator: ARM identities, Azure AD tokens and per-node IMDS", long_about = LONG_ABOUT)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the simulator until interrupted.
    Serve(Box<ServeArgs>),
    /// Manage user-assigned identities of a running simulator (through its admin API).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// ARM over HTTP (also serves /admin).
    #[arg(long, default_value = "127.0.0.1:7070")]
    arm_http: SocketAddr,
    /// ARM over HTTPS (also serves /admin).
    #[arg(long, default_value = "127.0.0.1:7443")]
    arm_https: SocketAddr,
    /// Azure AD over HTTP.
    #[arg(long, default_value = "127.0.0.1:7071")]
    aad_http: SocketAddr,
    /// Azure AD over HTTPS.
    #[arg(long, default_value = "127.0.0.1:7444")]
    aad_https: SocketAddr,
    /// Tenant ID.
    #[arg(long, default_value = aadpodid_azure_sim::DEFAULT_TENANT_ID)]
    tenant_id: String,
    /// Subscription ID.
    #[arg(long, default_value = aadpodid_azure_sim::DEFAULT_SUBSCRIPTION_ID)]
    subscription_id: String,
    /// Region of created resources.
    #[arg(long, default_value = "westus2")]
    location: String,
    /// Seed file (YAML or JSON): vms, vmss, identities, servicePrincipals, federatedCredentials.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Directory for ca.pem, azurestackcloud.json and endpoints.json.
    #[arg(long, default_value = "/tmp/azure-sim")]
    state_dir: PathBuf,
    /// Extra name (IP or DNS) for the HTTPS certificate; repeatable.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Latency added to every ARM call (e.g. 1500ms for benchmarks).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    arm_latency: Duration,
    /// How long VM/VMSS writes stay InProgress before identities reach IMDS.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    lro_duration: Duration,
    /// Write the Azure Stack environment file with plain-HTTP endpoints instead of HTTPS.
    #[arg(long)]
    env_file_http: bool,
    /// IMDS for a node: `<node>@<addr>` on this namespace or `<node>@<netns>/<addr>` inside
    /// `/var/run/netns/<netns>`; node is `vm:<name>` or `vmss:<name>:<instance>`. Repeatable.
    #[arg(long = "imds")]
    imds: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Create a user-assigned identity and print it like `az identity create -o json`.
    Create {
        /// Resource group.
        #[arg(short = 'g', long = "resource-group")]
        resource_group: String,
        /// Identity name.
        #[arg(short = 'n', long)]
        name: String,
        /// Output format (only json).
        #[arg(short = 'o', long, default_value = "json")]
        output: String,
        /// Admin base URL of the running simulator (its ARM HTTP listener).
        #[arg(long, env = "AZURE_SIM_ADMIN_URL", default_value = "http://127.0.0.1:7070")]
        admin_url: String,
    },
}

/// Where an IMDS instance listens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImdsSpec {
    node: NodeRef,
    netns: Option<String>,
    addr: SocketAddr,
}

fn parse_imds(s: &str) -> anyhow::Result<ImdsSpec> {
    let (node, place) = s.rsplit_once('@').context("expected <node>@[<netns>/]<addr>")?;
    let node: NodeRef = node.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let (netns, addr) = match place.split_once('/') {
        Some((ns, a)) => (Some(ns.to_owned()), a),
        None => (None, place),
    };
    let addr: SocketAddr = addr.parse().with_context(|| format!("bad IMDS address {addr:?}"))?;
    Ok(ImdsSpec { node, netns, addr })
}

/// Binds `addr` inside the named network namespace from a short-lived thread that has joined it; the
/// socket stays in that namespace and can be served from any thread.
fn bind_in_netns(netns: &str, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let path = PathBuf::from("/var/run/netns").join(netns);
    let handle = std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", path.display()))?;
        std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr} in {}", path.display()))
    });
    handle.join().map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let imds: Vec<ImdsSpec> = a.imds.iter().map(|s| parse_imds(s)).collect::<anyhow::Result<_>>()?;
    let cfg = SimConfig {
        arm_http_addr: a.arm_http,
        arm_https_addr: a.arm_https,
        aad_http_addr: a.aad_http,
        aad_https_addr: a.aad_https,
        tenant_id: a.tenant_id,
        subscription_id: a.subscription_id,
        location: a.location,
        state_dir: Some(a.state_dir.clone()),
        tls_names: a.tls_names,
        arm_latency: a.arm_latency,
        lro_duration: a.lro_duration,
        ..SimConfig::default()
    };
    let sim = Simulator::start(cfg).await.context("starting the simulator")?;
    if let Some(path) = &a.seed {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading --seed {}", path.display()))?;
        aadpodid_azure_sim::seed::apply(&sim, &Seed::parse(&text)?).context("applying the seed")?;
    }
    let env_file = sim.write_azure_stack_environment(!a.env_file_http)?;
    let mut imds_urls = Vec::new();
    for spec in imds {
        let listener = match &spec.netns {
            Some(ns) => bind_in_netns(ns, spec.addr)?,
            None => std::net::TcpListener::bind(spec.addr).with_context(|| format!("binding IMDS {}", spec.addr))?,
        };
        let h = sim.serve_imds(listener, spec.node.clone())?;
        imds_urls.push(serde_json::json!({"node": spec.node.node_name(), "netns": spec.netns, "url": h.url()}));
    }
    let ready = serde_json::json!({
        "endpoints": sim.endpoints(),
        "tenantId": sim.tenant_id(),
        "subscriptionId": sim.subscription_id(),
        "caCertPath": sim.ca_cert_pem_path(),
        "azureEnvironmentFilepath": env_file,
        "imds": imds_urls,
    });
    let endpoints_path = a.state_dir.join("endpoints.json");
    std::fs::write(&endpoints_path, ready.to_string())
        .with_context(|| format!("writing {}", endpoints_path.display()))?;
    println!("{ready}");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    tracing::info!("Shutting down");
    Ok(())
}

async fn identity_create(admin_url: &str, rg: &str, name: &str, output: &str) -> anyhow::Result<()> {
    if output != "json" {
        bail!("only -o json is supported");
    }
    let url = format!("{}/admin/identities", admin_url.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({"resourceGroup": rg, "name": name}))
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading the answer")?;
    if !status.is_success() {
        bail!("simulator answered {status}: {body}");
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match args.command {
        Command::Serve(a) => serve(*a).await,
        Command::Identity { command: IdentityCommand::Create { resource_group, name, output, admin_url } } => {
            identity_create(&admin_url, &resource_group, &name, &output).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_flags_parse_with_and_without_netns() {
        let s = parse_imds("vm:node-1@node-1/169.254.169.254:80").unwrap();
        assert_eq!(
            s,
            ImdsSpec {
                node: NodeRef::vm("node-1"),
                netns: Some("node-1".into()),
                addr: "169.254.169.254:80".parse().unwrap()
            }
        );
        let s = parse_imds("vmss:pool:0@127.0.0.1:2579").unwrap();
        assert_eq!((s.node, s.netns), (NodeRef::vmss_instance("pool", 0), None));
        assert!(parse_imds("vm:x").is_err());
        assert!(parse_imds("x@127.0.0.1:1").is_err());
    }
}
