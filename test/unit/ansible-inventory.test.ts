// Most k3s owners' inventories were written for Ansible, many from k3s-ansible's sample. These fixtures have that
// shape (a top-level k3s_cluster group with children server and agent, ansible_user / ansible_port /
// ansible_host, k3s-ansible's variables): as they are, every k3s-ansible variable is named with its counterpart,
// all in one report; with only those variables renamed, the file loads as it would under Ansible.

import { nodeNameOf } from '../../lib/host-identity.ts'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { thrown } from './fakes.ts'
import { checkHosts } from '../../lib/host-checks.ts'
import { hostVars, loadInventory, parseInventory, type Inventory, type InventoryHost } from '../../lib/inventory.ts'

const here = dirname(fileURLToPath(import.meta.url))
const fixture = (name: string): string => join(here, 'fixtures/inventory/ansible', name)

function host(inv: Inventory, name: string): InventoryHost {
  const h = inv.hosts.get(name)
  if (!h) throw new Error(`no host ${name}`)
  return h
}

describe('a k3s-ansible inventory as it is (fixtures/inventory/ansible/k3s-ansible.yaml)', () => {
  const file = fixture('k3s-ansible.yaml')
  const e = thrown(() => loadInventory(file))
  const where = 'in vars of group "k3s_cluster"'

  it('is refused with one error per k3s-ansible variable, all together, each at its key', () => {
    expect(e.kind).toBe('inventory')
    expect(e.problems.map((p) => [p.place.line, p.place.col, p.message])).toEqual([
      [21, 5, `unknown variable "token" ${where}`],
      [22, 5, `unknown variable "api_endpoint" ${where}`],
      [23, 5, `unknown variable "api_port" ${where}`],
      [24, 5, `unknown variable "extra_server_args" ${where}`],
      [25, 5, `unknown variable "extra_agent_args" ${where}`],
      [26, 5, `unknown variable "cluster_context" ${where}`],
      [27, 5, `unknown variable "user_kubectl" ${where}`],
    ])
    for (const p of e.problems) expect(p.place.file).toBe(file)
  })

  it("names this tool's counterpart of each", () => {
    const hints = Object.fromEntries(e.problems.map((p) => [/"(\w+)"/.exec(p.message)![1], p.hint ?? '']))
    expect(hints.token).toMatch(
      /k3s_token_ref here: a secret reference \(op:\/\/vault\/item\/field\) to the cluster token in the secrets store, not the token itself/,
    )
    expect(hints.api_endpoint).toMatch(
      /the server host's address here: agents join the address of the first host of group "server"/,
    )
    expect(hints.api_port).toBe(`k3s-ansible's "api_port" is k3s_api_port here`)
    expect(hints.extra_server_args).toBe(
      `k3s-ansible's "extra_server_args" is k3s_extra_args here, in the vars of group "server": a list of --flag=value`,
    )
    expect(hints.extra_agent_args).toBe(
      `k3s-ansible's "extra_agent_args" is k3s_extra_args here, in the vars of group "agent": a list of --flag=value`,
    )
    expect(hints.cluster_context).toBe(`k3s-ansible's "cluster_context" is kubeconfig_context here`)
    expect(hints.user_kubectl).toMatch(/kubeconfig_path/)
  })

  it('takes the Ansible connection variables and the shared k3s_version without complaint', () => {
    for (const name of ['ansible_host', 'ansible_user', 'ansible_port', 'k3s_version'])
      expect(e.describe()).not.toContain(`"${name}"`)
  })

  it('never shows the token', () => {
    expect(e.describe()).not.toContain('made-up-cluster-secret')
  })

  it('extra_args (k3s-ansible, older) and kubeconfig have counterparts too', () => {
    const more = thrown(() =>
      parseInventory('k3s_cluster:\n  vars:\n    extra_args: --x\n    kubeconfig: ~/.kube/config.new\n', 'i.yaml'),
    )
    expect(more.problems.map((p) => p.hint)).toEqual([
      `k3s-ansible's "extra_args" is k3s_extra_args here: a list of --flag=value`,
      `k3s-ansible's "kubeconfig" is kubeconfig_path here`,
    ])
  })
})

describe('the same inventory with its k3s variables renamed (fixtures/inventory/ansible/converted.yaml)', () => {
  const file = fixture('converted.yaml')
  const inv = loadInventory(file)

  it('has the hosts, in file order, and the groups, k3s_cluster under all', () => {
    expect([...inv.hosts.keys()]).toEqual(['pi-k3s', 'pi3-worker-1', 'pi3-worker-2'])
    expect(inv.groups.get('all')).toEqual(['pi-k3s', 'pi3-worker-1', 'pi3-worker-2'])
    expect(inv.groups.get('k3s_cluster')).toEqual(['pi-k3s', 'pi3-worker-1', 'pi3-worker-2'])
    expect(inv.groups.get('server')).toEqual(['pi-k3s'])
    expect(inv.groups.get('agent')).toEqual(['pi3-worker-1', 'pi3-worker-2'])
    expect(host(inv, 'pi-k3s').groups).toEqual(['all', 'k3s_cluster', 'server'])
    expect(host(inv, 'pi3-worker-2').groups).toEqual(['all', 'k3s_cluster', 'agent'])
  })

  it("takes the addresses from ansible_host, the user and port from ansible_user and ansible_port (a host's own port first)", () => {
    const v = (name: string) => hostVars(host(inv, name))
    expect([...inv.hosts.keys()].map((n) => v(n).address)).toEqual(['192.0.2.10', '192.0.2.11', '192.0.2.12'])
    expect([...inv.hosts.keys()].map((n) => v(n).ssh_user)).toEqual(['debian', 'debian', 'debian'])
    expect([...inv.hosts.keys()].map((n) => v(n).ssh_port)).toEqual([22, 22, 2202])
  })

  it("gives the k3s variables under this tool's names", () => {
    const srv = hostVars(host(inv, 'pi-k3s'))
    expect(srv.k3s_version).toBe('v1.34.3+k3s1')
    expect(srv.k3s_token_ref).toBe('op://homelab/k3s-cluster/token')
    expect(srv.k3s_api_port).toBe(6443)
    expect(srv.k3s_extra_args).toEqual(['--flannel-backend=host-gw'])
    expect(srv.kubeconfig_context).toBe('home-k3s')
    expect(srv.kubeconfig_path).toBe(join(homedir(), '.kube/home-k3s.yaml'))
    expect(hostVars(host(inv, 'pi3-worker-1')).k3s_extra_args).toEqual([]) // server-only flags stay on the server
  })

  it('node names are the inventory names, and the hosts pass checkHosts', () => {
    expect([...inv.hosts.values()].map((h) => nodeNameOf(h))).toEqual(['pi-k3s', 'pi3-worker-1', 'pi3-worker-2'])
    expect(() => checkHosts(inv, {})).not.toThrow()
  })
})

describe("k3s-ansible's sample hosts (inventory names that are addresses, no ansible_host)", () => {
  it('each host without an address is named, with where to put one', () => {
    const e = thrown(() =>
      parseInventory(
        'k3s_cluster:\n  children:\n    server:\n      hosts:\n        192.0.2.10:\n    agent:\n      hosts:\n        192.0.2.11:\n',
        'i.yaml',
      ),
    )
    expect(e.describe()).toBe(
      [
        'i.yaml: 2 problems',
        'i.yaml:5:9: host "192.0.2.10" has no address',
        '  hint: add "address: <ip or name>" (or ansible_host) under the host',
        'i.yaml:8:9: host "192.0.2.11" has no address',
        '  hint: add "address: <ip or name>" (or ansible_host) under the host',
      ].join('\n'),
    )
  })
})
