//! Running the chart's workloads without a kubelet: a container's args and environment are
//! resolved from the installed Deployment/DaemonSet exactly as the kubelet would (field refs,
//! Secret key refs, `$(VAR)` expansion), then the binary runs as a local process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PodTemplateSpec, Secret};
use kube::Api;

/// A container's command line and environment as the kubelet would start it for one pod.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The container's `args` after `$(VAR)` expansion (the image's entrypoint is our binary).
    pub(crate) args: Vec<String>,
    /// The container's `env`, resolved.
    pub(crate) env: BTreeMap<String, String>,
    /// `spec.serviceAccountName` of the pod template.
    pub(crate) service_account: String,
}

/// Where a pod of the template would run, for `fieldRef`s.
pub(crate) struct PodPlace<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) node: &'a str,
}

/// Resolves the first container of `template` for the pod at `place`; Secrets are read with
/// `client` (the kubelet's view, not the workload's).
pub(crate) async fn resolve(
    client: &kube::Client,
    template: &PodTemplateSpec,
    place: &PodPlace<'_>,
) -> Result<Launch, String> {
    let spec = template.spec.as_ref().ok_or("the pod template has no spec")?;
    let container = spec.containers.first().ok_or("the pod template has no container")?;
    if container.command.is_some() {
        return Err(format!("container {} overrides the entrypoint; only args are supported", container.name));
    }
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    match field.field_path.as_str() {
                        "metadata.namespace" => place.namespace.to_owned(),
                        "metadata.name" => place.name.to_owned(),
                        "spec.nodeName" => place.node.to_owned(),
                        other => return Err(format!("env {}: fieldRef {other} is not supported", var.name)),
                    }
                } else if let Some(key_ref) = &from.secret_key_ref {
                    secret_value(client, place.namespace, &key_ref.name, &key_ref.key).await?
                } else {
                    return Err(format!("env {}: only fieldRef and secretKeyRef are supported", var.name));
                }
            }
            (None, None) => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    let args = container.args.iter().flatten().map(|a| expand(a, &env)).collect();
    let service_account = spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned());
    Ok(Launch { args, env, service_account })
}

async fn secret_value(client: &kube::Client, namespace: &str, name: &str, key: &str) -> Result<String, String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key}"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| format!("Secret {namespace}/{name} key {key} is not UTF-8"))
}

/// The kubelet's `$(VAR)` expansion: defined variables are replaced, `$$` escapes, anything
/// else is left as written.
pub(crate) fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = env.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Replaces the value of `--flag=...` in `args`, or appends `--flag=value`.
pub(crate) fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    let prefix = format!("{flag}=");
    let new = format!("{flag}={value}");
    match args.iter_mut().find(|a| a.starts_with(&prefix)) {
        Some(a) => *a = new,
        None => args.push(new),
    }
}

/// The value of `--flag=...` in `args`.
pub(crate) fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

/// One of our binaries running as a pod would: its own log file; SIGTERM on [`Proc::terminate`],
/// SIGKILL on drop (and, through `setpriv --pdeathsig`, when the sandbox itself dies).
#[derive(Debug)]
pub struct Proc {
    /// What it stands for, e.g. `mic aad-pod-identity-mic-0` or `nmi on aks-vm-0`.
    pub what: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `program args` (optionally inside network namespace `netns`) with exactly `env`
    /// plus `PATH`.
    pub(crate) fn spawn(
        what: String,
        netns: Option<&str>,
        program: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
        log: PathBuf,
    ) -> Result<Self, String> {
        let file = std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| format!("cloning a log handle: {e}"))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]);
        if let Some(ns) = netns {
            cmd.args(["ip", "netns", "exec", ns]);
        }
        cmd.arg(program).args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        cmd.envs(env).stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", program.display()))?;
        Ok(Self { what, log, child: Some(child) })
    }

    /// Starts `program args` with exactly `env` (no `PATH` added), its network namespace joined
    /// with `nsenter --net` when `netns` is given: unlike `ip netns exec`, the mount namespace
    /// stays the host's, so a kubelet and its container runtime see each other's mounts.
    pub(crate) fn spawn_in_netns(
        what: String,
        netns: Option<&str>,
        program: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
        log: PathBuf,
    ) -> Result<Self, String> {
        let file = std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| format!("cloning a log handle: {e}"))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]);
        if let Some(ns) = netns {
            cmd.args(["nsenter", &format!("--net=/var/run/netns/{ns}"), "--"]);
        }
        cmd.arg(program).args(args).env_clear().envs(env).stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", program.display()))?;
        Ok(Self { what, log, child: Some(child) })
    }

    /// The process id (of the binary itself: setpriv and `ip netns exec` both exec).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then waits up to `grace` for the exit (SIGKILL after that); the exit status.
    pub async fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_the_kubelet() {
        let env = BTreeMap::from([("NODE_NAME".to_owned(), "n1".to_owned())]);
        assert_eq!(expand("--node=$(NODE_NAME)", &env), "--node=n1");
        assert_eq!(expand("$(UNSET) $$(NODE_NAME) $", &env), "$(UNSET) $(NODE_NAME) $");
        assert_eq!(expand("a$(NODE_NAME)b$(NODE_NAME", &env), "an1b$(NODE_NAME");
    }

    #[test]
    fn flags_are_replaced_or_appended() {
        let mut args = vec!["--a=1".to_owned(), "--b".to_owned()];
        set_flag(&mut args, "--a", "2");
        set_flag(&mut args, "--c", "3");
        assert_eq!(args, ["--a=2", "--b", "--c=3"]);
        assert_eq!(flag_value(&args, "--c"), Some("3"));
        assert_eq!(flag_value(&args, "--b"), None);
    }
}
