// The page: two views, Live (pushed by the server) and Models (the pool, on demand).
// The address's #models or #live opens that view, so a link or a screenshot can name one.
import * as live from "./live.js";
import * as models from "./models.js";

function open(view) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.view === view);
  }
  document.getElementById("view-live").hidden = view !== "live";
  document.getElementById("view-models").hidden = view !== "models";
  if (view === "models") models.loadPool();
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => { window.location.hash = tab.dataset.view; });
}
window.addEventListener("hashchange", () => open(window.location.hash.slice(1) || "live"));

live.start();
models.start();
open(window.location.hash === "#models" ? "models" : "live");
