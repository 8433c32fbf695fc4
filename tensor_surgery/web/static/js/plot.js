// Plotly loads asynchronously (it is 3.6 MB of script and the canvas never needs it, so the page
// does not wait for it); every plot call waits for it instead.
//
// A plot drawn while its pane is hidden (a background tab, a collapsed dock) gets Plotly's default
// 700 px width and keeps it until the window is resized. Every plot drawn through `react` is
// watched with a ResizeObserver and resized whenever its box changes, showing a pane included.

import { cssVar } from "./state.js";

const script = document.getElementById("plotly-js");

export const plotlyReady = window.Plotly
  ? Promise.resolve(window.Plotly)
  : new Promise((resolve, reject) => {
    script.addEventListener("load", () => resolve(window.Plotly), { once: true });
    script.addEventListener("error", () => reject(new Error("plotly.min.js could not be loaded from this server")), { once: true });
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
  const Plotly = await plotlyReady;
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
