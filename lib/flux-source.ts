// Whether a run has to ask Flux to fetch its GitOps source now (`flux reconcile source git flux-system`), or Flux
// already has the head of the branch it follows. A reconcile costs a flux process and a wait for source-controller
// on the server (and on a real cluster a fetch from GitHub); a no-op rerun should not pay it every time. So the
// apps role reads the GitRepository's status (with its other cluster reads) and looks up the branch head where Flux
// fetches it from, as `git ls-remote` does (git's smart HTTP, one request, with curl on the server), and
// reconciles only when they differ, when the source is not Ready, or when asked to (`-e flux_reconcile=always`).
// The variables: flux_reconcile and github_url (lib/vars.ts).

import { field, isReady, type KubeObject } from './kube.ts'
import { quote } from './shell.ts'

/** "main@sha1:<hex>" (Flux 2.x), "main/<hex>" (older), "sha1:<hex>" -> the commit id; undefined for anything else. */
export function revisionCommit(revision: string | undefined): string | undefined {
  const m = /(?:^|[@/:])([0-9a-f]{40}|[0-9a-f]{64})$/.exec(revision ?? '')
  return m ? m[1] : undefined
}

/**
 * The URL git's smart HTTP answers the branch list at, for a GitRepository's URL: ssh://git@github.com/o/r,
 * git@github.com:o/r and https://github.com/o/r(.git) -> <githubUrl>/o/r.git/info/refs?service=git-upload-pack
 * (another host: https://<host>/...). Undefined for a URL this cannot read (a local path, no repository path).
 */
export function refsUrl(repoUrl: string, githubUrl: string): string | undefined {
  const u = repoUrl.trim()
  const m =
    /^(?:ssh:\/\/)?[^@/\s]+@([^:/\s]+)(?::\d+)?[:/]([^\s]+?)(?:\.git)?\/?$/.exec(u) ??
    /^https?:\/\/(?:[^@/\s]+@)?([^:/\s]+)(?::\d+)?\/([^\s]+?)(?:\.git)?\/?$/.exec(u)
  if (!m) return undefined
  const [, host, path] = m
  if (!/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)+$/.test(path)) return undefined
  const base = host.toLowerCase() === 'github.com' ? githubUrl.replace(/\/+$/, '') : `https://${host}`
  return `${base}/${path}.git/info/refs?service=git-upload-pack`
}

/** The look-up on the server: curl's options (the credential) come on stdin, never in argv. */
export function headLookupScript(url: string): string {
  return `curl -sS --fail --connect-timeout 3 --max-time 8 --config - --url ${quote(url)}`
}

/** curl's config for the look-up: the GitHub token as GitHub takes it over https (basic auth, any user name). */
export function headLookupConfig(token: string | undefined): string {
  if (!token) return ''
  const basic = Buffer.from(`x-access-token:${token}`, 'utf8').toString('base64')
  return `header = "Authorization: Basic ${basic}"\n`
}

/** The commit a branch is at, from git's ref advertisement (`<id> refs/heads/<branch>` in a pkt-line). */
export function parseHead(advertisement: string, branch: string): string | undefined {
  const ref = `refs/heads/${branch}`
  for (const line of advertisement.split('\n')) {
    const m = /([0-9a-f]{40}|[0-9a-f]{64}) (refs\/heads\/\S+?)(?:\0.*)?$/.exec(line)
    if (m && m[2] === ref) return m[1]
  }
  return undefined
}

export type Head = { commit: string } | { error: string }

export type SourceDecision =
  /** Flux has what the branch has: the GitRepository's artifact revision is the one to expect everywhere. */
  { reconcile: false; revision: string; message: string } | { reconcile: true; why: string }

/**
 * Reconcile, or not: not when flux_reconcile is "auto", GitRepository flux-system is Ready, has seen its latest
 * spec and is not suspended, and its artifact is the commit at the head of the branch it follows. Anything that
 * cannot be known (no source yet, the look-up failed) means reconcile, as before there was a choice.
 */
export function sourceDecision(
  source: KubeObject | undefined,
  head: Head | undefined,
  mode: 'auto' | 'always',
): SourceDecision {
  if (mode === 'always') return { reconcile: true, why: 'flux_reconcile is "always"' }
  if (!source) return { reconcile: true, why: 'no GitRepository flux-system read' }
  const branch = field(source, 'spec', 'ref', 'branch') ?? 'the branch'
  if (source.spec?.suspend === true) return { reconcile: true, why: 'GitRepository flux-system is suspended' }
  if (!isReady(source)) return { reconcile: true, why: 'GitRepository flux-system is not Ready' }
  const gen = source.metadata.generation
  const seen = source.status?.observedGeneration
  if (typeof gen === 'number' && typeof seen === 'number' && seen < gen)
    return { reconcile: true, why: `GitRepository flux-system has not seen generation ${gen} yet` }
  const revision = field(source, 'status', 'artifact', 'revision')
  const have = revisionCommit(revision)
  if (!revision || !have) return { reconcile: true, why: 'GitRepository flux-system has no artifact revision' }
  if (!head) return { reconcile: true, why: `the head of ${branch} was not looked up` }
  if ('error' in head) return { reconcile: true, why: `cannot look up the head of ${branch}: ${head.error}` }
  if (head.commit !== have)
    return { reconcile: true, why: `${branch} is at ${head.commit.slice(0, 12)}, Flux has ${have.slice(0, 12)}` }
  return { reconcile: false, revision, message: `Flux has ${revision}, the head of ${branch}: nothing to fetch` }
}
