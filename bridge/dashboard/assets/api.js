// The dashboard's client of the native REST API (/tunewire/v1/...): every call carries
// the API key from sessionStorage as a Bearer token, so the server scopes it to the
// key's organization like any other client's. The key never goes into a URL.

const KEY = "tunewire.api-key";
const BASE = "/tunewire/v1";
const FINAL_EVENT_STATES = new Set(["succeeded", "failed", "cancelled"]);

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  set key(value) {
    sessionStorage.setItem(KEY, value);
  },
  clear() {
    sessionStorage.removeItem(KEY);
    for (const name of Object.keys(sessionStorage)) {
      if (name.startsWith("tunewire.")) sessionStorage.removeItem(name);
    }
  },
};

/** A failed call: the HTTP status and the google.rpc.Status body. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }

  /** BadRequest field violations, field -> description. */
  get violations() {
    const found = {};
    for (const detail of this.body.details || []) {
      for (const v of detail.field_violations || []) found[v.field] = v.description;
    }
    return found;
  }
}

/** A path segment; ids keep their colons (`ft:base:org:suffix:job`) but nothing else. */
export const seg = (value) => encodeURIComponent(value).replaceAll("%3A", ":");

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

async function failure(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = { message: response.statusText };
  }
  if (response.status === 401) {
    // The key was revoked (or never valid): the shell signs out.
    window.dispatchEvent(new CustomEvent("tunewire:unauthorized", { detail: body.message }));
  }
  return new ApiError(response.status, body);
}

/** One unary call; returns the JSON reply. */
export async function call(method, path, body, { signal, params } = {}) {
  const query = params ? `?${new URLSearchParams(params)}` : "";
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(`${BASE}${path}${query}`, init);
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return text ? JSON.parse(text) : {};
}

export const get = (path, params, options = {}) =>
  call("GET", path, undefined, { ...options, params });
export const post = (path, body = {}, options = {}) => call("POST", path, body, options);

/** Every item of a paged listing, following next_page_token (at most `limit` pages). */
export async function all(path, field, params = {}, limit = 20) {
  const items = [];
  let token = "";
  for (let i = 0; i < limit; i += 1) {
    const page = await get(path, {
      page_size: 1000,
      ...params,
      ...(token ? { page_token: token } : {}),
    });
    items.push(...(page[field] || []));
    token = page.next_page_token;
    if (!token) break;
  }
  return items;
}

/** The lines of a streamed body as they arrive. */
async function* lines(response, onBytes) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      onBytes?.();
      buffer += decoder.decode(value, { stream: true });
      let at;
      while ((at = buffer.indexOf("\n")) >= 0) {
        yield buffer.slice(0, at).replace(/\r$/, "");
        buffer = buffer.slice(at + 1);
      }
    }
    if (buffer) yield buffer;
  } finally {
    reader.releaseLock();
  }
}

/** A POST or GET whose reply is an NDJSON stream: yields each `result`, throws on `error`. */
export async function* ndjson(method, path, body, { signal } = {}) {
  const init = { method, headers: headers({ Accept: "application/x-ndjson" }), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(`${BASE}${path}`, init);
  if (!response.ok) throw await failure(response);
  for await (const line of lines(response)) {
    if (!line) continue;
    const frame = JSON.parse(line);
    if (frame.error) throw new ApiError(500, frame.error);
    yield frame.result;
  }
}

/** Generate's text stream: calls onText(text) per piece; returns the last message. */
export async function generate(modelId, request, onText, { signal } = {}) {
  let last = {};
  for await (const piece of ndjson("POST", `/models/${seg(modelId)}:generate`, request, {
    signal,
  })) {
    if (piece.text) onText(piece.text);
    last = piece;
  }
  return last;
}

/**
 * A job's events, live: server-sent events from StreamJobEvents, resumed after any
 * break from the last sequence seen (`after_sequence`), so nothing is missed or seen
 * twice. The server sends a comment every heartbeat while idle; a stream silent for
 * `silentMs` is presumed dead and reopened. Ends when the job does.
 */
export class EventFeed {
  constructor(jobId, { onEvent, onStatus, silentMs = 45000 }) {
    this.jobId = jobId;
    this.onEvent = onEvent;
    this.onStatus = onStatus || (() => {});
    this.silentMs = silentMs;
    this.after = 0;
    this.reconnects = 0;
    this.stopped = false;
    this.finished = false;
    this.controller = null;
  }

  async run() {
    let backoff = 500;
    while (!this.stopped) {
      this.controller = new AbortController();
      let watchdog = null;
      const alive = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => this.controller.abort(), this.silentMs);
      };
      try {
        const path = `${BASE}/jobs/${seg(this.jobId)}/events:stream?after_sequence=${this.after}`;
        const response = await fetch(path, {
          headers: headers({ Accept: "text/event-stream" }),
          signal: this.controller.signal,
          cache: "no-store",
        });
        if (!response.ok) throw await failure(response);
        alive();
        this.onStatus(this.reconnects ? "resumed" : "live", this);
        backoff = 500;
        let data = [];
        for await (const line of lines(response, alive)) {
          if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          else if (line === "" && data.length) {
            this.#frame(data.join("\n"));
            data = [];
          }
        }
        if (data.length) this.#frame(data.join("\n"));
        if (this.finished) {
          this.onStatus("ended", this);
          return;
        }
      } catch (error) {
        if (this.stopped) return;
        if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
          this.onStatus("error", this, error);
          return;
        }
      } finally {
        clearTimeout(watchdog);
      }
      if (this.stopped) return;
      // The stream broke (network, server restart): resume after the last event seen.
      this.reconnects += 1;
      this.onStatus("reconnecting", this);
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  #frame(text) {
    const frame = JSON.parse(text);
    if (frame.error) throw new ApiError(500, frame.error);
    const event = frame.result.event;
    const sequence = Number(event.sequence);
    if (sequence <= this.after) return; // already seen (never expected: the cursor is exact)
    if (sequence !== this.after + 1) console.warn(`event gap: ${this.after} -> ${sequence}`);
    this.after = sequence;
    if (event.type === "TYPE_STATE" && FINAL_EVENT_STATES.has(event.data?.state)) {
      this.finished = true;
    }
    this.onEvent(event);
  }

  /** Drop the connection now; the feed reopens it from its cursor. */
  reconnect() {
    this.controller?.abort();
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }
}

/** Upload with progress (XMLHttpRequest reports upload progress; fetch does not). */
export function upload(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${BASE}/files`);
    xhr.setRequestHeader("Authorization", `Bearer ${session.key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(new ApiError(xhr.status, xhr.response));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { message: "network error" })));
    const form = new FormData();
    form.append("purpose", purpose); // the bridge reads purpose first, then the file
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Download an export's artifact: its NDJSON chunk stream, saved under its file name. */
export async function downloadArtifact(exportId, path, onProgress) {
  const parts = [];
  let received = 0;
  const route = `/exports/${seg(exportId)}/artifacts/${path.split("/").map(seg).join("/")}`;
  for await (const message of ndjson("GET", route)) {
    const chunk = message.chunk || {};
    const raw = atob(chunk.data || "");
    const part = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i += 1) part[i] = raw.charCodeAt(i);
    parts.push(part);
    received += part.length;
    onProgress?.(received, Number(chunk.total_bytes || 0));
  }
  const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = path.split("/").pop();
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
