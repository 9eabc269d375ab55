// Mounts the lab makes (one overlay per host) and the cleanup of any it, or a killed debootstrap, left behind.
import { readFileSync } from 'node:fs'
import { run } from './run.ts'

/** Mount points from /proc/mounts (octal escapes such as \040 decoded). */
export function mountPoints(): string[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(' ')[1].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
}

export function isMounted(dir: string): boolean {
  return mountPoints().includes(dir)
}

/** Unmounts dir and everything below it, deepest first. */
export async function unmountUnder(dir: string): Promise<void> {
  const inside = mountPoints()
    .filter((m) => m === dir || m.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length)
  for (const m of inside) {
    // Lazy as a fallback: a mount still busy for a moment after its container died must not block down.
    const r = await run('umount', [m], { allowFail: true })
    if (r.code !== 0 && isMounted(m)) await run('umount', ['-l', m])
  }
}

export async function mountOverlay(lower: string, upper: string, work: string, target: string): Promise<void> {
  await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${work}`, target])
}
