// Helpers every view uses: building DOM safely, numbers for people, the server's API.
// Everything shown comes from MQTT or the pool: text goes in as text, never as HTML.

export const SVG = "http://www.w3.org/2000/svg";

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fill(tbody, rows, empty) {
  tbody.replaceChildren(...rows);
  if (empty) empty.hidden = rows.length > 0;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i === 0 || n >= 100 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

export function count(n) {
  if (n === null || n === undefined) return "—";
  const units = ["", "K", "M", "G", "T"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return i === 0 ? String(Math.round(n)) : `${n.toFixed(1)}${units[i]}`;
}

export function rate(bps) {
  if (bps === null || bps === undefined) return "—";
  for (const [unit, scale] of [["Gbit/s", 1e9], ["Mbit/s", 1e6], ["kbit/s", 1e3]]) {
    if (bps >= scale) return `${(bps / scale).toFixed(bps >= 10 * scale ? 0 : 1)} ${unit}`;
  }
  return `${Math.round(bps)} bit/s`;
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

export function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return "now";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  return `${Math.round(seconds / 60)} min`;
}

// A plan in a few words: the server adds them (Option.words), as the demo's table and
// the device's log write them.
export function planWords(plan) {
  return plan ? plan.words : "—";
}

export function answerText(top) {
  if (!top) return "—";
  const name = top.label ?? `class ${top.index}`;
  return `${name} (${top.score.toFixed(2)})`;
}

export async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  const doc = await response.json();
  if (!response.ok) throw new Error(doc.error || `${response.status} ${response.statusText}`);
  return doc;
}

// Posts a form; the header tells the server the page sent it (docs/dashboard.md).
export async function postForm(path, form) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST", body: form, headers: { "X-Splitmq-Dashboard": "1" },
    });
  } catch (error) {
    throw new Error(`the dashboard did not answer (${error.message})`);
  }
  let doc;
  try { doc = await response.json(); } catch { doc = {}; }
  if (!response.ok) throw new Error(doc.error || `${response.status} ${response.statusText}`);
  return doc;
}

export function status(node, text, kind = "") {
  node.textContent = text;
  node.className = `status ${kind}`;
}
