// Analysis: the open model's per-parameter table (POST /api/analysis runs it as a job with progress,
// GET /api/analysis/table serves it): a sortable, filterable table, per-layer line plots (one line per
// block type) and a box plot per block type of a chosen column, and export to CSV / JSON Lines /
// Parquet. Clicking a row or a point selects that tensor and brings it into view on the canvas.
// Reset when the model changes.

import { api } from "./api.js";
import { followJob } from "./jobs.js";
import { PLOT_CONFIG, plotLayout, purge, react } from "./plot.js";
import { clearError, el, emit, fmtNum, on, select, setChildren, showError, state } from "./state.js";

const LINE_ID = "analysis-lines";
const BOX_ID = "analysis-box";
const MAX_ROWS = 1500; // rows drawn in the table at once (filter or sort to see others)
const SHOWN = [ // [column, header, numeric]
  ["param_name", "tensor", false], ["layer_index", "layer", true], ["block_type", "block", false],
  ["shape", "shape", false], ["dtype", "dtype", false], ["rank", "rank", true], ["stable_rank", "stable rank", true],
  ["std", "std", true], ["abs_max", "abs max", true], ["sparsity", "sparsity", true], ["mean", "mean", true],
];
const METRICS = [["rank", "rank"], ["stable_rank", "stable rank"], ["std", "std"], ["abs_max", "abs max"],
  ["spectral_norm", "spectral norm"], ["sparsity", "sparsity"], ["mean", "mean"]];

const ui = {};
let gen = 0; // bumps on reset: answers for an older model or request are dropped
let source = null; // the job being followed ({close})
let table = null; // {rows, skipped, options}
let ran = null; // the options of the table shown (the boxes may have changed since)
let sortKey = "layer_index";
let sortDir = 1;

export function initAnalysis() {
  const root = document.getElementById("tab-analysis");
  ui.rank = el("select", { id: "analysis-rank", "aria-label": "Rank" },
    el("option", { value: "exact" }, "rank: exact"), el("option", { value: "randomized" }, "rank: randomized"),
    el("option", { value: "none" }, "rank: none"));
  ui.match = el("input", { type: "text", id: "analysis-match", "aria-label": "Only tensors matching",
    placeholder: "only tensors matching this regex (optional)" });
  ui.run = el("button", { class: "primary", id: "analysis-run", onclick: run }, "Analyse");
  ui.progress = el("progress", { id: "analysis-progress", max: 1, value: 0, hidden: true });
  ui.status = el("p", { class: "muted", id: "analysis-status", "aria-live": "polite" });
  ui.error = el("p", { class: "error-msg", id: "analysis-error", role: "alert" });
  ui.metric = el("select", { id: "analysis-metric", "aria-label": "Plotted column", onchange: drawPlots },
    METRICS.map(([v, label]) => el("option", { value: v }, label)));
  ui.filter = el("input", { type: "search", id: "analysis-filter", "aria-label": "Filter rows",
    placeholder: "filter rows: substring or /regex/ (name or block)", oninput: drawTable });
  ui.format = el("select", { id: "analysis-format", "aria-label": "Export format" },
    el("option", { value: "csv" }, "CSV"), el("option", { value: "jsonl" }, "JSON Lines"), el("option", { value: "parquet" }, "Parquet"));
  ui.download = el("a", { id: "analysis-download", class: "button", href: "#", onclick: downloadClicked }, "Download");
  ui.save = el("button", { id: "analysis-save", onclick: save, title: "write it into DATA_DIR/exports, with run_meta.json" }, "Save");
  ui.count = el("p", { class: "muted", id: "analysis-count" });
  ui.body = el("tbody", {});
  ui.head = el("tr", {});
  ui.table = el("div", { class: "analysis-table", style: "max-height: 320px; overflow: auto; font-size: 12px" },
    el("table", { id: "analysis-table", style: "border-collapse: collapse; width: 100%" }, el("thead", {}, ui.head), ui.body));
  ui.results = el("div", { id: "analysis-results", hidden: true },
    el("div", { class: "row" }, el("label", {}, "plot ", ui.metric)),
    el("div", { id: LINE_ID, style: "height: 260px" }),
    el("div", { id: BOX_ID, style: "height: 220px" }),
    el("div", { class: "row" }, ui.filter),
    ui.count, ui.table,
    el("div", { class: "row" }, ui.format, ui.download, ui.save));
  ui.skipped = el("details", { id: "analysis-skipped", hidden: true });
  setChildren(root,
    el("p", { class: "muted" }, "One row per parameter: shape, numerical rank (s > 1e-6·s.max), mean, std, sparsity "
      + "and more, as `tensor-surgery analyze` writes it (the file's bytes; staged edits are not included). "
      + "Click a row or a point to select that tensor."),
    el("div", { class: "row" }, ui.rank, ui.run), ui.match, ui.progress, ui.status, ui.error, ui.skipped, ui.results);
  ui.match.addEventListener("keydown", (e) => { if (e.key === "Enter") run(); });
  on("model-switching", reset);
  on("model", reset);
}

function options() {
  const o = { rank: ui.rank.value };
  if (ui.match.value.trim()) o.match = ui.match.value.trim();
  return o;
}

function query(extra = {}) {
  return new URLSearchParams({ ...(ran || options()), ...extra }).toString();
}

function reset() {
  gen++;
  if (source) { source.close(); source = null; }
  table = null;
  purge(LINE_ID);
  purge(BOX_ID);
  ui.results.hidden = true;
  ui.skipped.hidden = true;
  ui.progress.hidden = true;
  ui.status.textContent = "";
  ui.run.disabled = false;
  setChildren(ui.body);
  clearError(ui.error);
}

async function run() {
  reset();
  const mine = gen;
  ran = options();
  ui.run.disabled = true;
  ui.progress.hidden = false;
  ui.progress.value = 0;
  ui.status.textContent = "analysing…";
  try {
    const { job } = await api("/api/analysis", { method: "POST", body: ran });
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
      ui.status.textContent = `analysing… ${Math.round(100 * (ev.fraction || 0))}%`;
      return;
    }
    source = null;
    ui.run.disabled = false;
    ui.progress.hidden = true;
    if (ev.type === "done") load(mine);
    else {
      ui.status.textContent = "";
      showError(new Error((ev.error && ev.error.message) || "the analysis failed"), ui.error);
    }
  });
}

async function load(mine) {
  try {
    const data = await api(`/api/analysis/table?${query()}`);
    if (mine !== gen) return;
    table = data;
    ui.status.textContent = `${fmtNum(data.rows.length)} parameters of ${data.model}`;
    ui.results.hidden = false;
    ui.skipped.hidden = !data.skipped.length;
    setChildren(ui.skipped, el("summary", {}, `${data.skipped.length} tensor(s) skipped`),
      el("ul", {}, data.skipped.map((s) => el("li", {}, `${s.param_name} [${s.shape.join(", ")}] ${s.dtype}: ${s.reason}`))));
    drawTable();
    await drawPlots();
  } catch (e) {
    if (mine === gen) showError(e, ui.error);
  }
}

function rowFilter() {
  const text = ui.filter.value.trim();
  if (!text) return () => true;
  const m = /^\/(.*)\/$/.exec(text);
  if (m) {
    try {
      const rx = new RegExp(m[1]);
      return (r) => rx.test(r.param_name) || rx.test(r.block_type);
    } catch {
      return () => false;
    }
  }
  const lower = text.toLowerCase();
  return (r) => r.param_name.toLowerCase().includes(lower) || r.block_type.toLowerCase().includes(lower);
}

function compare(a, b) {
  const x = a[sortKey];
  const y = b[sortKey];
  if (x === y) return 0;
  if (x === null || x === undefined) return 1; // no value: last either way
  if (y === null || y === undefined) return -1;
  return (x < y ? -1 : 1) * sortDir;
}

function drawTable() {
  if (!table) return;
  setChildren(ui.head, SHOWN.map(([key, label]) => el("th", {
    "data-col": key, style: "cursor: pointer; position: sticky; top: 0; background: var(--panel); text-align: left",
    title: "sort", "aria-sort": key === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none",
    onclick: () => { if (sortKey === key) sortDir = -sortDir; else { sortKey = key; sortDir = 1; } drawTable(); },
  }, label + (key === sortKey ? (sortDir > 0 ? " ▲" : " ▼") : ""))));
  const keep = rowFilter();
  const rows = table.rows.filter(keep).sort(compare);
  ui.count.textContent = rows.length > MAX_ROWS ? `${fmtNum(rows.length)} rows; the first ${fmtNum(MAX_ROWS)} shown`
    : `${fmtNum(rows.length)} rows`;
  setChildren(ui.body, rows.slice(0, MAX_ROWS).map((r) => el("tr", {
    "data-name": r.param_name, style: "cursor: pointer", tabindex: 0,
    onclick: () => reveal(r.param_name),
    onkeydown: (e) => { if (e.key === "Enter") reveal(r.param_name); },
  }, SHOWN.map(([key, , numeric]) => el("td", { style: numeric ? "text-align: right" : "" }, cell(r, key, numeric))))));
}

function cell(r, key, numeric) {
  const v = r[key];
  if (v === null || v === undefined) return key === "layer_index" ? "–" : "";
  if (key === "rank" && r.rank_certain === false) return `${v}${r.rank_error_bound !== null ? "≈" : ""}`;
  if (key === "sparsity") return `${(100 * v).toFixed(2)}%`;
  return numeric ? fmtNum(v) : String(v);
}

function reveal(name) {
  if (!state.byName.has(name)) return;
  select(name);
  emit("reveal", name);
}

function byBlock(rows) {
  const groups = new Map();
  for (const r of rows) (groups.get(r.block_type) || groups.set(r.block_type, []).get(r.block_type)).push(r);
  return groups;
}

async function drawPlots() {
  if (!table) return;
  const metric = ui.metric.value;
  const label = METRICS.find(([v]) => v === metric)[1];
  const valued = table.rows.filter((r) => r[metric] !== null && r[metric] !== undefined);
  const layered = valued.filter((r) => r.layer_index !== null).sort((a, b) => a.layer_index - b.layer_index);
  const lines = [...byBlock(layered)].map(([block, rows]) => ({
    type: "scatter", mode: "lines+markers", name: block, x: rows.map((r) => r.layer_index), y: rows.map((r) => r[metric]),
    customdata: rows.map((r) => r.param_name), hovertemplate: "%{customdata}<br>" + label + " %{y}<extra></extra>",
  }));
  const boxes = [...byBlock(valued)].map(([block, rows]) => ({
    type: "box", name: block, y: rows.map((r) => r[metric]), boxpoints: "all", jitter: 0.3, pointpos: 0,
    customdata: rows.map((r) => r.param_name), hovertemplate: "%{customdata}<br>" + label + " %{y}<extra></extra>",
    marker: { size: 4 },
  }));
  const mine = gen;
  await react(LINE_ID, lines, plotLayout({ margin: { l: 48, r: 8, t: 24, b: 32 }, hovermode: "closest",
    title: { text: `${label} by layer`, font: { size: 12 } }, xaxis: { title: { text: "layer" } },
    legend: { orientation: "h", y: -0.2, font: { size: 10 } } }), PLOT_CONFIG);
  if (mine !== gen) return;
  await react(BOX_ID, boxes, plotLayout({ margin: { l: 48, r: 8, t: 24, b: 60 }, showlegend: false, hovermode: "closest",
    title: { text: `${label} by block type`, font: { size: 12 } } }), PLOT_CONFIG);
  for (const id of [LINE_ID, BOX_ID]) {
    const gd = document.getElementById(id);
    if (gd.dataset.wired) continue;
    gd.dataset.wired = "1";
    gd.on("plotly_click", (ev) => {
      const name = ev.points && ev.points[0] && ev.points[0].customdata;
      if (typeof name === "string") reveal(name);
    });
  }
}

function downloadClicked(e) {
  if (!table) { e.preventDefault(); return; }
  ui.download.href = `/api/analysis/download?${query({ format: ui.format.value })}`;
  ui.download.setAttribute("download", "");
}

async function save() {
  clearError(ui.error);
  try {
    const r = await api("/api/analysis/export", { method: "POST", body: { ...ran, format: ui.format.value } });
    emit("notice", { text: `saved ${r.rows} rows to ${r.path}`, kind: "ok" });
    ui.status.textContent = `saved to ${r.path} (run_meta.json beside it)`;
  } catch (e) {
    showError(e, ui.error);
  }
}
