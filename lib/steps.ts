// Idempotent step primitives. Each one reads facts, plans a Change with a pure function (exported,
// so tests feed recorded facts in and check the commands that come out), and lets the context apply it.
// The primitives are in one module per kind and all exported from here, the one import for a role: files
// (lib/step-files.ts), systemd units (lib/step-systemd.ts), packages (lib/step-apt.ts); commands, reboots and waits
// are here.

import type { Handler, Step, StepContext, StepResult } from './role.ts'
import { handler } from './role.ts'
import { quote } from './shell.ts'
import { sleep } from './connection.ts'
import { ProvisionError } from './errors.ts'
export type { CommandChange } from './planned-step.ts'
import { fileFact } from './step-files.ts'
export * from './step-apt.ts'
export * from './step-files.ts'
export * from './step-systemd.ts'

export interface CommandSpec {
  script: string
  stdin?: string
  /** Skip when this path exists on the host. */
  creates?: string
  /** Skip when this script exits 0 on the host. */
  unless?: string
  summary?: string
}

/** A command guarded by `creates` / `unless`, so a rerun does not repeat it. */
export function command(
  name: string,
  spec: (ctx: StepContext) => CommandSpec | Promise<CommandSpec>,
  extra: Partial<Step> = {},
): Step {
  return {
    name,
    ...extra,
    async plan(ctx) {
      const s = await spec(ctx)
      if (s.creates) {
        const st = await ctx.facts.get(fileFact(s.creates))
        if (st.exists) return { status: 'ok', message: `${s.creates} exists` }
      }
      if (s.unless) {
        const r = await ctx.sh(s.unless)
        if (r.code === 0) return { status: 'ok' }
      }
      return { summary: s.summary ?? name, commands: [{ script: s.script, stdin: s.stdin }] }
    },
  }
}

/** Reboot and wait for the new boot (a new boot_id), bounded by reboot_timeout. A handler: notify it. */
export function rebootHandler(name = 'Reboot'): Handler {
  return handler({
    name,
    async plan() {
      return { summary: 'reboot', apply: rebootAndWait }
    },
  })
}

/** Reboot the host and wait for it to come back (a new boot_id); returns what to report. */
async function rebootAndWait(ctx: StepContext): Promise<string> {
  const before = (await ctx.must('cat /proc/sys/kernel/random/boot_id')).stdout.trim()
  // Detached, and a moment later, so this command's exit status reaches us before sshd is stopped.
  await ctx.sh(`nohup sh -c 'sleep 0.3; systemctl reboot' >/dev/null 2>&1 &`)
  await ctx.conn.reset()
  const limit = ctx.vars.reboot_timeout * 1000
  const started = Date.now()
  await sleep(300) // polling before the reboot starts only finds the old boot
  let lastError = ''
  while (Date.now() - started < limit) {
    try {
      // Log in only once sshd greets again (overlapping probes notice that within ~0.2 s); then a short attempt.
      await ctx.conn.sshAnswers?.(started + limit)
      const r = await ctx.conn.run('cat /proc/sys/kernel/random/boot_id', {
        connectWithinMs: Math.min(3000, Math.max(500, limit - (Date.now() - started))),
      })
      const now = r.stdout.trim()
      if (r.code === 0 && now && now !== before) {
        ctx.facts.invalidate()
        return `rebooted in ${((Date.now() - started) / 1000).toFixed(1)}s`
      }
    } catch (e) {
      lastError = (e as Error).message
      await ctx.conn.reset()
    }
    await sleep(250)
  }
  throw new ProvisionError(
    'timeout',
    `${ctx.host} did not come back from the reboot within ${ctx.vars.reboot_timeout}s` +
      (lastError ? ` (last error: ${lastError})` : ''),
    {
      place: { host: ctx.host },
      hint: 'check the host console; raise reboot_timeout for slow boots (Pi 3 with an SD card: 60-90 s)',
    },
  )
}

export interface WaitSpec {
  /** Script that exits 0 when the wait is over. */
  until: string
  timeoutSec: number
  intervalMs?: number
  what: string
}

/** Poll until a condition holds on the host, with a timeout that names what was awaited. */
export function waitFor(name: string, spec: (ctx: StepContext) => WaitSpec, extra: Partial<Step> = {}): Step {
  return {
    name,
    ...extra,
    onlyForReal: 'it waits for what the steps before it do',
    async plan(ctx) {
      const s = spec(ctx)
      const r = await pollUntil(ctx, s)
      return { status: 'ok', message: `${s.what} after ${r.toFixed(1)}s` }
    },
  }
}

/** Poll fn until it says done; report progress lines through onProgress; throw a timeout naming what is missing. */
export async function waitUntil<T>(
  ctx: StepContext,
  spec: { timeoutSec: number; intervalMs?: number; what: string },
  fn: () => Promise<{ done: boolean; value: T; waitingFor: string }>,
  onProgress?: (value: T, waitingFor: string) => void,
): Promise<{ value: T; seconds: number }> {
  const started = Date.now()
  for (;;) {
    const r = await fn()
    if (r.done) return { value: r.value, seconds: (Date.now() - started) / 1000 }
    onProgress?.(r.value, r.waitingFor)
    if (Date.now() - started > spec.timeoutSec * 1000)
      throw new ProvisionError(
        'timeout',
        `timed out after ${spec.timeoutSec}s waiting for ${spec.what}: ${r.waitingFor}`,
        { place: { host: ctx.host } },
      )
    await sleep(spec.intervalMs ?? 2000)
  }
}

/** Returns seconds waited; throws a timeout error naming the host and what it waited for. */
export async function pollUntil(ctx: StepContext, s: WaitSpec): Promise<number> {
  const started = Date.now()
  let last = ''
  for (;;) {
    const r = await ctx.sh(s.until)
    if (r.code === 0) return (Date.now() - started) / 1000
    last = (r.stderr || r.stdout).trim().split('\n').pop() ?? ''
    if (Date.now() - started > s.timeoutSec * 1000)
      throw new ProvisionError(
        'timeout',
        `timed out after ${s.timeoutSec}s waiting for ${s.what}${last ? ` (last output: ${last})` : ''}`,
        { place: { host: ctx.host } },
      )
    await sleep(s.intervalMs ?? 1000)
  }
}

export function waitForPort(
  name: string,
  spec: (ctx: StepContext) => { host: string; port: number; timeoutSec: number },
  extra: Partial<Step> = {},
): Step {
  return waitFor(
    name,
    (ctx) => {
      const s = spec(ctx)
      return {
        until: `timeout 2 bash -c ${quote(`exec 3<>/dev/tcp/${s.host}/${s.port}`)}`,
        timeoutSec: s.timeoutSec,
        what: `port ${s.port} on ${s.host}`,
      }
    },
    extra,
  )
}

export type { StepResult }
