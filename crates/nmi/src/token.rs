//! The token JSON NMI answers with: IMDS's shape, every value a string, plus
//! `client_id` as real IMDS sends it (a deliberate difference).
//!
//! The type itself is `aadpodid_azure::token::Token` (its `Debug` never prints the access token);
//! this module adds what only NMI reads from it.

pub use aadpodid_azure::token::Token as TokenJson;

/// `expires_on` as Unix seconds; 0 (already expired) when unreadable, so it is never cached.
pub fn expires_on_secs(token: &TokenJson) -> u64 {
    token.expires_on_unix().and_then(|s| u64::try_from(s).ok()).unwrap_or(0)
}

/// The `oid` claim of a JWT access token: the identity's principal (object) ID. Read
/// without verification; only used to match `object_id` among the pod's own identities.
pub fn object_id(token: &TokenJson) -> Option<String> {
    use base64::Engine as _;
    let payload = token.access_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("oid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn debug_never_shows_the_access_token() {
        let t = TokenJson { access_token: "eyJsecret".into(), ..Default::default() };
        assert!(!format!("{t:?}").contains("eyJsecret"));
    }

    #[test]
    fn all_fields_are_strings_and_client_id_is_optional() {
        let t = TokenJson { expires_on: "1700000000".into(), ..Default::default() };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["expires_on"], "1700000000");
        assert!(v.get("client_id").is_none());
        assert_eq!(expires_on_secs(&t), 1_700_000_000);
    }

    #[test]
    fn object_id_comes_from_the_oid_claim() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!("{}.{}.sig", b64(r#"{"alg":"none"}"#), b64(r#"{"oid":"o-1"}"#));
        let t = TokenJson { access_token: jwt, ..Default::default() };
        assert_eq!(object_id(&t).as_deref(), Some("o-1"));
        assert_eq!(object_id(&TokenJson::default()), None);
    }
}
