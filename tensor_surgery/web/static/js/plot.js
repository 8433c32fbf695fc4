// Plotly (3.6 MB of script) is loaded only when a plot is first drawn, or once the canvas has drawn
// its first frame and the page is idle, never at start: running it takes the main thread for 0.5-2 s
// on a first visit (no code cache), and a page that loaded it with the document answered
// GET /api/model, then sat in Plotly before asking for the listing, so the canvas came up to 2 s
// later (measured on a 92k-tensor model, bench/ui.py). Every plot call waits for it.
//
// A plot drawn while its pane is hidden (a background tab, a collapsed dock) gets Plotly's default
// 700 px width and keeps it until the window is resized. Every plot drawn through `react` is
// watched with a ResizeObserver and resized whenever its box changes, showing a pane included.

import { cssVar, on } from "./state.js";

export const PLOTLY_SRC = "/vendor/plotly.min.js";

let loading = null;

// Resolves with window.Plotly; adds the <script> the first time it is called.
export function plotlyReady() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = PLOTLY_SRC;
      script.id = "plotly-js";
      script.async = true;
      script.addEventListener("load", () => resolve(window.Plotly), { once: true });
      script.addEventListener("error", () => {
        loading = null; // a later plot tries again
        script.remove();
        reject(new Error("plotly.min.js could not be loaded from this server"));
      }, { once: true });
      document.head.append(script);
    });
  }
  return loading;
}

// After the first canvas frame, load Plotly while the page is idle, so that the first plot a user
// asks for does not wait for it.
on("canvas-rendered", () => {
  const warm = () => plotlyReady().catch(() => {}); // a plot that needs it reports the failure
  if (typeof requestIdleCallback === "function") requestIdleCallback(warm, { timeout: 2000 });
  else setTimeout(warm, 200);
});

const watched = new WeakSet();
const sizes = new WeakMap(); // element -> "w×h" Plotly last laid out at
const observer = typeof ResizeObserver === "function" ? new ResizeObserver((entries) => {
  for (const entry of entries) {
    const gd = entry.target;
    const { width, height } = entry.contentRect;
    const key = `${Math.round(width)}×${Math.round(height)}`;
    if (!width || !height || sizes.get(gd) === key || !gd._fullLayout || !window.Plotly) continue;
    sizes.set(gd, key);
    window.Plotly.Plots.resize(gd);
  }
}) : null;

function resolve(el) {
  return typeof el === "string" ? document.getElementById(el) : el;
}

export async function react(el, data, layout, config) {
  const Plotly = await plotlyReady();
  const gd = resolve(el);
  const out = await Plotly.react(gd, data, layout, config);
  if (observer && !watched.has(gd)) {
    watched.add(gd);
    observer.observe(gd);
  }
  const r = gd.getBoundingClientRect();
  sizes.set(gd, `${Math.round(r.width)}×${Math.round(r.height)}`);
  return out;
}

export function purge(el) {
  const gd = resolve(el);
  if (gd && window.Plotly) window.Plotly.purge(gd);
}

export const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage"] };

export function plotLayout(extra = {}) {
  const text = cssVar("--text"), grid = cssVar("--line");
  const axis = (a = {}) => ({ gridcolor: grid, zerolinecolor: grid, color: text, ...a });
  return {
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    font: { color: text, size: 11 }, margin: { l: 44, r: 8, t: 6, b: 30 },
    ...extra,
    xaxis: axis(extra.xaxis), yaxis: axis(extra.yaxis),
  };
}
