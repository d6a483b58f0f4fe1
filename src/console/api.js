// The console's client of Tally's REST API (`/api/v1`): the session (tokens in sessionStorage,
// refreshed a minute before the access token expires), JSON requests, and problem+json errors.

const BASE = "/api/v1";
const STORE = "tally.session";
/** Refresh this many seconds before the access token expires (halfway, for a token that lives
 * less than twice that). */
const REFRESH_EARLY_S = 60;

/** An RFC 9457 problem answered by the API: `status`, `code`, `detail`, and `errors`
 * (`[{field, message}]`) for 422 `validation_failed`; the whole body is in `body`. */
export class Problem extends Error {
  constructor(status, body) {
    super(body?.detail || body?.title || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || "http_" + status;
    this.body = body || {};
    this.errors = Array.isArray(body?.errors) ? body.errors : [];
  }
}

let session = load();
let refreshTimer = null;
const listeners = new Set();

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE)) || null;
  } catch {
    return null;
  }
}

function save(next) {
  session = next;
  if (next) sessionStorage.setItem(STORE, JSON.stringify(next));
  else sessionStorage.removeItem(STORE);
  schedule();
  for (const listener of listeners) listener(session);
}

/** The signed-in session `{access_token, refresh_token, expires_at, user}` or null. */
export function current() {
  return session;
}

/** Calls `listener(session)` whenever the session changes (sign-in, refresh, sign-out). */
export function onSession(listener) {
  listeners.add(listener);
}

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

function schedule() {
  clearTimeout(refreshTimer);
  if (!session) return;
  const left = session.expires_at - Date.now() / 1000;
  const wait = Math.max(1, left > 2 * REFRESH_EARLY_S ? left - REFRESH_EARLY_S : left / 2);
  refreshTimer = setTimeout(() => refresh().catch(() => save(null)), wait * 1000);
}

function tokens(reply) {
  const expires_at = Date.now() / 1000 + reply.expires_in;
  const { sub, role } = claims(reply.access_token);
  return { access_token: reply.access_token, refresh_token: reply.refresh_token, expires_at, sub, role };
}

/** Signs in with a username (or email) and password; loads the user. */
export async function login(username, password) {
  const reply = await request("POST", "/auth/login", { username, password }, { auth: false });
  const next = tokens(reply);
  const user = await request("GET", `/users/${next.sub}`, null, { token: next.access_token });
  save({ ...next, user });
}

/** Registers a user (then sign in with `login`). */
export function register(username, email, password) {
  return request("POST", "/auth/register", { username, email, password }, { auth: false });
}

/** Trades the refresh token for new tokens (the old one is revoked by the server). */
export async function refresh() {
  if (!session) return;
  const reply = await request("POST", "/auth/refresh", { refresh_token: session.refresh_token }, { auth: false });
  save({ ...session, ...tokens(reply) });
}

/** Revokes this login's refresh tokens and forgets the session. */
export async function logout() {
  const ending = session;
  save(null);
  if (ending) {
    await request("POST", "/auth/logout", { refresh_token: ending.refresh_token }, { auth: false }).catch(() => {});
  }
}

/**
 * One API call. `body` is sent as JSON; `options.key` becomes the `Idempotency-Key` header.
 * Resolves with the parsed JSON (null for 204); rejects with a `Problem`.
 */
export async function request(method, path, body = null, options = {}) {
  const headers = { accept: "application/json" };
  const token = options.token || (options.auth === false ? null : session?.access_token);
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== null) headers["content-type"] = "application/json";
  if (options.key) headers["idempotency-key"] = options.key;
  let reply;
  try {
    reply = await fetch(BASE + path, { method, headers, body: body === null ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new Problem(0, { code: "network", detail: "Tally cannot be reached: " + error.message });
  }
  const text = await reply.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { detail: text };
  }
  if (reply.status === 401 && token && options.auth !== false) save(null);
  if (!reply.ok) throw new Problem(reply.status, parsed);
  if (parsed && typeof parsed === "object") {
    // The answer to an earlier request with the same Idempotency-Key, applied once.
    Object.defineProperty(parsed, "replayed", { value: reply.headers.get("idempotent-replayed") === "true" });
  }
  return parsed;
}

/** A query string of the non-empty entries of `params` (with the leading `?`, or ""). */
export function query(params) {
  const pairs = Object.entries(params).filter(([, value]) => value !== undefined && value !== null && value !== "");
  return pairs.length ? "?" + new URLSearchParams(pairs).toString() : "";
}

/** A fresh idempotency key (made when a form opens, so a retry or double submit reuses it). */
export function newKey() {
  // getRandomValues, unlike randomUUID, also works on a plain-http origin other than localhost.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

schedule();
