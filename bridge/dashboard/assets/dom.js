// DOM and formatting helpers. Data is only ever set as text (never innerHTML), so
// nothing a user uploaded or a model generated can become markup.

/** An element: h("a", {href: "#/jobs", class: "x", onclick: fn}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "value" && !svg) {
      el.value = value;
    } else if (name === "checked" || name === "disabled" || name === "selected") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let ids = 0;
/** A fresh element id, for label/aria-describedby pairs. */
export const uid = (prefix = "f") => `${prefix}-${++ids}`;

/** A labelled form control: [label, control, help?] in a div.field. */
export function field(label, control, help) {
  control.id ||= uid();
  const parts = [h("label", { for: control.id }, label), control];
  if (help) {
    const helpId = uid("help");
    control.setAttribute("aria-describedby", helpId);
    parts.push(h("p", { class: "help", id: helpId }, help));
  }
  return h("div", { class: "field" }, parts);
}

/** A table in a scrolling wrapper (wide tables scroll inside it on a phone). */
export function table(caption, headers, rows, attrs = {}) {
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      attrs,
      h("caption", { class: "visually-hidden" }, caption),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          headers.map((x) => h("th", { scope: "col" }, x)),
        ),
      ),
      h("tbody", {}, rows),
    ),
  );
}

/** `STATE_RUNNING` -> "running"; `FORMAT_ONNX` -> "onnx". */
export function enumName(value, prefix) {
  if (!value) return "";
  return String(value).replace(prefix, "").toLowerCase().replaceAll("_", " ");
}

export function stateBadge(state, prefix = "STATE_") {
  const name = enumName(state, prefix) || "unknown";
  return h("span", { class: `badge state-${name.replaceAll(" ", "-")}` }, name);
}

export function when(timestamp) {
  if (!timestamp) return "—";
  const date = new Date(timestamp);
  return h("time", { datetime: date.toISOString() }, date.toLocaleString());
}

/** Seconds as "1h 2m", "3m 4s", "5s". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${s}s`;
}

export function eta(job) {
  const running = job.state === "STATE_RUNNING" || job.state === "STATE_PAUSING";
  if (!running || !job.estimated_finish) return "—";
  const left = (new Date(job.estimated_finish) - Date.now()) / 1000;
  return left > 0 ? `in ${duration(left)}` : "any moment";
}

export function bytes(n) {
  const value = Number(n || 0);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = value;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${value} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** A metric for a table: 4 significant digits, or "—". */
export function metric(value) {
  if (value === undefined || value === null || Number.isNaN(Number(value))) return "—";
  const v = Number(value);
  return Math.abs(v) >= 1000 || v === 0 ? String(Math.round(v * 100) / 100) : v.toPrecision(4);
}

export function progressOf(job) {
  const step = Number(job.progress?.step || 0);
  const total = Number(job.progress?.total_steps || 0);
  return { step, total };
}

/** A <progress> with a text label of step/total. */
export function progressBar(job, label) {
  const { step, total } = progressOf(job);
  const bar = h("progress", { max: total || 1, value: total ? step : 0, "aria-label": label });
  if (!total) bar.removeAttribute("value"); // indeterminate until the job plans
  return h("span", { class: "progress" }, bar, h("span", {}, total ? `${step}/${total}` : "—"));
}

/** A status line for errors and notices, read out when it changes. */
export function notice(kind, text) {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** The query of the current hash route, `#/compare?a=x&b=y`. */
export function routeQuery() {
  const hash = location.hash;
  const at = hash.indexOf("?");
  return new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Run `fn` every `ms` while the view lives, never two at once; returns a stopper. */
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      await fn();
    } catch (error) {
      if (!stopped) console.warn("refresh failed:", error);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
