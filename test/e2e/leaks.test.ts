// The security issue's leak test: on one converged lab, a fresh site run, a no-op rerun, a site run with an agent
// powered off (exit 4, a retry file), a rebuild of the server from a backup and a retire of pi3-worker-2, each typed
// as a user would with `--json FILE -vv --retry-file FILE`. Every planted secret (each value of the lab's secrets
// file, the server's token and node-token as they are on pi-k3s, the fetched kubeconfig's key material, the lab's
// SSH login key), also in base64, is searched for in each run's stdout, stderr, --json file, retry file and every
// file the run created or changed on the controller (the repo without node_modules and .git, the temp dir, $HOME,
// /tmp's top level, new /tmp dirs and Node's compile cache, /var/lib/pi-lab without the host disks), except the
// kubeconfig and the secrets file themselves: zero hits. Hits are reported by label, never by value.
// Self-contained: a fresh lab in beforeAll, down in afterAll.
// Run under the shared lab lock: flock /tmp/pi-lab-test.lock npx vitest run --project lab test/e2e/leaks.test.ts

import { spawn } from 'node:child_process'
import {
  closeSync,
  existsSync,
  fstatSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { homedir, tmpdir } from 'node:os'
import { isAbsolute, join } from 'node:path'
import { parse } from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  DEFAULT_HOSTS,
  LAB_DIR,
  LAB_KEY,
  LAB_KNOWN_HOSTS,
  LAB_SECRETS_FILE,
  labDown,
  labExec,
  labStart,
  labStop,
  labUp,
  labWipe,
} from '../lab/lab.ts'
import {
  LAB_INVENTORY,
  onHost,
  REPO,
  runPlaybookCli,
  until,
  type PlaybookCliRun,
  takeNightlyBackup,
} from './helpers.ts'

const VARS = (
  parse(readFileSync(LAB_INVENTORY, 'utf8')) as { all: { vars: { kubeconfig_path: string; k3s_backup_dir: string } } }
).all.vars
const KUBECONFIG = VARS.kubeconfig_path
const NAS = VARS.k3s_backup_dir
/** Not searched: the kubeconfig (it is the key material) and the secrets store (the run keeps the cluster token there). */
const NOT_SEARCHED = new Set([KUBECONFIG, LAB_SECRETS_FILE])
/** Only the first 5 MB of a file are read. */
const READ_CAP = 5 * 1024 * 1024
/** Shorter values could not be searched for without false hits. */
const MIN_SECRET = 12
const TMP_DIRS = [...new Set(['/tmp', tmpdir()])]

interface Kubeconfig {
  users?: { name?: string; user?: Record<string, unknown> }[]
}
interface Artifact {
  /** 'stdout', 'stderr' or a file's path. */
  where: string
  text: string
}
interface RunRecord {
  name: string
  command: string
  run: PlaybookCliRun
  json: string
  retry: string
  /** Regular files created or changed on the controller while the run ran. */
  changed: string[]
  artifacts: Artifact[]
}
interface NodeList {
  items: {
    metadata: { name: string }
    status: { conditions: { type: string; status: string; lastHeartbeatTime?: string }[] }
  }[]
}

/** Every form of a secret searched for, by value; the label is what a report names (never the value). */
const planted = new Map<string, string>()
const records: RunRecord[] = []
const timings: Record<string, number> = {}
let work = ''

function plant(label: string, value: string): void {
  if (value.length < MIN_SECRET)
    throw new Error(`${label} is shorter than ${MIN_SECRET} characters: too short to search for without false hits`)
  if (!planted.has(value)) planted.set(value, label)
}

/** The value, and its base64 as a Secret's data or `base64` shows it (whole 3-byte groups: also base64 of value + "\n"). */
function plantWithBase64(label: string, value: string): void {
  plant(label, value)
  plant(
    `${label} (base64)`,
    Buffer.from(value)
      .toString('base64')
      .slice(0, Math.floor(Buffer.byteLength(value) / 3) * 4),
  )
}

/** Every leaf of a parsed YAML document, with its dotted path. */
function leaves(node: unknown, path: string[] = []): [string, string][] {
  if (typeof node === 'string' || typeof node === 'number') return [[path.join('.'), String(node)]]
  if (node !== null && typeof node === 'object')
    return Object.entries(node).flatMap(([k, v]) => leaves(v, [...path, k]))
  return []
}

/** The base64 lines between a PEM's BEGIN and END (a short last line is left out). */
function pemBodyLines(pem: string): string[] {
  return pem
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length >= 16 && !l.startsWith('-----'))
}

/** What the secrets are now: the store, the server's token files (read through the lab), the kubeconfig, the login key. */
async function learnSecrets(after: string): Promise<void> {
  for (const [path, value] of leaves(parse(readFileSync(LAB_SECRETS_FILE, 'utf8')) as unknown))
    plantWithBase64(`secrets file ${path}`, value)
  // node-token is a copy of token that a server restored from a backup (token, tls, cred) may not have again.
  for (const f of ['token', 'node-token']) {
    const r = await labExec('pi-k3s', `cat /var/lib/rancher/k3s/server/${f}`)
    if (f === 'node-token' && r.code !== 0) continue
    if (r.code !== 0) throw new Error(`pi-k3s: cannot read /var/lib/rancher/k3s/server/${f}: ${r.stderr}`)
    const full = r.stdout.trim()
    plantWithBase64(`pi-k3s server/${f} (after ${after})`, full)
    plantWithBase64(`pi-k3s server/${f}, its secret part (after ${after})`, full.slice(full.lastIndexOf(':') + 1))
  }
  const kc = parse(readFileSync(KUBECONFIG, 'utf8')) as Kubeconfig
  for (const u of kc.users ?? []) {
    for (const [k, v] of Object.entries(u.user ?? {})) {
      if (typeof v !== 'string') continue
      if (k === 'client-key-data') {
        plant(`kubeconfig client-key-data (after ${after})`, v)
        const pem = Buffer.from(v, 'base64').toString('utf8')
        plant(`kubeconfig client key, decoded PEM (after ${after})`, pem)
        pemBodyLines(pem).forEach((line, i) => plant(`kubeconfig client key, PEM line ${i + 1} (after ${after})`, line))
      } else if (k === 'client-certificate-data') {
        plant(`kubeconfig client-certificate-data (after ${after})`, v)
      } else if (k === 'token' || k === 'password') {
        plantWithBase64(`kubeconfig user ${k} (after ${after})`, v)
      }
    }
  }
  pemBodyLines(readFileSync(LAB_KEY, 'utf8')).forEach((line, i) =>
    plant(`lab SSH login key (ssh_key_file), line ${i + 1}`, line),
  )
}

/** `where: label` for every planted secret found in these texts. */
function leaksIn(artifacts: readonly Artifact[]): string[] {
  const hits: string[] = []
  for (const a of artifacts)
    for (const [value, label] of planted) if (a.text.includes(value)) hits.push(`${a.where}: ${label}`)
  return hits
}

/** Text fit for a failure message: every planted secret replaced by its label. */
function redact(text: string): string {
  let out = text
  for (const [value, label] of [...planted].sort((a, b) => b[0].length - a[0].length))
    out = out.split(value).join(`<${label}>`)
  return out
}

/**
 * Regular files under root whose ctime is at or after sinceNs. Every create, write, rename or chmod sets a file's
 * ctime to now and nothing can set it back, so this is what a before/after comparison finds, with one walk.
 */
function filesChangedSince(
  sinceNs: bigint,
  root: string,
  opts: { prune?: string[]; maxDepth?: number } = {},
): Promise<string[]> {
  if (!existsSync(root)) return Promise.resolve([])
  const args = [root, '-xdev', ...(opts.maxDepth === undefined ? [] : ['-maxdepth', String(opts.maxDepth)])]
  for (const p of opts.prune ?? []) args.push('-path', p, '-prune', '-o')
  args.push('-type', 'f', '-printf', '%C@ %p\\0')
  return new Promise((resolve, reject) => {
    const child = spawn('find', args, { stdio: ['ignore', 'pipe', 'ignore'] })
    const chunks: Buffer[] = []
    child.stdout.on('data', (d: Buffer) => chunks.push(d))
    child.on('error', reject)
    // find exits 1 when a file vanished while it walked (other processes' temp files): what it printed stands.
    child.on('close', () => {
      const files: string[] = []
      for (const rec of Buffer.concat(chunks).toString('utf8').split('\0')) {
        const m = /^(\d+)\.?(\d*) (.+)$/s.exec(rec)
        if (m && BigInt(m[1]) * NS + BigInt(m[2].slice(0, 9).padEnd(9, '0')) >= sinceNs) files.push(m[3])
      }
      resolve(files)
    })
  })
}
const NS = BigInt(1e9)

interface RunStart {
  /** The controller's file clock when the run started. */
  sinceNs: bigint
  /** Directories at the top level of /tmp then. */
  tmpDirs: Set<string>
}

function tmpDirsNow(): Set<string> {
  const dirs = new Set<string>()
  for (const tmp of TMP_DIRS)
    for (const d of readdirSync(tmp, { withFileTypes: true })) if (d.isDirectory()) dirs.add(join(tmp, d.name))
  return dirs
}

function runStart(): RunStart {
  const marker = join(work, '.run-start')
  writeFileSync(marker, '')
  const sinceNs = statSync(marker, { bigint: true }).ctimeNs
  rmSync(marker)
  return { sinceNs, tmpDirs: tmpDirsNow() }
}

/** Files created or changed since the start in the places a run may write on the controller. */
async function changedSince(start: RunStart): Promise<string[]> {
  const since = start.sinceNs
  const walks = [
    filesChangedSince(since, REPO, { prune: [join(REPO, 'node_modules'), join(REPO, '.git')] }),
    filesChangedSince(since, homedir()),
    filesChangedSince(since, LAB_DIR, { prune: [join(LAB_DIR, 'hosts')] }),
    filesChangedSince(since, work),
    ...TMP_DIRS.flatMap((tmp) => [
      filesChangedSince(since, tmp, { maxDepth: 1 }),
      filesChangedSince(since, join(tmp, 'node-compile-cache')), // Node's compile cache, which the playbooks turn on
    ]),
    // A directory made at the top of /tmp during the run: everything in it is new.
    ...[...tmpDirsNow()].filter((d) => !start.tmpDirs.has(d)).map((d) => filesChangedSince(BigInt(0), d)),
  ]
  return [...new Set((await Promise.all(walks)).flat())].sort()
}

/** The first READ_CAP bytes as latin1 (byte for byte, so ASCII secrets match in any file); undefined when gone. */
function readHead(path: string): string | undefined {
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch {
    return undefined // removed since the walk (another process's temp file)
  }
  try {
    const size = Math.min(fstatSync(fd).size, READ_CAP)
    const buf = Buffer.alloc(size)
    let at = 0
    while (at < size) {
      const n = readSync(fd, buf, at, size - at, at)
      if (n === 0) break
      at += n
    }
    return buf.subarray(0, at).toString('latin1')
  } finally {
    closeSync(fd)
  }
}

const modeOf = (path: string) => (statSync(path).mode & 0o777).toString(8)

/** One playbook run as a user types it, with --json, -vv and --retry-file; what it wrote, and the secrets after it. */
async function leakRun(name: string, playbook: string, args: string[]): Promise<RunRecord> {
  const json = join(work, `${name}.jsonl`)
  const retry = join(work, `${name}.retry`)
  const flags = [...args, '--json', json, '-vv', '--retry-file', retry]
  const command = `npx zx playbooks/${playbook}.mts -i ${LAB_INVENTORY} ${flags.join(' ')}`
  const start = runStart()
  const t0 = Date.now()
  const run = await runPlaybookCli(playbook, flags)
  timings[name] = (Date.now() - t0) / 1000
  const changed = await changedSince(start)
  await learnSecrets(name)
  const artifacts: Artifact[] = [
    { where: 'stdout', text: run.stdout },
    { where: 'stderr', text: run.stderr },
  ]
  for (const f of new Set([json, retry, ...changed])) {
    if (NOT_SEARCHED.has(f)) continue
    const text = readHead(f)
    if (text !== undefined) artifacts.push({ where: f, text })
  }
  const rec = { name, command, run, json, retry, changed, artifacts }
  records.push(rec)
  return rec
}

function expectNoLeaks(rec: RunRecord): void {
  expect
    .soft(
      leaksIn(rec.artifacts),
      `planted secrets in what \`${rec.command}\` wrote (${rec.artifacts.length} streams and files searched)`,
    )
    .toEqual([])
}

/** The --json file, the retry file (when written) and the kubeconfig are the owner's only. */
function expectPrivate(rec: RunRecord): void {
  expect.soft(modeOf(rec.json), `mode of ${rec.json}`).toBe('600')
  if (existsSync(rec.retry)) expect.soft(modeOf(rec.retry), `mode of ${rec.retry}`).toBe('600')
  expect.soft(modeOf(KUBECONFIG), `mode of ${KUBECONFIG}`).toBe('600')
}

const nodes = async () => (JSON.parse(await onHost('pi-k3s', 'k3s kubectl get nodes -o json')) as NodeList).items
const readyCondition = (n: NodeList['items'][number]) => n.status.conditions.find((c) => c.type === 'Ready')

beforeAll(async () => {
  expect(isAbsolute(KUBECONFIG) && isAbsolute(NAS), 'kubeconfig_path and k3s_backup_dir of the lab inventory').toBe(
    true,
  )
  work = mkdtempSync(join(tmpdir(), 'leaks-e2e-'))
  rmSync(NAS, { recursive: true, force: true })
  // down first: an artifact server left running by an older checkout would lack the lab's app routes.
  await labDown()
  await labUp(DEFAULT_HOSTS, { fresh: true })
}, 900_000)

afterAll(async () => {
  await labDown()
  rmSync(work, { recursive: true, force: true })
  rmSync(NAS, { recursive: true, force: true })
  console.log(`leaks lab timings (s): ${JSON.stringify(timings)}`)
})

describe('no planted secret in anything a run writes on the controller', () => {
  it('site on a freshly flashed lab: the search finds the key where it is (the kubeconfig), and nowhere the run wrote', async () => {
    const rec = await leakRun('site-fresh', 'site', [])
    expect.soft(rec.run.code, redact(rec.run.out)).toBe(0)

    // The bookkeeping can fail: the walk sees what the run wrote (in the lab dir, in the temp dir)...
    expect(rec.changed).toContain(KUBECONFIG)
    expect(rec.changed).toContain(rec.json)
    // ...and the search finds the secrets where they are: the kubeconfig's key, the store's values, a Secret's base64.
    const kc = parse(readFileSync(KUBECONFIG, 'utf8')) as Kubeconfig
    const keyData = kc.users?.[0]?.user?.['client-key-data']
    expect(typeof keyData, 'client-key-data in the kubeconfig').toBe('string')
    const keyLabel = planted.get(String(keyData))
    expect(keyLabel).toBe('kubeconfig client-key-data (after site-fresh)')
    expect(leaksIn([{ where: KUBECONFIG, text: readFileSync(KUBECONFIG, 'latin1') }])).toContain(
      `${KUBECONFIG}: ${keyLabel}`,
    )
    const store = leaves(parse(readFileSync(LAB_SECRETS_FILE, 'utf8')) as unknown)
    expect(store.map(([path]) => path)).toEqual(
      expect.arrayContaining([
        'pi-cluster.onepassword-service-account.token',
        'pi-cluster.flux-github-pat.token',
        'pi-cluster.pihole.password',
        'pi-cluster.k3s-node-token.token',
      ]),
    )
    const inStore = leaksIn([{ where: 'store', text: readFileSync(LAB_SECRETS_FILE, 'latin1') }])
    for (const [path] of store) expect(inStore).toContain(`store: secrets file ${path}`)
    const eso = await onHost(
      'pi-k3s',
      "k3s kubectl -n external-secrets get secret onepassword-service-account -o jsonpath='{.data.token}'",
    )
    expect(leaksIn([{ where: 'the ESO Secret', text: eso }])).toEqual([
      'the ESO Secret: secrets file pi-cluster.onepassword-service-account.token (base64)',
    ])
    // The run did handle the secrets it could leak: the PAT (bootstrap), the Pi-hole password (the API login).
    expect(redact(rec.run.out)).toMatch(/changed: \[pi-k3s\] flux-bootstrap \| Bootstrap Flux/)
    expect(redact(rec.run.out)).toMatch(/ {2}pihole +ok +Pi-hole API \S+: login, blocking, logout/)

    expectNoLeaks(rec)
    expectPrivate(rec)
    expect(existsSync(rec.retry), 'no retry file after a run where every host is ok').toBe(false)
  })

  it('site again (no-op): changed=0, no secret in anything it wrote', async () => {
    const rec = await leakRun('site-rerun', 'site', [])
    expect.soft(rec.run.code, redact(rec.run.out)).toBe(0)
    for (const [h, c] of Object.entries(rec.run.recap)) expect.soft(c.changed, `${h}\n${redact(rec.run.out)}`).toBe(0)
    expectNoLeaks(rec)
    expectPrivate(rec)
  })

  it('site with pi3-worker-1 powered off: exit 4, a retry file naming it, no secret in it or anything else the run wrote', async () => {
    await labStop('pi3-worker-1')
    try {
      // 2 s per connection attempt (4 attempts and their backoff, ~11 s, before the host counts as unreachable).
      const rec = await leakRun('site-unreachable', 'site', ['-e', 'connect_timeout=2'])
      expect.soft(rec.run.code, redact(rec.run.out)).toBe(4)
      expect.soft(rec.run.recap['pi3-worker-1'], redact(rec.run.out)).toMatchObject({ unreachable: 1, failed: 0 })
      expect(rec.changed).toContain(rec.retry)
      expect(redact(readFileSync(rec.retry, 'utf8'))).toBe('pi3-worker-1\n')
      expectNoLeaks(rec)
      expectPrivate(rec)
    } finally {
      const started = Date.now()
      await labStart('pi3-worker-1')
      // Ready from a heartbeat of this boot (the Node stays Ready for a few seconds after the power cut).
      await until('pi3-worker-1 Ready again after its power-on', 90_000, async () => {
        const ready = readyCondition((await nodes()).find((n) => n.metadata.name === 'pi3-worker-1')!)
        return ready?.status === 'True' && Date.parse(ready.lastHeartbeatTime ?? '') >= started - 1000
          ? true
          : undefined
      })
    }
  })

  it('rebuild of the server (wiped) from a backup: agents Ready again, no secret in anything it wrote', async () => {
    // Today's: a rebuild restores no backup older than backup_max_age (36h) unless told to.
    const today = new Date().toLocaleDateString('sv-SE') // YYYY-MM-DD, the controller's day
    await takeNightlyBackup(NAS, today)
    await labWipe('pi-k3s')
    const rec = await leakRun('rebuild-server', 'rebuild', ['pi-k3s'])
    expect.soft(rec.run.code, redact(rec.run.out)).toBe(0)
    expect
      .soft(redact(rec.run.out))
      .toMatch(new RegExp(`changed: \\[pi-k3s\\] k3s-server \\| Restore the datastore .*backup ${today}\\b`))
    expect(rec.changed).toContain(LAB_KNOWN_HOSTS) // pi-k3s's new host key, recorded
    expectNoLeaks(rec)
    expectPrivate(rec)
    await until('all three nodes Ready', 120_000, async () => {
      const ns = await nodes()
      return ns.length === 3 && ns.every((n) => readyCondition(n)?.status === 'True') ? true : undefined
    })
  })

  it('retire pi3-worker-2: its Node gone, no secret in anything the run wrote', async () => {
    const rec = await leakRun('retire-worker-2', 'retire', ['pi3-worker-2'])
    expect.soft(rec.run.code, redact(rec.run.out)).toBe(0)
    expect((await nodes()).map((n) => n.metadata.name).sort()).toEqual(['pi-k3s', 'pi3-worker-1'])
    expectNoLeaks(rec)
    expectPrivate(rec)
  })

  it('every stream and file of every run, searched again for every secret known at the end: none', () => {
    expect(records.map((r) => r.name)).toEqual([
      'site-fresh',
      'site-rerun',
      'site-unreachable',
      'rebuild-server',
      'retire-worker-2',
    ])
    const hits = records.flatMap((r) => leaksIn(r.artifacts).map((h) => `${r.command}: ${h}`))
    expect(hits).toEqual([])
    const files = new Set(records.flatMap((r) => r.artifacts.map((a) => a.where)))
    console.log(
      `leak check: ${planted.size} secret forms searched in the stdout and stderr of ${records.length} runs and ${files.size - 2} files they wrote; ` +
        records.map((r) => `${r.name}: ${r.changed.length} files changed`).join(', '),
    )
  })
})
