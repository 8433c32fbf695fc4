// Hex view of the selected region: the bytes as stored (little-endian) and each element decoded
// (for a GGUF quantized tensor: each block, with its scales, codes and dequantized values).
// Bytes are editable: changed ones are previewed as a write_hex edit, then staged.

// The focused tensor comes from Focus's events; a byte edit is handed to the editor as a
// "preview-edit" request.

import { api, tensorPath } from "./api.js";
import { flatIndex } from "./slicing.js";
import { clearError, el, emit, fmtNum, on, setChildren, showError, state } from "./state.js";

const ELEMENTS = 16;
let current = null; // last hex answer
let tensor = null; // the tensor Focus shows, or null
let root = null;

export function initHexView() {
  root = document.getElementById("hex-section");
  root.hidden = true;
  on("focus-tensor", (d) => show(d && d.tensor));
  on("cell-selected", (sel) => {
    if (!tensor || sel.tensor.name !== tensor.name) return;
    const flat = flatIndex(tensor.shape, sel.index);
    document.getElementById("hex-element").value = flat;
    load(flat);
  });
  // a staged edit or a view switch: show the same bytes again, as they are now
  on("focus-refresh", () => tensor && load(Number(document.getElementById("hex-element").value)));
}

function show(t) {
  tensor = t || null;
  current = null;
  root.hidden = !tensor;
  if (!tensor) { setChildren(root); return; }
  setChildren(root, 
    el("h4", {}, "Bytes"),
    el("div", { class: "row" },
      el("label", {}, "from element", el("input", { type: "number", min: 0, id: "hex-element", value: 0 })),
      el("button", { onclick: () => load(Number(document.getElementById("hex-element").value)) }, "Show"),
      el("button", { id: "hex-preview", onclick: previewHex, title: "preview the changed bytes as an edit" }, "Preview byte edit")),
    el("div", { id: "hex-body" }),
    el("p", { class: "error-msg", id: "hex-error", role: "alert" }),
  );
  // the bytes load on Focus's "focus-refresh", which follows "focus-tensor" at once
}

async function load(element) {
  const body = document.getElementById("hex-body");
  const err = document.getElementById("hex-error");
  clearError(err);
  const t = tensor;
  try {
    const h = await api(`/api/tensor_hex/${tensorPath(t.name)}`, { params: { element, count: ELEMENTS, view: state.view } });
    if (tensor !== t) return; // another tensor (or model) since
    current = h;
    setChildren(body, render(h));
  } catch (e) {
    if (tensor !== t) return;
    setChildren(body);
    showError(e, err);
  }
}

function render(h) {
  const bytes = h.hex.match(/../g) || [];
  const rows = [];
  if (h.blocks && h.blocks.length) {
    rows.push(...blockRows(h, bytes));
  } else if (h.elements.length) {
    for (const e of h.elements) {
      const cells = [];
      for (let b = e.byte_offset; b < e.byte_offset + e.byte_length; b++) {
        const k = b - h.offset;
        if (k >= 0 && k < bytes.length) cells.push(byteInput(bytes[k], b));
      }
      rows.push(el("tr", {},
        el("td", {}, `[${e.index.join(",")}]`), el("td", { class: "muted" }, e.byte_offset),
        el("td", { class: "byte" }, ...cells), el("td", { class: "muted" }, `0x${e.bits_hex}`), el("td", {}, fmtNum(e.value, { signedZero: true }))));
    }
  } else {
    bytes.forEach((b, k) => rows.push(el("tr", {}, el("td", {}, ""), el("td", { class: "muted" }, h.offset + k),
      el("td", { class: "byte" }, byteInput(b, h.offset + k)), el("td", {}, ""), el("td", {}, ""))));
  }
  return el("div", {},
    h.note ? el("p", { class: "muted" }, h.note) : null,
    el("table", { class: "hexdump", id: "hex-table" },
      el("tr", {}, ...["index", "byte", "bytes (file order)", "bits", "value"].map((t) => el("th", {}, t))),
      ...rows),
    el("div", { class: "muted" }, `${h.view} · ${h.dtype}` + (h.block_bytes ? ` · blocks of ${h.block_elements} values in ${h.block_bytes} bytes` : "")
      + ` · bytes ${h.offset}..${h.offset + h.length} of ${fmtNum(h.nbytes)}`));
}

// A GGUF quantized tensor: each block its fields (scales decoded, codes listed) and the values it
// dequantizes to. Bytes inside the answer's range are editable like any other.
function blockRows(h, bytes) {
  const rows = [];
  for (const b of h.blocks) {
    rows.push(el("tr", { class: "block-head" },
      el("td", { colspan: 5 }, el("strong", {}, `block ${fmtNum(b.block_index)}`),
        ` · bytes ${fmtNum(b.byte_offset)}..${fmtNum(b.byte_offset + b.byte_length)} · from [${b.first_index.join(",")}]`)));
    for (const f of b.fields) {
      const cells = [];
      for (let k = 0; k < f.byte_length; k++) {
        const at = f.byte_offset + k - h.offset;
        cells.push(at >= 0 && at < bytes.length ? byteInput(bytes[at], f.byte_offset + k) : el("span", { class: "muted" }, f.hex.slice(2 * k, 2 * k + 2)));
      }
      const v = f.value;
      const shown = Array.isArray(v) ? v.join(" ") : v === null ? "" : fmtNum(v, { signedZero: true });
      rows.push(el("tr", { "data-field": f.name },
        el("td", {}, f.name), el("td", { class: "muted" }, f.byte_offset),
        el("td", { class: "byte" }, ...cells), el("td", { class: "muted" }, f.kind), el("td", { class: "field-value" }, shown)));
    }
    if (b.values) {
      rows.push(el("tr", { class: "block-values" },
        el("td", {}, "values"), el("td", {}, ""),
        el("td", { colspan: 3, class: "muted" }, b.values.map((x) => fmtNum(x, { signedZero: true })).join("  "))));
    }
  }
  return rows;
}

function byteInput(hex, offset) {
  const i = el("input", { value: hex, maxlength: 2, "data-offset": offset, "data-orig": hex, "aria-label": `byte ${offset}` });
  i.addEventListener("input", () => i.classList.toggle("changed", i.value.toUpperCase() !== i.dataset.orig));
  return i;
}

function previewHex() {
  const err = document.getElementById("hex-error");
  clearError(err);
  if (!current) return;
  const inputs = [...document.querySelectorAll("#hex-table input[data-offset]")];
  const changed = inputs.filter((i) => i.value.toUpperCase() !== i.dataset.orig);
  if (!changed.length) {
    showError(new Error("change a byte first"), err);
    return;
  }
  if (!changed.every((i) => /^[0-9a-fA-F]{2}$/.test(i.value))) {
    showError(new Error("each byte must be two hex digits"), err);
    return;
  }
  const offsets = changed.map((i) => Number(i.dataset.offset));
  const lo = Math.min(...offsets), hi = Math.max(...offsets);
  const byOffset = new Map(inputs.map((i) => [Number(i.dataset.offset), i.value]));
  let hex = "";
  for (let b = lo; b <= hi; b++) hex += byOffset.get(b);
  emit("preview-edit", { tensor_name: tensor.name, op: "write_hex", offset: lo, hex });
}
