// Live tab: the running model's next-token top-k, base and patched side by side, pushed over a
// WebSocket whenever staged edits, toggles, adapters or the prompt change. The socket reconnects
// by itself; toggles are messages, so the latest state always wins on the server.

//
// The chart can be docked at the bottom of the sidebar (the default), so the logits stay in view
// while editing in Focus; the table, toggles and adapters stay in this tab. On a model switch
// everything here resets, and a model that is not a causal LM is said to be one before loading.

import { api } from "./api.js";
import { PLOT_CONFIG, plotLayout, purge, react } from "./plot.js";
import { clearError, cssVar, el, emit, fmtBytes, fmtNum, fmtToken, on, savePrefs, setChildren, showError, state } from "./state.js";

const PROMPT_PAUSE_MS = 400; // typing reruns the prompt after this long without a keystroke
export const DELTA_MARK = 1e-4; // table rows whose |Δ prob| exceeds this are marked

let socket = null;
let retry = 0;
let seq = 0;
let last = null;
let lastStatus = null;
let modulesLoaded = false;
let loadWanted = false; // the Live tab was opened: load the model once the socket says it is unloaded
let outbox = []; // messages sent while disconnected, delivered on reconnect
let promptTimer = null;
export const liveMetrics = { sent: new Map(), latencies: [] }; // seq -> send time (for tests/bench)
window.__tsLive = { metrics: liveMetrics, socket: () => socket, last: () => last }; // for browser tests

export function initLive() {
  const root = document.getElementById("tab-live");
  setChildren(root,
    el("div", { class: "section" },
      el("div", { class: "row" },
        el("span", { id: "live-conn", class: "muted" }, "connecting…"),
        el("span", { id: "live-state", class: "mono" }),
        el("button", { id: "live-load", onclick: () => send({ type: "load" }) }, "Load model"),
        el("button", { id: "live-unload", onclick: unload }, "Unload")),
      el("progress", { id: "live-progress", max: 1, value: 0, hidden: true, style: "width:100%" }),
      el("div", { id: "live-facts", class: "muted mono" })),
    el("div", { class: "section" },
      el("h4", {}, "Prompt"),
      el("textarea", { id: "live-prompt", rows: 2, style: "width:100%", "aria-label": "Prompt", onkeydown: (e) => {
        if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); runPrompt(); }
      }, oninput: () => {
        clearTimeout(promptTimer);
        promptTimer = setTimeout(runPrompt, PROMPT_PAUSE_MS);
      } }),
      el("div", { class: "row" },
        el("label", {}, "top", el("input", { type: "number", id: "live-k", min: 1, max: 100, value: 10 })),
        el("button", { class: "primary", id: "live-run", onclick: runPrompt }, "Run"),
        el("span", { class: "muted" }, "reruns as you type"),
        el("span", { id: "live-timing", class: "muted mono" })),
      el("div", { id: "live-kind", class: "warn-msg", role: "note", hidden: true }),
      el("div", { id: "live-notice", class: "warn-msg" })),
    el("div", { class: "section", id: "live-chart-home" },
      el("div", { class: "live-chart-box", id: "live-chart-box" },
        el("div", { class: "row live-chart-head" },
          el("h4", {}, "Next token: base vs patched"),
          el("label", { class: "muted", title: "keep the chart at the bottom of the sidebar, in view from every tab" },
            el("input", { type: "checkbox", id: "live-dock-toggle", checked: state.prefs.liveDock !== false,
              onchange: (e) => savePrefs({ liveDock: e.target.checked }) }), "keep in view while editing")),
        el("div", { class: "plot", id: "live-chart" })),
      el("p", { class: "muted", id: "live-docked-note", hidden: true }, "The chart is docked at the bottom of the sidebar.")),
    el("div", { class: "section" },
      el("table", { class: "hexdump", id: "live-table" }),
      el("p", { class: "muted live-legend", id: "live-legend" },
        el("span", { class: "legend-swatch staged" }, "amber rows"),
        ` changed: |Δ prob| > ${DELTA_MARK} between base and patched.`)),
    el("div", { class: "section" },
      el("h4", {}, "Staged edits in the live model"),
      el("ul", { class: "list", id: "live-edits" })),
    el("div", { class: "section" },
      el("h4", {}, "LoRA adapters"),
      el("ul", { class: "list", id: "live-adapters" }),
      buildForm(),
      el("div", { class: "row" },
        el("input", { id: "adapter-import-path", placeholder: "PEFT adapter folder to import", style: "flex:1" }),
        el("input", { id: "adapter-import-name", placeholder: "name", style: "width:110px" }),
        el("button", { onclick: importAdapter }, "Import"))),
    el("p", { class: "error-msg", id: "live-error", role: "alert" }),
  );
  connect();
  on("tab-shown", (tab) => {
    if (tab !== "live") return;
    loadWanted = true;
    autoload();
  });
  on("prefs", placeChart);
  on("model", modelChanged);
  on("theme", () => last && renderLogits(last, false));
  placeChart();
}

// The chart lives in the dock (when docked and there is something to show) or in this tab.
function placeChart() {
  const box = document.getElementById("live-chart-box");
  const dock = document.getElementById("live-dock");
  const docked = state.prefs.liveDock !== false && !!last;
  const home = document.getElementById("live-chart-home");
  if (docked && box.parentElement !== dock) dock.append(box);
  if (!docked && box.parentElement !== home) home.prepend(box);
  dock.hidden = !docked;
  document.getElementById("live-docked-note").hidden = !docked;
  document.getElementById("live-dock-toggle").checked = state.prefs.liveDock !== false;
}

// Another model: nothing shown here belongs to it. The server frees the old live model itself.
// (The first "model" of a page load is no switch: logits that came before it are this model's.)
let shownModel = null;
function modelChanged(model) {
  const switched = shownModel !== null && model && shownModel !== model.path;
  shownModel = model ? model.path : null;
  showKind(model);
  if (!switched) return;
  last = null;
  modulesLoaded = false;
  purge("live-chart");
  setChildren(document.getElementById("live-table"));
  setChildren(document.getElementById("live-edits"), el("li", { class: "muted" }, "load the model to toggle its staged edits"));
  setChildren(document.getElementById("live-adapters"), el("li", { class: "muted" }, "no adapters"));
  setChildren(document.getElementById("lora-module"), el("option", { value: "" }, "load the model first"));
  delete document.getElementById("lora-module").dataset.picked;
  document.getElementById("live-notice").textContent = "";
  document.getElementById("live-timing").textContent = "";
  clearError(document.getElementById("live-error"));
  placeChart();
  if (!document.getElementById("tab-live").hidden) loadWanted = true;
}

// Next-token logits mean something only for a causal LM: say so plainly for any other model.
function showKind(model) {
  const kind = document.getElementById("live-kind");
  const hf = model && model.hf;
  const notCausal = hf && hf.causal_lm === false;
  kind.hidden = !notCausal;
  kind.textContent = notCausal
    ? `Live next-token logits need a causal language model (a decoder such as Llama or GPT-2). ${model.name} is `
      + `${hf.architectures.length ? hf.architectures.join(", ") : "not one"}: its "next tokens" would be meaningless, so it is not loaded here. `
      + "Everything else (inspecting, editing, patches) works."
    : "";
  document.getElementById("live-load").title = notCausal ? "loads it anyway, as a causal LM: its predictions are not meaningful" : "";
}

function autoload() {
  // the first status may arrive after the click: whichever comes last sends the load
  const notCausal = state.model && state.model.hf && state.model.hf.causal_lm === false;
  if (notCausal) loadWanted = false; // said so in the tab; the user may still press Load
  if (loadWanted && lastStatus && lastStatus.state === "unloaded" && socket.readyState === WebSocket.OPEN) {
    loadWanted = false;
    send({ type: "load" });
  }
}

function buildForm() {
  const kind = el("select", { id: "lora-kind", onchange: syncKind },
    el("option", { value: "neurons" }, "scale neurons"), el("option", { value: "direction" }, "remove a direction"));
  return el("form", { id: "lora-form", class: "preview", onsubmit: buildAdapter },
    el("div", { class: "row" },
      el("label", {}, "name", el("input", { name: "name", required: true, value: "edit1", style: "width:90px" })),
      el("label", {}, kind),
      el("label", {}, "rank", el("input", { type: "number", name: "rank", min: 4, max: 16, value: 8 }))),
    el("div", { class: "row" },
      el("label", {}, "layer", el("select", { name: "module", id: "lora-module", style: "max-width:300px" }, el("option", { value: "" }, "load the model first")))),
    el("div", { class: "row", id: "lora-neurons" },
      el("label", {}, "neurons", el("input", { name: "neurons", placeholder: "e.g. 12, 40, 511", style: "width:150px" })),
      el("label", {}, "×", el("input", { type: "number", step: "any", name: "factor", value: 0 }))),
    el("div", { class: "row", id: "lora-direction", hidden: true },
      el("label", {}, "token", el("input", { name: "token", placeholder: " Paris", style: "width:90px" })),
      el("label", {}, "of its", el("select", { name: "side" }, el("option", { value: "output" }, "output"), el("option", { value: "input" }, "input"))),
      el("label", {}, "strength", el("input", { type: "number", step: "any", name: "strength", value: 1 }))),
    el("div", { class: "row" }, el("button", { class: "primary", type: "submit" }, "Build and apply")));
}

function syncKind() {
  const k = document.getElementById("lora-kind").value;
  document.getElementById("lora-neurons").hidden = k !== "neurons";
  document.getElementById("lora-direction").hidden = k !== "direction";
}

// -- socket -----------------------------------------------------------------------------------------

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${proto}://${location.host}/ws/live`);
  socket.onopen = () => {
    retry = 0;
    setConn("connected");
    clearError(document.getElementById("live-error"));
    const queued = outbox;
    outbox = [];
    queued.forEach((m) => socket.send(JSON.stringify(m)));
  };
  socket.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "status") renderStatus(msg);
    else if (msg.type === "logits") renderLogits(msg);
    else if (msg.type === "error") showError(new Error(msg.message), document.getElementById("live-error"));
  };
  socket.onclose = () => {
    setConn("disconnected: reconnecting…");
    const wait = Math.min(10000, 300 * 2 ** retry++);
    setTimeout(connect, wait);
  };
  socket.onerror = () => {}; // onclose follows and reconnects
}

function setConn(text) {
  const c = document.getElementById("live-conn");
  if (c) c.textContent = text;
}

export function send(msg) {
  const m = { ...msg, seq: ++seq };
  liveMetrics.sent.set(m.seq, performance.now());
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(m));
  else {
    outbox.push(m);
    showError(new Error("not connected to the live model: sent when the connection is back"), document.getElementById("live-error"));
  }
  return m.seq;
}

function runPrompt() {
  clearTimeout(promptTimer);
  clearError(document.getElementById("live-error"));
  const text = document.getElementById("live-prompt").value;
  if (!text.trim()) return;
  send({ type: "prompt", text, k: Number(document.getElementById("live-k").value) || 10 });
}

async function unload() {
  try {
    await api("/api/live/unload", { method: "POST" });
  } catch (e) {
    showError(e, document.getElementById("live-error"));
  }
}

// -- rendering ----------------------------------------------------------------------------------------

function renderStatus(s) {
  lastStatus = s;
  document.getElementById("live-state").textContent = `${s.state}${s.message ? `: ${s.message}` : ""}`;
  const bar = document.getElementById("live-progress");
  bar.hidden = s.state !== "loading";
  bar.value = s.progress || 0;
  document.getElementById("live-load").disabled = s.state === "loading" || s.state === "ready";
  document.getElementById("live-unload").disabled = s.state !== "ready";
  const facts = [];
  if (s.device) facts.push(`device ${s.device}`, `dtype ${s.dtype}`, `weights ${fmtBytes(s.param_bytes)}`, `process ${fmtBytes(s.rss_bytes)}`);
  if (s.cuda_allocated_bytes) facts.push(`GPU ${fmtBytes(s.cuda_allocated_bytes)}`);
  if (s.unmapped) facts.push(`${s.unmapped} tensor(s) not reachable by edits`);
  document.getElementById("live-facts").textContent = facts.join(" · ");
  if (s.state === "error") showError(new Error(s.message), document.getElementById("live-error"));
  const prompt = document.getElementById("live-prompt");
  if (!prompt.value && s.prompt) prompt.value = s.prompt;
  if (s.state === "ready" && !modulesLoaded) loadModules();
  if (s.state !== "ready") modulesLoaded = false;
  autoload();
}

async function loadModules() {
  modulesLoaded = true;
  try {
    const { modules } = await api("/api/live/modules");
    const sel = document.getElementById("lora-module");
    setChildren(sel, ...modules.map((m) => el("option", { value: m.name, selected: /layers\.\d+\.mlp\.down_proj$/.test(m.name) && !sel.dataset.picked },
      `${m.name} (${m.in_features}→${m.out_features})`)));
    sel.dataset.picked = "1";
  } catch (e) {
    modulesLoaded = false;
    showError(e, document.getElementById("live-error"));
  }
}

function renderLogits(m, fresh = true) {
  // pushed by the live model of a model the page has left (it is being freed): not shown
  if (fresh && lastStatus && lastStatus.model && state.model && lastStatus.model !== state.model.path) return;
  last = m;
  placeChart();
  const sentAt = fresh ? liveMetrics.sent.get(m.seq) : undefined;
  if (sentAt !== undefined) {
    liveMetrics.latencies.push(performance.now() - sentAt);
    liveMetrics.sent.delete(m.seq);
  }
  document.getElementById("live-timing").textContent = `forward ${m.forward_ms} ms · total ${m.total_ms} ms · ${m.prompt_tokens} tokens`;
  document.getElementById("live-notice").textContent = m.notice || "";
  const top = [...m.top].sort((a, b) => b.prob - a.prob);
  const labels = top.map((t) => fmtToken(t.token));
  const accent = cssVar("--accent"), muted = cssVar("--muted");
  react("live-chart", [
    { type: "bar", orientation: "h", name: "base", y: labels, x: top.map((t) => t.base_prob), marker: { color: muted },
      hovertemplate: "%{y}: %{x:.4f} (base)<extra></extra>" },
    { type: "bar", orientation: "h", name: "patched", y: labels, x: top.map((t) => t.prob), marker: { color: accent },
      hovertemplate: "%{y}: %{x:.4f} (patched)<extra></extra>" },
  ], plotLayout({ barmode: "group", yaxis: { autorange: "reversed" }, xaxis: { title: { text: "probability" } },
    legend: { orientation: "h", x: 0, y: 1, yanchor: "bottom" }, margin: { l: 90, r: 8, t: 24, b: 34 } }), PLOT_CONFIG);
  setChildren(document.getElementById("live-table"),
    el("tr", {}, ...["token", "logit", "prob", "base prob", "Δ prob", "rank"].map((h) => el("th", {}, h))),
    ...top.map((t) => el("tr", { class: Math.abs(t.delta_prob) > DELTA_MARK ? "staged" : "", title: Math.abs(t.delta_prob) > DELTA_MARK ? "changed by the staged edits / adapters" : null },
      el("td", {}, fmtToken(t.token)), el("td", {}, fmtNum(t.logit)), el("td", {}, t.prob.toFixed(4)),
      el("td", {}, t.base_prob.toFixed(4)), el("td", {}, (t.delta_prob >= 0 ? "+" : "") + t.delta_prob.toFixed(4)),
      el("td", {}, t.base_rank === t.rank ? String(t.rank) : `${t.base_rank}→${t.rank}`))));
  renderToggles(m);
  if (fresh) emit("live-logits", m);
}

function renderToggles(m) {
  setChildren(document.getElementById("live-edits"), m.edits.length ? m.edits.map((e) => el("li", {},
    el("label", {}, el("input", { type: "checkbox", checked: e.enabled, "data-edit": e.id,
      onchange: (ev) => send({ type: "toggle_edit", id: e.id, enabled: ev.target.checked }) }), ` #${e.id} ${e.description}`)))
    : el("li", { class: "muted" }, "no staged edits"));
  setChildren(document.getElementById("live-adapters"), m.adapters.length ? m.adapters.map((a) => el("li", {},
    el("label", {}, el("input", { type: "checkbox", checked: a.enabled, "data-adapter": a.name,
      onchange: (ev) => send({ type: "toggle_adapter", name: a.name, enabled: ev.target.checked }) }), ` ${a.name}: ${a.description}`),
    el("div", { class: "actions" },
      el("button", { onclick: () => exportAdapter(a.name) }, "Export PEFT"),
      el("button", { onclick: () => mergeAdapter(a.name), title: "stage its weight change as bytes (then save a .hexpatch)" }, "Merge into staged"),
      el("button", { class: "danger", onclick: () => deleteAdapter(a.name) }, "Delete"))))
    : el("li", { class: "muted" }, "no adapters"));
}

// -- adapters ------------------------------------------------------------------------------------------

async function buildAdapter(e) {
  e.preventDefault();
  const f = e.target;
  const err = document.getElementById("live-error");
  clearError(err);
  const body = { name: f.name.value.trim(), kind: document.getElementById("lora-kind").value,
    module: f.module.value, rank: Number(f.rank.value) };
  if (body.kind === "neurons") {
    body.neurons = f.neurons.value.split(/[\s,]+/).filter(Boolean).map(Number);
    body.factor = Number(f.factor.value);
  } else {
    body.token = f.token.value;
    body.side = f.side.value;
    body.strength = Number(f.strength.value);
  }
  try {
    await api("/api/live/adapters", { method: "POST", body });
    f.name.value = `edit${Math.floor(Math.random() * 1000)}`;
  } catch (x) {
    showError(x, err);
  }
}

async function importAdapter() {
  const err = document.getElementById("live-error");
  clearError(err);
  try {
    await api("/api/live/adapters/import", { method: "POST", body: {
      path: document.getElementById("adapter-import-path").value.trim(), name: document.getElementById("adapter-import-name").value.trim() } });
  } catch (x) {
    showError(x, err);
  }
}

async function exportAdapter(name) {
  try {
    const r = await api(`/api/live/adapters/${encodeURIComponent(name)}/export`, { method: "POST", body: {} });
    document.getElementById("live-notice").textContent = `exported ${name} to ${r.path} (${r.files.join(", ")})`;
  } catch (x) {
    showError(x, document.getElementById("live-error"));
  }
}

async function mergeAdapter(name) {
  try {
    const r = await api(`/api/live/adapters/${encodeURIComponent(name)}/merge`, { method: "POST" });
    emit("edits-changed", r.edit.tensor_names);
  } catch (x) {
    showError(x, document.getElementById("live-error"));
  }
}

async function deleteAdapter(name) {
  try {
    await api(`/api/live/adapters/${encodeURIComponent(name)}`, { method: "DELETE" });
  } catch (x) {
    showError(x, document.getElementById("live-error"));
  }
}

export function lastLogits() {
  return last;
}
