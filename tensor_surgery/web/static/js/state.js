// Shared page state and a tiny event bus: panels talk through events, not through each other.

export const state = {
  model: null, // GET /api/model
  tensors: [], // GET /api/tensors, canvas order
  byName: new Map(),
  selected: null, // tensor name
  staged: new Map(), // tensor name -> number of staged edits
  view: "base", // "base" | "staged"
  match: null, // Set of names matching the footer filter, or null when no filter
  hideUnmatched: false,
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
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(fn);
  return () => listeners.get(event).delete(fn);
}

export function emit(event, detail) {
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

export function fmtNum(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "string") return v;
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(4);
  return Number(v.toPrecision(6)).toString();
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
