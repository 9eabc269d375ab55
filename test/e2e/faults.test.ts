// The faults of a real homelab, on the lab: a Pi that is off the network before the run, one that loses power
// mid-step, one whose cable is pulled mid-step, a reboot that never comes back, an SSH session that drops
// mid-step, and Ctrl-C. For each: what the user sees (exit code, the recap line of every host, the message),
// then a look at every host's edited files for anything half written (leftover temp files of an atomic write,
// or a file that is neither its original nor its complete new content).
//
// Not repeated here: a changed host key outside a rebuild is refused, never silently accepted, even with
// --trust-new-host-keys (exit 4, both fingerprints named): test/e2e/runner-lab.test.ts.
//
// Every test starts from freshly flashed hosts (so pi-prep has real work: cmdline.txt, apt, a reboot) and
// runs the playbooks as a user does, as child processes. Waits are bounded and name what they wait for.

import { mkdtempSync, readFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest'
import { DEFAULT_HOSTS, labAddress, labCut, labDown, labExec, labHeal, labStart, labStop, labUp } from '../lab/lab.ts'
import { onHost, runPlaybookCli, type PlaybookRun } from './helpers.ts'
import {
  CMDLINE_FLAGS,
  halfWrittenOn,
  isCommand,
  isStepStart,
  ORIGINAL_CMDLINE,
  readEvents,
  recapLine,
  startPlaybook,
  waitForEvent,
  type LiveRun,
} from './fault-helpers.ts'

const INSTALL = 'Install the packages the cluster needs'
const LAST_STEP = 'Check the memory cgroup is available'
/** lab.yaml leaves connect_timeout at its default. */
const CONNECT_TIMEOUT_S = 10

let dir = ''
const live: LiveRun[] = []

/** A run the test acts on while it runs; killed after the test if it is still going (a failed wait). */
function start(name: string, args: string[]): LiveRun {
  const run = startPlaybook(name, args)
  live.push(run)
  return run
}

/** The run's end, or a failure naming what was awaited and the output so far. */
async function finished(run: LiveRun, what: string, timeoutMs: number): Promise<PlaybookRun> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: the run did not end within ${timeoutMs / 1000}s:\n${run.output()}`)),
      timeoutMs,
    )
  })
  try {
    return await Promise.race([run.done, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** Poll a command on a host (through the lab, not SSH) until it exits 0. */
async function untilOnHost(host: string, command: string, what: string, timeoutMs: number): Promise<string> {
  const end = Date.now() + timeoutMs
  for (;;) {
    const r = await labExec(host, command)
    if (r.code === 0) return r.stdout
    if (Date.now() > end) throw new Error(`${host}: ${what} not within ${timeoutMs / 1000}s`)
    await new Promise((res) => setTimeout(res, 20))
  }
}

const clean = { unreachable: 0, failed: 0 }
const recapOf = (run: PlaybookRun, host: string) => run.recap[host]

/** The hosts that were not hit by the fault ran the whole role and ended well. */
function expectOthersFinished(run: PlaybookRun, hit: string): void {
  for (const h of DEFAULT_HOSTS.filter((x) => x !== hit)) {
    expect.soft(recapOf(run, h), `${recapLine(run.out, h)}\n${run.out}`).toMatchObject(clean)
    expect.soft(run.out, h).toContain(`ok: [${h}] pi-prep | ${LAST_STEP}`)
  }
}

/**
 * pi-prep runs until pi3-worker-2 is in the middle of its package install (apt-get running on the host), then
 * `fault` strikes it; `undo` brings it back once the run has ended, and its files are checked for half-writes.
 */
async function faultMidInstall(
  fault: () => Promise<unknown>,
  undo: () => Promise<unknown>,
  after: string,
): Promise<{ res: PlaybookRun; retry: string; broken: string[] }> {
  const json = join(dir, 'events.json')
  const retry = join(dir, 'r.retry')
  const run = start('pi-prep', ['--json', json, '--retry-file', retry, '-e', 'connect_timeout=3'])
  await waitForEvent(
    run,
    json,
    `step-start of "${INSTALL}" on pi3-worker-2`,
    isStepStart('pi3-worker-2', INSTALL),
    60_000,
  )
  await untilOnHost('pi3-worker-2', 'pgrep -x apt-get', 'apt-get running', 30_000)
  await fault()
  const res = await finished(run, after, 120_000)
  await undo()
  return { res, retry, broken: await halfWrittenOn(DEFAULT_HOSTS) }
}

/** What the user sees when pi3-worker-2 went away mid-install: that step failed (not unreachable), the others finished. */
function expectWentAwayMidInstall(res: PlaybookRun, retry: string, broken: string[]): void {
  expect.soft(res.code, res.out).toBe(2)
  expect
    .soft(recapOf(res, 'pi3-worker-2'), recapLine(res.out, 'pi3-worker-2'))
    .toMatchObject({ failed: 1, unreachable: 0 })
  // The host went away, not that a command of the step failed on its own.
  expect
    .soft(res.out)
    .toMatch(
      new RegExp(`FAILED: \\[pi3-worker-2\\] pi-prep \\| ${INSTALL} \\(pi3-worker-2: the host went away mid-run`),
    )
  expectOthersFinished(res, 'pi3-worker-2')
  expect.soft(existsSync(retry) && readFileSync(retry, 'utf8'), 'the retry file').toBe('pi3-worker-2\n')
  expect(broken).toEqual([])
}

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'faults-'))
  await labUp(DEFAULT_HOSTS, { fresh: true })
})

afterEach(() => {
  for (const run of live.splice(0)) if (!run.exited()) process.kill(run.pid, 'SIGKILL')
})

afterAll(async () => {
  await labDown()
})

describe('faults of a real homelab', () => {
  it('(the check itself) finds a leftover temp file, a cut-off cmdline.txt and a short config on a host', async () => {
    await onHost(
      'pi-k3s',
      [
        'echo pi-k3s > /etc/.hostname.Ab12Cd',
        `printf '%s' 'console=serial0,115200 console=tty1 root=PART' > /boot/firmware/cmdline.txt`,
        `printf 'overlay\\n' > /etc/modules-load.d/k3s.conf`,
      ].join('; '),
    )
    expect(await halfWrittenOn(DEFAULT_HOSTS)).toEqual([
      'pi-k3s: leftover temp file /etc/.hostname.Ab12Cd',
      'pi-k3s: /boot/firmware/cmdline.txt is neither the original nor the complete new content: "console=serial0,115200 console=tty1 root=PART"',
      'pi-k3s: /etc/modules-load.d/k3s.conf is neither the original nor the complete new content: "overlay\\n"',
    ])
  })

  it('a host unreachable from the start: the others finish, exit 4, the retry file names it; healed, --limit @file finishes the job', async () => {
    const retry = join(dir, 'first.retry')
    await labCut('pi3-worker-1')
    const first = await runPlaybookCli('pi-prep', ['--retry-file', retry, '-e', 'connect_timeout=3'])
    expect(first.code, first.out).toBe(4)
    expect(first.out).toContain(`UNREACHABLE: [pi3-worker-1] cannot connect to ${labAddress('pi3-worker-1')}:22`)
    expect(recapOf(first, 'pi3-worker-1'), first.out).toEqual({
      ok: 0,
      changed: 0,
      unreachable: 1,
      failed: 0,
      skipped: 0,
    })
    expectOthersFinished(first, 'pi3-worker-1')
    expect(readFileSync(retry, 'utf8')).toBe('pi3-worker-1\n')
    expect(first.out).toContain(`retry the failed and unreachable hosts with: --limit @${retry}`)
    expect(await halfWrittenOn(DEFAULT_HOSTS)).toEqual([])

    await labHeal('pi3-worker-1')
    const again = await runPlaybookCli('pi-prep', ['--limit', `@${retry}`, '--retry-file', join(dir, 'again.retry')])
    expect(again.code, again.out).toBe(0)
    expect(Object.keys(again.recap)).toEqual(['pi3-worker-1'])
    expect(recapOf(again, 'pi3-worker-1').changed, again.out).toBeGreaterThan(0)
    expect(existsSync(join(dir, 'again.retry'))).toBe(false)

    const plain = await runPlaybookCli('pi-prep', ['--retry-file', join(dir, 'plain.retry')])
    expect(plain.code, plain.out).toBe(0)
    for (const h of DEFAULT_HOSTS)
      expect(recapOf(plain, h), recapLine(plain.out, h)).toMatchObject({ changed: 0, ...clean })
    expect(await halfWrittenOn(DEFAULT_HOSTS)).toEqual([])
  })

  it('a host that loses power mid-step: its step fails (failed=1, not unreachable), the others finish, exit 2', async () => {
    // Pull the cord; powered on again, what its disk kept must be whole.
    const { res, retry, broken } = await faultMidInstall(
      () => labStop('pi3-worker-2'),
      () => labStart('pi3-worker-2'),
      'after pi3-worker-2 lost power',
    )
    expectWentAwayMidInstall(res, retry, broken)
  })

  it('a host whose cable is pulled mid-step (no FIN, as a dead Pi): its step fails, the others finish, exit 2, the recap is printed', async () => {
    // ssh2's keepalive (3 x 5 s) notices, then the reconnect attempts (3 x 3 s) fail.
    const { res, retry, broken } = await faultMidInstall(
      () => labCut('pi3-worker-2'),
      () => labHeal('pi3-worker-2'),
      'after pi3-worker-2 was cut',
    )
    expect.soft(res.out, 'the runner crashed').not.toContain("Unhandled 'error' event")
    expect.soft(res.out).toContain('PLAY RECAP')
    expectWentAwayMidInstall(res, retry, broken)
  })

  it('a reboot that never comes back: a bounded wait, a message naming the host and the time, the others finish, exit 2', async () => {
    const json = join(dir, 'events.json')
    const retry = join(dir, 'r.retry')
    const timeoutS = 10
    // -v: --json carries command events from -v on, as the terminal shows them.
    const run = start('pi-prep', ['-v', '--json', json, '--retry-file', retry, '-e', `reboot_timeout=${timeoutS}`])
    // The reboot was asked for (the handler's detached `systemctl reboot` returned): the host never comes back.
    await waitForEvent(
      run,
      json,
      'the reboot command of pi3-worker-1',
      isCommand('pi3-worker-1', 'systemctl reboot'),
      60_000,
    )
    await labStop('pi3-worker-1')
    const res = await finished(run, 'after pi3-worker-1 went down for good', 180_000)
    await labStart('pi3-worker-1')
    const broken = await halfWrittenOn(DEFAULT_HOSTS)

    expect.soft(res.code, res.out).toBe(2)
    expect
      .soft(recapOf(res, 'pi3-worker-1'), recapLine(res.out, 'pi3-worker-1'))
      .toMatchObject({ failed: 1, unreachable: 0 })
    expect
      .soft(res.out)
      .toMatch(
        /FAILED: \[pi3-worker-1\] pi-prep \| handler: Reboot \(pi3-worker-1: pi3-worker-1 did not come back from the reboot within 10s/,
      )
    expect.soft(res.out).toContain('raise reboot_timeout')
    expectOthersFinished(res, 'pi3-worker-1')
    expect.soft(existsSync(retry) && readFileSync(retry, 'utf8'), 'the retry file').toBe('pi3-worker-1\n')
    // Bounded: reboot_timeout, plus at most the one connection attempt in flight when the time is up.
    const end = readEvents(json).find((e) => e.kind === 'step-end' && e.host === 'pi3-worker-1' && e.step === 'Reboot')
    const waited = end?.kind === 'step-end' ? end.ms : Infinity
    expect
      .soft(waited, `the Reboot handler of pi3-worker-1 took ${waited} ms with reboot_timeout=${timeoutS}`)
      .toBeLessThanOrEqual((timeoutS + CONNECT_TIMEOUT_S + 3) * 1000)
    // The edit that asked for the reboot is whole, and the reboot is still owed to the next run.
    expect
      .soft(await onHost('pi3-worker-1', 'cat /boot/firmware/cmdline.txt'))
      .toBe(`${ORIGINAL_CMDLINE} ${CMDLINE_FLAGS.join(' ')}\n`)
    expect.soft(await onHost('pi3-worker-1', 'cat /var/lib/pi-provision/handlers/pi-prep')).toBe('Reboot\n')
    expect(broken).toEqual([])

    // Powered on, the retry file finishes the job: the owed reboot happens now.
    const again = await runPlaybookCli('pi-prep', ['--limit', `@${retry}`, '--retry-file', join(dir, 'again.retry')])
    expect(again.code, again.out).toBe(0)
    expect(again.out).toMatch(/changed: \[pi3-worker-1\] pi-prep \| handler: Reboot \(rebooted in [\d.]+s\)/)
    expect(await halfWrittenOn(DEFAULT_HOSTS)).toEqual([])
  })

  it('an SSH connection dropped mid-step: the runner reconnects and runs the step again, exit 0, a rerun is changed=0', async () => {
    const json = join(dir, 'events.json')
    const run = start('pi-prep', ['--json', json, '--retry-file', join(dir, 'r.retry')])
    await waitForEvent(
      run,
      json,
      `step-start of "${INSTALL}" on pi3-worker-2`,
      isStepStart('pi3-worker-2', INSTALL),
      60_000,
    )
    await untilOnHost('pi3-worker-2', 'pgrep -x apt-get', 'apt-get running', 30_000)
    // The pi user's session processes (sshd: pi [priv], sshd: pi@notty), not the listening sshd.
    const kill = await labExec('pi3-worker-2', "pkill -KILL -f '^sshd: pi'")
    expect(kill.code, 'a session of pi was there to kill').toBe(0)
    const res = await finished(run, 'after the SSH session of pi3-worker-2 was killed', 120_000)
    const broken = await halfWrittenOn(DEFAULT_HOSTS)

    expect.soft(res.out).toContain(`WARNING: [pi3-worker-2] connection lost`)
    expect.soft(res.out).toContain(`reconnecting and running "${INSTALL}" again`)
    expect.soft(res.code, res.out).toBe(0)
    for (const h of DEFAULT_HOSTS) expect.soft(recapOf(res, h), recapLine(res.out, h)).toMatchObject(clean)
    expect(broken).toEqual([])

    const again = await runPlaybookCli('pi-prep', ['--retry-file', join(dir, 'again.retry')])
    expect(again.code, again.out).toBe(0)
    for (const h of DEFAULT_HOSTS)
      expect.soft(recapOf(again, h), recapLine(again.out, h)).toMatchObject({ changed: 0, ...clean })
  })

  it('Ctrl-C: no new step starts, the steps in flight finish, the recap is printed, exit 130, nothing half written', async () => {
    const json = join(dir, 'events.json')
    const retry = join(dir, 'r.retry')
    const run = start('site', ['--json', json, '--retry-file', retry])
    // Every host is in its apt step (seconds long): that is what is in flight when Ctrl-C comes.
    for (const h of DEFAULT_HOSTS)
      await waitForEvent(run, json, `step-start of "${INSTALL}" on ${h}`, isStepStart(h, INSTALL), 60_000)
    process.kill(run.pid, 'SIGINT')
    const res = await finished(run, 'after Ctrl-C', 120_000)

    expect(res.code, res.out).toBe(130)
    expect(res.out).toContain('interrupted: finishing the steps in flight, then the recap')
    expect(res.out).toContain('PLAY RECAP')
    expect(res.out).toMatch(/finished in [\d.]+s, exit 130/)
    for (const h of DEFAULT_HOSTS) expect(recapOf(res, h), recapLine(res.out, h)).toMatchObject(clean)

    // The runner marks the moment it took the signal; what follows the mark in the file happened after it
    // (file order, not timestamps: a step may start in the very millisecond the signal comes).
    const events = readEvents(json)
    const mark = events.findIndex((e) => e.kind === 'interrupted')
    expect(mark, 'an "interrupted" event in --json').toBeGreaterThan(0)
    const after = events.slice(mark + 1)
    // No new step (handlers owed by the steps that ran may still run: a host is not left needing a reboot).
    expect(after.filter((e) => e.kind === 'step-start' && !e.handler)).toEqual([])
    expect(after.filter((e) => e.kind === 'play-start')).toEqual([])
    for (const h of DEFAULT_HOSTS) {
      // The step in flight finished: its end is reported, and its work is complete on the host.
      const end = events.find((e) => e.kind === 'step-end' && e.host === h && e.step === INSTALL)
      expect(end, `${h}: end of "${INSTALL}"`).toMatchObject({ status: 'changed' })
      expect(await onHost(h, "dpkg-query -W -f='${Status}' nfs-common")).toBe('install ok installed')
      // The steps after it did not run.
      expect(await onHost(h, '[ -e /etc/modules-load.d/k3s.conf ] && echo written || echo absent')).toBe('absent\n')
      // The reboot cmdline.txt asked for is done, or still owed (written on the host for the next run): never lost.
      const rebooted = events.some(
        (e) => e.kind === 'step-end' && e.host === h && e.step === 'Reboot' && e.status === 'changed',
      )
      const owed = (await onHost(h, 'cat /var/lib/pi-provision/handlers/pi-prep 2>/dev/null; true'))
        .split('\n')
        .includes('Reboot')
      expect(rebooted || owed, `${h}: the reboot for cmdline.txt ran or is owed`).toBe(true)
    }
    expect(await halfWrittenOn(DEFAULT_HOSTS)).toEqual([])
  })
})
