// The Models view: the pool, one model's cuts as a chart, an image run through a split,
// and uploads into the pool.
import { cutChart } from "./charts.js";
import { answerText, bytes, count, el, fill, getJSON, ms, postForm, status } from "./common.js";

const $ = (id) => document.getElementById(id);
let maxUpload = Infinity;
let model = null; // the detail of the model shown

export async function loadPool(select) {
  let listing;
  try {
    listing = await getJSON("/api/models");
  } catch (error) {
    status($("upload-status"), `cannot list the pool: ${error.message}`, "error");
    return;
  }
  maxUpload = listing.max_upload;
  $("pool-root").textContent = listing.pool;
  const rows = listing.models.map((m) => el("tr", {
    class: `clickable${model && model.ref === m.ref ? " selected" : ""}`,
    dataset: { model: m.ref }, onclick: () => show(m.ref),
  },
  el("td", { class: "id" }, `${m.name} v${m.version}`), el("td", { class: "num" }, m.cuts),
  el("td", { class: "num" }, bytes(m.bytes)), el("td", {}, m.images ? "yes" : "no"),
  el("td", {}, m.calibrated ? "yes" : "no"), el("td", { class: "wrap" }, m.source)));
  fill($("pool").tBodies[0], rows, $("pool-empty"));
  const wanted = select ?? model?.ref ?? listing.models[0]?.ref;
  if (wanted && (!model || wanted !== model.ref)) await show(wanted);
}

async function show(ref) {
  try {
    model = await getJSON(`/api/models/${encodeURIComponent(ref)}`);
  } catch (error) {
    status($("run-status"), error.message, "error");
    return;
  }
  for (const row of $("pool").tBodies[0].rows) row.classList.toggle("selected", row.dataset.model === ref);
  $("model-card").hidden = false;
  $("model-title").textContent = `${model.name} v${model.version}: ${model.cuts.length} cuts ` +
    `(input ${model.input.name} ${JSON.stringify(model.input.shape)}, ${bytes(model.input.bytes)})`;
  const cuts = $("run-cut");
  cuts.replaceChildren(...model.cuts.map((c) => el("option", { value: c.index },
    `${c.index}: ${c.name} · ${bytes(c.bytes)} · ${count(c.macs_before)} MACs before` +
    (c.index === model.cuts.length - 1 ? " (device-only)" : ""))));
  cuts.value = String(Math.min(model.cuts.length - 1, Math.floor(model.cuts.length / 3)));
  pickCut(Number(cuts.value));
  status($("run-status"), model.images ? "" : "This model has no image preprocessing: upload it with a mean and std to run images.", model.images ? "" : "error");
  $("run-result").replaceChildren();
}

function pickCut(index) {
  $("run-cut").value = String(index);
  const last = index === model.cuts.length - 1;
  const names = last ? ["raw"] : [...(index === 0 ? model.input_codecs : []), ...model.codecs];
  const codec = $("run-codec");
  const before = codec.value;
  codec.replaceChildren(...names.map((name) => el("option", { value: name }, last ? "nothing is sent" : name)));
  codec.value = names.includes(before) ? before : (names.includes("int8") ? "int8" : names[0]);
  cutChart($("cut-chart"), model.cuts, { selected: index, onpick: pickCut });
}

function showAnswer(r) {
  const sent = r.sent_bytes === null
    ? "nothing: the device answers alone"
    : `${bytes(r.sent_bytes)} (${r.codec} at cut ${r.cut}, ${r.tensor.name} ${JSON.stringify(r.tensor.shape)}: ` +
      `${bytes(r.tensor.bytes)} as fp32, the input is ${bytes(r.input_bytes)})`;
  const times = Object.entries(r.ms).map(([k, v]) => `${k} ${ms(v)} ms`).join(" · ");
  const calibrated = r.calibrated
    ? `calibrated: ${bytes(r.calibrated.bytes)} and top-1 agreement ${r.calibrated.agreement} on ${r.calibrated.samples} held-out samples`
    : "";
  $("run-result").replaceChildren(el("div", { class: "answer" },
    el("div", {},
      el("div", { class: "top1", id: "run-top1" }, answerText(r.top[0])),
      el("ol", { id: "run-top" }, r.top.map((t) => el("li", {}, answerText(t)))),
      el("p", { id: "run-agrees" }, r.agrees ? "same top-1 as the unsplit model"
        : `the unsplit model says ${answerText(r.unsplit[0])}`)),
    el("div", {},
      el("p", {}, "sent: ", el("b", { id: "run-bytes", dataset: { bytes: r.sent_bytes ?? 0 } }, sent)),
      el("p", {}, `answered by ${r.output} · ${times}`),
      el("p", {}, calibrated))));
}

async function run(event) {
  event.preventDefault();
  const form = event.target;
  const data = new FormData(form);
  data.set("model", model.ref);
  const button = form.querySelector("button");
  button.disabled = true;
  status($("run-status"), "running…");
  try {
    showAnswer(await postForm("/api/run", data));
    status($("run-status"), "");
  } catch (error) {
    $("run-result").replaceChildren();
    status($("run-status"), error.message, "error");
  } finally {
    button.disabled = false;
  }
}

async function upload(event) {
  event.preventDefault();
  const form = event.target;
  const file = form.elements.model.files[0];
  if (file && file.size > maxUpload) {
    status($("upload-status"), `${file.name} is ${bytes(file.size)}, over the dashboard's limit of ${bytes(maxUpload)} (splitmq dashboard --max-upload)`, "error");
    return;
  }
  const button = form.querySelector("button");
  button.disabled = true;
  status($("upload-status"), "uploading and finding its cuts…");
  try {
    const added = await postForm("/api/models", new FormData(form));
    status($("upload-status"), added.new
      ? `added ${added.name} v${added.version}: ${added.cuts} cuts`
      : `${added.name} v${added.version} is this very file already`, "ok");
    await loadPool(added.ref);
  } catch (error) {
    status($("upload-status"), error.message, "error");
  } finally {
    button.disabled = false;
  }
}

export function start() {
  $("run-form").addEventListener("submit", run);
  $("run-cut").addEventListener("change", (event) => pickCut(Number(event.target.value)));
  $("upload-form").addEventListener("submit", upload);
}
