// A small SVG line chart for training curves: several series against the step, drawn
// again (at most once a frame) as points arrive. Its data is also a table, for screen
// readers and for anyone who wants the numbers.

import { fill, h, metric } from "./dom.js";

const W = 480;
const H = 220;
const PAD = { left: 52, right: 12, top: 12, bottom: 30 };

function ticks(low, high, count) {
  if (!(high > low)) return [low];
  const span = high - low;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => span / s <= count) || raw;
  const out = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) out.push(v);
  return out;
}

function label(value) {
  const v = Math.abs(value);
  if (v === 0) return "0";
  if (v >= 10000 || v < 0.001) return value.toExponential(1);
  return String(Number(value.toPrecision(3)));
}

export class LineChart {
  /** series: [{key, label, cls}] (cls: "s1".."s4" picks a colour and a dash). */
  constructor({ id, title, series, unit = "" }) {
    this.title = title;
    this.series = series;
    this.unit = unit;
    this.points = Object.fromEntries(series.map((s) => [s.key, []]));
    this.pending = false;
    this.svg = h("svg:svg", {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "aria-labelledby": `${id}-title`,
      class: "chart-svg",
    });
    this.summary = h("p", { class: "chart-latest", id: `${id}-latest` });
    this.tableBody = h("tbody");
    const details = h(
      "details",
      { class: "chart-data" },
      h("summary", {}, `${title}: data`),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "col" }, "step"),
              series.map((s) => h("th", { scope: "col" }, s.label)),
            ),
          ),
          this.tableBody,
        ),
      ),
    );
    details.addEventListener("toggle", () => details.open && this.#renderTable());
    this.details = details;
    this.legend = h(
      "ul",
      { class: "legend" },
      series.map((s) =>
        h("li", {}, h("span", { class: `swatch ${s.cls}`, "aria-hidden": "true" }), s.label),
      ),
    );
    this.element = h(
      "figure",
      { class: "chart", id, dataset: { points: "0" } },
      h("figcaption", { id: `${id}-title` }, title),
      this.legend,
      this.svg,
      this.summary,
      details,
    );
    this.render();
  }

  /** Add a point; a step at or before the last one (a resumed run) replaces what follows. */
  add(key, x, y) {
    if (y === undefined || y === null || !Number.isFinite(Number(y))) return;
    const list = this.points[key];
    while (list.length && list[list.length - 1][0] >= x) list.pop();
    list.push([x, Number(y)]);
    this.#schedule();
  }

  get count() {
    return Object.values(this.points).reduce((n, list) => n + list.length, 0);
  }

  #schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  render() {
    const all = Object.values(this.points).flat();
    this.element.dataset.points = String(all.length);
    for (const s of this.series)
      this.element.dataset[`points_${s.key}`] = String(this.points[s.key].length);
    const plotW = W - PAD.left - PAD.right;
    const plotH = H - PAD.top - PAD.bottom;
    const children = [];
    if (!all.length) {
      children.push(
        h(
          "svg:text",
          { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" },
          "no data yet",
        ),
      );
      fill(this.svg, h("svg:title", {}, `${this.title}: no data yet`), children);
      this.summary.textContent = "";
      return;
    }
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
    if (y1 === y0) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
    const margin = (y1 - y0) * 0.05;
    [y0, y1] = [y0 - margin, y1 + margin];
    const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * plotW;
    const sy = (y) => PAD.top + (1 - (y - y0) / (y1 - y0)) * plotH;
    for (const t of ticks(y0, y1, 4)) {
      children.push(
        h("svg:line", { x1: PAD.left, x2: W - PAD.right, y1: sy(t), y2: sy(t), class: "grid" }),
        h(
          "svg:text",
          { x: PAD.left - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" },
          label(t),
        ),
      );
    }
    for (const t of ticks(x0, x1, 5).filter((v) => Number.isInteger(v))) {
      children.push(
        h(
          "svg:text",
          { x: sx(t), y: H - PAD.bottom + 16, "text-anchor": "middle", class: "tick" },
          String(t),
        ),
      );
    }
    children.push(
      h("svg:line", { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom, class: "axis" }),
      h("svg:line", {
        x1: PAD.left,
        x2: W - PAD.right,
        y1: H - PAD.bottom,
        y2: H - PAD.bottom,
        class: "axis",
      }),
      h("svg:text", { x: W - PAD.right, y: H - 4, "text-anchor": "end", class: "tick" }, "step"),
    );
    for (const s of this.series) {
      const list = this.points[s.key];
      if (!list.length) continue;
      const d = list
        .map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`)
        .join("");
      children.push(h("svg:path", { d, class: `line ${s.cls}` }));
      if (list.length <= 40) {
        for (const [x, y] of list)
          children.push(h("svg:circle", { cx: sx(x), cy: sy(y), r: 2.5, class: `dot ${s.cls}` }));
      }
    }
    const latest = this.series
      .filter((s) => this.points[s.key].length)
      .map((s) => {
        const [x, y] = this.points[s.key].at(-1);
        return `${s.label} ${metric(y)}${this.unit} at step ${x}`;
      })
      .join("; ");
    fill(this.svg, h("svg:title", {}, `${this.title}: ${latest}`), children);
    this.summary.textContent = latest;
    if (this.details.open) this.#renderTable();
  }

  #renderTable() {
    const rows = new Map();
    this.series.forEach((s, i) => {
      for (const [x, y] of this.points[s.key]) {
        if (!rows.has(x)) rows.set(x, new Array(this.series.length).fill(undefined));
        rows.get(x)[i] = y;
      }
    });
    const sorted = [...rows.entries()].sort((a, b) => a[0] - b[0]);
    fill(
      this.tableBody,
      sorted.map(([x, values]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, String(x)),
          values.map((v) => h("td", {}, metric(v))),
        ),
      ),
    );
  }
}
