//! `aadpodid`, the operators' CLI (also `kubectl aadpodid`): why a pod has or lacks its
//! identity, YAML from `az identity create`, offline checks of identity YAML, and a health
//! check of the installation. Reads the cluster, never writes it.
//!
//! ```text
//! args ─► explain (gather ─► diagnose: MIC's decide + NMI's select, pure) ─► stdout
//!     ├─► scaffold, check (pure; files and stdin)
//!     └─► doctor (CRDs, MIC Lease + /healthz, NMI /healthz per node via the pod proxy)
//! ```

pub mod args;
pub mod check;
pub mod cluster;
pub mod doctor;
pub mod explain;
pub mod scaffold;
mod similar;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::args::{Cli, Command, ExplainTarget, KubeArgs};

/// Exit code when a problem was found (unhealthy pod or installation, invalid file).
pub const EXIT_PROBLEM: u8 = 1;
/// Exit code when the check could not run (arguments, cluster or files unreachable).
pub const EXIT_ERROR: u8 = 2;

/// Why a subcommand could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("talking to the API server")]
    Kube(#[from] kube::Error),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Check(#[from] check::CheckError),
    #[error(transparent)]
    Scaffold(#[from] scaffold::ScaffoldError),
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("writing the output")]
    Write(#[source] std::io::Error),
}

/// A kube client as kubectl would build it: `--kubeconfig`/`$KUBECONFIG`/`~/.kube/config`
/// with `--context`, else in-cluster; and the context's namespace.
pub async fn kube_client(args: &KubeArgs) -> Result<(kube::Client, String), CliError> {
    let opts = KubeConfigOptions { context: args.context.clone(), ..Default::default() };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc =
                Kubeconfig::read_from(path).map_err(|e| CliError::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &opts).await.map_err(|e| CliError::Kubeconfig(e.to_string()))?
        }
        None => match kube::Config::from_kubeconfig(&opts).await {
            Ok(c) => c,
            Err(kubeconfig) => kube::Config::incluster()
                .map_err(|e| CliError::Kubeconfig(format!("{kubeconfig}; not in a cluster either ({e})")))?,
        },
    };
    let namespace = config.default_namespace.clone();
    // A 503 from the pod proxy (a stopped NMI) is an answer here, not something to retry for
    // minutes; a command line fails fast and says why.
    let mut config = config;
    config.default_retry = false;
    let client = kube::Client::try_from(config)?;
    Ok((client, namespace))
}

/// Runs one command line, printing to `out`; the process exit code.
pub async fn run(cli: Cli, out: &mut impl Write) -> Result<ExitCode, CliError> {
    let verdict = |ok: bool| if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PROBLEM) };
    match cli.command {
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let name = cmd.get_name().to_owned();
            clap_complete::generate(shell, &mut cmd, name, out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(a) => {
            let reports = check::check_paths(&a.paths)?;
            for r in &reports {
                write!(out, "{r}").map_err(CliError::Write)?;
            }
            Ok(verdict(!reports.iter().any(check::DocReport::has_errors)))
        }
        Command::Scaffold(a) => {
            let input = read_input(a.input.as_ref())?;
            let opts = scaffold::Options {
                selector: a.selector,
                namespace: a.namespace,
                name: a.name,
                legacy_casing: a.legacy_casing,
            };
            write!(out, "{}", scaffold::scaffold(&input, &opts)?).map_err(CliError::Write)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(ExplainTarget::Pod(a)) => {
            let (client, ns) = kube_client(&cli.kube).await?;
            let mut x = explain::explain_pod(&client, &ns, &a).await?;
            x.keep_events(a.events);
            write!(out, "{x}").map_err(CliError::Write)?;
            Ok(verdict(x.healthy()))
        }
        Command::Doctor(a) => {
            let (client, _) = kube_client(&cli.kube).await?;
            let report = doctor::doctor(&client, &a).await?;
            write!(out, "{report}").map_err(CliError::Write)?;
            Ok(verdict(report.healthy()))
        }
    }
}

fn read_input(path: Option<&PathBuf>) -> Result<String, CliError> {
    match path.filter(|p| p.as_os_str() != "-") {
        Some(p) => std::fs::read_to_string(p).map_err(|e| CliError::Read(p.clone(), e)),
        None => std::io::read_to_string(std::io::stdin()).map_err(|e| CliError::Read("<stdin>".into(), e)),
    }
}

/// `main` of both binaries: `bin_name` is how the user called it (`aadpodid` or `kubectl aadpodid`).
pub async fn main_as(bin_name: &'static str) -> ExitCode {
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&Cli::command().bin_name(bin_name).get_matches());
    let cli = match cli {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli, &mut std::io::stdout().lock()).await {
        Ok(code) => code,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{bin_name}: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
