// The global tensor canvas: every tensor as a tile, its layers stacked into columns that fill the
// viewport.
//
// Layout: the server places each tensor on a layer-major, type-minor grid (canvas_x, canvas_y): one
// band of rows per layer, each role in the same column in every layer. The canvas keeps each band
// whole and stacks the bands into as many columns as make the tiles largest in this viewport, with
// the layer labels in a gutter left of each column (pinned to the edge when zoomed in). In "size"
// mode a band's tiles are packed in rows instead, each with an area proportional to its element
// count, so the eye finds where the parameters are.
//
// Drawing: zoomed far out, the whole model is one pre-rendered bitmap (3-4 pixels per unit), so
// a frame costs one drawImage whatever the tensor count (DeepSeek-V3 has ~92k). Closer, only the
// visible tiles are drawn, found by row and binary search; from THUMB_FROM_PX a tile shows a heatmap
// of the tensor's block-averaged overview (fetched lazily, visible tiles only).
//
// Keyboard: the arrow keys move a tile cursor (Enter or Space selects its tensor, as a click does),
// shift+arrows pan, + and - zoom around the cursor, the selection or the pointer, 0 fits, s toggles
// size mode, PageUp/PageDown jump a layer, Home/End go to the first/last tensor.

import { api, tensorPath } from "./api.js";
import { bandOf } from "./bands.js";
import { cssVar, emit, fmtBytes, fmtNum, groupColor, on, savePrefs, select, setChildren, state } from "./state.js";
import { drawSparkline, renderThumb } from "./thumbs.js";

const BITMAP_BELOW_PX = 10; // screen px per unit under which the bitmap is drawn
const THUMB_FROM_PX = 16; // tile size from which heatmap thumbnails are shown
const SPARK_FROM_PX = 56; // tile height from which an |x| sparkline goes under the heatmap
const LABEL_FROM_PX = 56; // tile width from which short names are written in tiles
const CELL_PX = 4; // bitmap pixels per unit: 3 filled, 1 gap (3 px when the fitted tiles are smaller)
const GAP = 0.1; // fraction of a unit left empty around a tile
const BAND_GAP = 0.5; // units between two bands (layers) of a column
const COL_GAP = 0.5; // units between two columns, besides the label gutter
const LABEL_CHAR_PX = 6.7; // width of one character of the 11 px monospace layer labels
const MARGIN_PX = 10;
const HUD_PX = 46; // the right edge stays clear of the zoom buttons
const MIN_SIZE_W = 0.06; // size mode: the thinnest tile (a 576-element norm would be invisible)
const FRAME_MAX_PX = 96; // framing filter matches zooms in no further than this
const MAX_COLUMNS = 64;
const THUMB_BLOCKS = 24; // overview blocks per side for a thumbnail
const MAX_INFLIGHT = 4; // of Chromium's 6 connections per host: leave two for the panels' requests
const THUMB_CACHE = 6000; // more than the tiles visible at THUMB_FROM_PX on a large screen

export const metrics = { firstRenderMs: null, drawMs: [] };
window.__tsMetrics = metrics; // read by bench/ui.py

export class TensorCanvas {
  constructor(canvas, tooltip, status) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.tooltip = tooltip;
    this.status = status; // an aria-live line that names the tile under the keyboard cursor
    this.scale = 20; // screen px per unit
    this.tx = 0;
    this.ty = 0;
    this.width = 0;
    this.height = 0;
    this.items = [];
    this.indexOf = new Map(); // tensor name -> index
    this.bands = [];
    this.navRows = null; // rows of tiles in reading order, for the keyboard cursor (see nav())
    this.rows = new Map(); // y -> indices of tiles (height <= 1) starting there, sorted by x
    this.rowKeys = [];
    this.tall = []; // tiles taller than one unit (size mode), checked apart
    this.world = { w: 1, h: 1 };
    this.gridW = 1;
    this.fitScale = 1;
    this.gutterPx = 40;
    this.atFit = true; // the view is the fitted one: a resize fits again
    this.bitmap = null;
    this.thumbs = new Map(); // name -> {img, profile} | "loading"
    this.inflight = 0;
    this.hover = -1;
    this.cursor = -1; // keyboard cursor (item index)
    this.cursorShown = false;
    this.pointer = null; // last pointer position over the canvas
    this.labelsDrawn = []; // band labels of the last frame: {label, x, y, pinned} (read by tests)
    this.dirty = true;
    this.groupsOff = new Set();
    this.colours = null; // an override of the type colours ("canvas-colours" in state.js), or null
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
    let gridW = 1;
    const shorts = new Map(); // a 92k-tensor model has a few dozen distinct keys
    this.items = tensors.map((t) => {
      const m = t.metadata_for_canvas;
      const gx = Math.round(m.canvas_x), gy = Math.round(m.canvas_y);
      if (gx + 1 > gridW) gridW = gx + 1;
      const key = m.specific_type_key || t.name;
      let short = shorts.get(key);
      if (short === undefined) shorts.set(key, (short = shortName(t.name, m)));
      return { t, gx, gy, lx: 0, ly: 0, x: 0, y: 0, w: 1, h: 1, group: m.type_group, short, band: -1 };
    });
    this.gridW = gridW;
    this.indexOf = new Map(this.items.map((it, i) => [it.t.name, i]));
    this.bands = computeBands(this.items, tensors);
    this.thumbs.clear();
    this.cursor = -1;
    this.cursorShown = false;
    this.hover = -1;
    this.fit();
  }

  visible(it) {
    if (this.groupsOff.has(it.group)) return false;
    return !(state.match && state.hideUnmatched && !state.match.has(it.t.name));
  }

  dimmed(it) {
    return state.match !== null && !state.match.has(it.t.name);
  }

  // Place every tile in world units for a viewport of this size: bands whole, stacked into the
  // number of columns that gives the largest tiles.
  layout() {
    const items = this.items, W = this.gridW;
    const sizeMode = Boolean(state.prefs.tileArea);
    let unit = 1; // size mode: elements per unit of area, so that the model covers the grid's area
    if (sizeMode) {
      let total = 0, area = 0;
      for (const it of items) total += it.t.numel;
      for (const b of this.bands) area += W * (b.gy1 - b.gy0 + 1);
      unit = total / area || 1;
    }
    for (const b of this.bands) b.h = sizeMode ? packBySize(b, items, W, unit) : placeOnGrid(b, items);

    const { availW, availH } = this.avail();
    // screen px left of each column for its layer labels ("L12", "dec head"), at fit
    const gutterPx = this.gutterPx = Math.round(clamp(Math.max(...this.bands.map((b) => b.label.length)) * LABEL_CHAR_PX + 12, 30, 100));
    const heights = this.bands.map((b) => b.h);
    let best = null;
    for (let k = 1; k <= Math.min(this.bands.length, MAX_COLUMNS); k++) {
      const cols = splitColumns(heights, k);
      if (best && cols.length <= best.cols.length) continue;
      const colH = Math.max(...cols.map((c) => columnHeight(c, heights)));
      const n = cols.length;
      const s = Math.min((availW - n * gutterPx) / (n * W + (n - 1) * COL_GAP), availH / colH);
      if (!best || s > best.s) best = { s, cols, colH };
    }
    if (!best) best = { s: 20, cols: [], colH: 1 };
    const gutter = gutterPx / best.s;
    let x = gutter;
    for (const col of best.cols) {
      let y = 0;
      for (const bi of col) {
        const b = this.bands[bi];
        b.x = x;
        b.y = y;
        for (const i of b.items) {
          const it = items[i];
          it.x = x + it.lx;
          it.y = y + it.ly;
        }
        y += b.h + BAND_GAP;
      }
      x += W + COL_GAP + gutter;
    }
    this.world = { w: Math.max(1, x - COL_GAP - gutter), h: Math.max(1, best.colH) };
    this.fitScale = best.s;
    this.sizeMode = sizeMode;
    this.buildIndex();
    this.rebuildBitmap();
  }

  buildIndex() {
    this.rows = new Map();
    this.tall = [];
    this.items.forEach((it, i) => {
      if (it.h > 1.0001) { this.tall.push(i); return; }
      let row = this.rows.get(it.y);
      if (!row) this.rows.set(it.y, (row = []));
      row.push(i);
    });
    for (const row of this.rows.values()) row.sort((a, b) => this.items[a].x - this.items[b].x);
    this.rowKeys = [...this.rows.keys()].sort((a, b) => a - b);
    this.navRows = null; // built when the keyboard first needs them
  }

  // Rows of tiles for the keyboard cursor: each band's rows top to bottom, bands in reading order
  // (column by column); each item learns its row (nav) and place in it (navK).
  nav() {
    if (this.navRows) return this.navRows;
    this.navRows = [];
    const order = this.bands.map((b, bi) => bi).sort((a, b) => this.bands[a].x - this.bands[b].x || this.bands[a].y - this.bands[b].y);
    for (const bi of order) {
      const b = this.bands[bi];
      const byRow = new Map();
      for (const i of b.items) {
        const ly = this.items[i].ly;
        if (!byRow.has(ly)) byRow.set(ly, []);
        byRow.get(ly).push(i);
      }
      for (const ly of [...byRow.keys()].sort((p, q) => p - q)) {
        const row = byRow.get(ly).sort((p, q) => this.items[p].lx - this.items[q].lx);
        const r = this.navRows.length;
        row.forEach((i, k) => { this.items[i].nav = r; this.items[i].navK = k; });
        this.navRows.push({ band: bi, items: row });
      }
    }
    return this.navRows;
  }

  rebuildBitmap() {
    if (!this.items.length) return;
    // at most one bitmap pixel per screen pixel at fit (a 92k-tensor model: 1.5 M pixels, not 2.8 M)
    const cell = this.cellPx = this.fitScale < CELL_PX ? CELL_PX - 1 : CELL_PX;
    const off = document.createElement("canvas");
    const W = off.width = Math.max(1, Math.ceil(this.world.w * cell) + 1);
    off.height = Math.max(1, Math.ceil(this.world.h * cell) + 1);
    const octx = off.getContext("2d");
    const img = octx.createImageData(off.width, off.height);
    const px = new Uint32Array(img.data.buffer);
    const rgba = new Map();
    const staged = rgbaOf(cssVar("--warn"));
    for (const it of this.items) {
      if (!this.visible(it)) continue;
      const dim = this.dimmed(it);
      const colour = this.tileColour(it);
      const key = colour + (dim ? ":dim" : "");
      if (!rgba.has(key)) rgba.set(key, rgbaOf(colour, dim ? 0.18 : 1));
      const c = rgba.get(key);
      const x0 = Math.round(it.x * cell), y0 = Math.round(it.y * cell);
      const x1 = Math.max(x0 + 1, Math.round((it.x + it.w) * cell) - 1);
      const y1 = Math.max(y0 + 1, Math.round((it.y + it.h) * cell) - 1);
      for (let y = y0; y < y1; y++) px.fill(c, y * W + x0, y * W + x1);
      if (state.staged.has(it.t.name)) px[y0 * W + x1 - 1] = staged;
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
    // still at fit: lay out again for the new size, once the resizing (a window drag) settles
    clearTimeout(this.refitTimer);
    if (this.atFit && this.items.length && r.width > 0) this.refitTimer = setTimeout(() => { if (this.atFit) this.fit(); }, 60);
    this.dirty = true;
  }

  // The part of the canvas tiles may use at fit: clear of the legend (bottom left) and the buttons.
  avail() {
    const legend = document.getElementById("canvas-legend");
    const bottom = (legend && legend.offsetHeight ? legend.offsetHeight + 8 : 0) + MARGIN_PX;
    const w = this.width > 50 ? this.width : 800, h = this.height > 50 ? this.height : 600;
    return { left: MARGIN_PX, top: MARGIN_PX, availW: Math.max(50, w - MARGIN_PX - HUD_PX), availH: Math.max(50, h - MARGIN_PX - bottom) };
  }

  // Lay out for this viewport and show the whole model (or, with groups or non-matches hidden,
  // everything still shown).
  fit() {
    if (!this.items.length) return;
    this.layout();
    const allShown = !this.groupsOff.size && !(state.match && state.hideUnmatched);
    if (allShown) {
      const { left, top, availW, availH } = this.avail();
      this.scale = this.fitScale;
      this.tx = left + (availW - this.world.w * this.scale) / 2;
      this.ty = top + (availH - this.world.h * this.scale) / 2;
      this.dirty = true;
    } else {
      this.frame(this.items.filter((it) => this.visible(it)), Infinity);
    }
    this.atFit = true;
  }

  // Zoom and pan so that these tiles fill the view (never closer than maxScale px per unit).
  frame(its, maxScale = FRAME_MAX_PX) {
    if (!its.length) return;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const it of its) {
      x0 = Math.min(x0, it.x); y0 = Math.min(y0, it.y);
      x1 = Math.max(x1, it.x + it.w); y1 = Math.max(y1, it.y + it.h);
    }
    const { left, top, availW, availH } = this.avail();
    const w = availW - this.gutterPx; // room for the pinned layer labels at the left
    const s = clamp(Math.min(w / (x1 - x0), availH / (y1 - y0), Math.max(maxScale, this.fitScale)), 0.3, 400);
    this.scale = s;
    this.tx = left + this.gutterPx + (w - (x1 - x0) * s) / 2 - x0 * s;
    this.ty = top + (availH - (y1 - y0) * s) / 2 - y0 * s;
    this.atFit = false;
    this.dirty = true;
  }

  zoomAt(factor, sx, sy) {
    const s = clamp(this.scale * factor, 0.3, 400);
    const wx = (sx - this.tx) / this.scale, wy = (sy - this.ty) / this.scale;
    this.scale = s;
    this.tx = sx - wx * s;
    this.ty = sy - wy * s;
    this.atFit = false;
    this.dirty = true;
  }

  // Where +/- zoom: the keyboard cursor or the selection while it is on screen, else the pointer
  // over the canvas, else the centre.
  zoomAnchor() {
    for (const i of [this.cursorShown ? this.cursor : -1, this.indexOf.get(state.selected) ?? -1]) {
      if (i < 0 || !this.visible(this.items[i])) continue;
      const [cx, cy] = this.centerOf(i);
      if (cx >= 0 && cy >= 0 && cx <= this.width && cy <= this.height) return [cx, cy];
    }
    if (this.pointer) return [this.pointer.x, this.pointer.y];
    return [this.width / 2, this.height / 2];
  }

  zoomBy(factor) {
    this.zoomAt(factor, ...this.zoomAnchor());
  }

  panBy(dx, dy) {
    this.tx += dx;
    this.ty += dy;
    this.atFit = false;
    this.dirty = true;
  }

  centerOf(i) {
    const it = this.items[i];
    return [this.tx + (it.x + it.w / 2) * this.scale, this.ty + (it.y + it.h / 2) * this.scale];
  }

  centerOn(name, minScale = 48) {
    const i = this.indexOf.get(name) ?? -1;
    if (i < 0) return;
    if (this.scale < minScale) this.scale = minScale;
    const it = this.items[i];
    this.tx = this.width / 2 - (it.x + it.w / 2) * this.scale;
    this.ty = this.height / 2 - (it.y + it.h / 2) * this.scale;
    this.atFit = false;
    this.dirty = true;
  }

  // Pan the least that brings tile i wholly on screen (clear of the label gutter and the buttons).
  scrollIntoView(i) {
    const it = this.items[i], s = this.scale;
    const x0 = this.tx + it.x * s, y0 = this.ty + it.y * s, x1 = x0 + it.w * s, y1 = y0 + it.h * s;
    const L = this.gutterPx, T = MARGIN_PX, R = this.width - HUD_PX, B = this.height - MARGIN_PX - 24;
    let dx = 0, dy = 0;
    if (x1 - x0 > R - L || x0 < L) dx = L - x0;
    else if (x1 > R) dx = R - x1;
    if (y1 - y0 > B - T || y0 < T) dy = T - y0;
    else if (y1 > B) dy = B - y1;
    if (dx || dy) this.panBy(dx, dy);
  }

  hit(sx, sy) {
    const wx = (sx - this.tx) / this.scale, wy = (sy - this.ty) / this.scale;
    const inside = (i) => {
      const it = this.items[i];
      return wx >= it.x && wx < it.x + it.w && wy >= it.y && wy < it.y + it.h && this.visible(it);
    };
    // rows start at most one unit above the point
    for (let r = upperBound(this.rowKeys, wy) - 1; r >= 0 && this.rowKeys[r] > wy - 1; r--) {
      const row = this.rows.get(this.rowKeys[r]);
      const k = upperBound(row, wx, (i) => this.items[i].x) - 1;
      if (k >= 0 && inside(row[k])) return row[k];
    }
    for (const i of this.tall) if (inside(i)) return i;
    return -1;
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
      ctx.imageSmoothingEnabled = s < this.cellPx;
      ctx.drawImage(this.bitmap, this.tx, this.ty, this.bitmap.width * s / this.cellPx, this.bitmap.height * s / this.cellPx);
    } else {
      this.drawTiles(ctx, s);
    }
    this.drawBands(ctx, s);
    this.drawSelection(ctx);
    this.drawCursor(ctx);
    const dt = performance.now() - t0;
    if (metrics.firstRenderMs === null) {
      metrics.firstRenderMs = performance.now();
      emit("canvas-rendered");
    }
    metrics.drawMs.push(dt);
    if (metrics.drawMs.length > 2000) metrics.drawMs.splice(0, 1000);
  }

  *visibleItems() {
    const s = this.scale;
    const x0 = -this.tx / s, x1 = (this.width - this.tx) / s;
    const y0 = -this.ty / s, y1 = (this.height - this.ty) / s;
    for (let r = lowerBound(this.rowKeys, y0 - 1, (v) => v); r < this.rowKeys.length && this.rowKeys[r] <= y1; r++) {
      const row = this.rows.get(this.rowKeys[r]);
      // tiles of a row do not overlap, so their right edges are sorted too
      for (let k = lowerBound(row, x0, (i) => this.items[i].x + this.items[i].w); k < row.length && this.items[row[k]].x <= x1; k++) {
        yield row[k];
      }
    }
    for (const i of this.tall) {
      const it = this.items[i];
      if (it.x <= x1 && it.x + it.w >= x0 && it.y <= y1 && it.y + it.h >= y0) yield i;
    }
  }

  // A tile's fill: its type group's colour, or the override's (a number 0..1 on the ramp, a CSS
  // colour for a mark such as "missing on one side", NO_COLOUR for a tensor the override omits).
  tileColour(it) {
    if (!this.colours) return groupColor(it.group);
    const v = this.colours.byName.get(it.t.name);
    if (typeof v === "number") return rampColour(v);
    return typeof v === "string" ? v : cssVar("--line") || "#444";
  }

  tileRect(it, s) {
    const pad = Math.max(1, s * GAP);
    return [this.tx + it.x * s + pad / 2, this.ty + it.y * s + pad / 2, Math.max(1, it.w * s - pad), Math.max(1, it.h * s - pad)];
  }

  drawTiles(ctx, s) {
    const wantThumbs = s >= THUMB_FROM_PX && state.prefs.thumbs && !this.colours; // a colour override is the view
    const missing = [];
    const stagedColor = cssVar("--warn");
    const mono = cssVar("--mono") || "monospace";
    ctx.font = `${Math.min(12, Math.max(9, s / 9))}px ${mono}`;
    ctx.imageSmoothingEnabled = false;
    for (const i of this.visibleItems()) {
      const it = this.items[i];
      if (!this.visible(it)) continue;
      const [x, y, w, h] = this.tileRect(it, s);
      const dim = this.dimmed(it);
      ctx.globalAlpha = dim ? 0.18 : 1;
      ctx.fillStyle = this.tileColour(it);
      ctx.fillRect(x, y, w, h);
      if (wantThumbs) {
        const th = this.thumbs.get(it.t.name);
        if (th && th.img && w >= 4 && h >= 4) {
          // a frame in the group's colour around the tensor's own heatmap
          const inset = Math.min(w, h) >= 40 ? Math.max(2, Math.min(w, h) * 0.05) : 1.5;
          const iw = w - 2 * inset, full = h - 2 * inset;
          const ih = full >= SPARK_FROM_PX ? full * 0.8 : full;
          ctx.drawImage(th.img, x + inset, y + inset, iw, ih);
          if (ih < full) drawSparkline(ctx, th.profile, x + inset, y + inset + ih, iw, full - ih);
        } else if (!th && !dim) {
          missing.push(it.t.name);
        }
        if (w >= LABEL_FROM_PX && h >= 18) {
          ctx.fillStyle = "#fff";
          ctx.shadowColor = "#000";
          ctx.shadowBlur = 3;
          ctx.fillText(fitText(ctx, it.short, w - 8), x + 4, y + 13);
          ctx.shadowBlur = 0;
        }
      }
      if (state.staged.has(it.t.name)) {
        ctx.fillStyle = stagedColor;
        const m = Math.max(4, Math.min(w, h) * 0.18);
        ctx.beginPath();
        ctx.moveTo(x + w - m, y);
        ctx.lineTo(x + w, y);
        ctx.lineTo(x + w, y + m);
        ctx.fill();
      }
      if (i === this.hover) {
        ctx.strokeStyle = cssVar("--accent");
        ctx.lineWidth = 1.5;
        ctx.strokeRect(x - 0.5, y - 0.5, w + 1, h + 1);
      }
    }
    ctx.globalAlpha = 1;
    if (missing.length) this.fetchThumbs(missing);
  }

  // Layer labels left of their band; when the band's left edge is off screen the label is pinned
  // to the canvas's left edge (and to its top while a tall band is scrolled), on a plate.
  drawBands(ctx, s) {
    this.labelsDrawn = [];
    if (!this.bands.length) return;
    const W = this.gridW * s;
    ctx.font = `11px ${cssVar("--mono") || "monospace"}`;
    ctx.textBaseline = "middle";
    const lastY = new Map(); // per column: the last label's y, to skip crowded ones
    const muted = cssVar("--muted"), plate = cssVar("--panel");
    for (const b of this.bands) {
      const bx = this.tx + b.x * s, by = this.ty + b.y * s, bh = b.h * s;
      if (bx + W < 0 || bx > this.width || by + bh < 0 || by > this.height) continue;
      let y = by + Math.min(bh, s) / 2;
      if (y < 10) y = Math.min(10, by + bh - 6);
      const prev = lastY.get(b.x);
      if (prev !== undefined && y - prev < 13) continue;
      lastY.set(b.x, y);
      const tw = ctx.measureText(b.label).width;
      let x = bx - 6 - tw;
      const pinned = x < 3;
      if (pinned) {
        x = 3;
        ctx.fillStyle = plate;
        ctx.globalAlpha = 0.85;
        ctx.fillRect(x - 2, y - 7, tw + 4, 14);
        ctx.globalAlpha = 1;
      }
      ctx.fillStyle = muted;
      ctx.fillText(b.label, x, y);
      this.labelsDrawn.push({ label: b.label, x, y, pinned });
    }
    ctx.textBaseline = "alphabetic";
  }

  drawSelection(ctx) {
    const i = state.selected ? this.indexOf.get(state.selected) ?? -1 : -1;
    if (i < 0) return;
    this.outline(ctx, i, cssVar("--selected"), []);
  }

  drawCursor(ctx) {
    if (!this.cursorShown || this.cursor < 0) return;
    this.outline(ctx, this.cursor, cssVar("--accent"), [4, 3]);
  }

  outline(ctx, i, color, dash) {
    const it = this.items[i], s = this.scale;
    const x = this.tx + it.x * s, y = this.ty + it.y * s, w = it.w * s, h = it.h * s;
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.setLineDash(dash);
    if (Math.min(w, h) < 10) { // too small to outline: a ring around it
      ctx.beginPath();
      ctx.arc(x + w / 2, y + h / 2, 9, 0, Math.PI * 2);
      ctx.stroke();
    } else {
      ctx.strokeRect(x + 1, y + 1, w - 2, h - 2);
    }
    ctx.setLineDash([]);
  }

  // -- thumbnails --------------------------------------------------------------------------------

  fetchThumbs(names) {
    if (state.switching) return; // another model is being opened: these names may not exist there
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

  // -- keyboard cursor ---------------------------------------------------------------------------

  firstVisibleIn(row, from, step) {
    const its = this.nav()[row].items;
    for (let k = from; k >= 0 && k < its.length; k += step) if (this.visible(this.items[its[k]])) return its[k];
    return -1;
  }

  // The tile of another row nearest (by its centre across the band) to tile i.
  nearestIn(row, i) {
    const it = this.items[i], c = it.lx + it.w / 2;
    let best = -1, bestD = Infinity;
    for (const j of this.nav()[row].items) {
      const o = this.items[j];
      if (!this.visible(o)) continue;
      const d = Math.abs(o.lx + o.w / 2 - c);
      if (d < bestD) { best = j; bestD = d; }
    }
    return best;
  }

  neighbour(i, move) {
    const it = this.items[i], rows = this.nav(), last = rows.length - 1;
    if (move === "right" || move === "left") {
      // along the row, then on into the next (or previous) row: every tile in reading order
      const step = move === "right" ? 1 : -1;
      for (let r = it.nav; r >= 0 && r <= last; r += step) {
        const from = r === it.nav ? it.navK + step : (step > 0 ? 0 : rows[r].items.length - 1);
        const j = this.firstVisibleIn(r, from, step);
        if (j >= 0) return j;
      }
      return -1;
    }
    if (move === "down" || move === "up") {
      const step = move === "down" ? 1 : -1;
      for (let r = it.nav + step; r >= 0 && r <= last; r += step) {
        const j = this.nearestIn(r, i);
        if (j >= 0) return j;
      }
      return -1;
    }
    if (move === "pagedown" || move === "pageup") { // the same place in the next / previous layer
      const step = move === "pagedown" ? 1 : -1;
      let r = it.nav;
      while (r >= 0 && r <= last && rows[r].band === rows[it.nav].band) r += step;
      if (step < 0 && r >= 0) { // the first row of that band
        const band = rows[r].band;
        while (r > 0 && rows[r - 1].band === band) r--;
      }
      for (; r >= 0 && r <= last; r += step) {
        const j = this.nearestIn(r, i);
        if (j >= 0) return j;
      }
      return -1;
    }
    if (move === "home" || move === "end") {
      const step = move === "home" ? 1 : -1;
      for (let r = step > 0 ? 0 : last; r >= 0 && r <= last; r += step) {
        const j = this.firstVisibleIn(r, step > 0 ? 0 : rows[r].items.length - 1, step);
        if (j >= 0) return j;
      }
    }
    return -1;
  }

  // Where the cursor starts: the selection if shown, else the first tile on screen.
  initialCursor() {
    const sel = this.indexOf.get(state.selected) ?? -1;
    if (sel >= 0 && this.visible(this.items[sel])) return sel;
    let first = -1;
    for (const row of this.nav()) {
      for (const i of row.items) {
        if (!this.visible(this.items[i])) continue;
        if (first < 0) first = i;
        const [cx, cy] = this.centerOf(i);
        if (cx >= 0 && cy >= 0 && cx <= this.width && cy <= this.height) return i;
      }
    }
    return first;
  }

  moveCursor(move) {
    if (!this.items.length) return;
    const cur = this.cursor >= 0 && this.visible(this.items[this.cursor]) ? this.cursor : -1;
    if (cur < 0 || !this.cursorShown) {
      this.cursor = cur >= 0 ? cur : this.initialCursor();
    } else {
      const next = this.neighbour(cur, move);
      if (next >= 0) this.cursor = next;
    }
    if (this.cursor < 0) return;
    this.cursorShown = true;
    this.scrollIntoView(this.cursor);
    this.showCursorInfo();
    this.dirty = true;
  }

  showCursorInfo() {
    const i = this.cursor;
    const [cx, cy] = this.centerOf(i);
    const it = this.items[i];
    this.showTooltip(i, cx + (it.w * this.scale) / 2, cy);
    if (this.status) this.status.textContent = `${it.t.name}: ${this.describe(it)}`;
  }

  // -- input -------------------------------------------------------------------------------------

  bindInput() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener("pointerdown", (e) => {
      c.setPointerCapture(e.pointerId);
      drag = { x: e.clientX, y: e.clientY, moved: 0 };
      this.cursorShown = false;
      c.focus();
    });
    c.addEventListener("pointermove", (e) => {
      const r = c.getBoundingClientRect();
      const sx = e.clientX - r.left, sy = e.clientY - r.top;
      this.pointer = { x: sx, y: sy };
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
        if (i >= 0) {
          this.cursor = i;
          select(this.items[i].t.name);
        }
      }
      drag = null;
    });
    c.addEventListener("pointerleave", () => {
      this.pointer = null;
      this.setHover(-1);
    });
    c.addEventListener("blur", () => {
      if (this.cursorShown) { this.cursorShown = false; this.tooltip.hidden = true; this.dirty = true; }
    });
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
      if (e.altKey || e.ctrlKey || e.metaKey) return;
      const step = 60;
      const moves = { ArrowLeft: "left", ArrowRight: "right", ArrowUp: "up", ArrowDown: "down",
        PageUp: "pageup", PageDown: "pagedown", Home: "home", End: "end" };
      const pans = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
      const keys = {
        "+": () => this.zoomBy(1.25), "=": () => this.zoomBy(1.25),
        "-": () => this.zoomBy(0.8), "_": () => this.zoomBy(0.8),
        "0": () => this.fit(),
        s: () => toggleSizeMode(),
        Enter: () => this.activate(), " ": () => this.activate(),
        Escape: () => { this.cursorShown = false; this.tooltip.hidden = true; this.dirty = true; },
      };
      let act = null;
      if (e.shiftKey && pans[e.key]) act = () => this.panBy(...pans[e.key]);
      else if (moves[e.key]) act = () => this.moveCursor(moves[e.key]);
      else if (keys[e.key]) act = keys[e.key];
      if (act) {
        e.preventDefault();
        act();
      }
    });
  }

  // Enter / Space: select the tile under the keyboard cursor (or, without one, under the mouse)
  activate() {
    const i = this.cursorShown && this.cursor >= 0 ? this.cursor : this.hover;
    if (i >= 0) select(this.items[i].t.name);
  }

  setHover(i, sx, sy) {
    if (i !== this.hover) {
      this.hover = i;
      this.dirty = true;
    }
    if (i < 0) {
      if (!this.cursorShown) this.tooltip.hidden = true;
      return;
    }
    this.showTooltip(i, sx, sy);
  }

  describe(it) {
    const m = it.t.metadata_for_canvas;
    const staged = state.staged.get(it.t.name);
    return `${it.t.dtype} [${it.t.shape.join(", ")}] · ${fmtNum(it.t.numel)} values · ${fmtBytes(it.t.nbytes)} · `
      + `${this.bands[it.band].where} · ${m.type_group.replace(/_/g, " ")}`
      + (m.expert_index !== null && m.expert_index !== undefined ? ` · expert ${m.expert_index}` : "")
      + (staged ? ` · ${staged} staged edit${staged > 1 ? "s" : ""}` : "");
  }

  showTooltip(i, sx, sy) {
    const it = this.items[i];
    setChildren(this.tooltip,
      Object.assign(document.createElement("div"), { textContent: it.t.name }),
      Object.assign(document.createElement("div"), { className: "muted", textContent: this.describe(it) }),
    );
    this.tooltip.hidden = false;
    const tw = this.tooltip.offsetWidth, th = this.tooltip.offsetHeight;
    this.tooltip.style.left = `${Math.max(4, Math.min(sx + 14, this.width - tw - 6))}px`;
    this.tooltip.style.top = `${sy + 16 + th > this.height ? Math.max(4, sy - th - 10) : sy + 16}px`;
  }
}

// -- helpers -------------------------------------------------------------------------------------

function clamp(v, lo, hi) {
  return Math.max(lo, Math.min(hi, v));
}

function lowerBound(arr, value, key = (v) => v) {
  let lo = 0, hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (key(arr[mid]) < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function upperBound(arr, value, key = (v) => v) {
  let lo = 0, hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (key(arr[mid]) <= value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Grid mode: the band exactly as the server laid it out.
function placeOnGrid(b, items) {
  for (const i of b.items) {
    const it = items[i];
    it.lx = it.gx;
    it.ly = it.gy - b.gy0;
    it.w = 1;
    it.h = 1;
  }
  return b.gy1 - b.gy0 + 1;
}

// Size mode: the band's tiles in the server's order, packed in rows of width W, each with an area
// of numel / unit (one unit high; a tensor bigger than a whole row becomes a block W wide).
function packBySize(b, items, W, unit) {
  const order = b.items.slice().sort((i, j) => items[i].gy - items[j].gy || items[i].gx - items[j].gx);
  let cx = 0, cy = 0, lineH = 1;
  for (const i of order) {
    const it = items[i];
    const a = it.t.numel / unit;
    let w = Math.max(a, MIN_SIZE_W), h = 1;
    if (a > W) { w = W; h = a / W; }
    if (cx > 0 && cx + w > W + 1e-9) { cy += lineH; cx = 0; lineH = 1; }
    it.lx = cx; it.ly = cy; it.w = w; it.h = h;
    cx += w;
    lineH = Math.max(lineH, h);
    if (h > 1) { cy += lineH; cx = 0; lineH = 1; }
  }
  return cx > 0 ? cy + lineH : Math.max(1, cy);
}

function columnHeight(col, heights) {
  return col.reduce((sum, bi) => sum + heights[bi], 0) + BAND_GAP * Math.max(0, col.length - 1);
}

// Bands in order into at most k columns, as evenly as the bands allow (binary search on the height).
function splitColumns(heights, k) {
  const greedy = (cap) => {
    const cols = [[]];
    let cur = 0;
    heights.forEach((h, bi) => {
      const add = (cols[cols.length - 1].length ? BAND_GAP : 0) + h;
      if (cols[cols.length - 1].length && cur + add > cap + 1e-9) {
        cols.push([bi]);
        cur = h;
      } else {
        cols[cols.length - 1].push(bi);
        cur += add;
      }
    });
    return cols;
  };
  let lo = Math.max(0, ...heights), hi = columnHeight(heights.map((_, i) => i), heights);
  if (greedy(lo).length <= k) return greedy(lo);
  for (let iter = 0; iter < 40 && hi - lo > 1e-3; iter++) {
    const mid = (lo + hi) / 2;
    if (greedy(mid).length <= k) hi = mid;
    else lo = mid;
  }
  return greedy(hi);
}

// A tile's label: its role without the layer prefix, module context or ".weight", in a few
// common abbreviations, so that the distinguishing start survives ("input_ln", "post_attn_ln").
export function shortName(name, meta) {
  const key = meta.specific_type_key || name;
  const star = key.lastIndexOf("*.");
  let s = star >= 0 ? key.slice(star + 2) : name.replace(/^(model|transformer|base_model)\./, "");
  s = s.replace(/\.weight$/, "")
    .replace(/^(self_attn|self_attention|attention|attn|mlp|feed_forward|ffn)\./, "")
    .replace(/layer_?norm/gi, "ln")
    .replace(/attention/g, "attn");
  return s || key;
}

function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let t = text;
  while (t.length > 1 && ctx.measureText(`${t}…`).width > width) t = t.slice(0, -1);
  return `${t}…`;
}

// One band per (stack, layer) of the server's grid, named by bands.js (the same names, and the same
// cached work, as Focus's "layer"): "embed" before the layers, L0..Ln, "norm" / "head" after them.
function computeBands(items, tensors) {
  const byKey = new Map();
  items.forEach((it, i) => {
    const m = it.t.metadata_for_canvas;
    const key = `${m.block || ""}|${m.layer_index}`;
    let b = byKey.get(key);
    if (!b) byKey.set(key, (b = { gy0: it.gy, gy1: it.gy, layer: m.layer_index, block: m.block || "", items: [] }));
    else { b.gy0 = Math.min(b.gy0, it.gy); b.gy1 = Math.max(b.gy1, it.gy); }
    b.items.push(i);
  });
  const bands = [...byKey.values()].sort((a, b) => a.gy0 - b.gy0);
  bands.forEach((b, bi) => {
    for (const i of b.items) items[i].band = bi;
    Object.assign(b, bandOf(items[b.items[0]].t, tensors));
  });
  return bands;
}

function rgbaOf(color, alpha = 1) {
  const [r, g, b] = hexToRgb(color);
  const bg = rgbaCache.bg || (rgbaCache.bg = hexToRgb(cssVar("--canvas-bg")));
  const mix = (v, w) => Math.round(v * alpha + w * (1 - alpha));
  return ((255 << 24) | (mix(b, bg[2]) << 16) | (mix(g, bg[1]) << 8) | mix(r, bg[0])) >>> 0; // little-endian RGBA
}
const rgbaCache = {};
export function resetColorCache() {
  delete rgbaCache.bg;
}

// any CSS colour, normalised by a canvas context to #rrggbb, as [r, g, b]
function hexToRgb(color) {
  const c = document.createElement("canvas").getContext("2d");
  c.fillStyle = color;
  const n = parseInt(c.fillStyle.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// The override's ramp, 0..1: viridis at five stops (dark = little, yellow = much), readable on
// both themes and by most colour-blind readers.
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function rampColour(v) {
  const x = Math.min(1, Math.max(0, Number.isFinite(v) ? v : 0)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
  const c = RAMP[i].map((a, k) => Math.round(a + (RAMP[i + 1][k] - a) * f));
  return `#${c.map((n) => n.toString(16).padStart(2, "0")).join("")}`;
}

// The override's legend: its title, the ramp with its scale (ticks: [{at 0..1, label}]), and marks.
function renderColourLegend(container, legend) {
  const bar = document.createElement("span");
  bar.className = "ramp-bar";
  bar.style.background = `linear-gradient(to right, ${[0, 0.25, 0.5, 0.75, 1].map(rampColour).join(", ")})`;
  const ticks = document.createElement("span");
  ticks.className = "ramp-ticks";
  for (const t of legend.ticks || []) {
    const tick = document.createElement("span");
    tick.style.left = `${t.at * 100}%`;
    tick.textContent = t.label;
    ticks.append(tick);
  }
  const ramp = document.createElement("span");
  ramp.className = "legend-ramp";
  ramp.append(bar, ticks);
  const marks = (legend.marks || []).map((m) => {
    const item = document.createElement("span");
    item.className = "legend-item legend-mark";
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = m.colour;
    item.append(sw, m.label);
    return item;
  });
  const title = document.createElement("span");
  title.className = "legend-title";
  title.textContent = legend.title || "";
  setChildren(container, title, ramp, ...marks);
}

function toggleSizeMode() {
  savePrefs({ tileArea: !state.prefs.tileArea }); // the "prefs" listener lays the canvas out again
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
  const view = new TensorCanvas(document.getElementById("tensor-canvas"), document.getElementById("canvas-tooltip"),
    document.getElementById("canvas-status"));
  const sizeBtn = document.getElementById("zoom-size");
  const showSizeMode = () => sizeBtn.setAttribute("aria-pressed", String(Boolean(state.prefs.tileArea)));
  showSizeMode();
  document.getElementById("zoom-in").addEventListener("click", () => view.zoomBy(1.4));
  document.getElementById("zoom-out").addEventListener("click", () => view.zoomBy(1 / 1.4));
  document.getElementById("zoom-fit").addEventListener("click", () => view.fit());
  sizeBtn.addEventListener("click", toggleSizeMode);
  on("canvas-colours", (detail) => {
    view.colours = detail && detail.byName ? detail : null;
    const legend = document.getElementById("canvas-legend");
    if (view.colours) renderColourLegend(legend, view.colours.legend || {});
    else renderLegend(legend, view);
    view.rebuildBitmap();
  });
  on("tensors", () => {
    view.colours = null; // an override was about the model before
    renderLegend(document.getElementById("canvas-legend"), view); // first: fit() leaves room for it
    view.setTensors(state.tensors);
  });
  on("select", (name) => {
    const i = view.indexOf.get(name) ?? -1;
    if (i >= 0) {
      view.cursor = i;
      const [sx, sy] = view.centerOf(i);
      if (sx < 0 || sy < 0 || sx > view.width || sy > view.height) view.centerOn(name, view.scale);
    }
    view.dirty = true;
  });
  let framed = false;
  on("filter", () => {
    view.rebuildBitmap();
    // frame the matches (the whole model again once the filter is cleared)
    if (state.match && state.match.size) {
      view.frame(view.items.filter((it) => state.match.has(it.t.name) && view.visible(it)));
      framed = true;
    } else if (!state.match && framed) {
      view.fit();
      framed = false;
    }
  });
  on("staged", (changed) => {
    view.invalidateThumbs(changed || []);
    view.rebuildBitmap();
  });
  on("theme", () => {
    resetColorCache();
    view.rebuildBitmap();
  });
  on("reveal", (name) => view.centerOn(name));
  on("prefs", () => {
    if (Boolean(state.prefs.tileArea) !== Boolean(view.sizeMode)) {
      showSizeMode();
      view.fit();
    }
    view.dirty = true;
  });
  return view;
}
