// Diff: another model as the "base" of the open one. Runs the diff as a job (progress bar), lists
// every tensor sortable by how much it moved, colours the canvas by relative change (log scale,
// legend with its scale; tensors new in this model, reshaped or not comparable are marked), and
// shows a heatmap of the delta (this model minus the base) of a slice of any tensor: click a row,
// or a tile while the canvas shows the diff colours.

import { api, tensorPath } from "./api.js";
import { followJob } from "./jobs.js";
import { PLOT_CONFIG, plotLayout, purge, react } from "./plot.js";
import { clearError, cssVar, el, emit, fmtList, fmtNum, on, setChildren, showError, state } from "./state.js";

const MARKS = {
  only_in_model: { label: "not in the base", colour: "#e5484d" },
  shape_changed: { label: "shape changed", colour: "#f5a524" },
  not_comparable: { label: "not comparable", colour: "#8e8e99" },
  unchanged: { label: "unchanged", colour: "#30343c" },
};
const WINDOW = 64; // rows and columns of a delta slice
const COLUMNS = [
  ["name", "tensor"], ["relative_change", "‖B−A‖/‖A‖"], ["cosine", "cosine"], ["max_abs_change", "max |B−A|"],
  ["changed_fraction", "changed"], ["delta_rank", "rank Δ"],
];

const ui = {};
let diff = null; // GET /api/diff once done
let sortKey = "relative_change";
let sortDesc = true;
let gen = 0; // bumps on reset: answers for an older diff or model are dropped
let source = null; // the job being followed ({close})
let delta = null; // {name, shape, row, col, idx, r0, c0}
let painted = false; // the canvas shows our colours

export function initDiff() {
  const root = document.getElementById("tab-diff");
  ui.base = el("input", { type: "text", list: "model-choices", id: "diff-base", "aria-label": "Base model path",
    placeholder: "base model: .safetensors, index or folder (inside the allowed folders)" });
  ui.run = el("button", { class: "primary", id: "diff-run", onclick: run }, "Compare");
  ui.clear = el("button", { id: "diff-clear", onclick: clear, disabled: true, title: "forget the diff; type colours again" }, "Clear");
  ui.colour = el("input", { type: "checkbox", id: "diff-colour", checked: true, onchange: paintCanvas });
  ui.progress = el("progress", { id: "diff-progress", max: 1, value: 0, hidden: true });
  ui.status = el("p", { class: "muted", id: "diff-status", "aria-live": "polite" });
  ui.error = el("p", { class: "error-msg", id: "diff-error", role: "alert" });
  ui.table = el("table", { class: "diff-table", id: "diff-table" });
  ui.delta = el("div", { class: "section", id: "diff-delta", hidden: true });
  setChildren(root,
    el("p", { class: "muted" }, "How far each tensor of the open model moved from a base model (tensors matched by name)."),
    el("div", { class: "row" }, ui.base, ui.run, ui.clear),
    el("label", {}, ui.colour, " colour the canvas by relative change"),
    ui.progress, ui.status, ui.error, ui.delta,
    el("div", { class: "diff-table-wrap" }, ui.table));
  ui.base.addEventListener("keydown", (e) => { if (e.key === "Enter") run(); });
  on("model-switching", reset);
  on("model", reset);
  // Which tab a select took the page away from: Focus shows itself on every select, before this
  // panel hears of it, so the tab shown before is remembered until the select's dispatch is over.
  let shown = "focus", leftDuringSelect = null;
  on("tab-shown", (tab) => {
    if (tab !== shown) {
      leftDuringSelect = shown;
      queueMicrotask(() => { leftDuringSelect = null; });
    }
    shown = tab;
  });
  on("select", (name) => {
    // a tensor picked while the Diff tab shows the diff's colours (a tile's click): its delta,
    // here (Focus loads it meanwhile); picked from another tab, Focus keeps the page
    const fromDiff = shown === "diff" || leftDuringSelect === "diff";
    if (fromDiff && diff && ui.colour.checked && rowOf(name)) {
      openDelta(name);
      document.querySelector('[data-tab="diff"]').click();
    }
  });
}

function reset() {
  gen++;
  if (source) { source.close(); source = null; }
  diff = null;
  delta = null;
  purge("diff-heatmap");
  ui.delta.hidden = true;
  setChildren(ui.delta);
  setChildren(ui.table);
  ui.progress.hidden = true;
  ui.status.textContent = "";
  ui.clear.disabled = true;
  ui.run.disabled = false;
  clearError(ui.error);
  unpaint();
}

function unpaint() {
  if (painted) emit("canvas-colours", null);
  painted = false;
}

async function run() {
  const base = ui.base.value.trim();
  if (!base) { showError(new Error("give the base model's path"), ui.error); return; }
  reset();
  const mine = gen;
  ui.run.disabled = true;
  ui.progress.hidden = false;
  ui.progress.value = 0;
  ui.status.textContent = "comparing…";
  try {
    const { job } = await api("/api/diff", { method: "POST", body: { base } });
    if (mine !== gen) return;
    follow(job.id, mine);
  } catch (e) {
    if (mine !== gen) return;
    ui.run.disabled = false;
    ui.progress.hidden = true;
    ui.status.textContent = "";
    showError(e, ui.error);
  }
}

function follow(id, mine) {
  source = followJob(id, (ev) => {
    if (mine !== gen) return;
    if (ev.type === "progress") {
      ui.progress.value = ev.fraction || 0;
      ui.status.textContent = `comparing… ${Math.round(100 * (ev.fraction || 0))}%`;
      return;
    }
    source = null;
    ui.run.disabled = false;
    ui.progress.hidden = true;
    if (ev.type === "done") load(mine);
    else {
      ui.status.textContent = "";
      showError(new Error((ev.error && ev.error.message) || "the diff failed"), ui.error);
    }
  });
}

async function load(mine) {
  try {
    const d = await api("/api/diff");
    if (mine !== gen) return;
    diff = d;
  } catch (e) {
    if (mine === gen) showError(e, ui.error);
    return;
  }
  const s = diff.summary;
  ui.clear.disabled = false;
  ui.status.textContent = `${fmtNum(s.changed)} of ${fmtNum(s.tensors)} tensors changed · ${fmtNum(s.unchanged)} unchanged`
    + (s.only_in_model ? ` · ${fmtNum(s.only_in_model)} not in the base` : "")
    + (s.only_in_base ? ` · ${fmtNum(s.only_in_base)} only in the base` : "")
    + (s.shape_changed ? ` · ${fmtNum(s.shape_changed)} reshaped` : "");
  renderTable();
  paintCanvas();
}

async function clear() {
  try {
    await api("/api/diff", { method: "DELETE" });
  } catch (e) {
    showError(e, ui.error);
  }
  reset();
}

function rowOf(name) {
  return diff && diff.rows.find((r) => r.name === name);
}

// -- canvas colours --------------------------------------------------------------------------

// Relative change on a log scale from the smallest to the largest change (at most 6 decades).
function scaleOf(rows) {
  const rel = rows.filter((r) => r.status === "changed" && r.relative_change > 0).map((r) => r.relative_change);
  if (!rel.length) return null;
  const hi = Math.max(...rel);
  const lo = Math.max(Math.min(...rel), hi * 1e-6);
  const l0 = Math.log10(lo), l1 = Math.log10(hi);
  const at = (v) => (l1 > l0 ? Math.min(1, Math.max(0, (Math.log10(Math.max(v, lo)) - l0) / (l1 - l0))) : 1);
  return { lo, hi, at };
}

function paintCanvas() {
  if (!diff || !ui.colour.checked) { unpaint(); return; }
  const scale = scaleOf(diff.rows);
  const byName = new Map();
  const used = new Set();
  for (const r of diff.rows) {
    if (r.status === "only_in_base") continue; // not on this model's canvas
    if (r.status === "changed" && scale && r.relative_change !== null) byName.set(r.name, scale.at(r.relative_change));
    else {
      const mark = MARKS[r.status] || MARKS.not_comparable;
      byName.set(r.name, mark.colour);
      used.add(r.status in MARKS ? r.status : "not_comparable");
    }
  }
  const ticks = scale
    ? (scale.hi > scale.lo ? [{ at: 0, label: fmtNum(scale.lo) }, { at: 0.5, label: fmtNum(Math.sqrt(scale.lo * scale.hi)) }, { at: 1, label: fmtNum(scale.hi) }]
      : [{ at: 1, label: fmtNum(scale.hi) }])
    : [];
  painted = true;
  emit("canvas-colours", {
    byName,
    legend: { title: "relative change ‖B−A‖/‖A‖ (log)", ticks, marks: [...used].map((k) => MARKS[k]) },
  });
}

// -- the table -------------------------------------------------------------------------------

function sortValue(r) {
  const v = r[sortKey];
  if (sortKey === "name") return v;
  return v === null || v === undefined ? -Infinity : v;
}

function renderTable() {
  const rows = [...diff.rows].sort((a, b) => {
    const x = sortValue(a), y = sortValue(b);
    const c = typeof x === "string" ? x.localeCompare(y) : x - y;
    return sortDesc ? -c : c;
  });
  const head = el("tr", {}, ...COLUMNS.map(([key, label]) => el("th", {
    "data-key": key, "aria-sort": key === sortKey ? (sortDesc ? "descending" : "ascending") : "none",
    onclick: () => { sortDesc = key === sortKey ? !sortDesc : key !== "name"; sortKey = key; renderTable(); },
  }, label + (key === sortKey ? (sortDesc ? " ▾" : " ▴") : ""))));
  const body = rows.slice(0, 2000).map((r) => el("tr", {
    "data-name": r.name, "data-status": r.status, class: delta && delta.name === r.name ? "selected" : null,
    tabindex: 0, title: r.note || r.status,
    onclick: () => { openDelta(r.name); emit("reveal", r.name); },
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openDelta(r.name); emit("reveal", r.name); } },
  },
  el("td", { class: "mono" }, r.name),
  r.status === "changed" || r.status === "unchanged"
    ? [el("td", {}, fmtNum(r.relative_change)), el("td", {}, fmtNum(r.cosine)), el("td", {}, fmtNum(r.max_abs_change)),
      el("td", {}, `${(100 * r.changed_fraction).toFixed(r.changed_fraction && r.changed_fraction < 0.01 ? 3 : 1)}%`),
      el("td", {}, r.delta_rank === null ? "–" : `${r.delta_rank}/${r.delta_max_rank}`)]
    : el("td", { colspan: 5, class: "muted" }, statusText(r))));
  setChildren(ui.table, el("thead", {}, head), el("tbody", {}, ...body));
}

function statusText(r) {
  if (r.status === "only_in_base") return `only in the base ${fmtList(r.base_shape)}`;
  if (r.status === "only_in_model") return `not in the base ${fmtList(r.model_shape)}`;
  if (r.status === "shape_changed") return `${fmtList(r.base_shape)} in the base → ${fmtList(r.model_shape)}`;
  return r.note || r.status;
}

// -- the delta heatmap -----------------------------------------------------------------------

function openDelta(name) {
  const r = rowOf(name);
  if (!r) return;
  for (const tr of ui.table.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  const tr = [...ui.table.querySelectorAll("tr[data-name]")].find((x) => x.dataset.name === name);
  if (tr) tr.classList.add("selected");
  ui.delta.hidden = false;
  if (r.status !== "changed" && r.status !== "unchanged") {
    delta = { name };
    purge("diff-heatmap");
    setChildren(ui.delta, el("h4", {}, "Delta"), el("div", { class: "mono", id: "diff-delta-name" }, name),
      el("p", { class: "muted" }, `${statusText(r)}: no element-wise delta`));
    return;
  }
  const shape = r.model_shape;
  const nd = shape.length;
  delta = { name, shape, row: nd >= 2 ? nd - 2 : null, col: nd ? nd - 1 : null, idx: shape.map(() => 0), r0: 0, c0: 0 };
  const num = (label, value, max, onset) => el("label", {}, `${label} `, el("input", {
    type: "number", min: 0, max: Math.max(0, max), value, style: "width:6em", "aria-label": label,
    onchange: (e) => { onset(Math.min(Math.max(0, Number(e.target.value) || 0), Math.max(0, max))); drawDelta(); },
  }));
  const controls = [];
  if (delta.row !== null) controls.push(num(`row from (dim ${delta.row})`, 0, shape[delta.row] - 1, (v) => { delta.r0 = v; }));
  if (delta.col !== null) controls.push(num(`column from (dim ${delta.col})`, 0, shape[delta.col] - 1, (v) => { delta.c0 = v; }));
  for (let k = 0; k < nd - 2; k++) controls.push(num(`dim ${k}`, 0, shape[k] - 1, (v) => { delta.idx[k] = v; }));
  setChildren(ui.delta,
    el("h4", {}, "Delta: this model − base"),
    el("div", { class: "mono", id: "diff-delta-name" }, name),
    el("div", { class: "row" }, ...controls),
    el("div", { class: "plot", id: "diff-heatmap" }),
    el("div", { class: "muted", id: "diff-delta-info" }));
  drawDelta();
}

async function drawDelta() {
  const d = delta;
  if (!d || !d.shape) return;
  const mine = gen;
  const params = {};
  d.shape.forEach((n, k) => {
    if (k === d.row) { params[`dim${k}_start`] = d.r0; params[`dim${k}_end`] = Math.min(n, d.r0 + WINDOW); }
    else if (k === d.col) { params[`dim${k}_start`] = d.c0; params[`dim${k}_end`] = Math.min(n, d.c0 + WINDOW); }
    else params[`dim${k}_idx`] = d.idx[k];
  });
  let s;
  try {
    s = await api(`/api/diff/delta/${tensorPath(d.name)}`, { params });
  } catch (e) {
    if (mine === gen && delta === d) showError(e, ui.error);
    return;
  }
  if (mine !== gen || delta !== d) return;
  const info = document.getElementById("diff-delta-info");
  if (info) info.textContent = `${s.slice_definition} of ${fmtList(s.original_shape)} · Δ from ${fmtNum(s.min_value_in_slice)} to ${fmtNum(s.max_value_in_slice)}`;
  if (!s.slice_shape.length) { document.getElementById("diff-heatmap").textContent = `Δ = ${fmtNum(s.data)}`; return; }
  const z = s.slice_shape.length === 2 ? s.data : [s.data];
  const lim = Math.max(Math.abs(s.min_value_in_slice || 0), Math.abs(s.max_value_in_slice || 0)) || 1;
  const xs = Array.from({ length: s.slice_shape[s.slice_shape.length - 1] }, (_, j) => d.c0 + j);
  const ys = s.slice_shape.length === 2 ? Array.from({ length: s.slice_shape[0] }, (_, i) => d.r0 + i) : [0];
  await react("diff-heatmap", [{
    type: "heatmap", z, x: xs, y: ys, zmin: -lim, zmax: lim, zmid: 0,
    colorscale: [[0, "#2f6fe4"], [0.5, cssVar("--panel-2") || "#1b232e"], [1, "#f08a3c"]],
    hovertemplate: "[%{y}, %{x}] Δ = %{z}<extra></extra>",
    colorbar: { thickness: 10, outlinewidth: 0, tickfont: { size: 10 } },
  }], plotLayout({ yaxis: { autorange: "reversed" }, margin: { l: 44, r: 8, t: 8, b: 30 } }), PLOT_CONFIG);
  if (mine === gen) ui.delta.dataset.drawn = d.name; // read by the browser test
}
