import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeEach, describe, expect, it } from 'vitest'
import { parseCli, runCli } from '../../lib/cli.ts'
import { ProvisionError } from '../../lib/errors.ts'
import { parseInventory } from '../../lib/inventory.ts'
import { resetSecretsForTest } from '../../lib/mask.ts'
import { RecordingReporter } from '../../lib/reporter.ts'
import { flushHandlers, handler, type Playbook, type Role, type Step } from '../../lib/role.ts'
import { pendingHandlersFact, runPlaybook, type RunnerOptions } from '../../lib/runner.ts'
import { checkClusterToken } from '../../lib/k3s.ts'
import { defineFact } from '../../lib/facts.ts'
import { answerBatch, FakeConnection, MemorySecrets } from './fakes.ts'

const INV = `all:
  vars:
    ssh_user: pi
    secrets_backend: file
    secrets_file: /nonexistent/secrets.yaml
  children:
    server:
      hosts:
        s1: { address: 127.0.0.11 }
    agent:
      hosts:
        a1: { address: 127.0.0.12 }
        a2: { address: 127.0.0.13 }
`
const inventory = () => parseInventory(INV, '/tmp/test-inventory.yaml')

/** A step that reports a fixed status; records its run order. */
function stub(
  name: string,
  status: 'ok' | 'changed' | 'failed' | 'skipped',
  extra: Partial<Step> = {},
  order?: string[],
): Step {
  return {
    name,
    ...extra,
    async plan(ctx) {
      order?.push(`${ctx.host}:${name}`)
      if (status === 'changed') return { summary: `do ${name}`, commands: [{ script: `echo ${name}` }] }
      return { status, message: status === 'failed' ? `${name} broke` : undefined }
    },
  }
}

function setup(pb: Playbook, over: Partial<RunnerOptions> = {}, conns = new Map<string, FakeConnection>()) {
  const rep = new RecordingReporter(2)
  const opts: RunnerOptions = {
    inventory: inventory(),
    reporter: rep,
    secrets: new MemorySecrets(),
    connect: (h) => {
      const c = conns.get(h.name) ?? new FakeConnection(h.name)
      conns.set(h.name, c)
      return c
    },
    ...over,
  }
  return { rep, conns, run: () => runPlaybook(pb, opts) }
}

beforeEach(() => resetSecretsForTest())

describe('handlers', () => {
  it('run once per host at the end of the role, in the order the role lists them, only when notified', async () => {
    const order: string[] = []
    const role: Role = {
      name: 'r',
      steps: [
        stub('A', 'changed', { notify: ['h2'] }, order),
        stub('B', 'changed', { notify: ['h1'] }, order),
        stub('C', 'changed', { notify: ['h2'] }, order),
        stub('D', 'ok', { notify: ['h3'] }, order),
      ],
      handlers: [
        handler(stub('h1', 'changed', {}, order)),
        handler(stub('h2', 'changed', {}, order)),
        handler(stub('h3', 'changed', {}, order)),
      ],
    }
    const { run } = setup({ name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] })
    const s = await run()
    expect(order).toEqual(['s1:A', 's1:B', 's1:C', 's1:D', 's1:h1', 's1:h2'])
    expect(s.counts.s1).toEqual({ ok: 6, changed: 5, unreachable: 0, failed: 0, skipped: 0 })
  })

  it('a notify naming no handler of the role is refused before anything runs', async () => {
    const role: Role = {
      name: 'r',
      steps: [stub('A', 'changed', { notify: ['Reboot'] })],
      handlers: [handler(stub('reboot', 'ok'))],
    }
    await expect(setup({ name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] }).run()).rejects.toThrow(
      'role r, step "A" notifies "Reboot", but the role has no such handler (handlers: reboot)',
    )
  })

  it('handlers owed by a run that failed before they ran are run by the next run', async () => {
    // The host keeps the owed handlers in a file; the fake host keeps that file in memory and runs the scripts' effects.
    let owed = ''
    const conn = new FakeConnection('s1', (script) => {
      if (script.startsWith('cat ') && script.includes('/var/lib/pi-provision/handlers/r')) return { stdout: owed }
      const m = /^mkdir -p \S+ && printf '%s\\n' (.*) > \S+ && mv/.exec(script)
      if (m)
        owed = m[1]
          .split(' ')
          .map((x) => x + '\n')
          .join('')
      if (script.startsWith('rm -f ') && script.includes('handlers/r')) owed = ''
      return undefined
    })
    const order: string[] = []
    let failLater = true
    let edits = 0
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'edit cmdline',
          notify: ['Reboot'],
          async plan(_ctx) {
            order.push('edit')
            return ++edits === 1 ? { summary: 'edit', commands: [{ script: 'true' }] } : { status: 'ok' }
          },
        },
        {
          name: 'then fail',
          async plan() {
            order.push('fail?')
            return failLater ? { status: 'failed' } : { status: 'ok' }
          },
        },
      ],
      handlers: [handler(stub('Reboot', 'changed', {}, order))],
    }
    const pb: Playbook = { name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] }
    const first = await setup(pb, {}, new Map([['s1', conn]])).run()
    expect(first.exitCode).toBe(2)
    expect(order).not.toContain('s1:Reboot')
    expect(owed).toBe('Reboot\n')
    failLater = false
    const second = await setup(pb, {}, new Map([['s1', conn]])).run()
    expect(second.exitCode).toBe(0)
    expect(order.filter((o) => o === 's1:Reboot')).toHaveLength(1)
    expect(owed).toBe('')
    order.length = 0
    await setup(pb, {}, new Map([['s1', conn]])).run()
    expect(order).not.toContain('s1:Reboot')
  })

  it('flushHandlers runs the notified handlers before the next step', async () => {
    const order: string[] = []
    const role: Role = {
      name: 'r',
      steps: [stub('edit', 'changed', { notify: ['reboot'] }, order), flushHandlers(), stub('verify', 'ok', {}, order)],
      handlers: [handler(stub('reboot', 'changed', {}, order))],
    }
    await setup({ name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] }).run()
    expect(order).toEqual(['s1:edit', 's1:reboot', 's1:verify'])
  })
})

describe('check mode', () => {
  it('reports what would change and runs no changing command', async () => {
    const role: Role = { name: 'r', steps: [stub('A', 'changed'), stub('B', 'changed')] }
    const { rep, conns, run } = setup(
      { name: 'p', plays: [{ name: 'play', hosts: 'all', roles: [role] }] },
      { check: true },
    )
    const s = await run()
    expect(s.exitCode).toBe(0)
    expect(s.counts.a1.changed).toBe(2)
    // The only thing read: the handlers a failed run may have left owed.
    for (const c of conns.values()) expect(c.scripts.map((x) => x.script)).toEqual([pendingHandlersFact('r').script])
    expect(rep.lines).toContain('changed: [a1] r | A (would do A)')
  })
})

describe('recap and exit codes', () => {
  it('prints an Ansible-style recap line per host and exits 0 when all is well', async () => {
    const role: Role = { name: 'r', steps: [stub('A', 'ok'), stub('B', 'changed'), stub('C', 'skipped')] }
    const { rep, run } = setup({ name: 'p', plays: [{ name: 'play', hosts: 'all', roles: [role] }] })
    const s = await run()
    expect(s.exitCode).toBe(0)
    const recap = rep.lines.filter((l) => /^\S+\s+: ok=/.test(l))
    expect(recap).toHaveLength(3)
    expect(recap[0]).toMatch(/^s1\s+: ok=2\s+changed=1\s+unreachable=0\s+failed=0\s+skipped=1$/)
    expect(rep.lines.some((l) => /^finished in \d+\.\d\ds, exit 0$/.test(l))).toBe(true)
  })

  it('a failed host stops alone: the others finish, exit 2, and the retry file names it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'runner-'))
    const order: string[] = []
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'maybe fail',
          async plan(ctx) {
            order.push(`${ctx.host}:1`)
            return ctx.host === 'a1' ? { status: 'failed', message: 'disk full' } : { status: 'ok' }
          },
        },
        stub('after', 'ok', {}, order),
      ],
    }
    const { rep, run } = setup(
      { name: 'p', plays: [{ name: 'play', hosts: 'all', roles: [role] }] },
      { retryFile: join(dir, 'site.retry') },
    )
    const s = await run()
    expect(s.exitCode).toBe(2)
    expect(s.failed).toEqual(['a1'])
    expect(order).toContain('s1:after')
    expect(order).toContain('a2:after')
    expect(order).not.toContain('a1:after')
    expect(rep.lines).toContain('FAILED: [a1] r | maybe fail (disk full)')
    expect(readFileSync(join(dir, 'site.retry'), 'utf8')).toBe('a1\n')
  })

  it('an unreachable host gives exit 4 when no host failed, and the retry file drives --limit @file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'runner-'))
    const conns = new Map<string, FakeConnection>()
    const down = new FakeConnection('a2')
    down.unreachable = true
    conns.set('a2', down)
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'touch host',
          async plan(ctx) {
            await ctx.sh('true')
            return { status: 'ok' }
          },
        },
      ],
    }
    const pb: Playbook = { name: 'p', plays: [{ name: 'play', hosts: 'all', roles: [role] }] }
    const retry = join(dir, 'p.retry')
    const { rep, run } = setup(pb, { retryFile: retry }, conns)
    const s = await run()
    expect(s.exitCode).toBe(4)
    expect(s.counts.a2).toEqual({ ok: 0, changed: 0, unreachable: 1, failed: 0, skipped: 0 })
    expect(s.counts.s1.ok).toBe(1)
    expect(rep.lines.some((l) => l.startsWith('UNREACHABLE: [a2] cannot connect to a2'))).toBe(true)
    down.unreachable = false
    const second = setup(pb, { limit: `@${retry}` }, conns)
    const s2 = await second.run()
    expect(Object.keys(s2.counts)).toEqual(['a2'])
    expect(s2.exitCode).toBe(0)
  })

  it('a playbook that names how to run it again (retire, rebuild) says so instead of writing a retry file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'runner-'))
    const down = new FakeConnection('a2')
    down.unreachable = true
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'touch host',
          async plan(ctx) {
            await ctx.sh('true')
            return { status: 'ok' }
          },
        },
      ],
    }
    const pb: Playbook = {
      name: 'p',
      plays: [{ name: 'play', hosts: 'all', roles: [role] }],
      rerun: 'npx zx playbooks/retire.mts a2',
    }
    const retry = join(dir, 'p.retry')
    const { rep, run } = setup(pb, { retryFile: retry }, new Map([['a2', down]]))
    expect((await run()).exitCode).toBe(4)
    expect(rep.lines).toContain(
      'once the failed and unreachable hosts are fixed, run it again: npx zx playbooks/retire.mts a2',
    )
    expect(rep.lines.some((l) => l.includes('--limit @'))).toBe(false)
    expect(existsSync(retry)).toBe(false)
    // All well: nothing to say.
    down.unreachable = false
    const ok = setup(pb, { retryFile: retry }, new Map([['a2', down]]))
    expect((await ok.run()).exitCode).toBe(0)
    expect(ok.rep.lines.some((l) => l.includes('run it again'))).toBe(false)
  })

  it('failed and unreachable together give exit 2', async () => {
    const conns = new Map<string, FakeConnection>()
    const down = new FakeConnection('a2')
    down.unreachable = true
    conns.set('a2', down)
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 's',
          async plan(ctx) {
            await ctx.sh('true')
            return ctx.host === 'a1' ? { status: 'failed' } : { status: 'ok' }
          },
        },
      ],
    }
    const s = await setup({ name: 'p', plays: [{ name: 'play', hosts: 'all', roles: [role] }] }, {}, conns).run()
    expect(s.exitCode).toBe(2)
  })

  it('a thrown error fails the step with its message, and a failing command names its output', async () => {
    const conns = new Map([
      ['s1', new FakeConnection('s1', () => ({ code: 3, stderr: 'E: Unable to locate package nfs-common\n' }))],
    ])
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'install',
          async plan(ctx) {
            await ctx.must('apt-get install -y nfs-common', { what: 'install nfs-common' })
            return { status: 'ok' }
          },
        },
      ],
    }
    const { rep, run } = setup({ name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] }, {}, conns)
    const s = await run()
    expect(s.exitCode).toBe(2)
    expect(rep.lines.join('\n')).toContain(
      'FAILED: [s1] r | install (s1: install nfs-common (exit 3):\n    E: Unable to locate package nfs-common)',
    )
  })

  it('a connection dropped mid-step: reconnect and run the (idempotent) step again; a host that stays gone fails its step', async () => {
    let drops = 1
    const flaky = new FakeConnection('s1', (script) => {
      if (script === 'do-it' && drops-- > 0)
        throw new ProvisionError('unreachable', 'connection lost while running a command: read ECONNRESET', {
          place: { host: 's1' },
        })
      return { stdout: 'done\n' }
    })
    let runs = 0
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'work',
          async plan(ctx) {
            runs++
            const r = await ctx.must('do-it')
            return { status: 'ok', message: r.stdout.trim() }
          },
        },
      ],
    }
    const { rep, run } = setup(
      { name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] },
      {},
      new Map([['s1', flaky]]),
    )
    const s = await run()
    expect(s.exitCode).toBe(0)
    expect(runs).toBe(2)
    expect(rep.lines).toContain(
      'WARNING: [s1] connection lost while running a command: read ECONNRESET: reconnecting and running "work" again (attempt 2)',
    )

    const dead = new FakeConnection('s1', (script) => {
      if (script === 'do-it') {
        dead.unreachable = true
        throw new ProvisionError('unreachable', 'connection lost while running a command: socket closed', {
          place: { host: 's1' },
        })
      }
      return undefined
    })
    const second = setup(
      { name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] },
      {},
      new Map([['s1', dead]]),
    )
    const s2 = await second.run()
    expect(s2.exitCode).toBe(2)
    expect(s2.counts.s1.failed).toBe(1)
    expect(second.rep.lines.join('\n')).toContain(
      'FAILED: [s1] r | work (s1: the host went away mid-run: cannot connect to s1: no route to host)',
    )
  })

  it('Ctrl-C: no new step starts, the recap is printed, exit 130', async () => {
    const abort = new AbortController()
    const order: string[] = []
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'first',
          async plan(ctx) {
            order.push(`${ctx.host}:first`)
            abort.abort()
            return { status: 'ok' }
          },
        },
        stub('second', 'ok', {}, order),
      ],
    }
    const { rep, run } = setup(
      { name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] },
      { signal: abort.signal },
    )
    const s = await run()
    expect(s.exitCode).toBe(130)
    expect(order).toEqual(['s1:first'])
    expect(rep.lines.some((l) => l.startsWith('PLAY RECAP'))).toBe(true)
  })
})

describe('plays', () => {
  it('serial runs rolling batches and max_fail_percentage stops the rest', async () => {
    const order: string[] = []
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 's',
          async plan(ctx) {
            order.push(ctx.host)
            return ctx.host === 's1' ? { status: 'failed' } : { status: 'ok' }
          },
        },
      ],
    }
    const s = await setup({
      name: 'p',
      plays: [{ name: 'play', hosts: 'all', roles: [role], serial: 1, maxFailPercentage: 0 }],
    }).run()
    expect(order).toEqual(['s1'])
    expect(s.exitCode).toBe(2)
  })

  it('any_errors_fatal stops later plays; failed hosts skip later plays otherwise', async () => {
    const order: string[] = []
    const failS1: Role = {
      name: 'r1',
      steps: [
        {
          name: 's',
          async plan(ctx) {
            return ctx.host === 's1' ? { status: 'failed' } : { status: 'ok' }
          },
        },
      ],
    }
    const second: Role = { name: 'r2', steps: [stub('later', 'ok', {}, order)] }
    await setup({
      name: 'p',
      plays: [
        { name: 'one', hosts: 'all', roles: [failS1] },
        { name: 'two', hosts: 'all', roles: [second] },
      ],
    }).run()
    expect(order.sort()).toEqual(['a1:later', 'a2:later'])
    order.length = 0
    await setup({
      name: 'p',
      plays: [
        { name: 'one', hosts: 'all', roles: [failS1], anyErrorsFatal: true },
        { name: 'two', hosts: 'all', roles: [second] },
      ],
    }).run()
    expect(order).toEqual([])
  })

  it('--tags and --skip-tags select steps; the role name is a tag; "always" runs with any tag', async () => {
    const order: string[] = []
    const role: Role = {
      name: 'prep',
      steps: [
        stub('a', 'ok', { tags: ['swap'] }, order),
        stub('b', 'ok', { tags: ['cgroups'] }, order),
        stub('c', 'ok', { tags: ['always'] }, order),
      ],
    }
    const pb: Playbook = { name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] }
    await setup(pb, { tags: ['swap'] }).run()
    expect(order).toEqual(['s1:a', 's1:c'])
    order.length = 0
    await setup(pb, { skipTags: ['swap'] }).run()
    expect(order).toEqual(['s1:b', 's1:c'])
    order.length = 0
    await setup(pb, { tags: ['prep'] }).run()
    expect(order).toEqual(['s1:a', 's1:b', 's1:c'])
  })

  it('--limit that matches nothing is a usage error', async () => {
    const role: Role = { name: 'r', steps: [stub('a', 'ok')] }
    await expect(
      setup({ name: 'p', plays: [{ name: 'play', hosts: 'server', roles: [role] }] }, { limit: 'a1' }).run(),
    ).rejects.toThrow(/matches no host/)
  })
})

describe('masking', () => {
  it('a planted secret never appears in output lines, JSON events, errors, diffs or the retry file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mask-'))
    const SECRET = 'ops_planted-secret-value-9f8e7d'
    const secrets = new MemorySecrets({ 'op://v/i/f': SECRET })
    const conns = new Map([
      [
        's1',
        new FakeConnection('s1', () => ({ code: 1, stdout: `token is ${SECRET}\n`, stderr: `bad token ${SECRET}` })),
      ],
    ])
    const role: Role = {
      name: 'r',
      secrets: () => ['op://v/i/f'],
      steps: [
        {
          name: 'show',
          async plan(ctx) {
            const v = ctx.secrets.get('op://v/i/f')
            await ctx.sh(`echo ${v}`, { stdin: v })
            return { summary: `set ${v}`, diff: `+token: ${v}\n` }
          },
        },
        {
          name: 'fail',
          async plan(ctx) {
            await ctx.must('false')
            return { status: 'ok' }
          },
        },
      ],
    }
    const json = join(dir, 'events.jsonl')
    const lines: string[] = []
    const code = await runCli(
      { name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] },
      ['-i', writeInv(dir), '-vv', '--diff', '--json', json, '--retry-file', join(dir, 'r.retry')],
      {
        secrets,
        connect: (h) => conns.get(h.name)!,
        write: (l) => lines.push(l),
      },
    )
    expect(code).toBe(2)
    const all = [lines.join('\n'), readFileSync(json, 'utf8'), readFileSync(join(dir, 'r.retry'), 'utf8')].join('\n')
    expect(all).toContain('********')
    expect(all).toContain('token is ********')
    expect(all).not.toContain(SECRET)
  })
})

describe('command line', () => {
  const refuse = () => {
    throw new Error('no connection may be opened')
  }

  it('--list-hosts and --list-tasks open no connection and need no secrets', async () => {
    const lines: string[] = []
    const role: Role = {
      name: 'r',
      steps: [stub('Do the thing', 'ok', { tags: ['t1'] })],
      handlers: [handler(stub('Restart', 'ok'))],
    }
    const pb: Playbook = { name: 'p', plays: [{ name: 'Prepare', hosts: 'agent', roles: [role] }] }
    const dir = mkdtempSync(join(tmpdir(), 'cli-'))
    expect(
      await runCli(pb, ['-i', writeInv(dir), '--list-hosts'], { connect: refuse, write: (l) => lines.push(l) }),
    ).toBe(0)
    expect(lines).toEqual(['play #1 (agent): Prepare  HOSTS (2):', '    a1  127.0.0.12', '    a2  127.0.0.13'])
    lines.length = 0
    expect(
      await runCli(pb, ['-i', writeInv(dir), '--list-tasks', '-l', 'a2'], {
        connect: refuse,
        write: (l) => lines.push(l),
      }),
    ).toBe(0)
    expect(lines).toEqual([
      'play #1 (agent): Prepare  HOSTS: a2',
      '    r | Do the thing  TAGS: [t1]',
      '    r | handler: Restart',
    ])
  })

  it('a playbook that takes a host name (rebuild, retire) gets it apart from the flags, even when a flag value is the same word', () => {
    const o = parseCli(['-l', 'pi3-worker-1', 'pi3-worker-1', '-e', 'k=v', '--json=out.json'], { positionals: true })
    expect(o.positionals).toEqual(['pi3-worker-1'])
    expect(o.flags).toEqual(['-l', 'pi3-worker-1', '-e', 'k=v', '--json=out.json'])
    expect(parseCli(['pi3-worker-1', '-i', 'inv.yaml'], { positionals: true }).flags).toEqual(['-i', 'inv.yaml'])
  })

  it('bad flags and bad inventories exit 1 with a message saying what and where', async () => {
    const lines: string[] = []
    const pb: Playbook = { name: 'p', plays: [] }
    expect(await runCli(pb, ['--frobnicate'], { write: (l) => lines.push(l) })).toBe(1)
    expect(lines.join('\n')).toMatch(/ERROR: Unknown option '--frobnicate'/)
    const dir = mkdtempSync(join(tmpdir(), 'cli-'))
    const bad = join(dir, 'bad.yaml')
    writeFileSync(bad, 'all:\n  children:\n    server:\n      hosts:\n        s1:\n          adress: 127.0.0.1\n')
    lines.length = 0
    expect(await runCli(pb, ['-i', bad, '--list-hosts'], { write: (l) => lines.push(l) })).toBe(1)
    expect(lines.join('\n')).toContain(
      `ERROR: ${bad}:6:11: unknown variable "adress" in host "s1"\n  hint: did you mean "address"?`,
    )
  })

  it('Ctrl-C (SIGINT) mid-step: says so, lets the step finish, starts no other, exit 130; --json marks the moment', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cli-'))
    const json = join(dir, 'events.jsonl')
    const order: string[] = []
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'long',
          async plan(ctx) {
            process.emit('SIGINT')
            order.push(`${ctx.host}:long`)
            return { status: 'ok' }
          },
        },
        stub('next', 'ok', {}, order),
      ],
    }
    const lines: string[] = []
    const before = process.listenerCount('SIGINT')
    const code = await runCli(
      { name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] },
      ['-i', writeInv(dir), '--json', json, '--retry-file', join(dir, 'r.retry')],
      {
        secrets: new MemorySecrets(),
        connect: (h) => new FakeConnection(h.name),
        write: (l) => lines.push(l),
      },
    )
    expect(code).toBe(130)
    expect(order).toEqual(['s1:long'])
    expect(lines).toContain('interrupted: finishing the steps in flight, then the recap (Ctrl-C again to quit at once)')
    expect(lines.some((l) => l.startsWith('PLAY RECAP'))).toBe(true)
    const kinds = readFileSync(json, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; step?: string })
    const mark = kinds.findIndex((e) => e.kind === 'interrupted')
    // Between the step's start and its end: the step in flight ends after the mark, and nothing else starts.
    expect(kinds.slice(0, mark).map((e) => e.kind + (e.step ? `:${e.step}` : ''))).toContain('step-start:long')
    expect(kinds.slice(mark + 1).map((e) => e.kind + (e.step ? `:${e.step}` : ''))).toEqual(['step-end:long', 'recap'])
    // The handler is gone with the run: a later Ctrl-C in the same process is not swallowed.
    expect(process.listenerCount('SIGINT')).toBe(before)
  })
})

function writeInv(dir: string): string {
  const f = join(dir, 'inv.yaml')
  writeFileSync(f, INV)
  return f
}

describe('fact round trips in the output', () => {
  it('-v names the facts each round trip read, never their answers (a file fact may hold a secret)', async () => {
    const conf = defineFact('file:/etc/app.conf', 'cat /etc/app.conf', (r) => r.stdout)
    const arch = defineFact('arch', 'uname -m', (r) => r.stdout.trim())
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'read',
          facts: () => [conf, arch],
          async plan(ctx) {
            return { status: 'ok', message: `${await ctx.facts.get(arch)}` }
          },
        },
      ],
    }
    const conns = new Map([
      [
        's1',
        new FakeConnection('s1', (script) =>
          answerBatch(script, (sub) => ({
            stdout: sub === 'uname -m' ? 'aarch64\n' : 'token: planted-secret-value\n',
          })),
        ),
      ],
    ])
    const { rep, run } = setup({ name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] }, {}, conns)
    expect((await run()).exitCode).toBe(0)
    const lines = rep.lines.filter((l) => l.includes('read 3 facts'))
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(
      /^ {2}\[s1\] read 3 facts in one round trip: pending-handlers:r, file:\/etc\/app\.conf, arch {2}-> exit 0 \(\d+ ms\)$/,
    )
    expect(rep.events.filter((e) => e.kind === 'facts')).toHaveLength(1)
    expect(JSON.stringify(rep.events) + rep.lines.join('\n')).not.toContain('planted-secret-value')
  })
})

describe('a one-Pi cluster', () => {
  it('an inventory with a server and no agent group runs the agent plays on no host', async () => {
    const one = parseInventory(
      'all:\n  children:\n    server:\n      hosts:\n        s1: { address: 127.0.0.11 }\n',
      '/tmp/one.yaml',
    )
    const order: string[] = []
    const pb: Playbook = {
      name: 'site',
      plays: [
        { name: 'server', hosts: 'server', roles: [{ name: 'r', steps: [stub('install', 'ok', {}, order)] }] },
        { name: 'agents', hosts: 'agent', roles: [{ name: 'r', steps: [stub('join', 'ok', {}, order)] }] },
      ],
    }
    const { rep, run } = setup(pb, { inventory: one })
    const s = await run()
    expect(s.exitCode).toBe(0)
    expect(order).toEqual(['s1:install'])
    expect(rep.lines).toContain('skipping: no hosts matched')
    // In --limit an unknown name is still the owner's typo.
    await expect(setup(pb, { inventory: one, limit: 'agent' }).run()).rejects.toThrow(
      '"agent" is neither a host nor a group',
    )
  })
})

describe('a fact batch that does not run at all', () => {
  it('fails the host saying why (sudo refused), instead of answering every fact as empty', async () => {
    const conn = new FakeConnection('s1', () => ({ code: 1, stderr: 'sudo: a password is required\n' }))
    const facts = [defineFact('one', 'echo 1', (r) => r.stdout), defineFact('two', 'echo 2', (r) => r.stdout)]
    const role: Role = {
      name: 'r',
      steps: [
        {
          name: 'read',
          facts: () => facts,
          async plan() {
            return { status: 'ok' }
          },
        },
      ],
    }
    const { rep, run } = setup(
      { name: 'p', plays: [{ name: 'play', hosts: 's1', roles: [role] }] },
      {},
      new Map([['s1', conn]]),
    )
    expect((await run()).exitCode).toBe(2)
    expect(rep.lines.filter((l) => l.startsWith('FAILED'))).toEqual([
      'FAILED: [s1] r | read (s1: reading facts failed (exit 1): sudo: a password is required)',
    ])
  })
})

describe('secrets a role reads later, checked before any host is touched', () => {
  it('a cluster token in the store that is no k3s token stops the run with exit 1, no connection made', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'token-'))
    const inv = join(dir, 'inv.yaml')
    writeFileSync(inv, INV.replace('    ssh_user: pi\n', '    ssh_user: pi\n    k3s_token_ref: op://v/k3s/token\n'))
    const role: Role = { name: 'k3s', checkSecrets: checkClusterToken, steps: [stub('install', 'ok')] }
    const lines: string[] = []
    let connected = 0
    for (const bad of ['K10feed::server:cafe\ninjected: line', 'K10feed::server:ca"fe', '-lfoo-token-cafe']) {
      const code = await runCli({ name: 'p', plays: [{ name: 'play', hosts: 'all', roles: [role] }] }, ['-i', inv], {
        secrets: new MemorySecrets({ 'op://v/k3s/token': bad }),
        connect: (h) => {
          connected++
          return new FakeConnection(h.name)
        },
        write: (l) => lines.push(l),
      })
      expect(code).toBe(1)
    }
    expect(connected).toBe(0)
    expect(lines.filter((l) => l.startsWith('ERROR:'))).toHaveLength(3)
    expect(lines[0]).toContain('the cluster token at op://v/k3s/token is not a k3s token')
    // A token that is one, or none yet (the server role makes it), goes on.
    const stores: Record<string, string>[] = [
      { 'op://v/k3s/token': 'K10' + 'a'.repeat(64) + '::server:' + 'b'.repeat(32) },
      {},
    ]
    for (const store of stores) {
      const code = await runCli({ name: 'p', plays: [{ name: 'play', hosts: 'all', roles: [role] }] }, ['-i', inv], {
        secrets: new MemorySecrets(store),
        connect: (h) => new FakeConnection(h.name),
        write: () => undefined,
      })
      expect(code).toBe(0)
    }
  })
})
