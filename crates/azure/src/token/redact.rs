//! What of an Azure AD or IMDS error may be shown: error texts travel to pods and logs, and Azure
//! AD's bodies quote full client, tenant and object IDs (`Application with identifier '<id>' was
//! not found in the directory '<tenant>'`). Every GUID is redacted; a JSON error body is reduced
//! to its code and first description line, plus the request's trace and correlation IDs, which
//! identify a request and not an identity.

use aadpodid_api::view::redact_client_id;
use serde_json::Value;

/// Longest summary kept, so a misbehaving endpoint cannot flood logs or responses.
const MAX_SUMMARY: usize = 1024;
const GUID_LEN: usize = 36;

/// `text` with every GUID (8-4-4-4-12 hex digits) replaced by its redacted form, wherever it
/// stands (also inside a word, as in a URL-encoded `client_id%3D<id>`).
pub fn redact_ids(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut copied, mut i) = (0, 0);
    while i + GUID_LEN <= bytes.len() {
        if is_guid(&bytes[i..i + GUID_LEN]) {
            out.push_str(&text[copied..i]);
            out.push_str(&redact_client_id(&text[i..i + GUID_LEN]));
            i += GUID_LEN;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn is_guid(candidate: &[u8]) -> bool {
    candidate.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    })
}

/// A refusal body as it may be shown: see the module docs.
pub(crate) fn summarize_error_body(body: &str) -> String {
    let summary = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(fields)) if fields.contains_key("error") => {
            let text = |key: &str| fields.get(key).and_then(Value::as_str).unwrap_or_default();
            let error = match fields.get("error") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let description = text("error_description").lines().next().unwrap_or_default().trim();
            let mut summary =
                redact_ids(&if description.is_empty() { error } else { format!("{error}: {description}") });
            let (trace, correlation) = (text("trace_id"), text("correlation_id"));
            if !trace.is_empty() || !correlation.is_empty() {
                summary.push_str(&format!(" (trace ID {trace}, correlation ID {correlation})"));
            }
            summary
        }
        Ok(_) | Err(_) => redact_ids(body.trim()),
    };
    truncate(summary)
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_SUMMARY {
        let mut cut = MAX_SUMMARY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "5b0c4d2e-7f1a-4c3b-9d8e-0a1b2c3d4e5f";
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    #[test]
    fn every_guid_is_redacted_and_the_rest_kept() {
        let text = format!("app '{CLIENT}' in directory '{TENANT}', id=x{CLIENT}, {}", &CLIENT[..35]);
        let shown = redact_ids(&text);
        assert!(!shown.contains(CLIENT) && !shown.contains(TENANT), "{shown}");
        assert!(shown.contains("app '5b0c##### REDACTED #####4e5f' in directory '72f9"), "{shown}");
        assert!(shown.contains("id=x5b0c##### REDACTED #####4e5f,"), "also inside a word: {shown}");
        assert!(shown.ends_with(&CLIENT[..35]), "{shown}");
        assert_eq!(redact_ids("héllo ünïcode"), "héllo ünïcode");
    }

    #[test]
    fn an_azure_ad_error_keeps_its_code_and_request_ids_but_no_identity_ids() {
        let body = serde_json::json!({
            "error": "unauthorized_client",
            "error_description": format!("AADSTS700016: Application with identifier '{CLIENT}' was not found in the directory '{TENANT}'.\r\nTrace ID: 0b8c0d1e-aaaa-bbbb-cccc-000000000001\r\nCorrelation ID: x\r\nTimestamp: t"),
            "error_codes": [700016],
            "trace_id": "0b8c0d1e-aaaa-bbbb-cccc-000000000001",
            "correlation_id": "0b8c0d1e-aaaa-bbbb-cccc-000000000002",
        });
        let shown = summarize_error_body(&body.to_string());
        assert!(shown.starts_with("unauthorized_client: AADSTS700016: Application with identifier '5b0c#"), "{shown}");
        assert!(!shown.contains(CLIENT) && !shown.contains(TENANT), "{shown}");
        assert!(!shown.contains("Timestamp"), "{shown}");
        assert!(shown.ends_with(
            "(trace ID 0b8c0d1e-aaaa-bbbb-cccc-000000000001, correlation ID 0b8c0d1e-aaaa-bbbb-cccc-000000000002)"
        ));
    }

    #[test]
    fn imds_errors_and_plain_bodies_are_kept_short() {
        let imds = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        assert_eq!(summarize_error_body(imds), "invalid_request: Identity not found");
        assert_eq!(summarize_error_body(" Bad Gateway\n"), "Bad Gateway");
        let long = summarize_error_body(&"x".repeat(5000));
        assert!(long.len() <= MAX_SUMMARY + '…'.len_utf8());
    }
}
