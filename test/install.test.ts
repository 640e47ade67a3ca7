/**
 * What node-ksm tells a user whose machine no prebuilt binary fits (lib/install.ts): the
 * exact command for their distribution, from /etc/os-release as each distribution ships
 * it (abridged to the lines read), and whether the install fails. The same text reaches
 * users through `support().reasons` / ERR_KSM_UNSUPPORTED and, when the build from source
 * fails, through npm's install log (test/package.test.ts shows both on a real install).
 */
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildAdvice, buildToolsCommand, currentHost, installFailed, type Host } from '../lib/install';

const OS_RELEASE = {
  alpine: 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME="Alpine Linux v3.20"\n',
  debian: 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n',
  ubuntu: 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nNAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n',
  rocky: 'NAME="Rocky Linux"\nVERSION="9.4 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n',
  amazon: 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nID_LIKE="fedora"\n',
  opensuse: 'NAME="openSUSE Leap"\nVERSION="15.6"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\n',
  arch: 'NAME="Arch Linux"\nPRETTY_NAME="Arch Linux"\nID=arch\nBUILD_ID=rolling\n',
  nixos: 'NAME=NixOS\nID=nixos\nVERSION_ID="24.05"\n',
};

const linux = (arch: string, libc: Host['libc'], osRelease: string | null): Host => ({
  platform: 'linux',
  arch,
  libc,
  osRelease,
});

describe('buildToolsCommand', () => {
  it.each([
    ['alpine', 'musl', 'apk add build-base python3'],
    ['debian', 'glibc', 'apt-get install build-essential python3'],
    ['ubuntu', 'glibc', 'apt-get install build-essential python3'],
    ['rocky', 'glibc', 'dnf install gcc-c++ make python3'],
    ['amazon', 'glibc', 'dnf install gcc-c++ make python3'],
    ['opensuse', 'glibc', 'zypper install gcc-c++ make python3'],
    ['arch', 'glibc', 'pacman -S --needed base-devel python'],
  ] as const)('%s (%s): %s', (distro, libc, command) => {
    expect(buildToolsCommand(linux('x64', libc, OS_RELEASE[distro]))).toBe(command);
  });

  it('names the Alpine packages for musl even where os-release says something else', () => {
    // LIBC=musl is how node-gyp-build is told; musl without Alpine is rare enough.
    expect(buildToolsCommand(linux('x64', 'musl', OS_RELEASE.debian))).toBe('apk add build-base python3');
  });

  it('lists the common ones where it does not know the distribution', () => {
    for (const osRelease of [OS_RELEASE.nixos, null]) {
      const command = buildToolsCommand(linux('x64', 'glibc', osRelease));
      expect(command).toMatch(/^python3, make and g\+\+ /);
      for (const known of ['apt-get install build-essential python3', 'apk add build-base python3', 'dnf install'])
        expect(command).toContain(known);
    }
  });
});

describe('buildAdvice', () => {
  it('on Alpine: the shipped binaries are glibc only, what to apk add, then npm rebuild', () => {
    const text = buildAdvice(linux('x64', 'musl', OS_RELEASE.alpine), 'No native build was found for platform=linux');
    expect(text).toBe(
      'node-ksm ships prebuilt binaries for linux-x64 (glibc) and linux-arm64 (glibc) only; this is linux-x64 (musl) ' +
        '(No native build was found for platform=linux). Build it from source, which needs python3, make and a C++17 ' +
        'compiler: apk add build-base python3, then run "npm rebuild node-ksm" (if your package manager skips ' +
        "install scripts, allow node-ksm's: npm >= 11: npm install-scripts approve node-ksm).",
    );
  });

  it('on a CPU without a prebuild', () => {
    expect(buildAdvice(linux('riscv64', 'glibc', OS_RELEASE.debian))).toMatch(
      /^node-ksm ships prebuilt binaries for .* only; this is linux-riscv64 \(glibc\)\. .*apt-get install build-essential python3, then run "npm rebuild node-ksm"/,
    );
  });

  it('where a shipped binary exists but did not load, says so with the loader reason', () => {
    const text = buildAdvice(linux('arm64', 'glibc', OS_RELEASE.rocky), "version `GLIBC_2.28' not found");
    expect(text).toMatch(
      /^The prebuilt binary for linux-arm64 \(glibc\) did not load \(version `GLIBC_2\.28' not found\)\. .*dnf install gcc-c\+\+ make python3/,
    );
  });
});

describe('installFailed (the install script after node-gyp-build failed)', () => {
  it('fails the install on Linux, with the advice', () => {
    const { status, message } = installFailed(linux('x64', 'musl', OS_RELEASE.alpine));
    expect(status).toBe(1);
    expect(message).toMatch(/^node-ksm: the build from source failed \(see above\)\. .*apk add build-base python3/);
  });

  it('lets the install succeed elsewhere: KSM is Linux-only and the loader never asks for the addon there', () => {
    for (const platform of ['darwin', 'win32', 'freebsd']) {
      const { status, message } = installFailed({ platform, arch: 'arm64', libc: 'glibc', osRelease: null });
      expect(status).toBe(0);
      expect(message).toContain(`works without it on ${platform}`);
    }
  });
});

describe('currentHost', () => {
  it('decides the C library as node-gyp-build does: LIBC, else musl where /etc/alpine-release exists', () => {
    expect(currentHost({ LIBC: 'musl' }).libc).toBe('musl');
    expect(currentHost({ LIBC: 'glibc' }).libc).toBe('glibc');
    expect(currentHost({}).libc).toBe(fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc');
  });

  it("takes npm's platform and arch overrides, which node-gyp-build honours too", () => {
    expect(currentHost({ npm_config_arch: 'riscv64' }).arch).toBe('riscv64');
    expect(currentHost({ npm_config_platform: 'darwin' })).toMatchObject({ platform: 'darwin', osRelease: null });
    expect(currentHost({})).toMatchObject({ platform: process.platform, arch: process.arch });
  });

  it.skipIf(process.platform !== 'linux')("reads this machine's os-release", () => {
    const text = ['/etc/os-release', '/usr/lib/os-release'].find((f) => fs.existsSync(f));
    expect(currentHost({}).osRelease).toBe(text ? fs.readFileSync(text, 'utf8') : null);
  });
});
