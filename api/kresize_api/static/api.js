// The kresize HTTP API (see /docs): fetch with the bearer token, errors in one shape, the upload with progress.

const TOKEN_KEY = "kresize.token";

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  localStorage.removeItem(TOKEN_KEY);
}

/** An error answer of the API: `{"error": {"status", "message", "details", "files"}}`, or no answer at all. */
export class ApiError extends Error {
  constructor(status, message, details = [], files = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.details = details;
    this.files = files;
  }
}

/** Build an ApiError from a response body (already parsed, or text that is not JSON). */
function errorFromBody(status, body, statusText) {
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error === "object") {
    return new ApiError(status, error.message || statusText, toStrings(error.details), error.files || null);
  }
  // Not our error shape (a proxy in front of the API, say): keep whatever text there is.
  const detail = body && typeof body === "object" ? body.detail : body;
  const message = typeof detail === "string" && detail ? detail : `${statusText || "request failed"} (HTTP ${status})`;
  return new ApiError(status, message);
}

function toStrings(values) {
  return Array.isArray(values) ? values.map((v) => (typeof v === "string" ? v : JSON.stringify(v))) : [];
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

const UNREACHABLE = "Cannot reach the kresize API. Check your connection and try again.";

/**
 * Call the API and return the parsed JSON body; throws ApiError. A 401 with a stored token also fires
 * `kresize:unauthorized` on window (the token was revoked): the app then asks to sign in again.
 */
export async function request(path, { method = "GET", token = getToken(), signal } = {}) {
  let response;
  try {
    response = await fetch(path, { method, signal, headers: { Accept: "application/json", ...authHeaders(token) } });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, UNREACHABLE);
  }
  const body = parseJson(await response.text());
  if (!response.ok) {
    if (response.status === 401 && token) window.dispatchEvent(new Event("kresize:unauthorized"));
    throw errorFromBody(response.status, body, response.statusText);
  }
  return body;
}

/** GET /v1/me: `{tenant, admin}` if the token is good (or authentication is off). */
export function whoAmI(token) {
  return request("/v1/me", { token });
}

const jobPath = (name) => `/v1/jobs/${encodeURIComponent(name)}`;

export const listJobs = () => request("/v1/jobs");
export const getJob = (name, options) => request(jobPath(name), options);
export const cancelJob = (name) => request(jobPath(name), { method: "DELETE" });

/**
 * Every file of a job (or those in `state`), following the `next` cursor; `onPage(items, total)` sees each page
 * as it arrives, so a long list shows up progressively, and stops the reading by returning false.
 */
export async function listAllFiles(name, onPage, { signal, state } = {}) {
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: "500" });
    if (state) query.set("state", state);
    if (cursor) query.set("cursor", cursor);
    const page = await request(`${jobPath(name)}/files?${query}`, { signal });
    if (onPage(page.items || [], page.total) === false) return;
    cursor = page.next;
  } while (cursor);
}

/** The job's Server-Sent Events URL. EventSource cannot send headers, so the token goes in the query. */
export function eventsUrl(name) {
  const token = getToken();
  return `${jobPath(name)}/events${token ? `?access_token=${encodeURIComponent(token)}` : ""}`;
}

/**
 * POST /v1/jobs with a multipart form. XMLHttpRequest rather than fetch: only it reports upload
 * progress, which matters for many photos over a phone connection. Resolves with the 202 body.
 */
export function submitJob(form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/jobs");
    const token = getToken();
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      const body = parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      if (xhr.status === 401 && token) window.dispatchEvent(new Event("kresize:unauthorized"));
      return reject(errorFromBody(xhr.status, body, xhr.statusText));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, UNREACHABLE)));
    xhr.send(form);
  });
}
