// A small line-plot widget on <canvas>: axes with ticks, a legend, a hover readout and an
// optional log-scaled y axis. Series are {label, color, dashed, x: number[], y: number[]}, x
// increasing; NaN and infinite values are gaps (and values <= 0 on a log axis).

const PAD = { left: 58, right: 14, top: 10, bottom: 28 };
const FONT = '11px system-ui, -apple-system, "Segoe UI", sans-serif';

/** A number short enough for an axis or a readout. */
export function formatNumber(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 1e5 || a < 1e-3) return v.toExponential(2).replace('e+', 'e');
  return String(Number(v.toPrecision(4)));
}

/** About `count` round values spanning [min, max]. */
function linearTicks(min, max, count) {
  const raw = (max - min) / Math.max(1, count);
  const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
  const normalized = raw / magnitude; // in [1, 10)
  const step = magnitude * (normalized < 1.5 ? 1 : normalized < 3 ? 2 : normalized < 7 ? 5 : 10);
  const ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max + step * 1e-9; t += step) {
    ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  }
  return ticks;
}

/** Powers of ten in [min, max], with 2 and 5 between them when the range is short. */
function logTicks(min, max) {
  const lo = Math.floor(Math.log10(min));
  const hi = Math.ceil(Math.log10(max));
  const multiples = hi - lo <= 3 ? [1, 2, 5] : [1];
  const every = Math.max(1, Math.ceil((hi - lo) / 6));
  const ticks = [];
  for (let e = lo; e <= hi; e += every) {
    for (const m of multiples) {
      const t = m * Math.pow(10, e);
      if (t >= min * (1 - 1e-9) && t <= max * (1 + 1e-9)) ticks.push(t);
    }
  }
  return ticks;
}

/** The index in sorted `xs` whose value is nearest `x`. */
function nearest(xs, x) {
  let lo = 0;
  let hi = xs.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid; else hi = mid;
  }
  return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
}

export class LinePlot {
  /**
   * @param {HTMLElement} host where the plot goes (it fills the host's width)
   * @param {{title: string, unit?: string, logY?: boolean, xLabel?: string}} options
   */
  constructor(host, options) {
    this.options = options;
    this.series = [];
    this.legendItems = [];
    this.hidden = new Set();
    this.hover = null;
    this.root = document.createElement('figure');
    this.root.className = 'plot';
    this.root.innerHTML = `
      <figcaption>
        <span class="plot-title"></span>
        <label class="plot-log"><input type="checkbox"> log y</label>
      </figcaption>
      <div class="plot-area"><canvas></canvas><div class="plot-readout" hidden></div></div>
      <div class="plot-legend"></div>`;
    this.root.querySelector('.plot-title').textContent =
      options.title + (options.unit ? ` (${options.unit})` : '');
    this.logBox = this.root.querySelector('.plot-log input');
    this.logBox.checked = Boolean(options.logY);
    this.logBox.addEventListener('change', () => this.draw());
    this.canvas = this.root.querySelector('canvas');
    this.readout = this.root.querySelector('.plot-readout');
    this.legend = this.root.querySelector('.plot-legend');
    this.canvas.addEventListener('mousemove', (e) => {
      const box = this.canvas.getBoundingClientRect();
      this.hover = { x: e.clientX - box.left, y: e.clientY - box.top };
      this.draw();
    });
    this.canvas.addEventListener('mouseleave', () => {
      this.hover = null;
      this.draw();
    });
    new ResizeObserver(() => this.draw()).observe(this.canvas);
    host.appendChild(this.root);
  }

  get logY() {
    return this.logBox.checked;
  }

  /**
   * Replaces the plotted series and redraws. The legend has one entry a series unless `legend`
   * is given: entries {text, color, dashed, covers(series)}, each showing or hiding the series
   * it covers (a model's train and eval lines under one entry, say).
   */
  setData(series, legend) {
    this.series = series;
    this.legendItems = legend || series.map((s) => ({
      text: s.label, color: s.color, dashed: s.dashed, covers: (other) => other === s,
    }));
    let points = 0;
    let first = Infinity;
    let last = -Infinity;
    for (const s of series) {
      points += s.x.length;
      if (s.x.length > 0) {
        first = Math.min(first, s.x[0]);
        last = Math.max(last, s.x[s.x.length - 1]);
      }
    }
    // What is plotted, for whoever checks the page: lines, points and the steps they span.
    this.root.dataset.series = String(series.length);
    this.root.dataset.points = String(points);
    this.root.dataset.steps = points > 0 ? `${first}-${last}` : '';
    this.drawLegend();
    this.draw();
  }

  remove() {
    this.root.remove();
  }

  drawLegend() {
    this.legend.replaceChildren();
    const items = this.legendItems;
    if (items.length < 2 && !(items[0] && items[0].text)) return;
    for (const entry of items) {
      const item = document.createElement('button');
      item.type = 'button';
      item.className = 'legend-item' + (this.hidden.has(entry.text) ? ' off' : '');
      item.title = 'show or hide';
      const swatch = document.createElement('span');
      swatch.className = 'swatch' + (entry.dashed ? ' dashed' : '');
      swatch.style.borderColor = entry.color;
      item.append(swatch, document.createTextNode(entry.text));
      item.addEventListener('click', () => {
        if (this.hidden.has(entry.text)) this.hidden.delete(entry.text); else this.hidden.add(entry.text);
        this.drawLegend();
        this.draw();
      });
      this.legend.appendChild(item);
    }
  }

  /** Whether a legend entry that covers `series` is switched off. */
  isHidden(series) {
    return this.legendItems.some((entry) => this.hidden.has(entry.text) && entry.covers(series));
  }

  /** The ranges of what is shown: null when nothing can be drawn. */
  bounds(shown, logY) {
    let xMin = Infinity, xMax = -Infinity, yMin = Infinity, yMax = -Infinity;
    for (const s of shown) {
      for (let i = 0; i < s.x.length; i++) {
        const y = s.y[i];
        if (!Number.isFinite(y) || (logY && y <= 0)) continue;
        if (s.x[i] < xMin) xMin = s.x[i];
        if (s.x[i] > xMax) xMax = s.x[i];
        if (y < yMin) yMin = y;
        if (y > yMax) yMax = y;
      }
    }
    if (xMin > xMax) return null;
    if (xMin === xMax) { xMin -= 1; xMax += 1; }
    if (logY) {
      if (yMin === yMax) { yMin /= 2; yMax *= 2; }
      const margin = Math.pow(yMax / yMin, 0.04);
      return { xMin, xMax, yMin: yMin / margin, yMax: yMax * margin };
    }
    if (yMin === yMax) {
      const d = Math.abs(yMin) * 0.1 || 1;
      yMin -= d; yMax += d;
    }
    const margin = (yMax - yMin) * 0.04;
    return { xMin, xMax, yMin: yMin - margin, yMax: yMax + margin };
  }

  draw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.paint();
    });
  }

  paint() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    if (width === 0 || height === 0) return;
    if (this.canvas.width !== Math.round(width * ratio) || this.canvas.height !== Math.round(height * ratio)) {
      this.canvas.width = Math.round(width * ratio);
      this.canvas.height = Math.round(height * ratio);
    }
    const g = this.canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = FONT;
    const logY = this.logY;
    const shown = this.series.filter((s) => !this.isHidden(s));
    const b = this.bounds(shown, logY);
    const plotW = width - PAD.left - PAD.right;
    const plotH = height - PAD.top - PAD.bottom;
    if (!b) {
      g.fillStyle = '#8a94a6';
      g.textAlign = 'center';
      g.fillText('no data yet', width / 2, height / 2);
      this.readout.hidden = true;
      return;
    }
    const ty = (y) => (logY ? Math.log10(y) : y);
    const yLo = ty(b.yMin);
    const yHi = ty(b.yMax);
    const px = (x) => PAD.left + ((x - b.xMin) / (b.xMax - b.xMin)) * plotW;
    const py = (y) => PAD.top + (1 - (ty(y) - yLo) / (yHi - yLo)) * plotH;

    // Grid, ticks and tick labels.
    g.strokeStyle = '#e6e9ef';
    g.fillStyle = '#5b6475';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    const yCount = Math.max(2, Math.floor(plotH / 34));
    let yTicks = logY ? logTicks(b.yMin, b.yMax) : linearTicks(b.yMin, b.yMax, yCount);
    // A log axis too short for two of 1, 2 and 5 times a power of ten gets round values instead.
    if (logY && yTicks.length < 2) yTicks = linearTicks(b.yMin, b.yMax, yCount).filter((t) => t > 0);
    for (const t of yTicks) {
      const y = Math.round(py(t)) + 0.5;
      g.beginPath(); g.moveTo(PAD.left, y); g.lineTo(PAD.left + plotW, y); g.stroke();
      g.fillText(formatNumber(t), PAD.left - 6, y);
    }
    g.textAlign = 'center';
    g.textBaseline = 'top';
    const xTicks = linearTicks(b.xMin, b.xMax, Math.max(2, Math.floor(plotW / 80)))
      .filter((t) => Number.isInteger(t) || b.xMax - b.xMin < 10);
    for (const t of xTicks) {
      const x = Math.round(px(t)) + 0.5;
      g.beginPath(); g.moveTo(x, PAD.top); g.lineTo(x, PAD.top + plotH); g.stroke();
      g.fillText(formatNumber(t), x, PAD.top + plotH + 6);
    }
    g.strokeStyle = '#aab2c0';
    g.strokeRect(PAD.left + 0.5, PAD.top + 0.5, plotW, plotH);
    g.textAlign = 'right';
    g.fillStyle = '#8a94a6';
    g.fillText(this.options.xLabel || 'step', PAD.left + plotW, PAD.top + plotH + 16);

    // The lines, clipped to the plot area; a series with few points also gets markers.
    g.save();
    g.beginPath();
    g.rect(PAD.left, PAD.top, plotW, plotH);
    g.clip();
    for (const s of shown) {
      g.strokeStyle = s.color;
      g.fillStyle = s.color;
      g.lineWidth = 1.5;
      g.setLineDash(s.dashed ? [5, 3] : []);
      g.beginPath();
      let drawing = false;
      for (let i = 0; i < s.x.length; i++) {
        const y = s.y[i];
        if (!Number.isFinite(y) || (logY && y <= 0)) { drawing = false; continue; }
        if (drawing) g.lineTo(px(s.x[i]), py(y)); else g.moveTo(px(s.x[i]), py(y));
        drawing = true;
      }
      g.stroke();
      if (s.x.length <= 60) {
        for (let i = 0; i < s.x.length; i++) {
          const y = s.y[i];
          if (!Number.isFinite(y) || (logY && y <= 0)) continue;
          g.beginPath(); g.arc(px(s.x[i]), py(y), 2.2, 0, 2 * Math.PI); g.fill();
        }
      }
    }
    g.setLineDash([]);
    g.restore();
    this.paintHover(g, shown, b, px, py, plotW, plotH, logY);
  }

  /** The crosshair at the pointer and the values of each series at the nearest step. */
  paintHover(g, shown, b, px, py, plotW, plotH, logY) {
    const h = this.hover;
    if (!h || h.x < PAD.left || h.x > PAD.left + plotW || h.y < PAD.top || h.y > PAD.top + plotH) {
      this.readout.hidden = true;
      return;
    }
    const x = b.xMin + ((h.x - PAD.left) / plotW) * (b.xMax - b.xMin);
    const rows = [];
    for (const s of shown) {
      if (s.x.length === 0) continue;
      const i = nearest(s.x, x);
      const y = s.y[i];
      if (!Number.isFinite(y) || (logY && y <= 0)) continue;
      rows.push({ s, x: s.x[i], y });
      g.fillStyle = s.color;
      g.beginPath(); g.arc(px(s.x[i]), py(y), 3.5, 0, 2 * Math.PI); g.fill();
    }
    g.strokeStyle = 'rgba(60, 70, 90, 0.45)';
    g.beginPath(); g.moveTo(Math.round(h.x) + 0.5, PAD.top); g.lineTo(Math.round(h.x) + 0.5, PAD.top + plotH); g.stroke();
    if (rows.length === 0) {
      this.readout.hidden = true;
      return;
    }
    rows.sort((a, c) => c.y - a.y);
    this.readout.replaceChildren();
    const head = document.createElement('div');
    head.className = 'readout-head';
    head.textContent = `${this.options.xLabel || 'step'} ${formatNumber(rows[0].x)}`;
    this.readout.appendChild(head);
    for (const r of rows.slice(0, 12)) {
      const line = document.createElement('div');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.borderColor = r.s.color;
      line.append(swatch, document.createTextNode(`${r.s.label ? r.s.label + ': ' : ''}${formatNumber(r.y)}`));
      this.readout.appendChild(line);
    }
    this.readout.hidden = false;
    const left = h.x + 14 + this.readout.offsetWidth > PAD.left + plotW ? h.x - 14 - this.readout.offsetWidth : h.x + 14;
    this.readout.style.left = `${Math.max(0, left)}px`;
    this.readout.style.top = `${PAD.top + 4}px`;
  }
}
