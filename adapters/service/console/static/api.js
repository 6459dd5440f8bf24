// The control API as the console uses it: the session cookie (sent by the browser, HttpOnly) and,
// on state-changing requests, the X-CSRF-Token header copied from the readable xferd_csrf cookie.
// The console has no back door: every action is an ordinary /v1 request, checked and audited there.

/** A refusal: `detail` is the API's sentence, shown to the user as is. */
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

let onExpired = () => {};

/** What to do when the session is gone (401 from any request): back to the login view. */
export function whenExpired(handler) {
  onExpired = handler;
}

/** The CSRF token the login set (a cookie readable by scripts on this origin only). */
export function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === "xferd_csrf") return decodeURIComponent(value.join("="));
  }
  return "";
}

/** Estimated server clock minus browser clock (ms), from the Date header of answers. */
export let clockSkewMs = 0;

function noteClock(response) {
  const date = Date.parse(response.headers.get("date") || "");
  if (Number.isNaN(date)) return;
  const skew = date - Date.now();
  // The header has one-second resolution: only a skew beyond that means anything.
  clockSkewMs = Math.abs(skew) > 2000 ? skew : 0;
}

/** The time on the service's clock, as well as the browser can tell. */
export function serverNow() {
  return Date.now() + clockSkewMs;
}

/**
 * Send a request; the parsed JSON answer (or null for 204).  Throws ApiError with the API's
 * sentence on a refusal; a 401 also runs the "session expired" handler.
 */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, "network", "the service did not answer (network error); try again");
  }
  noteClock(response);
  let data = null;
  if (response.status !== 204) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  if (response.status === 401 && !path.startsWith("/console/login")) {
    onExpired();
  }
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : null;
    const code = data && typeof data.error === "string" ? data.error : `http_${response.status}`;
    const retry = response.headers.get("retry-after");
    const error = new ApiError(response.status, code, detail ?? sentence(response.status, code));
    error.retryAfter = retry ? Number(retry) : null;
    throw error;
  }
  return data;
}

function sentence(status, code) {
  if (status === 401) return "not logged in (the session expired?)";
  if (status === 403) return "your role does not allow this";
  return `the service answered ${status} ${code}`;
}

/** A path segment for a channel id such as "PJSIP/2005-00000114" (its "/" kept as a separator). */
export function channelPath(channelId) {
  return String(channelId).split("/").map(encodeURIComponent).join("/");
}
