// Header: model status, open another model, save staged edits as a patch, export with progress,
// theme, settings, and a status line for notices ("event: notice"). It learns the staged edits and
// the patch library from the "edits" and "library" events.

import { api } from "./api.js";
import { followJob } from "./jobs.js";
import { openModel } from "./model.js";
import { clearError, el, emit, fmtBytes, fmtNum, on, savePrefs, setChildren, showError, state } from "./state.js";

let edits = []; // the open model's staged edits (last "edits" event)
let library = []; // the patch library (last "library" event)

export function initHeader() {
  document.getElementById("open-model-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = document.getElementById("open-model-path");
    const path = input.value.trim();
    if (!path) return;
    clearError(document.getElementById("header-error"));
    try {
      await openModel(path);
      input.value = "";
    } catch (err) {
      showError(err);
    }
  });
  document.getElementById("open-model-path").addEventListener("focus", loadChoices);
  document.getElementById("save-patch-btn").addEventListener("click", openSaveDialog);
  document.getElementById("save-form").addEventListener("submit", savePatch);
  document.getElementById("export-btn").addEventListener("click", openExportDialog);
  document.getElementById("export-form").addEventListener("submit", startExport);
  document.getElementById("theme-btn").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    setTheme(next);
  });
  setTheme(localStorage.getItem("ts-theme") || "dark");
  document.getElementById("settings-btn").addEventListener("click", openSettings);
  document.getElementById("settings-form").addEventListener("submit", applySettings);
  on("model-switching", () => notice(null));
  on("model", () => { renderStatus(); loadChoices(); });
  on("notice", notice);
  on("edits", (listing) => {
    edits = listing.edits;
    const badge = document.getElementById("staged-badge");
    badge.textContent = `${edits.length} staged`;
    badge.classList.toggle("has", edits.length > 0);
  });
  on("library", (patches) => { library = patches; });
}

// A short status line under the header (not an error): kept until the next model switch or notice.
function notice(n) {
  const box = document.getElementById("header-notice");
  if (!box) return;
  box.hidden = !n;
  box.className = `header-notice ${n && n.kind === "warn" ? "warn-msg" : "muted"}`;
  setChildren(box, n ? [el("span", {}, n.text), el("button", { class: "link", "aria-label": "Dismiss", title: "Dismiss", onclick: () => notice(null) }, "×")] : []);
}

// The models the Open box offers (GET /api/models: this session's, the demo models), as a datalist.
async function loadChoices() {
  try {
    const { models } = await api("/api/models");
    setChildren(document.getElementById("model-choices"), ...models.filter((m) => !m.current).map((m) =>
      el("option", { value: m.path, label: `${m.name} (${m.source === "demo" ? "demo model" : "opened before"})` })));
  } catch (e) {
    // the box still takes any path; the error is the server's to report
    showError(e);
  }
}

function setTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("ts-theme", theme);
  emit("theme", theme);
}

function renderStatus() {
  const m = state.model;
  document.getElementById("model-name").textContent = m.name;
  document.title = `Tensor Surgery · ${m.name}`;
  const dtypes = Object.entries(m.dtypes).map(([k, v]) => `${k}×${v}`).join(" ");
  document.getElementById("model-facts").textContent =
    `${fmtNum(m.tensor_count)} tensors · ${fmtBytes(m.total_bytes)} · ${dtypes} · ${m.shards > 1 ? `${m.shards} shards` : "1 file"}`;
  document.getElementById("model-facts").title = m.path + (m.warnings.length ? `\n${m.warnings.join("\n")}` : "");
  if (m.warnings.length) showError(new Error(m.warnings.join("; ")));
}

// -- settings -----------------------------------------------------------------------------------

async function openSettings() {
  const form = document.getElementById("settings-form");
  form.theme.value = document.documentElement.dataset.theme;
  form.window.value = String(state.prefs.window);
  form.thumbs.checked = state.prefs.thumbs;
  clearError(document.getElementById("settings-error"));
  document.getElementById("settings-dialog").showModal();
  try {
    const { settings } = await api("/api/settings");
    setChildren(document.getElementById("server-settings"),
      el("tr", {}, el("th", {}, "name"), el("th", {}, "value"), el("th", {}, "meaning")),
      ...Object.entries(settings).map(([name, s]) => el("tr", {},
        el("td", {}, name), el("td", { class: "mono" }, s.value || "–"), el("td", { class: "muted", style: "white-space:normal" }, s.help))));
  } catch (e) {
    showError(e, document.getElementById("settings-error"));
  }
}

function applySettings(e) {
  if (e.submitter && e.submitter.value === "cancel") return;
  const form = e.target;
  setTheme(form.theme.value);
  savePrefs({ window: Number(form.window.value), thumbs: form.thumbs.checked });
}

// -- save ---------------------------------------------------------------------------------------

function openSaveDialog() {
  const dlg = document.getElementById("save-dialog");
  clearError(document.getElementById("save-error"));
  const box = document.getElementById("save-edit-choice");
  setChildren(box, el("legend", {}, "Edits to include"), ...(edits.length ? edits.map((e) =>
    el("label", {}, el("input", { type: "checkbox", name: "edit", value: e.id, checked: true }), ` #${e.id} ${e.description}`))
    : [el("span", { class: "muted" }, "No staged edits to save.")]));
  document.getElementById("save-confirm").disabled = !edits.length;
  dlg.showModal();
}

async function savePatch(e) {
  const dlg = document.getElementById("save-dialog");
  if (e.submitter && e.submitter.value === "cancel") return;
  e.preventDefault();
  const form = e.target;
  const ids = [...form.querySelectorAll('input[name="edit"]:checked')].map((i) => Number(i.value));
  const all = ids.length === edits.length;
  try {
    await api("/api/patches", { method: "POST", body: {
      name: form.name.value.trim(), description: form.description.value, edit_ids: all ? null : ids,
    } });
    dlg.close();
    form.reset();
    emit("patches-changed");
    document.querySelector('[data-tab="patches"]').click();
  } catch (err) {
    showError(err, document.getElementById("save-error"));
  }
}

// -- export -------------------------------------------------------------------------------------

function openExportDialog() {
  const dlg = document.getElementById("export-dialog");
  clearError(document.getElementById("export-error"));
  document.getElementById("export-status").textContent = "";
  document.getElementById("export-status").className = "export-status";
  document.getElementById("export-progress").hidden = true;
  document.getElementById("export-confirm").disabled = false;
  const box = document.getElementById("export-patch-choice");
  setChildren(box, el("legend", {}, "then these library patches, in order"),
    ...(library.length ? library.filter((p) => !p.error).map((p) =>
      el("label", {}, el("input", { type: "checkbox", name: "patch", value: p.name }), ` ${p.name} — ${p.description || ""}`))
      : [el("span", { class: "muted" }, "no patches in the library")]));
  dlg.showModal();
}

async function startExport(e) {
  if (e.submitter && e.submitter.value === "cancel") return;
  e.preventDefault();
  const form = e.target;
  const err = document.getElementById("export-error");
  clearError(err);
  const body = {
    out: form.out.value.trim() || null,
    include_staged: form.include_staged.checked,
    patches: [...form.querySelectorAll('input[name="patch"]:checked')].map((i) => i.value),
    max_shard_size: form.max_shard_size.value.trim() || null,
  };
  const bar = document.getElementById("export-progress");
  const status = document.getElementById("export-status");
  try {
    const { job } = await api("/api/export", { method: "POST", body });
    document.getElementById("export-confirm").disabled = true;
    bar.hidden = false;
    bar.value = 0;
    status.textContent = `exporting to ${job.description.replace(/^export \S+ to /, "")}…`;
    followJob(job.id, (ev) => {
      bar.value = ev.fraction || 0;
      if (ev.type === "progress") status.textContent = `${(100 * (ev.fraction || 0)).toFixed(0)}% · ${fmtBytes(ev.done)} of ${fmtBytes(ev.total)}`;
      if (ev.type === "done") {
        bar.value = 1;
        status.textContent = `done: ${ev.result.path} (${ev.result.files.join(", ")}) in ${ev.result.seconds} s`;
        status.className = "export-status ok-msg";
      }
      if (ev.type === "error") {
        showError(new Error(ev.error.message), err);
        document.getElementById("export-confirm").disabled = false;
      }
    });
  } catch (x) {
    if (x.details && x.details.conflicts) {
      showError(new Error(`${x.message}\n${x.details.conflicts.slice(0, 5).map((c) => c.message).join("\n")}`), err);
    } else {
      showError(x, err);
    }
  }
}

