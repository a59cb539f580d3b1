//! Locating the binaries under test: ours (release build) and the original's (v1.8.17).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The original's version this compares against.
pub const ORIGINAL_VERSION: &str = "v1.8.17";

/// Builds the original's `mic` and `nmi` with `hack/build-original.sh` (cached) and returns
/// their directory.
pub fn build_original(repo_root: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_root.join("hack/build-original.sh"))
        .env("AADPODID_ORIGINAL_VERSION", ORIGINAL_VERSION)
        .output()
        .context("running hack/build-original.sh")?;
    if !out.status.success() {
        bail!("hack/build-original.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for bin in ["mic", "nmi"] {
        if !dir.join(bin).is_file() {
            bail!("hack/build-original.sh printed {} but it has no `{bin}`", dir.display());
        }
    }
    Ok(dir)
}

/// Builds our `mic` and `nmi` in release mode and returns the directory holding them.
pub fn build_ours(repo_root: &Path) -> anyhow::Result<PathBuf> {
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(repo_root)
        .args(["build", "--release", "--locked", "-p", "aadpodid-mic", "-p", "aadpodid-nmi"])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release of mic and nmi failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root.join("target"), PathBuf::from);
    Ok(target.join("release"))
}
