// @sandboxd/client: the client of sandboxd's HTTP API, for Node 18+ and
// browsers, with no dependencies.  Types: index.d.ts.  API: README.md.
//
// Live sessions (the daemon's WebSocket endpoint, issue 16) are not in this
// client: the daemon does not serve them yet.

export { Client, FINAL_STATES } from "./lib/client.js";
export { SandboxdError } from "./lib/errors.js";
export { DEFAULT_RETRY } from "./lib/retry.js";
export { text } from "./lib/bytes.js";
