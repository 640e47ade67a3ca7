/**
 * A small, dependency-free SVG line chart: a time axis and up to two value axes (left and
 * right), one <polyline> per series with one point per sample. Enough for the time series
 * `node-ksm watch --svg` writes; the charting libraries on npm need a DOM or a browser.
 */

export interface ChartSeries {
  name: string;
  values: number[];
  color: string;
  /** Which value axis the series is drawn against. */
  axis?: 'left' | 'right';
  /** Formats the axis labels (default: the number). */
  format?: (v: number) => string;
  /** Lower/upper bound of the axis (default: 0 and the largest value). */
  min?: number;
  max?: number;
}

export interface LineChart {
  title: string;
  /** The x value of each sample, in seconds (same length as every series' values). */
  x: number[];
  series: ChartSeries[];
  width?: number;
  height?: number;
}

function escapeXml(text: string): string {
  return text.replace(
    /[<>&"']/g,
    (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!,
  );
}

const num = (v: number) => (Number.isFinite(v) ? +v.toFixed(2) : 0);

/** The chart as SVG text: a frame, a time axis, a value axis per side, one line per series. */
export function lineChart(chart: LineChart): string {
  const width = chart.width ?? 800;
  const height = chart.height ?? 400;
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const x0 = chart.x[0] ?? 0;
  const xSpan = Math.max((chart.x[chart.x.length - 1] ?? 0) - x0, 1e-9);
  const px = (x: number) => PAD.left + ((x - x0) / xSpan) * plotW;
  const axes = valueAxes(chart.series);
  const py = (side: Side, v: number) => {
    const a = axes.get(side)!;
    const span = a.max - a.min || 1;
    return PAD.top + plotH - ((Math.min(Math.max(v, a.min), a.max) - a.min) / span) * plotH;
  };

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<title>${escapeXml(chart.title)}</title>`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${escapeXml(chart.title)}</text>`,
    `<g stroke="#999" fill="none"><rect x="${PAD.left}" y="${PAD.top}" width="${plotW}" height="${plotH}"/></g>`,
  ];
  // Time axis: five ticks across the run.
  for (let i = 0; i <= 4; i++) {
    const t = x0 + (xSpan * i) / 4;
    out.push(`<text x="${num(px(t))}" y="${PAD.top + plotH + 18}" text-anchor="middle">${num(t)} s</text>`);
  }
  out.push(`<text x="${PAD.left + plotW / 2}" y="${height - 10}" text-anchor="middle">time</text>`);
  for (const [side, a] of axes) {
    const x = side === 'left' ? PAD.left - 6 : PAD.left + plotW + 6;
    const anchor = side === 'left' ? 'end' : 'start';
    for (let i = 0; i <= 4; i++) {
      const v = a.min + ((a.max - a.min) * i) / 4;
      out.push(
        `<text x="${x}" y="${num(py(side, v) + 4)}" text-anchor="${anchor}" fill="${a.color}">${escapeXml(a.format(v))}</text>`,
      );
    }
  }
  chart.series.forEach((s, i) => {
    const side = s.axis ?? 'left';
    const points = s.values
      .map((v, j) => `${num(px(chart.x[j] ?? x0))},${num(py(side, Number.isFinite(v) ? v : 0))}`)
      .join(' ');
    out.push(
      `<polyline data-series="${escapeXml(s.name)}" fill="none" stroke="${s.color}" stroke-width="2" points="${points}"/>`,
      `<text x="${PAD.left + 10 + i * 220}" y="${PAD.top - 8}" fill="${s.color}">${escapeXml(s.name)} (${side} axis)</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

const PAD = { left: 80, right: 80, top: 40, bottom: 50 };
type Side = 'left' | 'right';
interface Axis {
  min: number;
  max: number;
  format: (v: number) => string;
  color: string;
}

/** Each side's range (covering every series drawn against it), label format and colour. */
function valueAxes(series: LineChart['series']): Map<Side, Axis> {
  const axes = new Map<Side, Axis>();
  for (const s of series) {
    const side = s.axis ?? 'left';
    const finite = s.values.filter(Number.isFinite);
    const prev = axes.get(side);
    const min = s.min ?? Math.min(0, ...finite);
    const max = s.max ?? Math.max(min + 1e-9, ...finite);
    axes.set(side, {
      min: Math.min(prev?.min ?? min, min),
      max: Math.max(prev?.max ?? max, max),
      format: prev?.format ?? s.format ?? ((v) => String(num(v))),
      color: prev?.color ?? s.color,
    });
  }
  return axes;
}
