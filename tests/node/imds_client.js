// Real JavaScript IMDS client for NMI's end-to-end tests, run inside a pod network namespace:
//   node imds_client.js <resource> [client_id]
// Prints {"ok": true, "token": ..., "expires_on": <ms>} or {"ok": false, "error": ...}.
const { ManagedIdentityCredential } = require("@azure/identity");

async function main() {
  const [resource, clientId] = process.argv.slice(2);
  const cred = clientId ? new ManagedIdentityCredential({ clientId }) : new ManagedIdentityCredential();
  try {
    const tok = await cred.getToken(resource.replace(/\/$/, "") + "/.default");
    console.log(JSON.stringify({ ok: true, token: tok.token, expires_on: tok.expiresOnTimestamp }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: `${e.name}: ${e.message}` }));
  }
}

main();
