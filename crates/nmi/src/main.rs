//! The `nmi` binary: parse the original's flags (Go spellings accepted) and run.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = aadpodid_nmi::args::Args::parse_from(aadpodid_runtime::goflags::normalize_args(std::env::args_os()));
    match aadpodid_nmi::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let message = format!("{err:#}");
            tracing::error!(error = %message, "NMI failed");
            eprintln!("nmi: {message}");
            aadpodid_runtime::write_termination_log(&message);
            ExitCode::FAILURE
        }
    }
}
