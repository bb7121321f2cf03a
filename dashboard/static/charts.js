// Two small inline-SVG charts: values over time per device, and a model's cuts.
import { bytes, count, svg } from "./common.js";

const COLORS = ["#2f5dd7", "#d9480f", "#1a7f37", "#8e44ad", "#b26a00", "#0b7285", "#c2255c"];
const PAD = { left: 52, right: 14, top: 14, bottom: 26 };

function size(node) {
  const box = node.viewBox.baseVal;
  return { width: box.width, height: box.height };
}

// A round top for an axis: 1, 2 or 5 times a power of ten, at least `max`.
function niceTop(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 5, 10].map((f) => f * power).find((top) => top >= max);
}

export function colorOf(name, names) {
  return COLORS[names.indexOf(name) % COLORS.length];
}

// points: [{t, key, y}]; the last `windowS` seconds up to `now`, one line per key.
export function timeChart(node, points, { now, windowS = 120, format = count, keys }) {
  const { width, height } = size(node);
  const x0 = PAD.left, x1 = width - PAD.right, y0 = height - PAD.bottom, y1 = PAD.top + 12;
  const since = now - windowS;
  const shown = points.filter((p) => p.t >= since && p.y !== null && p.y !== undefined);
  const top = niceTop(Math.max(0, ...shown.map((p) => p.y)));
  const x = (t) => x0 + ((t - since) / windowS) * (x1 - x0);
  const y = (v) => y0 - (v / top) * (y0 - y1);
  const parts = [];
  for (const f of [0, 0.5, 1]) {
    parts.push(svg("line", { class: f ? "grid-line" : "axis", x1: x0, x2: x1, y1: y(top * f), y2: y(top * f) }));
    parts.push(svg("text", { x: x0 - 6, y: y(top * f) + 4, "text-anchor": "end" }, format(top * f)));
  }
  for (const s of [windowS, windowS / 2, 0]) {
    parts.push(svg("text", { x: x(now - s), y: height - 8, "text-anchor": "middle" }, s ? `-${s} s` : "now"));
  }
  keys.forEach((key, i) => {
    const mine = shown.filter((p) => p.key === key).sort((a, b) => a.t - b.t);
    if (!mine.length) return;
    const color = COLORS[i % COLORS.length];
    parts.push(svg("polyline", {
      fill: "none", stroke: color, "stroke-width": 1.5, "stroke-opacity": 0.6,
      points: mine.map((p) => `${x(p.t).toFixed(1)},${y(p.y).toFixed(1)}`).join(" "),
    }));
    for (const p of mine) {
      parts.push(svg("circle", { class: "point", cx: x(p.t).toFixed(1), cy: y(p.y).toFixed(1), r: 2.5, fill: color, "data-key": key }));
    }
  });
  let lx = x0 + 4; // the legend, in a row above the plot
  keys.forEach((key, i) => {
    parts.push(svg("rect", { x: lx, y: 3, width: 9, height: 9, fill: COLORS[i % COLORS.length] }));
    parts.push(svg("text", { class: "legend-key", x: lx + 13, y: 11 }, key));
    lx += 13 + 7 * key.length + 16;
  });
  if (!shown.length) {
    parts.push(svg("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2, "text-anchor": "middle" }, "no results in the last two minutes"));
  }
  node.replaceChildren(...parts);
}

// cuts: the cut table (index, name, shape, bytes, macs_before, macs_after); one bar per
// cut for the bytes that cross it (log scale), a line for the MACs run before it.
export function cutChart(node, cuts, { selected, onpick }) {
  const { width, height } = size(node);
  const x0 = PAD.left, x1 = width - 44, y0 = height - PAD.bottom - 8, y1 = PAD.top;
  const most = Math.max(...cuts.map((c) => c.bytes), 1);
  const lo = Math.floor(Math.log10(Math.max(1, Math.min(...cuts.map((c) => c.bytes)))));
  const hi = Math.ceil(Math.log10(most)) || 1;
  const total = Math.max(1, ...cuts.map((c) => c.macs_before + c.macs_after));
  const step = (x1 - x0) / cuts.length;
  const yBytes = (b) => y0 - ((Math.log10(Math.max(b, 1)) - lo) / Math.max(hi - lo, 1)) * (y0 - y1);
  const yMacs = (m) => y0 - (m / total) * (y0 - y1);
  const parts = [];
  for (let p = lo; p <= hi; p += 1) {
    parts.push(svg("line", { class: p === lo ? "axis" : "grid-line", x1: x0, x2: x1, y1: yBytes(10 ** p), y2: yBytes(10 ** p) }));
    parts.push(svg("text", { x: x0 - 6, y: yBytes(10 ** p) + 4, "text-anchor": "end" }, bytes(10 ** p)));
  }
  for (const f of [0, 0.5, 1]) {
    parts.push(svg("text", { x: x1 + 6, y: yMacs(total * f) + 4 }, `${Math.round(f * 100)}%`));
  }
  const label = Math.ceil(cuts.length / 24);
  cuts.forEach((c, i) => {
    const bx = x0 + i * step + step * 0.15;
    const top = yBytes(c.bytes);
    const bar = svg("rect", {
      class: `cut-bar${c.index === selected ? " selected" : ""}`, x: bx.toFixed(1), y: top.toFixed(1),
      width: Math.max(1, step * 0.7).toFixed(1), height: Math.max(1, y0 - top).toFixed(1), "data-cut": c.index,
    }, svg("title", {}, `cut ${c.index}: ${c.name} ${JSON.stringify(c.shape)}\n${bytes(c.bytes)} as fp32; ` +
      `${count(c.macs_before)} MACs before, ${count(c.macs_after)} after`));
    bar.addEventListener("click", () => onpick(c.index));
    parts.push(bar);
    if (i % label === 0) {
      parts.push(svg("text", { x: (bx + step * 0.35).toFixed(1), y: y0 + 16, "text-anchor": "middle" }, c.index));
    }
  });
  parts.push(svg("polyline", {
    class: "macs-line",
    points: cuts.map((c, i) => `${(x0 + (i + 0.5) * step).toFixed(1)},${yMacs(c.macs_before).toFixed(1)}`).join(" "),
  }));
  parts.push(svg("text", { x: (x0 + x1) / 2, y: height - 4, "text-anchor": "middle" }, "cut"));
  node.replaceChildren(...parts);
}
