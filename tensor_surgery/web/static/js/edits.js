// The patch editor: staged edits with their descriptions, revert, undo/redo, and per-edit byte runs.

import { api } from "./api.js";
import { clearError, el, emit, fmtNum, on, select, setChildren, showError, state } from "./state.js";

let listing = { edits: [], undone: [] };

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
}

export async function refresh(changedTensors) {
  try {
    listing = await api("/api/edits");
  } catch (e) {
    showError(e, document.getElementById("edits-error"));
    return;
  }
  const before = new Map(state.staged);
  state.staged = new Map(Object.entries(listing.staged_tensors));
  const touched = new Set(Array.isArray(changedTensors) ? changedTensors : []);
  for (const n of new Set([...before.keys(), ...state.staged.keys()])) {
    if (before.get(n) !== state.staged.get(n)) touched.add(n);
  }
  render();
  emit("staged", [...touched]);
}

function render() {
  const list = document.getElementById("edits-list");
  document.getElementById("undo-btn").disabled = !listing.edits.length;
  document.getElementById("redo-btn").disabled = !listing.undone.length;
  document.getElementById("clear-btn").disabled = !listing.edits.length;
  const badge = document.getElementById("staged-badge");
  badge.textContent = `${listing.edits.length} staged`;
  badge.classList.toggle("has", listing.edits.length > 0);
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
        el("button", { class: "danger", onclick: () => act(`/api/edits/${e.id}/revert`) }, "Revert")),
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

export function currentEdits() {
  return listing.edits;
}
