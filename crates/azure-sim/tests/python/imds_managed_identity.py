"""azure-identity's ManagedIdentityCredential against one simulated node's IMDS.

usage: imds_managed_identity.py <client_id> <scope> <jwks_url> <issuer> [--expect-unavailable]
IMDS is reached through AZURE_POD_IDENTITY_AUTHORITY_HOST, set by the caller.
"""
import sys

from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

from common import emit, verify


def main():
    client_id, scope, jwks_url, issuer = sys.argv[1:5]
    expect_unavailable = "--expect-unavailable" in sys.argv
    cred = ManagedIdentityCredential(client_id=client_id)
    try:
        tok = cred.get_token(scope)
    except (CredentialUnavailableError, ClientAuthenticationError) as e:
        if expect_unavailable:
            emit({"unavailable": True, "type": type(e).__name__})
            return 0
        raise
    if expect_unavailable:
        emit({"unavailable": False})
        return 1
    resource = scope[: -len("/.default")] if scope.endswith("/.default") else scope
    claims = verify(tok.token, jwks_url, resource, issuer)
    emit({"expires_on": tok.expires_on, "claims": claims})
    return 0


if __name__ == "__main__":
    sys.exit(main())
