/**
 * Checks a chart the way a reader sees it: rendered to pixels by a real SVG renderer
 * (librsvg's `rsvg-convert`, Debian's librsvg2-bin) with the real font, not by trusting
 * the coordinates the chart code wrote.
 *
 * - `inkOutsideCanvas`: the chart rendered on a canvas widened by a margin on every side;
 *   any pixel drawn in the margin is something that crossed the chart's edge.
 * - `measureLabels`: every <text> rendered alone, each in a cell of its own around where
 *   the layout expects it (one rsvg-convert run for all of them), gives the box its glyphs
 *   really cover; the layout's own estimate, from the same attributes, sits beside it.
 */
import { spawnSync } from 'node:child_process';
import { PNG } from 'pngjs';
import { textWidth } from '../../lib/svg';

export interface Box {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

export interface Label {
  cls: string;
  text: string;
  value?: number;
  /** Where the chart's layout believes the text lies (advance widths, ascent and descent). */
  estimated: Box;
  /** Where the renderer drew its glyphs; undefined when it drew nothing. */
  ink?: Box;
  /** The ink reached the edge of its measuring cell: the estimate is off by more than the cell's slack. */
  clipped: boolean;
}

export function rsvgAvailable(): string | null {
  const r = spawnSync('rsvg-convert', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? null : 'rsvg-convert is not installed (Debian: librsvg2-bin; .ci/deps.sh installs it)';
}

export function render(svg: string): PNG {
  const r = spawnSync('rsvg-convert', ['--format', 'png'], { input: svg, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`rsvg-convert failed: ${r.stderr?.toString() ?? r.error?.message}`);
  return PNG.sync.read(r.stdout);
}

export function canvasSize(svg: string): { width: number; height: number } {
  const m = /<svg[^>]*\bwidth="(\d+(?:\.\d+)?)"[^>]*\bheight="(\d+(?:\.\d+)?)"/.exec(svg);
  if (!m) throw new Error('no width/height on the root <svg>');
  return { width: Number(m[1]), height: Number(m[2]) };
}

const alpha = (png: PNG, x: number, y: number) => png.data[(y * png.width + x) * 4 + 3]!;

/** Pixels drawn outside the canvas, on a rendering widened by `margin` px on every side. */
export function inkOutsideCanvas(svg: string, margin = 100): { pixels: number; where?: [number, number] } {
  const { width, height } = canvasSize(svg);
  const widened = svg.replace(
    /<svg([^>]*?)\bwidth="[^"]*"([^>]*?)\bheight="[^"]*"([^>]*?)\bviewBox="[^"]*"/,
    `<svg$1width="${width + 2 * margin}"$2height="${height + 2 * margin}"$3viewBox="${-margin} ${-margin} ${width + 2 * margin} ${height + 2 * margin}"`,
  );
  const png = render(widened);
  let pixels = 0;
  let where: [number, number] | undefined;
  for (let y = 0; y < png.height; y++) {
    for (let x = 0; x < png.width; x++) {
      const inside = x >= margin && x < margin + width && y >= margin && y < margin + height;
      if (!inside && alpha(png, x, y) > 0) {
        pixels++;
        where ??= [x - margin, y - margin];
      }
    }
  }
  return { pixels, where };
}

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

interface TextElement {
  source: string;
  cls: string;
  text: string;
  value?: number;
  estimated: Box;
}

/** Every <text> of the chart with the box the layout's width model gives it. */
export function textElements(svg: string): TextElement[] {
  const rootSize = Number(/<svg[^>]*\bfont-size="(\d+(?:\.\d+)?)"/.exec(svg)?.[1] ?? 16);
  const out: TextElement[] = [];
  for (const m of svg.matchAll(/<text\b([^>]*)>([^<]*)<\/text>/g)) {
    const attrs = Object.fromEntries([...m[1]!.matchAll(/([\w-]+)="([^"]*)"/g)].map((a) => [a[1]!, a[2]!]));
    if (attrs.class === undefined) continue;
    const text = m[2]!.replace(/&(\w+);/g, (_, e: string) => ENTITIES[e] ?? '?');
    const size = Number(attrs['font-size'] ?? rootSize);
    const w = textWidth(text, size, attrs['font-weight'] === 'bold');
    const x = Number(attrs.x);
    const y = Number(attrs.y);
    const anchor = attrs['text-anchor'] ?? 'start';
    const x0 = anchor === 'middle' ? x - w / 2 : anchor === 'end' ? x - w : x;
    // DejaVu Sans: ascent 0.928 em, descent 0.236 em.
    const estimated = { x0, x1: x0 + w, y0: y - 0.928 * size, y1: y + 0.236 * size };
    out.push({
      source: m[0],
      cls: attrs.class,
      text,
      value: attrs['data-value'] ? Number(attrs['data-value']) : undefined,
      estimated,
    });
  }
  return out;
}

const SLACK = 40;

/** Renders each label alone and measures its ink, all in one rsvg-convert run. */
export function measureLabels(svg: string): Label[] {
  const font = /<svg[^>]*\bfont-family="([^"]*)"[^>]*\bfont-size="([^"]*)"/.exec(svg);
  const texts = textElements(svg);
  const cells = texts.map((t) => ({
    w: Math.ceil(t.estimated.x1 - t.estimated.x0) + 2 * SLACK,
    h: Math.ceil(t.estimated.y1 - t.estimated.y0) + 2 * SLACK,
    ox: Math.floor(t.estimated.x0) - SLACK,
    oy: Math.floor(t.estimated.y0) - SLACK,
  }));
  const width = cells.reduce((w, c) => Math.max(w, c.w), 1);
  let top = 0;
  const tops = cells.map((c) => ((top += c.h), top - c.h));
  const body = texts.map(
    (t, i) =>
      `<svg x="0" y="${tops[i]}" width="${cells[i]!.w}" height="${cells[i]!.h}" viewBox="${cells[i]!.ox} ${cells[i]!.oy} ${cells[i]!.w} ${cells[i]!.h}" overflow="hidden">${t.source}</svg>`,
  );
  const sheet = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${Math.max(top, 1)}" font-family="${font?.[1] ?? 'sans-serif'}" font-size="${font?.[2] ?? 12}">${body.join('')}</svg>`;
  const png = render(sheet);
  return texts.map((t, i) => {
    const c = cells[i]!;
    let ink: Box | undefined;
    let clipped = false;
    for (let y = 0; y < c.h; y++) {
      for (let x = 0; x < c.w; x++) {
        if (alpha(png, x, tops[i]! + y) < 64) continue;
        if (x === 0 || y === 0 || x === c.w - 1 || y === c.h - 1) clipped = true;
        const bx = c.ox + x;
        const by = c.oy + y;
        ink = ink
          ? {
              x0: Math.min(ink.x0, bx),
              y0: Math.min(ink.y0, by),
              x1: Math.max(ink.x1, bx + 1),
              y1: Math.max(ink.y1, by + 1),
            }
          : { x0: bx, y0: by, x1: bx + 1, y1: by + 1 };
      }
    }
    return { cls: t.cls, text: t.text, value: t.value, estimated: t.estimated, ink, clipped };
  });
}

export const overlaps = (a: Box, b: Box) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;

export const contains = (outer: Box, inner: Box, slack = 0) =>
  inner.x0 >= outer.x0 - slack &&
  inner.x1 <= outer.x1 + slack &&
  inner.y0 >= outer.y0 - slack &&
  inner.y1 <= outer.y1 + slack;

/**
 * Everything a reader needs from a chart's text, as a list of problems (empty when
 * fine): each label drawn, inside the canvas, within the box the layout reserved for it
 * (so the layout's width model is no smaller than the real font), and clear of every
 * other label.
 */
export function labelProblems(svg: string): string[] {
  const { width, height } = canvasSize(svg);
  const canvas = { x0: 0, y0: 0, x1: width, y1: height };
  const labels = measureLabels(svg);
  const problems: string[] = [];
  const name = (l: Label) => `${l.cls} "${l.text}"`;
  for (const l of labels) {
    if (l.ink === undefined) problems.push(`${name(l)} draws nothing`);
    else if (l.clipped) problems.push(`${name(l)} spills far outside its estimated box`);
    else if (!contains(canvas, l.ink)) problems.push(`${name(l)} crosses the canvas edge: ${JSON.stringify(l.ink)}`);
    else if (!contains(l.estimated, l.ink, 1))
      problems.push(
        `${name(l)} is wider than the layout thinks: ink ${JSON.stringify(l.ink)} vs ${JSON.stringify(l.estimated)}`,
      );
  }
  for (let i = 0; i < labels.length; i++) {
    for (let j = i + 1; j < labels.length; j++) {
      const a = labels[i]!;
      const b = labels[j]!;
      if (a.ink && b.ink && overlaps(a.ink, b.ink)) problems.push(`${name(a)} overlaps ${name(b)}`);
    }
  }
  const outside = inkOutsideCanvas(svg);
  if (outside.pixels > 0)
    problems.push(`${outside.pixels} pixels drawn outside the canvas, first at ${outside.where!.join(',')}`);
  return problems;
}
