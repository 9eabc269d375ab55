import { describe, expect, it } from 'vitest'
import { parseInventory } from '../../lib/inventory.ts'
import { ProvisionError } from '../../lib/errors.ts'
import type { RunResult } from '../../lib/connection.ts'
import {
  configNeedsRestart,
  extraConfig,
  missingOnNode,
  parseK3sInstall,
  parseNode,
  renderK3sConfig,
  serverOf,
} from '../../lib/k3s.ts'
import { startingK3s } from '../../lib/k3s-install.ts'
import { LocalConnection } from '../../lib/connection.ts'
import { MANAGED_LABELS, MANAGED_TAINTS, planNodeMetadata } from '../../lib/node-metadata.ts'
import { thrown } from './fakes.ts'
import { rewriteKubeconfig } from '../../roles/k3s-server.ts'

describe('k3s facts', () => {
  it('reads the installed version, the units and the agent env file the install script wrote', () => {
    const out =
      'k3s version v1.34.3+k3s1 (48ffa7b6)\nagent-unit\nENV\nK3S_TOKEN="abc def"\nK3S_URL=\'https://10.0.0.1:6443\'\n'
    expect(parseK3sInstall(out)).toEqual({
      version: 'v1.34.3+k3s1',
      serverUnit: false,
      agentUnit: true,
      agentEnv: { K3S_TOKEN: 'abc def', K3S_URL: 'https://10.0.0.1:6443' },
    })
    expect(parseK3sInstall('none\n')).toEqual({ version: null, serverUnit: false, agentUnit: false, agentEnv: {} })
    expect(parseK3sInstall('k3s version v1.33.6+k3s1 (x)\nserver-unit\n').serverUnit).toBe(true)
  })

  it('renders config.yaml in a stable order, quoting every value, skipping empty lists', () => {
    expect(
      renderK3sConfig({
        token: 'a"b',
        'node-label': ['hardware=pi3', 'x=y'],
        'node-taint': [],
        'node-name': undefined,
      }),
    ).toBe(
      '# Managed by pi-provision from the inventory: edit the inventory, not this file.\ntoken: "a\\"b"\nnode-label:\n  - "hardware=pi3"\n  - "x=y"\n',
    )
  })

  it('turns k3s_extra_args into config.yaml entries; a repeated flag becomes a list; nonsense is refused', () => {
    expect(
      extraConfig([
        '--kubelet-arg=max-pods=50',
        'flannel-backend=host-gw',
        '--kubelet-arg=image-gc-high-threshold=80',
        '--disable-cloud-controller',
      ]),
    ).toEqual({
      'kubelet-arg': ['max-pods=50', 'image-gc-high-threshold=80'],
      'flannel-backend': 'host-gw',
      'disable-cloud-controller': 'true',
    })
    expect(() => extraConfig(['--Bad Flag'])).toThrow('k3s_extra_args: "--Bad Flag" is not --flag or --flag=value')
  })

  it('parses kubectl get node JSON and says which labels and taints are missing', () => {
    const json = JSON.stringify({
      metadata: { name: 'w1', labels: { hardware: 'pi3', 'kubernetes.io/hostname': 'w1' } },
      spec: { taints: [{ key: 'hardware', value: 'pi3', effect: 'PreferNoSchedule' }] },
      status: { conditions: [{ type: 'Ready', status: 'True' }] },
    })
    const node = parseNode(0, json, '')
    expect(node.ready).toBe(true)
    expect(missingOnNode(node, ['hardware=pi3'], ['hardware=pi3:PreferNoSchedule'])).toEqual([])
    expect(missingOnNode(node, ['hardware=pi5', 'workload/dns=unbound'], ['dedicated=dns:NoSchedule'])).toEqual([
      'label hardware=pi5',
      'label workload/dns=unbound',
      'taint dedicated=dns:NoSchedule',
    ])
    expect(node).toMatchObject({ exists: true, unschedulable: false, annotations: {} })
    expect(
      parseNode(
        0,
        JSON.stringify({ metadata: { name: 'w1', annotations: { a: 'b' } }, spec: { unschedulable: true } }, null, 0),
        '',
      ),
    ).toMatchObject({ ready: false, unschedulable: true, annotations: { a: 'b' } })
    expect(parseNode(1, '', 'Error from server (NotFound): nodes "w1" not found\n')).toEqual({
      exists: false,
      ready: false,
      unschedulable: false,
      labels: {},
      annotations: {},
      taints: [],
    })
    expect(() => parseNode(1, '', 'The connection to the server 127.0.0.1:6443 was refused')).toThrow(
      'kubectl get node failed: The connection to the server 127.0.0.1:6443 was refused',
    )
  })

  it('finds the server from the inventory alone (so --limit on one agent needs no other host)', () => {
    const inv = parseInventory(
      'all:\n  children:\n    server:\n      hosts:\n        s: { address: 10.1.2.3, k3s_api_port: 7443 }\n    agent:\n      hosts:\n        a: { address: 10.1.2.4 }\n',
      '/x.yaml',
    )
    expect(serverOf(inv)).toEqual({ name: 's', address: '10.1.2.3', url: 'https://10.1.2.3:7443' })
  })

  it('rewrites the fetched kubeconfig: server address instead of 127.0.0.1, a named context', () => {
    const k3s = `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: Q0VSVA==
`
    const out = rewriteKubeconfig(k3s, 'https://10.199.55.55:6443', 'pi-k3s')
    expect(out).toContain('server: https://10.199.55.55:6443')
    expect(out).toContain('current-context: pi-k3s')
    expect(out).not.toContain('default')
    expect(out).toContain('client-certificate-data: Q0VSVA==')
  })
})

describe('a k3s service that will not start', () => {
  const failedRestart = () =>
    Promise.reject(
      new ProvisionError(
        'step',
        'restart k3s (exit 1):\n    Job for k3s.service failed because the control process exited with error code.',
        { place: { host: 'pi-k3s' } },
      ),
    )
  const journal = (stdout: string) => {
    const asked: string[] = []
    const ctx = {
      sh: async (script: string): Promise<RunResult> => (asked.push(script), { code: 0, stdout, stderr: '' }),
    }
    return { ctx, asked }
  }
  const caught = async (p: Promise<unknown>): Promise<ProvisionError> => {
    try {
      await p
    } catch (e) {
      return thrown(() => {
        throw e
      })
    }
    throw new Error('expected the start to fail')
  }

  it('says what k3s said at its latest start, and what to do about a datastore made with another token', async () => {
    const { ctx, asked } = journal(
      'time="2026-11-27T14:15:19Z" level=fatal msg="starting kubernetes: preparing server: bootstrap data already found and encrypted with different token"\n',
    )
    const e = await caught(startingK3s(ctx, 'k3s', failedRestart))
    expect(e.describe()).toBe(
      'pi-k3s: restart k3s (exit 1):\n    Job for k3s.service failed because the control process exited with error code.\n' +
        '    k3s says: level=fatal msg="starting kubernetes: preparing server: bootstrap data already found and encrypted with different token"\n' +
        '  hint: the datastore in /var/lib/rancher/k3s/server was made with another cluster token than the one at k3s_token_ref: put that token back in the secrets store, or restore a backup taken with this one (playbooks/rebuild.mts), or remove the old datastore',
    )
    // Only the unit's latest start is read: an old failure is never shown for a new one.
    expect(asked[0]).toContain('systemctl show -p InvocationID --value k3s.service')
    expect(asked[0]).toContain('journalctl _SYSTEMD_INVOCATION_ID="$id"')
  })

  it('an agent the server refuses gets the way forward; nothing in the journal leaves the error as it was', async () => {
    const agent = await caught(
      startingK3s(
        journal(
          'level=error msg="Node password rejected, duplicate hostname or contents of \'/etc/rancher/node/password\' may not match server node-passwd entry"\n',
        ).ctx,
        'k3s-agent',
        failedRestart,
      ),
    )
    expect(agent.hint).toContain('delete it (kubectl delete node NAME) or run playbooks/rebuild.mts')
    const quiet = await caught(startingK3s(journal('').ctx, 'k3s', failedRestart))
    expect(quiet.message).toBe(
      'restart k3s (exit 1):\n    Job for k3s.service failed because the control process exited with error code.',
    )
  })

  it('a start that works reads no journal', async () => {
    const { ctx, asked } = journal('level=fatal msg="old"')
    await startingK3s(ctx, 'k3s', async () => undefined)
    expect(asked).toEqual([])
  })
})

describe('the cluster token from the secrets store', () => {
  it('is a k3s token: what k3s makes passes, anything a shell or YAML reads specially does not', async () => {
    const { isClusterToken } = await import('../../lib/k3s.ts')
    for (const ok of ['K10' + 'a'.repeat(64) + '::server:' + 'b'.repeat(32), 'c0ffee'.repeat(8), 'abc/def+ghi='])
      expect(isClusterToken(ok), ok).toBe(true)
    for (const bad of ['', 'a b', "a'b", 'a"b', 'a\nb', '-lfoo', 'a$(id)', 'a`id`', 'a\\b', 'x'.repeat(513)])
      expect(isClusterToken(bad), JSON.stringify(bad)).toBe(false)
  })
})

describe("a Node's labels and taints, live", () => {
  const node = (
    labels: Record<string, string>,
    taints: { key: string; value?: string; effect: string }[],
    managed?: { labels: string[]; taints: string[] },
  ) => ({
    labels,
    taints,
    annotations: (managed
      ? { [MANAGED_LABELS]: JSON.stringify(managed.labels), [MANAGED_TAINTS]: JSON.stringify(managed.taints) }
      : {}) as Record<string, string>,
  })
  const words = async (script: string) =>
    (
      await new LocalConnection().run(
        `k3s() { shift 3; printf '%s\\n' "$*"; }\n${script.replaceAll(' >/dev/null', '')}`,
      )
    ).stdout
      .trim()
      .split('\n')

  it('adopts a node labelled at registration: nothing to change but the record of what the inventory sets', () => {
    const n = node({ hardware: 'pi3', 'kubernetes.io/os': 'linux' }, [
      { key: 'hardware', value: 'pi3', effect: 'PreferNoSchedule' },
    ])
    const p = planNodeMetadata(n, 'w2', ['hardware=pi3'], ['hardware=pi3:PreferNoSchedule'])
    expect(p?.summary).toBe('record which labels and taints the inventory sets')
    expect(p?.script).not.toMatch(/ label | taint /)
  })

  it('adds and changes what the inventory says, removes only what it set before, leaves the rest', async () => {
    const n = node(
      { hardware: 'pi3', 'workload/dns': 'unbound', 'by-hand': 'yes' },
      [
        { key: 'hardware', value: 'pi3', effect: 'PreferNoSchedule' },
        { key: 'manual', effect: 'NoSchedule' },
      ],
      { labels: ['hardware', 'workload/dns'], taints: ['hardware:PreferNoSchedule'] },
    )
    const p = planNodeMetadata(n, 'pi3-worker-1', ['hardware=pi3-1gb', 'role=batch'], ['dedicated=batch:NoSchedule'])!
    expect(p.summary).toBe(
      'label hardware=pi3-1gb, label role=batch, remove label workload/dns, remove taint hardware:PreferNoSchedule, taint dedicated=batch:NoSchedule',
    )
    // What kubectl is given, word by word (k3s stands in as a function printing its argv after "kubectl --kubeconfig F").
    expect(await words(p.script)).toEqual([
      'label --overwrite node -- pi3-worker-1 hardware=pi3-1gb role=batch workload/dns-',
      'taint node -- pi3-worker-1 hardware:PreferNoSchedule-',
      'taint --overwrite node -- pi3-worker-1 dedicated=batch:NoSchedule',
      `annotate --overwrite node -- pi3-worker-1 ${MANAGED_LABELS}=["hardware","role"] ${MANAGED_TAINTS}=["dedicated:NoSchedule"]`,
    ])
    expect(p.script).not.toContain('by-hand')
    expect(p.script).not.toContain('manual')
  })

  it('a node that has it all, and the record, needs nothing', () => {
    const n = node({ hardware: 'pi3' }, [{ key: 'd', value: 'b', effect: 'NoSchedule' }], {
      labels: ['hardware'],
      taints: ['d:NoSchedule'],
    })
    expect(planNodeMetadata(n, 'w', ['hardware=pi3'], ['d=b:NoSchedule'])).toBeNull()
  })

  it('a config.yaml edit of only labels and taints restarts nothing; any other edit does', () => {
    const base = renderK3sConfig({ 'node-name': 'w', 'node-label': ['a=b'], 'node-taint': ['x=y:NoSchedule'] })
    expect(configNeedsRestart(base, renderK3sConfig({ 'node-name': 'w', 'node-label': ['a=c', 'z=1'] }))).toBe(false)
    expect(
      configNeedsRestart(
        base,
        renderK3sConfig({ 'node-name': 'v', 'node-label': ['a=b'], 'node-taint': ['x=y:NoSchedule'] }),
      ),
    ).toBe(true)
    expect(configNeedsRestart(undefined, base)).toBe(true)
  })
})
