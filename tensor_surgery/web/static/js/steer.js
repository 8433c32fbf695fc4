// Steer tab: steering vectors on the live model (extract from contrast pairs or an example set,
// coefficient slider and toggle per vector, a greedy continuation default vs steered side by
// side) and the lens view (logit or tuned lens, layers x positions, coloured by probability or
// entropy; tuned-lens training as a job with its per-layer KL / perplexity curves).
//
// The tab keeps its own WebSocket to /ws/live (the server pushes every message to every socket):
// it needs the `continuation` messages the Live tab does not show. Everything resets when the
// model changes: the server drops vectors and lenses with the model they were made for.

import { api } from "./api.js";
import { followJob } from "./jobs.js";
import { PLOT_CONFIG, plotLayout, purge, react } from "./plot.js";
import { clearError, el, fmtToken, on, setChildren, showError } from "./state.js";

const CONTINUATION_TOKENS = 12;
let socket = null;
let retry = 0;
let shown = false;
let status = null;
let vectors = [];
let examples = [];
let lastLens = null;
const slideTimers = new Map();
window.__tsSteer = { vectors: () => vectors, lens: () => lastLens }; // for browser tests

const err = () => document.getElementById("steer-error");
const fail = (e) => showError(e, err());

export function initSteer() {
  const root = document.getElementById("tab-steer");
  setChildren(root,
    el("div", { class: "section" },
      el("h4", {}, "Contrast pairs"),
      el("div", { class: "row" },
        el("label", {}, "example ", el("select", { id: "steer-example", onchange: pickExample },
          el("option", { value: "" }, "(type your own)"))),
        el("span", { class: "muted" }, "one text per line; line i of each side is a pair")),
      el("div", { class: "row steer-sides" },
        el("textarea", { id: "steer-pos", rows: 5, style: "flex:1", placeholder: "positive texts", "aria-label": "Positive texts" }),
        el("textarea", { id: "steer-neg", rows: 5, style: "flex:1", placeholder: "negative texts", "aria-label": "Negative texts" })),
      el("div", { class: "row" },
        el("input", { id: "steer-name", placeholder: "name", value: "happy", style: "width:90px", "aria-label": "Vector name" }),
        el("label", {}, "layers ", el("input", { id: "steer-layers", value: "8-14", style: "width:60px" })),
        el("select", { id: "steer-method", "aria-label": "Method" },
          el("option", { value: "mean" }, "mean diff"), el("option", { value: "pca" }, "PCA (repeng)")),
        el("select", { id: "steer-read", "aria-label": "Read at" },
          el("option", { value: "last" }, "last token"), el("option", { value: "mean" }, "mean of tokens")),
        el("button", { class: "primary", id: "steer-extract", onclick: extract, disabled: true,
          title: "runs on the live model: enabled once it is loaded" }, "Extract"),
        el("span", { id: "steer-state", class: "muted mono" }, "live model: connecting…"))),
    el("div", { class: "section" },
      el("h4", {}, "Vectors on the live model"),
      el("ul", { class: "list", id: "steer-vectors" }),
      el("div", { class: "row" },
        el("input", { id: "steer-load-path", placeholder: "steering pack folder or .gguf control vector", style: "flex:1" }),
        el("button", { onclick: loadVector }, "Load"))),
    el("div", { class: "section" },
      el("h4", {}, `Continuation (${CONTINUATION_TOKENS} tokens, greedy)`),
      el("textarea", { id: "steer-prompt", rows: 2, style: "width:100%", "aria-label": "Prompt",
        placeholder: "the live prompt", onkeydown: (e) => {
          if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sendPrompt(); }
        } }),
      el("div", { class: "row steer-sides" },
        el("div", { style: "flex:1" }, el("div", { class: "muted" }, "default"), el("div", { class: "mono steer-text", id: "steer-default" })),
        el("div", { style: "flex:1" }, el("div", { class: "muted" }, "steered"), el("div", { class: "mono steer-text", id: "steer-steered" }))),
      el("div", { id: "steer-top", class: "muted mono" })),
    el("div", { class: "section" },
      el("h4", {}, "Lens"),
      el("div", { class: "row" },
        el("select", { id: "lens-kind", "aria-label": "Lens" },
          el("option", { value: "logit" }, "logit lens"), el("option", { value: "tuned" }, "tuned lens")),
        el("select", { id: "lens-colour", "aria-label": "Colour by", onchange: () => lastLens && drawLens(lastLens) },
          el("option", { value: "prob" }, "by probability"), el("option", { value: "entropy" }, "by entropy")),
        el("button", { id: "lens-show", onclick: showLens }, "Show lens")),
      el("div", { class: "plot", id: "lens-heatmap" }),
      el("div", { class: "lens-table-box" }, el("table", { class: "hexdump", id: "lens-table" })),
      el("div", { class: "row" },
        el("label", {}, "train tuned lens: steps ", el("input", { id: "lens-steps", type: "number", min: 1, max: 20000, value: 40, style: "width:70px", title: "one 64-token wikitext sequence per step; a step takes seconds on a CPU" })),
        el("button", { id: "lens-train", onclick: trainLens }, "Train"),
        el("input", { id: "lens-load-path", placeholder: "lens pack folder", style: "flex:1" }),
        el("button", { onclick: loadLens }, "Load")),
      el("progress", { id: "lens-progress", max: 1, value: 0, hidden: true, style: "width:100%" }),
      el("div", { class: "plot", id: "lens-curves" })),
    el("p", { class: "error-msg", id: "steer-error", role: "alert" }));
  on("tab-shown", (tab) => {
    const was = shown;
    shown = tab === "steer";
    if (!shown) {
      // continuations cost two short generations per pass: only while this tab is watched
      if (was) api("/api/steering/continuation", { method: "POST", body: { tokens: 0 } }).catch(fail);
      return;
    }
    if (!socket) connect();
    if (!examples.length) loadExamples();
    api("/api/steering/continuation", { method: "POST", body: { tokens: CONTINUATION_TOKENS } }).catch(fail);
    refreshVectors();
  });
  on("model", reset);
}

function reset() {
  vectors = [];
  lastLens = null;
  status = null;
  const list = document.getElementById("steer-vectors");
  if (list) setChildren(list);
  ["steer-default", "steer-steered", "steer-top"].forEach((id) => { document.getElementById(id).textContent = ""; });
  setChildren(document.getElementById("lens-table"));
  purge("lens-heatmap");
  purge("lens-curves");
  clearError(err());
  document.getElementById("steer-extract").disabled = true; // until the socket says the new model is ready
  if (shown) refreshVectors();
}

// -- socket --------------------------------------------------------------------------------------------

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${proto}://${location.host}/ws/live`);
  socket.onopen = () => { retry = 0; };
  socket.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "status") {
      status = msg;
      document.getElementById("steer-state").textContent = `live model: ${msg.state}${msg.state === "loading" ? ` (${msg.message})` : ""}`;
      const button = document.getElementById("steer-extract");
      if (button.textContent === "Extract") button.disabled = msg.state !== "ready";
      if (shown && msg.state === "unloaded") socket.send(JSON.stringify({ type: "load" }));
      if (msg.state === "ready") refreshVectors();
    } else if (msg.type === "logits") {
      renderTop(msg);
    } else if (msg.type === "continuation") {
      document.getElementById("steer-default").textContent = msg.default;
      const s = document.getElementById("steer-steered");
      s.textContent = msg.steered;
      s.classList.toggle("staged", msg.changed);
    }
  };
  socket.onclose = () => {
    socket = null;
    if (shown) setTimeout(connect, Math.min(10000, 300 * 2 ** retry++));
  };
  socket.onerror = () => {};
}

function sendPrompt() {
  const text = document.getElementById("steer-prompt").value;
  if (!text.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "prompt", text }));
}

function renderTop(msg) {
  const p = document.getElementById("steer-prompt");
  if (p && document.activeElement !== p && !p.value) p.placeholder = msg.prompt;
  const on = (msg.interventions || []).filter((v) => v.enabled).map((v) => `${v.name}×${v.coefficient}`);
  const top = msg.top.slice(0, 5).map((t) => `${fmtToken(t.token)} ${t.prob.toFixed(3)}`).join("  ");
  document.getElementById("steer-top").textContent = `next: ${top}${on.length ? `  (steering: ${on.join(", ")})` : ""}`;
}

// -- pairs and vectors ---------------------------------------------------------------------------------

async function loadExamples() {
  try {
    examples = (await api("/api/steering/examples")).examples;
    const sel = document.getElementById("steer-example");
    setChildren(sel, el("option", { value: "" }, "(type your own)"),
      ...examples.map((x) => el("option", { value: x.name }, `${x.name} (${x.count} pairs)`)));
  } catch (e) { fail(e); }
}

function pickExample() {
  const x = examples.find((e) => e.name === document.getElementById("steer-example").value);
  if (!x) return;
  document.getElementById("steer-pos").value = x.pairs.map((p) => p.positive).join("\n");
  document.getElementById("steer-neg").value = x.pairs.map((p) => p.negative).join("\n");
  document.getElementById("steer-name").value = x.name.replace(/[^A-Za-z0-9_.-]/g, "-");
}

async function extract() {
  clearError(err());
  const lines = (id) => document.getElementById(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
  const pos = lines("steer-pos"), neg = lines("steer-neg");
  if (pos.length !== neg.length) return fail(new Error(`${pos.length} positive lines but ${neg.length} negative: pairs are line by line`));
  const button = document.getElementById("steer-extract");
  button.disabled = true;
  button.textContent = "Extracting…";
  try {
    await api("/api/steering/extract", { method: "POST", body: {
      name: document.getElementById("steer-name").value.trim(),
      pairs: pos.map((p, i) => ({ positive: p, negative: neg[i] })),
      layers: document.getElementById("steer-layers").value.trim(),
      method: document.getElementById("steer-method").value,
      read: document.getElementById("steer-read").value } });
    await refreshVectors();
  } catch (e) { fail(e); } finally {
    button.disabled = status?.state !== "ready";
    button.textContent = "Extract";
  }
}

async function refreshVectors() {
  try {
    vectors = (await api("/api/steering/vectors")).vectors;
  } catch (e) {
    if (e.status !== 409) fail(e); // 409: the live model is not loaded yet
    vectors = [];
  }
  renderVectors();
}

function range(v) {
  // mean-difference vectors carry the concept's size: ±10 of them is plenty; PCA ones are unit length
  const m = v.made_with || {};
  if (m.method !== "pca") return 10;
  const norms = Object.values(v.metrics?.per_layer || {}).map((x) => x.mean_diff_norm || 0);
  return Math.max(10, Math.ceil(10 * Math.max(...norms, 1)));
}

function renderVectors() {
  setChildren(document.getElementById("steer-vectors"), ...vectors.map((v) => {
    const r = range(v);
    const num = el("input", { type: "number", step: "any", value: v.coefficient, style: "width:70px",
      "aria-label": `${v.name} coefficient`, onchange: (e) => setCoefficient(v.name, Number(e.target.value)) });
    return el("li", { "data-vector": v.name },
      el("label", {}, el("input", { type: "checkbox", checked: v.enabled, "data-steer": v.name,
        onchange: (e) => toggle(v.name, e.target.checked) }), ` ${v.name} `),
      el("span", { class: "muted mono" }, `L${v.layers.join(",")} ${v.made_with?.method || ""}`),
      el("input", { type: "range", min: -r, max: r, step: r / 100, value: v.coefficient, "aria-label": `${v.name} coefficient slider`,
        oninput: (e) => { num.value = e.target.value; slide(v.name, Number(e.target.value)); } }),
      num,
      el("button", { title: "save as a steering pack in DATA_DIR/steering", onclick: () => save(v.name) }, "Save"),
      el("button", { title: "export as a llama.cpp control vector (GGUF)", onclick: () => exportGguf(v.name) }, "GGUF"),
      el("button", { title: "remove", onclick: () => remove(v.name) }, "✕"));
  }));
}

async function toggle(name, enabled) {
  try {
    await api(`/api/steering/vectors/${encodeURIComponent(name)}/toggle`, { method: "POST", body: { enabled } });
    const v = vectors.find((x) => x.name === name);
    if (v) v.enabled = enabled;
  } catch (e) { fail(e); }
}

function slide(name, value) {
  clearTimeout(slideTimers.get(name));
  slideTimers.set(name, setTimeout(() => setCoefficient(name, value), 150));
}

async function setCoefficient(name, coefficient) {
  if (!Number.isFinite(coefficient)) return;
  try {
    const v = await api(`/api/steering/vectors/${encodeURIComponent(name)}`, { method: "PATCH", body: { coefficient } });
    vectors = vectors.map((x) => (x.name === name ? v : x));
  } catch (e) { fail(e); }
}

async function remove(name) {
  try {
    await api(`/api/steering/vectors/${encodeURIComponent(name)}`, { method: "DELETE" });
    await refreshVectors();
  } catch (e) { fail(e); }
}

async function save(name) {
  try {
    const r = await api(`/api/steering/vectors/${encodeURIComponent(name)}/save`, { method: "POST", body: {} });
    document.getElementById("steer-load-path").value = r.pack;
  } catch (e) { fail(e); }
}

async function exportGguf(name) {
  try {
    const r = await api(`/api/steering/vectors/${encodeURIComponent(name)}/export`, { method: "POST", body: { format: "gguf" } });
    document.getElementById("steer-load-path").value = r.path;
  } catch (e) { fail(e); }
}

async function loadVector() {
  const path = document.getElementById("steer-load-path").value.trim();
  if (!path) return;
  try {
    const r = await api("/api/steering/load", { method: "POST", body: { path, name: `${path.split("/").pop().replace(/\.gguf$/, "").replace(/[^A-Za-z0-9_.-]/g, "-").slice(0, 40)}-loaded` } });
    if (r.warnings?.length) showError(new Error(r.warnings.join("; ")), err());
    await refreshVectors();
  } catch (e) { fail(e); }
}

// -- lens ----------------------------------------------------------------------------------------------

async function showLens() {
  clearError(err());
  const prompt = document.getElementById("steer-prompt").value.trim();
  try {
    lastLens = await api("/api/lens", { params: { kind: document.getElementById("lens-kind").value, prompt: prompt || undefined } });
    drawLens(lastLens);
    if (lastLens.tuned) drawCurves(lastLens.tuned.metrics);
  } catch (e) { fail(e); }
}

function drawLens(t) {
  const by = document.getElementById("lens-colour").value;
  const rows = t.layers;
  const x = t.tokens.map((tok, i) => `${i}:${tok}`);
  const y = rows.map((r) => `L${r.layer}`);
  react("lens-heatmap", [{ type: "heatmap", x, y, z: rows.map((r) => (by === "prob" ? r.prob : r.entropy)),
    text: rows.map((r) => r.token.map(fmtToken)), texttemplate: "%{text}", colorscale: by === "prob" ? "Viridis" : "Magma",
    reversescale: by === "entropy", hovertemplate: `%{y} pos %{x}: %{text} (${by} %{z:.3f})<extra></extra>` }],
  plotLayout({ height: Math.max(300, 16 * rows.length + 80), margin: { l: 44, r: 8, t: 24, b: 60 },
    title: { text: `${t.kind} lens`, font: { size: 12 } } }), PLOT_CONFIG);
  setChildren(document.getElementById("lens-table"),
    el("tr", {}, el("th", {}, "layer"), ...t.tokens.map((tok) => el("th", {}, fmtToken(tok)))),
    ...rows.map((r) => el("tr", {}, el("th", {}, `L${r.layer}`),
      ...r.token.map((tok, i) => el("td", { title: `p=${r.prob[i].toFixed(4)} H=${r.entropy[i].toFixed(3)} KL=${r.kl_to_final[i].toFixed(3)}` },
        `${fmtToken(tok)} ${r.prob[i].toFixed(2)}`)))));
}

function drawCurves(m) {
  if (!m || !m.logit_kl) return;
  const layers = m.logit_kl.map((_, i) => i);
  const traces = [
    { name: "KL logit lens", y: m.logit_kl }, { name: "KL tuned lens", y: m.tuned_kl },
    { name: "perplexity logit", y: m.logit_perplexity, yaxis: "y2", line: { dash: "dot" } },
    { name: "perplexity tuned", y: m.tuned_perplexity, yaxis: "y2", line: { dash: "dot" } },
  ].filter((tr) => tr.y).map((tr) => ({ type: "scatter", mode: "lines+markers", x: layers, ...tr }));
  react("lens-curves", traces, plotLayout({ height: 260, xaxis: { title: { text: "block" } },
    yaxis: { title: { text: "KL to final (nats)" } }, yaxis2: { title: { text: "perplexity" }, overlaying: "y", side: "right", type: "log" },
    legend: { orientation: "h", y: 1.15 }, margin: { l: 50, r: 50, t: 30, b: 40 } }), PLOT_CONFIG);
}

async function trainLens() {
  clearError(err());
  const bar = document.getElementById("lens-progress");
  try {
    const job = await api("/api/lens/tuned/train", { method: "POST", body: {
      name: `tuned-${Date.now().toString(36)}`, steps: Number(document.getElementById("lens-steps").value) } });
    bar.hidden = false;
    bar.value = 0;
    followJob(job.id, (ev) => {
      if (ev.type === "progress") {
        if (ev.total) bar.value = ev.done / ev.total;
        return;
      }
      bar.hidden = true;
      if (ev.type === "done") {
        document.getElementById("lens-kind").value = "tuned";
        api("/api/lens/tuned").then((r) => r.tuned && drawCurves(r.tuned.metrics)).catch(fail);
      } else fail(new Error(ev.error?.message || "training failed"));
    });
  } catch (e) { fail(e); }
}

async function loadLens() {
  const path = document.getElementById("lens-load-path").value.trim();
  if (!path) return;
  try {
    const r = await api("/api/lens/tuned/load", { method: "POST", body: { path } });
    document.getElementById("lens-kind").value = "tuned";
    drawCurves(r.metrics);
  } catch (e) { fail(e); }
}
