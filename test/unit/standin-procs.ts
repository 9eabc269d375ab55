// Running the stand-ins as plain processes on the controller, for their unit tests: a clean environment
// (nothing k3s- or flux-ish leaks in from the caller), a run-to-completion helper, and a stop for servers.

import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { controllerKubectl, KUBECTL_SWITCH } from '../lab/kubectl.ts'

export interface RunResult {
  code: number
  stdout: string
  stderr: string
}

/** The caller's environment without anything the stand-ins read, plus what a test passes. */
export function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env))
    if (!/^(K3S_|INSTALL_K3S_|FLUX_|GITHUB_TOKEN$|GITHUB_URL$|KUBECONFIG$|NOTIFY_SOCKET$)/.test(k)) env[k] = v
  return { ...env, ...extra }
}

export function run(
  cmd: string,
  args: readonly string[],
  env: Record<string, string> = {},
  input = '',
): Promise<RunResult> {
  return new Promise((done, fail) => {
    const p = spawn(cmd, args, { env: cleanEnv(env), stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    p.on('error', fail)
    p.on('close', (code) => done({ code: code ?? -1, stdout, stderr }))
    p.stdin.on('error', () => undefined) // the program may exit without reading its input
    p.stdin.end(input)
  })
}

/** Stop a stand-in server started for a test file (if it still runs) and wait until it has exited. */
export async function stopProcess(p: ChildProcess | undefined): Promise<void> {
  if (!p || p.exitCode !== null) return
  const exited = new Promise((done) => p.on('exit', done))
  p.kill('SIGTERM')
  await exited
}

/**
 * The real kubectl client for `k3s kubectl` of a stand-in run in a temp root: the k3s stand-in has no kubectl of its
 * own and execs the client its switch file names, which the lab writes on every host (test/lab/kubectl.ts); here it
 * is written under the root, naming the controller's client. Fails when this machine has none.
 */
export function lendKubectl(root: string): string {
  const client = controllerKubectl()
  if (!client) throw new Error('no real kubectl client on this machine (PI_LAB_KUBECTL or kubectl in PATH)')
  mkdirSync(join(root, dirname(KUBECTL_SWITCH)), { recursive: true })
  writeFileSync(join(root, KUBECTL_SWITCH), `${client}\n`)
  return client
}
