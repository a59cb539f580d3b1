//! A service principal's certificate (PKCS#12) and the RS256 client assertion JWT built from it.
//! Only RSA keys are accepted, as in the original; anything else is a clear error, never a
//! panic. The key and the assertion are never logged.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p12_keystore::{KeyStore, Pkcs12ImportPolicy};
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde::Serialize;
use sha1::{Digest, Sha1};

use super::TokenError;

/// rsaEncryption, the only key algorithm a client assertion may use here.
const RSA_OID: &str = "1.2.840.113549.1.1.1";
/// How long an assertion stays valid.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// A decoded client certificate: leaf certificate DER plus its RSA private key.
#[derive(Clone)]
pub struct ClientCertificate {
    cert_der: Vec<u8>,
    key: RsaPrivateKey,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate").field("x5t", &self.x5t()).field("key", &"<redacted>").finish()
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    x5t: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: &'a str,
    nbf: u64,
    exp: u64,
}

impl ClientCertificate {
    /// Decodes a PFX (the secret's `certificate` key) with its password (`password` key).
    pub fn from_pkcs12(der: &[u8], password: &str) -> Result<Self, TokenError> {
        let store = KeyStore::from_pkcs12(der, password, Pkcs12ImportPolicy::Strict)
            .map_err(|e| TokenError::Certificate(format!("failed to decode PKCS#12: {e}")))?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or_else(|| TokenError::Certificate("PKCS#12 holds no private key with a certificate".to_owned()))?;
        let leaf = chain
            .certs()
            .first()
            .ok_or_else(|| TokenError::Certificate("PKCS#12 private key has no certificate".to_owned()))?;
        let oid = chain.key().oid().to_string();
        if oid != RSA_OID {
            return Err(TokenError::Certificate(format!("private key algorithm {oid} is not RSA")));
        }
        Self::from_der(leaf.as_der(), chain.key().as_der())
    }

    /// From a DER certificate and a PKCS#8 DER RSA private key.
    pub fn from_der(cert_der: &[u8], pkcs8_key_der: &[u8]) -> Result<Self, TokenError> {
        let key = RsaPrivateKey::from_pkcs8_der(pkcs8_key_der)
            .map_err(|e| TokenError::Certificate(format!("private key is not a PKCS#8 RSA key: {e}")))?;
        Ok(Self { cert_der: cert_der.to_vec(), key })
    }

    /// The certificate's DER bytes.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The RSA public key, for verifying assertions in tests and diagnostics.
    pub fn public_key(&self) -> rsa::RsaPublicKey {
        self.key.to_public_key()
    }

    /// The `x5t` header: base64url (unpadded) of the SHA-1 thumbprint of the certificate DER.
    pub fn x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha1::digest(&self.cert_der))
    }

    /// A signed RS256 client assertion for `client_id` at `audience` (the token URL), valid from
    /// `now` for ten minutes, with the given unique `jti`.
    pub fn assertion(&self, client_id: &str, audience: &str, now: SystemTime, jti: &str) -> Result<String, TokenError> {
        let nbf = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let x5t = self.x5t();
        let header = Header { alg: "RS256", typ: "JWT", x5t: &x5t };
        let claims =
            Claims { aud: audience, iss: client_id, sub: client_id, jti, nbf, exp: nbf + ASSERTION_LIFETIME.as_secs() };
        let signing_input = format!("{}.{}", b64_json(&header)?, b64_json(&claims)?);
        let signer = SigningKey::<sha2::Sha256>::new(self.key.clone());
        let signature = signer
            .try_sign(signing_input.as_bytes())
            .map_err(|e| TokenError::Certificate(format!("failed to sign the client assertion: {e}")))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes())))
    }
}

fn b64_json<T: Serialize>(value: &T) -> Result<String, TokenError> {
    let json = serde_json::to_vec(value)
        .map_err(|e| TokenError::Certificate(format!("failed to encode the assertion: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}
