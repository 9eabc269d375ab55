// The lab's images per Debian suite (test/lab/image.ts) and a host's suite (host.ts): bookworm stays the image the
// cache already holds, trixie is another image carrying the trixie swap mechanisms (the rpi-swap generator stand-in,
// Debian's real zram generator behind its container wrapper), and a host keeps its suite across a wipe. Booting
// them is shown by test/e2e/trixie.test.ts.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { describe, expect, it } from 'vitest'
import { DEFAULT_SUITE, IMAGE_ID, SUITES, imageIdFor, recipeFor } from '../lab/image.ts'

const REPO = resolve(import.meta.dirname, '../..')
const standin = (path: string) => readFileSync(join(REPO, 'test/standins', path), 'utf8')

describe('lab images per suite', () => {
  it('bookworm is the default and its recipe hashes to the pinned id: a change to it is deliberate', () => {
    expect(DEFAULT_SUITE).toBe('bookworm')
    expect(IMAGE_ID).toBe(imageIdFor('bookworm'))
    // The id of the bookworm image: the one built before the lab had suites (image-60d8c7bf109a) plus python3-yaml
    // for the k3s stand-in. A deliberate change of the bookworm recipe changes this line too.
    expect(imageIdFor('bookworm')).toBe('31a08884f940')
  })

  it('each suite is its own image, debootstrapped from its own release', () => {
    expect(new Set(SUITES.map(imageIdFor)).size).toBe(SUITES.length)
    for (const s of SUITES) expect(recipeFor(s).suite).toBe(s)
    expect(recipeFor('trixie').mirror).toBe(recipeFor('bookworm').mirror)
  })

  it('trixie has no dphys-swapfile, and Pi OS trixie swap mechanisms as files of the image', () => {
    const trixie = recipeFor('trixie')
    const bookworm = recipeFor('bookworm')
    expect(bookworm.packages).toContain('dphys-swapfile')
    expect(trixie.packages).not.toContain('dphys-swapfile')
    expect(trixie.script).not.toContain('dphys')
    expect(bookworm.script).toContain('dphys-swapfile.service')
    // Debian's real zram generator package, the same list otherwise.
    expect(trixie.packages).toContain('systemd-zram-generator')
    expect(trixie.packages).toEqual(bookworm.packages.filter((p) => p !== 'dphys-swapfile'))
    const file = (p: string) => trixie.files.find((f) => f.path === p)
    expect(file('/usr/lib/systemd/system-generators/rpi-swap-generator')).toMatchObject({
      mode: 0o755,
      content: standin('rpi-swap/rpi-swap-generator'),
    })
    expect(file('/etc/systemd/system-generators/zram-generator')).toMatchObject({
      mode: 0o755,
      content: standin('zram-generator/zram-generator'),
    })
    expect(file('/etc/rpi/swap.conf')?.content).toMatch(/^\[Main\]\n#Mechanism=auto$/m)
    for (const f of bookworm.files) expect(file(f.path)).toEqual(f)
    expect(bookworm.files.some((f) => f.path.includes('rpi') || f.path.includes('zram'))).toBe(false)
  })
})

describe("a host's suite", () => {
  it('defaults to bookworm, is set per host, survives a wipe, and an unknown one is an error', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lab-suite-'))
    const script = `
      const h = await import(${JSON.stringify(join(REPO, 'test/lab/host.ts'))})
      const fs = await import('node:fs')
      const out = [h.hostSuite('pi5-worker-1')]
      h.setHostSuite('pi5-worker-1', 'trixie')
      out.push(h.hostSuite('pi5-worker-1'), h.hostSuite('pi3-worker-1'), h.hostFlashed('pi5-worker-1'))
      h.wipeDisk('pi5-worker-1')
      out.push(h.hostSuite('pi5-worker-1'))
      fs.writeFileSync(${JSON.stringify(join(dir, 'hosts/pi5-worker-1/suite'))}, 'sid\\n')
      try { h.hostSuite('pi5-worker-1') } catch (e) { out.push(e.message) }
      console.log(JSON.stringify(out))`
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, PI_LAB_DIR: dir },
      encoding: 'utf8',
    })
    expect(r.status, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout)).toEqual([
      'bookworm',
      'trixie',
      'bookworm',
      false,
      'trixie',
      `pi5-worker-1: unknown suite "sid" in ${join(dir, 'hosts/pi5-worker-1/suite')}`,
    ])
  })
})
