/**
 * A small, dependency-free SVG chart engine for the charts node-ksm draws (`node-ksm
 * bench --svg`, `node-ksm watch --svg`, the VM bench): stacked panels over one shared
 * time axis, ticks a reader trusts (1-2-5 ladders, binary steps for bytes, round clock
 * times, log time), light gridlines, units once per axis, and a legend laid out from the
 * measured width of its text so that it always fits.
 *
 * Hand-written on purpose: the libraries that draw SVG without a browser (vega, vega-lite)
 * install tens of MB and are ES-module-only while this package is CommonJS, d3-scale is
 * ES-module-only too, and none of them has ticks on binary byte steps. What the charts
 * need is here in a few hundred lines, and every label's place is computed, not guessed.
 *
 * Text widths come from the advance widths of DejaVu Sans (the font asked for first, and
 * the one Debian's SVG renderer falls back to), so the layout knows how wide a label is.
 */

/** Okabe–Ito: eight colours told apart with every common colour-vision deficiency (yellow last: faint on white). */
export const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#000000', '#F0E442'];

export const FONT_FAMILY = "'DejaVu Sans', Verdana, sans-serif";

// Advance widths of DejaVu Sans (regular and bold) for ASCII 32..126, in thousandths of
// an em, read from the font's hmtx table.
const REGULAR =
  '318,401,460,838,636,950,780,275,390,390,500,838,318,361,318,337,636,636,636,636,636,636,636,636,636,636,337,337,838,838,838,531,1000,684,686,698,770,632,575,775,752,295,295,656,557,863,748,787,603,787,695,635,611,732,684,989,685,611,685,390,337,390,838,500,500,613,635,550,635,615,352,635,634,278,278,579,278,974,634,612,635,635,411,521,392,634,592,818,592,592,525,636,337,636,838';
const BOLD =
  '348,456,521,838,696,1002,872,306,457,457,523,838,380,415,380,365,696,696,696,696,696,696,696,696,696,696,400,400,838,838,838,580,1000,774,762,734,830,683,683,821,837,372,372,775,637,995,837,850,733,850,770,720,682,812,774,1103,771,724,725,457,365,457,838,500,500,675,716,593,716,678,435,716,712,343,343,665,343,1042,712,687,716,716,493,595,478,712,652,924,645,652,582,712,365,712,838';
const ADVANCE = { regular: REGULAR.split(',').map(Number), bold: BOLD.split(',').map(Number) };
const OTHER: Record<string, number> = {
  '×': 838,
  '–': 500,
  '—': 1000,
  '·': 318,
  '…': 1000,
  µ: 636,
  '°': 500,
  '●': 873,
};

/** The width of `text` set in DejaVu Sans at `size` px (an upper bound: kerning only narrows it). */
export function textWidth(text: string, size: number, bold = false): number {
  const table = bold ? ADVANCE.bold : ADVANCE.regular;
  let em = 0;
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    em += (code >= 32 && code <= 126 ? table[code - 32]! : (OTHER[ch] ?? 1000)) / 1000;
  }
  return em * size;
}

// ---------------------------------------------------------------------------------------
// Ticks

export interface Ticks {
  /** The axis range: the data range widened to round values. */
  min: number;
  max: number;
  /** Positions of the labelled ticks, in data units. */
  values: number[];
  labels: string[];
  /** Extra gridlines without labels (the 2 and 5 of a log decade whose labels would crowd). */
  minor?: number[];
  /** Unit of every label, said once in the axis title. */
  unit: string;
  scale: 'linear' | 'log';
}

const trim = (v: number) => String(+v.toPrecision(12));

/** The smallest step of the 1-2-5 ladder that covers `span` in at most `intervals` steps. */
export function niceStep(span: number, intervals: number): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  let step = 10 ** Math.floor(Math.log10(span / intervals));
  for (;;) {
    for (const m of [1, 2, 5]) if (span / (step * m) <= intervals + 1e-9) return step * m;
    step *= 10;
  }
}

/** Ticks from `min` to `max` on the 1-2-5 ladder; the range is widened to whole steps. */
export function linearTicks(min: number, max: number, intervals = 5, unit = ''): Ticks {
  if (!(max > min)) max = min + 1;
  const step = niceStep(max - min, intervals);
  const lo = Math.floor(min / step + 1e-9) * step;
  const hi = Math.ceil(max / step - 1e-9) * step;
  const values: number[] = [];
  for (let i = 0; lo + i * step <= hi + step * 1e-9; i++) values.push(+(lo + i * step).toPrecision(12));
  return { min: lo, max: hi, values, labels: values.map(trim), unit, scale: 'linear' };
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/**
 * Ticks from 0 to at least `max` bytes on binary steps (a power of two: 32 MiB, 64 MiB,
 * 128 MiB...), labelled in the largest unit a step is at least a quarter of, so a label
 * has at most two decimals (0.25 MiB).
 */
export function byteTicks(max: number, intervals = 5): Ticks {
  const top = Math.max(max, 1024);
  let step = 1;
  while (top / step > intervals + 1e-9) step *= 2;
  let u = 0;
  while (u < BYTE_UNITS.length - 1 && step >= 1024 ** (u + 1) / 4) u++;
  const div = 1024 ** u;
  const hi = Math.ceil(top / step - 1e-9) * step;
  const values: number[] = [];
  for (let v = 0; v <= hi; v += step) values.push(v);
  return { min: 0, max: hi, values, labels: values.map((v) => trim(v / div)), unit: BYTE_UNITS[u]!, scale: 'linear' };
}

/** A round value no larger than `v` on the 1-2-5 ladder (for the ends of a log axis). */
function ladderFloor(v: number): number {
  const d = 10 ** Math.floor(Math.log10(v));
  return [5, 2, 1].map((m) => m * d).find((x) => x <= v * (1 + 1e-9)) ?? d;
}
function ladderCeil(v: number): number {
  const d = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * d).find((x) => x >= v * (1 - 1e-9)) ?? 10 * d;
}

/**
 * Log-axis ticks from `min` to `max` (both > 0): 1, 2 and 5 of each decade when their
 * labels fit in `widthPx` (labels `fontSize` px apart by at least a gap), else only the
 * powers of ten labelled and the 2s and 5s as unlabelled gridlines.
 */
export function logTicks(min: number, max: number, widthPx: number, fontSize = 12, unit = ''): Ticks {
  const lo = ladderFloor(Math.max(min, 1e-9));
  const hi = ladderCeil(Math.max(max, lo * 10));
  const all: number[] = [];
  for (let d = 10 ** Math.floor(Math.log10(lo)); d <= hi * (1 + 1e-9); d *= 10) {
    for (const m of [1, 2, 5]) {
      const v = +(m * d).toPrecision(12);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) all.push(v);
    }
  }
  const px = (v: number) => ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * widthPx;
  const fits = (vs: number[]) =>
    vs.every(
      (v, i) =>
        i === 0 ||
        px(v) - px(vs[i - 1]!) >= (textWidth(trim(v), fontSize) + textWidth(trim(vs[i - 1]!), fontSize)) / 2 + 8,
    );
  const decades = all.filter((v) => Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9);
  const values = fits(all) || decades.length < 2 ? all : decades;
  const minor = values === all ? [] : all.filter((v) => !values.includes(v));
  return { min: lo, max: hi, values, labels: values.map(trim), minor, unit, scale: 'log' };
}

/** Steps a clock axis may take, in seconds: each divides the next unit of the clock. */
const CLOCK_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400];

const pad2 = (n: number) => String(n).padStart(2, '0');
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function clockLabel(ms: number, stepS: number, withDate: boolean): string {
  const d = new Date(ms);
  const time =
    stepS < 60
      ? `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`
      : `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  if (stepS >= 86_400) return `${MONTHS[d.getMonth()]} ${d.getDate()}`;
  return withDate ? `${MONTHS[d.getMonth()]} ${d.getDate()} ${time}` : time;
}

/**
 * Clock-time ticks between two instants (ms since the epoch), at round local times
 * (every 10 s, 5 min, 1 h...: the finest step whose labels fit in `widthPx`). The first
 * tick, and the first of each new day, carry the date when the axis spans days.
 */
export function clockTicks(startMs: number, endMs: number, widthPx: number, fontSize = 12): Ticks {
  if (!(endMs > startMs)) endMs = startMs + 1000;
  const multiDay = new Date(startMs).toDateString() !== new Date(endMs).toDateString();
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  for (const stepS of [...CLOCK_STEPS, 2 * 86_400, 7 * 86_400]) {
    const stepMs = stepS * 1000;
    // Round in local time: the offset is the zone's at the start of the axis.
    const offset = -new Date(startMs).getTimezoneOffset() * 60_000;
    const values: number[] = [];
    for (let v = Math.ceil((startMs + offset) / stepMs) * stepMs - offset; v <= endMs; v += stepMs) values.push(v);
    if (values.length > 10) continue;
    const labels = values.map((v, i) => {
      const newDay = i === 0 || new Date(v).toDateString() !== new Date(values[i - 1]!).toDateString();
      return clockLabel(v, stepS, multiDay && newDay);
    });
    const gap = (widthPx * stepMs) / (endMs - startMs);
    const widest = labels.reduce((w, l) => Math.max(w, textWidth(l, fontSize)), 0);
    if (gap >= widest + 12) return { min: startMs, max: endMs, values, labels, unit: zone, scale: 'linear' };
  }
  return { min: startMs, max: endMs, values: [], labels: [], unit: zone, scale: 'linear' };
}

// ---------------------------------------------------------------------------------------
// Reducing points to what a pixel can show

export type Point = readonly [x: number, y: number];

/**
 * Keeps, for each pixel column, the first, lowest, highest and last point (M4): the
 * polyline drawn from the result is the one drawn from all points, in at most four
 * points per column. `toPx` maps x to pixels; points must be in x order.
 */
export function decimate(points: readonly Point[], toPx: (x: number) => number): Point[] {
  const out: Point[] = [];
  let i = 0;
  while (i < points.length) {
    const col = Math.floor(toPx(points[i]![0]));
    const first = points[i]!;
    let lo = first;
    let hi = first;
    let last = first;
    for (i++; i < points.length && Math.floor(toPx(points[i]![0])) === col; i++) {
      last = points[i]!;
      if (last[1] < lo[1]) lo = last;
      if (last[1] > hi[1]) hi = last;
    }
    const keep = [first, lo, hi, last].sort((a, b) => a[0] - b[0]);
    for (const p of keep) if (out[out.length - 1] !== p) out.push(p);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The chart

export interface ChartLine {
  /** Index into the chart's legend: gives the colour and the name. */
  key: number;
  points: readonly Point[];
  /** Draws horizontal steps (a value that holds until the next point), for rates and means. */
  step?: boolean;
  /** Points to mark with a dot (e.g. "95 % merged here"). */
  markers?: readonly Point[];
}

export interface ChartBand {
  key: number;
  /** [x, low, high] in x order: a shaded range (e.g. min–max within each interval). */
  points: ReadonlyArray<readonly [number, number, number]>;
}

export interface ChartPanel {
  /** What the panel shows; the y unit is appended ("Saved memory, MiB"). */
  title: string;
  /** A short note after the title, in lighter type (e.g. what a marker means). */
  note?: string;
  y: { kind: 'bytes' } | { kind: 'linear'; unit: string; min?: number; max?: number };
  lines: readonly ChartLine[];
  bands?: readonly ChartBand[];
  /** Plot height in px (default 200). */
  height?: number;
}

export interface ChartAxis {
  kind: 'seconds' | 'log-seconds' | 'clock';
  /** For clock: ms since the epoch; otherwise seconds. */
  min: number;
  max: number;
  /** The axis title; the unit (and "log scale") is appended in parentheses. */
  title: string;
}

export interface ChartLegendEntry {
  label: string;
  color?: string;
}

export interface ChartSpec {
  title: string;
  subtitle?: string;
  legend: readonly ChartLegendEntry[];
  panels: readonly ChartPanel[];
  x: ChartAxis;
  /** Canvas width in px (default 960). */
  width?: number;
}

export function escapeXml(text: string): string {
  return text.replace(
    /[<>&"']/g,
    (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!,
  );
}

const f1 = (v: number) => (Number.isFinite(v) ? String(Math.round(v * 10) / 10) : '0');

const SIZE = { title: 16, subtitle: 12, label: 12, legendRow: 20, panelTitle: 18, panelGap: 22 };
const COLORS = { text: '#222', muted: '#555', grid: '#e6e6e6', axis: '#888' };

interface Text {
  x: number;
  y: number;
  text: string;
  size?: number;
  anchor?: 'start' | 'middle' | 'end';
  bold?: boolean;
  fill?: string;
  cls: string;
  extra?: string;
}

function text(t: Text): string {
  const size = t.size ?? SIZE.label;
  return (
    `<text class="${t.cls}" x="${f1(t.x)}" y="${f1(t.y)}"` +
    (size !== SIZE.label ? ` font-size="${size}"` : '') +
    (t.anchor && t.anchor !== 'start' ? ` text-anchor="${t.anchor}"` : '') +
    (t.bold ? ' font-weight="bold"' : '') +
    ` fill="${t.fill ?? COLORS.text}"${t.extra ?? ''}>${escapeXml(t.text)}</text>`
  );
}

/** Shortens `label` with an ellipsis until it fits in `width` px. */
function fitText(label: string, width: number, size: number): string {
  if (textWidth(label, size) <= width) return label;
  const chars = [...label];
  while (chars.length > 1 && textWidth(`${chars.join('')}…`, size) > width) chars.pop();
  return `${chars.join('')}…`;
}

interface LegendLayout {
  svg: string[];
  height: number;
}

/** Legend entries left to right, wrapping to a new row before one would cross `right`. */
function layoutLegend(entries: readonly ChartLegendEntry[], left: number, right: number, top: number): LegendLayout {
  const svg: string[] = ['<g class="legend">'];
  const swatch = 22;
  let x = left;
  let row = 0;
  entries.forEach((e, i) => {
    const color = e.color ?? PALETTE[i % PALETTE.length]!;
    const label = fitText(e.label, right - left - swatch - 6, SIZE.label);
    const w = swatch + 6 + textWidth(label, SIZE.label);
    if (x > left && x + w > right) {
      x = left;
      row++;
    }
    const y = top + row * SIZE.legendRow;
    svg.push(
      `<g class="legend-item" data-key="${i}"><line x1="${f1(x)}" y1="${f1(y - 4)}" x2="${f1(x + swatch)}" y2="${f1(y - 4)}" stroke="${color}" stroke-width="3"/>`,
      text({ x: x + swatch + 6, y, text: label, cls: 'legend-label' }) + '</g>',
    );
    x += w + 18;
  });
  svg.push('</g>');
  return { svg, height: entries.length === 0 ? 0 : (row + 1) * SIZE.legendRow };
}

interface Frame {
  left: number;
  right: number;
  xTicks: Ticks;
  px: (x: number) => number;
}

function xTicksFor(axis: ChartAxis, widthPx: number): Ticks {
  if (axis.kind === 'clock') return clockTicks(axis.min, axis.max, widthPx);
  if (axis.kind === 'log-seconds') return logTicks(axis.min, axis.max, widthPx, SIZE.label, 's');
  const intervals = Math.max(2, Math.floor(widthPx / 70));
  return linearTicks(axis.min, axis.max, intervals, 's');
}

function xScale(ticks: Ticks, left: number, right: number): (x: number) => number {
  if (ticks.scale === 'log') {
    const a = Math.log10(ticks.min);
    const b = Math.log10(ticks.max);
    return (x) => left + ((Math.log10(Math.max(x, ticks.min)) - a) / (b - a)) * (right - left);
  }
  return (x) => left + ((x - ticks.min) / (ticks.max - ticks.min || 1)) * (right - left);
}

function yTicksFor(panel: ChartPanel, height: number): Ticks {
  let lo = Infinity;
  let hi = -Infinity;
  const see = (v: number) => {
    if (!Number.isFinite(v)) return;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  };
  for (const l of panel.lines) for (const p of l.points) see(p[1]);
  for (const b of panel.bands ?? []) for (const p of b.points) see(p[2]);
  const intervals = Math.max(2, Math.min(6, Math.floor(height / 32)));
  if (panel.y.kind === 'bytes') return byteTicks(Number.isFinite(hi) ? hi : 0, intervals);
  const min = panel.y.min ?? Math.min(0, Number.isFinite(lo) ? lo : 0);
  const max = Math.max(panel.y.max ?? -Infinity, Number.isFinite(hi) ? hi : 1, min + 1e-9);
  return linearTicks(min, max, intervals, panel.y.unit);
}

function polyline(points: readonly Point[], key: number, color: string, step: boolean): string {
  const parts: string[] = [];
  points.forEach(([x, y], i) => {
    if (step && i > 0) parts.push(`${f1(x)},${f1(points[i - 1]![1])}`);
    parts.push(`${f1(x)},${f1(y)}`);
  });
  return `<polyline class="series" data-key="${key}" fill="none" stroke="${color}" stroke-width="2" stroke-linejoin="round" points="${parts.join(' ')}"/>`;
}

/** Light gridlines at every tick of both axes, and the axis lines. */
function gridlines(frame: Frame, yTicks: Ticks, py: (v: number) => number, top: number, bottom: number): string[] {
  const out = [`<g class="grid" stroke="${COLORS.grid}" stroke-width="1">`];
  for (const v of yTicks.values)
    out.push(`<line x1="${f1(frame.left)}" x2="${f1(frame.right)}" y1="${f1(py(v))}" y2="${f1(py(v))}"/>`);
  for (const v of [...frame.xTicks.values, ...(frame.xTicks.minor ?? [])])
    out.push(`<line x1="${f1(frame.px(v))}" x2="${f1(frame.px(v))}" y1="${f1(top)}" y2="${f1(bottom)}"/>`);
  out.push(
    '</g>',
    `<path d="M${f1(frame.left)},${f1(top)}V${f1(bottom)}H${f1(frame.right)}" fill="none" stroke="${COLORS.axis}"/>`,
  );
  return out;
}

function band(b: ChartBand, color: string, px: (x: number) => number, py: (v: number) => number): string {
  if (b.points.length === 0) return '';
  const upper = b.points.map(([x, , hi]) => `${f1(px(x))},${f1(py(hi))}`);
  const lower = b.points.map(([x, lo]) => `${f1(px(x))},${f1(py(lo))}`).reverse();
  return `<polygon class="band" data-key="${b.key}" fill="${color}" fill-opacity="0.18" stroke="none" points="${[...upper, ...lower].join(' ')}"/>`;
}

/** One panel: its title, gridlines, y ticks, bands, lines and markers, from `top` down. */
function renderPanel(panel: ChartPanel, spec: ChartSpec, frame: Frame, top: number, yTicks: Ticks): string[] {
  const height = panel.height ?? 200;
  const plotTop = top + SIZE.panelTitle;
  const bottom = plotTop + height;
  const py = (v: number) => bottom - ((v - yTicks.min) / (yTicks.max - yTicks.min || 1)) * height;
  const clampX = (x: number) => Math.min(frame.right, Math.max(frame.left, frame.px(x)));
  const clampY = (v: number) => Math.min(bottom, Math.max(plotTop, py(v)));
  const unit = yTicks.unit ? `, ${yTicks.unit}` : '';
  const out: string[] = [
    `<g class="panel">`,
    text({ x: frame.left, y: top + 12, text: `${panel.title}${unit}`, bold: true, cls: 'panel-title' }),
  ];
  if (panel.note !== undefined) {
    const at = frame.left + textWidth(`${panel.title}${unit}`, SIZE.label, true) + 12;
    out.push(
      text({
        x: at,
        y: top + 12,
        text: fitText(panel.note, frame.right - at, SIZE.label),
        fill: COLORS.muted,
        cls: 'panel-note',
      }),
    );
  }
  out.push(...gridlines(frame, yTicks, py, plotTop, bottom));
  yTicks.values.forEach((v, i) =>
    out.push(
      text({
        x: frame.left - 8,
        y: py(v) + 4,
        text: yTicks.labels[i]!,
        anchor: 'end',
        fill: COLORS.muted,
        cls: 'y-tick',
        extra: ` data-value="${v}"`,
      }),
    ),
  );
  const color = (key: number) => spec.legend[key]?.color ?? PALETTE[key % PALETTE.length]!;
  for (const b of panel.bands ?? []) out.push(band(b, color(b.key), clampX, clampY));
  for (const l of panel.lines) {
    const onScreen = decimate(l.points, frame.px).map(([x, y]) => [clampX(x), clampY(y)] as const);
    out.push(polyline(onScreen, l.key, color(l.key), l.step === true));
    for (const [x, y] of l.markers ?? [])
      out.push(
        `<circle class="marker" data-key="${l.key}" cx="${f1(clampX(x))}" cy="${f1(clampY(y))}" r="4.5" fill="${color(l.key)}" stroke="white" stroke-width="1.5"/>`,
      );
  }
  out.push('</g>');
  return out;
}

/** The x tick labels under the last panel, kept inside the canvas at both ends. */
function renderXAxis(spec: ChartSpec, frame: Frame, top: number, width: number): string[] {
  const out: string[] = [];
  frame.xTicks.values.forEach((v, i) => {
    const label = frame.xTicks.labels[i]!;
    const x = frame.px(v);
    const half = textWidth(label, SIZE.label) / 2;
    const anchor = x - half < 4 ? 'start' : x + half > width - 4 ? 'end' : 'middle';
    const at = anchor === 'start' ? Math.max(4, x - half) : anchor === 'end' ? Math.min(width - 4, x + half) : x;
    out.push(
      text({ x: at, y: top + 16, text: label, anchor, fill: COLORS.muted, cls: 'x-tick', extra: ` data-value="${v}"` }),
    );
  });
  const unit = [frame.xTicks.unit, frame.xTicks.scale === 'log' ? 'log scale' : ''].filter(Boolean).join(', ');
  out.push(
    text({
      x: (frame.left + frame.right) / 2,
      y: top + 38,
      text: fitText(`${spec.x.title}${unit ? ` (${unit})` : ''}`, width - 8, SIZE.label),
      anchor: 'middle',
      cls: 'x-title',
    }),
  );
  return out;
}

/** Renders the chart; the canvas grows downwards to hold the legend's rows and the panels. */
export function renderChart(spec: ChartSpec): string {
  const width = spec.width ?? 960;
  const guessTicks = spec.panels.map((p) => yTicksFor(p, p.height ?? 200));
  const widest = guessTicks.reduce(
    (w, t) => t.labels.reduce((m, l) => Math.max(m, textWidth(l, SIZE.label)), w),
    textWidth('0', SIZE.label),
  );
  const left = Math.ceil(widest) + 16;
  const right = width - 24;
  const xTicks = xTicksFor(spec.x, right - left);
  const frame: Frame = { left, right, xTicks, px: xScale(xTicks, left, right) };
  const out: string[] = [
    text({
      x: 12,
      y: 24,
      text: fitText(spec.title, width - 24, SIZE.title),
      size: SIZE.title,
      bold: true,
      cls: 'title',
    }),
  ];
  let y = 30;
  if (spec.subtitle !== undefined) {
    out.push(
      text({
        x: 12,
        y: y + 16,
        text: fitText(spec.subtitle, width - 24, SIZE.subtitle),
        fill: COLORS.muted,
        cls: 'subtitle',
      }),
    );
    y += 20;
  }
  const legend = layoutLegend(spec.legend, 12, width - 12, y + 22);
  out.push(...legend.svg);
  y += legend.height + 14;
  spec.panels.forEach((panel, i) => {
    out.push(...renderPanel(panel, spec, frame, y, guessTicks[i]!));
    y += SIZE.panelTitle + (panel.height ?? 200) + SIZE.panelGap;
  });
  out.push(...renderXAxis(spec, frame, y - SIZE.panelGap, width));
  const height = Math.ceil(y - SIZE.panelGap + 50);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="${FONT_FAMILY}" font-size="${SIZE.label}">`,
    `<title>${escapeXml(spec.title)}</title>`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}
