// The live reporter on a terminal (ora): what stays on screen after a run, what only flashes by in the spinner,
// and that a secret is masked in both. Driven by events into a fake terminal that records every write.
import { Writable } from 'node:stream'
import { beforeEach, describe, expect, it } from 'vitest'
import { registerSecret, resetSecretsForTest } from '../../lib/mask.ts'
import { canDrawSpinner, TtyReporter } from '../../lib/tty-reporter.ts'

/** A terminal that records what is written, with the cursor calls ora makes. */
class FakeTerminal extends Writable {
  readonly isTTY = true
  readonly columns: number
  constructor(columns = 120) {
    super()
    this.columns = columns
  }
  readonly rows = 40
  text = ''
  override _write(chunk: Buffer | string, _enc: BufferEncoding, done: () => void): void {
    this.text += chunk.toString()
    done()
  }
  cursorTo(x: number): boolean {
    this.text += `\u001B[${x + 1}G`
    return true
  }
  moveCursor(_dx: number, dy: number): boolean {
    this.text += dy < 0 ? `\u001B[${-dy}A` : ''
    return true
  }
  clearLine(): boolean {
    this.text += '\u001B[2K'
    return true
  }
}

const terminal = (columns?: number) => new FakeTerminal(columns)

/** What a terminal shows after all the writes: a tiny emulator of the escapes ora and the reporter use. */
function screenLines(t: FakeTerminal): string[] {
  const lines: string[] = ['']
  let row = 0
  let col = 0
  const put = (ch: string) => {
    const line = lines[row].padEnd(col)
    lines[row] = line.slice(0, col) + ch + line.slice(col + 1)
    col++
  }
  for (let i = 0; i < t.text.length; i++) {
    const c = t.text[i]
    if (c === '\u001B') {
      const m = /^\u001B\[([0-9;?]*)([A-Za-z])/.exec(t.text.slice(i))
      if (!m) continue
      i += m[0].length - 1
      const n = Number(m[1] || '1')
      if (m[2] === 'G') col = n - 1
      else if (m[2] === 'K') lines[row] = ''
      else if (m[2] === 'A') row = Math.max(0, row - n)
      continue
    }
    if (c === '\n') {
      row++
      col = 0
      if (lines.length <= row) lines.push('')
    } else if (c === '\r') col = 0
    else put(c)
  }
  return lines.map((l) => l.trimEnd())
}

beforeEach(() => resetSecretsForTest())

describe('the live reporter on a terminal', () => {
  it('shows what each host is doing while it runs; leaves changed and failed steps and the recap on screen, not ok ones; masks secrets', async () => {
    registerSecret('s3cr3t-token-value')
    const t = terminal()
    const rep = new TtyReporter({ verbosity: 0, showDiff: false, terminal: t as unknown as NodeJS.WriteStream })
    rep.emit({ kind: 'step-start', host: 'pi-k3s', role: 'k3s-server', step: 'Install k3s', handler: false })
    rep.emit({
      kind: 'step-start',
      host: 'pi3-worker-1',
      role: 'k3s-agent',
      step: 'Join the cluster with s3cr3t-token-value',
      handler: false,
    })
    await new Promise((r) => setTimeout(r, 250)) // the spinner redraws on its own timer
    const whileRunning = t.text
    rep.emit({
      kind: 'step-end',
      host: 'pi3-worker-1',
      role: 'k3s-agent',
      step: 'Join the cluster',
      handler: false,
      status: 'ok',
      ms: 5,
    })
    rep.emit({
      kind: 'step-end',
      host: 'pi-k3s',
      role: 'k3s-server',
      step: 'Install k3s',
      handler: false,
      status: 'changed',
      message: 'install k3s v1.34.3+k3s1 with token s3cr3t-token-value',
      ms: 9,
    })
    rep.emit({
      kind: 'recap',
      hosts: {
        'pi-k3s': { ok: 1, changed: 1, unreachable: 0, failed: 0, skipped: 0 },
        'pi3-worker-1': { ok: 1, changed: 0, unreachable: 0, failed: 0, skipped: 0 },
      },
      seconds: 1.2,
      exitCode: 0,
    })
    rep.close()
    // the spinner named both hosts and their steps
    expect(whileRunning).toContain('[pi-k3s] k3s-server | Install k3s')
    expect(whileRunning).toContain('[pi3-worker-1] k3s-agent | Join the cluster with ********')
    const lines = screenLines(t)
    expect(lines).toContain('changed: [pi-k3s] k3s-server | Install k3s (install k3s v1.34.3+k3s1 with token ********)')
    expect(lines.some((l) => l.startsWith('ok: [pi3-worker-1]'))).toBe(false)
    expect(lines.some((l) => /^pi-k3s +: ok=1 +changed=1 +unreachable=0 +failed=0 +skipped=0$/.test(l))).toBe(true)
    expect(t.text).not.toContain('s3cr3t-token-value')
  })

  it('with -v the ok steps stay too', () => {
    const t = terminal()
    const rep = new TtyReporter({ verbosity: 1, showDiff: false, terminal: t as unknown as NodeJS.WriteStream })
    rep.emit({ kind: 'step-start', host: 'pi-k3s', role: 'pi-prep', step: 'Set the hostname', handler: false })
    rep.emit({
      kind: 'step-end',
      host: 'pi-k3s',
      role: 'pi-prep',
      step: 'Set the hostname',
      handler: false,
      status: 'ok',
      ms: 3,
    })
    rep.close()
    expect(screenLines(t)).toContain('ok: [pi-k3s] pi-prep | Set the hostname')
  })
})

describe('when to draw the spinner', () => {
  it('only on a terminal that knows its width, outside CI (a sizeless pseudo-terminal made the redraw loop for ever)', () => {
    expect(canDrawSpinner({ isTTY: true, columns: 120 }, {})).toBe(true)
    expect(canDrawSpinner({ isTTY: true, columns: 0 }, {})).toBe(false)
    expect(canDrawSpinner({ isTTY: true, columns: 120 }, { CI: 'true' })).toBe(false)
    expect(canDrawSpinner({ isTTY: false, columns: 120 }, {})).toBe(false)
  })

  it('each host line is cut to the width, so a long step name never wraps', async () => {
    const t = terminal(40)
    const rep = new TtyReporter({ verbosity: 0, showDiff: false, terminal: t as unknown as NodeJS.WriteStream })
    rep.emit({
      kind: 'step-start',
      host: 'pi3-worker-2',
      role: 'k3s-agent',
      step: 'Wait until the server reports this node Ready with its labels and taints',
      handler: false,
    })
    await new Promise((r) => setTimeout(r, 150))
    rep.close()
    expect(t.text).toContain('[pi3-worker-2] k3s-agent | Wait unt…') // 36 characters: 40 columns less the spinner's
    expect(t.text).not.toContain('Ready with its labels')
  })
})
