// A small unified diff for the files this tool edits (config files: tens to hundreds of lines).

export function unifiedDiff(oldText: string, newText: string, path: string, context = 3): string {
  if (oldText === newText) return ''
  const a = splitLines(oldText)
  const b = splitLines(newText)
  // Longest common subsequence table, from the end, so the walk below goes forwards.
  const n = a.length
  const m = b.length
  const lcs: Uint32Array[] = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1))
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--) lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1])
  type Op = { t: ' ' | '-' | '+'; line: string; ai: number; bi: number }
  const ops: Op[] = []
  let i = 0
  let j = 0
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) ops.push({ t: ' ', line: a[i], ai: i++, bi: j++ })
    // On a tie take the removal first, so a replaced line reads "-old" then "+new", as diff -u prints it.
    else if (i < n && (j >= m || lcs[i + 1][j] >= lcs[i][j + 1])) ops.push({ t: '-', line: a[i], ai: i++, bi: j })
    else ops.push({ t: '+', line: b[j], ai: i, bi: j++ })
  }
  const out = [`--- ${path} (before)`, `+++ ${path} (after)`]
  let k = 0
  while (k < ops.length) {
    if (ops[k].t === ' ') {
      k++
      continue
    }
    let start = Math.max(0, k - context)
    let end = k
    // Extend the hunk while changes are within 2*context lines of each other.
    while (end < ops.length) {
      if (ops[end].t !== ' ') {
        end++
        continue
      }
      let run = 0
      while (end + run < ops.length && ops[end + run].t === ' ') run++
      if (end + run >= ops.length || run > 2 * context) {
        end = Math.min(ops.length, end + Math.min(run, context))
        break
      }
      end += run
    }
    const hunk = ops.slice(start, end)
    const aStart = hunk[0].ai + 1
    const bStart = hunk[0].bi + 1
    const aLen = hunk.filter((o) => o.t !== '+').length
    const bLen = hunk.filter((o) => o.t !== '-').length
    out.push(`@@ -${aLen === 0 ? aStart - 1 : aStart},${aLen} +${bLen === 0 ? bStart - 1 : bStart},${bLen} @@`)
    for (const o of hunk) out.push(`${o.t}${o.line}`)
    k = end
    start = end
  }
  return out.join('\n') + '\n'
}

function splitLines(text: string): string[] {
  if (text === '') return []
  const lines = text.split('\n')
  if (lines[lines.length - 1] === '') lines.pop()
  else lines[lines.length - 1] += '\\ (no newline at end of file)'
  return lines
}
