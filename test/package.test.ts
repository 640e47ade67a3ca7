/**
 * The package as users get it. `npm pack` holds exactly what builds from source (plus the
 * prebuilds when scripts/prebuild.sh made them); a consumer project installs the tarball
 * (from the npm cache, as offline as npm allows) and both `import` and `require` work and
 * type-check; with the platform forced to one without KSM, everything still loads and says
 * why it cannot work. Nothing here touches /sys/kernel/mm/ksm.
 */
import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { skipTest } from './helpers/skips';
import { matchingAny } from './helpers/expect';
import type { Support } from '../lib/support';

const root = path.join(__dirname, '..');
const tsc = path.join(root, 'node_modules/typescript/bin/tsc');
const hostPrebuild = `prebuilds/${process.platform}-${process.arch}/`;
const INSTALL_TIMEOUT = 300_000;

// The consumers must load what they installed, not a binary this run was pointed at.
const env: NodeJS.ProcessEnv = { ...process.env };
delete env.NODE_KSM_BINARY;
delete env.NODE_KSM_FORCE_PLATFORM;

let tmp = '';
let tarball = '';
let packed: string[] = [];
const installSeconds: Record<string, number> = {};

function run(cmd: string, args: string[], cwd: string, extraEnv: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env: { ...env, ...extraEnv }, encoding: 'utf8', timeout: INSTALL_TIMEOUT });
}

function ok(r: SpawnSyncReturns<string>): string {
  expect(r.error, String(r.error)).toBeUndefined();
  expect(r.signal, `killed by ${r.signal}\n${r.stderr}`).toBeNull();
  expect(r.status, `exit ${r.status}\n${r.stdout}\n${r.stderr}`).toBe(0);
  return r.stdout;
}

/** A fresh project that installs `tgz` from the npm cache (the registry only for a miss). */
function consumer(name: string, tgz: string, flags: string[] = []): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name, private: true }));
  const started = Date.now();
  ok(run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--no-package-lock', ...flags, tgz], dir));
  installSeconds[name] = (Date.now() - started) / 1000;
  return dir;
}

/** Which binary node-gyp-build picks in an installed copy (relative to the package). */
function loadedBinary(dir: string): string {
  const pkg = path.join(dir, 'node_modules/node-ksm');
  const found = ok(run(process.execPath, ['-p', `require('node-gyp-build').path(${JSON.stringify(pkg)})`], dir)).trim();
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
  // --ignore-scripts: `prepare` would rewrite dist/ under other test runs; dist/ is built
  // before the tests (npm test's pretest, CI's build:ts).
  const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], {
    cwd: root,
    env,
    encoding: 'utf8',
  });
  const [info] = JSON.parse(out) as Array<{ filename: string; files: Array<{ path: string }> }>;
  tarball = path.join(tmp, info!.filename);
  packed = info!.files.map((f) => f.path).sort();
}, INSTALL_TIMEOUT);

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  if (Object.keys(installSeconds).length > 0) console.log(`npm install times (s): ${JSON.stringify(installSeconds)}`);
});

describe('npm pack', () => {
  it('holds exactly the sources, build files, compiled output and prebuilds', () => {
    const allowed = [
      /^(package\.json|README\.md|LICENSE|binding\.gyp|CMakeLists\.txt)$/,
      /^native\/[\w-]+\.(cc|h)$/,
      // TypeScript sources, for the source maps in dist/.
      /^lib\/([\w-]+\/)*[\w-]+\.ts$/,
      /^dist\/([\w-]+\/)*[\w-]+\.(js|js\.map|d\.ts)$/,
      /^prebuilds\/linux-(x64|arm64)\/node-ksm\.(glibc|musl)\.node$/,
    ];
    expect(packed.filter((f) => !allowed.some((re) => re.test(f)))).toEqual([]);

    const expected = ['binding.gyp', 'CMakeLists.txt', 'package.json'];
    for (const f of fs.readdirSync(path.join(root, 'native'))) if (/\.(cc|h)$/.test(f)) expected.push(`native/${f}`);
    for (const f of walk(path.join(root, 'lib'))) {
      if (!f.endsWith('.ts')) continue;
      const js = f.replace(/\.ts$/, '');
      expected.push(`lib/${f}`, `dist/${js}.js`, `dist/${js}.d.ts`, `dist/${js}.js.map`);
    }
    const prebuilds = fs.existsSync(path.join(root, 'prebuilds'))
      ? walk(path.join(root, 'prebuilds')).map((f) => `prebuilds/${f}`)
      : [];
    // A missing dist file means dist/ is older than lib/: npm run build:ts.
    expect(expected.concat(prebuilds).filter((f) => !packed.includes(f))).toEqual([]);

    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    for (const bin of Object.values(pkg.bin)) expect(packed).toContain(path.normalize(bin));
  });

  it('passes publint --strict', async () => {
    const { publint } = await import('publint');
    const { formatMessage } = await import('publint/utils');
    const { messages, pkg } = await publint({ pkgDir: root, strict: true, level: 'suggestion' });
    expect(messages.map((m) => formatMessage(m, pkg) ?? m.code)).toEqual([]);
  });
});

describe('a project that installs the tarball', () => {
  let dir = '';
  let prebuilt = false;
  beforeAll(() => {
    prebuilt = packed.some((f) => f.startsWith(hostPrebuild));
    dir = consumer('consumer', tarball);
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
      const out = JSON.parse(ok(run(process.execPath, [file], dir))) as Record<string, unknown>;
      expect(out).toMatchObject({
        version: matchingAny(String),
        sameModule: true,
        withKsm: 'function',
        Arena: 'function',
      });
      if (out.available) expect(out).toMatchObject({ length: 3 * (out.pageSize as number), freed: true, afterFree: 0 });
      else expect(out).toMatchObject({ allocError: 'ERR_KSM_UNSUPPORTED', isKsmError: true });
      expect(out.mode).toMatch(/^(external|window)$/);
    });
  }

  it('type-checks an ESM (.mts) and a CommonJS (.cts) consumer', () => {
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
    fs.writeFileSync(
      path.join(dir, 'typed.mts'),
      `import { alloc, free, support, processStats, pageSize, type Support, type ProcessStats } from 'node-ksm';
import * as ksm from 'node-ksm';
import { withKsm } from 'node-ksm/testing';${use}`,
    );
    fs.writeFileSync(
      path.join(dir, 'typed.cts'),
      `import { alloc, free, support, processStats, pageSize, type Support, type ProcessStats } from 'node-ksm';
import ksm = require('node-ksm');
import { withKsm } from 'node-ksm/testing';${use}`,
    );
    fs.writeFileSync(
      path.join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module: 'nodenext',
          moduleResolution: 'nodenext',
          target: 'es2022',
          strict: true,
          noEmit: true,
          types: ['node'],
          typeRoots: [path.join(root, 'node_modules/@types')],
        },
        files: ['typed.mts', 'typed.cts'],
      }),
    );
    ok(run(process.execPath, [tsc, '-p', 'tsconfig.json'], dir));
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
    const other = consumer('no-scripts', tarball, ['--ignore-scripts']);
    expect(loadedBinary(other)).toMatch(new RegExp(`^${hostPrebuild}`));
    ok(run(process.execPath, ['-e', `require('node-ksm').support().mode === 'none' && process.exit(1)`], other));
  });

  /** The tarball as a platform without a prebuild gets it (the prebuilds taken out). */
  let bare = '';
  function withoutPrebuilds(): string {
    if (!prebuilt) return tarball;
    if (bare) return bare;
    const unpacked = path.join(tmp, 'unpacked');
    fs.mkdirSync(unpacked);
    ok(run('tar', ['-xzf', tarball, '-C', unpacked], tmp));
    fs.rmSync(path.join(unpacked, 'package/prebuilds'), { recursive: true });
    const name = ok(
      run(
        'npm',
        ['pack', '--ignore-scripts', '--silent', '--pack-destination', unpacked],
        path.join(unpacked, 'package'),
      ),
    ).trim();
    return (bare = path.join(unpacked, name));
  }

  it('builds from source from the tarball alone when no prebuild matches', (ctx) => {
    if (!prebuilt) {
      // The consumer above already did.
      expect(loadedBinary(dir)).toBe('build/Release/ksm.node');
      return;
    }
    if (process.env.NODE_KSM_SKIP_SOURCE_BUILD === '1') skipTest(ctx, 'NODE_KSM_SKIP_SOURCE_BUILD=1');
    const built = consumer('from-source', withoutPrebuilds());
    expect(loadedBinary(built)).toBe('build/Release/ksm.node');
    ok(
      run(
        process.execPath,
        ['-e', `const k = require('node-ksm'); k.support().mode === 'none' && process.exit(1); k.free(k.alloc(1))`],
        built,
      ),
    );
  });

  it('with neither a prebuild nor a build, still imports and says what to do', () => {
    const none = consumer('nothing-built', withoutPrebuilds(), ['--ignore-scripts']);
    const out = JSON.parse(
      ok(
        run(
          process.execPath,
          [
            '-e',
            `const k = require('node-ksm'); let code; try { k.alloc(1) } catch (e) { code = e.code } console.log(JSON.stringify({ s: k.support(), code }))`,
          ],
          none,
        ),
      ),
    ) as { s: Support; code: string };
    expect(out.code).toBe('ERR_KSM_UNSUPPORTED');
    expect(out.s).toMatchObject({ available: false, mode: 'none' });
    expect(out.s.reasons.join(' ')).toMatch(/could not be loaded .*install a C\+\+ compiler.*npm rebuild node-ksm/);
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
