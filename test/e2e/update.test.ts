// Keeping the Pis patched: playbooks/update.mts on the lab. Real apt on real Debian hosts: each host's Debian
// packages are held (so today's Debian updates do not decide what the test sees) and a package made here,
// lab-probe, is installed at 1.0 with 1.1 waiting in a local apt repository on the host; 1.1 asks for a reboot
// the way Debian packages do (/var/run/reboot-required). pi3-worker-2 gets no update.

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { labBootId, labDown, labExec } from '../lab/lab.ts'
import { convergedLab, onHost, runPlaybookCli } from './helpers.ts'

const UPDATED = ['pi-k3s', 'pi3-worker-1']
const ALL = ['pi-k3s', 'pi3-worker-1', 'pi3-worker-2']

/** lab-probe 1.0 installed; 1.1 (when `offer`) in /srv/lab-apt, a flat apt repository apt reads with file:. */
function probeScript(offer: boolean): string {
  return `set -e
w=$(mktemp -d)
mk() {
  d=$w/lab-probe-$1; mkdir -p $d/DEBIAN $d/usr/share/lab-probe
  echo "$1" > $d/usr/share/lab-probe/version
  printf 'Package: lab-probe\\nVersion: %s\\nArchitecture: all\\nMaintainer: pi-lab <lab@localhost>\\nDescription: an update for the lab tests\\n' "$1" > $d/DEBIAN/control
  if [ "$2" = reboot ]; then
    printf '#!/bin/sh\\nset -e\\ntouch /var/run/reboot-required\\necho lab-probe >> /var/run/reboot-required.pkgs\\n' > $d/DEBIAN/postinst
    chmod 755 $d/DEBIAN/postinst
  fi
  dpkg-deb --build --root-owner-group $d $w/lab-probe_$1_all.deb >/dev/null
}
apt-mark hold $(dpkg-query -W -f='\${Package}\\n') >/dev/null
mk 1.0 no
dpkg -i $w/lab-probe_1.0_all.deb >/dev/null
apt-mark unhold lab-probe >/dev/null
mkdir -p /srv/lab-apt
cd /srv/lab-apt
: > Packages
if ${offer}; then
  mk 1.1 reboot
  cp $w/lab-probe_1.1_all.deb .
  f=lab-probe_1.1_all.deb
  { dpkg-deb -f $f; echo "Filename: ./$f"; echo "Size: $(stat -c %s $f)"; echo "SHA256: $(sha256sum $f | cut -d' ' -f1)"; echo; } > Packages
fi
printf 'Origin: pi-lab\\nLabel: pi-lab\\nSuite: lab\\nCodename: lab\\nDate: %s\\nArchitectures: all amd64 arm64 armhf\\nSHA256:\\n %s %s Packages\\n' "$(date -Ru)" "$(sha256sum Packages | cut -d' ' -f1)" "$(stat -c %s Packages)" > Release
echo 'deb [trusted=yes] file:/srv/lab-apt ./' > /etc/apt/sources.list.d/lab-probe.list
rm -rf $w
# The owner's "apt update" after adding a source: --check reports against the lists a host has.
apt-get update -q >/dev/null`
}

const probeVersion = async (h: string) => (await onHost(h, "dpkg-query -W -f='${Version}' lab-probe")).trim()
interface NodeObj {
  metadata: { name: string; annotations?: Record<string, string> }
  spec: { unschedulable?: boolean }
  status: { conditions: { type: string; status: string }[] }
}
const nodes = async () =>
  (JSON.parse(await onHost('pi-k3s', 'k3s kubectl get nodes -o json')) as { items: NodeObj[] }).items

beforeAll(async () => {
  await convergedLab()
  for (const h of ALL) {
    const r = await labExec(h, probeScript(UPDATED.includes(h)), { timeoutMs: 120_000 })
    if (r.code !== 0) throw new Error(`${h}: could not set up lab-probe: ${r.stderr}`)
  }
}, 900_000)

afterAll(async () => {
  await labDown()
})

describe('update.mts: Debian updates, one node at a time', () => {
  it('--check names the update and the drain, and changes nothing', async () => {
    const boots = await Promise.all(ALL.map(labBootId))
    const run = await runPlaybookCli('update', ['--check'])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toMatch(
      /changed: \[pi3-worker-1\] os-update \| Drain this node from the server before updating it \(agents, update_drain\) \(would drain pi3-worker-1 \((evict \d+ pods?|cordon it)\)\)/,
    )
    expect(run.out).toContain(
      'changed: [pi3-worker-1] os-update | Install the updates (apt-get full-upgrade) (would upgrade 1 package: lab-probe 1.0 -> 1.1)',
    )
    expect(run.out).toMatch(/^ok: \[pi3-worker-2\] os-update \| Install the updates \(apt-get full-upgrade\)$/m)
    for (const h of ALL) expect(await probeVersion(h)).toBe('1.0')
    expect(await Promise.all(ALL.map(labBootId))).toEqual(boots)
    expect((await nodes()).filter((n) => n.spec.unschedulable)).toEqual([])
  })

  it('agents one at a time, then the server: drained, upgraded, rebooted when asked, Ready, uncordoned; the rerun changes nothing', async () => {
    const boots = Object.fromEntries(await Promise.all(ALL.map(async (h) => [h, await labBootId(h)] as const)))
    // apt_cache_valid_time=0: the lists are fetched again even though they are fresh.
    const run = await runPlaybookCli('update', ['-e', 'apt_cache_valid_time=0'])
    expect(run.code, run.out).toBe(0)

    expect(run.out).toMatch(
      /changed: \[pi3-worker-1\] os-update \| Drain this node from the server before updating it \(agents, update_drain\) \(drained pi3-worker-1 \((evicted \d+ pods?|cordoned)\)\)/,
    )
    // Unbound is pinned to pi3-worker-1 (nodeSelector workload/dns=unbound): the owner is told it waits for the node.
    expect(run.out).toMatch(
      /WARNING: \[pi3-worker-1\] 1 pod fits no other node and will wait Pending until pi3-worker-1 is back: pihole\/unbound-\S+/,
    )
    expect(run.out).toContain(
      'changed: [pi3-worker-1] os-update | Install the updates (apt-get full-upgrade) (upgraded 1 package: lab-probe 1.0 -> 1.1)',
    )
    expect(run.out).toContain(
      'changed: [pi3-worker-1] os-update | Reboot when an update asks for it (/var/run/reboot-required, or a newer kernel) (reboot asked for by lab-probe)',
    )
    expect(run.out).toMatch(/changed: \[pi3-worker-1\] os-update \| handler: Reboot \(rebooted in [\d.]+s\)/)
    expect(run.out).toContain(
      'changed: [pi3-worker-1] os-update | Uncordon this node (only when this playbook drained it) (uncordoned pi3-worker-1)',
    )
    expect(run.out).toMatch(
      /changed: \[pi3-worker-1\] os-update \| Refresh the package lists \(when older than apt_cache_valid_time\) \(apt-get update \(never run by this playbook on this host\)\)/,
    )
    // pi3-worker-2 has nothing to install: its lists are fetched, nothing else changes (no drain, no reboot).
    expect(
      run.out
        .split('\n')
        .filter((l) => l.startsWith('changed: [pi3-worker-2]'))
        .map((l) => l.replace(/ \(apt-get update .*$/, '')),
    ).toEqual(['changed: [pi3-worker-2] os-update | Refresh the package lists (when older than apt_cache_valid_time)'])
    // The server is updated and rebooted, never drained; it comes back Ready.
    expect(run.out).toMatch(/skipping: \[pi-k3s\] os-update \| Drain this node/)
    expect(run.out).toMatch(/changed: \[pi-k3s\] os-update \| handler: Reboot \(rebooted in [\d.]+s\)/)
    expect(run.out).toMatch(/^ok: \[pi-k3s\] os-update \| Wait until the server reports this node Ready$/m)
    // One node at a time: pi3-worker-1 was uncordoned before pi3-worker-2 started, and both before the server.
    const at = (re: RegExp) => run.out.search(re)
    expect(at(/uncordoned pi3-worker-1/)).toBeLessThan(at(/\[pi3-worker-2\] os-update \| Refresh the package lists/))
    expect(at(/\[pi3-worker-2\] os-update \| Uncordon/)).toBeLessThan(
      at(/\[pi-k3s\] os-update \| Refresh the package lists/),
    )

    for (const h of UPDATED) expect(await probeVersion(h), h).toBe('1.1')
    expect(await probeVersion('pi3-worker-2')).toBe('1.0')
    expect(await labBootId('pi3-worker-1')).not.toBe(boots['pi3-worker-1'])
    expect(await labBootId('pi-k3s')).not.toBe(boots['pi-k3s'])
    expect(await labBootId('pi3-worker-2')).toBe(boots['pi3-worker-2'])
    const after = await nodes()
    expect(
      after
        .map((n) => [
          n.metadata.name,
          n.status.conditions.find((c) => c.type === 'Ready')?.status,
          n.spec.unschedulable ?? false,
          n.metadata.annotations?.['pi-provision/drained-for'] ?? null,
        ])
        .sort(),
    ).toEqual(ALL.map((h) => [h, 'True', false, null]))

    const again = await runPlaybookCli('update', [])
    expect(again.code, again.out).toBe(0)
    for (const [h, c] of Object.entries(again.recap)) expect(c.changed, `${h}\n${again.out}`).toBe(0)
  })
})
