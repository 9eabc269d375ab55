import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LocalConnection, type Connection, type RunOptions, type RunResult } from '../../lib/connection.ts'
import { defineFact, FactCache, splitBatch, type Fact } from '../../lib/facts.ts'

/** Runs a script with the controller's real sh. */
const localSh = new LocalConnection()
function sh(script: string, stdin = ''): Promise<RunResult> {
  return localSh.run(script, { stdin })
}

/** A Connection that records every script and answers with a real `sh -c` (or a canned answer). */
class RecordingConnection implements Connection {
  readonly host = 'pi3-worker-1'
  readonly scripts: string[] = []
  private readonly answer: (script: string) => Promise<RunResult>

  constructor(answer: (script: string) => Promise<RunResult> = (s) => sh(s)) {
    this.answer = answer
  }

  run(script: string, _opts?: RunOptions): Promise<RunResult> {
    this.scripts.push(script)
    return this.answer(script)
  }

  async reset(): Promise<void> {}
  async close(): Promise<void> {}
}

/**
 * Run fn with Node's unhandled-rejection reporting (vitest's included) replaced by a recorder; returns what
 * was recorded. Lets a test look at unhandled rejections instead of having them fail the whole run.
 */
async function recordUnhandledRejections(fn: () => Promise<void>): Promise<unknown[]> {
  const unhandled: unknown[] = []
  const saved = process.listeners('unhandledRejection')
  process.removeAllListeners('unhandledRejection')
  const record = (e: unknown): void => {
    unhandled.push(e)
  }
  process.on('unhandledRejection', record)
  try {
    await fn()
    await new Promise((r) => setTimeout(r, 20))
  } finally {
    process.off('unhandledRejection', record)
    for (const l of saved) process.on('unhandledRejection', l)
  }
  return unhandled
}

/** A fact whose value is exactly what the cache handed its parser. */
const raw = (key: string, script: string): Fact<RunResult> => defineFact(key, script, (r) => ({ ...r }))

let dir: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'facts-test-'))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('FactCache.get', () => {
  it('runs the fact script once and caches the parsed value', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    const hostname = defineFact('greeting', "printf 'hello\\n'", (r) => r.stdout.trim())
    expect(await facts.get(hostname)).toBe('hello')
    expect(await facts.get(hostname)).toBe('hello')
    expect(conn.scripts).toEqual(["printf 'hello\\n'"])
    expect(facts.roundTrips).toBe(1)
  })

  it('the same key is the same question, whatever object asks it', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    await facts.get(defineFact('k', 'printf one', (r) => r.stdout))
    expect(await facts.get(defineFact('k', 'printf two', (r) => r.stdout))).toBe('one')
    expect(conn.scripts).toHaveLength(1)
  })

  it('concurrent gets of one fact share one round trip', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    const f = defineFact('slow', 'sleep 0.1; printf done', (r) => r.stdout)
    expect(await Promise.all([facts.get(f), facts.get(f), facts.get(f)])).toEqual(['done', 'done', 'done'])
    expect(conn.scripts).toHaveLength(1)
    expect(facts.roundTrips).toBe(1)
  })

  it('the parser sees the exit code, stdout and stderr of the run', async () => {
    const facts = new FactCache(new RecordingConnection())
    expect(await facts.get(raw('fail', 'printf out; printf err >&2; exit 4'))).toEqual({
      code: 4,
      stdout: 'out',
      stderr: 'err',
    })
  })

  it('a connection error rejects the get and is not cached: the next get tries again', async () => {
    let calls = 0
    const conn = new RecordingConnection(async (s) => {
      calls++
      if (calls === 1) throw new Error('connection lost')
      return sh(s)
    })
    const facts = new FactCache(conn)
    const f = defineFact('x', 'printf ok', (r) => r.stdout)
    await expect(facts.get(f)).rejects.toThrow('connection lost')
    expect(await facts.get(f)).toBe('ok')
    expect(conn.scripts).toHaveLength(2)
  })
})

describe('FactCache.gather', () => {
  const batch: Record<string, { script: string; expected: { code: number; stdout: string } }> = {
    withNewline: { script: "printf 'hello\\n'", expected: { code: 0, stdout: 'hello\n' } },
    noNewline: { script: "printf 'no newline'", expected: { code: 0, stdout: 'no newline' } },
    saysRc: { script: "printf 'rc 0\\nrc\\n__FACT_rc 1\\n'", expected: { code: 0, stdout: 'rc 0\nrc\n__FACT_rc 1\n' } },
    empty: { script: 'true', expected: { code: 0, stdout: '' } },
    onlyNewlines: { script: "printf '\\n\\n'", expected: { code: 0, stdout: '\n\n' } },
    failing: { script: "printf 'partial'; exit 3", expected: { code: 3, stdout: 'partial' } },
    failingQuiet: { script: 'echo "to stderr" >&2; false', expected: { code: 1, stdout: '' } },
    trailingComment: { script: 'printf kept # a comment', expected: { code: 0, stdout: 'kept' } },
    multiline: { script: 'for i in 1 2 3; do\n  echo "n=$i"\ndone', expected: { code: 0, stdout: 'n=1\nn=2\nn=3\n' } },
    afterExit: { script: "printf 'still answered'", expected: { code: 0, stdout: 'still answered' } },
  }

  it('one round trip for many facts; each keeps its own stdout and exit code', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    const list = Object.entries(batch).map(([k, v]) => raw(k, v.script))
    await facts.gather(list)
    expect(conn.scripts).toHaveLength(1)
    expect(facts.roundTrips).toBe(1)
    for (const [k, v] of Object.entries(batch))
      expect({ fact: k, ...(await facts.get(raw(k, 'exit 99'))) }).toEqual({ fact: k, ...v.expected, stderr: '' })
    expect(conn.scripts).toHaveLength(1) // every get above came from the cache
  })

  it('the batch is one POSIX script: it also runs under dash when sent as one command', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    await facts.gather([raw('a', 'printf a'), raw('b', 'printf b')])
    const r = await sh(conn.scripts[0])
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/^__FACT_\w+__ 0\na\n__FACT_\w+__rc 0\n__FACT_\w+__ 1\nb\n__FACT_\w+__rc 0\n$/)
  })

  it('the facts of a batch run side by side: one waits for a file another creates', async () => {
    // Run one after another, "waits" would give up (exit 1) before "creates" ever ran.
    const flag = join(dir, 'side-by-side')
    const facts = new FactCache(new RecordingConnection())
    const waits = raw(
      'waits',
      `i=0; while [ ! -e ${flag} ]; do i=$((i+1)); [ $i -gt 500 ] && exit 1; sleep 0.01; done; printf saw`,
    )
    const creates = raw('creates', `touch ${flag}; printf made`)
    await facts.gather([waits, creates])
    expect(await facts.get(waits)).toEqual({ code: 0, stdout: 'saw', stderr: '' })
    expect(await facts.get(creates)).toEqual({ code: 0, stdout: 'made', stderr: '' })
  })

  it('where no temp dir can be made (read-only or full disk), the facts run one after another with the same answers', async () => {
    const conn = new RecordingConnection((script) => sh(`mktemp() { return 1; }\n${script}`))
    const facts = new FactCache(conn)
    const list = Object.entries(batch).map(([k, v]) => raw(k, v.script))
    await facts.gather(list)
    for (const [k, v] of Object.entries(batch))
      expect({ fact: k, ...(await facts.get(raw(k, 'exit 99'))) }).toEqual({ fact: k, ...v.expected, stderr: '' })
  })

  it('the text of each fact is sent once, whichever way the batch runs it', async () => {
    const conn = new RecordingConnection()
    await new FactCache(conn).gather([raw('a', 'printf unique-a'), raw('b', 'printf unique-b')])
    expect(conn.scripts[0].match(/unique-a/g)).toHaveLength(1)
    expect(conn.scripts[0].match(/unique-b/g)).toHaveLength(1)
  })

  it('a fact that exits its shell does not end the batch', async () => {
    const facts = new FactCache(new RecordingConnection())
    await facts.gather([raw('quits', 'exit 5'), raw('next', 'printf next')])
    expect(await facts.get(raw('quits', ''))).toEqual({ code: 5, stdout: '', stderr: '' })
    expect(await facts.get(raw('next', ''))).toEqual({ code: 0, stdout: 'next', stderr: '' })
  })

  it('skips facts already known and asks each new key once', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    await facts.get(raw('known', 'printf known'))
    await facts.gather([raw('known', 'printf known'), raw('a', 'printf A'), raw('a', 'printf A'), raw('b', 'printf B')])
    expect(conn.scripts).toHaveLength(2)
    expect(conn.scripts[1]).not.toContain('printf known')
    expect(conn.scripts[1].match(/printf A/g)).toHaveLength(1)
    expect((await facts.get(raw('a', ''))).stdout).toBe('A')
    expect((await facts.get(raw('b', ''))).stdout).toBe('B')
  })

  it('nothing new: no round trip; one new fact: sent as it is, without batch markers', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    await facts.get(raw('a', 'printf A'))
    await facts.gather([raw('a', 'printf A')])
    expect(conn.scripts).toHaveLength(1)
    await facts.gather([raw('a', 'printf A'), raw('b', 'printf B')])
    expect(conn.scripts).toEqual(['printf A', 'printf B'])
    expect(facts.roundTrips).toBe(2)
  })

  it('a get while a gather is in flight waits for the batch instead of asking again', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    const g = facts.gather([raw('a', 'sleep 0.1; printf A'), raw('b', 'printf B')])
    const a = await facts.get(raw('a', 'printf OTHER'))
    await g
    expect(a.stdout).toBe('A')
    expect(conn.scripts).toHaveLength(1)
  })

  it('a canned reply that lacks a fact gives that fact code 255 and no output', async () => {
    const conn = new RecordingConnection(async (script) => {
      const marker = /(__FACT_\w+__) 0/.exec(script)?.[1] ?? ''
      return { code: 0, stdout: `${marker} 0\nfirst\n${marker}rc 0\n`, stderr: '' }
    })
    const facts = new FactCache(conn)
    await facts.gather([raw('a', 'printf first'), raw('b', 'printf second')])
    expect(await facts.get(raw('a', ''))).toEqual({ code: 0, stdout: 'first', stderr: '' })
    expect(await facts.get(raw('b', ''))).toEqual({ code: 255, stdout: '', stderr: '' })
  })

  it('a connection lost during gather rejects the gather, and the facts can be asked again', async () => {
    let calls = 0
    const conn = new RecordingConnection(async (s) => {
      calls++
      if (calls === 1) return Promise.reject(new Error('connection lost'))
      return sh(s)
    })
    const facts = new FactCache(conn)
    // (unhandled rejections are recorded and ignored here: the test below is about them)
    await recordUnhandledRejections(async () => {
      await expect(facts.gather([raw('a', 'printf A'), raw('b', 'printf B')])).rejects.toThrow('connection lost')
    })
    expect((await facts.get(raw('a', 'printf A'))).stdout).toBe('A')
    expect(conn.scripts).toHaveLength(2)
  })

  // BUG (lib/facts.ts gather): for each fact in the batch it stores `p.then(...)` in `pending`. When the
  // round trip fails, those derived promises reject with nobody listening, so besides the rejection the
  // caller catches, Node reports one unhandled rejection per fact, and a plain `node` process (default
  // --unhandled-rejections=throw) exits with code 1: one unreachable host during "Gather facts" kills the run
  // for every host instead of being recorded as that host's failure.
  it('a connection lost during gather leaves no unhandled rejection behind', async () => {
    const unhandled = await recordUnhandledRejections(async () => {
      const facts = new FactCache(new RecordingConnection(() => Promise.reject(new Error('connection lost'))))
      await expect(facts.gather([raw('a', 'printf A'), raw('b', 'printf B')])).rejects.toThrow('connection lost')
    })
    expect(unhandled).toEqual([])
  })
})

describe('FactCache.invalidate', () => {
  it('drops the cache: the next get asks the host again and sees the change', async () => {
    const file = join(dir, 'state')
    writeFileSync(file, 'before')
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    const f = defineFact('state', `cat '${file}'`, (r) => r.stdout)
    expect(await facts.get(f)).toBe('before')
    writeFileSync(file, 'after')
    expect(await facts.get(f)).toBe('before') // cached: stale until invalidated
    facts.invalidate()
    expect(await facts.get(f)).toBe('after')
    expect(facts.roundTrips).toBe(2)
  })

  it('after invalidate, gather batches the facts again', async () => {
    const conn = new RecordingConnection()
    const facts = new FactCache(conn)
    const list = [raw('a', 'printf A'), raw('b', 'printf B')]
    await facts.gather(list)
    await facts.gather(list)
    expect(conn.scripts).toHaveLength(1)
    facts.invalidate()
    await facts.gather(list)
    expect(conn.scripts).toHaveLength(2)
  })
})

describe('splitBatch', () => {
  const M = '__FACT_test__'

  it('splits stdout by marker, keeping each body byte for byte and each code', () => {
    const out = `${M} 0\nhello\n\n${M}rc 0\n${M} 1\nno newline\n${M}rc 3\n${M} 2\n\n${M}rc 0\n`
    expect(splitBatch(out, M, 3)).toEqual([
      { stdout: 'hello\n', code: 0 },
      { stdout: 'no newline', code: 3 },
      { stdout: '', code: 0 },
    ])
  })

  it('a body that mentions rc or a marker-like word is not cut', () => {
    const out = `${M} 0\nrc 1\n__FACT_other__rc 2\n\n${M}rc 0\n`
    expect(splitBatch(out, M, 1)).toEqual([{ stdout: 'rc 1\n__FACT_other__rc 2\n', code: 0 }])
  })

  it('stops at the first missing or unterminated part', () => {
    expect(splitBatch(`${M} 0\na\n${M}rc 0\n${M} 1\nb`, M, 2)).toEqual([{ stdout: 'a', code: 0 }])
    expect(splitBatch('', M, 2)).toEqual([])
  })

  it('an unreadable exit code reads as 255; a missing final newline is fine', () => {
    expect(splitBatch(`${M} 0\na\n${M}rc x\n`, M, 1)).toEqual([{ stdout: 'a', code: 255 }])
    expect(splitBatch(`${M} 0\na\n${M}rc 7`, M, 1)).toEqual([{ stdout: 'a', code: 7 }])
  })
})
