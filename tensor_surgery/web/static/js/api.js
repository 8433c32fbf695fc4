// Fetch wrapper: JSON in and out; an {error: {...}} answer becomes an ApiError with its message.

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || (typeof body === "string" && body) || `request failed (${status})`);
    this.status = status;
    this.code = err.code || "http_error";
    this.details = err;
  }
}

// Tensor names go in the path: encode everything but "/" (the route accepts slashes).
export const tensorPath = (name) => encodeURIComponent(name).replace(/%2F/g, "/");

const pending = new Set(); // reads in flight

// Resolves when every read in flight has answered (or after `timeoutMs`): before the server
// switches models, so that no read asked about the old model reaches it afterwards (a 404).
export function settled(timeoutMs = 3000) {
  return Promise.race([Promise.allSettled([...pending]), new Promise((ok) => setTimeout(ok, timeoutMs))]);
}

export function api(path, opts = {}) {
  const p = request(path, opts);
  if ((opts.method || "GET") === "GET") {
    pending.add(p);
    p.finally(() => pending.delete(p)).catch(() => {});
  }
  return p;
}

async function request(path, { method = "GET", body, params, signal } = {}) {
  const url = new URL(path, location.origin);
  if (params) {
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    }
  }
  const opts = { method, headers: {}, signal };
  if (body instanceof FormData) {
    opts.body = body;
  } else if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, opts);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, { error: { message: "the server did not answer: is tensor-surgery still running?" } });
  }
  const type = resp.headers.get("content-type") || "";
  const data = type.includes("json") ? await resp.json() : await resp.text();
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}
