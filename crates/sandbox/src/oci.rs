//! OCI image archives as `hack/images.sh` writes them (`target/images/<name>.tar`): their
//! reference and runtime config, their layers unpacked into a root filesystem as a container
//! runtime would, and a derived archive with one more file (the sandbox's cloud CA).
//!
//! Uses `tar` for the archives and layers, and `umoci`/`skopeo` (installed by `hack/images.sh`)
//! only for deriving.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Where `hack/images.sh` writes the archives: `AADPODID_IMAGES_DIR`, else `target/images`.
pub fn images_dir() -> PathBuf {
    std::env::var_os("AADPODID_IMAGES_DIR")
        .map_or_else(|| aadpodid_testkit::repo_root().join("target/images"), PathBuf::from)
}

/// The archive `<name>.tar` in [`images_dir`], or an error saying how to build it.
pub fn archive(name: &str) -> Result<PathBuf, String> {
    let path = images_dir().join(format!("{name}.tar"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing: run `bash hack/images.sh --node` (as root) first", path.display()))
    }
}

/// What an image's config says about running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Env`, `NAME=value` each.
    pub env: Vec<String>,
    /// `User`, e.g. `65532:65532` or `10001`.
    pub user: String,
}

/// One image archive, opened: the layout is extracted into a temporary directory.
pub struct Archive {
    /// `org.opencontainers.image.ref.name` of its only manifest, e.g. `localhost/aadpodid/nmi:v1.8.17`.
    pub reference: String,
    /// The runtime part of its config.
    pub config: RunConfig,
    /// Layer blobs (gzip tars), bottom first.
    layers: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("running {what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
}

fn blob(dir: &Path, digest: &str) -> Result<PathBuf, String> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| format!("digest {digest} is not sha256"))?;
    Ok(dir.join("blobs/sha256").join(hex))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect()).unwrap_or_default()
}

impl Archive {
    /// Opens `path`: one manifest, its config and its layers.
    pub fn open(path: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("aadpodid-oci-").tempdir().map_err(|e| e.to_string())?;
        run(Command::new("tar").arg("-xf").arg(path).arg("-C").arg(dir.path()), "tar -x (image archive)")?;
        let index = read_json(&dir.path().join("index.json"))?;
        let entry = match index["manifests"].as_array().map(Vec::as_slice) {
            Some([one]) => one.clone(),
            _ => return Err(format!("{}: expected exactly one manifest", path.display())),
        };
        let reference =
            entry["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap_or_default().to_owned();
        let manifest = read_json(&blob(dir.path(), entry["digest"].as_str().unwrap_or_default())?)?;
        let config = read_json(&blob(dir.path(), manifest["config"]["digest"].as_str().unwrap_or_default())?)?;
        let layers = manifest["layers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|l| blob(dir.path(), l["digest"].as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        let c = &config["config"];
        let config = RunConfig {
            entrypoint: strings(&c["Entrypoint"]),
            env: strings(&c["Env"]),
            user: c["User"].as_str().unwrap_or_default().to_owned(),
        };
        Ok(Self { reference, config, layers, _dir: dir })
    }

    /// The contents of `path` (relative, e.g. `etc/passwd`) as the top-most layer holding it has it.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        for layer in self.layers.iter().rev() {
            for member in [format!("./{path}"), path.to_owned()] {
                let out = Command::new("tar").arg("-xzOf").arg(layer).arg(&member).stdin(Stdio::null()).output();
                if let Ok(out) = out
                    && out.status.success()
                {
                    return Ok(out.stdout);
                }
            }
        }
        Err(format!("{path} is in no layer of the image"))
    }

    /// Unpacks every layer, bottom first, into `rootfs` (owners and modes kept).
    pub fn unpack(&self, rootfs: &Path) -> Result<(), String> {
        std::fs::create_dir_all(rootfs).map_err(|e| format!("creating {}: {e}", rootfs.display()))?;
        for layer in &self.layers {
            run(
                Command::new("tar")
                    .args(["-xzpf"])
                    .arg(layer)
                    .args(["--numeric-owner", "--same-owner", "-C"])
                    .arg(rootfs),
                "tar -x (layer)",
            )?;
        }
        Ok(())
    }
}

/// The uid and gid the image's `User` names, resolved in its unpacked `rootfs` as a runtime
/// would (`uid[:gid]`, or a name in `/etc/passwd`; a bare uid takes its passwd entry's gid).
pub fn user_ids(user: &str, rootfs: &Path) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() > 3 && (f[0] == name || f[2] == name))
    };
    let (u, g) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    let entry = lookup(u);
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry.as_ref().and_then(|f| f[2].parse().ok()).ok_or_else(|| format!("no user {u} in the image"))?,
    };
    let gid = match g {
        Some(g) => g.parse::<u32>().map_err(|_| format!("group {g} is not numeric"))?,
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    Ok((uid, gid))
}

/// Writes `out`: `archive` plus one layer holding `contents` at `path_in_image` (mode 0644),
/// referenced as `reference`.
pub fn derive_with_file(
    archive: &Path,
    out: &Path,
    reference: &str,
    path_in_image: &str,
    contents: &[u8],
) -> Result<(), String> {
    let dir = tempfile::Builder::new().prefix("aadpodid-derive-").tempdir().map_err(|e| e.to_string())?;
    let layout = dir.path().join("oci");
    let tree = dir.path().join("tree");
    let file = tree.join(path_in_image.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().unwrap_or(&tree)).map_err(|e| e.to_string())?;
    std::fs::write(&file, contents).map_err(|e| format!("writing {}: {e}", file.display()))?;
    let layer = dir.path().join("layer.tar");
    run(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "--mode=u=rwX,go=rX", "-cf"])
            .arg(&layer)
            .arg("-C")
            .arg(&tree)
            .arg("."),
        "tar -c (layer)",
    )?;
    let oci = |tag: &str| format!("oci:{}:{tag}", layout.display());
    run(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(oci("base")),
        "skopeo copy (unpack archive)",
    )?;
    run(
        Command::new("umoci")
            .args(["raw", "add-layer", "--tag", "derived", "--image"])
            .arg(format!("{}:base", layout.display()))
            .arg(&layer),
        "umoci raw add-layer",
    )?;
    let _ = std::fs::remove_file(out);
    run(
        Command::new("skopeo")
            .args(["copy", "--quiet", &oci("derived")])
            .arg(format!("oci-archive:{}:{reference}", out.display())),
        "skopeo copy (write archive)",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_as_a_runtime_would() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nnonroot:x:10001:10002::/:/bin/sh\n")
            .unwrap();
        assert_eq!(user_ids("65532:65532", dir.path()).unwrap(), (65532, 65532));
        assert_eq!(user_ids("10001", dir.path()).unwrap(), (10001, 10002));
        assert_eq!(user_ids("nonroot", dir.path()).unwrap(), (10001, 10002));
        assert_eq!(user_ids("", dir.path()).unwrap(), (0, 0));
        assert!(user_ids("nobody", dir.path()).is_err());
    }
}
