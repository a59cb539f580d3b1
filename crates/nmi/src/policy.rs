//! Which credentials NMI will use for a service principal identity (types 1 and 2). Anyone who
//! can write an AzureIdentity names the Secret NMI reads (`clientPassword`) and the server NMI
//! posts it to (`adEndpoint` plus `tenantID`); NMI can read Secrets cluster-wide. So a Secret is
//! read only from the identity's own namespace (or a namespace the operator allows), and sent
//! only to a known cloud's Azure AD (or an endpoint the operator allows). Checked before
//! anything is read or sent; pure.

use std::collections::BTreeSet;

use aadpodid_azure::cloud::AzureEnvironment;
use aadpodid_azure::token::token_url;
use url::{Origin, Url};

use crate::select::IdentityView;

/// The clouds whose Azure AD endpoints are always allowed.
const KNOWN_CLOUDS: [&str; 4] = ["AzurePublicCloud", "AzureUSGovernmentCloud", "AzureChinaCloud", "AzureGermanCloud"];

/// The operator's allowances, from flags.
#[derive(Clone, Debug)]
pub struct CredentialPolicy {
    secret_namespaces: BTreeSet<String>,
    authorities: Vec<Origin>,
}

/// Where a permitted identity's Secret is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretLocation {
    pub namespace: String,
    pub name: String,
}

impl Default for CredentialPolicy {
    fn default() -> Self {
        let authorities = KNOWN_CLOUDS
            .iter()
            .filter_map(|name| AzureEnvironment::from_name(name, |_| None).ok())
            .filter_map(|env| Url::parse(&env.active_directory_endpoint).ok())
            .map(|url| url.origin())
            .collect();
        Self { secret_namespaces: BTreeSet::new(), authorities }
    }
}

impl CredentialPolicy {
    /// The default policy plus `namespaces` whose Secrets any identity may use and extra Azure
    /// AD endpoints (`https://host[:port]/`, e.g. Azure Stack's or a simulator's).
    pub fn new(namespaces: &[String], ad_endpoints: &[String]) -> Result<Self, String> {
        let mut policy = Self::default();
        policy.secret_namespaces.extend(namespaces.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()));
        for endpoint in ad_endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let url = Url::parse(endpoint).map_err(|e| format!("--allowed-ad-endpoints: {endpoint:?}: {e}"))?;
            if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
                return Err(format!("--allowed-ad-endpoints: {endpoint:?} is not an http(s) URL"));
            }
            policy.authorities.push(url.origin());
        }
        Ok(policy)
    }

    /// The identity's Secret, if the identity may use it and where it would be sent is allowed;
    /// otherwise the rule it breaks, as the pod and the logs should see it.
    pub fn check(&self, id: &IdentityView) -> Result<SecretLocation, String> {
        let secret = self.secret_location(id)?;
        let authority = id.spec.ad_endpoint.as_deref().unwrap_or_default();
        let primary = id.spec.tenant_id.as_deref().unwrap_or_default();
        let aux = id.spec.auxiliary_tenant_ids.iter().flatten().map(String::as_str);
        for tenant in std::iter::once(primary).chain(aux) {
            let url = token_url(authority, tenant).map_err(|e| format!("{}: {e}", refused(id)))?;
            if url.username() != "" || url.password().is_some() || !self.authorities.contains(&url.origin()) {
                return Err(format!(
                    "{}: adEndpoint {authority:?} is not the Azure AD endpoint of a known cloud; an operator can allow it with --allowed-ad-endpoints",
                    refused(id)
                ));
            }
        }
        Ok(secret)
    }

    fn secret_location(&self, id: &IdentityView) -> Result<SecretLocation, String> {
        let reference = id.spec.client_password.as_ref();
        let name = reference.and_then(|r| r.name.clone()).unwrap_or_default();
        if name.is_empty() {
            return Err(format!("{}: clientPassword names no Secret", refused(id)));
        }
        let namespace = reference.and_then(|r| r.namespace.clone()).filter(|n| !n.is_empty());
        let namespace = namespace.unwrap_or_else(|| id.namespace.clone());
        let own = !id.namespace.is_empty() && namespace == id.namespace;
        if own || self.secret_namespaces.contains(&namespace) {
            return Ok(SecretLocation { namespace, name });
        }
        Err(format!(
            "{}: its clientPassword Secret is in namespace {namespace:?}; NMI reads Secrets only from the identity's own namespace ({:?}) or those an operator allows with --allowed-secret-namespaces",
            refused(id),
            id.namespace
        ))
    }
}

fn refused(id: &IdentityView) -> String {
    format!("identity {}/{} is refused", id.namespace, id.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aadpodid_api::AzureIdentitySpec;
    use k8s_openapi::api::core::v1::SecretReference;

    fn sp(secret_ns: Option<&str>, ad_endpoint: Option<&str>, tenant: &str) -> IdentityView {
        IdentityView {
            namespace: "apps".into(),
            name: "sp".into(),
            spec: AzureIdentitySpec {
                type_: Some(1),
                tenant_id: Some(tenant.into()),
                ad_endpoint: ad_endpoint.map(str::to_owned),
                client_password: Some(SecretReference {
                    namespace: secret_ns.map(str::to_owned),
                    name: Some("creds".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn location(namespace: &str) -> Result<SecretLocation, String> {
        Ok(SecretLocation { namespace: namespace.into(), name: "creds".into() })
    }

    #[test]
    fn a_secret_is_read_only_from_the_identitys_namespace_or_an_allowed_one() {
        let policy = CredentialPolicy::default();
        assert_eq!(policy.check(&sp(Some("apps"), None, "t")), location("apps"));
        assert_eq!(policy.check(&sp(None, None, "t")), location("apps"), "no namespace means the identity's");
        let err = policy.check(&sp(Some("kube-system"), None, "t")).unwrap_err();
        assert!(err.contains("identity apps/sp is refused") && err.contains("\"kube-system\""), "{err}");
        assert!(err.contains("--allowed-secret-namespaces"), "{err}");
        let allowing = CredentialPolicy::new(&["kube-system".into()], &[]).unwrap();
        assert_eq!(allowing.check(&sp(Some("kube-system"), None, "t")), location("kube-system"));
        let mut nameless = sp(Some("apps"), None, "t");
        nameless.namespace.clear();
        assert!(policy.check(&nameless).is_err(), "an identity without a namespace has no own namespace");
    }

    #[test]
    fn only_known_clouds_azure_ad_endpoints_receive_secrets() {
        let policy = CredentialPolicy::default();
        for endpoint in [
            None,
            Some(""),
            Some("https://login.microsoftonline.com/"),
            Some("https://LOGIN.microsoftonline.com"),
            Some("https://login.microsoftonline.us/"),
            Some("https://login.chinacloudapi.cn/"),
            Some("https://login.microsoftonline.de/"),
        ] {
            assert!(policy.check(&sp(Some("apps"), endpoint, "t")).is_ok(), "{endpoint:?}");
        }
        for endpoint in [
            "https://evil.example/",
            "http://login.microsoftonline.com/",
            "https://login.microsoftonline.com:8443/",
            "https://login.microsoftonline.com.evil.example/",
            "https://user@login.microsoftonline.com/",
            "https://127.0.0.1:4444/",
        ] {
            let err = policy.check(&sp(Some("apps"), Some(endpoint), "t")).unwrap_err();
            assert!(err.contains("adEndpoint") && err.contains("--allowed-ad-endpoints"), "{endpoint}: {err}");
        }
        let err = policy.check(&sp(Some("apps"), None, "http:evil.example")).unwrap_err();
        assert!(err.contains("invalid tenant ID"), "a tenant cannot redirect the request: {err}");
    }

    #[test]
    fn auxiliary_tenants_and_extra_endpoints_are_checked_too() {
        let policy = CredentialPolicy::new(&[], &["https://127.0.0.1:4444".into()]).unwrap();
        assert!(policy.check(&sp(Some("apps"), Some("https://127.0.0.1:4444/"), "t")).is_ok());
        assert!(policy.check(&sp(Some("apps"), Some("https://127.0.0.1:4445/"), "t")).is_err());
        let mut aux = sp(Some("apps"), None, "t");
        aux.spec.auxiliary_tenant_ids = Some(vec!["ok".into(), "https:x".into()]);
        assert!(policy.check(&aux).is_err());
        assert!(CredentialPolicy::new(&[], &["not a url".into()]).is_err());
        assert!(CredentialPolicy::new(&[], &["ftp://x/".into()]).is_err());
    }
}
