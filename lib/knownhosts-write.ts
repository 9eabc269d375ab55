// Writing the owner's known_hosts: a host's key added (hashed or not) or a host's keys removed, every other line kept
// byte for byte, through a symlink to its target, one read-modify-write per file at a time (temp + rename).

import { isUtf8 } from 'node:buffer'
import { randomBytes } from 'node:crypto'
import { lstat, mkdir, readlink, realpath, stat } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { writeFileAtomic } from './fsutil.ts'
import { errnoCode, ProvisionError } from './errors.ts'
import {
  checkHostKey,
  fingerprint,
  hashHostName,
  keyType,
  knownHostName,
  parseKnownHosts,
  parseLine,
  readIfExists,
  specMatches,
  splitLines,
} from './knownhosts.ts'

export interface AddKnownHostOptions {
  /** Write the host name hashed (|1|salt|hash), like HashKnownHosts yes. Default false. */
  hash?: boolean
}

/**
 * Record host:port's key. Atomic (temp file + rename, see writeFileAtomic): a new file is made
 * 0600 and its missing directories 0700, an existing file keeps its mode. When the path is a
 * symlink (dotfile managers), its target is written and the link stays. No-op when the key is
 * already recorded for that host; refuses to add a key that checkHostKey reports as changed or
 * revoked (that would silently trust it). Malformed lines are kept as they are.
 */
export async function addKnownHost(
  path: string,
  host: string,
  port: number,
  blob: Buffer,
  opts: AddKnownHostOptions = {},
): Promise<void> {
  const type = keyType(blob)
  const target = await resolveLink(path)
  await serialize(target, async () => {
    const bytes = await readIfExists(target)
    const text = bytes?.toString('utf8') ?? ''
    const verdict = checkHostKey(parseKnownHosts(path, text), host, port, blob)
    if (verdict.status === 'match') return
    if (verdict.status === 'changed' || verdict.status === 'revoked') {
      throw new ProvisionError(
        'hostkey',
        `refusing to record ${fingerprint(blob)} for ${knownHostName(host, port)}: ` +
          `known_hosts says its key is ${verdict.status}`,
        {
          place: { file: path },
          hint:
            verdict.status === 'changed'
              ? `remove the old key first (ssh-keygen -R ${knownHostName(host, port)} -f ${path})`
              : undefined,
        },
      )
    }
    const name = knownHostName(host, port)
    let hostField = name
    if (opts.hash) {
      const salt = randomBytes(20)
      hostField = `|1|${salt.toString('base64')}|${hashHostName(name, salt).toString('base64')}`
    }
    // A last line without its newline (malformed or not) gets one, so the new entry is a line of its own.
    const sep = text === '' || text.endsWith('\n') ? '' : '\n'
    const content = `${text}${sep}${hostField} ${type} ${blob.toString('base64')}\n`
    assertRewritable(path, bytes)
    try {
      await mkdir(dirname(target), { recursive: true, mode: 0o700 })
    } catch (e) {
      throw new ProvisionError('hostkey', `cannot create the directory of ${path}: ${errnoCode(e) ?? String(e)}`, {
        place: { file: path },
        cause: e,
      })
    }
    await writeKnownHostsFile(path, target, content, await modeOr(target, 0o600))
  })
}

/**
 * Forget host:port (port 22 when omitted), like ssh-keygen -R: returns how many entries were
 * removed. Only entries that name the host itself are touched: a hashed entry of that name is
 * deleted; in a plain host list only that name is dropped (the line is deleted when no other
 * host is left on it), so other hosts on the same line stay trusted. Wildcard entries and
 * @revoked / @cert-authority lines are kept, as ssh-keygen keeps marker lines. Every other line
 * is left byte-identical; lines this code cannot parse are kept as they are.
 */
export async function removeKnownHost(path: string, host: string, port: number = 22): Promise<number> {
  const target = await resolveLink(path)
  return serialize(target, async () => {
    const bytes = await readIfExists(target)
    if (bytes === undefined) return 0
    const text = bytes.toString('utf8')
    const name = knownHostName(host, port)
    const lines = splitLines(text)
    const out: string[] = []
    let removed = 0
    lines.forEach((raw, i) => {
      const parsed = parseLine(raw, i + 1)
      if (parsed === null || typeof parsed === 'string' || parsed.entry.marker !== undefined) {
        out.push(raw)
        return
      }
      const { hosts } = parsed.entry
      if (hosts.kind === 'hashed') {
        if (specMatches(hosts, name)) removed++
        else out.push(raw)
        return
      }
      const items = parsed.entry.hostField.split(',')
      const kept = items.filter((item) => item.toLowerCase() !== name)
      if (kept.length === items.length) {
        out.push(raw)
        return
      }
      removed++
      if (kept.some((item) => !item.startsWith('!')))
        out.push(raw.slice(0, parsed.hostStart) + kept.join(',') + raw.slice(parsed.hostEnd))
    })
    if (removed === 0) return 0
    assertRewritable(path, bytes)
    // splitLines keeps a final '' when the text ends with a newline: join restores it.
    await writeKnownHostsFile(path, target, out.join('\n'), await modeOr(target, 0o600))
    return removed
  })
}

/**
 * A rewrite must give back every line it does not change byte for byte. Bytes that are not
 * UTF-8 would not survive decoding and encoding again: refuse, naming the line, rather than
 * alter it.
 */
function assertRewritable(path: string, bytes: Buffer | undefined): void {
  if (bytes === undefined || isUtf8(bytes)) return
  let line = 1
  for (let start = 0; start <= bytes.length; line++) {
    const nl = bytes.indexOf(0x0a, start)
    const end = nl === -1 ? bytes.length : nl
    if (!isUtf8(bytes.subarray(start, end))) break
    start = end + 1
  }
  throw new ProvisionError(
    'hostkey',
    `line ${line} of ${path} is not UTF-8 text: refusing to rewrite the file (that line would change)`,
    {
      place: { file: path, line },
      hint: `fix or delete line ${line} of ${path}`,
    },
  )
}

/**
 * The file to write for `path`: its final target when it is a symlink (relative links resolve
 * from the link's own directory; a link to a file that does not exist yet gives that file), so
 * the link survives the rename of the new file over its target.
 */
async function resolveLink(path: string): Promise<string> {
  let at = path
  for (let hops = 0; hops < 40; hops++) {
    try {
      if (!(await lstat(at)).isSymbolicLink()) return at
      at = resolve(await realpath(dirname(at)), await readlink(at))
    } catch (e) {
      const code = errnoCode(e)
      if (code === 'ENOENT') return at
      throw new ProvisionError('hostkey', `cannot resolve known_hosts file ${path}: ${code ?? String(e)}`, {
        place: { file: path },
        cause: e,
      })
    }
  }
  throw new ProvisionError('hostkey', `cannot resolve known_hosts file ${path}: too many levels of symbolic links`, {
    place: { file: path },
  })
}

async function modeOr(path: string, fallback: number): Promise<number> {
  try {
    return (await stat(path)).mode & 0o777
  } catch {
    return fallback
  }
}

// Parallel connections in this process add hosts concurrently: one read-modify-write per file
// (keyed by the resolved target, so two links to one file share a queue) at a time, or one
// worker's rename would drop another's line. Other processes are not coordinated with.
const queues = new Map<string, Promise<unknown>>()

function serialize<T>(path: string, work: () => Promise<T>): Promise<T> {
  const before = queues.get(path) ?? Promise.resolve()
  const run = before.then(work)
  const tail = run.catch(() => undefined)
  queues.set(path, tail)
  void tail.then(() => {
    if (queues.get(path) === tail) queues.delete(path)
  })
  return run
}

/**
 * writeFileAtomic creates its temp file (random name, next to the target) with O_EXCL, so a
 * symlink or file planted at that name makes the write fail instead of writing through it.
 */
async function writeKnownHostsFile(path: string, target: string, content: string, mode: number): Promise<void> {
  try {
    await writeFileAtomic(target, content, mode)
  } catch (e) {
    const where = target === path ? path : `${path} (-> ${target})`
    throw new ProvisionError('hostkey', `cannot write known_hosts file ${where}: ${errnoCode(e) ?? String(e)}`, {
      place: { file: path },
      cause: e,
    })
  }
}
