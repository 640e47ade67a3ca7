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
    files: ['**/*.cjs', '**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
  },
);
