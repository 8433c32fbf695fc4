// The Investigate tab: ask the agent about the weights in plain language. Tool calls and their
// results stream in as they happen; tensor names in the answer are links to the focus view;
// proposed edits can be previewed and staged here. Conversations are saved and can be reopened.
// With no LLM configured, the same tools run by hand from a form built from their JSON schemas.

import { api, ApiError } from "./api.js";
import { clearError, el, emit, fmtNum, fmtPlain, fmtToken, on, select, setChildren, showError, state } from "./state.js";

// Keys whose integers are identifiers or positions (no thousands separators: "7042", "[576, 1536]")
// and keys whose strings are token texts (quoted, so " France" and "France" differ, as in Live).
const PLAIN_INT_KEY = /(^|_)(id|ids|index|indices|idx|shape|dim|dims|layer|row|rows|col|cols|offset|position|rank)$/;
const TOKEN_TEXT_KEY = /^(text|texts|piece|pieces|token|tokens_text)$/;

const EXAMPLES = [
  "Which tensors look anomalous?",
  "Which layers matter most for token embeddings of numbers?",
  "Compare the embeddings of ' Paris' and ' London'",
];

let root = null;
let info = null; // GET /api/agent/tools: {llm, tools}
let conversationId = null;
let running = null; // AbortController of the question being answered
let pendingCalls = new Map(); // tool call id -> its <details> in the transcript

export function initInvestigate() {
  root = document.getElementById("tab-investigate");
  if (!root) return;
  setChildren(root, el("p", { class: "muted" }, "Loading the agent's tools…"));
  load();
  on("model", () => {
    document.getElementById("inv-tensor-names")?.remove(); // the old model's names; rebuilt on demand
    if (!info) return;
    if (running) running.abort();
    conversationId = null;
    if (info.llm.configured) { renderTranscript([]); refreshConversations(); }
    // a tool result or error about the old model: cleared, with the tensor fields
    const out = document.getElementById("tool-result");
    if (out) setChildren(out);
    clearError(document.getElementById("tool-error"));
    clearError(document.getElementById("inv-error"));
    const tensorInputs = document.querySelectorAll('#tool-form [data-kind="tensor"]');
    for (const input of tensorInputs) input.value = "";
    if (tensorInputs.length && state.tensors.length <= 5000) {
      document.body.append(el("datalist", { id: "inv-tensor-names" }, ...state.tensors.map((t) => el("option", { value: t.name }))));
    }
  });
}

async function load() {
  try {
    info = await api("/api/agent/tools");
  } catch (e) {
    setChildren(root, el("p", { class: "error-msg", role: "alert" }, e.message));
    return;
  }
  if (info.llm.configured) renderAgent();
  else renderManualOnly();
}

// -- with an LLM ------------------------------------------------------------------------------

function renderAgent() {
  const question = el("textarea", {
    id: "inv-question", rows: 3, placeholder: "Ask about the weights, e.g. Which tensors look anomalous?",
    "aria-label": "Question", onkeydown: (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); submit(); }
    },
  });
  const llm = info.llm;
  setChildren(root,
    el("div", { class: "row inv-bar" },
      el("select", { id: "inv-conversations", "aria-label": "Saved conversations", onchange: (ev) => openConversation(ev.target.value) }),
      el("button", { id: "inv-new", title: "Start a new conversation", onclick: () => openConversation("") }, "New"),
      el("button", { id: "inv-delete", class: "danger", title: "Delete this conversation", onclick: deleteConversation }, "Delete")),
    el("div", { class: "muted inv-llm" }, `LLM: ${llm.model} · up to ${llm.max_steps} steps · timeout ${llm.timeout_s} s`,
      llm.warning ? el("span", { class: "warn-msg" }, ` · ${llm.warning}`) : null),
    el("div", { class: "inv-transcript", id: "inv-transcript", "aria-live": "polite" }),
    el("form", { id: "inv-form", onsubmit: (ev) => { ev.preventDefault(); submit(); } },
      question,
      el("div", { class: "row" },
        el("button", { type: "submit", class: "primary", id: "inv-ask" }, "Ask"),
        el("button", { type: "button", id: "inv-stop", hidden: true, onclick: () => running && running.abort() }, "Stop"),
        el("span", { class: "muted" }, "Enter asks · Shift+Enter: new line")),
      el("div", { class: "row inv-examples" }, ...EXAMPLES.map((q) =>
        el("button", { type: "button", class: "chip", onclick: () => { question.value = q; submit(); } }, q)))),
    el("p", { class: "error-msg", id: "inv-error", role: "alert" }),
    el("details", { class: "inv-manual" }, el("summary", {}, "Run a tool by hand"), manualRunner()),
  );
  renderTranscript([]);
  refreshConversations();
}

async function refreshConversations() {
  const box = document.getElementById("inv-conversations");
  if (!box) return;
  try {
    const { conversations } = await api("/api/investigate/conversations");
    setChildren(box, el("option", { value: "" }, "New conversation"),
      ...conversations.map((c) => el("option", { value: String(c.id), selected: c.id === conversationId },
        `#${c.id} ${c.title} · ${new Date(c.updated_at * 1000).toLocaleString()}`)));
    box.value = conversationId ? String(conversationId) : "";
  } catch (e) {
    showError(e, document.getElementById("inv-error"));
  }
  document.getElementById("inv-delete").disabled = !conversationId;
}

async function openConversation(id) {
  if (running) running.abort();
  clearError(document.getElementById("inv-error"));
  if (!id) {
    conversationId = null;
    renderTranscript([]);
    refreshConversations();
    return;
  }
  try {
    const conv = await api(`/api/investigate/conversations/${encodeURIComponent(id)}`);
    conversationId = conv.id;
    renderTranscript(conv.events);
  } catch (e) {
    showError(e, document.getElementById("inv-error"));
  }
  refreshConversations();
}

async function deleteConversation() {
  if (!conversationId || !confirm(`Delete conversation #${conversationId}?`)) return;
  try {
    await api(`/api/investigate/conversations/${conversationId}`, { method: "DELETE" });
    conversationId = null;
    renderTranscript([]);
    refreshConversations();
  } catch (e) {
    showError(e, document.getElementById("inv-error"));
  }
}

function renderTranscript(events) {
  const box = document.getElementById("inv-transcript");
  pendingCalls = new Map();
  setChildren(box);
  if (!events.length) {
    box.append(el("p", { class: "muted inv-empty" },
      "Ask a question: the agent answers from the weights with read-only tools, and every step shows here."));
  }
  for (const ev of events) handleEvent(ev, box);
}

async function submit() {
  const input = document.getElementById("inv-question");
  const err = document.getElementById("inv-error");
  const question = input.value.trim();
  if (!question || running) return;
  clearError(err);
  const box = document.getElementById("inv-transcript");
  box.querySelector(".inv-empty")?.remove();
  running = new AbortController();
  setBusy(true);
  input.value = "";
  try {
    const resp = await fetch("/api/investigate", {
      method: "POST", headers: { "content-type": "application/json" }, signal: running.signal,
      body: JSON.stringify({ question, conversation_id: conversationId }),
    });
    if (!resp.ok) {
      const body = await resp.json().catch(() => null);
      throw new ApiError(resp.status, body);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim()) handleEvent(JSON.parse(line), box, true);
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      box.append(el("div", { class: "inv-error error-msg" }, "Stopped."));
    } else {
      if (!input.value) input.value = question;
      showError(e, err);
    }
  } finally {
    running = null;
    setBusy(false);
    document.querySelectorAll("#inv-transcript .inv-live").forEach((n) => n.remove());
  }
}

function setBusy(busy) {
  document.getElementById("inv-ask").disabled = busy;
  document.getElementById("inv-stop").hidden = !busy;
  document.getElementById("inv-form").classList.toggle("busy", busy);
}

function handleEvent(ev, box, live = false) {
  const scroll = () => { box.scrollTop = box.scrollHeight; };
  switch (ev.type) {
    case "conversation":
      if (conversationId !== ev.conversation_id) { conversationId = ev.conversation_id; refreshConversations(); }
      break;
    case "question":
      box.append(el("div", { class: "inv-question" }, ev.content));
      break;
    case "step":
      box.querySelectorAll(".inv-live").forEach((n) => n.remove());
      if (live) box.append(el("div", { class: "inv-live muted" }, `thinking… (step ${ev.step} of ${ev.max_steps})`));
      break;
    case "retry":
      box.querySelectorAll(".inv-live").forEach((n) => n.remove());
      box.append(el("div", { class: "inv-live warn-msg" },
        `The LLM ${ev.reason}; retrying in ${ev.wait_s} s (${ev.attempt} of ${ev.retries})…`));
      break;
    case "note":
      box.append(el("div", { class: "inv-note" }, linked(ev.content, ev.links)));
      break;
    case "tool_call":
      box.querySelectorAll(".inv-live").forEach((n) => n.remove());
      box.append(toolCallNode(ev));
      break;
    case "progress": {
      const node = pendingCalls.get(ev.id);
      const bar = node && node.querySelector("progress");
      if (bar) { bar.hidden = false; bar.max = ev.total || 1; bar.value = ev.done; bar.title = ev.what; }
      break;
    }
    case "tool_result":
      toolResult(ev, box);
      break;
    case "answer":
      box.querySelectorAll(".inv-live").forEach((n) => n.remove());
      box.append(el("div", { class: "inv-answer" }, linked(ev.content, ev.links)));
      break;
    case "error":
      box.querySelectorAll(".inv-live").forEach((n) => n.remove());
      box.append(el("div", { class: "inv-error error-msg", role: "alert", "data-code": ev.code }, ev.message));
      break;
    case "done":
      refreshConversations();
      break;
    default:
      break;
  }
  scroll();
}

function toolCallNode(ev) {
  const args = ev.arguments || {};
  const short = Object.entries(args).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
  const node = el("details", { class: "inv-tool", "data-call": ev.id, "data-tool": ev.name },
    el("summary", {},
      el("span", { class: "inv-status" }, "…"), " ",
      el("code", {}, ev.name), el("span", { class: "muted" }, `(${short.length > 90 ? short.slice(0, 89) + "…" : short})`)),
    el("progress", { hidden: true, value: 0, max: 1 }),
    el("div", { class: "inv-args" }, el("h5", {}, "arguments"), renderValue(args)),
    el("div", { class: "inv-result" }));
  pendingCalls.set(ev.id, node);
  return node;
}

function toolResult(ev, box) {
  let node = pendingCalls.get(ev.id);
  if (!node) { node = toolCallNode({ id: ev.id, name: ev.name, arguments: {} }); box.append(node); }
  node.querySelector("progress").hidden = true;
  const status = node.querySelector(".inv-status");
  status.textContent = ev.ok ? "✓" : "✗";
  status.classList.add(ev.ok ? "ok-msg" : "error-msg");
  node.querySelector("summary").append(el("span", { class: "muted" }, ` ${ev.ms} ms`));
  const body = node.querySelector(".inv-result");
  if (ev.ok) {
    setChildren(body, el("h5", {}, "result"), renderValue(ev.result));
    if (ev.name === "propose_edit" && ev.result && ev.result.proposal) node.after(proposalCard(ev.result));
  } else {
    node.classList.add("failed");
    setChildren(body, el("div", { class: "error-msg" }, `${ev.error.code}: ${ev.error.message}`));
  }
}

// -- links and values -------------------------------------------------------------------------

function tensorLink(name) {
  return el("a", {
    href: `#tensor=${encodeURIComponent(name)}`, class: "tensor-link", "data-tensor": name,
    onclick: (ev) => { ev.preventDefault(); select(name); emit("reveal", name); },
  }, name);
}

// Text with the server's tensor-name spans (UTF-16 offsets, as JavaScript indexes strings) as links.
function linked(text, links) {
  const out = [];
  let at = 0;
  for (const l of [...(links || [])].sort((a, b) => a.start - b.start)) {
    if (l.start < at || text.slice(l.start, l.end) !== l.name) continue;
    if (l.start > at) out.push(text.slice(at, l.start));
    out.push(state.byName.has(l.name) ? tensorLink(l.name) : el("code", {}, l.name));
    at = l.end;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

function isPlain(v) {
  return v === null || ["string", "number", "boolean"].includes(typeof v);
}

function renderScalar(v, key = "") {
  if (v === null || v === undefined) return el("span", { class: "muted" }, "–");
  if (typeof v === "string") {
    if (TOKEN_TEXT_KEY.test(key)) return el("span", { class: "mono token-text" }, fmtToken(v));
    return state.byName.has(v) ? tensorLink(v) : el("span", {}, v);
  }
  if (typeof v === "number") return el("span", { class: "mono" }, PLAIN_INT_KEY.test(key) ? fmtPlain(v) : fmtNum(v));
  return el("span", { class: "mono" }, String(v));
}

// One element of a list of plain values: integers as digits (shapes, ids), token texts quoted.
function listItem(x, key) {
  if (x === null) return "–";
  if (typeof x === "number") return Number.isInteger(x) ? fmtPlain(x) : fmtNum(x);
  if (typeof x === "string" && TOKEN_TEXT_KEY.test(key)) return fmtToken(x);
  return String(x);
}

// A tool result, readably: tables for lists of records, key/value lists for objects. `key` is the
// field the value sits in (it decides how numbers and strings read).
export function renderValue(v, depth = 0, key = "") {
  if (isPlain(v) || v === undefined) return renderScalar(v, key);
  if (Array.isArray(v)) {
    if (!v.length) return el("span", { class: "muted" }, "(none)");
    if (v.every(isPlain)) {
      const shown = v.slice(0, 64).map((x) => listItem(x, key));
      if (v.every((x) => typeof x === "string" && state.byName.has(x))) {
        return el("div", {}, ...v.slice(0, 64).flatMap((x, i) => [i ? ", " : "", tensorLink(x)]),
          v.length > 64 ? ` … ${v.length - 64} more` : "");
      }
      return el("span", { class: "mono" }, `[${shown.join(", ")}${v.length > 64 ? `, … ${v.length - 64} more` : ""}]`);
    }
    if (v.every((x) => x && typeof x === "object" && !Array.isArray(x)) && depth < 3) {
      const keys = [...new Set(v.flatMap((x) => Object.keys(x)))];
      const rows = v.slice(0, 200);
      return el("div", { class: "inv-table-wrap" },
        el("table", { class: "inv-table" },
          el("tr", {}, ...keys.map((k) => el("th", {}, k))),
          ...rows.map((r) => el("tr", {}, ...keys.map((k) => el("td", {}, renderValue(r[k], depth + 1, k)))))),
        v.length > 200 ? el("div", { class: "muted" }, `… ${v.length - 200} more rows`) : null);
    }
    return el("ol", { class: "inv-list" }, ...v.slice(0, 100).map((x) => el("li", {}, renderValue(x, depth + 1, key))));
  }
  if (depth > 4) return el("code", {}, JSON.stringify(v).slice(0, 400));
  return el("dl", { class: "kv inv-kv" },
    ...Object.entries(v).flatMap(([k, x]) => [el("dt", {}, k), el("dd", {}, renderValue(x, depth + 1, k))]));
}

// -- proposed edits: preview, then stage (the user's decision, never the agent's) ---------------

function proposalCard(result) {
  const spec = result.proposal;
  const box = el("div", { class: "inv-preview" });
  const err = el("p", { class: "error-msg", role: "alert" });
  const card = el("div", { class: "inv-proposal", "data-tensor": spec.tensor_name },
    el("div", { class: "inv-proposal-title" }, "Proposed edit (not staged): ", el("strong", {}, result.preview.description)),
    spec.note ? el("div", { class: "muted" }, spec.note) : null,
    el("div", { class: "row" },
      el("button", { class: "inv-preview-btn", onclick: () => preview(spec, box, err) }, "Preview"),
      state.byName.has(spec.tensor_name) ? tensorLink(spec.tensor_name) : null),
    box, err);
  return card;
}

function editBody(spec) {
  const body = { ...spec };
  delete body.note;
  return body;
}

async function preview(spec, box, err) {
  clearError(err);
  try {
    const r = await api("/api/edit_tensor", { method: "POST", body: { ...editBody(spec), dry_run: true } });
    const p = r.preview;
    const row = (label, s) => el("tr", {}, el("th", {}, label),
      ...["min", "max", "mean", "std", "l2_norm"].map((k) => el("td", {}, s ? fmtNum(s[k]) : "–")));
    setChildren(box,
      el("div", { class: "muted" }, `${fmtNum(p.targeted_values)} targeted · ${fmtNum(p.values_changed)} values changed · ${fmtNum(p.bytes_changed)} bytes`),
      p.before || p.after ? el("table", {},
        el("tr", {}, el("th", {}, ""), ...["min", "max", "mean", "std", "L2"].map((h) => el("th", {}, h))),
        row("before", p.before), row("after", p.after)) : null,
      el("div", { class: "row" },
        el("button", { class: "primary inv-stage-btn", disabled: !p.bytes_changed, onclick: () => stage(spec, box, err) }, "Stage"),
        !p.bytes_changed ? el("span", { class: "muted" }, "nothing would change") : null));
  } catch (e) {
    showError(e, err);
  }
}

async function stage(spec, box, err) {
  clearError(err);
  try {
    const r = await api("/api/edit_tensor", { method: "POST", body: editBody(spec) });
    setChildren(box, el("div", { class: "ok-msg" }, `staged: ${r.edit.description}`));
    emit("edits-changed", r.edit.tensor_names);
  } catch (e) {
    showError(e, err);
  }
}

// -- without an LLM: the tools by hand ---------------------------------------------------------

function renderManualOnly() {
  setChildren(root,
    el("div", { class: "inv-notice", id: "inv-notice", role: "note" }, info.llm.message),
    manualRunner());
}

function manualRunner() {
  const picker = el("select", { id: "tool-picker", "aria-label": "Tool" },
    ...info.tools.map((t) => el("option", { value: t.name }, t.name)));
  const desc = el("p", { class: "muted", id: "tool-desc" });
  const form = el("form", { id: "tool-form", class: "inv-form" });
  const err = el("p", { class: "error-msg", id: "tool-error", role: "alert" });
  const out = el("div", { id: "tool-result", class: "inv-tool-result" });
  const showTool = () => {
    const t = info.tools.find((x) => x.name === picker.value);
    desc.textContent = t.description;
    setChildren(form, ...Object.entries(t.parameters.properties).map(([k, s]) =>
      field(k, s, (t.parameters.required || []).includes(k))));
    setChildren(out);
    clearError(err);
  };
  picker.addEventListener("change", showTool);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); runTool(picker.value, form, out, err); });
  const runner = el("div", { class: "inv-manual-body", id: "inv-manual" },
    el("div", { class: "row" }, el("label", {}, "Tool ", picker)),
    desc, form,
    el("div", { class: "row" }, el("button", { class: "primary", id: "tool-run", onclick: () => runTool(picker.value, form, out, err) }, "Run")),
    err, out);
  showTool();
  on("select", () => {
    for (const input of form.querySelectorAll('[data-kind="tensor"]')) if (!input.value) input.value = state.selected || "";
  });
  return runner;
}

// One form field per schema property; `data-kind` says how to read it back.
function field(name, s, required) {
  const label = `${name}${required ? " *" : ""}`;
  const help = s.description ? el("div", { class: "muted inv-help" }, s.description) : null;
  let input;
  let kind;
  if (s.enum) {
    kind = "enum";
    input = el("select", {}, required ? null : el("option", { value: "" }, "–"),
      ...s.enum.map((v) => el("option", { value: v, selected: s.default === v }, v)));
  } else if (s.type === "boolean") {
    kind = "boolean";
    input = el("input", { type: "checkbox", checked: s.default === true });
  } else if (s.type === "integer" || s.type === "number") {
    kind = s.type;
    input = el("input", { type: "number", step: s.type === "integer" ? "1" : "any", min: s.minimum, max: s.maximum,
      value: s.default ?? "" });
  } else if (s.type === "array" && s.items && s.items.type === "string") {
    kind = "lines";
    input = el("textarea", { rows: 3, placeholder: "one per line (leading spaces count)" });
  } else if (s.type === "array" && s.items && s.items.type === "integer") {
    kind = "ints";
    input = el("input", { type: "text", placeholder: "comma-separated, e.g. 32, 33" });
  } else if (s.type === "object" || s.type === "array") {
    kind = "json";
    input = el("textarea", { rows: 2, placeholder: s.type === "object" ? "{ }" : "[ ]", class: "mono" });
  } else {
    const isTensor = name === "tensor" || name === "tensor_name";
    kind = isTensor ? "tensor" : "string";
    input = el("input", { type: "text", value: isTensor ? state.selected || "" : s.default ?? "",
      list: isTensor && state.tensors.length <= 5000 ? "inv-tensor-names" : null });
    if (isTensor && !document.getElementById("inv-tensor-names")) {
      document.body.append(el("datalist", { id: "inv-tensor-names" }, ...state.tensors.map((t) => el("option", { value: t.name }))));
    }
  }
  input.name = name;
  input.dataset.kind = kind;
  if (required) input.dataset.required = "1";
  return el("label", { class: "inv-field" }, el("span", {}, label), input, help);
}

function readForm(form) {
  const args = {};
  for (const input of form.querySelectorAll("[data-kind]")) {
    const { kind } = input.dataset;
    const name = input.name;
    if (kind === "boolean") { args[name] = input.checked; continue; }
    const raw = input.value;
    if (raw.trim() === "") {
      if (input.dataset.required) throw new Error(`${name} is required`);
      continue;
    }
    if (kind === "integer" || kind === "number") {
      const n = Number(raw);
      if (!Number.isFinite(n) || (kind === "integer" && !Number.isInteger(n))) throw new Error(`${name} must be ${kind === "integer" ? "an integer" : "a number"}`);
      args[name] = n;
    } else if (kind === "lines") {
      args[name] = raw.split("\n").filter((l) => l.length);
    } else if (kind === "ints") {
      args[name] = raw.split(/[\s,]+/).filter(Boolean).map((x) => {
        if (!/^\d+$/.test(x)) throw new Error(`${name}: ${x} is not a token id`);
        return Number(x);
      });
    } else if (kind === "json") {
      try { args[name] = JSON.parse(raw); } catch (e) { throw new Error(`${name} is not valid JSON: ${e.message}`); }
    } else {
      args[name] = raw;
    }
  }
  return args;
}

async function runTool(name, form, out, err) {
  clearError(err);
  let args;
  try { args = readForm(form); } catch (e) { showError(e, err); return; }
  setChildren(out, el("p", { class: "muted" }, `running ${name}…`));
  try {
    const r = await api(`/api/agent/tools/${encodeURIComponent(name)}`, { method: "POST", body: args });
    setChildren(out, renderValue(r.result), name === "propose_edit" && r.result.proposal ? proposalCard(r.result) : null);
  } catch (e) {
    setChildren(out);
    showError(e, err);
  }
}
