"""msal ConfidentialClientApplication (client credentials) against the simulated Azure AD over HTTPS.

usage: msal_confidential.py <authority> <client_id> secret <secret> <scope> <jwks_url> <issuer>
       msal_confidential.py <authority> <client_id> cert <key.pem> <thumbprint_sha1_hex> <scope> <jwks_url> <issuer>
       msal_confidential.py <authority> <client_id> secret <wrong secret> <scope> --expect-error
REQUESTS_CA_BUNDLE (set by the caller) trusts the simulator's CA.
"""
import sys

import msal

from common import emit, verify


def main():
    authority, client_id, kind = sys.argv[1:4]
    rest = sys.argv[4:]
    if kind == "secret":
        credential, rest = rest[0], rest[1:]
    else:
        with open(rest[0]) as f:
            credential = {"private_key": f.read(), "thumbprint": rest[1]}
        rest = rest[2:]
    scope = rest[0]
    app = msal.ConfidentialClientApplication(
        client_id,
        authority=authority,
        client_credential=credential,
        validate_authority=False,
        instance_discovery=False,
    )
    result = app.acquire_token_for_client(scopes=[scope])
    if "--expect-error" in rest:
        emit({"error": result.get("error"), "error_codes": result.get("error_codes"), "has_token": "access_token" in result})
        return 0
    if "access_token" not in result:
        emit({"failed": result})
        return 1
    jwks_url, issuer = rest[1], rest[2]
    claims = verify(result["access_token"], jwks_url, scope[: -len("/.default")], issuer)
    emit({"expires_in": result.get("expires_in"), "claims": claims})
    return 0


if __name__ == "__main__":
    sys.exit(main())
