// @sandboxd/client: the client of sandboxd's HTTP API, for Node 18+ and
// browsers.  Types: index.d.ts.  API: README.md.  Live sessions use the
// runtime's WebSocket, or the `ws` package in Node 20 (its one dependency).

export { Client, FINAL_STATES } from "./lib/client.js";
export { SandboxdError } from "./lib/errors.js";
export { DEFAULT_RETRY } from "./lib/retry.js";
export { text } from "./lib/bytes.js";
export { Session, session, sessionUrl } from "./lib/session.js";
