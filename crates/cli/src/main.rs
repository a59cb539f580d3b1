//! `aadpodid`: see the library docs.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    aadpodid_cli::main_as("aadpodid").await
}
