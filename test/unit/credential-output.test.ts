// Credentials read off a host never reach a reporter: not the terminal at -vv, not --json, not an error message.
// --json follows the terminal's verbosity rules and is the owner's file only. Names reach kubectl as operands.

import { generateKeyPairSync } from 'node:crypto'
import { chmodSync, existsSync, mkdtempSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeEach, describe, expect, it } from 'vitest'
import { LocalConnection } from '../../lib/connection.ts'
import { parseInventory } from '../../lib/inventory.ts'
import { kubectl } from '../../lib/kube.ts'
import { mask, resetSecretsForTest } from '../../lib/mask.ts'
import { FanOut, JsonReporter, RecordingReporter } from '../../lib/reporter.ts'
import type { RunEvent } from '../../lib/run-events.ts'
import type { Playbook, Step } from '../../lib/role.ts'
import { runPlaybook } from '../../lib/runner.ts'
import { registerKubeconfigSecrets } from '../../roles/k3s-server.ts'
import { readCredential } from '../../lib/steps.ts'
import { FakeConnection, MemorySecrets } from './fakes.ts'

const INV = `all:
  vars: { secrets_backend: file, secrets_file: /nonexistent/secrets.yaml }
  children:
    server:
      hosts:
        s1: { address: 127.0.0.11 }
`

/** A kubeconfig as k3s writes it, with a freshly made client key. */
function kubeconfig(): { text: string; keyPem: string; keyB64: string; certB64: string } {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const keyPem = privateKey.export({ type: 'sec1', format: 'pem' }).toString()
  const keyB64 = Buffer.from(keyPem).toString('base64')
  const certB64 = Buffer.from(
    '-----BEGIN CERTIFICATE-----\nMIIBkTCCATegAwIBAgIIQ2xpZW50Q2VydGlmaWNhdGVEYXRhRm9yVGVzdHM=\n-----END CERTIFICATE-----\n',
  ).toString('base64')
  const text = [
    'apiVersion: v1',
    'clusters:',
    '- cluster:',
    '    certificate-authority-data: Q0FEQVRB',
    '    server: https://127.0.0.1:6443',
    '  name: default',
    'contexts:',
    '- context: { cluster: default, user: default }',
    '  name: default',
    'current-context: default',
    'kind: Config',
    'users:',
    '- name: default',
    '  user:',
    `    client-certificate-data: ${certB64}`,
    `    client-key-data: ${keyB64}`,
    '',
  ].join('\n')
  return { text, keyPem, keyB64, certB64 }
}

function keyMaterial(k: ReturnType<typeof kubeconfig>): string[] {
  const body = k.keyPem.split('\n').filter((l) => l && !l.startsWith('-----'))
  return [k.keyB64, k.keyPem, ...body]
}

/** A playbook of one role with one step, on every host. */
function oneStep(step: Step): Playbook {
  return { name: 'p', plays: [{ name: 'read', hosts: 'all', roles: [{ name: 'r', steps: [step] }] }] }
}

beforeEach(() => resetSecretsForTest())

describe('a credential read off a host', () => {
  const run = async (verbosity: number, secretOutput: boolean, fail = false) => {
    const k = kubeconfig()
    const dir = mkdtempSync(join(tmpdir(), 'cred-'))
    const jsonFile = join(dir, 'run.json')
    const rec = new RecordingReporter(verbosity)
    const rep = new FanOut([rec, new JsonReporter(jsonFile, verbosity)])
    const pb = oneStep({
      name: 'Read the kubeconfig',
      async plan(ctx) {
        const r = fail
          ? await ctx.must('cat /etc/rancher/k3s/k3s.yaml', { secretOutput, what: 'read it' })
          : await ctx.sh('cat /etc/rancher/k3s/k3s.yaml', { secretOutput })
        return { status: r.stdout.includes('client-key-data') ? 'ok' : 'failed' }
      },
    })
    const conn = new FakeConnection('s1', () => ({ stdout: k.text, code: fail ? 1 : 0 }))
    const summary = await runPlaybook(pb, {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rep,
      secrets: new MemorySecrets(),
      connect: () => conn,
    })
    rep.close()
    return { k, summary, lines: rec.lines.join('\n'), events: rec.events, json: readFileSync(jsonFile, 'utf8') }
  }

  it('reaches the step but no reporter at -vv: the terminal and --json say how many bytes were withheld', async () => {
    const { k, summary, lines, json } = await run(2, true)
    expect(summary.exitCode).toBe(0) // the step itself saw the kubeconfig
    for (const secret of keyMaterial(k)) {
      expect(lines).not.toContain(secret)
      expect(json).not.toContain(secret)
    }
    expect(lines).toContain('bytes of credential output not shown')
    expect(json).toContain('bytes of credential output not shown')
  })

  it('is not in the error of a failed must either', async () => {
    const { k, summary, lines, json } = await run(2, true, true)
    expect(summary.exitCode).toBe(2)
    expect(lines).toContain('read it (exit 1)')
    for (const secret of keyMaterial(k)) expect(lines + json).not.toContain(secret)
  })

  it('without the marking, -vv shows the output (so the test above can fail)', async () => {
    const { k, lines } = await run(2, false)
    expect(lines).toContain(k.keyB64)
  })
})

describe('--json follows the verbosity of the terminal', () => {
  const events: RunEvent[] = [
    { kind: 'command', host: 'h', script: 'echo hi', code: 0, stdout: 'hi-output\n', stderr: 'hi-error\n', ms: 1 },
    { kind: 'facts', host: 'h', keys: ['k'], code: 0, ms: 1 },
    { kind: 'warning', message: 'careful' },
  ]
  const written = (verbosity: number) => {
    const file = join(mkdtempSync(join(tmpdir(), 'json-')), 'run.json')
    const rep = new JsonReporter(file, verbosity)
    events.forEach((e) => rep.emit(e))
    rep.close()
    return readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as RunEvent & { time: string })
  }

  it('no commands or fact round trips without -v', () => {
    expect(written(0).map((e) => e.kind)).toEqual(['warning'])
  })

  it('commands without their output at -v, with it at -vv', () => {
    const v1 = written(1)
    expect(v1.map((e) => e.kind)).toEqual(['command', 'facts', 'warning'])
    expect(JSON.stringify(v1)).not.toContain('hi-output')
    expect(JSON.stringify(v1)).not.toContain('hi-error')
    expect(JSON.stringify(written(2))).toContain('hi-output')
  })

  it('is created 0600, an existing file is made 0600, and a symlink at its name is refused', () => {
    const dir = mkdtempSync(join(tmpdir(), 'json-'))
    const fresh = join(dir, 'fresh.json')
    new JsonReporter(fresh).close()
    expect(statSync(fresh).mode & 0o777).toBe(0o600)
    const old = join(dir, 'old.json')
    writeFileSync(old, 'old\n')
    chmodSync(old, 0o644)
    new JsonReporter(old).close()
    expect(statSync(old).mode & 0o777).toBe(0o600)
    expect(readFileSync(old, 'utf8')).toBe('')
    const target = join(dir, 'victim')
    writeFileSync(target, 'keep me\n')
    const link = join(dir, 'link.json')
    symlinkSync(target, link)
    expect(() => new JsonReporter(link)).toThrow(/ELOOP|symbolic link/)
    expect(readFileSync(target, 'utf8')).toBe('keep me\n')
  })
})

describe('a kubeconfig fetched from the server', () => {
  it('has its client key masked everywhere from then on: as written, decoded, and line by line', () => {
    const k = kubeconfig()
    for (const secret of keyMaterial(k)) expect(mask(`x ${secret} y`)).toContain(secret)
    registerKubeconfigSecrets(k.text)
    for (const secret of keyMaterial(k)) expect(mask(`x ${secret} y`)).toBe('x ******** y')
    expect(mask(k.certB64)).toBe('********')
    // The armour lines and the public server address are not secrets.
    expect(mask('https://127.0.0.1:6443 -----BEGIN EC PRIVATE KEY-----')).toBe(
      'https://127.0.0.1:6443 -----BEGIN EC PRIVATE KEY-----',
    )
  })
})

describe('kubectl command lines', () => {
  /** The words kubectl would get, as the server's sh splits the line (k3s stands in as a function printing its argv). */
  const argvOf = async (line: string) => {
    const r = await new LocalConnection().run(`k3s() { printf '%s\\n' "$@"; }\n${line}`)
    return r.stdout.trim().split('\n')
  }

  it('put every name after --, so a hostile name is an operand, never an option', async () => {
    for (const name of ['-lkubernetes.io/os=linux', '--all', "x'; touch /tmp/pwned; '", '$(id)']) {
      const words = await argvOf(kubectl('delete node', name))
      expect(words.slice(-2)).toEqual(['--', name])
      expect(words.indexOf('--')).toBe(words.length - 2)
    }
    expect(await argvOf(kubectl('drain --ignore-daemonsets --timeout=300s', 'pi3-worker-2'))).toEqual([
      'kubectl',
      '--kubeconfig',
      '/etc/rancher/k3s/k3s.yaml',
      'drain',
      '--ignore-daemonsets',
      '--timeout=300s',
      '--',
      'pi3-worker-2',
    ])
  })
})

describe('the retry file', () => {
  const pb = oneStep({
    name: 'Fail',
    async plan() {
      return { status: 'failed', message: 'no' }
    },
  })
  const runWith = async (check: boolean) => {
    const dir = mkdtempSync(join(tmpdir(), 'retry-'))
    const retryFile = join(dir, 'p.retry')
    const s = await runPlaybook(pb, {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: new RecordingReporter(0),
      secrets: new MemorySecrets(),
      connect: (h) => new FakeConnection(h.name),
      retryFile,
      check,
    })
    return { s, retryFile }
  }

  it('is not written under --check (it writes nothing anywhere)', async () => {
    const { s, retryFile } = await runWith(true)
    expect(s.exitCode).toBe(2)
    expect(existsSync(retryFile)).toBe(false)
  })

  it('is written 0600 otherwise', async () => {
    const { retryFile } = await runWith(false)
    expect(readFileSync(retryFile, 'utf8')).toBe('s1\n')
    expect(statSync(retryFile).mode & 0o777).toBe(0o600)
  })
})

describe('readCredential', () => {
  it('gives the step the file and the reporters its size; the content is masked from then on', async () => {
    const token = 'K10' + 'c'.repeat(64) + '::server:' + 'd'.repeat(32)
    const rec = new RecordingReporter(2)
    let said = ''
    const pb = oneStep({
      name: 'Read the token',
      async plan(ctx) {
        const r = await readCredential(ctx, '/var/lib/rancher/k3s/server/token')
        said = r.stdout.trim()
        ctx.log(`the token is ${said}`)
        return { status: 'ok' }
      },
    })
    const conn = new FakeConnection('s1', (script) =>
      script === 'cat /var/lib/rancher/k3s/server/token' ? { stdout: `${token}\n` } : undefined,
    )
    await runPlaybook(pb, {
      inventory: parseInventory(INV, '/tmp/inv.yaml'),
      reporter: rec,
      secrets: new MemorySecrets(),
      connect: () => conn,
    })
    expect(said).toBe(token)
    const out = rec.lines.join('\n') + JSON.stringify(rec.events)
    expect(out).not.toContain(token)
    expect(out).toContain('the token is ********')
    expect(out).toContain('bytes of credential output not shown')
  })
})
