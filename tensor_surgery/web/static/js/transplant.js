// Transplant: a source model and a target model side by side (one filter for both lists), pairs
// of tensors or modules from one into the other, layer duplication/removal, then the plan with a
// verdict per written tensor before anything is written; stage it as edits (same shapes) or
// write a new model as a job, and see the finished output. The sidebar widens while it is shown.

import { api } from "./api.js";
import { followJob } from "./jobs.js";
import { openModel } from "./model.js";
import { clearError, el, emit, fmtBytes, fmtList, on, setChildren, showError, state } from "./state.js";

const MAX_ROWS = 300; // rows drawn per list; the filter narrows the rest
const WARNING = "The result is predicted NOT to load: a transplanted tensor's shape does not fit the tensors it "
  + "connects to in the target's architecture, so the model will fail during inference (e.g. with a shape "
  + "mismatch). The tool can still write it; the architecture's validity and what follows are yours.";

const ui = {};
const lists = { source: null, target: null }; // {model, tensors} per side
let pairs = []; // [{from, to}]
let lastPlan = null;
let planGen = 0;

export function initTransplant() {
  const root = document.getElementById("tab-transplant");
  const side = (which) => {
    const path = el("input", { type: "text", list: "model-choices", id: `tp-${which}-path`, placeholder:
      which === "target" ? "target model (default: the open model)" : "source model (default: the target)",
      "aria-label": `${which} model path`, onchange: () => loadSide(which) });
    const pick = el("input", { type: "text", id: `tp-${which}-pick`, placeholder: which === "source"
      ? "FROM: tensor, module prefix or 'layer N'" : "TO: tensor, module prefix or 'layer N'",
      "aria-label": which === "source" ? "From" : "To" });
    const up = el("button", { title: "the module holding it (drop the last name part)", onclick: () => {
      pick.value = pick.value.replace(/\.[^.]*$/, "");
    } }, "↑ module");
    const list = el("ul", { class: "tp-list", id: `tp-${which}-list`, role: "listbox", "aria-label": `${which} tensors` });
    return el("div", { class: "tp-side" },
      el("h4", {}, which === "source" ? "Source" : "Target"),
      el("div", { class: "row" }, path, el("button", { onclick: () => loadSide(which) }, "Load")),
      el("div", { class: "muted tp-facts", id: `tp-${which}-facts` }),
      list,
      el("div", { class: "row" }, pick, up));
  };
  ui.filter = el("input", { type: "search", id: "tp-filter", placeholder: "filter both lists: substring or /regex/",
    "aria-label": "Filter both lists", oninput: () => { renderList("source"); renderList("target"); } });
  ui.pairs = el("ul", { class: "list", id: "tp-pairs" });
  ui.dup = el("input", { type: "text", id: "tp-dup", placeholder: "e.g. 10", "aria-label": "Duplicate layers" });
  ui.rem = el("input", { type: "text", id: "tp-rem", placeholder: "e.g. 3", "aria-label": "Remove layers" });
  ui.vocab = el("input", { type: "number", id: "tp-vocab", min: 1, placeholder: "vocab", "aria-label": "Resize vocabulary" });
  ui.dtype = el("select", { id: "tp-dtype", "aria-label": "Dtype policy" },
    el("option", { value: "convert" }, "convert to the target's dtype (round to nearest even)"),
    el("option", { value: "keep" }, "keep the source's dtype"),
    el("option", { value: "refuse" }, "refuse a dtype change"));
  ui.out = el("input", { type: "text", id: "tp-out", placeholder: "output folder (default: DATA_DIR/exports/<target>-transplant-<time>)",
    "aria-label": "Output folder" });
  ui.plan = el("div", { id: "tp-plan" });
  ui.result = el("div", { id: "tp-result", "aria-live": "polite" });
  ui.progress = el("progress", { id: "tp-progress", max: 1, value: 0, hidden: true });
  ui.error = el("p", { class: "error-msg", id: "tp-error", role: "alert" });
  ui.stage = el("button", { id: "tp-stage", disabled: true, onclick: stage,
    title: "same shapes and dtypes only: staged as byte edits on the open model" }, "Stage as edits");
  ui.write = el("button", { class: "primary", id: "tp-write", disabled: true, onclick: write }, "Write new model");
  setChildren(root,
    el("p", { class: "muted" }, "Pick a source tensor or module and the target tensor or module it replaces (or adds), "
      + "then see the plan, with a verdict for every tensor written, before anything is written."),
    el("div", { class: "row" }, ui.filter),
    el("div", { class: "tp-sides" }, side("source"), side("target")),
    el("div", { class: "row" },
      el("button", { id: "tp-add", onclick: addPair }, "Add pair FROM → TO"),
      el("button", { onclick: () => { pairs = []; renderPairs(); invalidate(); } }, "Clear pairs")),
    ui.pairs,
    el("div", { class: "row" },
      el("label", {}, "duplicate layers", ui.dup), el("label", {}, "remove layers", ui.rem),
      el("label", {}, "resize vocabulary", ui.vocab)),
    el("div", { class: "row" }, el("label", {}, "dtype", ui.dtype)),
    el("div", { class: "row" }, el("button", { class: "primary", id: "tp-plan-btn", onclick: plan }, "Plan")),
    ui.error, ui.plan,
    el("div", { class: "row" }, ui.out),
    el("div", { class: "row" }, ui.stage, ui.write),
    ui.progress, ui.result);
  for (const input of [ui.dup, ui.rem, ui.vocab, ui.dtype]) input.addEventListener("change", invalidate);
  on("tab-shown", (tab) => {
    document.querySelector(".workspace").classList.toggle("transplant-wide", tab === "transplant");
    if (tab === "transplant" && !lists.target) { loadSide("target"); loadSide("source"); }
  });
  on("model", reset);
}

// Another model is open: nothing here was about it (its lists, pairs, plan and output go).
function reset() {
  planGen++;
  lists.source = lists.target = null;
  pairs = [];
  lastPlan = null;
  for (const which of ["source", "target"]) {
    document.getElementById(`tp-${which}-path`).value = "";
    document.getElementById(`tp-${which}-pick`).value = "";
    setChildren(document.getElementById(`tp-${which}-list`));
    document.getElementById(`tp-${which}-facts`).textContent = "";
  }
  for (const input of [ui.dup, ui.rem, ui.vocab, ui.out]) input.value = "";
  renderPairs();
  setChildren(ui.plan);
  setChildren(ui.result);
  ui.progress.hidden = true;
  clearError(ui.error);
  ui.stage.disabled = ui.write.disabled = true;
  if (!document.getElementById("tab-transplant").hidden) { loadSide("target"); loadSide("source"); }
}

async function loadSide(which) {
  const path = document.getElementById(`tp-${which}-path`).value.trim();
  const facts = document.getElementById(`tp-${which}-facts`);
  clearError(ui.error);
  try {
    const answer = await api("/api/transplant/tensors", { params: { path: path || (which === "source" ? targetPath() : "") } });
    lists[which] = answer;
    facts.textContent = `${answer.model.name}: ${answer.model.tensor_count} tensors, ${fmtBytes(answer.model.total_bytes)}`;
  } catch (e) {
    lists[which] = null;
    facts.textContent = "";
    showError(e, ui.error);
  }
  renderList(which);
  invalidate();
}

function targetPath() {
  return document.getElementById("tp-target-path").value.trim();
}

function matcher() {
  const text = ui.filter.value.trim();
  if (!text) return () => true;
  const m = /^\/(.*)\/$/.exec(text);
  if (m) {
    try {
      const rx = new RegExp(m[1]);
      return (name) => rx.test(name);
    } catch {
      return () => false;
    }
  }
  return (name) => name.includes(text);
}

function renderList(which) {
  const list = document.getElementById(`tp-${which}-list`);
  const data = lists[which];
  if (!data) { setChildren(list); return; }
  const match = matcher();
  const shown = data.tensors.filter((t) => match(t.name));
  const pick = document.getElementById(`tp-${which}-pick`);
  setChildren(list, ...shown.slice(0, MAX_ROWS).map((t) => el("li", {
    role: "option", tabindex: 0, "data-name": t.name, title: `${t.name} · ${t.type_group}`,
    onclick: () => { pick.value = t.name; },
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick.value = t.name; } },
  }, el("span", { class: "mono tp-name", style: `border-left-color: var(--tg-${t.type_group})` }, t.name),
  el("span", { class: "muted tp-meta" }, `${t.dtype} ${fmtList(t.shape)}`))),
  shown.length > MAX_ROWS ? el("li", { class: "muted" }, `… ${shown.length - MAX_ROWS} more: narrow the filter`) : null,
  !shown.length ? el("li", { class: "muted" }, "nothing matches the filter") : null);
}

function addPair() {
  const from = document.getElementById("tp-source-pick").value.trim();
  const to = document.getElementById("tp-target-pick").value.trim() || from;
  if (!from) { showError(new Error("pick a source tensor or module first (FROM)"), ui.error); return; }
  clearError(ui.error);
  pairs.push({ from, to });
  renderPairs();
  invalidate();
}

function renderPairs() {
  setChildren(ui.pairs, ...pairs.map((p, i) => el("li", { class: "row" },
    el("span", { class: "mono" }, p.from), "→", el("span", { class: "mono" }, p.to),
    el("button", { title: "remove this pair", "aria-label": `remove pair ${i + 1}`,
      onclick: () => { pairs.splice(i, 1); renderPairs(); invalidate(); } }, "×"))));
}

function layersOf(input) {
  return input.value.split(/[\s,]+/).filter(Boolean).map(Number);
}

function body() {
  const b = { map: pairs, duplicate_layers: layersOf(ui.dup), remove_layers: layersOf(ui.rem), dtype_policy: ui.dtype.value };
  const target = targetPath();
  const source = document.getElementById("tp-source-path").value.trim();
  if (target) b.target = target;
  if (source) b.source = source;
  if (ui.vocab.value) b.resize_vocab = Number(ui.vocab.value);
  return b;
}

// Anything changed since the plan: it must be planned again before it is staged or written.
function invalidate() {
  if (!lastPlan) return;
  lastPlan = null;
  ui.stage.disabled = ui.write.disabled = true;
  ui.plan.classList.add("stale");
}

async function plan() {
  const mine = ++planGen;
  clearError(ui.error);
  setChildren(ui.result);
  try {
    const p = await api("/api/transplant/plan", { method: "POST", body: body() });
    if (mine !== planGen) return;
    lastPlan = p;
    renderPlan(p);
  } catch (e) {
    if (mine === planGen) { setChildren(ui.plan); showError(e, ui.error); }
  }
}

function renderPlan(p) {
  ui.plan.classList.remove("stale");
  const shape = (s) => (s ? fmtList(s) : "–");
  const rows = p.entries.slice(0, 500).map((e) => el("tr", { class: `verdict-${e.verdict}`, "data-target": e.target },
    el("td", { class: "mono" }, e.target),
    el("td", { class: "mono" }, `${e.source_model === "target" ? "(target) " : ""}${e.source}`),
    el("td", {}, `${e.source_dtype} ${shape(e.source_shape)}`),
    el("td", {}, e.target_shape ? `${e.target_dtype} ${shape(e.target_shape)}` : "(added)"),
    el("td", {}, fmtBytes(e.bytes)),
    el("td", { class: "tp-verdict" }, e.verdict.replace("_", " ")),
    el("td", { class: "tp-reason" }, e.reason)));
  const fixes = p.fixes.filter((f) => f.kind === "resize_vocab").map((f) => el("div", { class: "row" },
    el("span", {}, `Offered: resize the vocabulary to ${f.vocab_size} (${f.reason})`),
    el("button", { onclick: () => { ui.vocab.value = f.vocab_size; plan(); } }, "Apply this fix")));
  setChildren(ui.plan,
    !p.will_load ? el("div", { class: "tp-warning", id: "tp-warning", role: "alert" }, el("strong", {}, "Will fail: "), WARNING) : null,
    el("div", { class: p.verdict === "ok" ? "ok-msg" : "warn-msg", id: "tp-summary" },
      `${p.entries.length} tensor(s) written from the plan, ${p.unchanged_tensors} copied unchanged`
      + `${p.deleted.length ? `, ${p.deleted.length} deleted` : ""}; ${fmtBytes(p.bytes_to_write)} in all; verdict: ${p.verdict.replace("_", " ")}`),
    ...p.problems.map((x) => el("div", { class: x.verdict === "will_fail" ? "error-msg" : "warn-msg" }, `${x.verdict.replace("_", " ")}: ${x.reason}`)),
    ...Object.entries(p.config_changes).map(([k, [a, b]]) => el("div", { class: "muted" }, `config.json: ${k}: ${a} → ${b}`)),
    ...p.notes.map((n) => el("div", { class: "muted" }, n)),
    ...fixes,
    el("div", { class: "tp-table-wrap" }, el("table", { class: "hexdump tp-table", id: "tp-plan-table" },
      el("thead", {}, el("tr", {}, ...["target", "from", "source", "target had", "bytes", "verdict", "why"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows))),
    p.entries.length > 500 ? el("div", { class: "muted" }, `… ${p.entries.length - 500} more rows`) : null,
    p.deleted.length ? el("div", { class: "muted" }, `deleted: ${p.deleted.slice(0, 20).join(", ")}${p.deleted.length > 20 ? " …" : ""}`) : null);
  const isOpen = state.model && p.target === state.model.path;
  ui.stage.disabled = !(p.stageable && isOpen);
  ui.stage.title = p.stageable ? (isOpen ? "stage as byte edits on the open model" : "open the target model to stage onto it")
    : `cannot be staged: ${p.not_stageable_because}; write a new model`;
  ui.write.disabled = false;
}

async function stage() {
  if (!lastPlan) return;
  clearError(ui.error);
  try {
    const r = await api("/api/transplant/stage", { method: "POST", body: body() });
    setChildren(ui.result, el("div", { class: "ok-msg" }, `staged: ${r.edit.description} (${fmtBytes(r.bytes)} in ${r.runs} run(s)); see Staged edits`));
    emit("edits-changed", r.tensors);
  } catch (e) {
    showError(e, ui.error);
  }
}

async function write() {
  if (!lastPlan) return;
  clearError(ui.error);
  ui.write.disabled = true;
  const b = body();
  if (ui.out.value.trim()) b.out = ui.out.value.trim();
  try {
    const { job, out } = await api("/api/transplant/write", { method: "POST", body: b });
    ui.progress.hidden = false;
    ui.progress.value = 0;
    setChildren(ui.result, el("div", { class: "muted" }, `writing ${out}…`));
    followJob(job.id, (ev) => {
      if (ev.type === "progress") ui.progress.value = ev.fraction || 0;
      if (ev.type === "done") { ui.progress.value = 1; showOutput(ev.result); ui.write.disabled = false; }
      if (ev.type === "error") { showError(new Error(ev.error.message), ui.error); ui.write.disabled = false; }
    });
  } catch (e) {
    showError(e, ui.error);
    ui.write.disabled = false;
  }
}

function showOutput(r) {
  setChildren(ui.result, el("div", { class: "preview", id: "tp-output" },
    el("div", { class: r.will_load ? "ok-msg" : "warn-msg" }, `wrote ${r.path}`),
    el("div", { class: "mono" }, r.files.join(", ")),
    el("div", { class: "muted" }, `${r.tensors} tensors (${r.changed_tensors} from the plan), ${fmtBytes(r.bytes)} in ${r.seconds} s`
      + `${r.recipe ? `; recipe: ${r.recipe}` : ""}`),
    !r.will_load ? el("div", { class: "warn-msg" }, "predicted not to load: see the plan's warning") : null,
    el("div", { class: "row" }, el("button", { id: "tp-open-output", onclick: () => openModel(r.path).catch((e) => showError(e, ui.error)) },
      "Open it"))));
}
