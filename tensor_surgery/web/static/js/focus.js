// Focus view: one tensor's facts, statistics, histogram, a slice as a heatmap, the hex view and the
// edit controls. Slicing works for any rank: two viewed dimensions with start/end/step, a fixed
// index for each other dimension.

//
// Focus owns what it shows (the tensor, the slice, the heatmap selection) and tells the editor and
// the hex view about it with events ("focus-tensor", "slice-loaded", "cell-selected"); they never
// read this module's state.

import { api, tensorPath } from "./api.js";
import { bandOf } from "./bands.js";
import { PLOT_CONFIG, plotLayout, purge, react } from "./plot.js";
import { defaultSlice as sliceFor, fullIndex as indexIn, sliceParams as paramsOf } from "./slicing.js";
import { clearError, cssVar, el, emit, fmtBytes, fmtList, fmtNum, groupColor, on, setChildren, setView, showError, state } from "./state.js";

const STAT_KEYS = ["min", "max", "mean", "std", "abs_max", "l2_norm", "sparsity", "nan_count", "inf_count", "distinct_values"];

let gen = 0; // bumps when the selected tensor (or the model) changes: late answers are dropped
const focus = {
  tensor: null,
  slice: null, // {row, col, ranges: {dim: [start, end, step]}, idx: {dim: i}}
  data: null, // last slice answer
  sel: null, // {r0, r1, c0, c1} in tensor indices of the viewed dims
  anchor: null,
};

const sliceParams = (s = focus.slice, rect = null) => paramsOf(s, rect);
const defaultSlice = (shape) => sliceFor(shape, state.prefs.window);
const fullIndex = (r, c, s = focus.slice) => indexIn(focus.tensor.shape, s, r, c);

export function initFocus() {
  const root = document.getElementById("focus-main");
  reset(root);
  on("select", (name) => show(root, name));
  on("model-switching", () => { gen++; }); // answers about the old model are dropped from here on
  on("model", () => reset(root));
  on("staged", (names) => {
    if (!focus.tensor || (names && !names.includes(focus.tensor.name))) return;
    const count = document.getElementById("focus-staged-count");
    if (count) count.textContent = String(state.staged.get(focus.tensor.name) || 0);
    if (state.view === "staged") refresh(); // the base view does not change with staged edits
  });
  on("view", (v) => {
    document.querySelectorAll("#view-toggle button").forEach((b) => b.setAttribute("aria-pressed", String(b.textContent === v)));
    if (focus.tensor) refresh();
  });
  on("theme", redrawPlots); // Plotly keeps the colours it was drawn with
}

// Nothing selected (at start, and whenever the model changes): the hint, no plots, no requests.
function reset(root) {
  gen++;
  focus.tensor = null;
  focus.slice = focus.data = focus.sel = focus.anchor = focus.overview = null;
  for (const id of ["heatmap", "hist-plot", "rank-plot"]) purge(id);
  setChildren(root, el("p", { class: "empty-state", id: "focus-empty" },
    state.model ? `Select a tensor of ${state.model.name} on the canvas, or find one with the filter below.`
      : "Select a tensor on the canvas, or find one with the filter below."),
    state.model && state.model.gguf ? ggufSection(state.model) : null);
  emit("focus-tensor", null);
}

// A GGUF model's key-value metadata: the facts people look for first, then every key (large
// arrays such as the token list come summarized: their count and first items).
function ggufSection(m) {
  const g = m.gguf;
  const rows = Object.entries(g.kv).map(([k, v]) => el("tr", {},
    el("td", {}, k), el("td", { class: "muted" }, v.count === undefined ? v.type : `${v.item_type}[${fmtNum(v.count)}]`),
    el("td", {}, v.count === undefined ? String(v.value) : v.head.map((x) => (typeof x === "string" ? JSON.stringify(x) : JSON.stringify(x))).join(", ") + (v.truncated ? ", …" : ""))));
  return el("div", { class: "section", id: "gguf-meta" },
    el("h4", {}, "GGUF file"),
    el("dl", { class: "kv" },
      ...kv("architecture", g.architecture ?? "-"), ...kv("context length", num(g.context_length)),
      ...kv("layers", num(g.block_count)), ...kv("embedding", num(g.embedding_length)),
      ...kv("tokenizer", `${g.tokenizer ?? "-"}${g.vocab_size ? ` · ${fmtNum(g.vocab_size)} tokens` : ""}`),
      ...kv("GGML types", Object.entries(g.ggml_types).map(([k, n]) => `${k}×${n}`).join(", ")),
      ...kv("version", `GGUF v${g.version} · alignment ${g.alignment} · data at ${fmtNum(g.data_offset)}`)),
    el("details", {}, el("summary", {}, `metadata (${Object.keys(g.kv).length} keys)`),
      el("table", { class: "gguf-kv" }, ...rows)));
}

function num(v) {
  return typeof v === "number" ? fmtNum(v) : v ?? "-";
}

// A GGUF tensor's type line: how it is stored, and whether value edits are possible.
function ggmlFacts(t) {
  if (!t.ggml_type) return [];
  const q = state.model && state.model.gguf ? state.model.gguf.quantizable_types : [];
  const editable = q.includes(t.ggml_type);
  const how = !t.quantized ? "plain values" : editable ? "quantized: an edit re-quantizes its blocks"
    : "quantized, read-only by value (the gguf package cannot quantize it; bytes stay editable)";
  return [...kv("GGML type", `${t.ggml_type} · ${how}`), ...kv("file offset", fmtNum(t.offset))];
}

// The band the canvas draws the tensor in, by the same name: "L3", "embed (before the layers)",
// "norm (after the layers)"; never the server's layer_index -1 or n_layers.
function layerText(t) {
  const b = bandOf(t, state.tensors);
  return b.kind === "layer" ? b.label : `${b.label} (${b.where})`;
}

function redrawPlots() {
  if (!focus.tensor || !document.getElementById("heatmap")) return;
  loadHistogram(gen);
  if (focus.overview) loadOverview(gen);
  else if (focus.data && focus.data.tensor_name === focus.tensor.name) drawHeatmap(focus.data);
}

function show(root, name) {
  const t = state.byName.get(name);
  if (!t) return;
  gen++;
  focus.tensor = t;
  focus.slice = defaultSlice(t.shape);
  focus.sel = null;
  focus.anchor = null;
  const m = t.metadata_for_canvas;
  document.querySelector('[data-tab="focus"]').click();
  for (const id of ["heatmap", "hist-plot", "rank-plot"]) purge(id);
  setChildren(root, 
    el("div", { class: "section" },
      el("div", { class: "tensor-title", id: "focus-name", style: `border-left-color:${groupColor(m.type_group)}` }, t.name),
      el("dl", { class: "kv", id: "focus-facts" },
        ...kv("dtype", t.dtype), ...kv("shape", fmtList(t.shape)), ...kv("elements", fmtNum(t.numel)),
        ...kv("bytes", `${fmtBytes(t.nbytes)} (${fmtNum(t.nbytes)})`), ...kv("layer", layerText(t)),
        ...kv("type", m.type_group + (m.expert_index !== null && m.expert_index !== undefined ? ` · expert ${m.expert_index}` : "")),
        ...kv("role", m.specific_type_key), ...ggmlFacts(t), el("dt", {}, "staged edits"),
        el("dd", { id: "focus-staged-count" }, String(state.staged.get(t.name) || 0)))),
    el("div", { class: "section row" },
      el("span", { class: "muted" }, "show"),
      el("span", { class: "seg", id: "view-toggle" },
        el("button", { "aria-pressed": String(state.view === "base"), onclick: () => setView("base") }, "base"),
        el("button", { "aria-pressed": String(state.view === "staged"), onclick: () => setView("staged") }, "staged"))),
    el("div", { class: "section", id: "stats-section" }, el("h4", {}, "Statistics"), el("div", { id: "stats-body", class: "muted" }, "…"),
      el("p", { class: "error-msg", id: "stats-error", role: "alert" })),
    el("div", { class: "section", id: "hist-section" },
      el("h4", {}, "Histogram"),
      el("div", { class: "row" },
        el("label", {}, el("input", { type: "checkbox", id: "hist-slice", onchange: () => loadHistogram(gen) }), "this slice only"),
        el("label", {}, el("input", { type: "checkbox", id: "hist-log", onchange: () => loadHistogram(gen) }), "log counts")),
      el("div", { class: "plot small", id: "hist-plot" }),
      el("p", { class: "error-msg", id: "hist-error", role: "alert" })),
    el("div", { class: "section", id: "slice-section" }, el("h4", {}, "Slice"), el("div", { id: "slice-controls" }),
      el("div", { class: "plot", id: "heatmap" }), el("div", { class: "muted", id: "slice-info" }),
      el("p", { class: "error-msg", id: "slice-error", role: "alert" })),
  );
  renderSliceControls();
  emit("focus-tensor", { tensor: t });
  refresh();
}

function kv(k, v) {
  return [el("dt", {}, k), el("dd", {}, String(v))];
}

function refresh() {
  const g = gen;
  const count = document.getElementById("focus-staged-count");
  if (count) count.textContent = String(state.staged.get(focus.tensor.name) || 0);
  loadStats(g);
  loadHistogram(g);
  loadSlice(g);
  emit("focus-refresh", { tensor: focus.tensor });
}

// -- statistics ------------------------------------------------------------------------------------

async function loadStats(g) {
  const body = document.getElementById("stats-body");
  const err = document.getElementById("stats-error");
  clearError(err);
  try {
    const s = await api(`/api/tensor_stats/${tensorPath(focus.tensor.name)}`, { params: { view: state.view } });
    if (g !== gen) return;
    const rows = STAT_KEYS.filter((k) => k in s).map((k) => [k, k === "sparsity" ? `${(100 * s[k]).toFixed(3)}%` : fmtNum(s[k])]);
    body.className = "";
    setChildren(body, 
      el("dl", { class: "kv" }, ...rows.flatMap(([k, v]) => kv(k.replace(/_/g, " "), v))),
      el("div", { class: "mono muted", style: "margin-top:4px" },
        Object.entries(s.percentiles || {}).map(([k, v]) => `${k} ${fmtNum(v)}`).join(" · ")),
      s.of === "magnitude" ? el("div", { class: "muted" }, "complex values: statistics of |z|") : null,
      focus.tensor.shape.length === 2
        ? el("div", { class: "row" }, el("button", { id: "rank-btn", onclick: () => loadRank(g) }, "Numerical rank"), el("span", { id: "rank-out", class: "mono" }))
        : null,
      el("div", { class: "plot small", id: "rank-plot", hidden: true }),
    );
  } catch (e) {
    if (g === gen) { body.textContent = ""; showError(e, err); }
  }
}

async function loadRank(g) {
  const out = document.getElementById("rank-out");
  out.textContent = "computing…";
  try {
    const r = await api(`/api/tensor_rank/${tensorPath(focus.tensor.name)}`, { params: { view: state.view } });
    if (g !== gen) return;
    out.textContent = `rank ${r.rank}${r.rank_is_lower_bound ? "+" : ""} of ${r.max_rank} (${r.method}) · stable ${fmtNum(r.stable_rank)} · effective ${fmtNum(r.effective_rank)}`;
    const plot = document.getElementById("rank-plot");
    plot.hidden = false;
    await react(plot, [{ y: r.singular_values, type: "scatter", mode: "lines", line: { color: cssVar("--accent") } }],
      plotLayout({ yaxis: { type: "log", title: { text: "σ" } }, xaxis: { title: { text: "index" } } }), PLOT_CONFIG);
  } catch (e) {
    out.textContent = "";
    showError(e, document.getElementById("stats-error"));
  }
}

// -- histogram -------------------------------------------------------------------------------------

async function loadHistogram(g) {
  const err = document.getElementById("hist-error");
  clearError(err);
  const sliceOnly = document.getElementById("hist-slice").checked;
  const params = { bins: 80, view: state.view, ...(sliceOnly && focus.slice.col !== null ? sliceParams() : {}) };
  try {
    const h = await api(`/api/tensor_histogram/${tensorPath(focus.tensor.name)}`, { params });
    if (g !== gen) return;
    const centers = h.edges.slice(0, -1).map((e, i) => (e + h.edges[i + 1]) / 2);
    const logY = document.getElementById("hist-log").checked;
    await react("hist-plot", [{ x: centers, y: h.counts, type: "bar", marker: { color: groupColor(focus.tensor.metadata_for_canvas.type_group) },
      hovertemplate: "%{x:.4g}: %{y}<extra></extra>" }],
    plotLayout({ bargap: 0, yaxis: { type: logY ? "log" : "linear" } }), PLOT_CONFIG);
  } catch (e) {
    if (g === gen) showError(e, err);
  }
}

// -- slice ------------------------------------------------------------------------------------------

function renderSliceControls() {
  const box = document.getElementById("slice-controls");
  const t = focus.tensor;
  const s = focus.slice;
  if (!t.shape.length) {
    setChildren(box, el("span", { class: "muted" }, "a scalar: no dimensions to slice"));
    return;
  }
  const dimOptions = (selected, exclude) => t.shape.map((n, d) =>
    el("option", { value: d, selected: d === selected, disabled: d === exclude }, `dim ${d} (${n})`));
  const rows = [];
  if (t.shape.length >= 2) {
    rows.push(el("div", { class: "row" },
      el("label", {}, "rows", el("select", { id: "row-dim", onchange: (e) => swapDims(Number(e.target.value), s.col) }, ...dimOptions(s.row, s.col))),
      el("label", {}, "cols", el("select", { id: "col-dim", onchange: (e) => swapDims(s.row, Number(e.target.value)) }, ...dimOptions(s.col, s.row)))));
  }
  t.shape.forEach((n, d) => {
    if (d in s.ranges) {
      const [a, b, st] = s.ranges[d];
      rows.push(el("div", { class: "row" },
        el("span", { class: "mono" }, `dim ${d}`),
        el("label", {}, "from", el("input", { type: "number", min: 0, max: n - 1, value: a, "data-dim": d, "data-part": "0", id: `dim${d}-start` })),
        el("label", {}, "to", el("input", { type: "number", min: 1, max: n, value: b, "data-dim": d, "data-part": "1", id: `dim${d}-end` })),
        el("label", {}, "step", el("input", { type: "number", min: 1, value: st, "data-dim": d, "data-part": "2", id: `dim${d}-step` })),
        el("span", { class: "muted" }, `of ${n}`)));
    } else {
      rows.push(el("div", { class: "row" },
        el("span", { class: "mono" }, `dim ${d}`),
        el("label", {}, "index", el("input", { type: "number", min: 0, max: n - 1, value: s.idx[d], "data-dim": d, "data-part": "idx", id: `dim${d}-idx` })),
        el("span", { class: "muted" }, `of ${n}`)));
    }
  });
  rows.push(el("div", { class: "row" },
    el("button", { class: "primary", id: "slice-apply", onclick: applySliceInputs }, "Show slice"),
    el("button", { onclick: () => { focus.slice = defaultSlice(t.shape); renderSliceControls(); loadSlice(gen); } }, "Reset"),
    el("button", { id: "overview-btn", onclick: () => loadOverview(gen), title: "the whole tensor, block-averaged; click a block to open that window" }, "Overview"),
    el("button", { onclick: () => pageSlice(1), title: "next window down" }, "↓"),
    el("button", { onclick: () => pageSlice(-1), title: "previous window up" }, "↑")));
  setChildren(box, ...rows);
  box.querySelectorAll("input").forEach((i) => i.addEventListener("keydown", (e) => { if (e.key === "Enter") applySliceInputs(); }));
}

function swapDims(row, col) {
  if (row === col) return;
  const shape = focus.tensor.shape;
  const s = { row, col, ranges: {}, idx: {} };
  shape.forEach((n, d) => {
    if (d === row || d === col) s.ranges[d] = focus.slice.ranges[d] || [0, Math.min(n, state.prefs.window), 1];
    else s.idx[d] = focus.slice.idx[d] ?? 0;
  });
  focus.slice = s;
  focus.sel = null;
  renderSliceControls();
  loadSlice(gen);
}

function applySliceInputs() {
  const s = focus.slice;
  document.querySelectorAll("#slice-controls input[data-dim]").forEach((inp) => {
    const d = Number(inp.dataset.dim), v = Number(inp.value);
    if (inp.dataset.part === "idx") s.idx[d] = v;
    else s.ranges[d][Number(inp.dataset.part)] = v;
  });
  focus.sel = null;
  loadSlice(gen);
}

function pageSlice(direction) {
  const s = focus.slice;
  const d = s.row !== null ? s.row : s.col;
  const n = focus.tensor.shape[d];
  const [a, b, st] = s.ranges[d];
  const w = b - a;
  const na = Math.max(0, Math.min(n - w, a + direction * w));
  s.ranges[d] = [na, na + w, st];
  renderSliceControls();
  focus.sel = null;
  loadSlice(gen);
}

async function loadSlice(g = gen) {
  const err = document.getElementById("slice-error");
  clearError(err);
  const t = focus.tensor;
  try {
    const d = await api(`/api/tensor_slice/${tensorPath(t.name)}`, { params: { ...sliceParams(), view: state.view } });
    if (g !== gen) return;
    focus.data = d;
    focus.overview = null;
    await drawHeatmap(d);
    document.getElementById("slice-info").textContent =
      `${d.slice_definition} · ${d.slice_shape.join("×") || "scalar"} · ${d.view} · range [${fmtNum(d.min_value_in_slice)}, ${fmtNum(d.max_value_in_slice)}]`
      + (d.nonfinite_count ? ` · ${d.nonfinite_count} NaN/Inf (blank)` : "");
    emit("slice-loaded", { tensor: t, slice: focus.slice, params: sliceParams(), data: d, selection: selectionDetail() });
  } catch (e) {
    if (g === gen) showError(e, err);
  }
}

// The whole tensor seen as a matrix, block-averaged: for finding where to look in a big tensor.
async function loadOverview(g) {
  const err = document.getElementById("slice-error");
  clearError(err);
  const t = focus.tensor;
  try {
    const o = await api(`/api/tensor_overview/${tensorPath(t.name)}`, { params: { rows: 128, cols: 128, view: state.view } });
    if (g !== gen) return;
    const [nr, nc] = o.matrix_shape;
    const [br, bc] = o.blocks;
    const rowAt = (i) => Math.floor((i * nr) / br), colAt = (j) => Math.floor((j * nc) / bc);
    const plot = document.getElementById("heatmap");
    const lim = robustLimit(o.mean);
    await react(plot, [{
      type: "heatmap", z: o.mean, x: Array.from({ length: bc }, (_, j) => colAt(j)), y: Array.from({ length: br }, (_, i) => rowAt(i)),
      zmin: -lim, zmax: lim, zmid: 0, colorscale: [[0, "#2f6fe4"], [0.5, cssVar("--panel-2")], [1, "#f08a3c"]],
      hovertemplate: "rows from %{y}, cols from %{x}: block mean %{z}<extra></extra>", colorbar: { thickness: 10, outlinewidth: 0 },
    }], plotLayout({ yaxis: { autorange: "reversed", title: { text: "rows (leading dims folded)" } }, xaxis: { title: { text: `dim ${t.shape.length - 1}` } }, margin: { l: 48, r: 8, t: 8, b: 36 } }), PLOT_CONFIG);
    document.getElementById("slice-info").textContent =
      `overview: ${br}×${bc} blocks of a ${nr}×${nc} matrix${o.sampled ? ` (rows sampled: ${o.rows_read} read)` : ""} · click a block to open it`;
    focus.overview = { rowAt, colAt, br, bc, nr, nc };
    emit("overview-loaded", o);
  } catch (e) {
    if (g === gen) showError(e, err);
  }
}

// A click on an overview block opens the slice window around it (2-D tensors and up).
function openBlock(y, x) {
  const s = focus.slice;
  const shape = focus.tensor.shape;
  if (s.row === null || shape.length < 2) return;
  const w = (d) => s.ranges[d][1] - s.ranges[d][0];
  const rStart = Math.max(0, Math.min(shape[s.row] - w(s.row), y));
  const cStart = Math.max(0, Math.min(shape[s.col] - w(s.col), x));
  s.ranges[s.row] = [rStart, rStart + w(s.row), 1];
  s.ranges[s.col] = [cStart, cStart + w(s.col), 1];
  focus.overview = null;
  renderSliceControls();
  loadSlice(gen);
}

function axisValues(dim) {
  const [a, , st] = focus.slice.ranges[dim];
  const n = focus.data.slice_shape[focus.data.viewed_dims.indexOf(dim)];
  return Array.from({ length: n }, (_, i) => a + i * st);
}

async function drawHeatmap(d) {
  const plot = document.getElementById("heatmap");
  const s = focus.slice;
  if (!d.slice_shape.length) {
    if (window.Plotly) window.Plotly.purge(plot);
    plot.textContent = `value: ${fmtNum(d.data)}`;
    return;
  }
  let z = d.data, xs = axisValues(s.col), ys = [0];
  if (d.slice_shape.length === 2) ys = axisValues(s.row);
  else z = [d.data];
  if (d.dtype === "C64") z = z.map((row) => row.map((c) => Math.hypot(c[0], c[1])));
  const hoverIdx = focus.tensor.shape.map((_, k) => (k === s.row ? "%{y}" : k === s.col ? "%{x}" : s.idx[k])).join(", ");
  const lim = robustLimit(z);
  const trace = {
    type: "heatmap", z, x: xs, y: ys, zmin: -lim, zmax: lim, zmid: 0,
    colorscale: [[0, "#2f6fe4"], [0.5, cssVar("--panel-2") || "#1b232e"], [1, "#f08a3c"]],
    hovertemplate: `[${hoverIdx}] = %{z}<extra></extra>`, xgap: 0, ygap: 0,
    colorbar: { thickness: 10, outlinewidth: 0, tickfont: { size: 10 } },
  };
  await react(plot, [trace], plotLayout({
    yaxis: { autorange: "reversed", title: { text: s.row !== null ? `dim ${s.row}` : "" } },
    xaxis: { title: { text: `dim ${s.col}` } },
    shapes: selectionShapes(),
    margin: { l: 48, r: 8, t: 8, b: 36 },
  }), { ...PLOT_CONFIG, doubleClick: false });
  if (!plot.__tsBound) {
    plot.__tsBound = true;
    plot.on("plotly_click", (ev) => {
      const p = ev.points && ev.points[0];
      if (!p) return;
      if (focus.overview) {
        if (focus.tensor.shape.length === 2) openBlock(p.y, p.x);
        return;
      }
      const r = focus.data.slice_shape.length === 2 ? p.y : 0, c = p.x;
      const shift = ev.event && ev.event.shiftKey;
      if (shift && focus.anchor) {
        focus.sel = { r0: Math.min(focus.anchor.r, r), r1: Math.max(focus.anchor.r, r), c0: Math.min(focus.anchor.c, c), c1: Math.max(focus.anchor.c, c) };
      } else {
        focus.anchor = { r, c };
        focus.sel = { r0: r, r1: r, c0: c, c1: c };
      }
      window.Plotly.relayout(plot, { shapes: selectionShapes() });
      emit("cell-selected", { ...selectionDetail(), value: p.z });
    });
  }
}

// Colour limit at the 99.5th percentile of |value|: one outlier should not wash out the rest
// (values beyond it saturate; the hover still shows them exactly).
function robustLimit(z) {
  const a = [];
  for (const row of z) for (const v of row) if (v !== null) a.push(Math.abs(v));
  if (!a.length) return 1;
  a.sort((x, y) => x - y);
  return a[Math.min(a.length - 1, Math.floor(0.995 * a.length))] || a[a.length - 1] || 1;
}

function selectionShapes() {
  const sel = focus.sel;
  if (!sel) return [];
  const stR = focus.slice.row !== null ? focus.slice.ranges[focus.slice.row][2] : 1;
  const stC = focus.slice.ranges[focus.slice.col] ? focus.slice.ranges[focus.slice.col][2] : 1;
  const single = focus.slice.row === null;
  return [{
    type: "rect", xref: "x", yref: "y", line: { color: cssVar("--selected"), width: 2 }, fillcolor: "rgba(0,0,0,0)",
    x0: sel.c0 - stC / 2, x1: sel.c1 + stC / 2, y0: single ? -0.5 : sel.r0 - stR / 2, y1: single ? 0.5 : sel.r1 + stR / 2,
  }];
}

// What the editor and the hex view need about the heatmap selection (null when nothing is picked),
// with the value now shown at a single picked cell (after an edit is staged it is the new one).
function selectionDetail() {
  const sel = focus.sel;
  if (!sel || !focus.tensor) return null;
  return {
    tensor: focus.tensor, ...sel, index: fullIndex(sel.r0, sel.c0), params: sliceParams(focus.slice, sel),
    value: sel.r0 === sel.r1 && sel.c0 === sel.c1 ? shownValue(sel.r0, sel.c0) : null,
  };
}

function shownValue(r, c) {
  const d = focus.data, s = focus.slice;
  if (!d || focus.overview || !d.slice_shape.length) return null;
  const [ca, , cs] = s.ranges[s.col];
  const j = (c - ca) / cs;
  let row = d.data;
  if (d.slice_shape.length === 2) {
    const [ra, , rs] = s.ranges[s.row];
    row = d.data[(r - ra) / rs];
  }
  const v = row ? row[j] : undefined;
  return v === undefined || Array.isArray(v) ? null : v;
}
