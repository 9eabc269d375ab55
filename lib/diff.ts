// Unified diffs of the files this tool edits (--diff), in the shape `diff -u` and git print: jsdiff computes the
// hunks (Myers' algorithm, linear space), this file only writes the headers the reports use.

import { structuredPatch } from 'diff'

export function unifiedDiff(oldText: string, newText: string, path: string, context = 3): string {
  if (oldText === newText) return ''
  const patch = structuredPatch(path, path, oldText, newText, undefined, undefined, { context })
  const out = [`--- ${path} (before)`, `+++ ${path} (after)`]
  for (const h of patch.hunks) {
    // diff -u's convention: an empty side starts at the line before it (0 for an empty file).
    const oldStart = h.oldLines === 0 ? h.oldStart - 1 : h.oldStart
    const newStart = h.newLines === 0 ? h.newStart - 1 : h.newStart
    out.push(`@@ -${oldStart},${h.oldLines} +${newStart},${h.newLines} @@`, ...h.lines)
  }
  return out.join('\n') + '\n'
}
