/**
 * Lint for every TypeScript file of the project, with type information: the rules that
 * catch real bugs in async and native-facing code (floating and misused promises,
 * switches that miss a case) are errors.
 */
import js from '@eslint/js';
import type { Linter } from 'eslint';
import { defineConfig } from 'eslint/config';
import { createNodeResolver, importX } from 'eslint-plugin-import-x';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default defineConfig(
  {
    ignores: [
      'dist/**',
      'build/**',
      'build-*/**',
      'prebuilds/**',
      'coverage/**',
      'docs/api/**',
      'bench/out/**',
      'bench/bin/**',
      'node_modules/**',
    ],
  },
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: globals.node,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      // `const { a: _a, ...rest } = x` is how a copy without `a` is written.
      '@typescript-eslint/no-unused-vars': ['error', { ignoreRestSiblings: true }],
      // As only-throw-error allows by default: passing on a value of unknown type (an
      // AbortSignal's reason, a caught error) is not inventing a non-Error rejection.
      '@typescript-eslint/prefer-promise-reject-errors': [
        'error',
        { allowThrowingAny: true, allowThrowingUnknown: true },
      ],
    },
  },
  {
    // Functions in lib/ read as named steps: one over 60 lines says why at its head.
    files: ['lib/**/*.ts'],
    rules: { 'max-lines-per-function': ['error', { max: 60, skipBlankLines: true, skipComments: true }] },
  },
  {
    // Math.max(...xs) throws RangeError once xs outgrows the stack (~10^5 numbers): a long
    // `watch --svg` once lost its whole run to it. Where data can grow, loop instead.
    files: [
      'lib/svg.ts',
      'lib/charts.ts',
      'lib/cli/watch.ts',
      'lib/cli/bench.ts',
      'lib/benchmark.ts',
      'lib/prometheus.ts',
      'lib/process-groups.ts',
    ],
    rules: {
      'no-restricted-syntax': [
        'error',
        {
          selector: "CallExpression[callee.object.name='Math'][callee.property.name=/^(max|min)$/] > SpreadElement",
          message: 'Spreading an array into Math.max/min fails past ~10^5 elements; use a loop.',
        },
      ],
    },
  },
  {
    files: ['**/*.cjs', '**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
  },
  layers(),
);

/**
 * Which code may import which (the layers point down: lib -> lib/cli -> examples, bench):
 *
 * - lib/ imports neither lib/cli/ nor anything outside lib/; lib/cli/ imports lib/ only.
 * - examples/ and scripts/ use the library as its users do: `node-ksm`, `node-ksm/testing`,
 *   `node-ksm/prometheus`, `node-ksm/bench` (resolved through package.json's exports to
 *   dist/), never lib/ or another dist/ file.
 * - bench/ may also use the compiled internals in dist/ (a benchmark measures what ships,
 *   and sometimes a figure only an internal gives, like mergingPages()), never lib/'s
 *   sources; it may use an example's modules (it benchmarks the examples).
 * - fuzz/ uses the public entry, plus dist/binding.js: it calls the addon itself, with
 *   arguments the TypeScript layer would refuse, to prove the addon checks them too.
 * - test/ may import anything; nothing imports test/ (nor fuzz/ nor bench/), except that
 *   bench/ takes the tests' machine-wide KSM lock and sysfs snapshot (test/helpers/ksm.ts,
 *   sysfs.ts), so a benchmark and a test never change the settings at once.
 *
 * Paths are matched after resolution, so `../dist/x.js`, `node-ksm` and `./y.mjs`
 * (for y.mts) are all seen for what they are. Imports whose path is computed at run time
 * (require(path.join(...))) are not: keep those to test/.
 */
function layers(): Linter.Config {
  const PUBLIC = ['./index.js', './testing.js', './prometheus.js', './benchmark.js'];
  const outside = ['./bench', './examples', './fuzz', './scripts', './test'];
  return {
    plugins: { 'import-x': importX },
    settings: {
      'import-x/resolver-next': [
        createNodeResolver({
          extensions: ['.ts', '.mts', '.js', '.mjs', '.cjs', '.json', '.node'],
          extensionAlias: { '.js': ['.ts', '.js'], '.mjs': ['.mts', '.mjs'] },
          conditionNames: ['node', 'import', 'require', 'default'],
        }),
      ],
    },
    rules: {
      'import-x/no-restricted-paths': [
        'error',
        {
          zones: [
            { target: './lib/*', from: ['./lib/cli', ...outside], message: 'lib/ depends on nothing above it' },
            { target: './lib/cli', from: outside, message: 'lib/cli/ depends on lib/ only' },
            ...['./examples', './scripts'].flatMap((target) => [
              { target, from: ['./lib', './bench', './fuzz', './test'], message: 'use the public entry points' },
              { target, from: './dist', except: PUBLIC, message: 'use the public entry points (node-ksm...)' },
            ]),
            // The machine-wide KSM lock and the sysfs snapshot are the tests' own, shared so that a
            // benchmark and a test never change /sys/kernel/mm/ksm at the same time.
            {
              target: './bench',
              from: './test',
              except: ['./helpers/ksm.ts', './helpers/sysfs.ts'],
              message: 'bench/ may use only the KSM lock and sysfs snapshot of test/helpers',
            },
            { target: './bench', from: ['./lib', './fuzz'], message: 'bench/ uses the compiled library' },
            { target: './fuzz', from: ['./lib', './bench', './examples', './test'], message: 'fuzz/ uses dist/' },
            {
              target: './fuzz',
              from: './dist',
              except: [...PUBLIC, './binding.js'],
              message: 'public entry or binding',
            },
          ],
        },
      ],
    },
  };
}
