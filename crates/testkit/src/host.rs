//! Facts about the host a test or the sandbox runs on.

use std::net::{Ipv4Addr, TcpListener};

/// A loopback TCP port free right now (the kernel picks it; the listener is closed again, so
/// a racing process could take it before the caller binds it).
pub fn free_port() -> std::io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr().map(|a| a.port())
}

/// Whether this process runs as root (real UID 0, read from `/proc/self/status`).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next()) == Some("0")
}

/// For tests that need root (network namespaces, iptables): they fail, never skip, elsewhere.
pub fn require_root() {
    assert!(is_root(), "this test needs root (network namespaces, iptables) and is never skipped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port was free");
    }

    #[test]
    fn root_is_read_from_the_process_status() {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        assert_eq!(is_root(), String::from_utf8_lossy(&uid.stdout).trim() == "0");
    }
}
