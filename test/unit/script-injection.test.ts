// Values from the inventory, the CLI or a host reach remote scripts only as quoted words. Two guards: a scan of
// the code for values interpolated into a double-quoted shell string (where $(...) and `...` still run), and
// script builders run for real under sh with hostile values, checking nothing they hold was executed.

import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { LocalConnection } from '../../lib/connection.ts'
import { fluxInstallScript } from '../../lib/flux-cli.ts'

const ROOT = join(import.meta.dirname, '..', '..')

/** Every `${expr}` inside a "double-quoted" part of a shell-building template literal in the product's code. */
function doubleQuotedInterpolations(): { where: string; expr: string }[] {
  const files = ['roles', 'lib', 'playbooks'].flatMap((d) =>
    readdirSync(join(ROOT, d))
      .filter((f) => /\.m?ts$/.test(f))
      .map((f) => join(d, f)),
  )
  const out: { where: string; expr: string }[] = []
  for (const f of files) {
    readFileSync(join(ROOT, f), 'utf8')
      .split('\n')
      .forEach((line, i) => {
        // Only lines that build shell: a template literal with shell syntax in it; messages for people are not shell.
        // The shell syntax must be in the literal's text, not in the JavaScript of its ${...} (a `a || b` there).
        const text = line.replace(/\$\{[^}]*\}/g, '')
        if (!line.includes('`') || !/(\becho\b|\bprintf\b|>&2|\bif \[|\$\(|&&|\|\|)/.test(text)) return
        if (/ProvisionError\(|\bfail\(|\bmessage:|\bemit\(/.test(line)) return
        for (const expr of interpolationsInDoubleQuotes(line.slice(line.indexOf('`') + 1)))
          out.push({ where: `${f}:${i + 1}`, expr })
      })
  }
  return out
}

/** Walk shell text as sh would quote it ('...' literal, "..." interpolating) and collect `${expr}` met inside "...". */
function interpolationsInDoubleQuotes(text: string): string[] {
  const found: string[] = []
  let state: 'plain' | 'single' | 'double' = 'plain'
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (c === '\\') {
      i++
      continue
    }
    if (c === '$' && text[i + 1] === '{') {
      let depth = 1
      let j = i + 2
      for (; j < text.length && depth > 0; j++) depth += text[j] === '{' ? 1 : text[j] === '}' ? -1 : 0
      if (state === 'double') found.push(text.slice(i + 2, j - 1))
      i = j - 1
      continue
    }
    if (c === '`') return found // the template literal ends
    if (state === 'plain' && c === "'") state = 'single'
    else if (state === 'single' && c === "'") state = 'plain'
    else if (state === 'plain' && c === '"') state = 'double'
    else if (state === 'double' && c === '"') state = 'plain'
  }
  return found
}

describe('values in remote scripts', () => {
  it('are never interpolated inside a double-quoted shell string (only constants and numbers may be)', () => {
    // Constants of the tool's own (UPPER_CASE) and loop indexes are not input; anything else must go through quote().
    const unsafe = doubleQuotedInterpolations().filter(
      ({ expr }) => !/^[A-Z][A-Z0-9_]*$/.test(expr) && !/^(i|head\(i\))$/.test(expr),
    )
    expect(unsafe).toEqual([])
  })

  it('the flux download script runs nothing a hostile flux_url, version or checksum holds', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'inject-'))
    const mark = join(dir, 'pwned')
    // A curl that "downloads" a file wherever -o says, so the script reaches its checksum and version checks.
    const bin = join(dir, 'bin')
    const stub = `#!/bin/sh\nwhile [ $# -gt 0 ]; do if [ "$1" = -o ]; then shift; echo not-flux > "$1"; fi; shift; done\n`
    mkdirSync(bin)
    writeFileSync(join(bin, 'curl'), stub)
    chmodSync(join(bin, 'curl'), 0o755)
    const url = `http://203.0.113.9/$(touch ${mark})/\`touch ${mark}\`/'x'/flux.tar.gz`
    const script = fluxInstallScript(url, `2.7.3$(touch ${mark})`, 'a'.repeat(64))
    const r = await new LocalConnection().run(`PATH=${bin}:$PATH\n${script}`)
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`sha256 of ${url} is`) // the URL is shown as written, not run
    expect(existsSync(mark)).toBe(false)
  })
})
