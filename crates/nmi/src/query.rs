//! What a request asks for, read from its path, headers and query: which route it takes
//! (the original's gorilla/mux rules, in order), whether the `Metadata` header is right, and
//! which resource and identity a token request names.
//!
//! Pure: no I/O, no clock. Never decides which identity a pod gets (that is `select`).

use std::sync::LazyLock;

use http::HeaderMap;
use regex::Regex;

use crate::errors::NmiError;

/// Which handler serves a path, in the original's route order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The decoded path is not canonical (`//`, `/./`, `/../`): 301 to the cleaned path, as gorilla/mux does.
    Redirect(String),
    /// `/{(?i)metadata}/identity/oauth2/token…`: the token handler.
    Token,
    /// Some other spelling of `identity…oauth2…token` (any case, any segments between), or a
    /// path that cannot be decoded to one unambiguous path: 400 `Invalid request`.
    InvalidRequest,
    /// `/host/token…`: the legacy host endpoint.
    HostToken,
    /// `/metadata/instance…` in any case while `--block-instance-metadata` is set: 403.
    InstanceBlocked,
    /// Anything else goes to the real IMDS, with exactly the decoded path it was routed on.
    Proxy,
}

static INVALID_TOKEN_PATH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)/metadata/identity(.*?)oauth2(.*?)token").expect("constant pattern compiles"));

/// Classifies a request path as it arrives (still percent-encoded). `query` is only used to
/// rebuild a redirect target.
///
/// Routing is on the decoded path, as the original's router (Go's `URL.Path`): an escaped
/// spelling of the token path is the token path. The proxy forwards the very path routed on
/// ([`decode_path`]), so IMDS can never read a request differently from NMI.
pub fn route(raw_path: &str, query: Option<&str>, block_instance_metadata: bool) -> Route {
    match decode_path(raw_path) {
        Some(path) => route_decoded(&path, query, block_instance_metadata),
        None => Route::InvalidRequest,
    }
}

/// [`route`] for a path already decoded by [`decode_path`].
pub fn route_decoded(path: &str, query: Option<&str>, block_instance_metadata: bool) -> Route {
    let cleaned = clean_path(path);
    if cleaned != path {
        let target = match query {
            Some(q) if !q.is_empty() => format!("{cleaned}?{q}"),
            _ => cleaned,
        };
        return Route::Redirect(target);
    }
    if path.split('/').any(|segment| segment.ends_with('.')) {
        // Windows servers drop a segment's trailing dots: `metadata.` would be `metadata` there.
        return Route::InvalidRequest;
    }
    if first_segment_prefix(path, "/identity/oauth2/token") {
        Route::Token
    } else if INVALID_TOKEN_PATH.is_match(path) {
        Route::InvalidRequest
    } else if path.starts_with("/host/token") {
        Route::HostToken
    } else if block_instance_metadata && ascii_prefix_ignoring_case(path, "/metadata/instance") {
        Route::InstanceBlocked
    } else {
        Route::Proxy
    }
}

/// The path with its escapes decoded once, if it is one a server could read in only one way:
/// it starts with `/`, every `%` starts a two-digit hex escape, and the decoded path holds only
/// letters, digits, `-`, `.`, `_`, `~` and `/`. Everything else is refused: backslashes and
/// `;` (read as separators or parameters by some servers), a `%` left after decoding (a double
/// escape), NUL and other controls, non-ASCII and invalid UTF-8 (overlong forms), `%u` escapes.
/// IMDS paths never need any of these. Such a path decodes to its own canonical encoding,
/// which is why the proxy can forward it as it is.
pub fn decode_path(raw: &str) -> Option<String> {
    if !raw.starts_with('/') {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let decoded = if b == b'%' {
            let escape = (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex));
            let (Some(high), Some(low)) = escape else { return None };
            i += 3;
            high << 4 | low
        } else {
            i += 1;
            b
        };
        if !is_plain_path_byte(decoded) {
            return None;
        }
        out.push(char::from(decoded));
    }
    Some(out)
}

/// Unreserved characters (RFC 3986) and `/`: the only bytes a decoded path may hold.
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/')
}

/// `/{(?i)metadata}<rest>` as a prefix: only the first segment ignores case.
fn first_segment_prefix(path: &str, rest: &str) -> bool {
    let Some(tail) = path.strip_prefix('/') else { return false };
    tail.get(..8).is_some_and(|seg| seg.eq_ignore_ascii_case("metadata"))
        && tail.get(8..).is_some_and(|after| after.starts_with(rest))
}

fn ascii_prefix_ignoring_case(path: &str, prefix: &str) -> bool {
    path.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Go's `path.Clean` as gorilla/mux applies it: keeps a trailing slash, drops `//`, `.`, `..`.
pub fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if path.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

/// Headers saying the request was relayed by a proxy. IMDS refuses `X-Forwarded-For` (an
/// application relaying requests for someone else must not reach it); `Forwarded` says the same.
const FORWARDING_HEADERS: [&str; 2] = ["x-forwarded-for", "forwarded"];

/// IMDS's proxy rule: a request carrying a forwarding header is refused, whatever its value.
pub fn check_not_forwarded(headers: &HeaderMap) -> Result<(), NmiError> {
    if FORWARDING_HEADERS.iter().any(|name| headers.contains_key(*name)) { Err(NmiError::Forwarded) } else { Ok(()) }
}

/// The `Metadata: true` rule: value exactly `true` (case-sensitive), header name any case.
pub fn check_metadata_header(headers: &HeaderMap, required: bool) -> Result<(), NmiError> {
    if !required || headers.get("metadata").is_some_and(|v| v.as_bytes() == b"true") {
        Ok(())
    } else {
        Err(NmiError::MetadataHeaderRequired)
    }
}

/// Which identity a request names. At most one is expected; the original accepts
/// `client_id` and a resource ID together and takes an identity matching either.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityRequest {
    pub client_id: Option<String>,
    /// Ours only (the original ignores it): the identity's principal (object) ID.
    pub object_id: Option<String>,
    /// `msi_res_id`, or `mi_res_id` when that is absent.
    pub resource_id: Option<String>,
}

impl IdentityRequest {
    /// No selector at all: the pod's (first) identity is used.
    pub fn is_unspecified(&self) -> bool {
        self.client_id.is_none() && self.object_id.is_none() && self.resource_id.is_none()
    }

    /// The selector for logs and error texts: client IDs redacted as the original does.
    pub fn describe(&self) -> String {
        if let Some(c) = &self.client_id {
            format!("clientID {}", aadpodid_api::view::redact_client_id(c))
        } else if let Some(o) = &self.object_id {
            format!("objectID {o}")
        } else if let Some(r) = &self.resource_id {
            format!("resourceID {r}")
        } else {
            "clientID ".to_owned()
        }
    }
}

/// A parsed token request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenQuery {
    pub resource: String,
    pub identity: IdentityRequest,
}

/// Reads the query of a token request. `api-version` is ignored, as by the original.
pub fn parse_token_query(query: Option<&str>) -> Result<TokenQuery, NmiError> {
    let pairs = query.map(|q| url_decode_pairs(q.as_bytes())).unwrap_or_default();
    let first = |name: &str| -> Option<String> {
        pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty())
    };
    let resource = first("resource").ok_or(NmiError::ResourceEmpty)?;
    let identity = IdentityRequest {
        client_id: first("client_id"),
        object_id: first("object_id"),
        resource_id: first("msi_res_id").or_else(|| first("mi_res_id")),
    };
    Ok(TokenQuery { resource, identity })
}

fn url_decode_pairs(q: &[u8]) -> Vec<(String, String)> {
    q.split(|b| *b == b'&' || *b == b';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |b| *b == b'=');
            let k = it.next().unwrap_or_default();
            let v = it.next().unwrap_or_default();
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding; invalid escapes are kept as they are.
fn percent_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Headers of the legacy host endpoint: `podns` and `podname`, both required.
pub fn host_pod_headers(headers: &HeaderMap) -> Result<(String, String), NmiError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    match (get("podns"), get("podname")) {
        (Some(ns), Some(name)) => Ok((ns.to_owned(), name.to_owned())),
        _ => Err(NmiError::HostHeadersMissing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::token("/metadata/identity/oauth2/token", false, Route::Token)]
    #[case::token_slash("/metadata/identity/oauth2/token/", false, Route::Token)]
    #[case::first_segment_any_case("/MetaData/identity/oauth2/token", false, Route::Token)]
    #[case::longer_suffix("/metadata/identity/oauth2/token/extra", false, Route::Token)]
    #[case::escaped("/metadata/identity/oauth2/%74oken", false, Route::Token)]
    #[case::escaped_slashes("/metadata%2fidentity%2Foauth2%2ftoken", false, Route::Token)]
    #[case::capital_identity("/metadata/Identity/oauth2/token/", false, Route::InvalidRequest)]
    #[case::capital_token_escaped("/metadata/identity/oauth2/%54oken", false, Route::InvalidRequest)]
    #[case::backslash_separators("/metadata/identity\\oauth2\\token", false, Route::InvalidRequest)]
    #[case::extra_segments("/metadata/identity/x/oauth2/token", false, Route::InvalidRequest)]
    #[case::host("/host/token", false, Route::HostToken)]
    #[case::host_slash("/host/token/", false, Route::HostToken)]
    #[case::instance_blocked("/Metadata/instance/", true, Route::InstanceBlocked)]
    #[case::instance_compute("/metadata/instance/compute", true, Route::InstanceBlocked)]
    #[case::instance_any_case("/metadata/INSTANCE", true, Route::InstanceBlocked)]
    #[case::instance_escaped("/metadata/%69nstance", true, Route::InstanceBlocked)]
    #[case::instance_not_blocked("/metadata/%69nstance", false, Route::Proxy)]
    #[case::other("/doesnotexist", true, Route::Proxy)]
    #[case::root("/", false, Route::Proxy)]
    fn routes_follow_the_original_order_on_the_decoded_path(
        #[case] path: &str,
        #[case] block: bool,
        #[case] expected: Route,
    ) {
        assert_eq!(route(path, None, block), expected, "{path}");
    }

    #[rstest]
    #[case::double_slash("//metadata/instance", "/metadata/instance")]
    #[case::dot_dot("/metadata/identity/../instance", "/metadata/instance")]
    #[case::dot("/metadata/./instance/", "/metadata/instance/")]
    #[case::escaped_dot_dot("/metadata/identity/%2E%2e/instance", "/metadata/instance")]
    #[case::escaped_double_slash("/metadata%2F%2finstance", "/metadata/instance")]
    fn non_canonical_paths_redirect_to_the_cleaned_path(#[case] path: &str, #[case] cleaned: &str) {
        assert_eq!(route(path, Some("a=b"), true), Route::Redirect(format!("{cleaned}?a=b")));
    }

    #[rstest]
    #[case::empty("")]
    #[case::asterisk("*")]
    #[case::authority("169.254.169.254:80")]
    #[case::backslash("/metadata\\instance")]
    #[case::escaped_backslash("/metadata%5Cinstance")]
    #[case::semicolon("/metadata;a=b/instance")]
    #[case::escaped_semicolon("/metadata%3Binstance")]
    #[case::double_escape("/metadata%252Finstance")]
    #[case::percent_u("/metadata/%u0069nstance")]
    #[case::truncated("/metadata/instance%6")]
    #[case::not_hex("/metadata/instance%g0")]
    #[case::nul("/metadata/instance%00")]
    #[case::newline("/metadata/instance%0A")]
    #[case::space("/metadata/in%20stance")]
    #[case::question_mark("/metadata/instance%3Fapi-version=1")]
    #[case::invalid_utf8("/metadata/%FF")]
    #[case::overlong_slash("/metadata%C0%AFinstance")]
    #[case::raw_non_ascii("/metadata/instänce")]
    fn ambiguous_paths_are_refused(#[case] path: &str) {
        assert_eq!(decode_path(path), None, "{path}");
        assert_eq!(route(path, None, false), Route::InvalidRequest, "{path}");
    }

    #[rstest]
    #[case::first_segment("/metadata./identity/oauth2/token")]
    #[case::escaped("/metadata%2E/identity/oauth2/token")]
    #[case::last_segment("/metadata/instance.")]
    #[case::three_dots("/metadata/.../instance")]
    fn segments_ending_in_a_dot_are_refused(#[case] path: &str) {
        assert_eq!(route(path, None, false), Route::InvalidRequest, "{path}");
    }

    #[rstest]
    #[case::escaped("/metadata/identity/oauth2/%74oken", "/metadata/identity/oauth2/token")]
    #[case::escaped_slashes("/metadata%2fidentity%2Foauth2%2ftoken", "/metadata/identity/oauth2/token")]
    #[case::instance("/metadata/%69nstance", "/metadata/instance")]
    #[case::plain("/Metadata/versions", "/Metadata/versions")]
    fn the_decoded_path_is_the_one_routed_and_forwarded(#[case] raw: &str, #[case] decoded: &str) {
        assert_eq!(decode_path(raw).as_deref(), Some(decoded));
    }

    #[test]
    fn a_decoded_path_is_its_own_canonical_encoding() {
        let decoded = decode_path("/%6d%65tadata/instance/compute%2FvmId").unwrap();
        assert_eq!(decoded, "/metadata/instance/compute/vmId");
        assert_eq!(decode_path(&decoded).as_deref(), Some(decoded.as_str()));
    }

    #[test]
    fn forwarding_headers_are_refused_whatever_their_value() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", "a".parse().unwrap());
        h.insert("x-forwarded-proto", "http".parse().unwrap());
        assert_eq!(check_not_forwarded(&h), Ok(()));
        for name in ["X-Forwarded-For", "forwarded"] {
            let mut h = h.clone();
            h.insert(name, "".parse().unwrap());
            assert_eq!(check_not_forwarded(&h), Err(NmiError::Forwarded), "{name}");
        }
    }

    #[test]
    fn metadata_header_must_be_exactly_true() {
        let mut h = HeaderMap::new();
        assert_eq!(check_metadata_header(&h, true), Err(NmiError::MetadataHeaderRequired));
        assert_eq!(check_metadata_header(&h, false), Ok(()));
        h.insert("Metadata", "True".parse().unwrap());
        assert_eq!(check_metadata_header(&h, true), Err(NmiError::MetadataHeaderRequired));
        h.insert("METADATA", "true".parse().unwrap());
        assert_eq!(check_metadata_header(&h, true), Ok(()));
    }

    #[rstest]
    #[case::none(None)]
    #[case::empty_resource(Some("resource=&api-version=2018-02-01"))]
    #[case::no_resource(Some("api-version=2018-02-01&client_id=abc"))]
    fn resource_is_required(#[case] q: Option<&str>) {
        assert_eq!(parse_token_query(q), Err(NmiError::ResourceEmpty));
    }

    #[test]
    fn selectors_are_read_and_decoded() {
        let q = parse_token_query(Some(
            "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=c1&object_id=o1&mi_res_id=%2Fsubscriptions%2Fx",
        ))
        .unwrap();
        assert_eq!(q.resource, "https://vault.azure.net");
        assert_eq!(q.identity.client_id.as_deref(), Some("c1"));
        assert_eq!(q.identity.object_id.as_deref(), Some("o1"));
        assert_eq!(q.identity.resource_id.as_deref(), Some("/subscriptions/x"));
    }

    #[test]
    fn msi_res_id_wins_over_mi_res_id_and_first_value_counts() {
        let q = parse_token_query(Some("resource=r&resource=s&mi_res_id=b&msi_res_id=a")).unwrap();
        assert_eq!(q.resource, "r");
        assert_eq!(q.identity.resource_id.as_deref(), Some("a"));
        assert!(q.identity.client_id.is_none());
    }

    #[test]
    fn unspecified_means_no_selector_at_all() {
        let q = parse_token_query(Some("resource=r&client_id=")).unwrap();
        assert!(q.identity.is_unspecified());
    }

    #[test]
    fn invalid_escapes_are_kept_verbatim() {
        assert_eq!(percent_decode(b"a%zz%4"), "a%zz%4");
        assert_eq!(percent_decode(b"a+b%2Fc"), "a b/c");
    }

    #[test]
    fn host_endpoint_needs_both_pod_headers() {
        let mut h = HeaderMap::new();
        h.insert("podns", "default".parse().unwrap());
        assert_eq!(host_pod_headers(&h), Err(NmiError::HostHeadersMissing));
        h.insert("podname", "demo".parse().unwrap());
        assert_eq!(host_pod_headers(&h), Ok(("default".into(), "demo".into())));
    }
}
