// Editing from the focus view: type a new value for the clicked cell, or apply an operation to the
// selected rectangle, the shown slice or the whole tensor. Every edit is previewed (dry run) first;
// "Stage" then records it, and the view switches to staged to show it.
//
// The operations, their parameters and the selection modes come from the server's schema
// (schema.js); what this panel knows about the focused tensor comes from Focus's events.

import { api } from "./api.js";
import { editSchema } from "./schema.js";
import { clearError, el, emit, fmtList, fmtNum, on, setChildren, setView, showError } from "./state.js";

// How a few parameters read and start (presentation only: the server's schema decides which exist).
const PARAM_UI = {
  "scale.factor": ["×", 0.5], "add.value": ["+", 0], "fill.value": ["=", 0],
  "clamp.min": ["min", -0.1], "clamp.max": ["max", 0.1], "normalize.target_norm": ["L2 norm", 1],
  "normalize.axis": ["each", "rows"],
};
const CHOICE_LABELS = { "normalize.axis": { rows: "row", cols: "column", all: "region" } };
const MODE_LABELS = { above_percentile: "above percentile", below_percentile: "below percentile",
  top_k_abs: "top k by |x|", bottom_k_abs: "bottom k by |x|" };
// The op list holds the operations that take a slice target (this panel's "selection", "shown
// slice", "whole tensor"); the others (set: typed into a cell; write_hex: bytes) have their own UI.

let root = null;
let tensor = null; // the tensor Focus shows ({name, shape, ...}) or null
let shownParams = null; // the shown slice's request parameters
let selection = null; // Focus's "cell-selected" detail, or null
let pending = null; // the request previewed last, staged by "Stage"
let schema = null;

export function initEditor() {
  root = document.getElementById("edit-section");
  root.hidden = true;
  on("focus-tensor", (d) => show(d && d.tensor));
  on("slice-loaded", (d) => {
    if (!tensor || d.tensor.name !== tensor.name) return;
    shownParams = d.params;
    if (!d.selection) { if (selection) { selection = null; cellHint(); } return; }
    selection = { ...selection, ...d.selection };
    // the label of a picked cell follows the data shown (after staging it shows the new value)
    const label = document.getElementById("cell-label");
    if (label && d.selection.value !== null && d.selection.r0 === d.selection.r1 && d.selection.c0 === d.selection.c1) {
      label.textContent = `${fmtList(d.selection.index)} = ${fmtNum(d.selection.value)}`;
    }
  });
  on("cell-selected", cellSelected);
  on("preview-edit", (body) => {
    if (!tensor) return;
    preview(body);
    root.scrollIntoView({ block: "nearest" });
  });
}

function show(t) {
  tensor = t || null;
  selection = null;
  shownParams = null;
  pending = null;
  root.hidden = !tensor;
  if (!tensor) { setChildren(root); return; }
  setChildren(root,
    el("h4", {}, "Edit"),
    el("div", { id: "cell-editor", class: "row" }),
    el("div", { class: "row" },
      el("label", {}, "op", el("select", { id: "op-select", onchange: renderParams })),
      el("span", { id: "op-params", class: "row" }),
      el("label", {}, "on", el("select", { id: "op-target" },
        el("option", { value: "selection" }, "selection"),
        el("option", { value: "slice" }, "shown slice"),
        el("option", { value: "tensor" }, "whole tensor")))),
    el("div", { class: "row" },
      el("label", {}, "only", el("select", { id: "op-select-mode" }, el("option", { value: "" }, "all values"))),
      el("input", { type: "number", id: "op-select-value", value: 99, step: "any", title: "percentile or k" }),
      el("button", { id: "op-preview", onclick: previewOp }, "Preview")),
    el("div", { id: "edit-preview" }),
    el("p", { class: "error-msg", id: "edit-error", role: "alert" }),
  );
  cellHint();
  const name = tensor.name;
  editSchema().then((s) => {
    schema = s;
    if (!tensor || tensor.name !== name || !document.getElementById("op-select")) return;
    setChildren(document.getElementById("op-select"), ...s.ops.filter((op) => op.targets.includes("slice")).map((op) =>
      el("option", { value: op.name, title: op.description, selected: op.name === "scale" }, op.name)));
    document.getElementById("op-select-mode").append(...s.selectModes.map((m) =>
      el("option", { value: m.value, title: m.description }, MODE_LABELS[m.value] || m.value.replace(/_/g, " "))));
    if (s.selectValue && s.selectValue.description) document.getElementById("op-select-value").title = s.selectValue.description;
    renderParams();
  }).catch((e) => showError(e, document.getElementById("edit-error")));
}

function cellHint() {
  const box = document.getElementById("cell-editor");
  if (box) setChildren(box, el("span", { class: "muted", id: "cell-label" }, "click a heatmap cell to edit it; shift+click another to select a rectangle"));
}

function cellSelected(sel) {
  if (!tensor || sel.tensor.name !== tensor.name) return;
  const box = document.getElementById("cell-editor");
  selection = sel;
  pending = null;
  setChildren(document.getElementById("edit-preview"));
  if (sel.r0 === sel.r1 && sel.c0 === sel.c1) {
    const idx = sel.index;
    const input = el("input", { type: "number", step: "any", id: "cell-value", value: sel.value ?? "", title: "new value" });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); pending ? stage() : previewCell(idx, input.value); }
    });
    input.addEventListener("input", () => { pending = null; });
    setChildren(box,
      el("span", { class: "mono", id: "cell-label" }, `${fmtList(idx)} = ${fmtNum(sel.value)}`),
      el("span", { class: "muted" }, "→"), input,
      el("button", { id: "cell-preview", onclick: () => previewCell(idx, input.value) }, "Preview"));
    input.focus();
    input.select();
  } else {
    const rows = sel.r1 - sel.r0 + 1, cols = sel.c1 - sel.c0 + 1;
    setChildren(box, el("span", { class: "mono", id: "cell-label" },
      `selection rows ${sel.r0}..${sel.r1}, cols ${sel.c0}..${sel.c1} (${rows}×${cols} = ${fmtNum(rows * cols)} values)`));
  }
  document.getElementById("op-target").value = "selection";
}

function renderParams() {
  const name = document.getElementById("op-select").value;
  const op = schema && schema.ops.find((o) => o.name === name);
  const fields = op ? op.params : [];
  document.getElementById("op-select").title = op ? op.description : "";
  const mode = document.getElementById("op-select-mode");
  mode.disabled = !!op && !op.targets.includes("select"); // e.g. normalize works on whole rows
  if (mode.disabled) mode.value = "";
  setChildren(document.getElementById("op-params"), ...fields.map((f) => {
    const [label, def] = PARAM_UI[`${name}.${f.name}`] || [f.name.replace(/_/g, " "), f.default ?? ""];
    if (f.choices) {
      const labels = CHOICE_LABELS[`${name}.${f.name}`] || {};
      return el("label", { title: f.description }, label, el("select", { class: "op-param", "data-key": f.name, "data-kind": "enum", id: `op-${f.name}` },
        ...f.choices.map((c) => el("option", { value: c.value, title: c.description, selected: c.value === def }, labels[c.value] || c.value))));
    }
    return el("label", { title: f.description }, label, el("input", {
      type: "number", step: f.type === "integer" ? "1" : "any", value: def, min: f.minimum, max: f.maximum,
      "data-key": f.name, "data-kind": f.type, "data-required": f.required ? "1" : null, class: "op-param", id: `op-${f.name}` }));
  }));
}

function targetFields(target) {
  if (target === "tensor") return {};
  if (target === "selection") {
    if (!selection) throw new Error("select a cell or a rectangle on the heatmap first (shift+click extends)");
    return { slice: selection.params };
  }
  if (!shownParams) throw new Error("the slice is still loading: try again in a moment");
  return { slice: shownParams };
}

function previewCell(index, raw) {
  if (raw === "" || Number.isNaN(Number(raw))) {
    showError(new Error("type a number"), document.getElementById("edit-error"));
    return;
  }
  preview({ tensor_name: tensor.name, op: "set", cells: [{ index, value: Number(raw) }] });
}

function previewOp() {
  const err = document.getElementById("edit-error");
  try {
    const op = document.getElementById("op-select").value;
    if (!op) throw new Error("the operations are still loading from the server: try again in a moment");
    const body = { tensor_name: tensor.name, op, ...targetFields(document.getElementById("op-target").value) };
    document.querySelectorAll(".op-param").forEach((i) => {
      if (i.dataset.kind === "enum") { body[i.dataset.key] = i.value; return; }
      if (i.value === "") {
        if (i.dataset.required) throw new Error(`${i.dataset.key.replace(/_/g, " ")}: type a number`);
        return; // an optional parameter left empty (clamp with only a max)
      }
      body[i.dataset.key] = Number(i.value);
    });
    const mode = document.getElementById("op-select-mode").value;
    if (mode) body.select = { mode, value: Number(document.getElementById("op-select-value").value) };
    preview(body);
  } catch (e) {
    showError(e, err);
  }
}

async function preview(body) {
  const box = document.getElementById("edit-preview");
  const err = document.getElementById("edit-error");
  clearError(err);
  pending = null;
  try {
    const r = await api("/api/edit_tensor", { method: "POST", body: { ...body, dry_run: true } });
    if (!tensor || body.tensor_name !== tensor.name) return;
    pending = body;
    setChildren(box, renderPreview(r.preview, stage));
    box.scrollIntoView({ block: "nearest" }); // the Stage button, next to what was clicked
  } catch (e) {
    setChildren(box);
    showError(e, err);
  }
}

function renderPreview(p, onStage) {
  const row = (label, s) => el("tr", {}, el("th", {}, label),
    ...["min", "max", "mean", "std", "l2_norm"].map((k) => el("td", {}, s ? fmtNum(s[k]) : "–")));
  const warn = [];
  if (p.rounding && p.rounding.rounded) warn.push(`${fmtNum(p.rounding.rounded)} value(s) rounded to the nearest ${p.rounding.dtype}`);
  if (p.rounding && p.rounding.overflowed) warn.push(`${fmtNum(p.rounding.overflowed)} value(s) overflow ${p.rounding.dtype} (become inf/NaN)`);
  // a GGUF quantized tensor: whole blocks are quantized again, and their other values move with the new scale
  if (p.rounding && p.rounding.requantized_blocks) warn.push(`${fmtNum(p.rounding.requantized_blocks)} ${p.rounding.dtype} block(s) re-quantized`
    + (p.rounding.collateral ? `: ${fmtNum(p.rounding.collateral)} untargeted value(s) in them change too` : "") + "; 'after' is what the blocks will hold");
  return el("div", { class: "preview", id: "preview-box" },
    el("div", { class: "desc" }, p.description),
    el("div", { class: "muted" }, `${fmtNum(p.targeted_values)} targeted · ${fmtNum(p.values_changed)} values changed · ${fmtNum(p.bytes_changed)} bytes · ${p.runs} run(s)`),
    p.before || p.after ? el("table", {},
      el("tr", {}, el("th", {}, ""), ...["min", "max", "mean", "std", "L2"].map((h) => el("th", {}, h))),
      row("before", p.before), row("after", p.after)) : null,
    warn.length ? el("div", { class: "warn-msg" }, warn.join("; ")) : null,
    el("div", { class: "row" },
      el("button", { class: "primary", id: "stage-btn", disabled: !p.values_changed && !p.bytes_changed, onclick: onStage }, "Stage"),
      !p.bytes_changed ? el("span", { class: "muted" }, "nothing would change") : null));
}

async function stage() {
  if (!pending) return;
  const err = document.getElementById("edit-error");
  clearError(err);
  try {
    const r = await api("/api/edit_tensor", { method: "POST", body: pending });
    pending = null;
    const box = document.getElementById("edit-preview");
    setChildren(box, el("div", { class: "ok-msg", id: "staged-msg" }, `staged: #${r.edit.id} ${r.edit.description}`));
    box.scrollIntoView({ block: "nearest" });
    setView("staged");
    emit("edit-staged", { edit: r.edit });
    emit("edits-changed", r.edit.tensor_names);
  } catch (e) {
    showError(e, err);
  }
}
