/**
 * Real Debian kernels in QEMU guests, for `npm run test:kernels` and bench/vm-host.mts.
 *
 * Kernels come from Debian's own packages (`apt-get download`, nothing installed): a private
 * apt configuration under the cache lists the suites, so the host's sources are left alone.
 * Each guest boots that kernel with an initramfs built here (busybox-static, the kernel's
 * own virtio and 9p modules, and an init script) and, for tests, mounts the host's root
 * read-only over 9p and chroots into it: the guest runs the work tree's own dist/, addon and
 * node_modules with the official Node binary. KVM is not available on these machines, so
 * QEMU emulates (TCG). Downloads and built images are cached outside the repository
 * (NODE_KSM_KERNEL_CACHE, default ~/.cache/node-ksm/kernels).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface KernelSpec {
  /** The label used everywhere (fixtures, reports): the upstream line. */
  label: string;
  /** Debian suite whose linux-image-amd64 is this line. */
  suite: string;
  /** Who runs it. */
  distro: string;
}

/** The kernels users run: Debian 11 (also Amazon Linux 2's line), Debian 12, Debian 12 backports. */
export const KERNELS: readonly KernelSpec[] = [
  { label: '5.10', suite: 'bullseye', distro: 'Debian 11 (bullseye)' },
  { label: '6.1', suite: 'bookworm', distro: 'Debian 12 (bookworm)' },
  { label: '6.12', suite: 'bookworm-backports', distro: 'Debian 12 backports (bookworm-backports)' },
];

export const CACHE =
  process.env.NODE_KSM_KERNEL_CACHE ??
  path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'node-ksm', 'kernels');

export interface Kernel {
  spec: KernelSpec;
  /** The package version, e.g. 5.10.223-1. */
  version: string;
  /** `uname -r` of the guest, e.g. 5.10.0-32-amd64. */
  release: string;
  vmlinuz: string;
  /** lib/modules/<release> of the unpacked package. */
  modules: string;
  config: string;
}

function run(cmd: string, args: string[], opts: { cwd?: string; quiet?: boolean } = {}): string {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${(r.stderr || r.stdout).trim().slice(-2000)}`);
  }
  return r.stdout;
}

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/**
 * QEMU, busybox-static and apt are Debian packages; installed here when missing (as root),
 * so a fresh CI machine needs nothing done by hand.
 */
export function ensureHostTools(): void {
  const need: string[] = [];
  if (!have('qemu-system-x86_64')) need.push('qemu-system-x86');
  if (!fs.existsSync('/bin/busybox') || !/statically linked/.test(run('file', ['-L', '/bin/busybox']))) {
    need.push('busybox-static');
  }
  if (!have('xz')) need.push('xz-utils');
  if (need.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`missing Debian packages (install them as root): ${need.join(' ')}`);
  console.error(`test:kernels: installing ${need.join(' ')}`);
  run('apt-get', ['update', '-qq']);
  const r = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...need], {
    stdio: 'inherit',
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  });
  if (r.status !== 0) throw new Error(`apt-get install ${need.join(' ')} failed`);
}

/** apt-get/apt-cache over a private configuration: the suites below, lists in the cache. */
function aptOptions(): string[] {
  const dir = path.join(CACHE, 'apt');
  const parts = path.join(dir, 'sources.list.d');
  fs.mkdirSync(path.join(dir, 'lists', 'partial'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'cache', 'archives', 'partial'), { recursive: true });
  fs.mkdirSync(parts, { recursive: true });
  const sources = [
    'Types: deb',
    'URIs: http://deb.debian.org/debian',
    `Suites: ${[...new Set(KERNELS.map((k) => k.suite))].join(' ')}`,
    'Components: main',
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
    '',
  ].join('\n');
  const file = path.join(parts, 'node-ksm-kernels.sources');
  if (!fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== sources) fs.writeFileSync(file, sources);
  return [
    '-o',
    'Dir::Etc::SourceList=/dev/null',
    '-o',
    `Dir::Etc::SourceParts=${parts}`,
    '-o',
    `Dir::State::Lists=${path.join(dir, 'lists')}`,
    '-o',
    `Dir::Cache=${path.join(dir, 'cache')}`,
    '-o',
    'APT::Architecture=amd64',
    '-o',
    'Debug::NoLocking=1',
    '-o',
    'APT::Sandbox::User=root',
  ];
}

/** The package lists, refreshed at most once a day. */
function aptUpdate(opts: string[]): void {
  const stamp = path.join(CACHE, 'apt', '.updated');
  const fresh = fs.existsSync(stamp) && Date.now() - fs.statSync(stamp).mtimeMs < 86_400_000;
  if (fresh) return;
  console.error('test:kernels: apt-get update (Debian kernel suites)');
  run('apt-get', [...opts, 'update', '-qq']);
  fs.writeFileSync(stamp, new Date().toISOString());
}

/** The newest linux-image-amd64 of the spec's suite, and the real image package it points to. */
function resolvePackage(spec: KernelSpec, opts: string[]): { version: string; image: string } {
  const madison = run('apt-cache', [...opts, 'madison', 'linux-image-amd64']);
  const line = madison
    .split('\n')
    .map((l) => l.split('|').map((s) => s.trim()))
    .find((f) => f.length >= 3 && new RegExp(`\\s${spec.suite}/main\\s`).test(` ${f[2]} `));
  if (!line) throw new Error(`no linux-image-amd64 in ${spec.suite}`);
  const version = line[1]!;
  const show = run('apt-cache', [...opts, 'show', `linux-image-amd64=${version}`]);
  const dep = /^Depends:\s*(linux-image-\S+)/m.exec(show)?.[1];
  if (!dep) throw new Error(`linux-image-amd64=${version} names no image package`);
  return { version, image: dep };
}

/** Downloads and unpacks the spec's kernel once; later calls read the cache. */
export function fetchKernel(spec: KernelSpec): Kernel {
  const dir = path.join(CACHE, spec.suite);
  const meta = path.join(dir, 'kernel.json');
  if (fs.existsSync(meta)) {
    const k = JSON.parse(fs.readFileSync(meta, 'utf8')) as Omit<Kernel, 'spec'>;
    if (fs.existsSync(k.vmlinuz)) return { spec, ...k };
  }
  const opts = aptOptions();
  aptUpdate(opts);
  const { version, image } = resolvePackage(spec, opts);
  console.error(`test:kernels: downloading ${image} ${version} (${spec.suite})`);
  const tmp = fs.mkdtempSync(path.join(CACHE, '.fetch-'));
  try {
    run('apt-get', [...opts, 'download', '-qq', `${image}=${version}`], { cwd: tmp });
    const deb = fs.readdirSync(tmp).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${image} left no .deb`);
    const root = path.join(tmp, 'root');
    run('dpkg-deb', ['-x', path.join(tmp, deb), root]);
    const boot = path.join(root, 'boot');
    const vmlinuz = fs.readdirSync(boot).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new Error(`${deb} has no /boot/vmlinuz-*`);
    const release = vmlinuz.slice('vmlinuz-'.length);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    fs.renameSync(path.join(boot, vmlinuz), path.join(dir, 'vmlinuz'));
    fs.renameSync(path.join(boot, `config-${release}`), path.join(dir, 'config'));
    fs.renameSync(path.join(root, 'lib', 'modules', release), path.join(dir, 'modules'));
    const k = {
      version,
      release,
      vmlinuz: path.join(dir, 'vmlinuz'),
      modules: path.join(dir, 'modules'),
      config: path.join(dir, 'config'),
    };
    fs.writeFileSync(meta, `${JSON.stringify(k, null, 2)}\n`);
    return { spec, ...k };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** A module's file in the unpacked tree, by name (`-` and `_` are the same to the kernel). */
function moduleIndex(modulesDir: string): Map<string, string> {
  const index = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.ko(\.xz|\.zst)?$/.test(e.name))
        index.set(e.name.replace(/\.ko(\.xz|\.zst)?$/, '').replace(/-/g, '_'), p);
    }
  };
  walk(path.join(modulesDir, 'kernel'));
  return index;
}

function readModuleBinary(file: string): Buffer {
  if (!file.endsWith('.xz') && !file.endsWith('.zst')) return fs.readFileSync(file);
  const r = spawnSync(file.endsWith('.xz') ? 'xz' : 'zstd', ['-dc', file], { maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new Error(`cannot decompress ${file}: ${r.stderr.toString()}`);
  return r.stdout;
}

/** The `depends=` of a module's .modinfo section. */
function dependsOf(ko: Buffer): string[] {
  const at = ko.indexOf('\0depends=');
  if (at < 0) return [];
  const end = ko.indexOf(0, at + 1);
  return ko
    .subarray(at + '\0depends='.length, end)
    .toString('latin1')
    .split(',')
    .filter(Boolean)
    .map((d) => d.replace(/-/g, '_'));
}

/**
 * The modules `roots` need, dependencies first. A root that this kernel builds in
 * (`=y` in its config) needs no module; a root that is neither is an error.
 */
export function moduleLoadOrder(kernel: Kernel, roots: string[]): Array<{ name: string; data: Buffer }> {
  const index = moduleIndex(kernel.modules);
  const config = fs.readFileSync(kernel.config, 'utf8');
  const order: Array<{ name: string; data: Buffer }> = [];
  const seen = new Set<string>();
  const visit = (name: string, root: boolean) => {
    if (seen.has(name)) return;
    seen.add(name);
    const file = index.get(name);
    if (!file) {
      if (root && !builtIn(config, name)) throw new Error(`${kernel.release} has no module ${name}`);
      return;
    }
    const data = readModuleBinary(file);
    for (const d of dependsOf(data)) visit(d, false);
    order.push({ name, data });
  };
  for (const r of roots) visit(r, true);
  return order;
}

const CONFIG_OF: Record<string, string> = {
  virtio_pci: 'CONFIG_VIRTIO_PCI',
  '9pnet_virtio': 'CONFIG_NET_9P_VIRTIO',
  '9p': 'CONFIG_9P_FS',
};
function builtIn(config: string, name: string): boolean {
  const key = CONFIG_OF[name];
  return key !== undefined && new RegExp(`^${key}=y$`, 'm').test(config);
}

/** The modules a guest needs to mount the host over 9p. */
export const NINEP_MODULES = ['virtio_pci', '9pnet_virtio', '9p'];

export interface InitramfsFile {
  /** Path inside the image, without a leading slash. */
  name: string;
  data: Buffer | string;
  mode?: number;
}

/**
 * A gzip'd newc cpio of busybox, `files` and the given modules (as /modules/NN-name.ko with
 * /modules/order), cached by the hash of its contents.
 */
export function buildInitramfs(
  kernel: Kernel,
  files: InitramfsFile[],
  modules: string[],
  options: { out?: string; compress?: boolean } = {},
): string {
  const mods = moduleLoadOrder(kernel, modules);
  const compress = options.compress ?? true;
  const hash = createHash('sha256');
  hash.update(kernel.release);
  for (const f of files) hash.update(f.name).update(f.data);
  for (const m of mods) hash.update(m.name);
  const digest = hash.digest('hex').slice(0, 16);
  const out =
    options.out ?? path.join(CACHE, 'initramfs', `${kernel.spec.suite}-${digest}.cpio${compress ? '.gz' : ''}`);
  if (options.out === undefined && fs.existsSync(out)) return out;
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const stage = fs.mkdtempSync(path.join(CACHE, '.initramfs-'));
  try {
    for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'modules', 'host']) fs.mkdirSync(path.join(stage, d));
    fs.copyFileSync('/bin/busybox', path.join(stage, 'bin', 'busybox'));
    fs.chmodSync(path.join(stage, 'bin', 'busybox'), 0o755);
    fs.symlinkSync('busybox', path.join(stage, 'bin', 'sh'));
    const names = mods.map((m, i) => `${String(i).padStart(2, '0')}-${m.name}.ko`);
    mods.forEach((m, i) => fs.writeFileSync(path.join(stage, 'modules', names[i]!), m.data));
    fs.writeFileSync(path.join(stage, 'modules', 'order'), names.join('\n') + '\n');
    for (const f of files) {
      const p = path.join(stage, f.name);
      fs.mkdirSync(path.dirname(p), { recursive: true });
      fs.writeFileSync(p, f.data);
      fs.chmodSync(p, f.mode ?? 0o644);
    }
    // busybox's cpio writes the newc format the kernel unpacks; the list is sorted so that
    // the same contents give the same image.
    const list = run('busybox', ['find', '.'], { cwd: stage })
      .split('\n')
      .filter((l) => l && l !== '.')
      .sort()
      .join('\n');
    const cpio = spawnSync(
      'sh',
      ['-c', `busybox cpio -o -H newc 2>/dev/null ${compress ? '| gzip -1 ' : ''}> "$0"`, `${out}.tmp`],
      { cwd: stage, input: `${list}\n` },
    );
    if (cpio.status !== 0) throw new Error(`cpio failed: ${cpio.stderr.toString()}`);
    fs.renameSync(`${out}.tmp`, out);
    return out;
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}

// Every QEMU this process started, so that no exit path leaves one running.
const guests = new Set<ChildProcess>();
let cleanupInstalled = false;
function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', () => {
    for (const g of guests) g.kill('SIGKILL');
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      for (const g of guests) g.kill('SIGKILL');
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }
}

export interface GuestOptions {
  kernel: Kernel;
  initramfs: string;
  /** Kernel command line, after the console and panic settings. */
  append?: string;
  memoryMiB?: number;
  cpus?: number;
  /** 9p shares: tag → host directory. */
  shares?: Array<{ tag: string; path: string; readonly: boolean }>;
  /** Each line of the guest's console. */
  onLine?: (line: string) => void;
  /** Kill the guest after this long. */
  timeoutMs?: number;
}

export interface Guest {
  pid: number;
  /** Resolves with the console's text when QEMU exits; `timedOut` when it was killed for time. */
  done: Promise<{ code: number | null; console: string; timedOut: boolean }>;
  kill(): void;
}

/** Boots one guest under TCG (KVM does not work on these machines). */
export function bootGuest(o: GuestOptions): Guest {
  installCleanup();
  const args = [
    '-accel',
    'tcg',
    // The official Node binary needs more than qemu64's SSE3 (it traps on SSE4 instructions).
    '-cpu',
    'max',
    '-smp',
    String(o.cpus ?? 2),
    '-m',
    String(o.memoryMiB ?? 2048),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    '-kernel',
    o.kernel.vmlinuz,
    '-initrd',
    o.initramfs,
    '-append',
    `console=ttyS0 panic=-1 loglevel=4 mitigations=off ${o.append ?? ''}`.trim(),
  ];
  for (const s of o.shares ?? []) {
    args.push(
      '-virtfs',
      `local,path=${s.path},mount_tag=${s.tag},security_model=none,multidevs=remap${s.readonly ? ',readonly=on' : ''}`,
    );
  }
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  guests.add(child);
  let text = '';
  let pending = '';
  const onData = (d: Buffer) => {
    const s = d.toString('utf8').replace(/\r/g, '');
    text += s;
    pending += s;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      o.onLine?.(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  let timedOut = false;
  const timer =
    o.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          child.kill('SIGKILL');
        }, o.timeoutMs);
  const done = new Promise<{ code: number | null; console: string; timedOut: boolean }>((resolve, reject) => {
    child.once('error', (err) => {
      guests.delete(child);
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code) => {
      guests.delete(child);
      clearTimeout(timer);
      if (pending) o.onLine?.(pending);
      resolve({ code, console: text, timedOut });
    });
  });
  return { pid: child.pid!, done, kill: () => child.kill('SIGKILL') };
}

/** The host's busybox and a copy of an init script, with the 9p modules of the kernel. */
export function initramfsWithInit(kernel: Kernel, init: string, extra: InitramfsFile[] = []): string {
  return buildInitramfs(kernel, [{ name: 'init', data: init, mode: 0o755 }, ...extra], NINEP_MODULES);
}
