// Loading the open model and switching to another one: the only code that replaces state.model
// and state.tensors. Panels hear "model-switching", then "model" and "tensors", and reset.

import { api, settled } from "./api.js";
import { emit, on, select, showError, state } from "./state.js";

let loading = 0; // bumps per load: a slow answer for an earlier model must not win
let editCount = 0; // staged edits of the open model, from the last listing
on("edits", (listing) => { editCount = listing.edits.length; });

export async function loadModel() {
  const mine = ++loading;
  let model, tensors;
  try {
    model = await api("/api/model");
    tensors = await api("/api/tensors");
  } catch (e) {
    showError(e);
    return;
  }
  if (mine !== loading) return;
  const switched = !state.model || state.model.path !== model.path;
  state.model = model;
  state.tensors = tensors;
  state.byName = new Map(tensors.map((t) => [t.name, t]));
  state.selected = null;
  state.staged = new Map();
  if (switched) state.view = "base";
  emit("model", model);
  emit("tensors", tensors);
  emit("edits-changed");
  emit("patches-changed");
  // the URL names a tensor: select it again if this model has it (after a reload, or a switch to
  // a model with the same layout); otherwise the selection is gone and the hash with it
  const m = /^#tensor=(.+)$/.exec(location.hash);
  if (m) {
    const name = decodeURIComponent(m[1]);
    if (state.byName.has(name)) { select(name); emit("reveal", name); } else history.replaceState(null, "", location.pathname + location.search);
  }
}

// Open another model (POST /api/model), then reload the page's state for it. Staged edits stay
// in the journal with the model they belong to; the header says so when the old one had some.
export async function openModel(path) {
  const leaving = state.model;
  const stagedCount = editCount;
  const opened = await replacingModel(path, () => api("/api/model", { method: "POST", body: { path } }));
  if (leaving && leaving.path !== opened.path && stagedCount) {
    emit("notice", {
      kind: "warn",
      text: `${leaving.name} has ${stagedCount} staged edit${stagedCount === 1 ? "" : "s"}: they stay staged for it (not applied to ${opened.name}) and come back when you open it again.`,
    });
  }
  return opened;
}

// Run `change`, a request after which the open model is another one or its bytes are rewritten
// (opening another model, recovering this one in place), with the panels quiet: they hear
// "model-switching" and stop asking about the old tensors (state.switching), what is in flight
// settles first (a read racing the rewrite would be refused), and the page reloads the model after.
export async function replacingModel(path, change) {
  emit("model-switching", { path });
  state.switching = true;
  try {
    await settled();
    const result = await change();
    await loadModel();
    return result;
  } finally {
    state.switching = false;
  }
}
