//! Finding the control-plane binaries, building them with `hack/build-tools.sh` when absent.
//! Never downloads anything itself: the script builds from the Go module proxy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// The binaries a control plane and its users need, all from one tools directory.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The directory holding them.
    pub bin: PathBuf,
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
}

/// The repository root, found from this crate's manifest directory (`crates/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Tools {
    /// `AADPODID_TOOLS_BIN` if set, else the stable symlink; runs `hack/build-tools.sh` when
    /// the binaries are not there (a cold build takes minutes, a warm one milliseconds).
    pub fn locate() -> Result<Self, Error> {
        if let Some(dir) = std::env::var_os("AADPODID_TOOLS_BIN") {
            return Self::in_dir(PathBuf::from(dir));
        }
        let stable = tools_dir().join("bin");
        if let Ok(tools) = Self::in_dir(stable) {
            return Ok(tools);
        }
        Self::in_dir(build()?)
    }

    fn in_dir(bin: PathBuf) -> Result<Self, Error> {
        let find = |binary: &'static str| {
            let path = bin.join(binary);
            if path.is_file() { Ok(path) } else { Err(Error::MissingBinary { binary, dir: bin.clone() }) }
        };
        Ok(Self {
            kube_apiserver: find("kube-apiserver")?,
            etcd: find("etcd")?,
            kubectl: find("kubectl")?,
            helm: find("helm")?,
            bin: bin.clone(),
        })
    }
}

fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AADPODID_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/aadpodid/tools")
}

/// Runs the build script; its last stdout line is the bin directory.
fn build() -> Result<PathBuf, Error> {
    let script = repo_root().join("hack/build-tools.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("running {}", script.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(Error::BuildTools { status: out.status, stderr: tail });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    Ok(PathBuf::from(last))
}
