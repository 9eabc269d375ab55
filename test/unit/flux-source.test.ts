// When a run asks Flux to fetch its GitOps source: the decision (lib/flux-source.ts) from the GitRepository's
// status and the branch head, the look-up's URL and answer, and flux_reconcile checked like every variable.

import { spawn } from 'node:child_process'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { describe, expect, it } from 'vitest'
import {
  headLookupConfig,
  headLookupScript,
  parseHead,
  refsUrl,
  revisionCommit,
  sourceDecision,
} from '../../lib/flux-source.ts'
import { parseExtraVars } from '../../lib/extra-vars.ts'
import type { KubeObject } from '../../lib/kube.ts'
import { BUILTIN_DEFAULTS } from '../../lib/vars.ts'

const HEAD = '2dd49f4ac08b94c1aa8135b980615117c1425ac5'
const OLD = '1f2e3d4c5b6a79881726354453627180918a7b6c'

function source(
  over: { revision?: string; ready?: boolean; generation?: number; seen?: number; suspend?: boolean } = {},
) {
  return {
    apiVersion: 'source.toolkit.fluxcd.io/v1',
    kind: 'GitRepository',
    metadata: { name: 'flux-system', namespace: 'flux-system', generation: over.generation ?? 1 },
    spec: { url: 'ssh://git@github.com/mtgibbs/pi-cluster', ref: { branch: 'main' }, suspend: over.suspend },
    status: {
      observedGeneration: over.seen ?? 1,
      artifact: { revision: over.revision ?? `main@sha1:${HEAD}` },
      conditions: [{ type: 'Ready', status: over.ready === false ? 'False' : 'True', message: 'stored artifact' }],
    },
  } as KubeObject
}

describe('reconcile the source, or not', () => {
  it('not when Flux has the commit at the head of its branch and the source is Ready and current', () => {
    expect(sourceDecision(source(), { commit: HEAD }, 'auto')).toEqual({
      reconcile: false,
      revision: `main@sha1:${HEAD}`,
      message: `Flux has main@sha1:${HEAD}, the head of main: nothing to fetch`,
    })
  })

  it('when the branch moved on (a push since Flux last fetched)', () => {
    expect(sourceDecision(source({ revision: `main@sha1:${OLD}` }), { commit: HEAD }, 'auto')).toEqual({
      reconcile: true,
      why: 'main is at 2dd49f4ac08b, Flux has 1f2e3d4c5b6a',
    })
  })

  it('always with flux_reconcile=always, whatever the source says', () => {
    expect(sourceDecision(source(), { commit: HEAD }, 'always')).toEqual({
      reconcile: true,
      why: 'flux_reconcile is "always"',
    })
  })

  it('when what it would rely on is not known or not sound: no source, not Ready, a spec not seen, suspended, no artifact', () => {
    const why = (s: KubeObject | undefined, head: Parameters<typeof sourceDecision>[1] | 'head' = 'head') => {
      const d = sourceDecision(s, head === 'head' ? { commit: HEAD } : head, 'auto')
      return d.reconcile ? d.why : 'skipped'
    }
    expect(why(undefined)).toBe('no GitRepository flux-system read')
    expect(why(source({ ready: false }))).toBe('GitRepository flux-system is not Ready')
    expect(why(source({ generation: 2, seen: 1 }))).toBe('GitRepository flux-system has not seen generation 2 yet')
    expect(why(source({ suspend: true }))).toBe('GitRepository flux-system is suspended')
    expect(why(source({ revision: 'main@sha1:not-a-commit' }))).toBe(
      'GitRepository flux-system has no artifact revision',
    )
    expect(sourceDecision(source(), undefined, 'auto')).toEqual({
      reconcile: true,
      why: 'the head of main was not looked up',
    })
    expect(why(source(), { error: 'curl: (22) The requested URL returned error: 404' })).toBe(
      'cannot look up the head of main: curl: (22) The requested URL returned error: 404',
    )
  })

  it("reads the commit of Flux 2's and older revisions", () => {
    expect(revisionCommit(`main@sha1:${HEAD}`)).toBe(HEAD)
    expect(revisionCommit(`main/${HEAD}`)).toBe(HEAD)
    expect(revisionCommit(`sha1:${HEAD}`)).toBe(HEAD)
    expect(revisionCommit('v1.2.3')).toBeUndefined()
    expect(revisionCommit(undefined)).toBeUndefined()
  })
})

describe('the look-up of the branch head', () => {
  it('asks git smart HTTP where Flux fetches from (github_url standing in for https://github.com)', () => {
    const gh = 'https://github.com'
    const want = 'https://github.com/mtgibbs/pi-cluster.git/info/refs?service=git-upload-pack'
    expect(refsUrl('ssh://git@github.com/mtgibbs/pi-cluster', gh)).toBe(want)
    expect(refsUrl('ssh://git@github.com/mtgibbs/pi-cluster.git', gh)).toBe(want)
    expect(refsUrl('git@github.com:mtgibbs/pi-cluster.git', gh)).toBe(want)
    expect(refsUrl('https://github.com/mtgibbs/pi-cluster.git', gh)).toBe(want)
    expect(refsUrl('ssh://git@github.com/mtgibbs/pi-cluster', 'http://10.199.55.1:8780/gitops/github.com/')).toBe(
      'http://10.199.55.1:8780/gitops/github.com/mtgibbs/pi-cluster.git/info/refs?service=git-upload-pack',
    )
    expect(refsUrl('ssh://git@git.example.org:2222/team/gitops', gh)).toBe(
      'https://git.example.org/team/gitops.git/info/refs?service=git-upload-pack',
    )
    expect(refsUrl('/srv/git/repo', gh)).toBeUndefined()
    expect(refsUrl("ssh://git@github.com/o/r'; reboot #", gh)).toBeUndefined()
  })

  it('finds the branch in a ref advertisement, not another branch, tag or a name that only starts alike', () => {
    const pkt = (s: string) => (s.length + 4).toString(16).padStart(4, '0') + s
    const ad =
      pkt('# service=git-upload-pack\n') +
      '0000' +
      pkt(`${HEAD} HEAD\0multi_ack symref=HEAD:refs/heads/main agent=git/github\n`) +
      pkt(`${OLD} refs/heads/main-old\n`) +
      pkt(`${HEAD} refs/heads/main\n`) +
      pkt(`${OLD} refs/tags/v1\n`) +
      '0000'
    expect(parseHead(ad, 'main')).toBe(HEAD)
    expect(parseHead(ad, 'main-old')).toBe(OLD)
    expect(parseHead(ad, 'dev')).toBeUndefined()
    // The first ref carries the capabilities after a NUL.
    expect(parseHead(pkt(`${HEAD} refs/heads/main\0side-band-64k\n`), 'main')).toBe(HEAD)
  })

  it('curl gets the token on stdin as a header line, never in argv; the URL is one quoted word', () => {
    const script = headLookupScript("https://github.com/o/r.git/info/refs?service=git-upload-pack&x='y'")
    expect(script).toBe(
      "curl -sS --fail --connect-timeout 3 --max-time 8 --config - --url 'https://github.com/o/r.git/info/refs?service=git-upload-pack&x='\\''y'\\'''",
    )
    expect(headLookupConfig(undefined)).toBe('')
    const config = headLookupConfig('ghp_secret')
    expect(config).toBe(
      `header = "Authorization: Basic ${Buffer.from('x-access-token:ghp_secret').toString('base64')}"\n`,
    )
    expect(script).not.toContain('ghp_secret')
  })

  it('the look-up as the server runs it: curl sends the token from stdin, and the branch head comes back', async () => {
    const pkt = (s: string) => (s.length + 4).toString(16).padStart(4, '0') + s
    let auth: string | undefined
    let path: string | undefined
    const server = createServer((req, res) => {
      auth = req.headers.authorization
      path = req.url
      res.writeHead(200, { 'content-type': 'application/x-git-upload-pack-advertisement' })
      res.end(`${pkt('# service=git-upload-pack\n')}0000${pkt(`${HEAD} refs/heads/main\n`)}0000`)
    })
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok))
    try {
      const port = (server.address() as AddressInfo).port
      const url = refsUrl('ssh://git@github.com/mtgibbs/pi-cluster', `http://127.0.0.1:${port}/gh`)!
      const r = await sh(headLookupScript(url), headLookupConfig('ghp_secret'))
      expect(r.code, r.stderr).toBe(0)
      expect(path).toBe('/gh/mtgibbs/pi-cluster.git/info/refs?service=git-upload-pack')
      expect(auth).toBe(`Basic ${Buffer.from('x-access-token:ghp_secret').toString('base64')}`)
      expect(parseHead(r.stdout, 'main')).toBe(HEAD)
      const none = await sh(headLookupScript(url), '')
      expect(auth).toBeUndefined()
      expect(none.code).toBe(0)
      server.close()
      const down = await sh(headLookupScript(url), '')
      expect(down.code).not.toBe(0) // the apps role then reconciles, saying why (curl's message)
      expect(down.stderr).toMatch(/^curl: \(7\)/)
    } finally {
      server.close()
    }
  })
})

/** A script as the server's shell runs it, with stdin. */
function sh(script: string, input: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', script])
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('close', (code) => resolve({ code: code ?? 255, stdout, stderr }))
    child.stdin.end(input)
  })
}

describe('flux_reconcile and github_url', () => {
  it('are checked like every variable, before any host is contacted, in every playbook', () => {
    expect(parseExtraVars(['flux_reconcile=always'])).toEqual({ flux_reconcile: 'always' })
    expect(() => parseExtraVars(['flux_reconcile=sometimes'])).toThrow(
      /flux_reconcile.*expected one of auto, always, got "sometimes"/,
    )
    expect(parseExtraVars(['github_url=https://ghe.example.org'])).toEqual({ github_url: 'https://ghe.example.org' })
    expect(() => parseExtraVars(['github_url=ftp://example.org'])).toThrow(/github_url/)
    expect(BUILTIN_DEFAULTS).toMatchObject({ flux_reconcile: 'auto', github_url: 'https://github.com' })
  })
})
