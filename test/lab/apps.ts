// The lab's stand-ins for what lives outside the Pis once Flux runs: the owner's GitOps repository on
// "GitHub", the apps' health endpoints, and the flux CLI's release downloads. All served by the artifact
// server (artifacts.ts) on the controller's bridge address. Test fixtures: nothing here is an app.
//
//   GET /gitops/github.com/mtgibbs/pi-cluster/repo.json   the stand-in GitOps repository (test/standins/README.md):
//       the k3s stand-in's source-controller clones it into /var/lib/flux-standin/repo.json on the server host
//       the first time it reconciles GitRepository flux-system; tests then steer Flux by editing that file.
//   GET /apps/<app>/<health path>   Jellyfin /health -> Healthy, Immich /api/server/ping -> {"res":"pong"},
//       Homepage /api/healthcheck -> up, Uptime Kuma /api/entry-page -> {"type":"entryPage",...}; a test makes
//       an app unhealthy with setLabAppHealth (a JSON file in the lab state dir that the server reads per request).
//   GET /flux/releases/download/v<V>/flux_<V>_linux_<arch>.tar.gz (and flux_<V>_checksums.txt): GitHub's
//       release layout, the tarball holding the flux stand-in stamped with version V.
//   /apps/pihole/api/...   a stand-in for Pi-hole v6's API: POST auth (the password in the lab secrets file,
//       op://pi-cluster/pihole/password), GET dns/blocking with X-FTL-SID, DELETE auth; a test sets the blocking
//       state with setLabPiholeBlocking and counts sessions left open at GET /apps/pihole/api/_standin/sessions.
// Pi-hole's DNS is not here: the k3s stand-in answers it on the server host's address (see its README).

import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import type { Route } from './artifacts.ts'
import { parse as parseYaml } from 'yaml'
import { LAB_DIR } from './paths.ts'

// ---------------------------------------------------------------- app health endpoints

export interface AppEndpoint {
  path: string
  body: string
  contentType: string
}

/** What each app answers when healthy (as the real apps do). */
export const LAB_APPS: Readonly<Record<string, AppEndpoint>> = {
  jellyfin: { path: '/health', body: 'Healthy', contentType: 'text/plain; charset=utf-8' },
  immich: { path: '/api/server/ping', body: '{"res":"pong"}', contentType: 'application/json' },
  homepage: { path: '/api/healthcheck', body: 'up', contentType: 'text/plain; charset=utf-8' },
  'uptime-kuma': {
    path: '/api/entry-page',
    body: '{"type":"entryPage","entryPage":"dashboard"}',
    contentType: 'application/json',
  },
}

/** How a test makes an app answer instead: any of status, body, content type, and a delay before answering. */
export interface AppHealth {
  status?: number
  body?: string
  contentType?: string
  delayMs?: number
}

function healthFile(labDir: string, app: string): string {
  return join(labDir, 'apps', `${app}.json`)
}

/** Steer an app's answer (null: healthy again). Read by the artifact server on every request. */
export function setLabAppHealth(app: string, health: AppHealth | null, labDir = LAB_DIR): void {
  if (!Object.hasOwn(LAB_APPS, app)) throw new Error(`no lab app ${app} (known: ${Object.keys(LAB_APPS).join(', ')})`)
  const file = healthFile(labDir, app)
  if (health === null) {
    rmSync(file, { force: true })
    return
  }
  mkdirSync(join(labDir, 'apps'), { recursive: true })
  writeFileSync(file, JSON.stringify(health))
}

function readHealth(labDir: string, app: string): AppHealth {
  try {
    const parsed: unknown = JSON.parse(readFileSync(healthFile(labDir, app), 'utf8'))
    return parsed !== null && typeof parsed === 'object' ? (parsed as AppHealth) : {}
  } catch {
    return {}
  }
}

function send(res: ServerResponse, status: number, body: string | Buffer, type: string): void {
  const data = typeof body === 'string' ? Buffer.from(body) : body
  res.writeHead(status, { 'content-type': type, 'content-length': data.length })
  res.end(data)
}

export function appRoutes(labDir: string): Route[] {
  return [
    {
      method: 'GET',
      path: /^\/apps\/[^/]+\//,
      handle: async (_req, res, url) => {
        const m = /^\/apps\/([^/]+)(\/.*)$/.exec(url.pathname)
        const app = m?.[1] ?? ''
        const ep = Object.hasOwn(LAB_APPS, app) ? LAB_APPS[app] : undefined
        if (!ep || m?.[2] !== ep.path) return send(res, 404, 'not found\n', 'text/plain; charset=utf-8')
        const h = readHealth(labDir, app)
        if (h.delayMs) await new Promise((done) => setTimeout(done, h.delayMs))
        if (res.destroyed) return
        send(res, h.status ?? 200, h.body ?? ep.body, h.contentType ?? ep.contentType)
      },
    },
  ]
}

// ---------------------------------------------------------------- Pi-hole v6's API (stand-in)

export interface PiholeBlocking {
  blocking: 'enabled' | 'disabled'
  timer: number | null
}

function blockingFile(labDir: string): string {
  return join(labDir, 'apps', 'pihole-api.json')
}

/** Steer the stand-in's blocking status (null: enabled again). Read on every request. */
export function setLabPiholeBlocking(state: PiholeBlocking | null, labDir = LAB_DIR): void {
  if (state === null) return rmSync(blockingFile(labDir), { force: true })
  mkdirSync(join(labDir, 'apps'), { recursive: true })
  writeFileSync(blockingFile(labDir), JSON.stringify(state))
}

function labPiholePassword(labDir: string): string | undefined {
  try {
    const doc = parseYaml(readFileSync(join(labDir, 'secrets.yaml'), 'utf8')) as Record<
      string,
      Record<string, Record<string, unknown>>
    >
    const v = doc['pi-cluster']?.pihole?.password
    return typeof v === 'string' ? v : undefined
  } catch {
    return undefined
  }
}

function piholeRoutes(labDir: string): Route[] {
  const sessions = new Set<string>()
  const json = (res: ServerResponse, status: number, v: unknown) =>
    send(res, status, JSON.stringify(v), 'application/json')
  const sidOf = (req: IncomingMessage) => (typeof req.headers['x-ftl-sid'] === 'string' ? req.headers['x-ftl-sid'] : '')
  const unauthorized = (res: ServerResponse) =>
    json(res, 401, { error: { key: 'unauthorized', message: 'Unauthorized', hint: null }, took: 0 })
  return [
    {
      method: 'POST',
      path: '/apps/pihole/api/auth',
      handle: async (req, res) => {
        let body = ''
        for await (const chunk of req) body += String(chunk)
        let given: unknown
        try {
          given = (JSON.parse(body) as { password?: unknown }).password
        } catch {
          return json(res, 400, { error: { key: 'bad_request', message: 'Invalid JSON' }, took: 0 })
        }
        const want = labPiholePassword(labDir)
        if (want === undefined || given !== want)
          return json(res, 401, {
            session: { valid: false, totp: false, sid: null, validity: -1, message: 'password incorrect' },
            took: 0,
          })
        const sid = randomBytes(18).toString('base64')
        sessions.add(sid)
        json(res, 200, {
          session: {
            valid: true,
            totp: false,
            sid,
            csrf: randomBytes(12).toString('base64'),
            validity: 1800,
            message: 'password correct',
          },
          took: 0,
        })
      },
    },
    {
      method: 'GET',
      path: '/apps/pihole/api/dns/blocking',
      handle: (req, res) => {
        if (!sessions.has(sidOf(req))) return unauthorized(res)
        let state: PiholeBlocking = { blocking: 'enabled', timer: null }
        try {
          state = JSON.parse(readFileSync(blockingFile(labDir), 'utf8')) as PiholeBlocking
        } catch {
          // no file: enabled
        }
        json(res, 200, { ...state, took: 0 })
      },
    },
    {
      method: 'DELETE',
      path: '/apps/pihole/api/auth',
      handle: (req, res) => {
        if (!sessions.delete(sidOf(req))) return unauthorized(res)
        res.writeHead(204)
        res.end()
      },
    },
    {
      method: 'GET',
      path: '/apps/pihole/api/_standin/sessions',
      handle: (_req, res) => json(res, 200, { open: sessions.size }),
    },
  ]
}

// ---------------------------------------------------------------- the GitOps repository

interface RepoEntry {
  kind: string
  [key: string]: unknown
}

function deployment(namespace: string, name: string, podSpec: Record<string, unknown>): RepoEntry {
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name, namespace, labels: { app: name } },
    spec: {
      replicas: 1,
      selector: { matchLabels: { app: name } },
      template: { metadata: { labels: { app: name } }, spec: podSpec },
    },
  }
}

function cronJob(name: string, schedule: string, image: string): RepoEntry {
  return {
    apiVersion: 'batch/v1',
    kind: 'CronJob',
    metadata: { name, namespace: 'backup-jobs' },
    spec: {
      schedule,
      concurrencyPolicy: 'Forbid',
      jobTemplate: {
        spec: {
          template: {
            spec: {
              restartPolicy: 'OnFailure',
              // local-path PVCs and the k3s datastore live on the server
              nodeSelector: { 'kubernetes.io/hostname': 'pi-k3s' },
              containers: [{ name: 'backup', image }],
            },
          },
        },
      },
    },
  }
}

function externalSecret(namespace: string, name: string): RepoEntry {
  return {
    apiVersion: 'external-secrets.io/v1',
    kind: 'ExternalSecret',
    metadata: { name, namespace },
    spec: { secretStoreRef: { kind: 'ClusterSecretStore', name: 'onepassword' }, target: { name } },
    ready: true,
    message: 'Secret was synced',
  }
}

/** The owner's cluster as clusters/pi-k3s describes it, in the stand-in repository's format. */
export function labGitopsRepo(): { path: string; branch: string; objects: RepoEntry[] } {
  const kustomizations = [
    'external-secrets',
    'external-secrets-config',
    'flux-notifications',
    'ingress',
    'cert-manager',
    'cert-manager-config',
    'pihole',
    'monitoring',
    'uptime-kuma',
    'homepage',
    'backup-jobs',
    'immich',
    'jellyfin',
  ].map((name): RepoEntry => ({ kind: 'Kustomization', name, path: `./clusters/pi-k3s/${name}` }))
  const helm = (namespace: string, name: string, chart: string, version: string): RepoEntry => ({
    kind: 'HelmRelease',
    namespace,
    name,
    chart,
    version,
  })
  return {
    path: 'clusters/pi-k3s',
    branch: 'main',
    objects: [
      ...kustomizations,
      helm('external-secrets', 'external-secrets', 'external-secrets', '0.19.2'),
      helm('cert-manager', 'cert-manager', 'cert-manager', 'v1.18.2'),
      helm('ingress-nginx', 'ingress-nginx', 'ingress-nginx', '4.13.0'),
      helm('monitoring', 'kube-prometheus-stack', 'kube-prometheus-stack', '77.0.0'),
      helm('immich', 'immich', 'immich', '0.9.3'),
      {
        apiVersion: 'external-secrets.io/v1',
        kind: 'ClusterSecretStore',
        metadata: { name: 'onepassword' },
        spec: {
          provider: {
            onepasswordSDK: {
              vault: 'pi-cluster',
              auth: {
                serviceAccountSecretRef: {
                  name: 'onepassword-service-account',
                  key: 'token',
                  namespace: 'external-secrets',
                },
              },
            },
          },
        },
        ready: true,
        message: 'store validated',
      },
      externalSecret('pihole', 'pihole-secret'),
      externalSecret('monitoring', 'grafana-admin'),
      externalSecret('cert-manager', 'cloudflare-api-token'),
      externalSecret('backup-jobs', 'backup-ssh-key'),
      externalSecret('flux-system', 'discord-webhook'),
      deployment('pihole', 'pihole', {
        hostNetwork: true,
        dnsPolicy: 'ClusterFirstWithHostNet',
        nodeSelector: { 'kubernetes.io/hostname': 'pi-k3s' },
        containers: [
          {
            name: 'pihole',
            image: 'pihole/pihole:2025.11.0',
            ports: [
              { containerPort: 80, name: 'http' },
              { containerPort: 53, protocol: 'UDP', name: 'dns-udp' },
              { containerPort: 53, protocol: 'TCP', name: 'dns-tcp' },
            ],
          },
        ],
      }),
      deployment('pihole', 'unbound', {
        nodeSelector: { 'workload/dns': 'unbound' },
        containers: [
          { name: 'unbound', image: 'madnuttah/unbound:latest', ports: [{ containerPort: 5335, protocol: 'UDP' }] },
        ],
      }),
      deployment('homepage', 'homepage', {
        containers: [
          { name: 'homepage', image: 'ghcr.io/gethomepage/homepage:latest', ports: [{ containerPort: 3000 }] },
        ],
      }),
      deployment('jellyfin', 'jellyfin', {
        containers: [{ name: 'jellyfin', image: 'jellyfin/jellyfin:latest', ports: [{ containerPort: 8096 }] }],
      }),
      deployment('uptime-kuma', 'uptime-kuma', {
        containers: [{ name: 'uptime-kuma', image: 'louislam/uptime-kuma:2', ports: [{ containerPort: 3001 }] }],
      }),
      cronJob('pvc-backup', '0 2 * * *', 'instrumentisto/rsync-ssh:alpine'),
      cronJob('k3s-datastore-backup', '15 2 * * *', 'alpine:3.22'),
      cronJob('postgres-backup', '30 2 * * *', 'postgres:16-alpine'),
    ],
  }
}

export const gitopsRoute: Route = {
  method: 'GET',
  path: '/gitops/github.com/mtgibbs/pi-cluster/repo.json',
  handle: (_req, res) => send(res, 200, JSON.stringify(labGitopsRepo(), null, 2) + '\n', 'application/json'),
}

// ---------------------------------------------------------------- the branch head, as git's smart HTTP tells it

/** The stand-in's revision of a repo.json, computed by Python as test/standins/k3s does: "<id>" and its branch. */
const STANDIN_REVISION = `import hashlib, json, sys
repo = json.loads(sys.stdin.read())
rev = str(repo.get("revision") or hashlib.sha1(json.dumps(repo, sort_keys=True).encode()).hexdigest())
print(rev.split(":")[-1].split("/")[-1], repo.get("branch") or "main")`

/** The newest /var/lib/flux-standin/repo.json of a running lab host (the server's: where tests "push"). */
function hostRepoJson(labDir: string): string | undefined {
  const hosts = join(labDir, 'hosts')
  const found = (existsSync(hosts) ? readdirSync(hosts) : [])
    .map((h) => join(hosts, h, 'root/var/lib/flux-standin/repo.json'))
    .filter((f) => existsSync(f))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)
  return found.length ? readFileSync(found[0], 'utf8') : undefined
}

function pktLine(text: string): string {
  return (Buffer.byteLength(text) + 4).toString(16).padStart(4, '0') + text
}

/**
 * GET /gitops/github.com/mtgibbs/pi-cluster.git/info/refs?service=git-upload-pack: the ref advertisement
 * `git ls-remote` reads (git's smart HTTP, as GitHub answers it), for the repository the k3s stand-in's
 * source-controller fetches: the server host's repo.json once it was cloned (tests "push a commit" by editing
 * it), else what the first clone will get. The branch is at the stand-in's revision of that content.
 */
export function gitopsRefsRoute(labDir: string): Route {
  return {
    method: 'GET',
    path: '/gitops/github.com/mtgibbs/pi-cluster.git/info/refs',
    handle: (_req, res, url) => {
      if (url.searchParams.get('service') !== 'git-upload-pack')
        return send(res, 403, 'only git-upload-pack\n', 'text/plain; charset=utf-8')
      const text = hostRepoJson(labDir) ?? JSON.stringify(labGitopsRepo())
      let head: string[]
      try {
        head = execFileSync('python3', ['-c', STANDIN_REVISION], { input: text, encoding: 'utf8' }).trim().split(' ')
      } catch {
        return send(res, 500, 'repo.json is not a repository\n', 'text/plain; charset=utf-8')
      }
      const [commit, branch] = head
      const body =
        pktLine('# service=git-upload-pack\n') +
        '0000' +
        pktLine(`${commit} HEAD\0symref=HEAD:refs/heads/${branch} agent=pi-lab-standin\n`) +
        pktLine(`${commit} refs/heads/${branch}\n`) +
        '0000'
      send(res, 200, body, 'application/x-git-upload-pack-advertisement')
    },
  }
}

// ---------------------------------------------------------------- flux CLI releases

/** A ustar archive of one executable file (what Flux's release tarballs hold), gzipped; byte-for-byte stable. */
export function tarGz(name: string, content: Buffer, mode = 0o755): Buffer {
  const header = Buffer.alloc(512)
  const put = (text: string, offset: number, length: number): void => {
    header.write(text.slice(0, length), offset, length, 'utf8')
  }
  const octal = (n: number, width: number): string => n.toString(8).padStart(width - 1, '0') + '\0'
  put(name, 0, 100)
  put(octal(mode, 8), 100, 8)
  put(octal(0, 8), 108, 8)
  put(octal(0, 8), 116, 8)
  put(octal(content.length, 12), 124, 12)
  put(octal(0, 12), 136, 12)
  header.fill(' ', 148, 156)
  put('0', 156, 1)
  put('ustar\0', 257, 6)
  put('00', 263, 2)
  put('root', 265, 32)
  put('root', 297, 32)
  let sum = 0
  for (const b of header) sum += b
  put(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8)
  const padding = Buffer.alloc((512 - (content.length % 512)) % 512)
  return gzipSync(Buffer.concat([header, content, padding, Buffer.alloc(1024)]), { level: 9 })
}

const RELEASE =
  /^\/flux\/releases\/download\/v([0-9A-Za-z.+-]+)\/flux_([0-9A-Za-z.+-]+?)_(?:linux_([a-z0-9]+)\.tar\.gz|checksums\.txt)$/
const ARCHES = ['amd64', 'arm64', 'arm'] as const

/** The flux stand-in with the version stamped in, as its install.sh does. */
async function stampedFlux(root: string, base: string, version: string): Promise<Buffer> {
  const text = (await readFile(join(root, 'flux', 'flux'), 'utf8')).replaceAll('@@ARTIFACT_BASE@@', base)
  return Buffer.from(text.replace(/^STANDIN_STAMPED_VERSION = ""$/m, `STANDIN_STAMPED_VERSION = "${version}"`))
}

export function fluxReleaseRoute(root: string, base: string): Route {
  return {
    method: 'GET',
    path: RELEASE,
    handle: async (_req, res, url) => {
      const m = RELEASE.exec(url.pathname)
      if (!m || m[1] !== m[2]) return send(res, 404, 'not found\n', 'text/plain; charset=utf-8')
      const version = m[1]
      const tarball = tarGz('flux', await stampedFlux(root, base, version))
      if (m[3]) {
        if (!(ARCHES as readonly string[]).includes(m[3]))
          return send(res, 404, 'not found\n', 'text/plain; charset=utf-8')
        return send(res, 200, tarball, 'application/gzip')
      }
      // The stand-in is one script for every architecture, so every tarball is the same.
      const sha = createHash('sha256').update(tarball).digest('hex')
      send(
        res,
        200,
        ARCHES.map((a) => `${sha}  flux_${version}_linux_${a}.tar.gz\n`).join(''),
        'text/plain; charset=utf-8',
      )
    },
  }
}

/** Every route of this file, for the artifact server. */
export function labAppsRoutes(opts: { labDir: string; root: string; base: string }): Route[] {
  return [
    ...piholeRoutes(opts.labDir),
    ...appRoutes(opts.labDir),
    gitopsRoute,
    gitopsRefsRoute(opts.labDir),
    fluxReleaseRoute(opts.root, opts.base),
  ]
}
