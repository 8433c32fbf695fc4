// Packs tab: installed packs (steering, lens, probe, sae) from DATA_DIR/packs with their source,
// version and local changes (install, verify, status, remove), training a linear probe per layer
// on the live model (accuracy and F1 per layer), and the probe monitor: the chosen probe packs
// score every token of the live prompt and a tokens x probes heat strip follows the logits.
//
// The tab keeps its own WebSocket to /ws/live while shown (the server pushes every message to
// every socket) and reads `observers.probes` from the logits messages. Everything resets when the
// model changes: the server drops the monitor with the model it was loaded on.

import { api } from "./api.js";
import { PLOT_CONFIG, plotLayout, purge, react } from "./plot.js";
import { clearError, el, fmtBytes, fmtToken, on, setChildren, showError } from "./state.js";

let socket = null;
let retry = 0;
let shown = false;
let packs = [];
let monitored = [];
let lastStrip = null;
let drawQueued = false;
let liveState = null;
let pendingMonitor = null; // packs to monitor once the live model has loaded
window.__tsPacks = { packs: () => packs, strip: () => lastStrip, monitored: () => monitored }; // for browser tests

const err = () => document.getElementById("packs-error");
const fail = (e) => showError(e, err());

export function initPacks() {
  const root = document.getElementById("tab-packs");
  setChildren(root,
    el("div", { class: "section" },
      el("h4", {}, "Installed packs"),
      el("ul", { class: "list", id: "packs-list" }),
      el("div", { class: "row" },
        el("input", { id: "packs-source", placeholder: "folder, .tar/.zip, or hf:owner/name", style: "flex:1",
          "aria-label": "Pack source" }),
        el("input", { id: "packs-version", placeholder: "version", style: "width:64px", "aria-label": "Version" }),
        el("button", { id: "packs-install", onclick: install }, "Install"),
        el("button", { id: "packs-status", onclick: checkStatus, title: "newer versions at each pack's source" }, "Status")),
      el("div", { id: "packs-note", class: "muted" })),
    el("div", { class: "section" },
      el("h4", {}, "Train a probe"),
      el("div", { class: "row" },
        el("label", {}, "example ", el("select", { id: "probe-example", "aria-label": "Example set" },
          el("option", { value: "" }, "(type your own)"))),
        el("span", { class: "muted" }, "or one JSON line per text: {\"text\": ..., \"label\": ...}")),
      el("textarea", { id: "probe-rows", rows: 4, style: "width:100%", "aria-label": "Labelled texts",
        placeholder: "{\"text\": \"What a lovely day\", \"label\": \"positive\"}" }),
      el("div", { class: "row" },
        el("input", { id: "probe-name", placeholder: "name", value: "sentiment", style: "width:100px", "aria-label": "Probe name" }),
        el("label", {}, "layers ", el("input", { id: "probe-layers", value: "all", style: "width:60px" })),
        el("select", { id: "probe-read", "aria-label": "Read at" },
          el("option", { value: "last" }, "last token"), el("option", { value: "mean" }, "mean of tokens")),
        el("button", { class: "primary", id: "probe-train", onclick: train }, "Train")),
      el("div", { id: "probe-result", class: "muted" }),
      el("div", { class: "plot", id: "probe-curve" })),
    el("div", { class: "section" },
      el("h4", {}, "Monitor"),
      el("div", { class: "muted", id: "monitor-state" }, "tick probe packs above, then Monitor"),
      el("div", { class: "muted", id: "monitor-live" }),
      el("div", { class: "row" },
        el("button", { id: "monitor-start", onclick: startMonitor }, "Monitor ticked"),
        el("button", { id: "monitor-stop", onclick: () => setMonitor([]) }, "Stop")),
      el("textarea", { id: "monitor-prompt", rows: 2, style: "width:100%", "aria-label": "Prompt",
        placeholder: "the live prompt (Enter sends)", onkeydown: (e) => {
          if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sendPrompt(); }
        } }),
      el("div", { class: "plot", id: "monitor-strip" }),
      el("div", { id: "monitor-top", class: "muted mono" })),
    el("p", { class: "error-msg", id: "packs-error", role: "alert" }));
  on("tab-shown", (tab) => {
    shown = tab === "packs";
    if (!shown) return;
    if (!socket) connect();
    refresh();
    loadExamples();
  });
  on("model", reset);
}

function reset() {
  monitored = [];
  pendingMonitor = null;
  liveState = null;
  lastStrip = null;
  purge("monitor-strip");
  purge("probe-curve");
  document.getElementById("monitor-top").textContent = "";
  document.getElementById("probe-result").textContent = "";
  document.getElementById("monitor-state").textContent = "tick probe packs above, then Monitor";
  clearError(err());
  if (shown) refresh();
}

// -- socket --------------------------------------------------------------------------------------------

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${proto}://${location.host}/ws/live`);
  socket.onopen = () => {
    retry = 0;
    if (pendingMonitor) socket.send(JSON.stringify({ type: "load" }));
  };
  socket.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "status") {
      liveState = msg.state;
      document.getElementById("monitor-live").textContent = `live model: ${msg.state}${msg.message ? ` (${msg.message})` : ""}`;
      if (msg.state === "ready" && pendingMonitor) {
        const names = pendingMonitor;
        pendingMonitor = null;
        setMonitor(names);
      }
    } else if (msg.type === "logits") {
      const strip = msg.observers && msg.observers.probes;
      document.getElementById("monitor-top").textContent = (msg.top || []).slice(0, 5)
        .map((t) => `${fmtToken(t.token)} ${(t.prob * 100).toFixed(1)}%`).join("  ");
      if (strip) {
        lastStrip = strip;
        if (!drawQueued) { drawQueued = true; requestAnimationFrame(() => { drawQueued = false; drawStrip(); }); }
      }
    }
  };
  socket.onclose = () => {
    socket = null;
    if (shown) setTimeout(connect, Math.min(10000, 300 * 2 ** retry++));
  };
  socket.onerror = () => {};
}

function sendPrompt() {
  const prompt = document.getElementById("monitor-prompt").value;
  if (!prompt.trim()) return;
  api("/api/live/prompt", { method: "POST", body: { prompt } }).catch(fail);
}

// -- installed packs -----------------------------------------------------------------------------------

async function refresh() {
  try {
    const [list, mon] = await Promise.all([api("/api/packs"), api("/api/packs/monitor")]);
    packs = list.packs;
    monitored = mon.packs;
    drawList();
    note(list.warnings);
    if (monitored.length) {
      document.getElementById("monitor-state").textContent =
        `monitoring ${mon.probes} probe(s) from ${monitored.join(", ")}`;
    }
  } catch (e) { fail(e); }
}

function note(warnings) {
  document.getElementById("packs-note").textContent = (warnings || []).join(" ");
}

function drawList() {
  const list = document.getElementById("packs-list");
  if (!packs.length) {
    setChildren(list, el("li", { class: "muted" }, "no packs installed"));
    return;
  }
  setChildren(list, ...packs.map((p) => {
    const src = p.source ? p.source.location : "source unknown";
    const tick = p.kind === "probe"
      ? el("input", { type: "checkbox", class: "pack-monitor", "data-pack": p.name, checked: monitored.includes(p.name),
        "aria-label": `monitor ${p.name}` })
      : null;
    return el("li", { "data-pack": p.name },
      tick, " ",
      el("strong", {}, p.name), ` ${p.kind} ${p.version} `,
      el("span", { class: "muted", title: src }, `${fmtBytes(p.size)} · ${src}`),
      p.modified ? el("span", { class: "staged", title: "files changed since installed" }, " modified") : null,
      el("span", { class: "pack-verdict", id: `pack-verdict-${p.name}` }),
      el("button", { onclick: () => verify(p.name) }, "Verify"),
      el("button", { onclick: () => remove(p.name) }, "Remove"));
  }));
}

async function install() {
  clearError(err());
  const source = document.getElementById("packs-source").value.trim();
  const version = document.getElementById("packs-version").value.trim();
  if (!source) return;
  try {
    const r = await api("/api/packs/install", { method: "POST", body: { source, version: version || null } });
    note([`installed ${r.name} ${r.version}${r.replaced ? ` (was ${r.replaced})` : ""}`, ...(r.warnings || [])]);
    refresh();
  } catch (e) { fail(e); }
}

async function checkStatus() {
  try {
    const r = await api("/api/packs/status");
    note(r.packs.map((p) => `${p.name} ${p.version}: ${p.error ? p.error : p.newer ? `newer ${p.latest} available` : "up to date"}`));
  } catch (e) { fail(e); }
}

async function verify(name) {
  try {
    const r = await api(`/api/packs/${encodeURIComponent(name)}/verify`, { method: "POST" });
    const v = document.getElementById(`pack-verdict-${name}`);
    v.textContent = r.ok ? " verified " : ` FAILED: ${r.errors.map((e) => e.message).join("; ")} `;
    v.className = r.ok ? "pack-verdict" : "pack-verdict error-msg";
  } catch (e) { fail(e); }
}

async function remove(name) {
  try {
    await api(`/api/packs/${encodeURIComponent(name)}`, { method: "DELETE" });
    refresh();
  } catch (e) { fail(e); }
}

// -- training ------------------------------------------------------------------------------------------

async function loadExamples() {
  const sel = document.getElementById("probe-example");
  if (sel.options.length > 1) return;
  try {
    const r = await api("/api/packs/examples");
    for (const ex of r.examples) sel.append(el("option", { value: ex.name }, `${ex.name} (${ex.count}, ${ex.labels.join(" / ")})`));
  } catch (e) { fail(e); }
}

async function train() {
  clearError(err());
  const example = document.getElementById("probe-example").value;
  const body = { name: document.getElementById("probe-name").value.trim(),
    layers: document.getElementById("probe-layers").value.trim() || "all",
    read: document.getElementById("probe-read").value };
  if (example) {
    body.example = example;
  } else {
    try {
      body.rows = document.getElementById("probe-rows").value.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
    } catch (e) {
      fail(new Error(`labelled texts: each line must be JSON {"text", "label"} (${e.message})`));
      return;
    }
  }
  const button = document.getElementById("probe-train");
  button.disabled = true;
  document.getElementById("probe-result").textContent = "training: reading every text's residual stream…";
  try {
    const r = await api("/api/packs/probes/train", { method: "POST", body });
    const m = r.metrics;
    document.getElementById("probe-result").textContent =
      `installed ${r.name}: best layer ${m.best_layer}, held-out accuracy ${m.best_accuracy.toFixed(3)}, ` +
      `F1 ${m.best_f1.toFixed(3)} (${m.split.test} texts held out)`;
    const layers = Object.keys(m.per_layer).map(Number);
    react("probe-curve", ["accuracy", "f1"].map((k) => ({ type: "scatter", mode: "lines+markers", name: k, x: layers,
      y: layers.map((L) => m.per_layer[L][k]) })),
    plotLayout({ height: 220, xaxis: { title: { text: "block" } }, yaxis: { range: [0, 1.05], title: { text: "held out" } },
      legend: { orientation: "h", y: 1.2 }, margin: { l: 44, r: 8, t: 24, b: 40 } }), PLOT_CONFIG);
    refresh();
  } catch (e) {
    document.getElementById("probe-result").textContent = "";
    fail(e);
  } finally {
    button.disabled = false;
  }
}

// -- monitor -------------------------------------------------------------------------------------------

function startMonitor() {
  const ticked = [...document.querySelectorAll(".pack-monitor")].filter((c) => c.checked).map((c) => c.dataset.pack);
  if (!ticked.length) {
    fail(new Error("tick at least one probe pack in the list first"));
    return;
  }
  if (liveState !== "ready") {
    // probes read the running model: load it first, then monitor (on its "ready" status)
    pendingMonitor = ticked;
    document.getElementById("monitor-state").textContent = "loading the live model…";
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "load" }));
    else if (!socket) connect();
    return;
  }
  setMonitor(ticked);
}

async function setMonitor(names) {
  clearError(err());
  try {
    const r = await api("/api/packs/monitor", { method: "PUT", body: { packs: names } });
    monitored = r.packs;
    document.getElementById("monitor-state").textContent = monitored.length
      ? `monitoring ${r.probes} probe(s) from ${monitored.join(", ")} on ${r.device}` : "monitor off";
    note(r.warnings);
    if (!monitored.length) { lastStrip = null; purge("monitor-strip"); }
    if (!socket) connect();
  } catch (e) { fail(e); }
}

function drawStrip() {
  const s = lastStrip;
  if (!s || s.error) {
    if (s && s.error) fail(new Error(s.error));
    return;
  }
  const x = s.tokens.map((t, i) => `${i}:${fmtToken(t)}`);
  const y = s.columns.map((c) => `L${c.layer} ${c.name}`);
  react("monitor-strip", [{ type: "heatmap", x, y, z: s.scores, zmin: 0, zmax: 1, colorscale: "RdBu", reversescale: true,
    hovertemplate: "%{y} at %{x}: %{z:.3f}<extra></extra>", colorbar: { thickness: 8 } }],
  plotLayout({ height: Math.min(900, Math.max(160, 12 * y.length + 90)), margin: { l: 110, r: 8, t: 10, b: 70 },
    yaxis: { automargin: false, tickfont: { size: 9 } }, xaxis: { tickangle: -45, tickfont: { size: 9 } } }), PLOT_CONFIG);
}
