// The global tensor canvas: every tensor as a cell on a layer-major, type-minor grid.
//
// Zoomed out, the whole model is one pre-rendered bitmap (one 4x4 pixel block per tensor), so a
// frame costs one drawImage whatever the tensor count (a DeepSeek-V3-sized model has ~90k).
// Zoomed in, only visible cells are drawn, found by row and binary search; big enough cells show
// a heatmap thumbnail of the tensor's downsampled overview and an |x| sparkline, fetched lazily
// for visible cells only.

import { api, tensorPath } from "./api.js";
import { cssVar, emit, fmtBytes, groupColor, on, select, setChildren, state } from "./state.js";
import { drawSparkline, renderThumb } from "./thumbs.js";

const BITMAP_BELOW_PX = 12; // cell size (screen px) under which the bitmap is drawn
const THUMB_FROM_PX = 30; // cell size from which thumbnails are shown
const LABEL_FROM_PX = 72; // cell size from which short names are written in cells
const CELL_PX = 4; // bitmap pixels per cell: 3 filled, 1 gap
const GAP = 0.1; // fraction of a cell left empty around it
const THUMB_BLOCKS = 24; // overview blocks per side for a thumbnail
const MAX_INFLIGHT = 6;
const THUMB_CACHE = 3000;

export const metrics = { firstRenderMs: null, drawMs: [] };
window.__tsMetrics = metrics; // read by bench/ui.py

export class TensorCanvas {
  constructor(canvas, tooltip) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.tooltip = tooltip;
    this.scale = 20; // screen px per cell
    this.tx = 0;
    this.ty = 0;
    this.items = [];
    this.rows = new Map(); // y -> indices sorted by x
    this.cellIndex = new Map(); // "x,y" -> index
    this.indexOf = new Map(); // tensor name -> index: the selection is drawn every frame
    this.bands = [];
    this.bitmap = null;
    this.thumbs = new Map(); // name -> {img, profile} | "loading" | "error"
    this.inflight = 0;
    this.hover = -1;
    this.dirty = true;
    this.groupsOff = new Set();
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(canvas);
    this.bindInput();
    this.resize();
    const loop = () => {
      if (this.dirty) this.draw();
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  }

  // -- data ------------------------------------------------------------------------------------

  setTensors(tensors) {
    this.items = tensors.map((t) => {
      const m = t.metadata_for_canvas;
      return { t, x: Math.round(m.canvas_x), y: Math.round(m.canvas_y), group: m.type_group, short: shortName(t.name, m) };
    });
    this.rows.clear();
    this.cellIndex.clear();
    this.indexOf.clear();
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    this.items.forEach((it, i) => {
      if (!this.rows.has(it.y)) this.rows.set(it.y, []);
      this.rows.get(it.y).push(i);
      this.cellIndex.set(`${it.x},${it.y}`, i);
      this.indexOf.set(it.t.name, i);
      minX = Math.min(minX, it.x); maxX = Math.max(maxX, it.x);
      minY = Math.min(minY, it.y); maxY = Math.max(maxY, it.y);
    });
    for (const idx of this.rows.values()) idx.sort((a, b) => this.items[a].x - this.items[b].x);
    this.rowKeys = [...this.rows.keys()].sort((a, b) => a - b);
    this.bounds = this.items.length ? { minX, minY, maxX, maxY } : { minX: 0, minY: 0, maxX: 0, maxY: 0 };
    this.bands = computeBands(this.items);
    this.thumbs.clear();
    this.rebuildBitmap();
    this.fit();
  }

  visible(it) {
    if (this.groupsOff.has(it.group)) return false;
    return !(state.match && state.hideUnmatched && !state.match.has(it.t.name));
  }

  dimmed(it) {
    return state.match !== null && !state.match.has(it.t.name);
  }

  rebuildBitmap() {
    if (!this.bounds) return; // no model yet
    const { minX, minY, maxX, maxY } = this.bounds;
    const w = (maxX - minX + 1) * CELL_PX, h = (maxY - minY + 1) * CELL_PX;
    const off = document.createElement("canvas");
    off.width = Math.max(1, w);
    off.height = Math.max(1, h);
    const octx = off.getContext("2d");
    const img = octx.createImageData(off.width, off.height);
    const px = new Uint32Array(img.data.buffer);
    const rgba = new Map();
    const staged = rgbaOf(cssVar("--warn"));
    for (const it of this.items) {
      if (!this.visible(it)) continue;
      const key = it.group + (this.dimmed(it) ? ":dim" : "");
      if (!rgba.has(key)) rgba.set(key, rgbaOf(groupColor(it.group), this.dimmed(it) ? 0.18 : 1));
      const c = rgba.get(key);
      const x0 = (it.x - minX) * CELL_PX, y0 = (it.y - minY) * CELL_PX;
      for (let dy = 0; dy < CELL_PX - 1; dy++) {
        const row = (y0 + dy) * off.width + x0;
        for (let dx = 0; dx < CELL_PX - 1; dx++) px[row + dx] = c;
      }
      if (state.staged.has(it.t.name)) px[y0 * off.width + x0 + CELL_PX - 2] = staged;
    }
    octx.putImageData(img, 0, 0);
    this.bitmap = off;
    this.dirty = true;
  }

  // -- view ------------------------------------------------------------------------------------

  resize() {
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.dpr = dpr;
    this.width = r.width;
    this.height = r.height;
    this.canvas.width = Math.max(1, Math.round(r.width * dpr));
    this.canvas.height = Math.max(1, Math.round(r.height * dpr));
    this.dirty = true;
  }

  fit() {
    const { minX, minY, maxX, maxY } = this.bounds;
    const margin = 48;
    // the legend sits over the canvas's bottom-left corner: keep the last rows clear of it
    const legend = document.getElementById("canvas-legend");
    const bottom = Math.max(margin, (legend ? legend.offsetHeight : 0) + 24);
    const w = maxX - minX + 1, h = maxY - minY + 1;
    const s = Math.min((this.width - 2 * margin) / w, (this.height - margin - bottom) / h);
    this.scale = clamp(s, 0.3, 400);
    this.tx = margin + 28 - minX * this.scale;
    this.ty = (this.height + margin - bottom - h * this.scale) / 2 - minY * this.scale;
    if (h * this.scale > this.height) this.ty = margin - minY * this.scale;
    this.dirty = true;
  }

  zoomAt(factor, sx, sy) {
    const s = clamp(this.scale * factor, 0.3, 400);
    const wx = (sx - this.tx) / this.scale, wy = (sy - this.ty) / this.scale;
    this.scale = s;
    this.tx = sx - wx * s;
    this.ty = sy - wy * s;
    this.dirty = true;
  }

  panBy(dx, dy) {
    this.tx += dx;
    this.ty += dy;
    this.dirty = true;
  }

  centerOn(name, minScale = 48) {
    const i = this.indexOf.get(name) ?? -1;
    if (i < 0) return;
    if (this.scale < minScale) this.scale = minScale;
    const it = this.items[i];
    this.tx = this.width / 2 - (it.x + 0.5) * this.scale;
    this.ty = this.height / 2 - (it.y + 0.5) * this.scale;
    this.dirty = true;
  }

  hit(sx, sy) {
    const x = Math.floor((sx - this.tx) / this.scale), y = Math.floor((sy - this.ty) / this.scale);
    const i = this.cellIndex.get(`${x},${y}`);
    return i !== undefined && this.visible(this.items[i]) ? i : -1;
  }

  // -- drawing ---------------------------------------------------------------------------------

  draw() {
    const t0 = performance.now();
    this.dirty = false;
    const ctx = this.ctx;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.fillStyle = cssVar("--canvas-bg");
    ctx.fillRect(0, 0, this.width, this.height);
    if (!this.items.length) return;
    const s = this.scale;
    if (s < BITMAP_BELOW_PX) {
      const { minX, minY } = this.bounds;
      ctx.imageSmoothingEnabled = s < CELL_PX;
      ctx.drawImage(this.bitmap, this.tx + minX * s, this.ty + minY * s,
        this.bitmap.width * s / CELL_PX, this.bitmap.height * s / CELL_PX);
    } else {
      this.drawCells(ctx, s);
    }
    this.drawBands(ctx, s);
    this.drawSelection(ctx, s);
    const dt = performance.now() - t0;
    if (metrics.firstRenderMs === null) {
      metrics.firstRenderMs = performance.now();
      emit("canvas-rendered");
    }
    metrics.drawMs.push(dt);
    if (metrics.drawMs.length > 2000) metrics.drawMs.splice(0, 1000);
  }

  visibleRange() {
    const x0 = Math.floor(-this.tx / this.scale), x1 = Math.ceil((this.width - this.tx) / this.scale);
    const y0 = Math.floor(-this.ty / this.scale), y1 = Math.ceil((this.height - this.ty) / this.scale);
    return { x0, x1, y0, y1 };
  }

  *visibleItems() {
    const { x0, x1, y0, y1 } = this.visibleRange();
    let r = lowerBound(this.rowKeys, y0, (v) => v);
    for (; r < this.rowKeys.length && this.rowKeys[r] <= y1; r++) {
      const row = this.rows.get(this.rowKeys[r]);
      let k = lowerBound(row, x0, (i) => this.items[i].x);
      for (; k < row.length && this.items[row[k]].x <= x1; k++) yield row[k];
    }
  }

  drawCells(ctx, s) {
    const pad = Math.max(1, s * GAP);
    const wantThumbs = s >= THUMB_FROM_PX && state.prefs.thumbs;
    const missing = [];
    const stagedColor = cssVar("--warn");
    ctx.font = `${Math.min(12, Math.max(9, s / 9))}px ${cssVar("--mono") || "monospace"}`;
    for (const i of this.visibleItems()) {
      const it = this.items[i];
      if (!this.visible(it)) continue;
      const x = this.tx + it.x * s + pad / 2, y = this.ty + it.y * s + pad / 2, w = s - pad;
      ctx.globalAlpha = this.dimmed(it) ? 0.18 : 1;
      ctx.fillStyle = groupColor(it.group);
      ctx.fillRect(x, y, w, w);
      if (wantThumbs) {
        const th = this.thumbs.get(it.t.name);
        if (th && th.img) {
          const inset = Math.max(2, w * 0.05);
          const iw = w - 2 * inset, ih = (w - 2 * inset) * 0.8;
          ctx.imageSmoothingEnabled = false;
          ctx.drawImage(th.img, x + inset, y + inset, iw, ih);
          drawSparkline(ctx, th.profile, x + inset, y + inset + ih, iw, w - 2 * inset - ih);
        } else if (!th && !this.dimmed(it)) {
          missing.push(it.t.name);
        }
        if (s >= LABEL_FROM_PX) {
          ctx.fillStyle = "#fff";
          ctx.shadowColor = "#000";
          ctx.shadowBlur = 3;
          ctx.fillText(fitText(ctx, it.short, w - 8), x + 4, y + 13);
          ctx.shadowBlur = 0;
        }
      }
      if (state.staged.has(it.t.name)) {
        ctx.fillStyle = stagedColor;
        const m = Math.max(4, w * 0.18);
        ctx.beginPath();
        ctx.moveTo(x + w - m, y);
        ctx.lineTo(x + w, y);
        ctx.lineTo(x + w, y + m);
        ctx.fill();
      }
      if (i === this.hover) {
        ctx.strokeStyle = cssVar("--accent");
        ctx.lineWidth = 1.5;
        ctx.strokeRect(x - 0.5, y - 0.5, w + 1, w + 1);
      }
    }
    ctx.globalAlpha = 1;
    if (missing.length) this.fetchThumbs(missing);
  }

  drawBands(ctx, s) {
    if (!this.bands.length) return;
    ctx.fillStyle = cssVar("--muted");
    ctx.font = `11px ${cssVar("--font") || "sans-serif"}`;
    ctx.textBaseline = "middle";
    const minGap = 13; // px between labels: skip some when zoomed far out
    let lastY = -Infinity;
    const lx = Math.max(2, this.tx + this.bounds.minX * s - 6);
    ctx.textAlign = "right";
    for (const b of this.bands) {
      const y = this.ty + (b.y0 + 0.5) * s;
      if (y < -20 || y > this.height + 20 || y - lastY < minGap) continue;
      lastY = y;
      ctx.fillText(b.label, lx, y);
    }
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
  }

  drawSelection(ctx, s) {
    if (!state.selected) return;
    const i = this.indexOf.get(state.selected) ?? -1;
    if (i < 0) return;
    const it = this.items[i];
    const x = this.tx + it.x * s, y = this.ty + it.y * s;
    ctx.strokeStyle = cssVar("--selected");
    ctx.lineWidth = 2;
    if (s < 10) {
      const r = 9;
      ctx.beginPath();
      ctx.arc(x + s / 2, y + s / 2, r, 0, Math.PI * 2);
      ctx.stroke();
    } else {
      ctx.strokeRect(x + 1, y + 1, s - 2, s - 2);
    }
  }

  // -- thumbnails --------------------------------------------------------------------------------

  fetchThumbs(names) {
    for (const name of names) {
      if (this.inflight >= MAX_INFLIGHT) break;
      if (this.thumbs.has(name)) continue;
      this.thumbs.set(name, "loading");
      this.inflight++;
      const view = state.staged.has(name) ? "staged" : "base";
      api(`/api/tensor_overview/${tensorPath(name)}`, { params: { rows: THUMB_BLOCKS, cols: THUMB_BLOCKS, view } })
        .then((o) => this.thumbs.set(name, renderThumb(o)))
        .catch(() => this.thumbs.set(name, { img: null, profile: [] }))
        .finally(() => {
          this.inflight--;
          this.trimThumbs();
          this.dirty = true;
        });
    }
  }

  trimThumbs() {
    if (this.thumbs.size <= THUMB_CACHE) return;
    const drop = this.thumbs.size - THUMB_CACHE;
    let n = 0;
    for (const k of this.thumbs.keys()) {
      if (n++ >= drop) break;
      this.thumbs.delete(k);
    }
  }

  invalidateThumbs(names) {
    for (const n of names) this.thumbs.delete(n);
    this.dirty = true;
  }

  // -- input -------------------------------------------------------------------------------------

  bindInput() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("pointerdown", (e) => {
      c.setPointerCapture(e.pointerId);
      drag = { x: e.clientX, y: e.clientY, moved: 0 };
      c.focus();
    });
    c.addEventListener("pointermove", (e) => {
      const r = c.getBoundingClientRect();
      const sx = e.clientX - r.left, sy = e.clientY - r.top;
      if (drag) {
        const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        drag.moved += Math.abs(dx) + Math.abs(dy);
        drag.x = e.clientX;
        drag.y = e.clientY;
        if (drag.moved > 3) {
          c.classList.add("dragging");
          this.panBy(dx, dy);
          this.tooltip.hidden = true;
          return;
        }
      }
      this.setHover(this.hit(sx, sy), sx, sy);
    });
    c.addEventListener("pointerup", (e) => {
      c.classList.remove("dragging");
      if (drag && drag.moved <= 3) {
        const r = c.getBoundingClientRect();
        const i = this.hit(e.clientX - r.left, e.clientY - r.top);
        if (i >= 0) select(this.items[i].t.name);
      }
      drag = null;
    });
    c.addEventListener("pointerleave", () => this.setHover(-1));
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = c.getBoundingClientRect();
      const sx = e.clientX - r.left, sy = e.clientY - r.top;
      const px = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? this.height : 1;
      // pinch (ctrl+wheel) and mouse wheels zoom; two-finger trackpad scrolls pan
      const isMouseWheel = e.deltaMode !== 0 || (e.deltaX === 0 && Math.abs(e.deltaY) >= 50);
      if (e.ctrlKey || isMouseWheel) {
        this.zoomAt(Math.exp(-e.deltaY * px * (e.ctrlKey ? 0.01 : 0.0015)), sx, sy);
      } else {
        this.panBy(-e.deltaX * px, -e.deltaY * px);
      }
    }, { passive: false });
    c.addEventListener("keydown", (e) => {
      const step = 60;
      const cx = this.width / 2, cy = this.height / 2;
      const keys = {
        ArrowLeft: () => this.panBy(step, 0), ArrowRight: () => this.panBy(-step, 0),
        ArrowUp: () => this.panBy(0, step), ArrowDown: () => this.panBy(0, -step),
        "+": () => this.zoomAt(1.25, cx, cy), "=": () => this.zoomAt(1.25, cx, cy),
        "-": () => this.zoomAt(0.8, cx, cy), "0": () => this.fit(),
        Enter: () => this.hover >= 0 && select(this.items[this.hover].t.name),
      };
      if (keys[e.key]) {
        e.preventDefault();
        keys[e.key]();
      }
    });
  }

  setHover(i, sx, sy) {
    if (i !== this.hover) {
      this.hover = i;
      this.dirty = true;
    }
    if (i < 0) {
      this.tooltip.hidden = true;
      return;
    }
    const it = this.items[i];
    const m = it.t.metadata_for_canvas;
    const staged = state.staged.get(it.t.name);
    setChildren(this.tooltip, 
      Object.assign(document.createElement("div"), { textContent: it.t.name }),
      Object.assign(document.createElement("div"), {
        className: "muted",
        textContent: `${it.t.dtype} [${it.t.shape.join(", ")}] · ${fmtBytes(it.t.nbytes)} · layer ${m.layer_index} · ${m.type_group}`
          + (m.expert_index !== null && m.expert_index !== undefined ? ` · expert ${m.expert_index}` : "")
          + (staged ? ` · ${staged} staged edit${staged > 1 ? "s" : ""}` : ""),
      }),
    );
    this.tooltip.hidden = false;
    const tw = this.tooltip.offsetWidth;
    this.tooltip.style.left = `${Math.min(sx + 14, this.width - tw - 6)}px`;
    this.tooltip.style.top = `${sy + 16}px`;
  }
}

// -- helpers -------------------------------------------------------------------------------------

function clamp(v, lo, hi) {
  return Math.max(lo, Math.min(hi, v));
}

function lowerBound(arr, value, key) {
  let lo = 0, hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (key(arr[mid]) < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function shortName(name, meta) {
  const key = meta.specific_type_key || name;
  const star = key.lastIndexOf("*.");
  return star >= 0 ? key.slice(star + 2) : name;
}

function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let t = text;
  while (t.length > 3 && ctx.measureText(`…${t}`).width > width) t = t.slice(1);
  return `…${t}`;
}

function computeBands(items) {
  const byKey = new Map();
  for (const it of items) {
    const m = it.t.metadata_for_canvas;
    const key = `${m.block || ""}|${m.layer_index}`;
    const b = byKey.get(key);
    if (!b) byKey.set(key, { y0: it.y, y1: it.y, layer: m.layer_index, block: m.block });
    else { b.y0 = Math.min(b.y0, it.y); b.y1 = Math.max(b.y1, it.y); }
  }
  const bands = [...byKey.values()].sort((a, b) => a.y0 - b.y0);
  const maxLayer = Math.max(...bands.map((b) => b.layer));
  for (const b of bands) {
    const prefix = b.block ? `${b.block.slice(0, 3)} ` : "";
    b.label = b.layer < 0 ? `${prefix}embed` : (b.layer === maxLayer && bands.length > 2 && isTail(b, items) ? `${prefix}head` : `${prefix}L${b.layer}`);
  }
  return bands;
}

function isTail(band, items) {
  // the band after the last numbered layer holds final norms and the output head
  return items.some((it) => it.y >= band.y0 && it.y <= band.y1 && ["output_head", "norm"].includes(it.group))
    && !items.some((it) => it.y >= band.y0 && it.y <= band.y1 && ["attention_qkv", "mlp_down"].includes(it.group));
}

function rgbaOf(color, alpha = 1) {
  const c = document.createElement("canvas").getContext("2d");
  c.fillStyle = color;
  const hex = c.fillStyle; // normalised to #rrggbb
  const n = parseInt(hex.slice(1), 16);
  const r = (n >> 16) & 255, g = (n >> 8) & 255, b = n & 255;
  const bg = rgbaCache.bg || (rgbaCache.bg = hexToRgb(cssVar("--canvas-bg")));
  const mix = (v, w) => Math.round(v * alpha + w * (1 - alpha));
  return (255 << 24) | (mix(b, bg[2]) << 16) | (mix(g, bg[1]) << 8) | mix(r, bg[0]); // little-endian RGBA
}
const rgbaCache = {};
export function resetColorCache() {
  delete rgbaCache.bg;
}

function hexToRgb(color) {
  const c = document.createElement("canvas").getContext("2d");
  c.fillStyle = color;
  const n = parseInt(c.fillStyle.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// -- legend ----------------------------------------------------------------------------------------

export function renderLegend(container, canvasView) {
  const groups = [...new Set(state.tensors.map((t) => t.metadata_for_canvas.type_group))];
  const counts = new Map();
  for (const t of state.tensors) counts.set(t.metadata_for_canvas.type_group, (counts.get(t.metadata_for_canvas.type_group) || 0) + 1);
  setChildren(container, ...groups.map((g) => {
    const item = document.createElement("span");
    item.className = "legend-item";
    item.dataset.group = g;
    item.title = `${counts.get(g)} tensors · click to hide or show`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = groupColor(g);
    item.append(sw, `${g.replace(/_/g, " ")} (${counts.get(g)})`);
    item.addEventListener("click", () => {
      if (canvasView.groupsOff.has(g)) canvasView.groupsOff.delete(g);
      else canvasView.groupsOff.add(g);
      item.classList.toggle("off", canvasView.groupsOff.has(g));
      canvasView.rebuildBitmap();
    });
    return item;
  }));
}

export function initCanvas() {
  const view = new TensorCanvas(document.getElementById("tensor-canvas"), document.getElementById("canvas-tooltip"));
  document.getElementById("zoom-in").addEventListener("click", () => view.zoomAt(1.4, view.width / 2, view.height / 2));
  document.getElementById("zoom-out").addEventListener("click", () => view.zoomAt(1 / 1.4, view.width / 2, view.height / 2));
  document.getElementById("zoom-fit").addEventListener("click", () => view.fit());
  on("tensors", () => {
    renderLegend(document.getElementById("canvas-legend"), view); // first: fit() leaves room for it
    view.setTensors(state.tensors);
  });
  on("select", (name) => {
    const it = view.items.find((i) => i.t.name === name);
    if (it) {
      const sx = view.tx + (it.x + 0.5) * view.scale, sy = view.ty + (it.y + 0.5) * view.scale;
      if (sx < 0 || sy < 0 || sx > view.width || sy > view.height) view.centerOn(name, view.scale);
    }
    view.dirty = true;
  });
  on("filter", () => view.rebuildBitmap());
  on("staged", (changed) => {
    view.invalidateThumbs(changed || []);
    view.rebuildBitmap();
  });
  on("theme", () => {
    resetColorCache();
    view.rebuildBitmap();
  });
  on("reveal", (name) => view.centerOn(name));
  on("prefs", () => { view.dirty = true; });
  return view;
}
