"""Real IMDS clients run inside a pod network namespace by NMI's end-to-end tests.

Usage:
  imds_client.py sdk <resource> [client_id]        azure-identity ManagedIdentityCredential
  imds_client.py raw <path?query> [header=value ...] a bare urllib GET to 169.254.169.254
Prints one JSON object on stdout: {"ok": true, ...} or {"ok": false, "error": "..."}.
"""
import http.client
import json
import os
import sys
import urllib.error
import urllib.request


def sdk(resource, client_id=None):
    from azure.identity import ManagedIdentityCredential

    cred = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    try:
        tok = cred.get_token(resource.rstrip("/") + "/.default")
        return {"ok": True, "token": tok.token, "expires_on": tok.expires_on}
    except Exception as e:  # the test asserts on the text
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def raw(path, headers):
    source = os.environ.get("SOURCE_ADDRESS")
    if source:
        return raw_from(source, path, headers)
    req = urllib.request.Request("http://169.254.169.254" + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return {"ok": True, "status": resp.status, "body": resp.read().decode()}
    except urllib.error.HTTPError as e:
        return {"ok": True, "status": e.code, "body": e.read().decode()}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def raw_from(source, path, headers):
    """The same GET, sent from a chosen source address (spoofing tests), 5 s timeout."""
    try:
        conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=5, source_address=(source, 0))
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return {"ok": True, "status": resp.status, "body": resp.read().decode()}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main():
    mode = sys.argv[1]
    if mode == "sdk":
        out = sdk(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        headers = dict(a.split("=", 1) for a in sys.argv[3:])
        out = raw(sys.argv[2], headers)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
