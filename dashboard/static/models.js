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
  $("model-title").textContent = `${model.name} v${model.version} (${model.task}): ${model.cuts.length} cuts ` +
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

const SPLIT = "rgb(229, 72, 77)"; // the split's boxes, solid
const UNSPLIT = "rgb(245, 165, 36)"; // the unsplit model's, dashed
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "es"}`;

function boxText(b) {
  return `${answerText(b)} at [${b.image.map((v) => Math.round(v)).join(", ")}]`;
}

// The answer as the model's task gives it: the top-5 classes, boxes drawn on the image,
// or the raw output tensors' summaries; and how it compares with the unsplit model's.
function answerPart(r, image) {
  if (r.task === "detect") {
    const best = r.boxes.reduce((a, b) => (a && a.score >= b.score ? a : b), null);
    const theirs = r.unsplit.boxes.length;
    return el("div", {},
      el("div", { class: "top1", id: "run-top1" },
        best ? `${plural(r.boxes.length, "box")}, best ${answerText(best)}` : "no boxes"),
      el("ol", { id: "run-boxes" }, r.boxes.map((b) => el("li", {}, boxText(b)))),
      el("p", { id: "run-agrees", dataset: { agreement: r.agreement } }, r.agrees
        ? `the same boxes as the unsplit model (${theirs ? plural(theirs, "box") : "none"})`
        : `${Math.round(r.agreement * 100)}% of the boxes match the unsplit model's ` +
          `${plural(theirs, "box")} (dashed)`),
      picture(r, image));
  }
  if (r.task === "raw") {
    const number = (v) => el("td", { class: "num" }, Number(v.toPrecision(4)));
    return el("div", {},
      el("table", { id: "run-outputs" },
        el("thead", {}, el("tr", {}, ...["output", "shape", "dtype", "min", "max", "mean"].map((h) => el("th", {}, h)))),
        el("tbody", {}, r.outputs.map((o) => el("tr", {},
          el("td", { class: "name" }, o.name), el("td", { class: "shape" }, JSON.stringify(o.shape)),
          el("td", {}, o.dtype), number(o.min), number(o.max), number(o.mean))))),
      el("p", { id: "run-agrees" }, r.agrees ? "the same tensors as the unsplit model (within 1%)"
        : "the tensors differ from the unsplit model's by more than 1%"));
  }
  return el("div", {},
    el("div", { class: "top1", id: "run-top1" }, answerText(r.top[0])),
    el("ol", { id: "run-top" }, r.top.map((t) => el("li", {}, answerText(t)))),
    el("p", { id: "run-agrees" }, r.agrees ? "same top-1 as the unsplit model"
      : `the unsplit model says ${answerText(r.unsplit.top[0])}`));
}

// The image with the boxes drawn over it, in its own pixels: the canvas is the image's
// size and the style scales both alike. The unsplit model's boxes are dashed, the split's
// solid on top. The image is shown as the server read it (no EXIF rotation).
function picture(r, image) {
  const img = el("img", { src: URL.createObjectURL(image), alt: image.name });
  img.addEventListener("load", () => URL.revokeObjectURL(img.src));
  const canvas = el("canvas", { id: "run-canvas", width: r.image.width, height: r.image.height });
  const ctx = canvas.getContext("2d");
  const line = Math.max(2, Math.round(Math.max(r.image.width, r.image.height) / 250));
  ctx.lineWidth = line;
  ctx.font = `${6 * line}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  for (const [boxes, color, dash] of [[r.unsplit.boxes, UNSPLIT, [3 * line, 2 * line]], [r.boxes, SPLIT, []]]) {
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.setLineDash(dash);
    for (const b of boxes) {
      const [x0, y0, x1, y1] = b.image;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      const above = y0 >= 7 * line; // else the label goes inside, under the top edge
      if (!dash.length) ctx.fillText(answerText(b), x0 + line, above ? y0 - line : y0 + 7 * line);
    }
  }
  return el("div", { class: "picture" }, img, canvas);
}

function showAnswer(r, image) {
  const sent = r.sent_bytes === null
    ? "nothing: the device answers alone"
    : `${bytes(r.sent_bytes)} (${r.codec} at cut ${r.cut}, ${r.tensor.name} ${JSON.stringify(r.tensor.shape)}: ` +
      `${bytes(r.tensor.bytes)} as fp32, the input is ${bytes(r.input_bytes)})`;
  const times = Object.entries(r.ms).map(([k, v]) => `${k} ${ms(v)} ms`).join(" · ");
  const measure = r.task === "classify" ? "top-1 agreement" : "agreement";
  const calibrated = r.calibrated
    ? `calibrated: ${bytes(r.calibrated.bytes)} and ${measure} ${r.calibrated.agreement} on ${r.calibrated.samples} held-out samples`
    : "";
  $("run-result").replaceChildren(el("div", { class: "answer" },
    answerPart(r, image),
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
  const image = form.elements.image.files[0]; // the one this answer is about
  const button = form.querySelector("button");
  button.disabled = true;
  status($("run-status"), "running…");
  try {
    showAnswer(await postForm("/api/run", data), image);
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
