// Editing from the focus view: type a new value for the clicked cell, or apply an operation to the
// selected rectangle, the shown slice or the whole tensor. Every edit is previewed (dry run) first;
// "Stage" then records it, and the heatmap switches to the staged view to show it.

import { api } from "./api.js";
import { focus, fullIndex, sliceParams } from "./focus.js";
import { clearError, el, emit, fmtNum, on, setChildren, showError, state } from "./state.js";

const OPS = {
  scale: [["factor", "×", 0.5]],
  add: [["value", "+", 0.0]],
  clamp: [["min", "min", -0.1], ["max", "max", 0.1]],
  zero: [],
  fill: [["value", "=", 0.0]],
  normalize: [["target_norm", "L2 norm", 1.0]],
};

let pending = null; // the request previewed last, staged by "Stage"

export function initEditor(root) {
  setChildren(root, 
    el("h4", {}, "Edit"),
    el("div", { id: "cell-editor", class: "row" },
      el("span", { class: "muted", id: "cell-label" }, "click a heatmap cell to edit it; shift+click another to select a rectangle")),
    el("div", { class: "row" },
      el("label", {}, "op", el("select", { id: "op-select", onchange: renderParams },
        ...Object.keys(OPS).map((op) => el("option", { value: op }, op)))),
      el("span", { id: "op-params", class: "row" }),
      el("label", {}, "on", el("select", { id: "op-target" },
        el("option", { value: "selection" }, "selection"),
        el("option", { value: "slice" }, "shown slice"),
        el("option", { value: "tensor" }, "whole tensor")))),
    el("div", { class: "row" },
      el("label", {}, "only", el("select", { id: "op-select-mode" },
        el("option", { value: "" }, "all values"),
        el("option", { value: "above_percentile" }, "above percentile"),
        el("option", { value: "below_percentile" }, "below percentile"),
        el("option", { value: "top_k_abs" }, "top k by |x|"),
        el("option", { value: "bottom_k_abs" }, "bottom k by |x|"))),
      el("input", { type: "number", id: "op-select-value", value: 99, step: "any", title: "percentile or k" }),
      el("span", { id: "op-axis-box" }),
      el("button", { id: "op-preview", onclick: previewOp }, "Preview")),
    el("div", { id: "edit-preview" }),
    el("p", { class: "error-msg", id: "edit-error", role: "alert" }),
  );
  renderParams();
}

on("cell-selected", (sel) => {
  const box = document.getElementById("cell-editor");
  if (!box) return;
  pending = null;
  setChildren(document.getElementById("edit-preview"));
  if (sel.r0 === sel.r1 && sel.c0 === sel.c1) {
    const idx = fullIndex(sel.r0, sel.c0);
    const input = el("input", { type: "number", step: "any", id: "cell-value", value: sel.value ?? "", title: "new value" });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); pending ? stage() : previewCell(idx, input.value); }
    });
    input.addEventListener("input", () => { pending = null; });
    setChildren(box, 
      el("span", { class: "mono", id: "cell-label" }, `[${idx.join(", ")}] = ${fmtNum(sel.value)}`),
      el("span", { class: "muted" }, "→"), input,
      el("button", { id: "cell-preview", onclick: () => previewCell(idx, input.value) }, "Preview"));
    input.focus();
    input.select();
    document.getElementById("op-target").value = "selection";
  } else {
    const rows = sel.r1 - sel.r0 + 1, cols = sel.c1 - sel.c0 + 1;
    setChildren(box, el("span", { class: "mono", id: "cell-label" },
      `selection rows ${sel.r0}..${sel.r1}, cols ${sel.c0}..${sel.c1} (${rows}×${cols} = ${fmtNum(rows * cols)} values)`));
    document.getElementById("op-target").value = "selection";
  }
});

function renderParams() {
  const op = document.getElementById("op-select").value;
  setChildren(document.getElementById("op-params"), ...OPS[op].map(([key, label, def]) =>
    el("label", {}, label, el("input", { type: "number", step: "any", value: def, "data-key": key, class: "op-param" }))));
  setChildren(document.getElementById("op-axis-box"), op === "normalize"
    ? el("label", {}, "each", el("select", { id: "op-axis" },
      el("option", { value: "rows" }, "row"), el("option", { value: "cols" }, "column"), el("option", { value: "all" }, "region")))
    : "");
}

function targetFields(target) {
  if (target === "tensor") return {};
  if (target === "selection") {
    if (!focus.sel) throw new Error("select a cell or a rectangle on the heatmap first (shift+click extends)");
    return { slice: sliceParams(focus.slice, focus.sel) };
  }
  return { slice: sliceParams() };
}

function previewCell(index, raw) {
  if (raw === "" || Number.isNaN(Number(raw))) {
    showError(new Error("type a number"), document.getElementById("edit-error"));
    return;
  }
  preview({ tensor_name: focus.tensor.name, op: "set", cells: [{ index, value: Number(raw) }] });
}

function previewOp() {
  const err = document.getElementById("edit-error");
  try {
    const op = document.getElementById("op-select").value;
    const body = { tensor_name: focus.tensor.name, op, ...targetFields(document.getElementById("op-target").value) };
    document.querySelectorAll(".op-param").forEach((i) => { body[i.dataset.key] = Number(i.value); });
    if (op === "normalize") body.axis = document.getElementById("op-axis").value;
    const mode = document.getElementById("op-select-mode").value;
    if (mode) body.select = { mode, value: Number(document.getElementById("op-select-value").value) };
    preview(body);
  } catch (e) {
    showError(e, err);
  }
}

export async function preview(body) {
  const box = document.getElementById("edit-preview");
  const err = document.getElementById("edit-error");
  clearError(err);
  pending = null;
  try {
    const r = await api("/api/edit_tensor", { method: "POST", body: { ...body, dry_run: true } });
    pending = body;
    setChildren(box, renderPreview(r.preview, stage));
  } catch (e) {
    setChildren(box);
    showError(e, err);
  }
}

export function renderPreview(p, onStage) {
  const row = (label, s) => el("tr", {}, el("th", {}, label),
    ...["min", "max", "mean", "std", "l2_norm"].map((k) => el("td", {}, s ? fmtNum(s[k]) : "–")));
  const warn = [];
  if (p.rounding && p.rounding.rounded) warn.push(`${fmtNum(p.rounding.rounded)} value(s) rounded to the nearest ${p.rounding.dtype}`);
  if (p.rounding && p.rounding.overflowed) warn.push(`${fmtNum(p.rounding.overflowed)} value(s) overflow ${p.rounding.dtype} (become inf/NaN)`);
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
    setChildren(document.getElementById("edit-preview"), el("div", { class: "ok-msg", id: "staged-msg" }, `staged: ${r.edit.description}`));
    if (state.view !== "staged") {
      state.view = "staged";
      document.querySelectorAll("#view-toggle button").forEach((b) => b.setAttribute("aria-pressed", String(b.textContent === "staged")));
    }
    emit("edits-changed", r.edit.tensor_names);
  } catch (e) {
    showError(e, err);
  }
}
