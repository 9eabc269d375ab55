// --check on the lab, for every playbook, on a fresh lab and on a converged cluster: nothing on any host changes
// (files, units, packages, boot, the cluster's Nodes: read from the host side through the lab, not from the tool),
// and the plan it prints is what the real run then does. The runner owns check mode (a step only plans), so this is
// the test of that model.

import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEFAULT_HOSTS, LAB_DIR, labBootId, labDown, labExec, labUp } from '../lab/lab.ts'
import { onHost, runPlaybookCli, type PlaybookRun } from './helpers.ts'

/** Everything a playbook could change on a host, hashed; plus the boot, so a reboot shows. */
async function hostState(host: string): Promise<string> {
  const files = await onHost(
    host,
    [
      'cd / && for f in boot/firmware/cmdline.txt etc/hostname etc/hosts etc/fstab var/lib/dpkg/status; do sha256sum "$f" 2>&1; done',
      'ls -la /var/swap 2>&1 | cut -c1-10',
      // Names, modes, sizes and mtimes of what the roles write (config, units, binaries, the handlers owed). Not the
      // datastore: k3s itself writes it all the time.
      'find /etc/rancher /etc/modules-load.d /etc/sysctl.d /etc/systemd/system /usr/local/bin /var/lib/pi-provision -xdev 2>/dev/null | sort | xargs -r ls -ld --time-style=+%s 2>/dev/null | sha256sum',
      'systemctl list-unit-files --no-legend --no-pager 2>/dev/null | sha256sum',
      'ls /boot/firmware',
      // The snapshots backup.mts and upgrade.mts keep on the server.
      'ls -la --time-style=+%s /var/lib/rancher/k3s/server/pi-provision-snapshots 2>&1 || true',
    ].join('; '),
  )
  return `${files}boot ${await labBootId(host)}\n`
}

/** The Nodes as the server has them (names, labels, taints, cordon), or "no cluster" on a fresh lab. */
async function clusterState(): Promise<string> {
  const r = await labExec(
    'pi-k3s',
    "command -v k3s >/dev/null || { echo 'no cluster'; exit 0; }; k3s kubectl get nodes -o json",
  )
  if (r.code !== 0) throw new Error(`reading the Nodes: ${r.stderr}`)
  if (r.stdout.trim() === 'no cluster') return 'no cluster'
  const items = (
    JSON.parse(r.stdout) as {
      items: { metadata: { name: string; labels?: object }; spec?: { taints?: object; unschedulable?: boolean } }[]
    }
  ).items
  return JSON.stringify(
    items.map((n) => [n.metadata.name, n.metadata.labels, n.spec?.taints, n.spec?.unschedulable ?? false]),
  )
}

/** The lab's NAS folder on the controller (k3s_backup_dir): where backup.mts copies its snapshots. */
function nasState(): string {
  return execFileSync('sh', ['-c', `ls -laR --time-style=+%s ${join(LAB_DIR, 'nas')} 2>&1 || true`], {
    encoding: 'utf8',
  })
}

async function everything(): Promise<Record<string, string>> {
  const out: Record<string, string> = { cluster: await clusterState(), nas: nasState() }
  for (const h of DEFAULT_HOSTS) out[h] = await hostState(h)
  return out
}

/** Runs with --json: the step-end events say exactly which host, role and step ended how. */
async function runWithEvents(name: string, args: string[]): Promise<{ run: PlaybookRun; steps: StepEnd[] }> {
  const file = join(work, `${name}-${Date.now()}.json`)
  const run = await runPlaybookCli(name, [...args, '--json', file])
  const steps = readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as StepEnd & { kind: string })
    .filter((e) => e.kind === 'step-end')
  return { run, steps }
}

interface StepEnd {
  host: string
  role: string
  step: string
  handler: boolean
  status: string
  message?: string
}

const key = (e: StepEnd) => `${e.host} ${e.role} | ${e.handler ? 'handler: ' : ''}${e.step}`

const work = mkdtempSync(join(tmpdir(), 'check-mode-'))

/** Each playbook as the owner would --check it: the one-host playbooks on an agent. */
const PLAYBOOKS: { name: string; args: string[] }[] = [
  { name: 'pi-prep', args: [] },
  { name: 'site', args: [] },
  { name: 'update', args: [] },
  { name: 'retire', args: ['pi3-worker-2'] },
  { name: 'rebuild', args: ['pi3-worker-2'] },
  { name: 'upgrade', args: [] },
  { name: 'backup', args: ['--keep', '1'] },
]

/** On a fresh lab, the playbooks that act on a running cluster refuse at once, saying there is none yet. */
const NO_CLUSTER_YET: Record<string, string> = {
  upgrade: 'pi-k3s has no Node in the cluster: every node of the inventory must be in it and Ready',
  backup: 'no datastore at /var/lib/rancher/k3s/server/db/state.db: is the k3s server installed here?',
}

beforeAll(async () => {
  await labUp(DEFAULT_HOSTS, { fresh: true })
}, 900_000)

afterAll(async () => {
  await labDown()
})

describe('--check on a fresh lab', () => {
  for (const pb of PLAYBOOKS)
    it(`${pb.name}.mts --check changes nothing on any host`, async () => {
      const before = await everything()
      const run = await runPlaybookCli(pb.name, [...pb.args, '--check'])
      expect(run.out).toContain('CHECK MODE: nothing will be changed.')
      if (NO_CLUSTER_YET[pb.name]) {
        expect(run.code, run.out).toBe(2)
        expect(run.out).toContain(NO_CLUSTER_YET[pb.name])
      } else if (pb.name === 'rebuild' && run.out.includes('run the k3s-server role first')) {
        // No cluster token in the secrets store yet (the lab's store keeps the one an earlier test made): an agent
        // cannot be rebuilt into a cluster that never existed, said before anything is planned on it.
        expect(run.code, run.out).toBe(2)
      } else expect(run.code, run.out).toBe(0)
      if (pb.name === 'rebuild' && run.code === 0) expect(run.out).toContain('(would install k3s v1.34.3+k3s1 (agent))')
      expect(await everything()).toEqual(before)
    })

  it('the plan site.mts --check prints is what the real run then does', async () => {
    const check = await runWithEvents('site', ['--check'])
    expect(check.run.code, check.run.out).toBe(0)
    const real = await runWithEvents('site', [])
    expect(real.run.code, real.run.out).toBe(0)
    const predicted = check.steps.filter((e) => e.status === 'changed').map(key)
    // Skipped under --check because they only make sense for real (waits for what earlier steps did).
    const forRealOnly = new Set(
      check.steps.filter((e) => e.status === 'skipped' && e.message?.startsWith('check mode: ')).map(key),
    )
    const done = real.steps.filter((e) => e.status === 'changed').map(key)
    // Every change the real run made was announced (or belongs to a step that only runs for real) ...
    expect(done.filter((s) => !predicted.includes(s) && !forRealOnly.has(s))).toEqual([])
    // ... and every change announced was made.
    expect(predicted.filter((s) => !done.includes(s))).toEqual([])
    expect(predicted.length).toBeGreaterThan(20)
  })
})

describe('--check on the converged cluster', () => {
  for (const pb of PLAYBOOKS)
    it(`${pb.name}.mts --check changes nothing on any host`, async () => {
      const before = await everything()
      const run = await runPlaybookCli(pb.name, [...pb.args, '--check'])
      expect(run.code, run.out).toBe(0)
      expect(await everything()).toEqual(before)
      // Nothing to do for the playbooks that converge the cluster: the plan is empty.
      if (['pi-prep', 'site', 'rebuild'].includes(pb.name))
        for (const h of Object.keys(run.recap)) expect(run.recap[h].changed, `${h}\n${run.out}`).toBe(0)
      if (pb.name === 'upgrade')
        for (const h of Object.keys(run.recap)) expect(run.recap[h].changed, `${h}\n${run.out}`).toBe(0)
      if (pb.name === 'backup') expect(run.recap['pi-k3s'].changed, run.out).toBeGreaterThan(0)
      if (pb.name === 'retire')
        expect(run.out).toContain(
          'changed: [pi-k3s] k3s-retire | Delete the Node pi3-worker-2 (would delete the Node pi3-worker-2)',
        )
    })

  it('and the real rerun of site.mts then does nothing either', async () => {
    const run = await runPlaybookCli('site', [])
    expect(run.code, run.out).toBe(0)
    for (const h of Object.keys(run.recap)) expect(run.recap[h].changed, `${h}\n${run.out}`).toBe(0)
  })
})
