// Issue 5 on the lab: site.mts takes a fresh lab to Flux bootstrapped (ESO's 1Password secret first) and the
// owner's apps checked from the controller; a rerun changes nothing and does not bootstrap again; the ESO token
// and the GitHub PAT appear in no output, log, JSON event, process list or file but the Secret; a missing
// OP_SERVICE_ACCOUNT_TOKEN or secret reference stops the run before any host is touched; an unhealthy app
// fails the run and names itself. Self-contained: a fresh lab in beforeAll, down in afterAll.
// Run under the shared lab lock: flock /tmp/pi-lab-test.lock npx vitest run --project lab test/e2e/gitops.test.ts

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse } from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEFAULT_HOSTS, LAB_ARTIFACT_BASE, LAB_SECRETS_FILE, labAddress, labDown, labExec, labUp } from '../lab/lab.ts'
import { LAB_APPS, labGitopsRepo, setLabAppHealth, setLabPiholeBlocking } from '../lab/apps.ts'
import { onHost, runPlaybookCli, type PlaybookRun } from './helpers.ts'

/** The lab's artifact server's base URL, as a regular expression. */
const BASE_RE = LAB_ARTIFACT_BASE.replace(/[./]/g, (c) => `\\${c}`)

const KUBECTL = 'k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml'
const FLUX = '/usr/local/bin/flux --kubeconfig /etc/rancher/k3s/k3s.yaml'

let esoToken = ''
let pat = ''
let piholePassword = ''
const work = mkdtempSync(join(tmpdir(), 'gitops-e2e-'))
const timings: Record<string, number> = {}

/** Every form of a secret that must not leak: the value, and the base64 the Kubernetes API shows. */
function secretForms(): string[] {
  return [esoToken, pat, piholePassword, Buffer.from(esoToken).toString('base64'), Buffer.from(pat).toString('base64')]
}

/** Sessions the Pi-hole API stand-in still has open (each check must log out). */
async function piholeSessionsOpen(): Promise<number> {
  const r = await fetch(`${LAB_ARTIFACT_BASE}/apps/pihole/api/_standin/sessions`)
  return ((await r.json()) as { open: number }).open
}

function expectNoSecret(text: string, where: string): void {
  for (const s of secretForms()) expect(text.includes(s), `${where} contains a secret`).toBe(false)
}

/** sshd's record of logins, per host: a run that touches no host leaves it as it was. */
async function sshLogins(): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const h of DEFAULT_HOSTS) {
    const r = await labExec(
      h,
      "journalctl -u ssh -u sshd -o cat --no-pager 2>/dev/null | grep -c 'Accepted publickey'; true",
    )
    out[h] = Number(r.stdout.trim().split('\n')[0] || '0')
  }
  return out
}

/**
 * `ps -eo args` on a host through the lab (not SSH), every ~100 ms until stopped: every distinct line seen.
 * While the host reboots (pi-prep's reboot) there is nothing to ask: those polls are skipped.
 */
function pollProcesses(host: string): { stop: () => Promise<string[]> } {
  const seen = new Set<string>()
  let running = true
  const loop = (async () => {
    while (running) {
      try {
        // Bounded: entering a host while it shuts down for its reboot can hang.
        const r = await labExec(host, 'ps -eo args', { timeoutMs: 5000 })
        for (const line of r.stdout.split('\n')) if (line.trim()) seen.add(line)
      } catch {
        // the host is down for its reboot
      }
      await new Promise((done) => setTimeout(done, 100))
    }
  })()
  return {
    stop: async () => {
      running = false
      await loop
      return [...seen]
    },
  }
}

async function timed(name: string, fn: () => Promise<PlaybookRun>): Promise<PlaybookRun> {
  const t0 = Date.now()
  const r = await fn()
  timings[name] = (Date.now() - t0) / 1000
  return r
}

beforeAll(async () => {
  // down first: an artifact server left running by an older checkout would lack the lab's app routes.
  await labDown()
  await labUp(DEFAULT_HOSTS, { fresh: true })
  for (const app of Object.keys(LAB_APPS)) setLabAppHealth(app, null)
  const secrets = parse(readFileSync(LAB_SECRETS_FILE, 'utf8')) as Record<
    string,
    Record<string, Record<string, string>>
  >
  esoToken = secrets['pi-cluster']['onepassword-service-account'].token
  pat = secrets['pi-cluster']['flux-github-pat'].token
  piholePassword = secrets['pi-cluster'].pihole.password
  expect(piholePassword.length).toBeGreaterThan(10)
  setLabPiholeBlocking(null)
  expect(esoToken).toMatch(/^ops_/)
  expect(pat).toMatch(/^ghp_/)
}, 900_000)

afterAll(async () => {
  for (const app of Object.keys(LAB_APPS)) setLabAppHealth(app, null)
  await labDown()
  rmSync(work, { recursive: true, force: true })
  console.log(`gitops lab timings (s): ${JSON.stringify(timings)}`)
})

describe('secrets are checked before any host is touched', () => {
  it('the 1Password backend without OP_SERVICE_ACCOUNT_TOKEN: exit 1, a clear error, no SSH login', async () => {
    const before = await sshLogins()
    const run = await timed('no-op-token', () =>
      runPlaybookCli('site', ['-e', 'secrets_backend=onepassword'], { env: { OP_SERVICE_ACCOUNT_TOKEN: '' } }),
    )
    expect(run.code, run.out).toBe(1)
    expect(run.out).toContain(
      'ERROR: OP_SERVICE_ACCOUNT_TOKEN is not set, and the inventory selected the 1Password secrets backend',
    )
    expect(run.out).not.toContain('PLAY [')
    expect(await sshLogins()).toEqual(before)
  })

  it('a secret reference the store does not have: exit 1, the reference and why, no SSH login', async () => {
    const before = await sshLogins()
    const run = await timed('missing-ref', () =>
      runPlaybookCli('site', ['-e', 'github_token_ref=op://pi-cluster/no-such-pat/token']),
    )
    expect(run.code, run.out).toBe(1)
    expect(run.out).toContain('cannot resolve 1 secret reference (file backend):')
    expect(run.out).toContain('op://pi-cluster/no-such-pat/token: no item "no-such-pat" in vault "pi-cluster"')
    expect(run.out).not.toContain('PLAY [')
    expect(await sshLogins()).toEqual(before)
  })
})

describe('site.mts with Flux and the apps', () => {
  it('a fresh lab ends with Flux bootstrapped, the ESO secret planted, every app ok (exit 0); no secret leaks anywhere', async () => {
    const json = join(work, 'run1.jsonl')
    const ps = pollProcesses('pi-k3s')
    const run = await timed('fresh', () => runPlaybookCli('site', ['-vv', '--json', json]))
    const processes = await ps.stop()
    expect(run.code, run.out).toBe(0)
    // The login counter the tests above rely on does count this run's logins.
    for (const [h, n] of Object.entries(await sshLogins())) expect(n, h).toBeGreaterThan(0)

    // Flux, as the owner would check it on the server
    expect(run.out).toMatch(
      /changed: \[pi-k3s\] flux-bootstrap \| Bootstrap Flux from the GitOps repository \(skipped when already in place\) \(ran flux bootstrap github github\.com\/mtgibbs\/pi-cluster@main --path=clusters\/pi-k3s/,
    )
    const check = await labExec('pi-k3s', `${FLUX} check`)
    expect(check.stderr).toContain('✔ distribution: flux-v2.7.3')
    expect(check.stderr).toContain('✔ all checks passed')
    const ks = await onHost('pi-k3s', `${FLUX} get kustomizations -A --status-selector ready=false 2>&1`)
    expect(ks).toContain('no Kustomization objects found')
    expect(
      await onHost(
        'pi-k3s',
        `${KUBECTL} -n flux-system get kustomizations.kustomize.toolkit.fluxcd.io flux-system -o jsonpath='{.spec.path}'`,
      ),
    ).toBe('./clusters/pi-k3s')

    // the ESO bootstrap secret holds exactly the planted token
    const b64 = await onHost(
      'pi-k3s',
      `${KUBECTL} -n external-secrets get secret onepassword-service-account -o jsonpath='{.data.token}'`,
    )
    expect(Buffer.from(b64, 'base64').toString('utf8')).toBe(esoToken)
    expect(
      await onHost(
        'pi-k3s',
        `${KUBECTL} -n external-secrets get secret onepassword-service-account -o jsonpath='{.metadata.annotations}'`,
      ),
    ).not.toContain('last-applied')

    // every app ok, in the final table
    for (const app of ['pihole', 'jellyfin', 'immich', 'homepage', 'uptime-kuma'])
      expect(run.out).toMatch(new RegExp(`\\n {2}${app} +ok +`))
    expect(run.out).toContain(
      'ok: [pi-k3s] apps | Probe the apps from the controller (5/5 apps healthy: pihole, jellyfin, immich, homepage, uptime-kuma)',
    )
    // Pi-hole's API as the owner checks it: logged in with the password from the secrets store, logged out again
    expect(run.out).toMatch(
      new RegExp(
        `\\n {2}pihole +ok +Pi-hole API ${BASE_RE}\\/apps\\/pihole\\/api: login, blocking, logout +blocking enabled \\(\\d+ ms\\)\\n`,
      ),
    )
    expect(await piholeSessionsOpen()).toBe(0)
    expect(run.out).toContain(
      'ok: [pi-k3s] apps | Check where the pinned workloads run (pihole/pihole on pi-k3s, pihole/unbound on pi3-worker-1, backup-jobs/* on pi-k3s)',
    )
    expect(run.out).toContain(
      'ok: [pi-k3s] apps | Check the ClusterSecretStore onepassword and the ExternalSecrets (ClusterSecretStore onepassword Ready; 5/5 ExternalSecrets synced)',
    )
    expect(run.out).toMatch(
      /\[pi-k3s\] flux: \d+\/\d+ Kustomizations and HelmReleases Ready|ok: \[pi-k3s\] apps \| Wait until every Kustomization and HelmRelease is Ready \(19\/19 Ready/,
    )

    // no secret in the -vv output, the JSON events, or any process's argv while bootstrap ran
    expectNoSecret(run.out, '-vv output')
    const events = readFileSync(json, 'utf8')
    expectNoSecret(events, 'the --json file')
    expect(events).toContain('bootstrap github') // the command events are there, with the token masked out of them
    const caught = processes.filter((l) =>
      l.includes('flux bootstrap github --kubeconfig=/etc/rancher/k3s/k3s.yaml --owner=mtgibbs'),
    )
    expect(caught.length, `ps never caught the bootstrap:\n${processes.join('\n')}`).toBeGreaterThan(0)
    expectNoSecret(processes.join('\n'), 'ps -eo args')
    const fluxProcess = processes.find(
      (l) => / \/usr\/local\/bin\/flux bootstrap github/.test(l) && !l.startsWith('sudo') && !l.startsWith('sh -c'),
    )
    console.log(
      `leak check: ${processes.length} distinct argv lines seen on pi-k3s during the run, none with a secret; the bootstrap as ps showed it:\n  ${caught[0]}\n  ${fluxProcess ?? '(the flux process itself was not caught)'}`,
    )

    // no file on any host holds them, except the k3s datastore that holds the Secret
    const patterns = secretForms().join('\n') + '\n'
    for (const h of DEFAULT_HOSTS) {
      const r = await labExec(
        h,
        "grep -rlsF -f - /etc /root /home /run /tmp /var /usr/local /opt /srv /boot 2>/dev/null | grep -v '^/var/lib/rancher/k3s/server/db/'; true",
        { input: patterns },
      )
      expect(r.stdout, `${h}: files holding a secret`).toBe('')
    }
    // ...and the datastore does hold the Secret (so the grep can find what it looks for)
    const db = await labExec('pi-k3s', 'grep -rlsF -f - /var/lib/rancher/k3s/server/db/', {
      input: Buffer.from(esoToken).toString('base64') + '\n',
    })
    expect(db.stdout).toContain('/var/lib/rancher/k3s/server/db/')
    console.log(
      `leak check: no file on ${DEFAULT_HOSTS.join(', ')} holds a secret; the datastore does: ${db.stdout.trim()}; -vv output ${run.out.length} bytes, --json ${events.length} bytes, both clean`,
    )
  })

  it('a rerun changes nothing and does not run flux bootstrap again', async () => {
    const rv = async () =>
      onHost(
        'pi-k3s',
        [
          `${KUBECTL} -n flux-system get configmap flux-standin-bootstrap -o jsonpath='{.metadata.resourceVersion}'`,
          `${KUBECTL} -n flux-system get secret flux-system -o jsonpath='{.metadata.resourceVersion}'`,
          `${KUBECTL} -n external-secrets get secret onepassword-service-account -o jsonpath='{.metadata.resourceVersion}'`,
        ].join("; echo ' '; "),
      )
    const before = await rv()
    const json = join(work, 'run2.jsonl')
    const ps = pollProcesses('pi-k3s')
    // -v: --json carries every command from -v on (their output only from -vv), as the terminal shows them.
    const run = await timed('rerun', () => runPlaybookCli('site', ['-v', '--json', json]))
    const processes = await ps.stop()
    expect(run.code, run.out).toBe(0)
    for (const [h, c] of Object.entries(run.recap)) expect(c.changed, `${h}\n${run.out}`).toBe(0)
    expect(run.out).toContain(
      'skipping: [pi-k3s] flux-bootstrap | Bootstrap Flux from the GitOps repository (skipped when already in place) (already bootstrapped: Flux 2.7.3 with 4 controllers ready; flux-system Ready on ./clusters/pi-k3s of github.com/mtgibbs/pi-cluster@main)',
    )
    // Proof it did not run: no command of the run (all are JSON events) calls bootstrap, ps never saw it,
    // and the stand-in's record of the bootstrap, its deploy-key Secret and the ESO Secret are untouched.
    const commands = readFileSync(json, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { kind: string; script?: string })
      .filter((e) => e.kind === 'command')
    expect(commands.length).toBeGreaterThan(10)
    expect(commands.filter((c) => c.script?.includes('bootstrap github'))).toEqual([])
    expect(processes.filter((l) => l.includes('bootstrap github'))).toEqual([])
    expect(await rv()).toBe(before)
  })

  it('flux_sha256 is checked when flux is (re)installed: a wrong one refuses the download, the right one installs it', async () => {
    const sums = await (
      await fetch(`${LAB_ARTIFACT_BASE}/flux/releases/download/v2.7.3/flux_2.7.3_checksums.txt`)
    ).text()
    const sha = /^([0-9a-f]{64}) {2}flux_2\.7\.3_linux_amd64\.tar\.gz$/m.exec(sums)?.[1] ?? ''
    expect(sha).toMatch(/^[0-9a-f]{64}$/)
    await onHost('pi-k3s', 'rm -f /usr/local/bin/flux')
    const wrong = await timed('sha-wrong', () =>
      runPlaybookCli('site', ['--limit', 'pi-k3s', '--tags', 'flux-bootstrap', '-e', `flux_sha256=${'0'.repeat(64)}`]),
    )
    expect(wrong.code, wrong.out).toBe(2)
    expect(wrong.out).toContain(
      `sha256 of ${LAB_ARTIFACT_BASE}/flux/releases/download/v2.7.3/flux_2.7.3_linux_amd64.tar.gz is ${sha}, not ${'0'.repeat(64)} (flux_sha256)`,
    )
    expect((await labExec('pi-k3s', 'test -e /usr/local/bin/flux')).code).toBe(1)
    const right = await timed('sha-right', () =>
      runPlaybookCli('site', ['--limit', 'pi-k3s', '--tags', 'flux-bootstrap', '-e', `flux_sha256=${sha}`]),
    )
    expect(right.code, right.out).toBe(0)
    expect(right.out).toContain('changed: [pi-k3s] flux-bootstrap | Install the flux CLI at the pinned version')
    expect(right.out).toContain('skipping: [pi-k3s] flux-bootstrap | Bootstrap Flux from the GitOps repository')
    expect(await onHost('pi-k3s', '/usr/local/bin/flux --version')).toBe('flux version 2.7.3\n')
  })

  it('a HelmRelease that does not get Ready fails the wait after apps_timeout, named with its message', async () => {
    const repo = labGitopsRepo()
    const immich = repo.objects.find((o) => o.kind === 'HelmRelease' && o.name === 'immich')!
    immich.ready = false
    immich.message = 'install retries exhausted'
    await labExec('pi-k3s', 'cat > /var/lib/flux-standin/repo.json', { input: JSON.stringify(repo) })
    try {
      const run = await timed('not-ready', () =>
        runPlaybookCli('site', ['--limit', 'pi-k3s', '--tags', 'apps', '-e', 'apps_timeout=6']),
      )
      expect(run.code, run.out).toBe(2)
      expect(run.out).toContain(
        'timed out after 6s waiting for every Kustomization and HelmRelease to be Ready: 1 of 19 not Ready: HelmRelease immich/immich: install retries exhausted',
      )
      expect(run.out).toContain(
        '[pi-k3s] flux: 18/19 Kustomizations and HelmReleases Ready; waiting for HelmRelease immich/immich: install retries exhausted',
      )
    } finally {
      await labExec('pi-k3s', 'cat > /var/lib/flux-standin/repo.json', { input: JSON.stringify(labGitopsRepo()) })
    }
  })

  it('an unhealthy app (and a Pi-hole that fails DNS) fail the run with exit 2, each named with its reason', async () => {
    setLabAppHealth('jellyfin', { status: 503, body: 'Unhealthy' })
    await onHost('pi-k3s', `echo '{"rcode": "SERVFAIL"}' > /var/lib/flux-standin/dns.json`)
    setLabPiholeBlocking({ blocking: 'disabled', timer: 300 })
    try {
      const run = await timed('unhealthy', () => runPlaybookCli('site', ['--limit', 'pi-k3s', '--tags', 'apps']))
      expect(run.code, run.out).toBe(2)
      expect(run.out).toContain(
        'FAILED: [pi-k3s] apps | Probe the apps from the controller (2 of 5 apps failing: pihole (the server failed to answer (SERVFAIL); blocking is disabled (for 300 s more)), jellyfin (HTTP 503 (expected 2xx): Unhealthy))',
      )
      expect(await piholeSessionsOpen()).toBe(0) // logged out after the failing check too
      expect(run.out).toMatch(
        new RegExp(
          `\\n {2}jellyfin +FAILING +GET ${BASE_RE}\\/apps\\/jellyfin\\/health +HTTP 503 \\(expected 2xx\\): Unhealthy\\n`,
        ),
      )
      expect(run.out).toMatch(
        new RegExp(
          `\\n {2}pihole +FAILING +DNS A google\\.com @${labAddress('pi-k3s').replaceAll('.', '\\.')}:53 +the server failed to answer \\(SERVFAIL\\)\\n`,
        ),
      )
      expect(run.out).toMatch(/\n {2}immich +ok +/)
      expect(run.recap['pi-k3s'].failed).toBe(1)
    } finally {
      setLabAppHealth('jellyfin', null)
      setLabPiholeBlocking(null)
      await onHost('pi-k3s', 'rm -f /var/lib/flux-standin/dns.json')
    }
    const healed = await timed('healed', () => runPlaybookCli('site', ['--limit', 'pi-k3s', '--tags', 'apps']))
    expect(healed.code, healed.out).toBe(0)
  })
})
