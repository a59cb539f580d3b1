//! `sandbox`: the getting-started walkthrough end to end on real parts (see the library docs).
//! `bash hack/sandbox.sh` builds MIC and NMI, then runs this; `--stay-up` keeps it running.

use std::time::Instant;

use aadpodid_sandbox::kubelet::KubeletSandbox;
use aadpodid_sandbox::{Config, Sandbox};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "sandbox",
    about = "The local sandbox: az identity create, helm install, kubectl apply, a pod's SDK token, on a real apiserver, the Azure simulator and network-namespace nodes"
)]
struct Args {
    /// After the steps, keep everything running until Ctrl-C or SIGTERM, then clean up.
    #[arg(long)]
    stay_up: bool,
    /// Extra `--set key=value` for helm install; repeatable.
    #[arg(long = "set")]
    helm_set: Vec<String>,
    /// Run MIC and NMI from the images (`hack/images.sh --node`) on two real kubelet nodes
    /// (`hack/build-node.sh`) instead of as host processes.
    #[arg(long)]
    kubelet: bool,
}

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.kubelet {
        return on_kubelet_nodes(args.stay_up).await;
    }
    let started = Instant::now();
    let mut cfg = match Config::locate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("\nsandbox: FAILED at step: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    cfg.helm_set = args.helm_set;
    let mut sandbox = tokio::select! {
        r = Sandbox::start(cfg) => match r {
            Ok(s) => s,
            Err(e) => {
                eprintln!("\nsandbox: FAILED at step: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        () = interrupted() => {
            eprintln!("\nsandbox: interrupted while starting");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = tokio::select! {
        r = sandbox.walkthrough() => r.map_err(|e| (e.to_string(), sandbox.log_tails(30))),
        () = interrupted() => Err(("interrupted".to_owned(), String::new())),
    };
    let code = match outcome {
        Ok(()) => {
            println!("\nsandbox: every step worked ({:.1} s).", started.elapsed().as_secs_f64());
            if args.stay_up {
                println!("{}", sandbox.stay_up_help());
                interrupted().await;
                println!("\nsandbox: stopping");
            }
            std::process::ExitCode::SUCCESS
        }
        Err((error, logs)) => {
            eprintln!("\nsandbox: FAILED at step: {error}");
            if !logs.is_empty() {
                eprintln!("\n{logs}");
            }
            std::process::ExitCode::FAILURE
        }
    };
    for (what, status) in sandbox.shutdown().await {
        let how = status.map_or_else(|| "did not stop".to_owned(), |s| s.to_string());
        println!("sandbox: {what} stopped ({how})");
    }
    println!("sandbox: cleaned up (network namespaces, simulator and control plane removed).");
    code
}

/// `--kubelet`: the walkthrough on real nodes.
async fn on_kubelet_nodes(stay_up: bool) -> std::process::ExitCode {
    let started = Instant::now();
    let mut sandbox = tokio::select! {
        r = KubeletSandbox::start() => match r {
            Ok(s) => s,
            Err(e) => {
                eprintln!("\nsandbox: FAILED at step: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        () = interrupted() => return std::process::ExitCode::FAILURE,
    };
    let outcome = tokio::select! {
        r = sandbox.walkthrough() => r.map_err(|e| e.to_string()),
        () = interrupted() => Err("interrupted".to_owned()),
    };
    match outcome {
        Ok(()) => {
            println!("\nsandbox: every step worked on kubelet nodes ({:.1} s).", started.elapsed().as_secs_f64());
            if stay_up {
                println!("{}", sandbox.stay_up_help());
                interrupted().await;
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\nsandbox: FAILED at step: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
