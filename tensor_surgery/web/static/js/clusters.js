// Clusters: the open model's tensors (features: statistics and spectrum) or one matrix's rows,
// columns or attention heads, as a Plotly 2-D/3-D scatter (GET/POST /api/clusters). Hover names a
// point; clicking a tensor's point selects it and brings it into view on the canvas. Drawn the first
// time the tab is shown for a model; reset when the model changes.

import { api } from "./api.js";
import { PLOT_CONFIG, plotLayout, purge, react } from "./plot.js";
import { clearError, el, emit, fmtList, fmtNum, groupColor, on, select, setChildren, showError, state } from "./state.js";

const PLOT_ID = "clusters-plot";
const GL_POINTS = 3000; // more 2-D points than this: WebGL instead of one SVG node per point
const COLOURS = {
  tensors: [["type_group", "type group"], ["layer_index", "layer"]],
  parts: [["group", "key/value group (heads)"], ["index", "index"], ["norm", "norm"]],
};

const ui = {};
let gen = 0; // bumps on reset: an answer for an older model or request is dropped
let result = null; // the last answer drawn
let drawnFor = null; // the model path the tab last drew for (auto-draw once per model)

export function initClusters() {
  const root = document.getElementById("tab-clusters");
  ui.mode = el("select", { id: "clusters-mode", "aria-label": "What each point is", onchange: modeChanged },
    el("option", { value: "tensors" }, "each tensor of the model"),
    el("option", { value: "rows" }, "each row of a tensor"),
    el("option", { value: "cols" }, "each column of a tensor"),
    el("option", { value: "heads" }, "each attention head of a tensor"));
  ui.tensor = el("input", { type: "text", id: "clusters-tensor", "aria-label": "Tensor", placeholder: "tensor name",
    list: "clusters-names" });
  ui.useSelected = el("button", { id: "clusters-use-selected", onclick: useSelected, title: "the tensor selected on the canvas" },
    "selected");
  ui.rows = el("input", { type: "text", id: "clusters-rows", "aria-label": "Rows or columns",
    placeholder: "rows: token texts (comma-separated) or #ids like #12,#40; empty: all" });
  ui.match = el("input", { type: "text", id: "clusters-match", "aria-label": "Tensor name filter",
    placeholder: "only tensors matching this regex (optional)" });
  ui.method = el("select", { id: "clusters-method", "aria-label": "Reduction" },
    el("option", { value: "pca" }, "PCA"), el("option", { value: "tsne" }, "t-SNE"));
  ui.dims = el("select", { id: "clusters-dims", "aria-label": "Dimensions" },
    el("option", { value: "2" }, "2-D"), el("option", { value: "3" }, "3-D"));
  ui.colour = el("select", { id: "clusters-colour", "aria-label": "Colour by", onchange: () => result && draw(result) });
  ui.view = el("input", { type: "checkbox", id: "clusters-staged" });
  ui.run = el("button", { class: "primary", id: "clusters-run", onclick: run }, "Draw");
  ui.status = el("p", { class: "muted", id: "clusters-status", "aria-live": "polite" });
  ui.error = el("p", { class: "error-msg", id: "clusters-error", role: "alert" });
  ui.plot = el("div", { id: PLOT_ID, class: "clusters-plot", style: "height: 420px" });
  ui.skipped = el("details", { id: "clusters-skipped", hidden: true });
  ui.tensorRow = el("div", { class: "row" }, ui.tensor, ui.useSelected);
  setChildren(root,
    el("p", { class: "muted" }, "Similar tensors land near each other: each point a tensor (its statistics and spectrum), "
      + "or a row, column or attention head of one matrix, reduced by PCA or t-SNE. Click a tensor's point to select it."),
    el("div", { class: "row" }, ui.mode, ui.method, ui.dims, el("label", {}, "colour ", ui.colour)),
    ui.tensorRow, ui.rows, ui.match,
    el("div", { class: "row" }, ui.run, el("label", {}, ui.view, " staged view")),
    ui.status, ui.error, ui.plot, ui.skipped,
    el("datalist", { id: "clusters-names" }));
  for (const input of [ui.tensor, ui.rows, ui.match]) input.addEventListener("keydown", (e) => { if (e.key === "Enter") run(); });
  modeChanged();
  on("model-switching", reset);
  on("model", reset);
  on("tensors", () => {
    const list = document.getElementById("clusters-names");
    setChildren(list, state.tensors.filter((t) => t.shape.length === 2).slice(0, 5000).map((t) => el("option", { value: t.name })));
    drawOnce();
  });
  on("tab-shown", (tab) => { if (tab === "clusters") drawOnce(); });
}

// The first look at the tab for a model draws its tensors; so does a model opened while it shows.
function drawOnce() {
  if (!state.model || !state.tensors.length || drawnFor === state.model.path) return;
  if (document.getElementById("tab-clusters").hidden) return;
  drawnFor = state.model.path;
  run();
}

function modeChanged() {
  const tensors = ui.mode.value === "tensors";
  ui.tensorRow.hidden = tensors;
  ui.rows.hidden = ui.mode.value !== "rows" && ui.mode.value !== "cols";
  ui.rows.placeholder = ui.mode.value === "cols" ? "columns: ids like 0,5,9; empty: all (sampled past 1,024)"
    : "rows: token texts (comma-separated) or ids like #12,#40; empty: all (sampled past 1,024)";
  ui.match.hidden = !tensors;
  const keep = ui.colour.value;
  setChildren(ui.colour, COLOURS[tensors ? "tensors" : "parts"].map(([v, label]) => el("option", { value: v }, label)));
  if ([...ui.colour.options].some((o) => o.value === keep)) ui.colour.value = keep;
  if (!tensors && !ui.tensor.value) useSelected();
}

function useSelected() {
  if (state.selected) ui.tensor.value = state.selected;
}

function reset() {
  gen++;
  result = null;
  drawnFor = null;
  purge(PLOT_ID);
  ui.status.textContent = "";
  ui.skipped.hidden = true;
  setChildren(ui.skipped);
  ui.run.disabled = false;
  clearError(ui.error);
  // another model's tensor names mean nothing here: back to the map of the whole model
  ui.mode.value = "tensors";
  ui.tensor.value = "";
  ui.rows.value = "";
  modeChanged();
}

// rows/cols box: "#12, #40" or "12,40" are ids; anything else is token texts (rows only)
function choice(text, mode) {
  const parts = text.split(",").map((s) => s.trim()).filter(Boolean);
  if (!parts.length) return {};
  const ids = parts.map((p) => p.replace(/^#/, ""));
  if (ids.every((p) => /^\d+$/.test(p))) return { indices: ids.map(Number) };
  if (mode !== "rows") throw new Error("columns are chosen by index: e.g. 0,5,9");
  return { tokens: parts };
}

async function run() {
  const my = ++gen;
  clearError(ui.error);
  const body = { method: ui.method.value, dims: Number(ui.dims.value), view: ui.view.checked ? "staged" : "base" };
  try {
    if (ui.mode.value === "tensors") {
      if (ui.match.value.trim()) body.match = ui.match.value.trim();
    } else {
      if (!ui.tensor.value.trim()) throw new Error("choose a tensor: type its name or select one on the canvas");
      Object.assign(body, { tensor: ui.tensor.value.trim(), by: ui.mode.value });
      if (ui.mode.value !== "heads") Object.assign(body, choice(ui.rows.value, ui.mode.value));
    }
  } catch (e) {
    showError(e, ui.error);
    return;
  }
  ui.run.disabled = true;
  ui.status.textContent = body.tensor ? "reading the matrix…" : "computing features (once per tensor; later maps reuse them)…";
  try {
    const data = await api("/api/clusters", { method: "POST", body });
    if (my !== gen) return;
    result = data;
    await draw(data);
    if (my !== gen) return;
    const variance = data.method === "pca" && data.explained_variance_ratio
      ? `; variance explained ${data.explained_variance_ratio.map((v) => `${(100 * v).toFixed(1)}%`).join(" + ")}` : "";
    ui.status.textContent = `${fmtNum(data.count)} points (${data.mode === "tensors" ? "tensors" : `${data.by} of ${data.tensor}`}), `
      + `${data.method === "pca" ? "PCA" : "t-SNE"} to ${data.dims}-D${variance}${data.note ? `. ${data.note}` : ""}`;
    showSkipped(data.skipped || []);
  } catch (e) {
    if (my === gen) { showError(e, ui.error); ui.status.textContent = ""; }
  } finally {
    if (my === gen) ui.run.disabled = false;
  }
}

function showSkipped(skipped) {
  ui.skipped.hidden = !skipped.length;
  setChildren(ui.skipped, el("summary", {}, `${skipped.length} tensor(s) not shown`),
    el("ul", {}, skipped.map((s) => el("li", {}, `${s.name}: ${s.reason}`))));
}

function hoverText(p, data) {
  if (data.mode === "tensors") {
    return `${p.label}<br>${fmtList(p.shape)} ${p.dtype} · ${p.type_group} · layer ${p.layer_index}`
      + `<br>std ${fmtNum(p.stats.std)} · kurtosis ${fmtNum(p.stats.kurtosis)} · stable rank ${fmtNum(p.stats.stable_rank)}`;
  }
  return `${p.label} of ${data.tensor}<br>norm ${fmtNum(p.norm)}${p.group === null ? "" : ` · kv group ${p.group}`}`;
}

function trace(points, data, extra) {
  const three = data.dims === 3;
  const axis = (i) => points.map((p) => p.coords[i]);
  const t = {
    type: three ? "scatter3d" : (points.length > GL_POINTS ? "scattergl" : "scatter"), mode: "markers",
    x: axis(0), y: axis(1), text: points.map((p) => hoverText(p, data)), hoverinfo: "text",
    customdata: points.map((p) => (data.mode === "tensors" ? p.id : data.tensor)),
    ...extra,
  };
  if (three) t.z = axis(2);
  return t;
}

async function draw(data) {
  const colour = ui.colour.value;
  const size = data.dims === 3 ? 4 : 8;
  let traces;
  if (colour === "type_group") {
    const groups = new Map();
    for (const p of data.points) (groups.get(p.type_group) || groups.set(p.type_group, []).get(p.type_group)).push(p);
    traces = [...groups].map(([g, pts]) => trace(pts, data, { name: g, marker: { size, color: groupColor(g) } }));
  } else {
    const values = data.points.map((p) => p[colour] ?? -1);
    traces = [trace(data.points, data, {
      name: colour, showlegend: false,
      marker: { size, color: values, colorscale: "Viridis", showscale: true,
        colorbar: { title: { text: colour === "layer_index" ? "layer" : colour }, thickness: 10 } },
    })];
  }
  const base = plotLayout({ margin: { l: 36, r: 8, t: 6, b: 28 }, showlegend: colour === "type_group",
    legend: { orientation: "h", y: -0.12 }, hovermode: "closest", uirevision: `${data.mode}:${data.tensor}` });
  const layout = data.dims === 3
    ? { ...base, scene: { xaxis: { title: "" }, yaxis: { title: "" }, zaxis: { title: "" } } }
    : base;
  await react(PLOT_ID, traces, layout, PLOT_CONFIG);
  const gd = document.getElementById(PLOT_ID);
  if (!gd.dataset.wired) {
    gd.dataset.wired = "1";
    gd.on("plotly_click", (ev) => {
      const name = ev.points && ev.points[0] && ev.points[0].customdata;
      if (!name || !state.byName.has(name)) return;
      select(name);
      emit("reveal", name);
    });
  }
}
