//! RS256 JSON Web Tokens: the simulator's signing key (one per run), its JWKS, signing of access tokens,
//! and verification of tokens presented to us (client assertions, Kubernetes service-account tokens,
//! ARM bearer tokens).
//!
//! Signing goes through aws-lc-rs (via rcgen's `KeyPair`), which is fast even in debug builds;
//! verification uses the pure-Rust `rsa` crate (public-key operations are cheap).
//! This module never logs a token.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{KeyPair, PublicKeyData as _, SigningKey as _};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPublicKey};
use serde_json::{Value, json};
use sha1::Digest as _;

/// Why a JWT could not be created or was rejected.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The token is not three base64url parts with JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than RS256.
    #[error("unsupported algorithm {0:?}")]
    Algorithm(String),
    /// The signature does not verify with the key it should have been made with.
    #[error("signature does not verify")]
    Signature,
    /// A key (JWK, certificate) could not be read.
    #[error("unusable key: {0}")]
    Key(String),
    /// Key generation or signing failed in the crypto backend.
    #[error("crypto backend failed: {0}")]
    Crypto(String),
}

/// A decoded but not yet verified JWT.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The JOSE header.
    pub header: Value,
    /// The claims.
    pub claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

impl Decoded {
    /// Splits and base64url-decodes `token` without checking anything but its shape.
    pub fn parse(token: &str) -> Result<Self, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed("expected three parts"));
        };
        let header = decode_json(h)?;
        let claims = decode_json(c)?;
        let signature =
            URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| JwtError::Malformed("signature"))?;
        Ok(Self { header, claims, signing_input: format!("{h}.{c}"), signature })
    }

    /// A string claim, if present.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A numeric date claim (`exp`, `nbf`, `iat`), if present.
    pub fn claim_time(&self, name: &str) -> Option<i64> {
        self.claims.get(name).and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
    }

    /// A string header field, if present.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    /// Checks the RS256 signature against `key`.
    pub fn verify(&self, key: &RsaPublicKey) -> Result<(), JwtError> {
        match self.header_str("alg") {
            Some("RS256") => {}
            other => return Err(JwtError::Algorithm(other.unwrap_or("").to_owned())),
        }
        let verifying = VerifyingKey::<sha2::Sha256>::new(key.clone());
        let sig = Signature::try_from(self.signature.as_slice()).map_err(|_| JwtError::Signature)?;
        verifying.verify(self.signing_input.as_bytes(), &sig).map_err(|_| JwtError::Signature)
    }

    /// Checks the signature against any key of a JWKS document (`{"keys":[...]}`), preferring the `kid` match.
    pub fn verify_with_jwks(&self, jwks: &Value) -> Result<(), JwtError> {
        let keys = jwks.get("keys").and_then(Value::as_array).ok_or(JwtError::Key("no keys in JWKS".into()))?;
        let kid = self.header_str("kid");
        let mut candidates: Vec<&Value> =
            keys.iter().filter(|k| kid.is_some() && k.get("kid").and_then(Value::as_str) == kid).collect();
        if candidates.is_empty() {
            candidates = keys.iter().collect();
        }
        for jwk in candidates {
            if let Ok(key) = rsa_from_jwk(jwk)
                && self.verify(&key).is_ok()
            {
                return Ok(());
            }
        }
        Err(JwtError::Signature)
    }
}

fn decode_json(part: &str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| JwtError::Malformed("base64url"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("json"))?;
    if value.is_object() { Ok(value) } else { Err(JwtError::Malformed("not a JSON object")) }
}

/// Reads an RSA public key from a JWK (`kty` RSA, `n`, `e`).
pub fn rsa_from_jwk(jwk: &Value) -> Result<RsaPublicKey, JwtError> {
    if jwk.get("kty").and_then(Value::as_str) != Some("RSA") {
        return Err(JwtError::Key("not an RSA JWK".into()));
    }
    let field = |name: &str| -> Result<BigUint, JwtError> {
        let s = jwk.get(name).and_then(Value::as_str).ok_or_else(|| JwtError::Key(format!("JWK lacks {name}")))?;
        let bytes =
            URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| JwtError::Key(format!("JWK {name}")))?;
        Ok(BigUint::from_bytes_be(&bytes))
    };
    RsaPublicKey::new(field("n")?, field("e")?).map_err(|e| JwtError::Key(e.to_string()))
}

/// Reads the RSA public key of a DER X.509 certificate.
pub fn rsa_from_cert_der(cert_der: &[u8]) -> Result<RsaPublicKey, JwtError> {
    let spki = crate::der::certificate_spki(cert_der).ok_or(JwtError::Key("not an X.509 certificate".into()))?;
    RsaPublicKey::from_public_key_der(spki).map_err(|e| JwtError::Key(format!("certificate key is not RSA: {e}")))
}

/// The `x5t` thumbprint of a DER certificate: base64url(SHA-1(der)), as AAD and msal compute it.
pub fn x5t(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(cert_der))
}

/// The `x5t#S256` thumbprint: base64url(SHA-256(der)).
pub fn x5t_s256(cert_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert_der))
}

/// The simulator's token-signing key: RSA 2048, with a self-signed certificate so the JWKS carries
/// `x5c`/`x5t` like Azure AD's.
pub struct SigningKey {
    key_pair: KeyPair,
    public: RsaPublicKey,
    cert_der: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key and certificate.
    pub fn generate() -> Result<Self, JwtError> {
        let key_pair = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .map_err(|e| JwtError::Crypto(e.to_string()))?;
        let public = RsaPublicKey::from_public_key_der(&key_pair.subject_public_key_info())
            .map_err(|e| JwtError::Crypto(e.to_string()))?;
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| JwtError::Crypto(e.to_string()))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "accounts.accesscontrol.windows.net");
        let cert = params.self_signed(&key_pair).map_err(|e| JwtError::Crypto(e.to_string()))?;
        let cert_der = cert.der().to_vec();
        let kid = x5t(&cert_der);
        Ok(Self { key_pair, public, cert_der, kid })
    }

    /// The key id (`kid`, equal to `x5t`) put in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The DER certificate of this key (tests use a `SigningKey` as a client certificate or an issuer key).
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The public key, for verifying our own tokens.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// Signs `claims` into a compact RS256 JWT with `typ`, `alg`, `kid` and `x5t` headers.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = json!({"typ": "JWT", "alg": "RS256", "x5t": self.kid, "kid": self.kid});
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{h}.{c}");
        let sig = self.key_pair.sign(input.as_bytes()).map_err(|e| JwtError::Crypto(e.to_string()))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// The JWK of this key, as Azure AD publishes it under `/discovery/keys`.
    pub fn jwk(&self, issuer: &str) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": URL_SAFE_NO_PAD.encode(self.public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.public.e().to_bytes_be()),
            "x5c": [STANDARD.encode(&self.cert_der)],
            "issuer": issuer,
        })
    }

    /// Verifies a token this key signed (signature only; the caller checks claims).
    pub fn verify_own(&self, token: &str) -> Result<Decoded, JwtError> {
        let decoded = Decoded::parse(token)?;
        decoded.verify(&self.public)?;
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_with_the_jwks_and_fails_when_tampered() {
        let key = SigningKey::generate().unwrap();
        let token = key.sign(&json!({"aud": "x", "exp": 1})).unwrap();
        let decoded = Decoded::parse(&token).unwrap();
        let jwks = json!({"keys": [key.jwk("iss")]});
        decoded.verify_with_jwks(&jwks).unwrap();
        assert_eq!(decoded.header_str("x5t"), Some(key.kid()));
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(json!({"aud": "y", "exp": 1}).to_string());
        parts[1] = &other;
        let tampered = Decoded::parse(&parts.join(".")).unwrap();
        assert!(matches!(tampered.verify_with_jwks(&jwks), Err(JwtError::Signature)));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bad in ["", "a", "a.b", "a.b.c", "e30.e30.!!", "e30.e30.e30.e30"] {
            assert!(Decoded::parse(bad).is_err(), "{bad}");
        }
    }
}
