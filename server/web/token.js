// The page's access token. A link minted by `server token --url` carries it
// in the fragment (`/d/notes#token=…`), which browsers never send to a
// server. The page keeps it in sessionStorage (this tab only, gone when the
// tab closes), removes it from the address bar (so it is not bookmarked,
// shared or kept in history), and sends it as the `ot.bearer.` WebSocket
// subprotocol and as `Authorization: Bearer` on fetch calls. Never in a URL.

const KEY = "ot.token";

/** Take a token from the fragment, if any, into sessionStorage; returns the current token or null. */
export function takeToken(loc = globalThis.location, storage = globalThis.sessionStorage, history = globalThis.history) {
  const match = /(?:^#|&)token=([A-Za-z0-9._~-]+)/.exec(loc.hash || "");
  if (match) {
    storage.setItem(KEY, match[1]);
    history.replaceState(null, "", loc.pathname + loc.search);
  }
  return storage.getItem(KEY);
}

/** The subprotocol entry that carries the token (none without one), offered beside `ot.v1`. */
export function bearerProtocols(token) {
  return token ? [`ot.bearer.${token}`] : [];
}

/** Headers for a fetch call. */
export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}
