// Footer filter: substring or /regex/ on names, type group and layer range. Non-matching tensors
// are dimmed (or hidden) on the canvas, and the matches are listed.

import { el, emit, on, select, setChildren, state } from "./state.js";

const LIST_MAX = 300;

export function initFilter() {
  const ids = ["filter-text", "filter-group", "filter-layer-min", "filter-layer-max", "filter-hide"];
  let timer = null;
  for (const id of ids) {
    document.getElementById(id).addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(apply, 120);
    });
  }
  document.getElementById("filter-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && state.match && state.match.size) {
      const first = state.tensors.find((t) => state.match.has(t.name));
      if (first) { select(first.name); emit("reveal", first.name); }
    }
  });
  on("tensors", () => {
    const groups = [...new Set(state.tensors.map((t) => t.metadata_for_canvas.type_group))];
    const sel = document.getElementById("filter-group");
    setChildren(sel, el("option", { value: "" }, "all types"), ...groups.map((g) => el("option", { value: g }, g.replace(/_/g, " "))));
    apply();
  });
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
  setChildren(list, ...shown.map((name) => el("li", { title: name, onclick: () => { select(name); emit("reveal", name); } }, name)),
    match.size > LIST_MAX ? el("li", { class: "muted" }, `… ${match.size - LIST_MAX} more`) : null);
  emit("filter");
}
