// Boot: start every panel, then load the model; keep the page alive on any error. Panels do not
// import each other: they talk through the events listed in state.js.

import { initCanvas } from "./canvas.js";
import { initEditor } from "./editor.js";
import { initEdits } from "./edits.js";
import { initFilter } from "./filter.js";
import { initFocus } from "./focus.js";
import { initHeader } from "./header.js";
import { initHexView } from "./hexview.js";
import { initInvestigate } from "./investigate.js";
import { initLive } from "./live.js";
import { loadModel } from "./model.js";
import { initPatches } from "./patches.js";
import { initRecovery } from "./recovery.js";
import { emit, select, showError, state } from "./state.js";
import { initTransplant } from "./transplant.js";
import { initDiff } from "./diff.js";
import { initPacks } from "./packs.js";
import { initSteer } from "./steer.js";
import { initClusters } from "./clusters.js";
import { initAnalysis } from "./analysis.js";

window.addEventListener("error", (e) => showError(e.error || new Error(e.message)));
window.addEventListener("unhandledrejection", (e) => showError(e.reason));

// The sidebar's tabs, as the WAI-ARIA tabs pattern has them: one tab in the Tab order (the
// selected one), arrow keys move between tabs and show them, Home/End go to the first/last.
function initTabs() {
  const tabs = [...document.querySelectorAll('.tabs [role="tab"]')];
  const show = (tab, focus = false) => {
    tabs.forEach((t) => {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
    });
    document.querySelectorAll(".tab-panel").forEach((p) => { p.hidden = p.id !== tab.getAttribute("aria-controls"); });
    if (focus) tab.focus();
    emit("tab-shown", tab.dataset.tab);
  };
  tabs.forEach((tab, i) => {
    tab.id = `tab-btn-${tab.dataset.tab}`;
    tab.setAttribute("aria-controls", `tab-${tab.dataset.tab}`);
    document.getElementById(`tab-${tab.dataset.tab}`).setAttribute("aria-labelledby", tab.id);
    tab.tabIndex = tab.getAttribute("aria-selected") === "true" ? 0 : -1;
    tab.addEventListener("click", () => show(tab));
    tab.addEventListener("keydown", (e) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (to === undefined) return;
      e.preventDefault();
      show(tabs[(to + tabs.length) % tabs.length], true);
    });
  });
}

initTabs();
const canvasView = initCanvas();
initFocus();
initEditor();
initHexView();
initEdits();
initPatches();
initFilter();
initHeader();
initRecovery();
initLive();
initInvestigate();
initTransplant();
initDiff();
initPacks();
initSteer();
initClusters();
initAnalysis();
loadModel();
window.__ts = { state, select, canvas: canvasView }; // handy in the console and for browser tests
