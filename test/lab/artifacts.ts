// The artifact server: hosts download their stand-ins (k3s install script and binary, flux, ...) from here
// over HTTP, through the same code paths the real internet URLs use. Run as its own process by the lab:
//   node test/lab/artifacts.ts --host 10.199.55.1 --port 8780 --root test/standins
// Routes are tried in order; the static files under --root come last, so specific endpoints (e.g. fake app
// health checks) are added by putting a route in front of them. The lab's routes (apps.ts): the owner's
// GitOps repository, the apps' health endpoints (steered through files in the --lab state dir) and flux
// release tarballs.
import { readFile, realpath, stat } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { extname, resolve, sep } from 'node:path'
import { parseArgs } from 'node:util'
import { labAppsRoutes } from './apps.ts'

/** Served files may say where they are served from: this text becomes the server's base URL. */
export const BASE_MARKER = '@@ARTIFACT_BASE@@'

export interface Route {
  method: string
  /** An exact path, or a pattern the path must match. */
  path: string | RegExp
  handle: (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>
}

export interface ArtifactServerOptions {
  root: string
  base: string
  routes?: readonly Route[]
  /** Called with one line per request. */
  log?: (line: string) => void
}

const TYPES: Readonly<Record<string, string>> = {
  '.sh': 'text/x-shellscript',
  '.txt': 'text/plain; charset=utf-8',
  '.json': 'application/json',
  '.yaml': 'application/yaml',
  '.yml': 'application/yaml',
}

/** Answers "is the artifact server up" for the lab itself. */
export const pingRoute: Route = {
  method: 'GET',
  path: '/_lab/ping',
  handle: (_req, res) => send(res, 200, 'pi-lab artifacts\n', 'text/plain; charset=utf-8'),
}

export function createArtifactServer(opts: ArtifactServerOptions): Server {
  const routes = [pingRoute, ...(opts.routes ?? [])]
  return createServer((req, res) => {
    const url = new URL(req.url ?? '/', opts.base)
    const route = routes.find(
      (r) =>
        (req.method === r.method || (req.method === 'HEAD' && r.method === 'GET')) &&
        (typeof r.path === 'string' ? r.path === url.pathname : r.path.test(url.pathname)),
    )
    const handled = route ? route.handle(req, res, url) : serveFile(req, res, url, opts)
    Promise.resolve(handled)
      .catch((e: unknown) => {
        if (!res.headersSent) send(res, 500, `${(e as Error).message}\n`)
      })
      .finally(() => opts.log?.(`${new Date().toISOString()} ${req.method} ${url.pathname} ${res.statusCode}`))
  })
}

async function serveFile(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  opts: ArtifactServerOptions,
): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'method not allowed\n')
  const file = await resolveFile(opts.root, url.pathname)
  if (!file) return send(res, 404, 'not found\n')
  let body = await readFile(file)
  if (body.includes(BASE_MARKER)) body = Buffer.from(body.toString('utf8').replaceAll(BASE_MARKER, opts.base))
  res.writeHead(200, {
    'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
    'content-length': body.length,
  })
  res.end(req.method === 'HEAD' ? undefined : body)
}

/** The regular file the URL path names inside root, or undefined; nothing outside root, not even by symlink. */
async function resolveFile(root: string, pathname: string): Promise<string | undefined> {
  let decoded: string
  try {
    decoded = decodeURIComponent(pathname)
  } catch {
    return undefined
  }
  const parts = decoded.split('/').filter(Boolean)
  if (parts.some((p) => p === '..' || p === '.' || p.includes('\\') || p.includes('\0'))) return undefined
  try {
    const realRoot = await realpath(root)
    const real = await realpath(resolve(realRoot, ...parts))
    if (!real.startsWith(realRoot + sep)) return undefined
    return (await stat(real)).isFile() ? real : undefined
  } catch {
    return undefined
  }
}

function send(res: ServerResponse, status: number, text: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

function main(): void {
  const { values } = parseArgs({
    options: { host: { type: 'string' }, port: { type: 'string' }, root: { type: 'string' }, lab: { type: 'string' } },
  })
  if (!values.host || !values.port || !values.root) {
    console.error('usage: artifacts.ts --host ADDRESS --port PORT --root DIR')
    process.exit(2)
  }
  const base = `http://${values.host}:${values.port}`
  // --lab names the state dir (so the lab can tell its own server in /proc); app health overrides live there.
  const routes = values.lab ? labAppsRoutes({ labDir: values.lab, root: values.root, base }) : []
  const server = createArtifactServer({ root: values.root, base, routes, log: console.log })
  server.listen(Number(values.port), values.host, () => console.log(`serving ${values.root} at ${base}`))
}

if (process.argv[1] && resolve(process.argv[1]) === import.meta.filename) main()
