// Colour in the Ansible-like output (zx's chalk): when it is on (a terminal, NO_COLOR, FORCE_COLOR, TERM=dumb),
// which line gets which colour, that the text under the colour is the plain text, and that --json and a caller's
// own writer never get escapes. And when the spinner animates (not on a dumb terminal, not in CI).

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { afterAll, beforeEach, describe, expect, it } from 'vitest'
import { registerSecret, resetSecretsForTest } from '../../lib/mask.ts'
import { useColour } from '../../lib/palette.ts'
import { createReporter, PlainReporter } from '../../lib/reporter.ts'
import type { RunEvent } from '../../lib/run-events.ts'
import { canDrawSpinner, TtyReporter } from '../../lib/tty-reporter.ts'

/** A stream that records what is written: a terminal (isTTY, a width) or a pipe. */
class Sink extends Writable {
  readonly isTTY: boolean
  readonly columns: number | undefined
  readonly rows = 40
  text = ''
  constructor(tty: boolean) {
    super()
    this.isTTY = tty
    this.columns = tty ? 120 : undefined
  }
  override _write(chunk: Buffer | string, _enc: BufferEncoding, done: () => void): void {
    this.text += chunk.toString()
    done()
  }
  // The cursor calls ora makes on a terminal.
  cursorTo(): boolean {
    return true
  }
  moveCursor(): boolean {
    return true
  }
  clearLine(): boolean {
    return true
  }
  get stream(): NodeJS.WriteStream {
    return this as unknown as NodeJS.WriteStream
  }
}

const SGR = /\u001B\[[0-9;]*m/
const SGR_ALL = /\u001B\[[0-9;]*m/g
const ESC = '\u001B'
const yellow = (s: string) => `${ESC}[33m${s}${ESC}[39m`
const green = (s: string) => `${ESC}[32m${s}${ESC}[39m`
const red = (s: string) => `${ESC}[31m${s}${ESC}[39m`
const cyan = (s: string) => `${ESC}[36m${s}${ESC}[39m`
const magenta = (s: string) => `${ESC}[35m${s}${ESC}[39m`

const stepEnd = (status: 'ok' | 'changed' | 'failed' | 'skipped', message?: string): RunEvent => ({
  kind: 'step-end',
  host: 'pi-k3s',
  role: 'pi-prep',
  step: 'Set the hostname',
  handler: false,
  status,
  message,
  ms: 4,
})

/** A run's worth of events: every kind of line that has a colour, and the recap. */
const RUN: RunEvent[] = [
  { kind: 'play-start', play: 'Prepare the Pis', hosts: ['pi-k3s', 'pi3-worker-1'] },
  stepEnd('ok'),
  stepEnd('changed', 'set to pi-k3s'),
  stepEnd('skipped', 'not a Pi 4'),
  stepEnd('failed', 'exit 1'),
  { kind: 'unreachable', host: 'pi3-worker-1', message: 'no route to host' },
  { kind: 'warning', host: 'pi-k3s', message: 'backup check: no backup' },
  { kind: 'play-start', play: 'Join the agents', hosts: [] },
  {
    kind: 'recap',
    hosts: {
      'pi-k3s': { ok: 1, changed: 1, unreachable: 0, failed: 1, skipped: 1 },
      'pi3-worker-1': { ok: 0, changed: 0, unreachable: 1, failed: 0, skipped: 0 },
    },
    seconds: 1.5,
    exitCode: 2,
  },
]

/** The lines a plain reporter writes for these events. */
function plainLines(events: RunEvent[]): string[] {
  const lines: string[] = []
  const rep = new PlainReporter({ verbosity: 0, showDiff: false, write: (l) => lines.push(l) })
  for (const e of events) rep.emit(e)
  return lines
}

async function run(env: Record<string, string | undefined>, tty: boolean, events = RUN): Promise<Sink> {
  const out = new Sink(tty)
  const rep = await createReporter({ verbosity: 0, showDiff: false, terminal: out.stream, env })
  for (const e of events) rep.emit(e)
  rep.close()
  return out
}

const scratch = mkdtempSync(join(tmpdir(), 'colour-test-'))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))
beforeEach(() => resetSecretsForTest())

describe('when the output is coloured', () => {
  it('on a terminal, not through a pipe; FORCE_COLOR colours a pipe too (0 or false: never); NO_COLOR (not empty) turns it off; TERM=dumb has none', () => {
    const tty = { isTTY: true }
    const pipe = { isTTY: false }
    expect(useColour(tty, { TERM: 'xterm-256color' })).toBe(true)
    expect(useColour(pipe, { TERM: 'xterm-256color' })).toBe(false)
    expect(useColour(pipe, { FORCE_COLOR: '1' })).toBe(true)
    expect(useColour(pipe, { FORCE_COLOR: '' })).toBe(true)
    expect(useColour(tty, { TERM: 'xterm', FORCE_COLOR: '0' })).toBe(false)
    expect(useColour(tty, { TERM: 'xterm', FORCE_COLOR: 'false' })).toBe(false)
    expect(useColour(tty, { TERM: 'xterm', NO_COLOR: '1' })).toBe(false)
    expect(useColour(tty, { TERM: 'xterm', NO_COLOR: '' })).toBe(true)
    expect(useColour(tty, { TERM: 'dumb' })).toBe(false)
    // FORCE_COLOR wins over NO_COLOR, as in Node: the more specific wish of the two
    expect(useColour(pipe, { FORCE_COLOR: '1', NO_COLOR: '1' })).toBe(true)
  })
})

describe('the colours', () => {
  it('with FORCE_COLOR=1 through a pipe: changed yellow, ok green, failed and unreachable red, skipping cyan, warnings magenta; the recap by host and count', async () => {
    const out = await run({ FORCE_COLOR: '1' }, false)
    const lines = out.text.split('\n')
    expect(lines).toContain(yellow('changed: [pi-k3s] pi-prep | Set the hostname (set to pi-k3s)'))
    expect(lines).toContain(green('ok: [pi-k3s] pi-prep | Set the hostname'))
    expect(lines).toContain(cyan('skipping: [pi-k3s] pi-prep | Set the hostname (not a Pi 4)'))
    expect(lines).toContain(red('FAILED: [pi-k3s] pi-prep | Set the hostname (exit 1)'))
    expect(lines).toContain(red('UNREACHABLE: [pi3-worker-1] no route to host'))
    expect(lines).toContain(magenta('WARNING: [pi-k3s] backup check: no backup'))
    expect(lines).toContain(cyan('skipping: no hosts matched'))
    // the recap: a failed host's name red, every count but 0 in its colour, the columns where the plain ones are
    expect(lines).toContain(
      `${red('pi-k3s')}                    : ${green('ok=1')}    ${yellow('changed=1')}    unreachable=0     ` +
        `${red('failed=1')}    ${cyan('skipped=1')}`,
    )
    expect(lines).toContain(
      `${red('pi3-worker-1')}              : ok=0    changed=0    ${red('unreachable=1')}     failed=0    skipped=0`,
    )
    // PLAY lines stay as they are (Ansible's are not coloured either)
    expect(lines).toContain(`PLAY [Prepare the Pis] ${'*'.repeat(45)}`)
    // under the colour, the text is the plain text, line for line
    expect(out.text.replace(SGR_ALL, '').split('\n').slice(0, -1)).toEqual(plainLines(RUN))
  })

  it('a host with only changes is yellow in the recap, one with only ok green', async () => {
    const out = await run({ FORCE_COLOR: '1' }, false, [
      {
        kind: 'recap',
        hosts: {
          a: { ok: 3, changed: 2, unreachable: 0, failed: 0, skipped: 0 },
          b: { ok: 3, changed: 0, unreachable: 0, failed: 0, skipped: 0 },
        },
        seconds: 1,
        exitCode: 0,
      },
    ])
    expect(out.text).toContain(`${yellow('a')}${' '.repeat(25)}: ${green('ok=3')}    ${yellow('changed=2')}`)
    expect(out.text).toContain(`${green('b')}${' '.repeat(25)}: ${green('ok=3')}    changed=0`)
  })

  it('diffs (-D): added lines green, removed red, hunks cyan, the file names plain', async () => {
    const out = new Sink(false)
    const rep = await createReporter({ verbosity: 0, showDiff: true, terminal: out.stream, env: { FORCE_COLOR: '1' } })
    rep.emit({
      ...(stepEnd('changed') as Extract<RunEvent, { kind: 'step-end' }>),
      diff: '--- a/cmdline.txt\n+++ b/cmdline.txt\n@@ -1 +1 @@\n-quiet\n+quiet cgroup_memory=1\n',
    })
    expect(out.text.split('\n')).toEqual([
      yellow('changed: [pi-k3s] pi-prep | Set the hostname'),
      '--- a/cmdline.txt',
      '+++ b/cmdline.txt',
      cyan('@@ -1 +1 @@'),
      red('-quiet'),
      green('+quiet cgroup_memory=1'),
      '',
    ])
  })

  it('a secret in a coloured line is masked', async () => {
    registerSecret('s3cr3t-token-value')
    const out = await run({ FORCE_COLOR: '1' }, false, [stepEnd('changed', 'joined with s3cr3t-token-value')])
    expect(out.text).toBe(`${yellow('changed: [pi-k3s] pi-prep | Set the hostname (joined with ********)')}\n`)
  })
})

describe('no colour', () => {
  it('through a pipe (what the tests and CI logs capture): the plain lines, no escape', async () => {
    const out = await run({ TERM: 'xterm-256color' }, false)
    expect(out.text).not.toContain(ESC)
    expect(out.text.split('\n').slice(0, -1)).toEqual(plainLines(RUN))
  })

  it('with NO_COLOR=1 on a terminal nothing is coloured, the spinner neither; without it the same terminal has colour', async () => {
    const withNoColour = await run({ TERM: 'xterm-256color', NO_COLOR: '1' }, true)
    expect(withNoColour.text).toContain('changed: [pi-k3s] pi-prep | Set the hostname (set to pi-k3s)')
    expect(withNoColour.text).not.toMatch(SGR)
    // while a step runs, the spinner draws its frames: without colour too
    const t = new Sink(true)
    const rep = await createReporter({
      verbosity: 0,
      showDiff: false,
      terminal: t.stream,
      env: { TERM: 'xterm-256color', NO_COLOR: '1' },
    })
    expect(rep).toBeInstanceOf(TtyReporter)
    rep.emit({ kind: 'step-start', host: 'pi-k3s', role: 'pi-prep', step: 'Set the hostname', handler: false })
    await new Promise((r) => setTimeout(r, 250))
    rep.close()
    expect(t.text).toContain('[pi-k3s] pi-prep | Set the hostname')
    expect(t.text).not.toMatch(SGR)
    // the control: the same terminal without NO_COLOR
    const coloured = await run({ TERM: 'xterm-256color' }, true)
    expect(coloured.text).toContain(yellow('changed: [pi-k3s] pi-prep | Set the hostname (set to pi-k3s)'))
  })

  it('never in --json, even with FORCE_COLOR', async () => {
    const file = join(scratch, 'run.json')
    const out = new Sink(false)
    const rep = await createReporter({
      verbosity: 0,
      showDiff: false,
      terminal: out.stream,
      jsonFile: file,
      env: { FORCE_COLOR: '1' },
    })
    for (const e of RUN) rep.emit(e)
    rep.close()
    expect(out.text).toMatch(SGR) // the terminal's lines are coloured
    const json = readFileSync(file, 'utf8')
    expect(json).toContain('"status":"changed"')
    expect(json).not.toContain(ESC)
    expect(json).not.toContain('\\u001b')
  })

  it("a caller's own writer (a test capturing lines) is no terminal: plain even with FORCE_COLOR, unless it asks", async () => {
    const lines: string[] = []
    const rep = await createReporter({
      verbosity: 0,
      showDiff: false,
      write: (l) => lines.push(l),
      env: { FORCE_COLOR: '1' },
    })
    rep.emit(stepEnd('changed'))
    expect(lines).toEqual(['changed: [pi-k3s] pi-prep | Set the hostname'])
    const asked: string[] = []
    const colour = await createReporter({ verbosity: 0, showDiff: false, write: (l) => asked.push(l), colour: true })
    colour.emit(stepEnd('changed'))
    expect(asked).toEqual([yellow('changed: [pi-k3s] pi-prep | Set the hostname')])
  })
})

describe('when the spinner animates', () => {
  it('only on a terminal with a width, not with TERM=dumb, not with CI set (to anything)', () => {
    const tty = { isTTY: true, columns: 120 }
    expect(canDrawSpinner(tty, { TERM: 'xterm-256color' })).toBe(true)
    expect(canDrawSpinner(tty, { TERM: 'dumb' })).toBe(false)
    expect(canDrawSpinner(tty, { TERM: 'xterm', CI: 'true' })).toBe(false)
    expect(canDrawSpinner(tty, { TERM: 'xterm', CI: '' })).toBe(false)
    expect(canDrawSpinner({ isTTY: false, columns: 120 }, { TERM: 'xterm' })).toBe(false)
    expect(canDrawSpinner({ isTTY: true, columns: 0 }, { TERM: 'xterm' })).toBe(false)
  })

  it('a dumb terminal gets plain lines: no spinner frame, no cursor movement, while a step runs', async () => {
    const t = new Sink(true)
    const rep = await createReporter({ verbosity: 0, showDiff: false, terminal: t.stream, env: { TERM: 'dumb' } })
    expect(rep).toBeInstanceOf(PlainReporter)
    rep.emit({ kind: 'step-start', host: 'pi-k3s', role: 'pi-prep', step: 'Set the hostname', handler: false })
    await new Promise((r) => setTimeout(r, 250))
    rep.emit(stepEnd('changed'))
    rep.close()
    expect(t.text).toBe('changed: [pi-k3s] pi-prep | Set the hostname\n')
  })
})
