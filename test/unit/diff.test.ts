import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { unifiedDiff } from '../../lib/diff.ts'

let dir: string
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'diff-test-'))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const lines = (n: number, f: (i: number) => string = (i) => `line ${i}`): string =>
  Array.from({ length: n }, (_, i) => `${f(i + 1)}\n`).join('')

/** GNU `diff -U<context>` output without its two header lines, hunk headers written with explicit lengths. */
function gnuHunks(a: string, b: string, context = 3): string[] {
  writeFileSync(join(dir, 'a'), a)
  writeFileSync(join(dir, 'b'), b)
  const r = spawnSync('diff', [`-U${context}`, join(dir, 'a'), join(dir, 'b')], { encoding: 'utf8' })
  expect(r.status).toBe(a === b ? 0 : 1)
  return r.stdout
    .split('\n')
    .slice(2, -1)
    .map((l) =>
      l.replace(
        /^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@$/,
        (_m, a1: string, a2: string | undefined, b1: string, b2: string | undefined) =>
          `@@ -${a1},${a2 ?? '1'} +${b1},${b2 ?? '1'} @@`,
      ),
    )
}

/** Our diff without its two header lines. */
function ourHunks(a: string, b: string, context = 3): string[] {
  return unifiedDiff(a, b, 'f', context).split('\n').slice(2, -1)
}

const headers = (hunks: string[]): string[] => hunks.filter((l) => l.startsWith('@@'))

describe('unifiedDiff', () => {
  it('identical texts give "" (and diff -u agrees there is nothing)', () => {
    expect(unifiedDiff('a\nb\n', 'a\nb\n', '/etc/hosts')).toBe('')
    expect(unifiedDiff('', '', '/etc/hosts')).toBe('')
    expect(gnuHunks('a\nb\n', 'a\nb\n')).toEqual([])
  })

  it('names the file in its header lines', () => {
    const d = unifiedDiff('a\n', 'b\n', '/etc/modules-load.d/k3s.conf')
    expect(d.split('\n').slice(0, 2)).toEqual([
      '--- /etc/modules-load.d/k3s.conf (before)',
      '+++ /etc/modules-load.d/k3s.conf (after)',
    ])
    expect(d.endsWith('\n')).toBe(true)
  })

  it('single-line change: same hunk header and the same lines as diff -u', () => {
    const a = 'a\nb\nc\n'
    const b = 'a\nB\nc\n'
    expect(headers(ourHunks(a, b))).toEqual(['@@ -1,3 +1,3 @@'])
    expect(headers(ourHunks(a, b))).toEqual(headers(gnuHunks(a, b)))
    expect([...ourHunks(a, b)].sort()).toEqual([...gnuHunks(a, b)].sort())
  })

  // BUG (lib/diff.ts): on a tie the walk prefers an insertion, so every replaced line is shown as
  // "+new" ABOVE "-old" (diff -u, git and every reviewer expect "-old" then "+new"):
  //   ours: " a", "+B", "-b", " c"     diff -u: " a", "-b", "+B", " c"
  it('single-line change: the old line comes before the new one, exactly as diff -u', () => {
    expect(ourHunks('a\nb\nc\n', 'a\nB\nc\n')).toEqual(gnuHunks('a\nb\nc\n', 'a\nB\nc\n'))
  })

  it('a block replaced by a longer block: all "-" lines, then all "+" lines, as diff -u', () => {
    const a = lines(10)
    const b = a.replace('line 4\nline 5\n', 'four\nfive\nsix\n')
    expect(ourHunks(a, b)).toEqual(gnuHunks(a, b))
  })

  it('insertion at the start matches diff -u exactly', () => {
    const a = lines(6)
    const b = `first\n${a}`
    expect(ourHunks(a, b)).toEqual(['@@ -1,3 +1,4 @@', '+first', ' line 1', ' line 2', ' line 3'])
    expect(ourHunks(a, b)).toEqual(gnuHunks(a, b))
  })

  it('insertion at the end matches diff -u exactly', () => {
    const a = lines(6)
    const b = `${a}last\n`
    expect(ourHunks(a, b)).toEqual(['@@ -4,3 +4,4 @@', ' line 4', ' line 5', ' line 6', '+last'])
    expect(ourHunks(a, b)).toEqual(gnuHunks(a, b))
  })

  it('deletion in the middle matches diff -u exactly', () => {
    const a = lines(9)
    const b = a.replace('line 5\n', '')
    expect(ourHunks(a, b)).toEqual([
      '@@ -2,7 +2,6 @@',
      ' line 2',
      ' line 3',
      ' line 4',
      '-line 5',
      ' line 6',
      ' line 7',
      ' line 8',
    ])
    expect(ourHunks(a, b)).toEqual(gnuHunks(a, b))
  })

  it('new file and emptied file: @@ -0,0 and +0,0 as diff -u', () => {
    expect(ourHunks('', 'a\nb\n')).toEqual(['@@ -0,0 +1,2 @@', '+a', '+b'])
    expect(ourHunks('', 'a\nb\n')).toEqual(gnuHunks('', 'a\nb\n'))
    expect(ourHunks('a\nb\n', '')).toEqual(['@@ -1,2 +0,0 @@', '-a', '-b'])
    expect(ourHunks('a\nb\n', '')).toEqual(gnuHunks('a\nb\n', ''))
  })

  it('two changes far apart are two hunks, as diff -u', () => {
    const a = lines(20)
    const b = a.replace('line 2\n', 'line 2\nextra A\n').replace('line 18\n', 'line 18\nextra B\n')
    const ours = ourHunks(a, b)
    expect(headers(ours)).toEqual(['@@ -1,5 +1,6 @@', '@@ -16,5 +17,6 @@'])
    expect(ours).toEqual(gnuHunks(a, b))
  })

  it('hunks 7 unchanged lines apart stay separate; 6 apart are merged (like diff -u)', () => {
    const a = lines(20)
    const seven = a.replace('line 4\n', 'line 4\nX\n').replace('line 11\n', 'line 11\nY\n') // 7 lines between X and Y
    expect(headers(ourHunks(a, seven))).toEqual(['@@ -2,6 +2,7 @@', '@@ -9,6 +10,7 @@'])
    expect(ourHunks(a, seven)).toEqual(gnuHunks(a, seven))
    const six = a.replace('line 4\n', 'line 4\nX\n').replace('line 10\n', 'line 10\nY\n') // 6 lines between
    expect(headers(ourHunks(a, six))).toEqual(['@@ -2,12 +2,14 @@'])
    expect(ourHunks(a, six)).toEqual(gnuHunks(a, six))
  })

  it('the context size is honoured (compared with diff -U0 and -U1)', () => {
    const a = lines(10)
    const b = a.replace('line 5\n', 'line 5\nnew\n')
    expect(ourHunks(a, b, 1)).toEqual(['@@ -5,2 +5,3 @@', ' line 5', '+new', ' line 6'])
    expect(ourHunks(a, b, 1)).toEqual(gnuHunks(a, b, 1))
    expect(ourHunks(a, b, 0)).toEqual(gnuHunks(a, b, 0))
  })

  it('no newline at the end: the last line is shown as changed, with the marker diff -u prints after that line', () => {
    const fixed = ourHunks('a\nb\nc', 'a\nb\nc\n')
    expect(fixed).toEqual(['@@ -1,3 +1,3 @@', ' a', ' b', '-c', '\\ No newline at end of file', '+c'])
    expect(fixed).toEqual(gnuHunks('a\nb\nc', 'a\nb\nc\n'))
    const added = ourHunks('a\nb\n', 'a\nb\nc')
    expect(added).toEqual(['@@ -1,2 +1,3 @@', ' a', ' b', '+c', '\\ No newline at end of file'])
    expect(added).toEqual(gnuHunks('a\nb\n', 'a\nb\nc'))
  })

  it('applies with GNU patch: 200 seeded random edits give back the new text', () => {
    let seed = 42
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff
      return seed % n
    }
    const words = ['a', 'b', 'c', 'server', 'agent', '', '# comment']
    for (let t = 0; t < 200; t++) {
      const a = Array.from({ length: rnd(25) }, () => words[rnd(words.length)])
      const b = [...a]
      for (let e = rnd(5); e >= 0; e--) {
        const at = rnd(b.length + 1)
        const op = rnd(3)
        if (op === 0) b.splice(at, 0, words[rnd(words.length)])
        else if (op === 1 && b.length) b.splice(at % b.length, 1)
        else if (b.length) b[at % b.length] = `changed ${t}`
      }
      const oldText = a.map((l) => `${l}\n`).join('')
      const newText = b.map((l) => `${l}\n`).join('')
      const d = unifiedDiff(oldText, newText, 'f')
      if (oldText === newText) {
        expect(d).toBe('')
        continue
      }
      writeFileSync(join(dir, 'old'), oldText)
      const r = spawnSync('patch', ['-s', '-f', '-o', join(dir, 'patched'), join(dir, 'old')], {
        input: d,
        encoding: 'utf8',
      })
      expect(r.stderr + r.stdout, `case ${t}:\n${d}`).toBe('')
      expect(r.status).toBe(0)
      expect(readFileSync(join(dir, 'patched'), 'utf8'), `case ${t}:\n${d}`).toBe(newText)
    }
  })
})
