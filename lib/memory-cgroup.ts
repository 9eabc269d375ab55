// The memory cgroup k3s needs (kernel 6.12 Pi OS: off unless asked for): whether the running kernel has it (cgroup
// v1 or v2), and when not, why, from the running kernel's command line against cmdline.txt.

/** A token of the kernel command line that turns the memory cgroup on (+1) or off (-1), or says nothing (0). */
export function memoryCgroupVote(token: string): number {
  const [key, value = ''] = token.split('=')
  const names = value.split(',')
  if (key === 'cgroup_disable' && (names.includes('memory') || names.includes('all'))) return -1
  if (key === 'cgroup_enable' && names.includes('memory')) return 1
  if (key === 'cgroup_memory') return value === '0' ? -1 : value === '1' ? 1 : 0
  return 0
}

/**
 * Why the memory cgroup is off, from the running kernel's command line (/proc/cmdline) against cmdline.txt: flags
 * of ours the kernel was not given, and the arguments that turn it off after (or without) ours, and whether
 * cmdline.txt or something else (the firmware, the bootloader) put them there.
 */
export function explainCmdline(running: string, file: string, wanted: readonly string[]): string[] {
  const run = running.trim().split(/\s+/).filter(Boolean)
  const mine = new Set((file.split('\n')[0] ?? '').trim().split(/\s+/).filter(Boolean))
  const notes: string[] = []
  const missing = wanted.filter((w) => !run.includes(w))
  if (missing.length)
    notes.push(
      `the running kernel was not started with ${missing.join(' ')} (/proc/cmdline lacks them): ` +
        'not rebooted since cmdline.txt changed, or the bootloader read another cmdline.txt',
    )
  const lastOn = run.reduce((at, t, i) => (memoryCgroupVote(t) > 0 ? i : at), -1)
  run.forEach((t, i) => {
    if (memoryCgroupVote(t) >= 0) return
    const from = mine.has(t) ? 'cmdline.txt itself' : 'not in cmdline.txt: the firmware or bootloader added it'
    const when =
      i > lastOn ? (lastOn < 0 ? 'and nothing turns it on' : 'after the flags that turn it on, so it wins') : ''
    if (i > lastOn) notes.push(`"${t}" in /proc/cmdline turns the memory cgroup off (${from}), ${when}`)
  })
  return notes
}

// cgroup v2 lists its controllers in one file; v1 (older Pi OS) has a column "enabled" in /proc/cgroups.
export const MEMORY_CGROUP_PROBE =
  'if [ -f /sys/fs/cgroup/cgroup.controllers ]; then echo v2; cat /sys/fs/cgroup/cgroup.controllers; ' +
  'else echo v1; cat /proc/cgroups; fi'

export function parseMemoryCgroup(stdout: string): { ok: boolean; detail: string } {
  const [version, ...rest] = stdout.trim().split('\n')
  if (version === 'v2') {
    const controllers = (rest[0] ?? '').trim()
    return { ok: /\bmemory\b/.test(controllers), detail: `cgroup v2, controllers: ${controllers || 'none'}` }
  }
  const row = rest.map((l) => l.trim().split(/\s+/)).find((cols) => cols[0] === 'memory')
  if (!row) return { ok: false, detail: 'cgroup v1 without a memory controller' }
  return { ok: row[3] === '1', detail: `cgroup v1, memory controller ${row[3] === '1' ? 'enabled' : 'disabled'}` }
}
