/**
 * Lint for every TypeScript file of the project, with type information: the rules that
 * catch real bugs in async and native-facing code (floating and misused promises,
 * switches that miss a case) are errors.
 */
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
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
    },
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
);
