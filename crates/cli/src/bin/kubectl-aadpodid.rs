//! `kubectl-aadpodid`: the same program as a kubectl plugin (`kubectl aadpodid …`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    aadpodid_cli::main_as("kubectl aadpodid").await
}
