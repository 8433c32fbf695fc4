// Banner for an interrupted in-place apply of the open model (GET /api/model's interrupted_apply).
// Its bytes may be half old, half new; the server changes nothing until the user picks one of the
// two ways out, each one POST /api/model/recover (`patch recover [--rollback]` on the command line).

import { api } from "./api.js";
import { replacingModel } from "./model.js";
import { el, emit, on, setChildren, showError, state } from "./state.js";

export function initRecovery() {
  const banner = document.getElementById("recovery-banner");
  on("model", (model) => render(banner, model && model.interrupted_apply));
}

function render(banner, info) {
  if (!info) {
    banner.hidden = true;
    banner.replaceChildren();
    return;
  }
  const what = info.patches && info.patches.length ? ` of ${info.patches.join(", ")}` : "";
  const when = info.started ? ` (started ${new Date(info.started * 1000).toLocaleString()})` : "";
  const status = el("span", { class: "recovery-status muted", "aria-live": "polite" });
  const choose = (rollback) => async () => {
    const buttons = banner.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    status.textContent = rollback ? "rolling back…" : "finishing…";
    try {
      // the server rewrites the model's bytes and reopens it: panels stop reading it meanwhile,
      // then reload it; the "model" event that follows hides the banner
      const r = await replacingModel(state.model.path,
        () => api("/api/model/recover", { method: "POST", body: { rollback } }));
      const text = r.recovered
        ? `${rollback ? "Rolled back" : "Finished"} the interrupted in-place apply (${r.entries} entries rewritten).`
        : "Nothing to recover any more.";
      emit("notice", { kind: "ok", text });
    } catch (e) {
      status.textContent = "";
      buttons.forEach((b) => { b.disabled = false; });
      showError(e);
    }
  };
  setChildren(banner,
    el("span", { class: "recovery-text" },
      `An in-place apply${what} to this model was interrupted${when}: its bytes may be half old, half new. ` +
      "Nothing has changed them since. Choose how to end it:"),
    el("button", {
      class: "primary", id: "recovery-finish", onclick: choose(false),
      title: "Write the rest of the patch: the model ends exactly as the apply meant it to",
    }, "Finish the apply"),
    el("button", {
      id: "recovery-rollback", onclick: choose(true),
      title: `Restore every byte the apply touched from its backup${info.backup ? ` (${info.backup})` : ""}`,
    }, "Roll back"),
    status);
  banner.hidden = false;
}
