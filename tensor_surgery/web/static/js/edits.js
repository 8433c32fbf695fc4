// The patch editor: staged edits with their descriptions, revert, undo/redo, and per-edit byte runs.

import { api } from "./api.js";
import { clearError, el, emit, fmtNum, on, select, setChildren, setStaged, showError, state } from "./state.js";

let listing = { edits: [], undone: [] };
let history = { undo: null, redo: null }; // GET /api/edits/history: what the buttons would do
let reading = 0; // bumps per listing request: only the latest answer is shown

export function initEdits() {
  const root = document.getElementById("tab-edits");
  setChildren(root, 
    el("div", { class: "row" },
      el("button", { id: "undo-btn", onclick: () => act("/api/edits/undo") }, "↶ Undo"),
      el("button", { id: "redo-btn", onclick: () => act("/api/edits/redo") }, "↷ Redo"),
      el("button", { class: "danger", id: "clear-btn", onclick: clearAll }, "Discard all")),
    el("p", { class: "error-msg", id: "edits-error", role: "alert" }),
    el("ul", { class: "list", id: "edits-list" }),
  );
  on("edits-changed", refresh);
  on("model-switching", () => { reading++; });
  on("model", () => {
    listing = { edits: [], undone: [] };
    history = { undo: null, redo: null };
    clearError(document.getElementById("edits-error"));
    render(); // the next listing (asked for by the model loader) fills it
  });
}

async function refresh(changedTensors) {
  const mine = ++reading;
  try {
    const [answer, steps] = await Promise.all([api("/api/edits"), api("/api/edits/history")]);
    if (mine !== reading) return; // a newer listing (or another model) is on its way
    listing = answer;
    history = steps;
  } catch (e) {
    if (mine === reading) showError(e, document.getElementById("edits-error"));
    return;
  }
  const touched = new Set(Array.isArray(changedTensors) ? changedTensors.filter((n) => state.byName.has(n)) : []);
  for (const n of setStaged(new Map(Object.entries(listing.staged_tensors)))) touched.add(n);
  render();
  emit("edits", listing);
  emit("staged", [...touched]);
}

function render() {
  const list = document.getElementById("edits-list");
  const step = (s) => (s ? `${s.action === "revert" ? "the revert of " : ""}#${s.edit_id} ${s.description}` : "");
  const undo = document.getElementById("undo-btn"), redo = document.getElementById("redo-btn");
  undo.disabled = !history.undo;
  redo.disabled = !history.redo;
  undo.textContent = history.undo && history.undo.action === "revert" ? `↶ Undo revert #${history.undo.edit_id}` : "↶ Undo";
  redo.textContent = history.redo && history.redo.action === "revert" ? `↷ Redo revert #${history.redo.edit_id}` : "↷ Redo";
  undo.title = history.undo ? `undo ${step(history.undo)}` : "nothing to undo";
  redo.title = history.redo ? `redo ${step(history.redo)}` : "nothing to redo";
  document.getElementById("clear-btn").disabled = !listing.edits.length;
  if (!listing.edits.length) {
    setChildren(list, el("li", { class: "muted" }, "No staged edits. Edit values from the Focus tab, or load a patch."));
    return;
  }
  setChildren(list, ...[...listing.edits].reverse().map((e) => {
    const details = el("div", { class: "runs", hidden: true });
    return el("li", { "data-edit-id": e.id },
      el("div", { class: "desc" }, `#${e.id} ${e.description}`),
      el("div", { class: "meta" }, `${new Date(e.created_at * 1000).toLocaleString()} · ${fmtNum(e.bytes_changed)} bytes in ${e.run_count} run(s) · `,
        ...e.tensor_names.slice(0, 3).map((n) => el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); select(n); } }, n, " ")),
        e.tensor_names.length > 3 ? `+${e.tensor_names.length - 3} more` : ""),
      el("div", { class: "actions" },
        el("button", { onclick: () => toggleDetails(e.id, details) }, "Bytes"),
        el("button", { class: "danger", title: "take this edit out (Undo brings it back)", onclick: () => act(`/api/edits/${e.id}/revert`) }, "Revert")),
      details);
  }));
}

async function toggleDetails(id, box) {
  if (!box.hidden) { box.hidden = true; return; }
  try {
    const d = await api(`/api/edits/${id}`, { params: { runs: 200 } });
    setChildren(box, ...d.runs.map((r) => el("div", {},
      `${r.tensor_name} @ ${r.offset_bytes} (${r.length} B): ${r.original_hex} → ${r.new_hex}${r.truncated ? " …" : ""}`)),
    d.run_count > d.runs.length ? el("div", { class: "muted" }, `… ${d.run_count - d.runs.length} more runs`) : null);
    box.hidden = false;
  } catch (e) {
    showError(e, document.getElementById("edits-error"));
  }
}

async function act(path) {
  const err = document.getElementById("edits-error");
  clearError(err);
  try {
    const r = await api(path, { method: "POST" });
    const edit = r.undone || r.redone || r.reverted;
    await refresh(edit ? edit.tensor_names : []);
  } catch (e) {
    showError(e, err);
  }
}

async function clearAll() {
  if (!confirm(`Discard all ${listing.edits.length} staged edits? Saved patches are kept.`)) return;
  try {
    await api("/api/edits", { method: "DELETE" });
    await refresh();
  } catch (e) {
    showError(e, document.getElementById("edits-error"));
  }
}

