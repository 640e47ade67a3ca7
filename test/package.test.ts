/**
 * The package as users get it. The tarball is NODE_KSM_TARBALL when set (CI: the release
 * tarball `npm pack` made, prebuilds and all, through scripts/test-tarball.sh), else the
 * work tree packed without scripts (dist/ as built, prebuilds/ if scripts/prebuild.sh ran).
 * It holds exactly what builds from source, the compiled library and the prebuilds;
 * publint and attw find nothing; a consumer project installs it (from the npm cache, as
 * offline as npm allows) and both `import` and `require` work and type-check; with no
 * prebuild that matches (node-gyp-build told the C library is musl) npm builds it from
 * source, and where it cannot, install and import say what to install. With the platform
 * forced to one without KSM everything still loads and says why. Nothing here touches
 * /sys/kernel/mm/ksm.
 */
import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { skipTest } from './helpers/skips';
import type { Support } from '../lib/support';

const root = path.join(__dirname, '..');
const tsc = path.join(root, 'node_modules/typescript/bin/tsc');
const attw = path.join(root, 'node_modules/@arethetypeswrong/cli/dist/index.js');
const hostPrebuild = `prebuilds/${process.platform}-${process.arch}/`;
const INSTALL_TIMEOUT = 300_000;
const RELEASE = process.env.NODE_KSM_TARBALL ? path.resolve(process.env.NODE_KSM_TARBALL) : '';
/** What the release tarball ships; a pack of the work tree has whichever prebuilds were built. */
const RELEASE_PREBUILDS = ['prebuilds/linux-arm64/node-ksm.glibc.node', 'prebuilds/linux-x64/node-ksm.glibc.node'];

// The consumers must load what they installed, not a binary this run was pointed at.
const env: NodeJS.ProcessEnv = { ...process.env };
for (const name of ['NODE_KSM_BINARY', 'NODE_KSM_FORCE_PLATFORM', 'LIBC', 'npm_config_build_from_source'])
  delete env[name];

let tmp = '';
let tarball = '';
let packed: string[] = [];
const installSeconds: Record<string, number> = {};

interface PackageJson {
  bin: Record<string, string>;
  exports: Record<string, string | { types?: string; default: string }>;
  typesVersions: Record<string, Record<string, string[]>>;
}

function run(cmd: string, args: string[], cwd: string, extraEnv: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env: { ...env, ...extraEnv }, encoding: 'utf8', timeout: INSTALL_TIMEOUT });
}

function ok(r: SpawnSyncReturns<string>): string {
  expect(r.error, String(r.error)).toBeUndefined();
  expect(r.signal, `killed by ${r.signal}\n${r.stderr}`).toBeNull();
  expect(r.status, `exit ${r.status}\n${r.stdout}\n${r.stderr}`).toBe(0);
  return r.stdout;
}

function json<T = Record<string, unknown>>(text: string): T {
  return JSON.parse(text) as T;
}

const INSTALL = ['install', '--prefer-offline', '--no-audit', '--no-fund', '--no-package-lock'];

/** A fresh project directory with only a package.json. */
function project(name: string): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, private: true }));
  return dir;
}

/** A fresh project that installs the tarball from the npm cache (the registry only for a miss). */
function consumer(name: string, flags: string[] = [], extraEnv: NodeJS.ProcessEnv = {}): string {
  const dir = project(name);
  const started = Date.now();
  ok(run('npm', [...INSTALL, ...flags, tarball], dir, extraEnv));
  installSeconds[name] = (Date.now() - started) / 1000;
  return dir;
}

/** Which binary node-gyp-build picks in an installed copy (relative to the package). */
function loadedBinary(dir: string, extraEnv: NodeJS.ProcessEnv = {}): string {
  const pkg = path.join(dir, 'node_modules/node-ksm');
  const found = ok(
    run(process.execPath, ['-p', `require('node-gyp-build').path(${JSON.stringify(pkg)})`], dir, extraEnv),
  ).trim();
  return path.relative(pkg, found);
}

function walk(dir: string, base = dir): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? walk(p, base) : [path.relative(base, p)];
  });
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'node-ksm-package-'));
  if (RELEASE) {
    tarball = RELEASE;
  } else {
    // --ignore-scripts: prepack would rebuild the prebuilds and empty dist/ under other
    // test runs; dist/ is built before the tests (npm test's pretest, CI's build:ts).
    const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], {
      cwd: root,
      env,
      encoding: 'utf8',
    });
    tarball = path.join(tmp, json<Array<{ filename: string }>>(out)[0]!.filename);
  }
  packed = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' })
    .split('\n')
    .filter((f) => f && !f.endsWith('/'))
    .map((f) => f.replace(/^package\//, ''))
    .sort();
}, INSTALL_TIMEOUT);

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  if (Object.keys(installSeconds).length > 0) console.log(`npm install times (s): ${JSON.stringify(installSeconds)}`);
});

describe(RELEASE ? `the release tarball ${path.basename(RELEASE)}` : 'npm pack of the work tree', () => {
  it('holds exactly the sources, build files, compiled output and prebuilds', () => {
    const allowed = [
      /^(package\.json|README\.md|LICENSE|CHANGELOG\.md|binding\.gyp|CMakeLists\.txt)$/,
      /^native\/[\w-]+\.(cc|h)$/,
      // TypeScript sources: the source and declaration maps in dist/ point at them.
      /^lib\/([\w-]+\/)*[\w-]+\.ts$/,
      /^dist\/([\w-]+\/)*[\w-]+\.(js|js\.map|d\.ts|d\.ts\.map)$/,
      /^prebuilds\/linux-(x64|arm64)\/node-ksm\.glibc\.node$/,
    ];
    expect(packed.filter((f) => !allowed.some((re) => re.test(f)))).toEqual([]);

    const expected = ['binding.gyp', 'CMakeLists.txt', 'package.json', 'README.md', 'LICENSE', 'CHANGELOG.md'];
    for (const f of fs.readdirSync(path.join(root, 'native'))) if (/\.(cc|h)$/.test(f)) expected.push(`native/${f}`);
    for (const f of walk(path.join(root, 'lib'))) {
      if (!f.endsWith('.ts')) continue;
      const js = f.replace(/\.ts$/, '');
      expected.push(`lib/${f}`, ...['.js', '.js.map', '.d.ts', '.d.ts.map'].map((ext) => `dist/${js}${ext}`));
    }
    if (RELEASE) {
      expected.push(...RELEASE_PREBUILDS);
      // A release is packed after prepack emptied dist/: nothing in it without a source.
      expect(packed.filter((f) => !expected.includes(f))).toEqual([]);
    } else if (fs.existsSync(path.join(root, 'prebuilds'))) {
      expected.push(...walk(path.join(root, 'prebuilds')).map((f) => `prebuilds/${f}`));
    }
    // A missing dist file means dist/ is older than lib/: npm run build:ts.
    expect(expected.filter((f) => !packed.includes(f))).toEqual([]);

    const pkg = json<PackageJson>(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
    for (const bin of Object.values(pkg.bin)) expect(packed).toContain(path.normalize(bin));
  });

  it.runIf(RELEASE)('matches what the README says it holds (file count exactly, sizes within 5 %)', () => {
    // The README's "What the package holds" line: "(0.1.0: 418 kB packed, 1.5 MB unpacked, 187 files;".
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    const m = /\(\d+\.\d+\.\d+: (\d+) kB packed, ([\d.]+) MB unpacked, (\d+) files;/.exec(readme);
    expect(m, 'the README states the package size').not.toBeNull();
    const [, kB, MB, files] = m!;
    const unpacked = execFileSync('tar', ['-xzOf', tarball], { maxBuffer: 64 * 2 ** 20 }).length;
    const sizes = { files: packed.length, packedKB: fs.statSync(tarball).size / 1000, unpackedMB: unpacked / 1e6 };
    expect(Number(files), `README files, actual ${JSON.stringify(sizes)}`).toBe(sizes.files);
    expect(Math.abs(Number(kB) / sizes.packedKB - 1), `README ${kB} kB packed`).toBeLessThan(0.05);
    expect(Math.abs(Number(MB) / sizes.unpackedMB - 1), `README ${MB} MB unpacked`).toBeLessThan(0.05);
  });

  it('gives TypeScript the same types for every subpath under every module resolution', () => {
    // typesVersions is for moduleResolution node10 (TypeScript's default for module
    // commonjs), which ignores "exports": each subpath must name the same .d.ts there.
    const pkg = json<PackageJson>(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
    const fromExports = Object.entries(pkg.exports)
      .filter(([sub, target]) => sub !== '.' && typeof target === 'object' && target.types)
      .map(([sub, target]) => [sub.slice(2), [(target as { types: string }).types]]);
    expect(Object.entries(pkg.typesVersions['*']!).sort()).toEqual(fromExports.sort());
  });

  it('passes publint --strict', async () => {
    const { publint } = await import('publint');
    const { formatMessage } = await import('publint/utils');
    const bytes = fs.readFileSync(tarball);
    const { messages, pkg } = await publint({
      pack: { tarball: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) },
      strict: true,
      level: 'suggestion',
    });
    expect(messages.map((m) => formatMessage(m, pkg) ?? m.code)).toEqual([]);
  });

  it('passes @arethetypeswrong/cli (attw) under node10, node16 (CJS and ESM) and bundler resolution', () => {
    const r = run(process.execPath, [attw, tarball, '--format', 'json'], root);
    const report = json<{ analysis: { problems: unknown[]; entrypoints: Record<string, unknown> } }>(r.stdout);
    expect(report.analysis.problems).toEqual([]);
    const pkg = json<PackageJson>(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
    expect(Object.keys(report.analysis.entrypoints).sort()).toEqual(Object.keys(pkg.exports).sort());
    expect(r.status, r.stderr).toBe(0);
  });
});

describe('a project that installs the tarball', () => {
  let dir = '';
  let prebuilt = false;
  beforeAll(() => {
    prebuilt = packed.some((f) => f.startsWith(hostPrebuild));
    dir = consumer('consumer');
    fs.writeFileSync(
      path.join(dir, 'esm.mjs'),
      `import { alloc, free, support, pageSize, KsmError, Arena } from 'node-ksm';
import ksm from 'node-ksm';
import { withKsm } from 'node-ksm/testing';
import pkg from 'node-ksm/package.json' with { type: 'json' };
${USE}`,
    );
    fs.writeFileSync(
      path.join(dir, 'cjs.cjs'),
      `const { alloc, free, support, pageSize, KsmError, Arena } = require('node-ksm');
const ksm = require('node-ksm');
const { withKsm } = require('node-ksm/testing');
const pkg = require('node-ksm/package.json');
${USE}`,
    );
  }, INSTALL_TIMEOUT);

  it('loads the prebuild for this platform, or the binary it built from source', () => {
    expect(loadedBinary(dir)).toBe(
      prebuilt ? packed.find((f) => f.startsWith(hostPrebuild)) : 'build/Release/ksm.node',
    );
    // With a prebuild, installing compiles nothing.
    expect(fs.existsSync(path.join(dir, 'node_modules/node-ksm/build'))).toBe(!prebuilt);
  });

  for (const [kind, file] of [
    ['import (ESM)', 'esm.mjs'],
    ['require (CommonJS)', 'cjs.cjs'],
  ] as const) {
    it(`works through ${kind}`, () => {
      const out = json(ok(run(process.execPath, [file], dir)));
      expect(out).toMatchObject({
        version: json<{ version: string }>(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version,
        sameModule: true,
        withKsm: 'function',
        Arena: 'function',
      });
      if (out.available) expect(out).toMatchObject({ length: 3 * (out.pageSize as number), freed: true, afterFree: 0 });
      else expect(out).toMatchObject({ allocError: 'ERR_KSM_UNSUPPORTED', isKsmError: true });
      expect(out.mode).toMatch(/^(external|window)$/);
    });
  }

  it('type-checks an ESM (.mts) and a CommonJS (.cts) consumer, and one on moduleResolution node10', () => {
    const use = `
const b: Buffer = alloc(2 * pageSize, { mergeable: true });
const freed: boolean = free(b);
const s: Support = support();
const why: string[] = s.reasons;
const stats: ProcessStats | undefined = s.available ? processStats() : undefined;
export const run = (): Promise<number> => withKsm(async () => 1);
export { freed, why, stats };
// The types are real, not any:
// @ts-expect-error size is a number
alloc('4096');
// @ts-expect-error no such export
void ksm.allocate;
`;
    const imports = `import { alloc, free, support, processStats, pageSize, type Support, type ProcessStats } from 'node-ksm';`;
    fs.writeFileSync(
      path.join(dir, 'typed.mts'),
      `${imports}\nimport * as ksm from 'node-ksm';\nimport { withKsm } from 'node-ksm/testing';${use}`,
    );
    fs.writeFileSync(
      path.join(dir, 'typed.cts'),
      `${imports}\nimport ksm = require('node-ksm');\nimport { withKsm } from 'node-ksm/testing';${use}`,
    );
    fs.writeFileSync(
      path.join(dir, 'typed-node10.ts'),
      `${imports}\nimport ksm = require('node-ksm');\nimport { withKsm } from 'node-ksm/testing';\nimport type { BenchOptions } from 'node-ksm/bench';\nexport type { BenchOptions };${use}`,
    );
    const compilerOptions = {
      target: 'es2022',
      strict: true,
      noEmit: true,
      types: ['node'],
      typeRoots: [path.join(root, 'node_modules/@types')],
    };
    fs.writeFileSync(
      path.join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { ...compilerOptions, module: 'nodenext', moduleResolution: 'nodenext' },
        files: ['typed.mts', 'typed.cts'],
      }),
    );
    fs.writeFileSync(
      path.join(dir, 'tsconfig.node10.json'),
      JSON.stringify({
        // The .d.ts files were checked by the run above: this one is about resolution.
        compilerOptions: {
          ...compilerOptions,
          module: 'commonjs',
          moduleResolution: 'node10',
          esModuleInterop: true,
          skipLibCheck: true,
        },
        files: ['typed-node10.ts'],
      }),
    );
    ok(run(process.execPath, [tsc, '-p', 'tsconfig.json'], dir));
    ok(run(process.execPath, [tsc, '-p', 'tsconfig.node10.json'], dir));
  });

  it('loads and says why where KSM cannot be (platform forced to darwin), through import and require', () => {
    const probe = `
const out = { loaded: true, pageSize: ksm.pageSize, support: ksm.support(), isKsmBuffer: ksm.isKsmBuffer(Buffer.alloc(8)), calls: {} };
const attempts = {
  alloc: () => ksm.alloc(4096), from: () => ksm.from('x'), free: () => ksm.free(Buffer.alloc(8)),
  setMergeable: () => ksm.setMergeable(Buffer.alloc(8), true), markMergeable: () => ksm.markMergeable(Buffer.alloc(8192)),
  setProcessMerging: () => ksm.setProcessMerging(true), processMerging: () => ksm.processMerging(),
  processStats: () => ksm.processStats(), systemStats: () => ksm.systemStats(), bufferStats: () => ksm.bufferStats(Buffer.alloc(8)),
  readSettings: () => ksm.readSettings(), configure: () => ksm.configure({ pagesToScan: 100 }), arena: () => new ksm.Arena(),
  boost: () => ksm.boost(), waitForMerge: () => ksm.waitForMerge(),
};
for (const [name, call] of Object.entries(attempts)) {
  try {
    await call();
    out.calls[name] = 'returned';
  } catch (err) {
    out.calls[name] = (err instanceof ksm.KsmError ? 'KsmError ' : 'other ') + err.code;
  }
}
console.log(JSON.stringify(out));`;
    fs.writeFileSync(path.join(dir, 'darwin.mjs'), `import * as ksm from 'node-ksm';\n${probe}`);
    fs.writeFileSync(path.join(dir, 'darwin.cjs'), `const ksm = require('node-ksm');\n(async () => {${probe}})();`);
    for (const file of ['darwin.mjs', 'darwin.cjs']) {
      const out = JSON.parse(ok(run(process.execPath, [file], dir, { NODE_KSM_FORCE_PLATFORM: 'darwin' }))) as {
        pageSize: number;
        isKsmBuffer: boolean;
        support: Support;
        calls: Record<string, string>;
      };
      expect(out.pageSize).toBe(0);
      expect(out.isKsmBuffer).toBe(false);
      expect(out.support).toMatchObject({ available: false, mode: 'none', running: false, canConfigure: false });
      expect(out.support.reasons.join(' ')).toMatch(/Linux feature; this is darwin/);
      for (const [name, result] of Object.entries(out.calls))
        expect([name, result]).toEqual([name, 'KsmError ERR_KSM_UNSUPPORTED']);
    }
    // The command says so in one line and exits 1, without a stack trace.
    const cli = run(process.execPath, ['node_modules/node-ksm/dist/cli/main.js', 'status'], dir, {
      NODE_KSM_FORCE_PLATFORM: 'darwin',
    });
    expect([cli.status, cli.signal]).toEqual([1, null]);
    expect(cli.stderr + cli.stdout).toMatch(/Linux feature/);
    expect(cli.stderr).not.toMatch(/\n\s+at /);
  });

  it('loads the prebuild when install scripts are not run (npm --ignore-scripts, allowScripts)', (ctx) => {
    if (!prebuilt) skipTest(ctx, `no ${hostPrebuild} in the package: npm run prebuild:x64`);
    const other = consumer('no-scripts', ['--ignore-scripts']);
    expect(loadedBinary(other)).toMatch(new RegExp(`^${hostPrebuild}`));
    ok(run(process.execPath, ['-e', `require('node-ksm').support().mode === 'none' && process.exit(1)`], other));
  });

  // No prebuild matches when node-gyp-build is told the C library is musl (LIBC=musl: the
  // prebuilds are tagged glibc), exactly as on Alpine: the same tarball, nothing removed.
  const MUSL = { LIBC: 'musl' };

  it('builds from source when no prebuild matches, and works', () => {
    const built = consumer('from-source', [], MUSL);
    expect(loadedBinary(built, MUSL)).toBe('build/Release/ksm.node');
    // build/ comes first for node-gyp-build, whatever the C library: so without LIBC too.
    expect(loadedBinary(built)).toBe('build/Release/ksm.node');
    const out = json(
      ok(
        run(
          process.execPath,
          [
            '-e',
            `const k = require('node-ksm'); const b = k.alloc(2 * k.pageSize); b.fill(3);
             const sum = b.reduce((s, x) => s + x, 0);
             console.log(JSON.stringify({ mode: k.support().mode, pageSize: k.pageSize, sum, freed: k.free(b), after: b.length }))`,
          ],
          built,
          MUSL,
        ),
      ),
    );
    expect(out).toEqual({
      mode: 'external',
      pageSize: out.pageSize,
      sum: 3 * 2 * (out.pageSize as number),
      freed: true,
      after: 0,
    });
    expect(out.pageSize).toBeGreaterThan(0);
  });

  it('with neither a prebuild nor a build, still imports and says what to install', () => {
    const none = consumer('nothing-built', ['--ignore-scripts'], MUSL);
    const out = json<{ s: { reasons: string[] }; code: string }>(
      ok(
        run(
          process.execPath,
          [
            '-e',
            `const k = require('node-ksm'); let code; try { k.alloc(1) } catch (e) { code = e.code } console.log(JSON.stringify({ s: k.support(), code }))`,
          ],
          none,
          MUSL,
        ),
      ),
    ) as { s: Support; code: string };
    expect(out.code).toBe('ERR_KSM_UNSUPPORTED');
    expect(out.s).toMatchObject({ available: false, mode: 'none' });
    const reason = out.s.reasons.join(' ');
    expect(reason).toContain('could not be loaded');
    expect(reason).toContain(`this is linux-${process.arch} (musl)`);
    expect(reason).toContain('apk add build-base python3, then run "npm rebuild node-ksm"');
  });

  it('fails to install where nothing fits and nothing can be built, saying what to install', () => {
    // Only node, npm and the sh npm runs scripts with on PATH: no python3, make or
    // compiler for node-gyp.
    const bin = path.join(tmp, 'bin-no-compiler');
    fs.mkdirSync(bin);
    fs.symlinkSync(process.execPath, path.join(bin, 'node'));
    fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
    fs.symlinkSync(
      fs.realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim()),
      path.join(bin, 'npm'),
    );
    const dir = project('install-fails');
    const r = run(path.join(bin, 'npm'), [...INSTALL, tarball], dir, { ...MUSL, PATH: bin });
    expect(r.status, r.stdout + r.stderr).not.toBe(0);
    const said = r.stdout + r.stderr;
    expect(said).toContain('node-ksm: the build from source failed');
    expect(said).toContain('apk add build-base python3, then run "npm rebuild node-ksm"');
    expect(fs.existsSync(path.join(dir, 'node_modules/node-ksm'))).toBe(false);
  });
});

/** Shared by the ESM and CommonJS consumers: what they see, as JSON. */
const USE = `
const out = { version: pkg.version, sameModule: ksm.alloc === alloc, withKsm: typeof withKsm, Arena: typeof Arena, pageSize, mode: support().mode, available: support().available };
try {
  const b = alloc(3 * pageSize);
  b.fill(1);
  Object.assign(out, { length: b.length, freed: free(b), afterFree: b.length });
} catch (err) {
  Object.assign(out, { allocError: err.code, isKsmError: err instanceof KsmError });
}
console.log(JSON.stringify(out));
`;
