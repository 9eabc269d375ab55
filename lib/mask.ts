// Every secret value the run learns is registered here; every line of output, JSON event,
// error message and retry file goes through mask() before it leaves the process.

const MASK = '********'
const values = new Set<string>()
let pattern: RegExp | null = null

/**
 * Remember a secret so it is masked everywhere from now on. Short values are ignored: masking "1" would garble all
 * output.
 */
export function registerSecret(value: string): void {
  if (typeof value !== 'string' || value.length < 4 || values.has(value)) return
  values.add(value)
  // Also mask the value as it would appear JSON-escaped or with its trailing newline trimmed.
  const jsonForm = JSON.stringify(value).slice(1, -1)
  if (jsonForm !== value) values.add(jsonForm)
  const trimmed = value.trim()
  if (trimmed.length >= 4) values.add(trimmed)
  pattern = null
}

/**
 * A credential that travels base64-encoded (a kubeconfig's client-key-data): masked as written, decoded, and line
 * by line as decoded (a PEM key printed or logged one line at a time is still the key).
 */
export function registerEncodedSecret(encoded: string): void {
  registerSecret(encoded)
  const decoded = Buffer.from(encoded, 'base64').toString('utf8')
  if (
    decoded.length < 4 ||
    Buffer.from(decoded, 'utf8').toString('base64').replace(/=+$/, '') !== encoded.replace(/\s/g, '').replace(/=+$/, '')
  )
    return
  registerSecret(decoded)
  // PEM armour lines ("-----BEGIN ... KEY-----") are not secret; the base64 body lines are.
  for (const line of decoded.split('\n'))
    if (!line.startsWith('-----') && line.trim().length >= 16) registerSecret(line.trim())
}

export function mask(text: string): string {
  if (values.size === 0 || !text) return text
  if (!pattern) {
    // Longest first, so a secret that contains another is masked whole.
    const sorted = [...values].sort((a, b) => b.length - a.length)
    pattern = new RegExp(sorted.map(escapeRegExp).join('|'), 'g')
  }
  return text.replace(pattern, MASK)
}

/** For tests only: forget every registered secret. */
export function resetSecretsForTest(): void {
  values.clear()
  pattern = null
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
