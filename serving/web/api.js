// The server's public REST API, as the page calls it: every request carries the token field's
// value as `Authorization: Bearer ...` when it is set, and every failure becomes an ApiError
// worded as the server worded it (its {"error": ...}), or saying that the server went away.

const TOKEN_KEY = "zoo-token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status; // 0: no answer at all
  }
  toString() {
    return this.status ? `HTTP ${this.status}: ${this.message}` : this.message;
  }
}

export function bindToken(input) {
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  input.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, input.value.trim()));
}

function token() {
  return (sessionStorage.getItem(TOKEN_KEY) || "").trim();
}

export async function call(path, body) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const init = { headers, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `The server went away: ${location.origin} does not answer (${e.message})`);
  }
  const text = await response.text();
  if (!response.ok) {
    let message = text.trim() || response.statusText;
    try {
      message = JSON.parse(text).error ?? message;
    } catch { /* not JSON: the body as it came */ }
    throw new ApiError(response.status, message);
  }
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? JSON.parse(text) : text;
}

export const modelPath = (name, version) =>
  `/v1/models/${encodeURIComponent(name)}` +
  (version === undefined || version === null ? "" : `/versions/${version}`);
