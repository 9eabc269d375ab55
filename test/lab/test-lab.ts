// The lab the test suite runs on: a lab of its own (state dir, subnet, bridge, artifact port, systemd-nspawn
// machine names, and with the state dir its key, known_hosts, secrets, kubeconfig and NAS folder), so that
// `npm test` never touches the user's lab (`npm run lab`, inventory/lab.yaml) and both can be up at once. Only the
// image cache is shared (one debootstrap for both). The vitest `lab` project puts these in its workers' environment
// (vitest.config.ts: `env`) and its global setup in the main process's (test-lab-setup.ts), before anything imports
// paths.ts, which reads them once, at import. No imports here: vitest.config.ts loads this file.
export const TEST_LAB_ENV = {
  PI_LAB_DIR: '/var/lib/pi-lab-test',
  PI_LAB_SUBNET: '10.199.56',
  PI_LAB_BRIDGE: 'pilabt0',
  PI_LAB_ARTIFACT_PORT: '8781',
  PI_LAB_MACHINE_PREFIX: 't-',
} as const
