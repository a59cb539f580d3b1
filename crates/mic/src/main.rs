//! The `mic` binary: parse the original's flags, set up logging, run. All wiring is in `run`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = aadpodid_mic::args::Args::parse_from(aadpodid_runtime::goflags::normalize_args(std::env::args_os()));
    let format = match args.log_format.parse::<aadpodid_runtime::LogFormat>() {
        Ok(f) => f,
        Err(e) => fail(&e.to_string()),
    };
    if let Err(e) = aadpodid_runtime::init_tracing(format, args.klog.v) {
        fail(&e.to_string());
    }
    if let Err(e) = aadpodid_mic::run(args).await {
        tracing::error!(error = format!("{e:#}"), "MIC stopped");
        fail(&format!("{e:#}"));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("mic: {message}");
    aadpodid_runtime::write_termination_log(message);
    std::process::exit(1)
}
