//! The command line. Reads nothing and writes nothing to the cluster unless a subcommand says
//! so (none does today).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "Examples:
  aadpodid explain pod myapp -n default        why myapp has (or lacks) its identity
  az identity create -g rg -n myidentity -o json | aadpodid scaffold --selector myapp | kubectl apply -f -
  aadpodid check identityconfig/               validate identity and binding YAML offline
  aadpodid doctor                              CRDs, MIC leader, NMI on every node
  aadpodid completion bash > /etc/bash_completion.d/aadpodid

Exit codes: 0 healthy or valid; 1 a problem was found (the pod lacks its identity, a file is
invalid, the installation is unhealthy); 2 the check could not run (bad arguments, cluster or
file unreachable).

As a kubectl plugin: install the `kubectl-aadpodid` binary on PATH and run `kubectl aadpodid …`.";

/// `aadpodid`: explain, scaffold, check and doctor for AAD Pod Identity.
#[derive(Debug, Parser)]
#[command(name = "aadpodid", version, about = "Explain, scaffold and check AAD Pod Identity", after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the cluster is, as kubectl finds it.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Why an object has or lacks its identity (replays MIC's and NMI's decisions).
    #[command(subcommand)]
    Explain(ExplainTarget),
    /// AzureIdentity and AzureIdentityBinding YAML from `az identity create -o json`.
    #[command(after_help = "Examples:
  az identity create -g rg -n myidentity -o json | aadpodid scaffold --selector myapp | kubectl apply -f -
  aadpodid scaffold identity.json --namespace apps --legacy-casing > identityconfig.yaml")]
    Scaffold(ScaffoldArgs),
    /// Validate AzureIdentity, AzureIdentityBinding and AzurePodIdentityException YAML offline.
    #[command(after_help = "Examples:
  aadpodid check identityconfig/
  kubectl get azureidentities -A -o yaml | aadpodid check -")]
    Check(CheckArgs),
    /// Check the installation: CRDs, the MIC leader, NMI on every node, versions.
    #[command(after_help = "Example:
  aadpodid doctor

Reads each NMI's and MIC's /healthz through the API server's pod proxy
(`pods/proxy` get permission).")]
    Doctor(DoctorArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  aadpodid completion bash > /etc/bash_completion.d/aadpodid
  aadpodid completion zsh > \"${fpath[1]}/_aadpodid\"
  aadpodid completion fish > ~/.config/fish/completions/aadpodid.fish")]
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExplainTarget {
    /// Why this pod has or lacks each identity, and what to do about it.
    #[command(after_help = "Examples:
  aadpodid explain pod myapp
  aadpodid explain pod myapp -n apps --azure-json /etc/kubernetes/azure.json")]
    Pod(ExplainPodArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExplainPodArgs {
    /// Pod name.
    pub name: String,
    /// Pod namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// MIC's --forceNamespaced, when MIC's Deployment cannot be read.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub force_namespaced: Option<bool>,
    /// azure.json with ARM credentials: also check that the identity is on the node's VM or scale set.
    #[arg(long = "azure-json", value_name = "PATH")]
    pub azure_json: Option<PathBuf>,
    /// Azure Stack environment file, for `cloud: AzureStackCloud`.
    #[arg(long, env = "AZURE_ENVIRONMENT_FILEPATH", value_name = "PATH")]
    pub azure_environment_file: Option<PathBuf>,
    /// Extra trusted root CA (PEM) for ARM and Azure AD, e.g. the Azure simulator's.
    #[arg(long, env = "AADPODID_EXTRA_ROOT_CA_FILE", hide = true)]
    pub extra_root_ca_file: Option<PathBuf>,
    /// Recent Events to show.
    #[arg(long, default_value_t = 10)]
    pub events: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ScaffoldArgs {
    /// `az identity create -o json` output; `-` or absent: standard input.
    pub input: Option<PathBuf>,
    /// Value of the pods' `aadpodidbinding` label (default: the identity's name).
    #[arg(long)]
    pub selector: Option<String>,
    /// Namespace of the identity and the binding (default: none, kubectl's namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Name of the AzureIdentity (default: the identity's name); the binding is `<name>-binding`.
    #[arg(long)]
    pub name: Option<String>,
    /// Write the pre-1.6 capitalised field names (ResourceID, ClientID, AzureIdentity, Selector).
    #[arg(long)]
    pub legacy_casing: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Files or directories (`.yaml`, `.yml`, `.json`, searched recursively); `-` is standard input.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Seconds to wait for each /healthz answer through the pod proxy.
    #[arg(long, default_value_t = 5)]
    pub probe_timeout: u64,
}
