// Footer filter: substring or /regex/ on names, type group and layer range. Non-matching tensors
// are dimmed (or hidden) on the canvas, which frames the matches, and the matches are listed as a
// listbox: Tab or ArrowDown from the text box reaches it (one tab stop), the arrow keys move
// between matches, Enter or Space opens one, as a click does.

import { el, emit, on, select, setChildren, state } from "./state.js";

const LIST_MAX = 300;
const DEBOUNCE_MS = 120;

let timer = null;

export function initFilter() {
  const ids = ["filter-text", "filter-group", "filter-layer-min", "filter-layer-max", "filter-hide"];
  for (const id of ids) {
    document.getElementById(id).addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(apply, DEBOUNCE_MS);
    });
  }
  const text = document.getElementById("filter-text");
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      // what was typed in the last DEBOUNCE_MS is not applied yet: apply it first, so that Enter
      // opens the first match of this text, not of the text before
      clearTimeout(timer);
      apply();
      const first = state.match && state.tensors.find((t) => state.match.has(t.name));
      if (first) open(first.name);
    } else if (e.key === "ArrowDown") {
      const first = document.querySelector("#filter-matches li.match");
      if (first) { e.preventDefault(); first.focus(); }
    }
  });
  const list = document.getElementById("filter-matches");
  list.addEventListener("click", (e) => {
    const item = e.target.closest("li.match");
    if (item) open(item.dataset.name);
  });
  list.addEventListener("keydown", (e) => {
    const item = e.target.closest("li.match");
    if (!item) return;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      open(item.dataset.name);
      return;
    }
    const all = [...list.querySelectorAll("li.match")];
    const k = all.indexOf(item);
    const to = { ArrowDown: k + 1, ArrowRight: k + 1, ArrowUp: k - 1, ArrowLeft: k - 1, Home: 0, End: all.length - 1 }[e.key];
    if (e.key === "Escape" || (to === -1 && (e.key === "ArrowUp" || e.key === "ArrowLeft"))) {
      e.preventDefault();
      text.focus();
    } else if (to !== undefined && all[to]) {
      e.preventDefault();
      rove(all, to);
    }
  });
  on("tensors", () => {
    const groups = [...new Set(state.tensors.map((t) => t.metadata_for_canvas.type_group))];
    const sel = document.getElementById("filter-group");
    setChildren(sel, el("option", { value: "" }, "all types"), ...groups.map((g) => el("option", { value: g }, g.replace(/_/g, " "))));
    clearTimeout(timer);
    apply();
  });
}

function open(name) {
  select(name);
  emit("reveal", name);
}

// one tab stop for the whole list: the match last moved to
function rove(items, to) {
  items.forEach((item, k) => {
    item.tabIndex = k === to ? 0 : -1;
    item.setAttribute("aria-selected", String(k === to));
  });
  items[to].focus();
}

function matcher(text) {
  const m = /^\/(.*)\/([a-z]*)$/.exec(text);
  if (m) {
    const rx = new RegExp(m[1], m[2].replace(/[gy]/g, ""));
    return (s) => rx.test(s);
  }
  const lower = text.toLowerCase();
  return (s) => s.toLowerCase().includes(lower);
}

function apply() {
  timer = null;
  const text = document.getElementById("filter-text").value.trim();
  const group = document.getElementById("filter-group").value;
  const lo = document.getElementById("filter-layer-min").value;
  const hi = document.getElementById("filter-layer-max").value;
  const err = document.getElementById("filter-error");
  err.textContent = "";
  state.hideUnmatched = document.getElementById("filter-hide").checked;
  const count = document.getElementById("filter-count");
  const list = document.getElementById("filter-matches");
  if (!text && !group && lo === "" && hi === "") {
    state.match = null;
    count.textContent = `${state.tensors.length.toLocaleString("en-US")} tensors`;
    setChildren(list);
    emit("filter");
    return;
  }
  let test;
  try {
    test = text ? matcher(text) : () => true;
  } catch (e) {
    err.textContent = `not a valid regular expression: ${e.message}`;
    count.textContent = "";
    setChildren(list);
    return;
  }
  const min = lo === "" ? -Infinity : Number(lo), max = hi === "" ? Infinity : Number(hi);
  const match = new Set();
  for (const t of state.tensors) {
    const m = t.metadata_for_canvas;
    if (group && m.type_group !== group) continue;
    if (m.layer_index < min || m.layer_index > max) continue;
    if (!test(t.name)) continue;
    match.add(t.name);
  }
  state.match = match;
  count.textContent = `${match.size.toLocaleString("en-US")} of ${state.tensors.length.toLocaleString("en-US")} match`;
  const shown = [...match].slice(0, LIST_MAX);
  setChildren(list, ...shown.map((name, k) => el("li", {
    class: "match", role: "option", title: name, dataset: { name }, tabindex: k === 0 ? "0" : "-1", "aria-selected": String(k === 0),
  }, name)),
  match.size > LIST_MAX ? el("li", { class: "muted", role: "presentation" }, `… ${match.size - LIST_MAX} more`) : null);
  emit("filter");
}
