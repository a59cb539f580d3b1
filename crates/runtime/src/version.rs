//! Version and User-Agent, in the original's shape so server-side logs group both alike.

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `aad-pod-identity/<COMPONENT>/<version>/<commit>/<date>[ <custom>]`, as the original sends it
/// to the API server, ARM and Azure AD. Commit and date come from the build environment when set.
pub fn user_agent(component: &str, custom: Option<&str>) -> String {
    let commit = option_env!("AADPODID_GIT_COMMIT").unwrap_or("unknown");
    let date = option_env!("AADPODID_BUILD_DATE").unwrap_or("unknown");
    let base = format!("aad-pod-identity/{component}/{VERSION}/{commit}/{date}");
    match custom.filter(|c| !c.is_empty()) {
        Some(c) => format!("{base} {c}"),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_agent_is_appended_after_a_space() {
        let ua = user_agent("MIC", Some("my-cluster"));
        assert!(ua.starts_with("aad-pod-identity/MIC/"), "{ua}");
        assert!(ua.ends_with(" my-cluster"), "{ua}");
        assert!(!user_agent("NMI", Some("")).ends_with(' '));
    }
}
