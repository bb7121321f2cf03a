// The Live view: devices, tiers, charts, plan switches and results from the server's
// snapshots (GET /api/events pushes one whenever something changed).
import { timeChart } from "./charts.js";
import {
  ago, answerText, bytes, clock, count, el, fill, ms, planWords, rate,
} from "./common.js";

let snapshot = null;
let offset = 0; // server clock minus this browser's, so ages read right

const $ = (id) => document.getElementById(id);

function now() {
  return Date.now() / 1000 + offset;
}

function statusCell(entry) {
  return el("td", { class: `status ${entry.status}` }, entry.status);
}

function deviceRow(entry, planned) {
  const doc = entry.doc;
  const link = doc?.link ?? {};
  const running = doc?.plan;
  const plannedRow = planned && running && planWords(planned.plan) !== planWords(running)
    ? el("span", { class: "planned" }, `planned: ${planWords(planned.plan)}`) : null;
  const answered = Object.entries(doc?.answered ?? {}).map(([tier, n]) => `${tier} ${n}`).join(", ");
  return el("tr", { dataset: { device: entry.id } },
    el("td", { class: "id" }, entry.id),
    statusCell(entry),
    el("td", {}, doc ? `${doc.model.model} v${doc.model.version}` : "—"),
    el("td", { class: "plan" }, planWords(running), plannedRow),
    el("td", { class: "reason" }, running?.reason ?? "—"),
    el("td", { class: "uplink num" }, rate(link.uplink_bps)),
    el("td", { class: "rtt num" }, link.rtt_ms === null || link.rtt_ms === undefined ? "—" : `${ms(link.rtt_ms)} ms`),
    el("td", { class: "age num" }, link.age_s === null || link.age_s === undefined ? "—" : ago(link.age_s)),
    el("td", { class: "battery num" }, doc?.battery === null || doc?.battery === undefined ? "mains" : `${Math.round(doc.battery * 100)}%`),
    el("td", { class: "num" }, doc?.e2e ? `${ms(doc.e2e.p50_ms)} / ${ms(doc.e2e.p95_ms)} ms` : "—"),
    el("td", { class: "answered" }, answered || "—"),
  );
}

function loadBar(doc) {
  const busy = (doc.in_flight + doc.queued) / doc.threads;
  const bar = el("span", { class: `bar${busy > 1 ? " hot" : ""}`, title: `${Math.round(busy * 100)}% of its threads` },
    el("span", { style: `width: ${Math.min(100, Math.round(busy * 100))}%` }));
  return bar;
}

function tierTable(tier, workers) {
  const online = workers.filter((w) => w.status === "online").length;
  const rows = workers.map((w) => {
    const d = w.doc;
    return el("tr", { dataset: { worker: w.id, tier } },
      el("td", { class: "id" }, w.id), statusCell(w),
      el("td", { class: "threads num" }, d ? d.threads : "—"),
      el("td", { class: "in-flight num" }, d ? d.in_flight : "—"),
      el("td", { class: "queued num" }, d ? d.queued : "—"),
      el("td", {}, d && w.status === "online" ? loadBar(d) : ""),
      el("td", { class: "num" }, d ? d.rps.toFixed(1) : "—"),
      el("td", { class: "num" }, d ? count(d.served) : "—"),
      el("td", { class: "num" }, d ? count(d.answered) : "—"),
    );
  });
  return el("div", { class: "tier", dataset: { tier } },
    el("h3", {}, `${tier}: `, el("span", { class: "workers-online" }, String(online)), ` of ${workers.length} workers online`),
    el("table", {},
      el("thead", {}, el("tr", {}, ...["worker", "status", "threads", "in flight", "queued", "load", "req/s", "served", "answered"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
}

function renderTiers(s) {
  const tiers = ["edge", "cloud"].map((tier) => tierTable(tier, s.workers.filter((w) => w.role === tier)));
  $("tiers").replaceChildren(...tiers);
  const planners = s.planners.map((p) => el("p", { class: "planner", dataset: { planner: p.id } },
    "planner ", el("b", {}, p.id), " ", el("span", { class: p.status }, p.status),
    p.doc ? ` · plans ${p.doc.devices} device(s), ${p.doc.plans} plan(s) published` +
      (p.doc.broker_dropped ? ` · broker dropped ${p.doc.broker_dropped} message(s)` : "") : ""));
  $("planners").replaceChildren(...(planners.length ? planners : [el("p", { class: "empty" }, "No planner has reported.")]));
}

function renderSwitches(s) {
  const rows = [...s.switches].reverse().slice(0, 50).map((sw) => el("tr", { dataset: { device: sw.device } },
    el("td", {}, clock(sw.t)), el("td", { class: "id" }, sw.device),
    el("td", { class: "change" }, `${planWords(sw.from)} → ${planWords(sw.to)}`),
    el("td", { class: "reason" }, sw.reason)));
  fill($("switches").tBodies[0], rows, $("switches-empty"));
}

// The answer whatever the task: the top-1 class, a detector's boxes (how many, the best),
// or a raw task's outputs (names and shapes).
function resultText(r) {
  if (r.top) return answerText(r.top);
  if (r.outputs.length) return r.outputs.map((o) => `${o.name} ${o.shape.join("×")}`).join(", ");
  if (!r.boxes) return "no boxes";
  return `${r.boxes} box${r.boxes === 1 ? "" : "es"}, best ${answerText(r.best_box)}`;
}

function renderResults(s) {
  const rows = [...s.results].reverse().slice(0, 25).map((r) => el("tr", { dataset: { device: r.device } },
    el("td", {}, clock(r.t)), el("td", { class: "id" }, r.device), el("td", {}, `${r.model} v${r.version}`),
    el("td", { class: "answer" }, resultText(r)), el("td", { class: "tier" }, r.tier),
    el("td", { class: "num" }, ms(r.latency_ms)), el("td", { class: "num" }, bytes(r.bytes)),
    el("td", { class: "wrap" }, r.hops.map((h) => `${h.tier} ${ms(h.ms)}`).join(" · "))));
  fill($("results").tBodies[0], rows, $("results-empty"));
}

function renderProblems(s) {
  const items = [
    ...s.errors.slice(-10).map((e) => el("li", {}, `${clock(e.seen)} ${e.device}: ${e.code}: ${e.message}`)),
    ...s.rejections.map((r) => el("li", { class: "rejected" }, `${clock(r.seen)} rejected ${r.kind} on ${r.topic}: ${r.why}`)),
  ];
  $("problem-list").replaceChildren(...items);
  $("problems").hidden = items.length === 0;
}

function renderCharts(s) {
  const keys = [...new Set(s.results.map((r) => r.device))].sort();
  const t = now();
  timeChart($("latency-chart"), s.results.map((r) => ({ t: r.t, key: r.device, y: r.latency_ms })),
    { now: t, keys, format: (v) => (v >= 10 ? count(v) : String(Number(v.toPrecision(2)))) });
  timeChart($("bytes-chart"), s.results.map((r) => ({ t: r.t, key: r.device, y: r.bytes })),
    { now: t, keys, format: bytes });
}

export function render(s) {
  snapshot = s;
  offset = s.now - Date.now() / 1000;
  const conn = $("conn");
  conn.textContent = s.connected ? "broker connected" : "broker disconnected";
  conn.className = `pill ${s.connected ? "ok" : "bad"}`;
  const planned = new Map(s.plans.map((p) => [`${p.device}/${p.model}`, p]));
  const devices = s.devices.map((d) => deviceRow(d, planned.get(`${d.id}/${d.doc?.model.model}`)));
  fill($("devices").tBodies[0], devices, $("devices-empty"));
  renderTiers(s);
  renderSwitches(s);
  renderResults(s);
  renderProblems(s);
  renderCharts(s);
}

export function start() {
  const events = new EventSource("/api/events");
  events.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  events.addEventListener("error", () => {
    const conn = $("conn");
    conn.textContent = "dashboard unreachable";
    conn.className = "pill bad";
  });
  setInterval(() => snapshot && renderCharts(snapshot), 1000); // the time axis moves on
}
