//! The `nat` rules that send pods' IMDS traffic to NMI: chain `aad-metadata`
//! with exactly one DNAT rule and a RETURN, jumped to from PREROUTING position 1; checked and
//! repaired every interval, never duplicated, removed on shutdown. Shells out to `iptables`
//! like the original (and kube-proxy).
//!
//! Only PREROUTING is hooked: host-network traffic, NMI's own IMDS calls included, is never
//! redirected. The rule text is pure and tested; the commands are the thin effect around it.

use std::net::Ipv4Addr;

use tokio::process::Command;

/// The custom chain, as the original names it.
pub const CHAIN: &str = "aad-metadata";
const TABLE: &str = "nat";

/// Where the DNAT goes and what it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub metadata_ip: Ipv4Addr,
    pub metadata_port: u16,
    /// The NMI listen address; `0.0.0.0` maps to `127.0.0.1`.
    pub target_ip: Ipv4Addr,
    pub target_port: u16,
}

/// Why an iptables command failed; fatal for NMI, as for the original.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("failed to run iptables {args}")]
    Spawn { args: String, source: std::io::Error },
    #[error("iptables {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
}

impl Rules {
    pub fn new(metadata_ip: Ipv4Addr, metadata_port: u16, listen: Ipv4Addr, nmi_port: u16) -> Self {
        let target_ip = if listen.is_unspecified() { Ipv4Addr::LOCALHOST } else { listen };
        Self { metadata_ip, metadata_port, target_ip, target_port: nmi_port }
    }

    /// `iptables -t nat -S aad-metadata` as it must read, line by line.
    pub fn expected_listing(&self) -> Vec<String> {
        vec![
            format!("-N {CHAIN}"),
            format!("-A {CHAIN} {}", self.dnat_spec().join(" ")),
            format!("-A {CHAIN} -j RETURN"),
        ]
    }

    /// The DNAT rule in iptables' canonical `-S` spelling (so it can be compared and added).
    fn dnat_spec(&self) -> Vec<String> {
        [
            "!",
            "-s",
            "127.0.0.1/32",
            "-d",
            &format!("{}/32", self.metadata_ip),
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &self.metadata_port.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{}:{}", self.target_ip, self.target_port),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// True when the listed chain is exactly as expected, walked in order as the original.
    pub fn chain_is_intact(&self, listing: &str) -> bool {
        let got: Vec<&str> = listing.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let want = self.expected_listing();
        got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g == w)
    }

    /// One reconcile pass: create the chain if missing, flush and refill it if altered, and
    /// ensure the PREROUTING jump at position 1. Returns whether anything was changed.
    pub async fn ensure(&self, ipt: &Iptables) -> Result<bool, IptablesError> {
        let mut changed = false;
        let listing = match ipt.run(&["-t", TABLE, "-S", CHAIN]).await {
            Ok(listing) => listing,
            Err(_) => {
                ipt.run(&["-t", TABLE, "-N", CHAIN]).await?;
                changed = true;
                String::new()
            }
        };
        if !self.chain_is_intact(&listing) {
            tracing::info!(chain = CHAIN, "Installing NMI's iptables rules");
            ipt.run(&["-t", TABLE, "-F", CHAIN]).await?;
            let dnat = self.dnat_spec();
            let mut args: Vec<&str> = vec!["-t", TABLE, "-A", CHAIN];
            args.extend(dnat.iter().map(String::as_str));
            ipt.run(&args).await?;
            ipt.run(&["-t", TABLE, "-A", CHAIN, "-j", "RETURN"]).await?;
            changed = true;
        }
        if ipt.run(&["-t", TABLE, "-C", "PREROUTING", "-j", CHAIN]).await.is_err() {
            ipt.run(&["-t", TABLE, "-I", "PREROUTING", "1", "-j", CHAIN]).await?;
            changed = true;
        }
        Ok(changed)
    }
}

/// Removes the jump and the chain (the original's `handleTermination`). Each step runs even if
/// an earlier one failed; the first error is returned.
pub async fn cleanup(ipt: &Iptables) -> Result<(), IptablesError> {
    let mut first_error = None;
    while ipt.run(&["-t", TABLE, "-C", "PREROUTING", "-j", CHAIN]).await.is_ok() {
        if let Err(e) = ipt.run(&["-t", TABLE, "-D", "PREROUTING", "-j", CHAIN]).await {
            first_error.get_or_insert(e);
            break;
        }
    }
    if ipt.run(&["-t", TABLE, "-S", CHAIN]).await.is_ok() {
        for args in [["-t", TABLE, "-F", CHAIN], ["-t", TABLE, "-X", CHAIN]] {
            if let Err(e) = ipt.run(&args).await {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// How to invoke `iptables`: plainly (NMI runs in the node's namespace), or through a prefix
/// such as `ip netns exec <ns>` (tests that drive a private namespace from outside).
#[derive(Clone, Debug)]
pub struct Iptables {
    program: Vec<String>,
}

impl Default for Iptables {
    fn default() -> Self {
        Self { program: vec!["iptables".to_owned()] }
    }
}

impl Iptables {
    /// `ip netns exec <namespace> iptables`.
    pub fn in_netns(namespace: &str) -> Self {
        Self { program: ["ip", "netns", "exec", namespace, "iptables"].map(str::to_owned).to_vec() }
    }

    /// Runs `iptables -w <args>` and returns its stdout.
    async fn run(&self, args: &[&str]) -> Result<String, IptablesError> {
        let joined = args.join(" ");
        let (program, prefix) = self.program.split_first().map_or(("iptables", &[][..]), |(p, r)| (p.as_str(), r));
        let out = Command::new(program)
            .args(prefix)
            .arg("-w")
            .args(args)
            .output()
            .await
            .map_err(|source| IptablesError::Spawn { args: joined.clone(), source })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(IptablesError::Failed { args: joined, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
        }
    }
}

/// `--enable-conntrack-deletion`: forget tracked TCP connections to IMDS so that existing
/// pod connections are re-evaluated against the new DNAT rule. "Nothing to delete" is fine.
pub async fn delete_conntrack(metadata_ip: Ipv4Addr, metadata_port: u16) -> Result<(), IptablesError> {
    let (ip, port) = (metadata_ip.to_string(), metadata_port.to_string());
    let args = ["-D", "-p", "tcp", "--orig-dst", ip.as_str(), "--orig-port-dst", port.as_str()];
    let joined = format!("conntrack {}", args.join(" "));
    let out = Command::new("conntrack")
        .args(args)
        .output()
        .await
        .map_err(|source| IptablesError::Spawn { args: joined.clone(), source })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("0 flow entries") {
        Ok(())
    } else {
        Err(IptablesError::Failed { args: joined, stderr: stderr.trim().to_owned() })
    }
}

/// The kubenet guard: a read error is fatal; `--network-plugin=kubenet` in the
/// kubelet config is fatal with the original's text.
pub fn kubenet_guard(kubelet_config: &str) -> Result<(), String> {
    if kubelet_config.contains("--network-plugin=kubenet") {
        Err("AAD Pod Identity is not supported for Kubenet. Review https://azure.github.io/aad-pod-identity/docs/configure/aad_pod_identity_on_kubenet/ for more details.".to_owned())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(Ipv4Addr::new(169, 254, 169, 254), 80, Ipv4Addr::UNSPECIFIED, 2579)
    }

    #[test]
    fn expected_chain_is_the_originals_text() {
        assert_eq!(
            rules().expected_listing(),
            [
                "-N aad-metadata",
                "-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:2579",
                "-A aad-metadata -j RETURN",
            ]
        );
    }

    #[test]
    fn listen_address_other_than_any_is_the_target() {
        let r = Rules::new(Ipv4Addr::new(169, 254, 169, 254), 80, Ipv4Addr::new(10, 0, 0, 4), 2580);
        assert!(r.expected_listing()[1].ends_with("--to-destination 10.0.0.4:2580"));
    }

    #[test]
    fn intact_chain_is_recognised_and_any_change_is_not() {
        let r = rules();
        let good = r.expected_listing().join("\n") + "\n";
        assert!(r.chain_is_intact(&good));
        let duplicated = format!("{good}{}\n", r.expected_listing()[1]);
        assert!(!r.chain_is_intact(&duplicated));
        let reordered = [&r.expected_listing()[0], &r.expected_listing()[2], &r.expected_listing()[1]]
            .map(String::as_str)
            .join("\n");
        assert!(!r.chain_is_intact(&reordered));
        assert!(!r.chain_is_intact("-N aad-metadata\n"));
        assert!(!r.chain_is_intact(&good.replace("2579", "2580")));
    }

    #[test]
    fn kubenet_is_refused_with_the_original_text() {
        assert!(
            kubenet_guard("KUBELET_FLAGS=--network-plugin=kubenet --max-pods=30")
                .unwrap_err()
                .contains("not supported for Kubenet")
        );
        assert!(kubenet_guard("KUBELET_FLAGS=--network-plugin=cni").is_ok());
        assert!(kubenet_guard("").is_ok());
    }
}
