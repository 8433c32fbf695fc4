// The patch manager: the library with descriptions and signature status; load (with the
// verification report; an INVALID signature only after an explicit confirm), save, annotate,
// download, upload, invert and delete.

import { api } from "./api.js";
import { clearError, el, emit, fmtBytes, fmtNum, on, setChildren, showError } from "./state.js";

let library = [];
let reading = 0; // bumps per listing request: only the latest answer is shown

export function initPatches() {
  const root = document.getElementById("tab-patches");
  const upload = el("input", { type: "file", accept: ".hexpatch,application/json", id: "patch-upload", hidden: true, onchange: uploadFile });
  setChildren(root, 
    el("div", { class: "row" },
      el("button", { class: "primary", onclick: () => document.getElementById("save-patch-btn").click() }, "Save staged edits…"),
      el("button", { onclick: () => upload.click() }, "Upload .hexpatch…"), upload,
      el("button", { onclick: refresh, title: "reload the list" }, "⟳")),
    el("p", { class: "error-msg", id: "patches-error", role: "alert" }),
    el("div", { id: "patch-report" }),
    el("ul", { class: "list", id: "patch-list" }),
  );
  on("patches-changed", refresh);
  on("model", () => {
    // a verify or load report was about the model just left
    setChildren(document.getElementById("patch-report"));
    clearError(document.getElementById("patches-error"));
  });
}

async function refresh() {
  const mine = ++reading;
  let answer;
  try {
    answer = await api("/api/patches");
    if (mine !== reading) return;
    library = answer.patches;
  } catch (e) {
    if (mine === reading) showError(e, document.getElementById("patches-error"));
    return;
  }
  const errorBox = document.getElementById("patches-error");
  if (answer.trust_error) {
    // signatures were checked against no trusted key: say why, or every signer looks unknown
    showError({ message: `trust list: ${answer.trust_error.message}` }, errorBox);
  } else if (errorBox.textContent.startsWith("trust list: ")) {
    clearError(errorBox); // fixed since
  }
  const list = document.getElementById("patch-list");
  if (!library.length) {
    setChildren(list, el("li", { class: "muted" }, "No patches yet. Stage edits, then save them as a patch."));
  } else {
    setChildren(list, ...library.map(renderItem));
  }
  emit("library", library);
}

function renderItem(p) {
  const desc = el("div", { class: "desc" }, p.description || el("span", { class: "muted" }, "(no description)"));
  return el("li", { "data-patch": p.name },
    el("div", { class: "mono" }, p.name),
    p.signature ? signatureBadge(p.signature) : null,
    desc,
    p.error ? el("div", { class: "error-msg" }, p.error)
      : el("div", { class: "meta" }, `${fmtNum(p.entries)} entries · ${fmtNum(p.changed_bytes)} bytes · ${p.tensors.length} tensor(s) · ${fmtBytes(p.size)} · ${new Date(p.modified * 1000).toLocaleString()}`),
    el("div", { class: "actions" },
      el("button", { class: "primary", onclick: () => load(p.name), disabled: !!p.error }, "Load"),
      el("button", { onclick: () => verify(p.name), disabled: !!p.error }, "Verify"),
      el("button", { onclick: () => annotate(p, desc) }, "Annotate"),
      el("a", { class: "btn", href: `/api/patches/${encodeURIComponent(p.name)}/download`, download: p.name }, "Download"),
      el("button", { onclick: () => invert(p.name), disabled: !!p.error }, "Invert"),
      el("button", { class: "danger", onclick: () => remove(p.name) }, "Delete")));
}

// A patch's signature status, prominent: INVALID (changed after signing) in the error colour.
const SIGNATURE_KIND = { trusted: "ok-msg", unknown_key: "warn-msg", invalid: "error-msg", unsigned: "muted" };

function signatureText(s) {
  const who = s.signer || "an unnamed signer";
  if (s.status === "trusted") return `✔ signed by ${who} (trusted${s.trusted_as && s.trusted_as !== s.signer ? ` as ${s.trusted_as}` : ""})`;
  if (s.status === "unknown_key") return `signed by ${who} (unknown key ${s.fingerprint.slice(7, 23)}…)`;
  if (s.status === "invalid") return `⚠ INVALID signature${s.signer ? ` (claims ${s.signer})` : ""}: ${s.reason}`;
  return "unsigned";
}

function signatureBadge(s) {
  return el("div", {
    class: `signature ${SIGNATURE_KIND[s.status] || "muted"}`, "data-signature": s.status, title: s.text,
    style: s.status === "invalid" ? "font-weight:600" : null,
  }, signatureText(s));
}

function report(title, conflicts, ok, kind = ok ? "ok-msg" : "error-msg", extra = null) {
  const box = document.getElementById("patch-report");
  setChildren(box, el("div", { class: "preview", id: "verify-report" },
    el("div", { class: kind }, title),
    extra,
    conflicts && conflicts.length ? el("div", { class: "conflicts" }, ...conflicts.slice(0, 200).map((c) =>
      el("div", {}, `• ${c.message}${c.actual_hex ? ` (expected ${c.expected_hex}, found ${c.actual_hex})` : ""}`))) : null,
    conflicts && conflicts.length > 200 ? el("div", { class: "muted" }, `… ${conflicts.length - 200} more`) : null));
}

async function verify(name) {
  clearError(document.getElementById("patches-error"));
  try {
    const r = await api(`/api/patches/${encodeURIComponent(name)}/verify`, { method: "POST" });
    const sig = signatureBadge(r.signature);
    if (!r.signature_ok) {
      const why = r.signature.status === "invalid"
        ? "its signature is INVALID: it was changed after signing, or the signature block is broken (Load asks before loading it anyway)"
        : r.signature_refused.message;
      report(`${name} would be refused: ${why}`, r.conflicts, false, "error-msg", sig);
    } else if (r.already_applied) {
      // every entry's bytes are already the patch's new bytes: nothing is wrong, there is nothing to do
      report(`${name} is already applied: the staged state already holds all ${fmtNum(r.entries)} of its entries' new bytes. Loading it again would change nothing.`, [], true, "warn-msg", sig);
    } else {
      report(r.ok ? `${name} applies cleanly (${r.entries} entries)` : `${name}: ${r.conflicts.length} conflict(s)`, r.conflicts, r.ok, undefined, sig);
    }
    return r;
  } catch (e) {
    showError(e, document.getElementById("patches-error"));
    return null;
  }
}

async function load(name, allowInvalid = false) {
  clearError(document.getElementById("patches-error"));
  try {
    const r = await api(`/api/patches/${encodeURIComponent(name)}/load`,
      { method: "POST", params: allowInvalid ? { allow_invalid_signature: "true" } : undefined });
    const warnings = (r.signature_warnings || []).map((w) => el("div", { class: "warn-msg" }, w));
    report(`loaded into staging: ${r.edit.description}`, [], true, undefined, warnings.length ? el("div", {}, ...warnings) : null);
    emit("edits-changed", r.edit.tensor_names);
  } catch (e) {
    if (e.code === "signature_invalid" && !allowInvalid) {
      // never applied without an explicit override: the user confirms, knowing it was altered
      const sig = e.details.signature ? signatureBadge(e.details.signature) : null;
      report(`${name} was not loaded: its signature is INVALID (changed after signing); nothing staged`, [], false, "error-msg", sig);
      if (confirm(`${e.message}\n\nLoad ${name} anyway, although its signature is INVALID?`)) await load(name, true);
    } else if (e.code === "signature_refused") {
      report(`${name} was not loaded: ${e.message}`, [], false, "error-msg", e.details.signature ? signatureBadge(e.details.signature) : null);
    } else if (e.details && e.details.conflicts) {
      const why = e.details.already_applied ? "it is already applied (the staged state holds its new bytes): " : "";
      report(`${name} was not loaded: ${why}${e.details.conflicts.length} conflict(s), nothing staged`, e.details.conflicts, false);
    }
    else showError(e, document.getElementById("patches-error"));
  }
}

function annotate(p, descNode) {
  const ta = el("textarea", { rows: 3, style: "width:100%" });
  ta.value = p.description || "";
  const save = el("button", { class: "primary", onclick: async () => {
    try {
      await api(`/api/patches/${encodeURIComponent(p.name)}`, { method: "PATCH", body: { description: ta.value } });
      await refresh();
    } catch (e) {
      showError(e, document.getElementById("patches-error"));
    }
  } }, "Save description");
  // the description is signed: a new one would make the signature INVALID, so the server removes it
  const signed = p.signature && p.signature.status !== "unsigned"
    ? el("div", { class: "warn-msg" }, "Saving a new description removes this patch's signature (the description is part of what is signed).") : null;
  setChildren(descNode, ta, signed, el("div", { class: "row" }, save, el("button", { onclick: refresh }, "Cancel")));
  ta.focus();
}

async function invert(name) {
  const out = prompt("Name of the inverse patch", name.replace(/\.hexpatch$/, "") + "-inverse");
  if (!out) return;
  try {
    await api(`/api/patches/${encodeURIComponent(name)}/invert`, { method: "POST", body: { out_name: out } });
    await refresh();
  } catch (e) {
    showError(e, document.getElementById("patches-error"));
  }
}

async function remove(name) {
  if (!confirm(`Delete ${name} from the library?`)) return;
  try {
    await api(`/api/patches/${encodeURIComponent(name)}`, { method: "DELETE" });
    await refresh();
  } catch (e) {
    showError(e, document.getElementById("patches-error"));
  }
}

async function uploadFile(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  form.append("name", file.name);
  try {
    await api("/api/patches/upload", { method: "POST", body: form });
    await refresh();
  } catch (e) {
    showError(e, document.getElementById("patches-error"));
  }
  ev.target.value = "";
}
