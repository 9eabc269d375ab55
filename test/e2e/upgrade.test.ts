// Issue 14 on the lab: playbooks/upgrade.mts moves the cluster to another k3s release the way the k3s docs do it:
// a snapshot of the datastore first, the server, then the agents one at a time (drained, installed, Ready at the
// new version, uncordoned). The k3s stand-in knows versions (test/standins/k3s/releases.txt: the inventory's
// v1.34.3+k3s1, v1.35.0+k3s1 and v1.35.1+k3s1), so what is checked here is what the owner would see: each Node's
// kubeletVersion from the server's API, `k3s --version` on the hosts, the snapshot in k3s_backup_dir.
//
// The file walks the lab through: v1.34.3 -> v1.35.0 (3 nodes, timeline recorded from the server side), then a
// fourth agent joins and v1.35.0 -> v1.35.1 fails at the second agent's install (a stand-in fault) and is finished
// by a rerun, then the way back the README documents: the agents downgraded in place, the server restored from the
// snapshot taken before the first upgrade. The lab ends as the inventory wants it (three nodes, v1.34.3+k3s1,
// site.mts changed=0): other test files follow; if a test failed half-way, afterAll flashes it afresh.

import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseDocument } from 'yaml'
import { hostVars, loadInventory } from '../../lib/inventory.ts'
import { labAddress, labExec, labStop, labUp } from '../lab/lab.ts'
import { readEvents } from './fault-helpers.ts'
import { convergedLab, LAB_INVENTORY, onHost, runPlaybookCli } from './helpers.ts'

const inventory = loadInventory(LAB_INVENTORY)
const serverVars = hostVars(inventory.hosts.get(inventory.groups.get('server')![0])!, {}, {})
/** The inventory's release: where the lab starts and must end. */
const OLD = serverVars.k3s_version!
const NEW = 'v1.35.0+k3s1'
const PATCH = 'v1.35.1+k3s1'
/** k3s_backup_dir of the lab inventory: a directory on this machine standing in for the NAS. */
const BACKUPS = serverVars.k3s_backup_dir!
const SERVER = 'pi-k3s'
const AGENTS = ['pi3-worker-1', 'pi3-worker-2']
const EXTRA = 'pi3-worker-3'

interface NodeObj {
  metadata: { name: string; annotations?: Record<string, string> }
  spec: { unschedulable?: boolean }
  status: { conditions?: { type: string; status: string }[]; nodeInfo?: { kubeletVersion?: string } }
}
interface NodeState {
  version?: string
  ready: boolean
  cordoned: boolean
  marked: boolean
}
const stateOf = (n: NodeObj): NodeState => ({
  version: n.status.nodeInfo?.kubeletVersion,
  ready: n.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false,
  cordoned: n.spec.unschedulable === true,
  marked: n.metadata.annotations?.['pi-provision/drained-for'] !== undefined,
})
/** Every Node as the server's API reports it (the real kubectl on the server, through the lab, not the tool). */
async function nodes(): Promise<Record<string, NodeState>> {
  const list = JSON.parse(await onHost(SERVER, 'k3s kubectl get nodes -o json')) as { items: NodeObj[] }
  return Object.fromEntries(list.items.map((n) => [n.metadata.name, stateOf(n)]))
}
const installed = async (host: string) => /^k3s version (\S+)/.exec(await onHost(host, 'k3s --version'))?.[1]
const mainPid = async (host: string, unit: string) =>
  (await onHost(host, `systemctl show -p MainPID --value ${unit}`)).trim()
const backupFolders = (): string[] => (existsSync(BACKUPS) ? readdirSync(BACKUPS).sort() : [])

/** All nodes Ready, schedulable, at `version`, and installed at it on each host. */
async function expectAllAt(version: string, hosts: readonly string[]): Promise<void> {
  const now = await nodes()
  expect(Object.keys(now).sort()).toEqual([...hosts].sort())
  for (const h of hosts) {
    expect(now[h], h).toEqual({ version, ready: true, cordoned: false, marked: false })
    expect(await installed(h), h).toBe(version)
  }
}

/**
 * A snapshot folder in k3s_backup_dir, read on this machine: state.db.gz gunzipped, SQLite's integrity_check, the
 * release that last wrote it (the stand-in records it in the datastore) and whether it holds an object.
 */
function readSnapshot(name: string, configMap: string): { integrity: string; release: string; hasObject: boolean } {
  const dir = mkdtempSync(join(tmpdir(), 'upgrade-snap-'))
  try {
    const db = join(dir, 'state.db')
    writeFileSync(db, gunzipSync(readFileSync(join(BACKUPS, name, 'k3s', 'state.db.gz'))))
    const out = execFileSync(
      'python3',
      [
        '-c',
        [
          'import json, sqlite3, sys',
          'c = sqlite3.connect(sys.argv[1])',
          "i = c.execute('PRAGMA integrity_check').fetchone()[0]",
          'r = c.execute("SELECT value FROM meta WHERE key=\'k3s-version\'").fetchone()',
          'q = "SELECT count(*) FROM objects WHERE kind=\'ConfigMap\' AND name=?"',
          'o = c.execute(q, (sys.argv[2],)).fetchone()[0]',
          "print(json.dumps({'integrity': i, 'release': r[0] if r else '', 'hasObject': o > 0}))",
        ].join('\n'),
        db,
        configMap,
      ],
      { encoding: 'utf8' },
    )
    return JSON.parse(out) as { integrity: string; release: string; hasObject: boolean }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Polls the Nodes from the server side while a run goes on: one sample per answer (null: the API did not answer). */
function recordTimeline(): { stop: () => Promise<{ t: number; nodes: Record<string, NodeState> | null }[]> } {
  const samples: { t: number; nodes: Record<string, NodeState> | null }[] = []
  let running = true
  const loop = (async () => {
    while (running) {
      const t = Date.now()
      const r = await labExec(SERVER, 'k3s kubectl get nodes -o json', { timeoutMs: 15_000 }).catch(() => undefined)
      if (r?.code === 0) {
        const list = JSON.parse(r.stdout) as { items: NodeObj[] }
        samples.push({ t, nodes: Object.fromEntries(list.items.map((n) => [n.metadata.name, stateOf(n)])) })
      } else samples.push({ t, nodes: null })
      await new Promise((res) => setTimeout(res, 50))
    }
  })()
  return {
    stop: async () => {
      running = false
      await loop
      return samples
    },
  }
}

let work = ''
/** The planted object: made before the first upgrade, so it is in the snapshot and must survive every move. */
const BEFORE = 'made-before-the-upgrade'
/** Made after the first upgrade: the snapshot restored at the end does not have it. */
const AFTER = 'made-after-the-upgrade'
/** The snapshot the first upgrade took (the way back at the end). */
let firstSnapshot = ''
let extraStarted = false
/** The backup folders in k3s_backup_dir when the file started: the ones this file made are removed at the end. */
let foldersAtStart: string[] = []

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'upgrade-'))
  foldersAtStart = backupFolders()
  await convergedLab()
  await onHost(SERVER, `k3s kubectl create configmap ${BEFORE} -n default --from-literal=note=kept`)
}, 900_000)

afterAll(async () => {
  // The lab as the inventory wants it, whatever happened above: three nodes at the inventory's release.
  if (extraStarted) await labStop(EXTRA).catch(() => undefined)
  const ok = await (async () => {
    const now = await nodes()
    return (
      Object.keys(now).sort().join() === [SERVER, ...AGENTS].sort().join() &&
      Object.values(now).every((n) => n.version === OLD && n.ready && !n.cordoned)
    )
  })().catch(() => false)
  if (!ok) await convergedLab()
  for (const f of backupFolders()) if (!foldersAtStart.includes(f)) rmSync(join(BACKUPS, f), { recursive: true })
  if (work) rmSync(work, { recursive: true, force: true })
}, 900_000)

describe('upgrade.mts: a 3-node cluster to the next minor release', () => {
  it('site.mts does not move a running cluster to another k3s_version: it refuses, naming upgrade.mts', async () => {
    const pids = await Promise.all(AGENTS.map((h) => mainPid(h, 'k3s-agent')))
    const run = await runPlaybookCli('site', ['-e', `k3s_version=${NEW}`])
    expect(run.code, run.out).toBe(2)
    expect(run.out).toContain(
      `FAILED: [${SERVER}] k3s-server | Leave the k3s version of a running node to playbooks/upgrade.mts ` +
        `(k3s ${OLD} runs here and k3s_version is ${NEW}: site.mts does not change the version of a running cluster`,
    )
    expect(run.out).toContain('Run playbooks/upgrade.mts (a snapshot, the server first, then the agents one at a time)')
    await expectAllAt(OLD, [SERVER, ...AGENTS])
    expect(await Promise.all(AGENTS.map((h) => mainPid(h, 'k3s-agent')))).toEqual(pids)
  })

  it('--check prints the plan (node, from, to, in order) and changes nothing', async () => {
    const before = backupFolders()
    const pids = await Promise.all([mainPid(SERVER, 'k3s'), ...AGENTS.map((h) => mainPid(h, 'k3s-agent'))])
    const run = await runPlaybookCli('upgrade', ['--check', '-e', `k3s_version=${NEW}`])
    expect(run.code, run.out).toBe(0)
    expect(run.out).toContain(
      [
        `[${SERVER}] upgrade to ${NEW}, the server first, then the agents one by one:`,
        `  1. pi-k3s (server)       ${OLD} -> ${NEW}`,
        `  2. pi3-worker-1 (agent)  ${OLD} -> ${NEW}`,
        `  3. pi3-worker-2 (agent)  ${OLD} -> ${NEW}`,
      ].join('\n'),
    )
    expect(run.out).toMatch(
      /changed: \[pi-k3s\] k3s-snapshot \| Take a datastore snapshot \(upgrade\).*\(would snapshot/,
    )
    expect(run.out).toContain(`(would upgrade k3s ${OLD} -> ${NEW} (server, same flags))`)
    expect(run.out).toMatch(
      /changed: \[pi3-worker-1\] k3s-upgrade-agent \| Drain this agent .*\(would drain pi3-worker-1/,
    )
    await expectAllAt(OLD, [SERVER, ...AGENTS])
    expect(backupFolders()).toEqual(before)
    expect(await Promise.all([mainPid(SERVER, 'k3s'), ...AGENTS.map((h) => mainPid(h, 'k3s-agent'))])).toEqual(pids)
  })

  it('refused before anything changes: a skipped minor, and a release k3s never made', async () => {
    const before = backupFolders()
    const skip = await runPlaybookCli('upgrade', ['-e', 'k3s_version=v1.36.0+k3s1'])
    expect(skip.code, skip.out).toBe(2)
    expect(skip.out).toContain('the move to v1.36.0+k3s1 is refused, nothing was changed:')
    expect(skip.out).toContain(
      `- pi-k3s: ${OLD} -> v1.36.0+k3s1 skips 1.35: k3s moves one minor version at a time ` +
        '(go to a v1.35 release first, then to v1.36.0+k3s1); there is no --allow-skip',
    )
    // Nothing after the check ran: no snapshot, no install.
    expect(skip.out).not.toContain('k3s-snapshot |')
    // A well-formed version that is no release passes the rules, and the server's install fails to download it:
    // the run stops there, with where the cluster stands; the server still runs its release.
    const typo = await runPlaybookCli('upgrade', ['-e', 'k3s_version=v1.35.9+k3s1'])
    expect(typo.code, typo.out).toBe(2)
    expect(typo.out).toContain('Download failed: v1.35.9+k3s1 is no release the lab offers')
    expect(typo.out).toContain('where the cluster stands now:')
    await expectAllAt(OLD, [SERVER, ...AGENTS])
    // The second run took a snapshot before it touched the server (and that is all it left).
    expect(backupFolders().filter((f) => !before.includes(f))).toHaveLength(1)
  })

  it(`moves to ${NEW}: the snapshot first, the server, then one agent at a time (timeline: server side)`, async () => {
    const before = backupFolders()
    const json = join(work, 'upgrade.json')
    const timeline = recordTimeline()
    const run = await runPlaybookCli('upgrade', ['-e', `k3s_version=${NEW}`, '--json', json])
    const samples = await timeline.stop()
    expect(run.code, run.out).toBe(0)

    // The snapshot: in k3s_backup_dir, owner's layout, restorable (integrity_check ok), and taken while the server
    // still ran the old release (the datastore says which release last wrote it), with the planted object.
    const made = backupFolders().filter((f) => !before.includes(f))
    expect(made).toHaveLength(1)
    firstSnapshot = made[0]
    expect(firstSnapshot).toMatch(/^\d{4}-\d\d-\d\dT\d{6}Z-pi-provision-upgrade$/)
    expect(readdirSync(join(BACKUPS, firstSnapshot, 'k3s')).sort()).toEqual([
      'k3s-server-identity.tar.gz',
      'state.db.gz',
    ])
    expect(readSnapshot(firstSnapshot, BEFORE)).toEqual({ integrity: 'ok', release: OLD, hasObject: true })
    // ... and it was done before the server's install started, per the run's own events.
    const events = readEvents(json)
    const snapDone = events.findIndex(
      (e) => e.kind === 'step-end' && e.step.startsWith('Take a datastore snapshot') && e.status === 'changed',
    )
    const serverStart = events.findIndex(
      (e) => e.kind === 'step-start' && e.host === SERVER && e.step.startsWith('Install k3s_version on the server'),
    )
    expect(snapDone).toBeGreaterThanOrEqual(0)
    expect(serverStart).toBeGreaterThan(snapDone)
    // The same snapshot is kept on the server.
    expect(
      await onHost(
        SERVER,
        `test -s /var/lib/rancher/k3s/server/pi-provision-snapshots/${firstSnapshot}/k3s/state.db.gz && echo kept`,
      ),
    ).toBe('kept\n')

    // The order the run took: the server, then pi3-worker-1 (drain, install, Ready, uncordon), then pi3-worker-2.
    const order = events
      .filter((e) => e.kind === 'step-end' && e.status === 'changed')
      .map((e) => (e.kind === 'step-end' ? `${e.host}: ${e.message}` : ''))
    expect(order.map((l) => l.replace(/ \(.*$/, '').replace(/: (\w+).*/, ': $1'))).toEqual([
      'pi-k3s: took',
      'pi-k3s: upgraded',
      'pi3-worker-1: drained',
      'pi3-worker-1: upgraded',
      'pi3-worker-1: uncordoned',
      'pi3-worker-2: drained',
      'pi3-worker-2: upgraded',
      'pi3-worker-2: uncordoned',
    ])

    // The timeline, from the server's API: never two agents cordoned or NotReady at once; each was cordoned once.
    const answered = samples.filter((s) => s.nodes !== null)
    expect(answered.length, `${samples.length} samples`).toBeGreaterThan(8)
    const worst = Math.max(
      ...answered.map((s) => AGENTS.filter((a) => s.nodes![a] && (!s.nodes![a].ready || s.nodes![a].cordoned)).length),
    )
    expect(worst).toBeLessThanOrEqual(1)
    for (const a of AGENTS)
      expect(
        answered.some((s) => s.nodes![a]?.cordoned),
        `${a} seen cordoned`,
      ).toBe(true)
    // The server reported the new release before any agent was cordoned.
    const firstCordon = answered.find((s) => AGENTS.some((a) => s.nodes![a]?.cordoned))!
    expect(firstCordon.nodes![SERVER].version).toBe(NEW)

    await expectAllAt(NEW, [SERVER, ...AGENTS])
    // The datastore survived: the object made before, and the labels the inventory gives.
    expect(await onHost(SERVER, `k3s kubectl get configmap ${BEFORE} -n default -o name`)).toBe(`configmap/${BEFORE}\n`)
    expect(await onHost(SERVER, 'k3s kubectl get node pi3-worker-1 -o jsonpath={.metadata.labels.workload/dns}')).toBe(
      'unbound',
    )
    expect(run.out).toContain(
      `[${SERVER}] every node runs ${NEW}, Ready and schedulable: pi-k3s, pi3-worker-1, pi3-worker-2`,
    )
  })

  it('a rerun finds every node at the target: changed=0, no snapshot, nothing restarted', async () => {
    const before = backupFolders()
    const pids = await Promise.all([mainPid(SERVER, 'k3s'), ...AGENTS.map((h) => mainPid(h, 'k3s-agent'))])
    const run = await runPlaybookCli('upgrade', ['-e', `k3s_version=${NEW}`])
    expect(run.code, run.out).toBe(0)
    for (const [h, c] of Object.entries(run.recap)) expect(c.changed, `${h}\n${run.out}`).toBe(0)
    expect(run.out).toContain(`[${SERVER}] every node runs ${NEW}: nothing to do`)
    expect(backupFolders()).toEqual(before)
    expect(await Promise.all([mainPid(SERVER, 'k3s'), ...AGENTS.map((h) => mainPid(h, 'k3s-agent'))])).toEqual(pids)
    await onHost(SERVER, `k3s kubectl create configmap ${AFTER} -n default --from-literal=note=new`)
  })
})

describe('upgrade.mts: an agent whose install fails stops the run', () => {
  let inv4 = ''
  beforeAll(async () => {
    // A fourth Pi, so that there is a node after the one that fails: the lab's inventory plus pi3-worker-3.
    extraStarted = true
    await labUp([EXTRA])
    const doc = parseDocument(readFileSync(LAB_INVENTORY, 'utf8'))
    doc.setIn(['all', 'children', 'agent', 'hosts', EXTRA], {
      address: labAddress(EXTRA),
      hardware: 'pi3',
      node_labels: ['hardware=pi3'],
    })
    inv4 = join(work, 'four-nodes.yaml')
    writeFileSync(inv4, doc.toString())
    const join4 = await runPlaybookCli('site', ['-i', inv4, '-e', `k3s_version=${NEW}`])
    if (join4.code !== 0) throw new Error(`pi3-worker-3 did not join:\n${join4.out}`)
  }, 900_000)

  it("the second agent's install fails: exit 2; the first upgraded, the second cordoned, the third untouched", async () => {
    const third = { pid: await mainPid(EXTRA, 'k3s-agent') }
    await onHost('pi3-worker-2', 'mkdir -p /etc/k3s-standin && touch /etc/k3s-standin/fail-install')
    const run = await runPlaybookCli('upgrade', ['-i', inv4, '-e', `k3s_version=${PATCH}`])
    expect(run.code, run.out).toBe(2)
    // What the owner reads: the install's own error, where every node stands, and how to go on.
    expect(run.out).toMatch(
      new RegExp(
        String.raw`FAILED: \[pi3-worker-2\] k3s-upgrade-agent \| Install k3s_version on this agent .*\n` +
          String.raw`(.*\n)*?.*Download sha256 does not match`,
      ),
    )
    const stands = run.out.slice(run.out.indexOf('where the cluster stands now:'))
    expect(stands).toMatch(new RegExp(`pi-k3s +${PATCH.replace(/[.+]/g, '\\$&')} +Ready +\\(at the target\\)`))
    expect(stands).toMatch(new RegExp(`pi3-worker-1 +${PATCH.replace(/[.+]/g, '\\$&')} +Ready +\\(at the target\\)`))
    expect(stands).toMatch(/pi3-worker-2 +v1\.35\.0\+k3s1 +Ready, cordoned +\(the run stopped here\)/)
    expect(stands).toMatch(/pi3-worker-3 +v1\.35\.0\+k3s1 +Ready +\(not touched by this run\)/)
    expect(run.out).toContain(
      'hint: fix what stopped pi3-worker-2 (above), then run playbooks/upgrade.mts again: ' +
        `it skips the nodes at ${PATCH} ` +
        `and goes on with pi3-worker-2; pi3-worker-2 stays cordoned until it runs ${PATCH} and is Ready`,
    )
    expect(run.out).toContain(
      'once the failed and unreachable hosts are fixed, run it again: npx zx playbooks/upgrade.mts',
    )
    // From the server side and the hosts.
    const now = await nodes()
    expect(now['pi3-worker-1']).toEqual({ version: PATCH, ready: true, cordoned: false, marked: false })
    expect(now['pi3-worker-2']).toEqual({ version: NEW, ready: true, cordoned: true, marked: true })
    expect(now[EXTRA]).toEqual({ version: NEW, ready: true, cordoned: false, marked: false })
    expect(await installed('pi3-worker-2')).toBe(NEW)
    expect(await installed(EXTRA)).toBe(NEW)
    expect(await mainPid(EXTRA, 'k3s-agent')).toBe(third.pid)
    expect(run.recap[EXTRA]).toEqual({ ok: 0, changed: 0, unreachable: 0, failed: 0, skipped: 0 })
  })

  it('the rerun with the fault cleared goes on from the second agent and finishes the job', async () => {
    await onHost('pi3-worker-2', 'rm -f /etc/k3s-standin/fail-install')
    const run = await runPlaybookCli('upgrade', ['-i', inv4, '-e', `k3s_version=${PATCH}`])
    expect(run.code, run.out).toBe(0)
    expect(run.recap[SERVER].changed).toBe(0)
    expect(run.recap['pi3-worker-1'].changed).toBe(0)
    expect(run.out).toContain(
      'changed: [pi3-worker-2] k3s-upgrade-agent | Install k3s_version on this agent ' +
        `(the same flags: K3S_URL and the token, config.yaml) (upgraded k3s ${NEW} -> ${PATCH} (agent, same flags))`,
    )
    expect(run.out).toContain('changed: [pi3-worker-2] k3s-upgrade-agent | Uncordon this agent')
    await expectAllAt(PATCH, [SERVER, ...AGENTS, EXTRA])
    const again = await runPlaybookCli('upgrade', ['-i', inv4, '-e', `k3s_version=${PATCH}`])
    expect(again.code, again.out).toBe(0)
    for (const [h, c] of Object.entries(again.recap)) expect(c.changed, `${h}\n${again.out}`).toBe(0)
  })

  it('the fourth Pi is retired again and powered off', async () => {
    const run = await runPlaybookCli('retire', [EXTRA, '-i', inv4, '-e', `k3s_version=${PATCH}`])
    expect(run.code, run.out).toBe(0)
    await labStop(EXTRA)
    extraStarted = false
    expect(Object.keys(await nodes()).sort()).toEqual([SERVER, ...AGENTS].sort())
  })
})

describe("the way back to the inventory's release: the snapshot", () => {
  it('upgrade.mts with the inventory (older) release is refused as a downgrade, naming the snapshot', async () => {
    const run = await runPlaybookCli('upgrade', [])
    expect(run.code, run.out).toBe(2)
    expect(run.out).toContain(
      `- pi-k3s: ${PATCH} -> ${OLD} is a downgrade, which k3s does not support in place: the way back is the ` +
        'snapshot taken before the upgrade',
    )
    await expectAllAt(PATCH, [SERVER, ...AGENTS])
  })

  it(`as the README says: agents down in place, the server from the first snapshot: all at ${OLD}`, async () => {
    // 1. The agents, in place (older than the server is allowed); the server is not in this run.
    const agents = await runPlaybookCli('upgrade', ['--limit', 'agent', '-e', 'k3s_allow_downgrade=true'])
    expect(agents.code, agents.out).toBe(0)
    expect(agents.out).toContain(`(downgraded k3s ${PATCH} -> ${OLD} (agent, same flags))`)
    for (const a of AGENTS) expect(await installed(a)).toBe(OLD)
    // 2. The server: k3s uninstalled (its datastore with it), then rebuilt from the snapshot at the old release.
    await onHost(SERVER, '/usr/local/bin/k3s-uninstall.sh >/dev/null 2>&1')
    const rebuild = await runPlaybookCli('rebuild', [SERVER, '-e', `k3s_restore=${firstSnapshot}`])
    expect(rebuild.code, rebuild.out).toBe(0)
    expect(rebuild.out).toContain(`restored backup ${firstSnapshot}`)
    await expectAllAt(OLD, [SERVER, ...AGENTS])
    // The datastore is the one from before the first upgrade: what was made after it is gone.
    expect(await onHost(SERVER, `k3s kubectl get configmap ${BEFORE} -n default -o name`)).toBe(`configmap/${BEFORE}\n`)
    expect(await onHost(SERVER, `k3s kubectl get configmap ${AFTER} -n default --ignore-not-found -o name`)).toBe('')
    const site = await runPlaybookCli('site', [])
    expect(site.code, site.out).toBe(0)
    for (const [h, c] of Object.entries(site.recap)) expect(c.changed, `${h}\n${site.out}`).toBe(0)
  })
})
