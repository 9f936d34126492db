import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests start real processes and bind real ports; two cores do not
    // gain from running many files at once, and isolation keeps the timings honest.
    fileParallelism: false,
    pool: 'forks',
  },
});
