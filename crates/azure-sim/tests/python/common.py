"""Helpers shared by the real-client scripts: JWKS fetching and claim verification with PyJWT."""
import json
import sys

import jwt
import requests


def verify(token, jwks_url, audience, issuer):
    """Verifies the RS256 signature with the simulator's JWKS and returns the claims."""
    jwks = requests.get(jwks_url, timeout=30).json()
    header = jwt.get_unverified_header(token)
    keyset = jwt.PyJWKSet.from_dict(jwks)
    key = next(k for k in keyset.keys if k.key_id == header.get("kid"))
    return jwt.decode(token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer)


def emit(obj):
    print(json.dumps(obj))
    sys.stdout.flush()
