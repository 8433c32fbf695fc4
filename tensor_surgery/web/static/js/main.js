// Boot: load the model and its tensors, start every panel, keep the page alive on any error.

import { api } from "./api.js";
import { initCanvas } from "./canvas.js";
import { initEdits, refresh as refreshEdits } from "./edits.js";
import { initFilter } from "./filter.js";
import { initFocus } from "./focus.js";
import { initHeader } from "./header.js";
import { initInvestigate } from "./investigate.js";
import { initLive } from "./live.js";
import { initPatches, refresh as refreshPatches } from "./patches.js";
import { emit, on, select, showError, state } from "./state.js";

window.addEventListener("error", (e) => showError(e.error || new Error(e.message)));
window.addEventListener("unhandledrejection", (e) => showError(e.reason));

function initTabs() {
  const tabs = document.querySelectorAll('.tabs [role="tab"]');
  tabs.forEach((tab) => tab.addEventListener("click", () => {
    tabs.forEach((t) => t.setAttribute("aria-selected", String(t === tab)));
    document.querySelectorAll(".tab-panel").forEach((p) => { p.hidden = p.id !== `tab-${tab.dataset.tab}`; });
  }));
}

export async function loadModel() {
  try {
    state.model = await api("/api/model");
  } catch (e) {
    showError(e);
    return;
  }
  state.tensors = await api("/api/tensors");
  state.byName = new Map(state.tensors.map((t) => [t.name, t]));
  state.selected = null;
  emit("model", state.model);
  emit("tensors", state.tensors);
  await Promise.all([refreshEdits(), refreshPatches()]);
  const m = /^#tensor=(.+)$/.exec(location.hash);
  if (m) {
    const name = decodeURIComponent(m[1]);
    if (state.byName.has(name)) { select(name); emit("reveal", name); }
  }
}

initTabs();
const canvasView = initCanvas();
initFocus();
initEdits();
initPatches();
initFilter();
initHeader(loadModel);
initLive();
initInvestigate();
loadModel();
window.__ts = { state, select, canvas: canvasView }; // handy in the console and for browser tests
