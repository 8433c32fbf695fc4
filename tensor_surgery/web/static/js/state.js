// Shared page state and a tiny event bus: panels talk through events, not through each other.
//
// The contract: a panel imports only non-panel modules (state.js, api.js, jobs.js, plot.js, slicing.js,
// bands.js, model.js, schema.js); it learns about the rest of the page from the events below and asks for
// things by emitting them. `state` holds what every panel may read (the open model, its tensors,
// the selection, staged counts, page preferences); it is written only through the functions here
// (select, setView, setStaged, ...), which emit the matching event.

// Every event on the bus, with what it carries. `on`/`emit` of a name not listed here is a bug:
// it is reported on the console (so browser tests fail on it) instead of silently going nowhere.
export const EVENTS = Object.freeze({
  "model-switching": "another model is about to be opened, or this one rewritten by a recovery ({path}); panels drop work for the old one",
  model: "the open model changed or was (re)loaded: state.model; every panel resets",
  tensors: "state.tensors / state.byName were replaced (after model)",
  select: "a tensor was selected (name); state.selected",
  reveal: "please bring this tensor into view on the canvas (name)",
  filter: "the footer filter changed: state.match / state.hideUnmatched",
  "canvas-rendered": "the canvas drew its first frame",
  view: "base/staged view changed (\"base\" | \"staged\"); state.view",
  theme: "the colour theme changed (\"dark\" | \"light\")",
  prefs: "page preferences changed: state.prefs",
  "focus-tensor": "Focus shows a tensor ({tensor}) or nothing (null): editor and hex view follow it",
  "focus-refresh": "Focus re-read the shown tensor (after staged edits or a view change)",
  "slice-loaded": "Focus drew a slice: {tensor, slice, params, data}",
  "overview-loaded": "Focus drew the block-averaged overview",
  "cell-selected": "heatmap cell/rectangle picked: {tensor, r0, r1, c0, c1, value, index, params, slice}",
  "preview-edit": "please preview this edit request body (the editor shows it with its Stage button)",
  "edit-staged": "an edit was staged from the page ({edit}); what it changed reaches panels through edits-changed, then staged",
  "edits-changed": "staged edits changed on the server (tensor names, or nothing): the edit list re-reads",
  edits: "the staged-edit listing was re-read: {edits, undone, staged_tensors}",
  staged: "tensors whose staged-edit count changed (names); state.staged",
  "patches-changed": "the patch library changed on the server: the Patches tab re-reads",
  library: "the patch library listing was re-read (list of patches)",
  "live-logits": "the live model pushed next-token logits (message)",
  "tab-shown": "a sidebar tab became visible (its name)",
  notice: "show a short status line in the header ({text, kind})",
  "canvas-colours": "colour the canvas tiles by a measure instead of type group ({byName: Map name -> 0..1 on the ramp | CSS colour for a mark, legend: {title, ticks: [{at, label}], marks: [{label, colour}]}}), or back to type colours (null)",
});

function checkEvent(event) {
  if (!Object.hasOwn(EVENTS, event)) console.error(`unknown page event ${JSON.stringify(event)}: add it to EVENTS in state.js`);
}

export const state = {
  model: null, // GET /api/model
  tensors: [], // GET /api/tensors, canvas order
  byName: new Map(),
  selected: null, // tensor name
  staged: new Map(), // tensor name -> number of staged edits
  view: "base", // "base" | "staged"
  match: null, // Set of names matching the footer filter, or null when no filter
  hideUnmatched: false,
  switching: false, // another model is being opened: ask nothing about this one's tensors
  prefs: loadPrefs(), // page preferences, kept in localStorage
};

function loadPrefs() {
  const defaults = { window: 64, thumbs: true };
  try {
    return { ...defaults, ...JSON.parse(localStorage.getItem("ts-prefs") || "{}") };
  } catch {
    return defaults;
  }
}

export function savePrefs(prefs) {
  state.prefs = { ...state.prefs, ...prefs };
  localStorage.setItem("ts-prefs", JSON.stringify(state.prefs));
  emit("prefs", state.prefs);
}

const listeners = new Map();

export function on(event, fn) {
  checkEvent(event);
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(fn);
  return () => listeners.get(event).delete(fn);
}

export function emit(event, detail) {
  checkEvent(event);
  for (const fn of listeners.get(event) || []) {
    try {
      fn(detail);
    } catch (e) {
      console.error(`listener for ${event} failed`, e); // one broken panel must not blank the page
      showError(e);
    }
  }
}

export function select(name) {
  if (!state.byName.has(name)) return;
  state.selected = name;
  if (decodeURIComponent(location.hash.slice(1)) !== `tensor=${name}`) {
    history.replaceState(null, "", `#tensor=${encodeURIComponent(name)}`);
  }
  emit("select", name);
}

export function setView(view) {
  if (state.view === view) return;
  state.view = view;
  emit("view", view);
}

export function setStaged(staged) {
  const before = state.staged;
  state.staged = staged;
  return [...new Set([...before.keys(), ...staged.keys()])].filter((n) => before.get(n) !== staged.get(n));
}

let errorTimer = null;
export function showError(e, where = document.getElementById("header-error")) {
  if (!where) return;
  where.textContent = e && e.message ? e.message : String(e);
  where.hidden = false;
  if (where.id === "header-error") {
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { where.hidden = true; }, 12000);
  }
}

export function clearError(where) {
  if (where) { where.textContent = ""; if (where.id === "header-error") where.hidden = true; }
}

// Type-group colours come from CSS variables, so the legend, canvas and focus view agree.
const colorCache = new Map();
export function groupColor(group) {
  if (!colorCache.has(group)) {
    const css = getComputedStyle(document.documentElement);
    colorCache.set(group, css.getPropertyValue(`--tg-${group}`).trim() || css.getPropertyValue("--tg-other").trim());
  }
  return colorCache.get(group);
}

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
}

// Numbers for people: counts with thousands separators, other values to 6 significant digits.
// A float's negative zero reads "0" (min/max "-0" of a zeroed region says nothing useful); pass
// signedZero where the sign bit is the point (the hex view), and it reads "-0".
export function fmtNum(v, { signedZero = false } = {}) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "string") return v;
  if (Object.is(v, -0)) return signedZero ? "-0" : "0";
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(4);
  return Number(v.toPrecision(6)).toString();
}

// Numbers inside a shape, an index or a list of ids: plain digits ("[576, 1536]", not "1,536").
export function fmtList(values) {
  return `[${values.map((v) => (typeof v === "number" ? fmtPlain(v) : String(v))).join(", ")}]`;
}

export function fmtPlain(v) {
  if (Number.isInteger(v)) return String(v);
  return fmtNum(v);
}

// A token's text as the model sees it: quoted, so a leading space (" France") stays visible.
export function fmtToken(text) {
  return JSON.stringify(text);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// replaceChildren, skipping null/undefined/false (optional parts of a panel)
export function setChildren(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}
