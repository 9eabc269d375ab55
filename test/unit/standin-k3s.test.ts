// The k3s STAND-IN (test/standins/k3s/): the install script, the server, agents and kubectl, run as real
// processes on 127.0.0.1 in temp dirs (K3S_STANDIN_ROOT), with python3 from PATH. These check what a user of
// the real k3s would see: files and modes, token format, node-password and CA-hash refusals, kubectl output.
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { freePort } from './fakes.ts'
import { cleanEnv, lendKubectl, run, type RunResult } from './standin-procs.ts'

const STANDINS = resolve(import.meta.dirname, '../standins')
const VERSION = 'v1.34.3+k3s1'
const NODE_PASSWORD_TEXT =
  "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server " +
  'node-passwd entry, try enabling a unique node name with the --with-node-id flag'

interface Daemon {
  proc: ChildProcess
  output: () => string
  exited: Promise<number>
}

const daemons: Daemon[] = []
let work = ''
let artifacts: Server | undefined
let artifactBase = ''

function start(cmd: string, args: readonly string[], env: Record<string, string>): Daemon {
  const proc = spawn(cmd, args, { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()))
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()))
  const exited = new Promise<number>((done) => proc.on('exit', (code) => done(code ?? -1)))
  const d: Daemon = { proc, output: () => out, exited }
  daemons.push(d)
  return d
}

async function stop(d: Daemon): Promise<void> {
  if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGTERM')
  const timer = setTimeout(() => d.proc.kill('SIGKILL'), 5000)
  await d.exited
  clearTimeout(timer)
}

async function waitUntil(what: string, check: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms
  for (;;) {
    if (await check()) return
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 200))
  }
}

async function waitForOutput(d: Daemon, text: string | RegExp, ms = 15_000): Promise<void> {
  const has = (): boolean => (typeof text === 'string' ? d.output().includes(text) : text.test(d.output()))
  await waitUntil(
    `output ${String(text)}; got:\n${d.output()}`,
    () => {
      if (d.proc.exitCode !== null && !has())
        throw new Error(`process exited (${d.proc.exitCode}) before ${String(text)}:\n${d.output()}`)
      return has()
    },
    ms,
  )
}

/** Serves test/standins like the lab's artifact server: @@ARTIFACT_BASE@@ becomes the base URL. */
async function serveArtifacts(): Promise<void> {
  const port = await freePort()
  artifactBase = `http://127.0.0.1:${port}`
  artifacts = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', artifactBase).pathname)
    const parts = path.split('/').filter(Boolean)
    if (parts.some((p) => p === '..' || p === '.')) {
      res.writeHead(404).end()
      return
    }
    readFile(join(STANDINS, ...parts))
      .then((body) => {
        const text = body.toString('utf8').replaceAll('@@ARTIFACT_BASE@@', artifactBase)
        res.writeHead(200, { 'content-length': Buffer.byteLength(text) }).end(text)
      })
      .catch(() => res.writeHead(404).end('not found\n'))
  })
  await new Promise<void>((done) => artifacts?.listen(port, '127.0.0.1', done))
}

const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex')
const mode = async (p: string): Promise<number> => (await stat(p)).mode & 0o777

interface NodeJson {
  metadata: { name: string; labels: Record<string, string>; creationTimestamp: string; uid: string }
  spec: { taints?: { key: string; value?: string; effect: string }[] }
  status: { conditions: { type: string; status: string }[]; nodeInfo: { kubeletVersion: string } }
}
interface ListJson<T> {
  kind: string
  items: T[]
}
const readyOf = (n: NodeJson): string | undefined => n.status.conditions.find((c) => c.type === 'Ready')?.status

describe('k3s stand-in (test fixture imitating k3s)', { timeout: 60_000 }, () => {
  let script = ''
  let serverRoot = ''
  let bin = ''
  let kubectl = ''
  let port = 0
  let server: Daemon | undefined
  let fullToken = ''
  let home = ''
  /** `kubectl` on the server host: the stand-in's link, which execs the real client with the server's k3s.yaml. */
  const kc = (args: readonly string[], input = ''): Promise<RunResult> =>
    run(kubectl, args, { K3S_STANDIN_ROOT: serverRoot, HOME: home }, input)
  const node = async (name: string): Promise<NodeJson | undefined> => {
    const r = await kc(['get', 'node', name, '-o', 'json'])
    return r.code === 0 ? (JSON.parse(r.stdout) as NodeJson) : undefined
  }
  /** The agents started, by their root (the last one started there). */
  const agents = new Map<string, { daemon: Daemon; env: Record<string, string> }>()
  const agent = async (root: string, config: string, env: Record<string, string>): Promise<Daemon> => {
    await mkdir(join(root, 'etc/rancher/k3s'), { recursive: true })
    await writeFile(join(root, 'etc/rancher/k3s/config.yaml'), config)
    const all = { K3S_STANDIN_ROOT: root, K3S_URL: `https://127.0.0.1:${port}`, ...env }
    const daemon = start(bin, ['agent'], all)
    agents.set(root, { daemon, env: all })
    return daemon
  }

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'standin-k3s-'))
    await serveArtifacts()
    script = join(work, 'install.sh')
    // fetched the way the product fetches get.k3s.io
    const got = await run('curl', ['-sfL', `${artifactBase}/k3s/install.sh`, '-o', script])
    expect(got.code).toBe(0)
    serverRoot = join(work, 'server')
    bin = join(serverRoot, 'usr/local/bin/k3s')
    kubectl = join(serverRoot, 'usr/local/bin/kubectl')
    port = await freePort()
    home = join(work, 'home') // the real kubectl's discovery cache
    await mkdir(home)
    lendKubectl(serverRoot)
  }, 30_000)

  afterAll(async () => {
    await Promise.all(daemons.map(stop))
    await new Promise<void>((done) => (artifacts ? artifacts.close(() => done()) : done()))
    if (work) await rm(work, { recursive: true, force: true })
  }, 30_000)

  it('install.sh installs the stamped binary, kubectl link, server unit and a 0600 env file rewritten on every run', async () => {
    const r = await run('sh', [script], {
      K3S_STANDIN_ROOT: serverRoot,
      INSTALL_K3S_VERSION: VERSION,
      INSTALL_K3S_EXEC: 'server --disable=traefik',
      K3S_TOKEN: 'lab-secret',
    })
    expect(r.stderr).toBe('')
    expect(r.code).toBe(0)
    expect(r.stdout).toContain(`[INFO]  Downloading binary ${artifactBase}/k3s/k3s-standin.py`)
    expect(await mode(bin)).toBe(0o755)
    for (const m of ['common.py', 'kubeapi.py', 'server.py']) // the stand-in's modules
      expect(await mode(join(serverRoot, 'usr/local/lib/k3s-standin', m))).toBe(0o644)
    expect(await readlink(kubectl)).toBe('k3s')
    expect((await lstat(join(serverRoot, 'usr/local/bin/k3s-uninstall.sh'))).isFile()).toBe(true)
    const unit = await readFile(join(serverRoot, 'etc/systemd/system/k3s.service'), 'utf8')
    expect(unit).toContain("ExecStart=/usr/local/bin/k3s \\\n    server \\\n\t'--disable=traefik' \\\n")
    expect(unit).toContain('EnvironmentFile=-/etc/systemd/system/k3s.service.env')
    expect(unit).toContain('Type=notify')
    const envFile = join(serverRoot, 'etc/systemd/system/k3s.service.env')
    expect(await mode(envFile)).toBe(0o600)
    expect(await readFile(envFile, 'utf8')).toBe("K3S_TOKEN='lab-secret'\n")

    const v = await run(bin, ['--version'])
    expect(v.stdout).toMatch(/^k3s version v1\.34\.3\+k3s1 \([0-9a-f]{8}\)\ngo version go1\.24\.\d+\n$/)

    // same flags without K3S_TOKEN: the old token is gone from the env file
    const again = await run('sh', [script], {
      K3S_STANDIN_ROOT: serverRoot,
      INSTALL_K3S_VERSION: VERSION,
      INSTALL_K3S_EXEC: 'server --disable=traefik',
    })
    expect(again.code).toBe(0)
    expect(again.stdout).toContain('Skipping binary downloaded, installed k3s matches hash')
    expect(await readFile(envFile, 'utf8')).toBe('')
  })

  it('install.sh: agent unit from K3S_URL, the real missing-token error, a version is required, and rerunning without "agent" adds a server unit', async () => {
    const root = join(work, 'agent-install')
    const base = { K3S_STANDIN_ROOT: root, INSTALL_K3S_VERSION: VERSION, K3S_URL: 'https://10.199.55.10:6443' }
    const noToken = await run('sh', [script], base)
    expect(noToken.code).toBe(1)
    expect(noToken.stderr).toContain(
      "[ERROR]  Defaulted k3s exec command to 'agent' because K3S_URL is defined, but K3S_TOKEN or K3S_TOKEN_FILE is not defined.",
    )
    const ok = await run('sh', [script], { ...base, K3S_TOKEN: 'lab-secret' })
    expect(ok.code).toBe(0)
    const unit = await readFile(join(root, 'etc/systemd/system/k3s-agent.service'), 'utf8')
    expect(unit).toContain('ExecStart=/usr/local/bin/k3s \\\n    agent \\\n\n')
    expect(unit).toContain('EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env')
    expect(await readFile(join(root, 'etc/systemd/system/k3s-agent.service.env'), 'utf8')).toBe(
      "K3S_TOKEN='lab-secret'\nK3S_URL='https://10.199.55.10:6443'\n",
    )
    expect((await stat(join(root, 'usr/local/bin/k3s-agent-uninstall.sh'))).isFile()).toBe(true)

    // the real script's pitfall: an "upgrade" without `agent` (and without K3S_URL) installs a server unit
    const upgrade = await run('sh', [script], { K3S_STANDIN_ROOT: root, INSTALL_K3S_VERSION: 'v1.35.0+k3s1' })
    expect(upgrade.code).toBe(0)
    expect(await readFile(join(root, 'etc/systemd/system/k3s.service'), 'utf8')).toContain('    server \\\n')
    expect((await stat(join(root, 'etc/systemd/system/k3s-agent.service'))).isFile()).toBe(true)
    expect((await run(join(root, 'usr/local/bin/k3s'), ['-v'])).stdout).toMatch(/^k3s version v1\.35\.0\+k3s1 /)

    const noVersion = await run('sh', [script], { K3S_STANDIN_ROOT: root })
    expect(noVersion.code).toBe(1)
    expect(noVersion.stderr).toContain('INSTALL_K3S_VERSION is required by the k3s stand-in installer')
  })

  it('the server writes token and node-token as K10<sha256 of its CA>::server:<secret>, and a kubeconfig with the configured mode', async () => {
    await mkdir(join(serverRoot, 'etc/rancher/k3s'), { recursive: true })
    await writeFile(
      join(serverRoot, 'etc/rancher/k3s/config.yaml'),
      [
        'token: "lab-secret"',
        'node-name: srv',
        'write-kubeconfig-mode: "0644"',
        'node-label:',
        '  - "tier=control"',
        'disable:',
        '  - traefik',
        '',
      ].join('\n'),
    )
    server = start(bin, ['server'], {
      K3S_STANDIN_ROOT: serverRoot,
      K3S_STANDIN_PORT: String(port),
      K3S_STANDIN_NOTREADY_SECONDS: '3',
    })
    await waitForOutput(server, 'k3s is up and running')
    expect(server.output()).toContain(`msg="Starting k3s ${VERSION} (`)

    const ca = await readFile(join(serverRoot, 'var/lib/rancher/k3s/server/tls/server-ca.crt'), 'utf8')
    expect(ca).toMatch(/^-----BEGIN CERTIFICATE-----\n/)
    fullToken = `K10${sha256(ca)}::server:lab-secret`
    for (const f of ['token', 'node-token']) {
      const p = join(serverRoot, 'var/lib/rancher/k3s/server', f)
      expect(await readFile(p, 'utf8')).toBe(`${fullToken}\n`)
      expect(await mode(p)).toBe(0o600)
    }
    expect((await stat(join(serverRoot, 'var/lib/rancher/k3s/server/db/state.db'))).isFile()).toBe(true)
    const kubeconfig = join(serverRoot, 'etc/rancher/k3s/k3s.yaml')
    expect(await mode(kubeconfig)).toBe(0o644)
    const text = await readFile(kubeconfig, 'utf8')
    expect(text).toContain(`    server: https://127.0.0.1:${port}\n  name: default\n`)
    expect(text).toContain('current-context: default\n')
    expect(text).toMatch(/client-key-data: [A-Za-z0-9+/=]+\n/)

    const srv = await node('srv')
    expect(srv && readyOf(srv)).toBe('True')
    expect(srv?.metadata.labels).toMatchObject({
      tier: 'control',
      'node-role.kubernetes.io/control-plane': 'true',
      'kubernetes.io/hostname': 'srv',
    })
    expect(srv?.status.nodeInfo.kubeletVersion).toBe(VERSION)
    const traefik = await kc(['get', 'deployment', 'traefik', '-n', 'kube-system'])
    expect(traefik.code).toBe(1)
    expect(traefik.stderr).toBe('Error from server (NotFound): deployments.apps "traefik" not found\n')
  })

  it('an agent joins with the full token and is Ready with the labels and taints of its config.yaml', async () => {
    const a1 = await agent(
      join(work, 'agent1'),
      ['node-name: w1', 'node-label:', '  - "role=dns"', 'node-taint:', '  - "dedicated=dns:NoSchedule"', ''].join(
        '\n',
      ),
      { K3S_TOKEN: fullToken },
    )
    await waitForOutput(a1, 'Successfully registered node \\"w1\\"')
    await waitUntil('w1 Ready', async () => {
      const n = await node('w1')
      return n !== undefined && readyOf(n) === 'True'
    })
    const list = await kc(['get', 'nodes', '-o', 'json'])
    const nodes = JSON.parse(list.stdout) as ListJson<NodeJson>
    expect(nodes.kind).toBe('List')
    const w1 = nodes.items.find((n) => n.metadata.name === 'w1')
    expect(w1?.metadata.labels.role).toBe('dns')
    expect(w1?.spec.taints).toEqual([{ key: 'dedicated', value: 'dns', effect: 'NoSchedule' }])
    expect(w1?.metadata.uid).toMatch(/^[0-9a-f-]{36}$/)
    expect(w1?.metadata.creationTimestamp).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    expect((await readFile(join(work, 'agent1/etc/rancher/node/password'), 'utf8')).trim()).toMatch(/^[0-9a-f]{32}$/)
    const table = await kc(['get', 'nodes'])
    expect(table.stdout).toMatch(/^NAME\s+STATUS\s+ROLES\s+AGE\s+VERSION\n/)
    expect(table.stdout).toMatch(/\nsrv\s+Ready\s+control-plane,master\s+\S+\s+v1\.34\.3\+k3s1\n/)
    expect(table.stdout).toMatch(/\nw1\s+Ready\s+<none>\s+\S+\s+v1\.34\.3\+k3s1\n/)
  })

  it("a second agent with the same name and another node password is refused with k3s's text until the Node is deleted", async () => {
    const a2 = await agent(join(work, 'agent2'), 'node-name: w1\n', {
      K3S_TOKEN: 'lab-secret',
      K3S_STANDIN_RETRY_SECONDS: '0.5',
    })
    await waitForOutput(a2, `Waiting to retrieve agent configuration; server is not ready: ${NODE_PASSWORD_TEXT}`)
    expect(a2.output()).not.toContain('Successfully registered')
    const secret = await kc(['get', 'secret', 'w1.node-password.k3s', '-n', 'kube-system', '-o', 'json'])
    expect(secret.code).toBe(0)

    const del = await kc(['delete', 'node', 'w1'])
    expect(del).toMatchObject({ code: 0, stdout: 'node "w1" deleted\n' })
    await waitForOutput(a2, 'Successfully registered node \\"w1\\"')
    await waitUntil('w1 Ready again', async () => {
      const n = await node('w1')
      return n !== undefined && readyOf(n) === 'True'
    })
    // a rejoined node has only its config: the taint of the first agent's config.yaml is gone
    expect((await node('w1'))?.spec.taints).toBeUndefined()
  })

  it('an agent holding a full token with another CA hash keeps logging the CA-hash error', async () => {
    const bad = `K10${'0'.repeat(64)}::server:lab-secret`
    const a3 = await agent(join(work, 'agent3'), 'node-name: w3\n', {
      K3S_TOKEN: bad,
      K3S_STANDIN_RETRY_SECONDS: '0.3',
    })
    const text = `token CA hash does not match the Cluster CA certificate hash: ${'0'.repeat(64)} != ${fullToken.slice(3, 67)}`
    await waitUntil('the CA-hash error twice', () => a3.output().split(text).length > 2)
    expect(a3.proc.exitCode).toBeNull()
    expect(await node('w3')).toBeUndefined()
    await stop(a3)
  })

  it('kubectl apply -f - of a Secret: created, unchanged, configured; a missing namespace is refused', async () => {
    // data, not stringData: with stringData the real kubectl says "configured" on every apply (its patch always
    // carries stringData, which the server folds into data)
    const manifest = (token: string): string =>
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'List',
        items: [
          { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'external-secrets' } },
          {
            apiVersion: 'v1',
            kind: 'Secret',
            metadata: { name: 'onepassword-service-account', namespace: 'external-secrets' },
            type: 'Opaque',
            data: { token: Buffer.from(token).toString('base64') },
          },
        ],
      })
    expect(await kc(['apply', '-f', '-'], manifest('ops_first'))).toMatchObject({
      code: 0,
      stdout: 'namespace/external-secrets created\nsecret/onepassword-service-account created\n',
    })
    expect(await kc(['apply', '-f', '-'], manifest('ops_first'))).toMatchObject({
      code: 0,
      stdout: 'namespace/external-secrets unchanged\nsecret/onepassword-service-account unchanged\n',
    })
    expect(await kc(['apply', '-f', '-'], manifest('ops_second'))).toMatchObject({
      code: 0,
      stdout: 'namespace/external-secrets unchanged\nsecret/onepassword-service-account configured\n',
    })
    const got = await kc(['get', 'secret', 'onepassword-service-account', '-n', 'external-secrets', '-o', 'json'])
    const secret = JSON.parse(got.stdout) as { data: Record<string, string>; metadata: { namespace: string } }
    expect(Buffer.from(secret.data.token, 'base64').toString()).toBe('ops_second')
    expect(secret.metadata.namespace).toBe('external-secrets')

    const single = JSON.stringify({
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 's', namespace: 'nope' },
      data: {},
    })
    const refused = await kc(['apply', '-f', '-'], single)
    expect(refused.code).toBe(1)
    expect(refused.stderr).toBe(
      'Error from server (NotFound): error when creating "STDIN": namespaces "nope" not found\n',
    )
    expect((await kc(['get', 'namespace', 'external-secrets', '-o', 'json'])).stdout).toContain('"phase": "Active"')
  })

  it('label, taint and errors with the real kubectl; a node without heartbeats turns NotReady', async () => {
    expect(await kc(['label', 'node', 'w1', 'disk=ssd'])).toMatchObject({ code: 0, stdout: 'node/w1 labeled\n' })
    expect(await kc(['label', 'node', 'w1', 'disk=hdd'])).toMatchObject({
      code: 1,
      stderr: "error: 'disk' already has a value (ssd), and --overwrite is false\n",
    })
    expect(await kc(['taint', 'node', 'w1', 'dedicated=dns:NoSchedule'])).toMatchObject({
      code: 0,
      stdout: 'node/w1 tainted\n',
    })
    expect((await node('w1'))?.spec.taints).toEqual([{ key: 'dedicated', value: 'dns', effect: 'NoSchedule' }])
    expect(await kc(['taint', 'node', 'w1', 'dedicated:NoSchedule-'])).toMatchObject({
      code: 0,
      stdout: 'node/w1 untainted\n',
    })
    expect(await kc(['get', 'node', 'nope'])).toMatchObject({
      code: 1,
      stderr: 'Error from server (NotFound): nodes "nope" not found\n',
    })
    expect(await kc(['wait', '--for=condition=Ready', 'node/w1', '--timeout=5s'])).toMatchObject({
      code: 0,
      stdout: 'node/w1 condition met\n',
    })
    const unsupported = await run(bin, ['crictl', 'ps'], { K3S_STANDIN_ROOT: serverRoot })
    expect(unsupported.code).toBe(1)
    expect(unsupported.stderr).toContain('k3s crictl is not supported by the k3s stand-in')

    // stop every agent: w1 stops heartbeating and goes NotReady (K3S_STANDIN_NOTREADY_SECONDS=3 on this server)
    await Promise.all(daemons.filter((d) => d !== server).map(stop))
    await waitUntil('w1 NotReady', async () => {
      const n = await node('w1')
      return n !== undefined && readyOf(n) === 'Unknown'
    })
    expect((await kc(['get', 'nodes'])).stdout).toMatch(/\nw1\s+NotReady\s+<none>/)
  })

  it('a restart with a different token is refused with the bootstrap text; with the right one the datastore is intact', async () => {
    if (!server) throw new Error('server not started')
    await stop(server)
    const config = join(serverRoot, 'etc/rancher/k3s/config.yaml')
    const good = await readFile(config, 'utf8')
    await writeFile(config, good.replace('token: "lab-secret"', 'token: "another-secret"'))
    const refused = await run(bin, ['server'], { K3S_STANDIN_ROOT: serverRoot, K3S_STANDIN_PORT: String(port) })
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain(
      'level=fatal msg="starting kubernetes: preparing server: bootstrap data already found and encrypted with different token"',
    )
    await writeFile(config, good)
    server = start(bin, ['server'], { K3S_STANDIN_ROOT: serverRoot, K3S_STANDIN_PORT: String(port) })
    await waitForOutput(server, 'k3s is up and running')
    expect((await kc(['get', 'secret', 'onepassword-service-account', '-n', 'external-secrets'])).code).toBe(0)
    expect((await kc(['get', 'node', 'w1'])).code).toBe(0)
  })

  it('a datastore backup restored with its token onto a wiped host keeps the CA (same K10 hash) and the objects', async () => {
    const fresh = join(work, 'restored')
    const db = join(fresh, 'var/lib/rancher/k3s/server/db')
    await mkdir(db, { recursive: true })
    const backup = await run('python3', [
      '-c',
      'import sqlite3,sys; src=sqlite3.connect(sys.argv[1]); dst=sqlite3.connect(sys.argv[2]); src.backup(dst); dst.close()',
      join(serverRoot, 'var/lib/rancher/k3s/server/db/state.db'),
      join(db, 'state.db'),
    ])
    expect(backup.code).toBe(0)
    await writeFile(join(fresh, 'var/lib/rancher/k3s/server/token'), `${fullToken}\n`)
    const p2 = await freePort()
    const restored = start(bin, ['server', '--node-name', 'srv'], {
      K3S_STANDIN_ROOT: fresh,
      K3S_STANDIN_PORT: String(p2),
    })
    await waitForOutput(restored, 'k3s is up and running')
    expect(restored.output()).toContain('Reconciling bootstrap data between datastore and disk')
    expect(await readFile(join(fresh, 'var/lib/rancher/k3s/server/node-token'), 'utf8')).toBe(`${fullToken}\n`)
    lendKubectl(fresh)
    const r = await run(
      join(fresh, '..', 'server/usr/local/bin/kubectl'),
      ['get', 'secret', '-n', 'external-secrets', '-o', 'name'],
      { K3S_STANDIN_ROOT: fresh, HOME: home },
    )
    expect(r).toMatchObject({ code: 0, stdout: 'secret/onepassword-service-account\n' })
    await stop(restored)
  })

  it('versions: only an offered release installs, the install fault changes nothing, an upgrade keeps the datastore and the Nodes report what runs', async () => {
    const install = (version: string) =>
      run('sh', [script], { K3S_STANDIN_ROOT: serverRoot, INSTALL_K3S_VERSION: version, INSTALL_K3S_EXEC: 'server' })
    const before = sha256(await readFile(bin, 'utf8'))
    const offered = (await readFile(join(STANDINS, 'k3s/releases.txt'), 'utf8')).split('\n').filter((l) => /^v/.test(l))
    expect(offered).toEqual(['v1.34.3+k3s1', 'v1.35.0+k3s1', 'v1.35.1+k3s1'])

    // A release nobody made (or a typo): the download fails, as from GitHub, and nothing changes.
    const unknown = await install('v1.36.0+k3s1')
    expect(unknown.code).toBe(1)
    expect(unknown.stderr).toContain(
      `[ERROR]  Download failed: v1.36.0+k3s1 is no release the lab offers (v1.34.3+k3s1 v1.35.0+k3s1 v1.35.1+k3s1 - see ${artifactBase}/k3s/releases.txt)`,
    )
    expect(sha256(await readFile(bin, 'utf8'))).toBe(before)

    // The test fault: the download does not verify; the old binary stays, still running.
    await mkdir(join(serverRoot, 'etc/k3s-standin'), { recursive: true })
    await writeFile(join(serverRoot, 'etc/k3s-standin/fail-install'), '')
    const faulty = await install('v1.35.0+k3s1')
    expect(faulty.code).toBe(1)
    expect(faulty.stderr).toMatch(
      /\[ERROR\] {2}Download sha256 does not match [0-9a-f]{64}, got [0-9a-f]{64} \(stand-in fault: \/etc\/k3s-standin\/fail-install exists\)/,
    )
    expect(sha256(await readFile(bin, 'utf8'))).toBe(before)
    await rm(join(serverRoot, 'etc/k3s-standin/fail-install'))

    // The upgrade: the new binary, and after the restart the same datastore under the new version.
    const up = await install('v1.35.0+k3s1')
    expect(up.code).toBe(0)
    expect((await run(bin, ['--version'])).stdout).toMatch(/^k3s version v1\.35\.0\+k3s1 /)
    expect((await node('srv'))?.status.nodeInfo.kubeletVersion).toBe(VERSION) // still the old process
    if (!server) throw new Error('server not started')
    await stop(server)
    server = start(bin, ['server'], { K3S_STANDIN_ROOT: serverRoot, K3S_STANDIN_PORT: String(port) })
    await waitForOutput(server, 'k3s is up and running')
    expect(server.output()).toContain('Datastore last used by k3s v1.34.3+k3s1; now v1.35.0+k3s1, keeping its objects')
    expect((await node('srv'))?.status.nodeInfo.kubeletVersion).toBe('v1.35.0+k3s1')
    expect((await kc(['get', 'secret', 'onepassword-service-account', '-n', 'external-secrets'])).code).toBe(0)
    // The agent w1 still runs the old release until it is restarted with the new binary.
    expect((await node('w1'))?.status.nodeInfo.kubeletVersion).toBe(VERSION)
    // (Its agent was stopped by the NotReady test above: started again, with the binary now installed.)
    const w1 = agents.get(join(work, 'agent2'))
    if (!w1) throw new Error('no agent for w1')
    await stop(w1.daemon)
    const again = start(bin, ['agent'], w1.env)
    await waitForOutput(again, 'Successfully registered node \\"w1\\"')
    const w1Now = await node('w1')
    expect(w1Now?.status.nodeInfo.kubeletVersion).toBe('v1.35.0+k3s1')
    expect(w1Now && readyOf(w1Now)).toBe('True')
    const table = await kc(['get', 'nodes'])
    expect(table.stdout).toMatch(/\nsrv\s+Ready\s+control-plane,master\s+\S+\s+v1\.35\.0\+k3s1\n/)

    // Back down (what the lab's put-back does): allowed, with k3s's warning that it is not supported.
    expect((await install(VERSION)).code).toBe(0)
    await stop(server)
    server = start(bin, ['server'], { K3S_STANDIN_ROOT: serverRoot, K3S_STANDIN_PORT: String(port) })
    await waitForOutput(server, 'k3s is up and running')
    expect(server.output()).toContain(
      'Datastore was written by the newer k3s v1.35.0+k3s1: downgrades are not supported by k3s',
    )
    expect((await node('srv'))?.status.nodeInfo.kubeletVersion).toBe(VERSION)
  })
})
