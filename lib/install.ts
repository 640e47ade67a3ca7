/**
 * What to do when no binary of the addon loads: which prebuilt binaries the package ships,
 * why none fits this machine, and the exact commands that build one from source here.
 * The loader (lib/binding.ts) puts this in `support().reasons` and ERR_KSM_UNSUPPORTED;
 * the package's install script runs this file when `node-gyp-build` could neither find a
 * prebuild that loads nor build one (`node-gyp-build || node dist/install.js`), because
 * npm shows an install script's output only when it fails, and a gyp log alone does not
 * say what an Alpine image lacks.
 */
import fs from 'node:fs';

/** The platforms whose binaries ship inside the package (scripts/prebuild.sh). */
export const PREBUILT = ['linux-x64 (glibc)', 'linux-arm64 (glibc)'] as const;

export interface Host {
  platform: string;
  arch: string;
  /** As node-gyp-build decides it when it picks a prebuild: `LIBC`, else musl on Alpine. */
  libc: 'glibc' | 'musl';
  /** The text of /etc/os-release, or null where there is none. */
  osRelease: string | null;
}

function readOsRelease(): string | null {
  for (const file of ['/etc/os-release', '/usr/lib/os-release']) {
    try {
      return fs.readFileSync(file, 'utf8');
    } catch {
      // the next one, or none
    }
  }
  return null;
}

/** This machine, judged the way node-gyp-build judges it (and overridden by the same variables). */
export function currentHost(env: NodeJS.ProcessEnv = process.env): Host {
  const platform = env.npm_config_platform || process.platform;
  const libc =
    env.LIBC === 'musl' || env.LIBC === 'glibc'
      ? env.LIBC
      : platform === 'linux' && fs.existsSync('/etc/alpine-release')
        ? 'musl'
        : 'glibc';
  return {
    platform,
    arch: env.npm_config_arch || process.arch,
    libc,
    osRelease: platform === 'linux' ? readOsRelease() : null,
  };
}

/** `ID` and `ID_LIKE` of an os-release text, lower-cased (`ubuntu debian`). */
function distroIds(osRelease: string | null): string[] {
  if (osRelease === null) return [];
  const ids: string[] = [];
  for (const line of osRelease.split('\n')) {
    const m = /^(ID|ID_LIKE)=(.*)$/.exec(line.trim());
    if (m)
      ids.push(
        ...m[2]!
          .replace(/^["']|["']$/g, '')
          .toLowerCase()
          .split(/\s+/),
      );
  }
  return ids.filter(Boolean);
}

/** The package-manager command that installs python3, make and a C++17 compiler here. */
export function buildToolsCommand(host: Host): string {
  const ids = distroIds(host.osRelease);
  const is = (...names: string[]) => names.some((n) => ids.includes(n));
  // musl nearly always means Alpine (the base image of node:*-alpine).
  if (host.libc === 'musl' || is('alpine')) return 'apk add build-base python3';
  if (is('debian', 'ubuntu')) return 'apt-get install build-essential python3';
  if (is('fedora', 'rhel', 'centos')) return 'dnf install gcc-c++ make python3';
  if (is('suse', 'opensuse')) return 'zypper install gcc-c++ make python3';
  if (is('arch')) return 'pacman -S --needed base-devel python';
  return 'python3, make and g++ (Debian/Ubuntu: apt-get install build-essential python3; Alpine: apk add build-base python3; Fedora/RHEL: dnf install gcc-c++ make python3)';
}

function describe(host: Host): string {
  return host.platform === 'linux' ? `${host.platform}-${host.arch} (${host.libc})` : `${host.platform}-${host.arch}`;
}

/**
 * One paragraph: why no shipped binary serves this machine and what builds one. `reason`
 * is the loader's own error (a missing file, a symbol the C library lacks).
 */
export function buildAdvice(host: Host, reason?: string): string {
  const shipped = PREBUILT.includes(describe(host) as (typeof PREBUILT)[number]);
  const why = shipped
    ? `The prebuilt binary for ${describe(host)} did not load${reason ? ` (${reason})` : ''}`
    : `node-ksm ships prebuilt binaries for ${PREBUILT.join(' and ')} only; this is ${describe(host)}` +
      (reason ? ` (${reason})` : '');
  return (
    `${why}. Build it from source, which needs python3, make and a C++17 compiler: ` +
    `${buildToolsCommand(host)}, then run "npm rebuild node-ksm" ` +
    `(if your package manager skips install scripts, allow node-ksm's: npm >= 11: npm install-scripts approve node-ksm).`
  );
}

/** Run by the install script after `node-gyp-build` failed: exit status and message. */
export function installFailed(host: Host): { status: number; message: string } {
  if (host.platform !== 'linux') {
    // The addon only says "unsupported" off Linux and the loader never asks for it there.
    return {
      status: 0,
      message: `node-ksm: the native addon was not built; KSM is Linux-only and node-ksm works without it on ${host.platform}.`,
    };
  }
  return { status: 1, message: `node-ksm: the build from source failed (see above). ${buildAdvice(host)}` };
}

if (require.main === module) {
  const { status, message } = installFailed(currentHost());
  console.error(message);
  process.exitCode = status;
}
