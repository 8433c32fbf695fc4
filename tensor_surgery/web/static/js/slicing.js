// Slices of a tensor as the viewer's dimN_* parameters: pure functions over a shape and a slice
// description {row, col, ranges: {dim: [start, end, step]}, idx: {dim: i}} shared by the Focus
// view, the editor and the hex view (which get both from events, never from each other).

export function defaultSlice(shape, window) {
  const rank = shape.length;
  const s = { row: null, col: null, ranges: {}, idx: {} };
  if (rank === 0) return s;
  s.col = rank - 1;
  s.row = rank >= 2 ? rank - 2 : null;
  shape.forEach((n, d) => {
    if (d === s.row || d === s.col) s.ranges[d] = [0, Math.min(n, window), 1];
    else s.idx[d] = 0;
  });
  return s;
}

// The request parameters of slice `s`; with `rect` ({r0, r1, c0, c1} in tensor indices of the
// viewed dims) only that rectangle, step 1.
export function sliceParams(s, rect = null) {
  const p = {};
  for (const [d, i] of Object.entries(s.idx)) p[`dim${d}_idx`] = i;
  for (const [d, [a, b, st]] of Object.entries(s.ranges)) {
    const dim = Number(d);
    if (rect && dim === s.row) { p[`dim${d}_start`] = rect.r0; p[`dim${d}_end`] = rect.r1 + 1; continue; }
    if (rect && dim === s.col) { p[`dim${d}_start`] = rect.c0; p[`dim${d}_end`] = rect.c1 + 1; continue; }
    p[`dim${d}_start`] = a;
    p[`dim${d}_end`] = b;
    if (st > 1 && !rect) p[`dim${d}_step`] = st;
  }
  return p;
}

// Full index of the cell at row r, col c (tensor indices of the viewed dims).
export function fullIndex(shape, s, r, c) {
  return shape.map((_, d) => (d === s.row ? r : d === s.col ? c : s.idx[d] ?? 0));
}

// Row-major element number of a full index.
export function flatIndex(shape, index) {
  return index.reduce((acc, v, d) => acc * shape[d] + v, 0);
}
