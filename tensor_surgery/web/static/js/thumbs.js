// Canvas thumbnails: a tensor's block-averaged overview as a tiny diverging heatmap, and a
// sparkline of |x| along its rows.

// Diverging colours for thumbnails: blue below zero, orange above, dark at zero.
export function divergingRGB(t) {
  const a = Math.min(1, Math.abs(t));
  const base = [24, 30, 40];
  const end = t < 0 ? [80, 150, 255] : [255, 150, 60];
  return base.map((b, k) => Math.round(b + (end[k] - b) * Math.sqrt(a)));
}

export function renderThumb(o) {
  const rows = o.mean.length, cols = rows ? o.mean[0].length : 0;
  if (!rows || !cols) return { img: null, profile: [] };
  const c = document.createElement("canvas");
  c.width = cols;
  c.height = rows;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  const scale = Math.max(Math.abs(o.min_mean || 0), Math.abs(o.max_mean || 0)) || 1;
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < cols; k++) {
      const v = o.mean[r][k];
      const [R, G, B] = v === null ? [90, 0, 90] : divergingRGB(v / scale);
      const p = (r * cols + k) * 4;
      img.data[p] = R; img.data[p + 1] = G; img.data[p + 2] = B; img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  const maxAbs = o.max_absmax || 1;
  const profile = o.absmax.map((row) => Math.max(...row.map((v) => v || 0)) / maxAbs);
  return { img: c, profile };
}

export function drawSparkline(ctx, profile, x, y, w, h) {
  if (!profile || profile.length < 2 || h < 3) return;
  ctx.fillStyle = "#0009";
  ctx.fillRect(x, y, w, h);
  ctx.strokeStyle = "#e8eef6";
  ctx.lineWidth = 1;
  ctx.beginPath();
  profile.forEach((v, i) => {
    const px = x + (i / (profile.length - 1)) * w, py = y + h - 1 - v * (h - 2);
    if (i === 0) ctx.moveTo(px, py);
    else ctx.lineTo(px, py);
  });
  ctx.stroke();
}
