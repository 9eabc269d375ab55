// Bad input is refused before any host is contacted (the security issue's table): inventory files, -e, command-line
// operands, hostile known_hosts files and hostile values in the secrets store. Each case asserts the exit code, a
// message naming the place (file:line:col of the inventory or secrets file, the -e flag, the flag or operand) and
// the rule broken, and, from the hosts' side, that nothing reached any lab host.
//
// Host-side proof, per case, on every lab host, read through the lab (nsenter), never through SSH or the tool:
// - a counting iptables rule in each host's own network namespace: SYN packets to tcp/22 (a connection attempt is
//   counted by the host's kernel the moment it arrives, so no "late log line" can hide one);
// - the host's journal: how many lines sshd (logins, and connections closed before authentication), sudo (each
//   command the tool runs as root) and systemd-logind (sessions) have logged, before and after, with the new lines
//   (journalctl --since) shown when there are any.
// Cases run 3 at a time; each takes its own marks just before its process starts and reads them just after it
// ends, so a clean window proves that case clean whatever ran beside it. A window with anything in it is ambiguous
// (it may be a neighbour's doing): that case is run again alone, and that run is its verdict.
// The known_hosts cases, which must reach sshd (and be refused at the host key), run alone.
//
// A case accepted where it should be refused fails here on purpose: the expectation is the right behaviour.
// Where an accepted run would change the lab for the later cases (a retire or rebuild of a real host, updates, a
// run against another host's machine), the case adds --check: validation comes before check mode in every playbook.
// The retire cases with a selector-like NODE do not: for them the point is that the cluster keeps its Nodes.
// Every case's inventory is a copy of inventory/lab.yaml whose known_hosts and secrets files are copies too, so
// even an accepted rebuild cannot drop the lab's own known_hosts entries nor a run write to its secrets file.
//
// Run under the shared lab lock: flock /tmp/pi-lab-test.lock npx vitest run --project lab test/e2e/bad-input.test.ts

import { createHash, createHmac, generateKeyPairSync, randomBytes } from 'node:crypto'
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parse, parseDocument } from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEFAULT_HOSTS, labAddress, labDown, labExec, LAB_KNOWN_HOSTS, LAB_SECRETS_FILE } from '../lab/lab.ts'
import { LAB_ARTIFACT_BASE, LAB_SUBNET } from '../lab/paths.ts'

/** The lab's subnet (its first three octets) in a regular expression. */
const NET_RE = LAB_SUBNET.replaceAll('.', '\\.')
import { convergedLab, LAB_INVENTORY, onHost, runPlaybookCli, type PlaybookCliRun } from './helpers.ts'

// ---------------------------------------------------------------------------------------------- host-side evidence

const RULE = 'pi-provision-bad-input-test'
const SYN_COUNT = `iptables -w -nvxL INPUT | awk '/${RULE}/ {print $1}'`
/** sshd (logins and pre-auth connections), sudo (commands run as root), logind (sessions). */
const JOURNAL = '_COMM=sshd + _COMM=sudo + _COMM=systemd-logind'
/** Journal lines that mean a login happened or a command ran. */
const LOGIN = /Accepted |session opened|New session|COMMAND=/
/** Counts cover the journal from here on (set once the lab has converged): the same start for every look. */
let journalFrom = ''
/**
 * One look at a host: SYNs counted so far, its clock, and counts over its journal since journalFrom (order-free: on
 * the lab, `journalctl --after-cursor` was seen to skip an entry when the journal had a rotated file; a count cannot).
 */
const look = (): string =>
  [
    `echo "syn:$(${SYN_COUNT})"`,
    'echo "t:$(date +%s.%6N)"',
    `journalctl -o cat --no-pager --since @${journalFrom} ${JOURNAL} | awk '{n++} /${LOGIN.source}/ {l++} /Accepted publickey/ {a++} END {print "n:" n+0; print "l:" l+0; print "a:" a+0}'`,
  ].join('; ')

interface Mark {
  syn: number
  /** The host's clock (seconds since the epoch), for showing the lines since. */
  t: string
  /** sshd / sudo / logind journal lines, those of them that mean a login or a command, "Accepted publickey" lines. */
  entries: number
  logins: number
  accepted: number
}
interface HostEvidence {
  /** SYN packets to tcp/22 since the mark (NaN: the counting rule is gone, e.g. the host rebooted). */
  syn: number
  /** New sshd / sudo / logind journal lines, of them logins or commands, of them "Accepted publickey": counts. */
  entries: number
  logins: number
  accepted: number
  /** Those lines, for the report (journalctl --since the mark's time). */
  lines: string[]
}
type Marks = Record<string, Mark>
type Evidence = Record<string, HostEvidence>

async function exec(host: string, cmd: string): Promise<string> {
  const r = await labExec(host, cmd, { timeoutMs: 20_000 })
  if (r.code !== 0) throw new Error(`${host}: ${cmd} -> exit ${r.code}: ${r.stderr}`)
  return r.stdout
}

function parseLook(host: string, out: string): Mark {
  const v = Object.fromEntries(
    out
      .split('\n')
      .flatMap((l) => (/^(syn|t|n|l|a):/.test(l) ? [[l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]] : [])),
  )
  if (!/^\d+\.\d+$/.test(v.t ?? '') || ![v.n, v.l, v.a].every((x) => /^\d+$/.test(x ?? '')))
    throw new Error(`${host}: cannot read its journal or clock:\n${out}`)
  return {
    syn: /^\d+$/.test(v.syn ?? '') ? Number(v.syn) : NaN,
    t: v.t,
    entries: Number(v.n),
    logins: Number(v.l),
    accepted: Number(v.a),
  }
}

async function markHost(host: string): Promise<Mark> {
  const m = parseLook(host, await exec(host, look()))
  if (Number.isNaN(m.syn)) throw new Error(`${host}: no SYN counting rule`)
  return m
}

async function sinceHost(host: string, mark: Mark): Promise<HostEvidence> {
  const out = await exec(
    host,
    `${look()}; echo ---; journalctl -q --no-pager -o short-iso --since @${mark.t} ${JOURNAL}`,
  )
  const at = out.indexOf('\n---\n')
  const now = parseLook(host, out.slice(0, at))
  return {
    syn: now.syn - mark.syn,
    entries: now.entries - mark.entries,
    logins: now.logins - mark.logins,
    accepted: now.accepted - mark.accepted,
    lines: out
      .slice(at + 5)
      .split('\n')
      .filter((l) => l.trim() !== ''),
  }
}

const markAll = async (): Promise<Marks> =>
  Object.fromEntries(await Promise.all(DEFAULT_HOSTS.map(async (h) => [h, await markHost(h)] as const)))
const sinceAll = async (marks: Marks): Promise<Evidence> =>
  Object.fromEntries(await Promise.all(DEFAULT_HOSTS.map(async (h) => [h, await sinceHost(h, marks[h])] as const)))

const contacted = (e: HostEvidence): boolean => e.syn !== 0 || e.entries !== 0 || e.lines.length > 0
const loginLines = (e: HostEvidence): string[] => e.lines.filter((l) => LOGIN.test(l))
const anyContact = (ev: Evidence): boolean => Object.values(ev).some(contacted)

async function nodeNames(): Promise<string[]> {
  return (await onHost('pi-k3s', 'k3s kubectl get nodes -o name')).split('\n').filter(Boolean).sort()
}
const ALL_NODES = DEFAULT_HOSTS.map((h) => `node/${h}`).sort()

// ---------------------------------------------------------------------------------------------- the cases

type Playbook = 'site' | 'retire' | 'rebuild' | 'update'

/**
 * A line of a written file: the one line containing `line`; the column of `col` in it (default its first non-space);
 * col null: any column of that line (where a fix might point at the key or the value).
 */
interface Anchor {
  line: string
  col?: string | null
}
/**
 * Where a message must say the problem is. A string is literal text (a flag, an operand, a reference); a file is
 * its path ("<path>: " for the inventory and secrets files, which start their messages).
 */
type Place = string | { inventory: Anchor } | { secrets: Anchor } | { file: 'inventory' | 'secrets' | 'known_hosts' }
/** One line of the output names the place and matches the rule. */
interface Says {
  at: Place
  rule: RegExp
}

interface Case {
  name: string
  playbook?: Playbook
  /** After `-i <this case's inventory> --retry-file <a file of its own>`. */
  args?: string[]
  /** Edit of inventory/lab.yaml's text (its known_hosts and secrets files already point at copies). */
  inventory?: (text: string) => string
  /** This case's own copy of the secrets file: edited, and/or with another mode (default 0600). */
  secrets?: { edit?: (text: string) => string; mode?: number }
  /** This case's own known_hosts: made from the lab's. */
  knownHosts?: (lab: string) => string
  code: number
  /** Computed when the case runs (fingerprints are known only once the lab is up). */
  says: Says[] | (() => Says[])
  /** Anywhere in the output (hints). */
  also?: RegExp[]
  /** Must not appear anywhere in the output (values that may be secrets). */
  hidden?: string[]
  /** The one host whose sshd sees a connection, refused at its host key before any login; default: none contacted. */
  preauth?: string
  /** Check through the lab that the cluster still has its three Nodes. */
  nodes?: boolean
}

function lineIndex(lines: string[], line: string): number {
  const i = lines.indexOf(line)
  if (i < 0 || lines.lastIndexOf(line) !== i)
    throw new Error(`test bug: the line ${JSON.stringify(line)} is not exactly once in the text`)
  return i
}
/** Replace one line (it must be there exactly once) by others. */
const swap =
  (line: string, ...by: string[]) =>
  (text: string): string => {
    const lines = text.split('\n')
    lines.splice(lineIndex(lines, line), 1, ...by)
    return lines.join('\n')
  }
/** Insert lines after one line (it must be there exactly once). */
const after =
  (line: string, ...add: string[]) =>
  (text: string): string => {
    const lines = text.split('\n')
    lines.splice(lineIndex(lines, line) + 1, 0, ...add)
    return lines.join('\n')
  }
const edits =
  (...fs: ((t: string) => string)[]) =>
  (text: string): string =>
    fs.reduce((t, f) => f(t), text)

// Lines of inventory/lab.yaml the edits start from.
const ALL_VARS = '    ssh_user: pi'
const SERVER_VARS = '        k3s_tls_san: [pi-k3s]'
const PI_K3S = `          address: ${LAB_SUBNET}.55`
const WORKER_2_KEY = '        pi3-worker-2:'
const WORKER_2 = `          address: ${LAB_SUBNET}.51`
const DNS_LABEL = '            - workload/dns=unbound'
const TAINT = '            - hardware=pi3:PreferNoSchedule'
const PLACEMENT = '      pihole/pihole: pi-k3s'
const FLUX_URL = `    flux_url: ${LAB_ARTIFACT_BASE}/flux/releases/download/v{version}/flux_{version}_linux_{arch}.tar.gz`

// Rules, in a few words of each grammar.
const NODE_NAME = /expected a Kubernetes node name, an RFC 1123 subdomain/
const RFC1123 = /must be an RFC 1123 subdomain/
const LABEL = /expected key=value, key in Kubernetes label grammar/
const TAINT_RULE = /expected key\[=value\]:Effect with Effect one of NoSchedule, PreferNoSchedule, NoExecute/
const KERNEL_FLAG = /expected one kernel flag like cgroup_enable=memory \(printable, no spaces or quotes/
const OWNED = (flag: string, variable: string) =>
  new RegExp(
    `k3s flag "--${flag}=[^"]*": expected a flag the roles do not write themselves: "${flag}" comes from the inventory variable ${variable}`,
  )
const NOT_A_K3S_TOKEN = /not a k3s token: expected 1-512 printable characters without spaces, quotes/

const TOKEN_REF = 'op://pi-cluster/k3s-node-token/token'
/** Set one value in the secrets file (a YAML edit, comments and the other values kept). */
const secretValue =
  (path: string[], value: unknown) =>
  (text: string): string => {
    const doc = parseDocument(text)
    if (!doc.hasIn(path)) throw new Error(`test bug: no ${path.join('/')} in the secrets file`)
    doc.setIn(path, value)
    return doc.toString()
  }
const TOKEN_PATH = ['pi-cluster', 'k3s-node-token', 'token']

// Filled in beforeAll, from the lab as it is: its hosts' ed25519 host keys (SSH wire format) and a key of no host.
const realKey: Record<string, Buffer> = {}
let otherKey = Buffer.alloc(0)
const fp = (blob: Buffer): string => `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`
const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
const withoutHost = (lab: string, address: string): string[] =>
  lab.split('\n').filter((l) => l.trim() !== '' && l.split(' ')[0] !== address)

const CASES: Case[] = [
  // ------------------------------------------------------------------ inventory: names and placement of variables
  {
    name: 'inventory: a misspelt variable (ssh_prot) gets a did-you-mean',
    inventory: after(ALL_VARS, '    ssh_prot: 2222'),
    code: 1,
    says: [
      { at: { inventory: { line: 'ssh_prot: 2222' } }, rule: /unknown variable "ssh_prot" in vars of group "all"/ },
    ],
    also: [/did you mean "ssh_port"\?/],
  },
  {
    name: "inventory: k3s-ansible's token (the token itself) is refused, its counterpart named, its value not shown",
    inventory: after(ALL_VARS, '    token: K10feedc0ffee::server:5ecre7'),
    code: 1,
    says: [{ at: { inventory: { line: 'token: K10' } }, rule: /unknown variable "token" in vars of group "all"/ }],
    also: [/k3s-ansible's "token" is k3s_token_ref here/],
    hidden: ['K10feedc0ffee::server:5ecre7'],
  },
  {
    name: "inventory: k3s-ansible's extra_server_args names k3s_extra_args",
    inventory: after(SERVER_VARS, '        extra_server_args: "--disable traefik"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'extra_server_args:' } },
        rule: /unknown variable "extra_server_args" in vars of group "server"/,
      },
    ],
    also: [/is k3s_extra_args here/],
  },
  {
    name: 'inventory: a per-host variable (address) in group vars',
    inventory: after(ALL_VARS, '    address: 127.0.0.1'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'address: 127.0.0.1' } },
        rule: /"address" is per host; it cannot be set in vars of group "all"/,
      },
    ],
  },
  {
    name: 'inventory: ansible_host and address both set on one host',
    inventory: after(WORKER_2, `          ansible_host: ${LAB_SUBNET}.51`),
    code: 1,
    says: [
      {
        at: { inventory: { line: `ansible_host: ${LAB_SUBNET}.51` } },
        rule: /"ansible_host" and "address" both set address in host "pi3-worker-2"/,
      },
    ],
  },
  {
    name: 'inventory: a sudo password pasted into ansible_become_password is refused and not shown',
    inventory: after(WORKER_2, '          ansible_become_password: hunter2-s3cret'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'ansible_become_password:', col: 'hunter2' } },
        rule: /expected a secret reference like op:\/\/vault\/item\/field, got a value that is not one \(not shown/,
      },
    ],
    hidden: ['hunter2-s3cret'],
  },
  // ------------------------------------------------------------------ inventory: connection values
  {
    name: 'inventory: ssh_port 0',
    inventory: after(PI_K3S, '          ssh_port: 0'),
    code: 1,
    says: [
      { at: { inventory: { line: 'ssh_port: 0', col: '0' } }, rule: /ssh_port: expected a port number 1-65535, got 0/ },
    ],
  },
  {
    name: 'inventory: ssh_port 70000',
    inventory: after(PI_K3S, '          ssh_port: 70000'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'ssh_port: 70000', col: '70000' } },
        rule: /ssh_port: expected a port number 1-65535, got 70000/,
      },
    ],
  },
  {
    name: 'inventory: ssh_port "22x"',
    inventory: after(PI_K3S, '          ssh_port: "22x"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'ssh_port: "22x"', col: '"22x"' } },
        rule: /ssh_port: expected a whole number, got "22x"/,
      },
    ],
  },
  {
    name: 'inventory: an address that is an ssh option (-oProxyCommand=...)',
    inventory: swap(PI_K3S, '          address: "-oProxyCommand=touch /tmp/x"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'address: "-oProxyCommand', col: '"-o' } },
        rule: /address: expected an IPv4\/IPv6 address or host name/,
      },
    ],
  },
  {
    name: 'inventory: two hosts with one address',
    inventory: swap(WORKER_2, `          address: ${LAB_SUBNET}.53`),
    code: 1,
    says: [
      {
        at: { inventory: { line: WORKER_2_KEY } },
        rule: new RegExp(`hosts "pi3-worker-1" and "pi3-worker-2" have the same address ${NET_RE}\\.53`),
      },
    ],
  },
  // ------------------------------------------------------------------ inventory: node names
  {
    name: 'inventory: a host named "-lfoo", retired by that name: refused, the cluster keeps its Nodes',
    playbook: 'retire',
    args: ['--', '-lfoo'],
    inventory: swap(WORKER_2_KEY, '        -lfoo:'),
    code: 1,
    says: [
      {
        at: { inventory: { line: '        -lfoo:' } },
        rule: /bad host name "-lfoo": expected letters, digits, "\.", "_" and "-", starting with a letter or digit/,
      },
    ],
    nodes: true,
  },
  {
    name: 'inventory: hostname "-lfoo" (site): refused, the cluster keeps its Nodes',
    inventory: after(WORKER_2, '          hostname: "-lfoo"'),
    code: 1,
    says: [{ at: { inventory: { line: 'hostname: "-lfoo"', col: '"-lfoo"' } }, rule: NODE_NAME }],
    nodes: true,
  },
  {
    name: 'inventory: hostname "-lfoo", that host retired: refused, the cluster keeps its Nodes',
    playbook: 'retire',
    args: ['pi3-worker-2'],
    inventory: after(WORKER_2, '          hostname: "-lfoo"'),
    code: 1,
    says: [{ at: { inventory: { line: 'hostname: "-lfoo"', col: '"-lfoo"' } }, rule: NODE_NAME }],
    nodes: true,
  },
  {
    name: 'inventory: an upper-case host name (its node name) gets a lower-case suggestion',
    inventory: swap(WORKER_2_KEY, '        PI3-Worker-2:'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'PI3-Worker-2:' } },
        rule: new RegExp(`host "PI3-Worker-2": its name is its Kubernetes node name and ${RFC1123.source}`),
      },
    ],
    also: [/rename the host \(e\.g\. "pi3-worker-2"\)/],
  },
  {
    name: 'inventory: an upper-case hostname var',
    inventory: after(WORKER_2, '          hostname: PI3-Worker-2'),
    code: 1,
    says: [{ at: { inventory: { line: 'hostname: PI3', col: 'PI3' } }, rule: NODE_NAME }],
  },
  {
    name: 'inventory: two hosts with one node name (hostname of another host)',
    inventory: after(WORKER_2, '          hostname: pi3-worker-1'),
    code: 1,
    says: [
      {
        at: { inventory: { line: WORKER_2_KEY } },
        rule: /hosts "pi3-worker-1" and "pi3-worker-2" have the same node name "pi3-worker-1"/,
      },
    ],
  },
  // ------------------------------------------------------------------ inventory: labels, taints, kernel flags, packages
  {
    name: 'inventory: node label "a b"',
    inventory: swap(DNS_LABEL, '            - "a b"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: '- "a b"', col: '"a b"' } },
        rule: new RegExp(`node_labels: node label "a b": ${LABEL.source}`),
      },
    ],
  },
  {
    name: 'inventory: node label "-l=x"',
    inventory: swap(DNS_LABEL, '            - "-l=x"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: '- "-l=x"', col: '"-l=x"' } },
        rule: new RegExp(`node_labels: node label "-l=x": ${LABEL.source}`),
      },
    ],
  },
  {
    name: 'inventory: node_labels a map, not a list',
    inventory: swap('            - hardware=pi5', '            hardware: pi5'),
    code: 1,
    says: [
      { at: { inventory: { line: '            hardware: pi5' } }, rule: /node_labels: expected a list, got a map/ },
    ],
  },
  {
    name: 'inventory: node taint with an unknown effect',
    inventory: swap(TAINT, '            - hardware=pi3:Sometimes'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'hardware=pi3:Sometimes', col: 'hardware' } },
        rule: new RegExp(`node taint "hardware=pi3:Sometimes": ${TAINT_RULE.source}`),
      },
    ],
  },
  {
    name: 'inventory: node taint without an effect',
    inventory: swap(TAINT, '            - dedicated=dns'),
    code: 1,
    says: [
      {
        at: { inventory: { line: '- dedicated=dns', col: 'dedicated' } },
        rule: new RegExp(`node taint "dedicated=dns": ${TAINT_RULE.source}`),
      },
    ],
  },
  {
    name: 'inventory: a kernel flag with a space',
    inventory: after(ALL_VARS, '    cmdline_flags: [cgroup_memory=1, "quiet splash"]'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'cmdline_flags:', col: '"quiet' } },
        rule: new RegExp(`kernel flag "quiet splash": ${KERNEL_FLAG.source}`),
      },
    ],
  },
  {
    name: 'inventory: a kernel flag with quotes',
    inventory: after(ALL_VARS, '    cmdline_flags:', '      - cgroup_memory=1', `      - 'init="/bin/sh"'`),
    code: 1,
    says: [{ at: { inventory: { line: `- 'init=`, col: `'init` } }, rule: KERNEL_FLAG }],
  },
  {
    name: 'inventory: an apt option as a package (-oDpkg::Pre-Invoke=...)',
    inventory: after(ALL_VARS, '    extra_packages: ["-oDpkg::Pre-Invoke=touch /tmp/x"]'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'extra_packages:', col: '"-oDpkg' } },
        rule: /package "-oDpkg::Pre-Invoke=touch \/tmp\/x": expected a Debian package name/,
      },
    ],
  },
  // ------------------------------------------------------------------ inventory: k3s
  {
    name: 'inventory: k3s_extra_args --token=x (the roles own it)',
    inventory: after(SERVER_VARS, '        k3s_extra_args: ["--token=x"]'),
    code: 1,
    says: [{ at: { inventory: { line: 'k3s_extra_args:', col: '"--token' } }, rule: OWNED('token', 'k3s_token_ref') }],
  },
  {
    name: 'inventory: k3s_extra_args --node-name=x',
    inventory: after(SERVER_VARS, '        k3s_extra_args: ["--node-name=x"]'),
    code: 1,
    says: [{ at: { inventory: { line: 'k3s_extra_args:', col: '"--node' } }, rule: OWNED('node-name', 'hostname') }],
  },
  {
    name: 'inventory: k3s_extra_args --node-label=a=b',
    inventory: after(SERVER_VARS, '        k3s_extra_args:', '          - --node-label=a=b'),
    code: 1,
    says: [
      { at: { inventory: { line: '- --node-label=a=b', col: '--node' } }, rule: OWNED('node-label', 'node_labels') },
    ],
  },
  {
    name: 'inventory: k3s_version "latest"',
    inventory: swap('    k3s_version: v1.34.3+k3s1', '    k3s_version: latest'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'k3s_version: latest', col: 'latest' } },
        rule: /k3s_version: expected a k3s version like v1\.34\.3\+k3s1/,
      },
    ],
  },
  {
    name: 'inventory: k3s_version "v1.34.3+k3s1; id"',
    inventory: swap('    k3s_version: v1.34.3+k3s1', '    k3s_version: "v1.34.3+k3s1; id"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'k3s_version: "v1', col: '"v1' } },
        rule: /k3s_version: expected a k3s version like v1\.34\.3\+k3s1/,
      },
    ],
  },
  {
    name: 'inventory: k3s_kubeconfig_mode "777x"',
    inventory: after(SERVER_VARS, '        k3s_kubeconfig_mode: "777x"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'k3s_kubeconfig_mode:', col: '"777x"' } },
        rule: /expected an octal file mode like 0600, got "777x"/,
      },
    ],
  },
  {
    name: 'inventory: k3s_restore "../x"',
    inventory: after(ALL_VARS, '    k3s_restore: ../x'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'k3s_restore: ../x', col: '../x' } },
        rule: /expected "latest", "none" or a backup folder name in k3s_backup_dir \(no "\/"/,
      },
    ],
  },
  // ------------------------------------------------------------------ inventory: Flux and GitHub
  {
    name: 'inventory: flux_version "2.7.3$(id)"',
    inventory: swap('    flux_version: 2.7.3', '    flux_version: "2.7.3$(id)"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'flux_version: "2.7.3$(id)"', col: '"2.7' } },
        rule: /flux_version: expected a flux version like 2\.7\.3/,
      },
    ],
  },
  {
    name: 'inventory: flux_sha256 too short',
    inventory: after('    flux_version: 2.7.3', '    flux_sha256: abc123'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'flux_sha256: abc123', col: 'abc123' } },
        rule: /flux_sha256: expected a sha256: 64 hex digits/,
      },
    ],
  },
  {
    name: 'inventory: flux_url not a URL',
    inventory: swap(FLUX_URL, '    flux_url: not a url'),
    code: 1,
    says: [
      { at: { inventory: { line: 'flux_url: not a url', col: 'not' } }, rule: /flux_url: expected an http\(s\) URL/ },
    ],
  },
  {
    name: 'inventory: flux_url file:///etc/passwd',
    inventory: swap(FLUX_URL, '    flux_url: file:///etc/passwd'),
    code: 1,
    says: [
      { at: { inventory: { line: 'flux_url: file:', col: 'file:' } }, rule: /flux_url: expected an http\(s\) URL/ },
    ],
  },
  {
    name: 'inventory: github_branch "-x"',
    inventory: swap('    github_branch: main', '    github_branch: "-x"'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'github_branch: "-x"', col: '"-x"' } },
        rule: /github_branch: expected a git branch name \(.*not starting with "-"/,
      },
    ],
  },
  {
    name: 'inventory: an app check with a file:// URL',
    inventory: swap(
      `      - { app: jellyfin, url: ${LAB_ARTIFACT_BASE}/apps/jellyfin/health, expect: Healthy }`,
      '      - { app: jellyfin, url: "file:///etc/passwd", expect: Healthy }',
    ),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'url: "file:///etc/passwd"', col: null } },
        rule: /jellyfin: url must be http:\/\/ or https:\/\//,
      },
    ],
  },
  // ------------------------------------------------------------------ inventory: secret references, placement
  {
    name: 'inventory: a secret reference with two parts',
    inventory: swap(`    k3s_token_ref: ${TOKEN_REF}`, '    k3s_token_ref: op://pi-cluster/k3s-node-token'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'k3s_token_ref:', col: 'op:' } },
        rule: /k3s_token_ref: expected a secret reference like op:\/\/vault\/item\/field, got "op:\/\/pi-cluster\/k3s-node-token"/,
      },
    ],
  },
  {
    name: 'inventory: a GitHub token pasted where its reference goes is refused and not shown',
    inventory: swap(
      '    github_token_ref: op://pi-cluster/flux-github-pat/token',
      '    github_token_ref: ghp_pAsTeDtOkEn0123456789',
    ),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'github_token_ref:', col: 'ghp_' } },
        rule: /github_token_ref: expected a secret reference like op:\/\/vault\/item\/field, got a value that is not one \(not shown/,
      },
    ],
    hidden: ['ghp_pAsTeDtOkEn0123456789'],
  },
  {
    name: 'inventory: placement on something that is no node name',
    inventory: swap(PLACEMENT, '      pihole/pihole: pi_k3s'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'pihole/pihole: pi_k3s', col: 'pi_k3s' } },
        rule: new RegExp(`placement: "pihole/pihole" -> node name "pi_k3s": ${NODE_NAME.source}`),
      },
    ],
  },
  {
    name: 'inventory: placement on a node no host of the inventory is',
    inventory: swap(PLACEMENT, '      pihole/pihole: pi3-worker-9'),
    code: 1,
    says: [{ at: { inventory: { line: 'pihole/pihole: pi3-worker-9', col: null } }, rule: /pi3-worker-9/ }],
  },
  {
    name: 'inventory: a placement key that is no workload',
    inventory: swap(PLACEMENT, '      Pihole/pihole: pi-k3s'),
    code: 1,
    says: [
      {
        at: { inventory: { line: 'Pihole/pihole: pi-k3s' } },
        rule: /placement: workload "Pihole\/pihole": expected name, namespace\/name or namespace\/\*/,
      },
    ],
  },
  // ------------------------------------------------------------------ inventory: structure
  {
    name: 'inventory: YAML syntax error (a tab as indentation)',
    inventory: after(ALL_VARS, '\tssh_port: 22'),
    code: 1,
    says: [{ at: { inventory: { line: '\tssh_port: 22', col: '\t' } }, rule: /Tabs are not allowed as indentation/ }],
  },
  {
    name: 'inventory: a duplicate key',
    inventory: after('    reboot_timeout: 120', '    ssh_user: root'),
    code: 1,
    says: [{ at: { inventory: { line: 'ssh_user: root' } }, rule: /duplicate key/ }],
  },
  {
    name: 'inventory: a host in no group',
    inventory: swap('  children:', '  hosts:', '    pi3-stray:', '      address: 127.0.0.1', '  children:'),
    code: 1,
    says: [{ at: { inventory: { line: '    pi3-stray:' } }, rule: /host "pi3-stray" is in no group/ }],
  },
  {
    name: 'inventory: an agent group without a server',
    inventory: swap('    server:', '    servers:'),
    code: 1,
    says: [{ at: { inventory: { line: 'all:' } }, rule: /group "agent" has hosts but no host is in group "server"/ }],
  },
  {
    name: 'inventory: four errors in one file, reported together',
    inventory: edits(
      after(ALL_VARS, '    ssh_prot: 2222'),
      after(PI_K3S, '          ssh_port: 0'),
      swap(DNS_LABEL, '            - a b'),
      swap(TAINT, '            - hardware=pi3:Sometimes'),
    ),
    code: 1,
    says: [
      { at: { inventory: { line: 'ssh_prot: 2222' } }, rule: /unknown variable "ssh_prot"/ },
      { at: { inventory: { line: 'ssh_port: 0', col: '0' } }, rule: /ssh_port: expected a port number 1-65535/ },
      { at: { inventory: { line: '            - a b', col: 'a b' } }, rule: /node label "a b": expected key=value/ },
      {
        at: { inventory: { line: 'hardware=pi3:Sometimes', col: 'hardware' } },
        rule: /node taint "hardware=pi3:Sometimes": expected key\[=value\]:Effect/,
      },
      { at: { file: 'inventory' }, rule: /: 4 problems$/ },
    ],
  },
  // ------------------------------------------------------------------ -e
  {
    name: '-e: an unknown variable gets a did-you-mean',
    args: ['-e', 'ssh_prot=2222'],
    code: 1,
    says: [{ at: '-e ssh_prot=2222', rule: /unknown variable/ }],
    also: [/did you mean "ssh_port"\?/],
  },
  {
    name: '-e: a bad value (ssh_port=0)',
    args: ['-e', 'ssh_port=0'],
    code: 1,
    says: [{ at: '-e ssh_port=0', rule: /expected a port number 1-65535/ }],
  },
  {
    name: '-e: k3s_version with a shell command',
    args: ['-e', 'k3s_version=v1.34.3+k3s1; id'],
    code: 1,
    says: [{ at: '-e k3s_version=v1.34.3+k3s1; id', rule: /expected a k3s version like v1\.34\.3\+k3s1/ }],
  },
  {
    name: '-e: hostname=x would make every host one node',
    args: ['-e', 'hostname=x'],
    code: 1,
    says: [
      { at: '-e hostname=x', rule: /hosts "pi-k3s", "pi3-worker-1" and "pi3-worker-2" would all be the node "x"/ },
    ],
    also: [/use it with --limit to one host/],
  },
  {
    name: "-e: hostname=<another host's node name> with --limit to one host (--check)",
    args: ['-e', 'hostname=pi3-worker-1', '--limit', 'pi3-worker-2', '--check'],
    code: 1,
    says: [{ at: '-e hostname=pi3-worker-1', rule: /node name|pi3-worker-1"/ }],
  },
  {
    name: "-e: address=<another host's address> with --limit to one host (--check)",
    args: ['-e', `address=${LAB_SUBNET}.53`, '--limit', 'pi3-worker-2', '--check'],
    code: 1,
    says: [{ at: `-e address=${LAB_SUBNET}.53`, rule: /pi3-worker-1/ }],
  },
  {
    name: '-e: ansible_host=<one address> for every host',
    args: ['-e', `ansible_host=${LAB_SUBNET}.53`],
    code: 1,
    says: [
      {
        at: `-e ansible_host=${LAB_SUBNET}.53`,
        rule: new RegExp(
          `hosts "pi-k3s", "pi3-worker-1" and "pi3-worker-2" would all be reached at ${NET_RE}\\.53 port 22`,
        ),
      },
    ],
  },
  {
    name: '-e: k3s_extra_args=--token=x',
    args: ['-e', 'k3s_extra_args=--token=x'],
    code: 1,
    says: [{ at: '-e k3s_extra_args=--token=x', rule: OWNED('token', 'k3s_token_ref') }],
  },
  {
    name: '-e: node_labels as JSON with an option-like label',
    args: ['-e', 'node_labels=["-l=x"]'],
    code: 1,
    says: [{ at: '-e node_labels=["-l=x"]', rule: new RegExp(`node label "-l=x": ${LABEL.source}`) }],
  },
  {
    name: '-e: a pasted GitHub token as github_token_ref is refused and not shown',
    args: ['-e', 'github_token_ref=ghp_pAsTeDtOkEn0123456789'],
    code: 1,
    says: [{ at: '-e github_token_ref=********', rule: /expected a secret reference like op:\/\/vault\/item\/field/ }],
    hidden: ['ghp_pAsTeDtOkEn0123456789'],
  },
  { name: '-e: =x (no key)', args: ['-e', '=x'], code: 1, says: [{ at: '-e =x', rule: /expected key=value/ }] },
  { name: '-e: foo (no =)', args: ['-e', 'foo'], code: 1, says: [{ at: '-e foo', rule: /expected key=value/ }] },
  {
    name: 'rebuild.mts pi-k3s -e k3s_restore=../x (--check)',
    playbook: 'rebuild',
    args: ['pi-k3s', '--check', '-e', 'k3s_restore=../x'],
    code: 1,
    says: [{ at: '-e k3s_restore=../x', rule: /expected "latest", "none" or a backup folder name/ }],
  },
  {
    name: 'update.mts -e apt_upgrade_timeout=0 (--check)',
    playbook: 'update',
    args: ['--check', '-e', 'apt_upgrade_timeout=0'],
    code: 1,
    says: [{ at: '-e apt_upgrade_timeout=0', rule: /expected a number of seconds, 1 to \d+/ }],
  },
  {
    name: 'update.mts -e update_drain=maybe (--check)',
    playbook: 'update',
    args: ['--check', '-e', 'update_drain=maybe'],
    code: 1,
    says: [{ at: '-e update_drain=maybe', rule: /expected true or false/ }],
  },
  {
    name: 'retire.mts pi3-worker-2 -e k3s_drain_timeout=-1 (--check)',
    playbook: 'retire',
    args: ['pi3-worker-2', '--check', '-e', 'k3s_drain_timeout=-1'],
    code: 1,
    says: [{ at: '-e k3s_drain_timeout=-1', rule: /expected a whole number/ }],
  },
  // ------------------------------------------------------------------ command line
  {
    name: 'cli: an unknown flag',
    args: ['--frobnicate'],
    code: 1,
    says: [{ at: "'--frobnicate'", rule: /Unknown option/ }],
  },
  {
    name: 'cli: --forks 0',
    args: ['--forks', '0'],
    code: 1,
    says: [{ at: '--forks 0', rule: /expected a whole number >= 1/ }],
  },
  {
    name: 'cli: --limit naming no host or group',
    args: ['--limit', 'nosuchhost'],
    code: 1,
    says: [{ at: '--limit', rule: /"nosuchhost" is neither a host nor a group of the inventory/ }],
  },
  {
    name: 'cli: --limit glob matching no host',
    args: ['--limit', 'pi3-*x'],
    code: 1,
    says: [{ at: '--limit pi3-*x', rule: /matches no host of any play/ }],
  },
  {
    name: 'cli: --limit @ a retry file that does not exist',
    args: ['--limit', '@/nonexistent/site.retry'],
    code: 1,
    says: [{ at: '--limit @/nonexistent/site.retry', rule: /cannot read the file \(ENOENT\)/ }],
  },
  {
    name: 'cli: -i an inventory that does not exist',
    args: ['-i', '/nonexistent/inventory.yaml'],
    code: 1,
    says: [{ at: '/nonexistent/inventory.yaml', rule: /cannot read inventory: ENOENT/ }],
  },
  {
    name: 'retire.mts -- -lkubernetes.io/os=linux: refused, the cluster keeps its Nodes',
    playbook: 'retire',
    args: ['--', '-lkubernetes.io/os=linux'],
    code: 1,
    says: [
      {
        at: 'retire.mts NODE: "-lkubernetes.io/os=linux"',
        rule: /is no host of .* and no Kubernetes node name \(an RFC 1123 name/,
      },
    ],
    nodes: true,
  },
  {
    name: 'retire.mts ../etc',
    playbook: 'retire',
    args: ['../etc'],
    code: 1,
    says: [{ at: 'retire.mts NODE: "../etc"', rule: /no Kubernetes node name \(an RFC 1123 name/ }],
    nodes: true,
  },
  {
    name: 'retire.mts pi-k3s (the server)',
    playbook: 'retire',
    args: ['pi-k3s'],
    code: 1,
    says: [
      {
        at: 'pi-k3s is the k3s server',
        rule: /retiring it would end the cluster; to replace its Pi, use playbooks\/rebuild\.mts pi-k3s/,
      },
    ],
    nodes: true,
  },
  {
    name: 'retire.mts -lfoo (read as --limit foo: no NODE)',
    playbook: 'retire',
    args: ['-lfoo'],
    code: 1,
    says: [{ at: 'playbooks/retire.mts NODE', rule: /^usage: .*one node at a time/ }],
    nodes: true,
  },
  {
    name: 'rebuild.mts -lfoo (read as --limit foo: no HOST)',
    playbook: 'rebuild',
    args: ['-lfoo'],
    code: 1,
    says: [{ at: 'playbooks/rebuild.mts HOST', rule: /^usage: .*one host at a time/ }],
  },
  {
    name: 'rebuild.mts -- -lfoo',
    playbook: 'rebuild',
    args: ['--', '-lfoo'],
    code: 1,
    says: [{ at: 'no host "-lfoo" in', rule: /\(hosts: pi-k3s, pi3-worker-1, pi3-worker-2\)/ }],
  },
  {
    name: 'rebuild.mts of an unknown host',
    playbook: 'rebuild',
    args: ['pi3-worker-9'],
    code: 1,
    says: [{ at: 'no host "pi3-worker-9" in', rule: /\(hosts: pi-k3s, pi3-worker-1, pi3-worker-2\)/ }],
  },
  {
    name: 'rebuild.mts of two hosts',
    playbook: 'rebuild',
    args: ['pi3-worker-1', 'pi3-worker-2'],
    code: 1,
    says: [{ at: 'playbooks/rebuild.mts HOST', rule: /^usage: .*one host at a time/ }],
  },
  // ------------------------------------------------------------------ hostile values in the secrets store (file backend)
  {
    name: 'secrets: YAML broken (a tab as indentation)',
    secrets: { edit: (t) => after('  pihole:', '\tbroken: x')(t) },
    code: 1,
    says: [
      {
        at: { secrets: { line: '\tbroken: x', col: '\t' } },
        rule: /invalid YAML in secrets file: Tabs are not allowed as indentation/,
      },
    ],
  },
  {
    name: 'secrets: an item the run needs is missing',
    secrets: {
      edit: (t) => {
        const doc = parseDocument(t)
        if (!doc.deleteIn(['pi-cluster', 'flux-github-pat']))
          throw new Error('test bug: no flux-github-pat in the secrets file')
        return doc.toString()
      },
    },
    code: 1,
    says: [
      { at: { file: 'secrets' }, rule: /cannot resolve 1 secret reference \(file backend\)/ },
      { at: 'op://pi-cluster/flux-github-pat/token', rule: /no item "flux-github-pat" in vault "pi-cluster"/ },
    ],
  },
  {
    name: 'secrets: the file has mode 0644',
    secrets: { mode: 0o644 },
    code: 1,
    says: [
      {
        at: { file: 'secrets' },
        rule: /the secrets file has mode 0644, so group or others can access it; refusing to use it/,
      },
    ],
  },
  {
    name: 'secrets: the cluster token is a number',
    secrets: { edit: secretValue(TOKEN_PATH, 123456) },
    code: 1,
    says: [
      {
        at: { secrets: { line: 'token: 123456', col: '123456' } },
        rule: new RegExp(`${esc(TOKEN_REF)}: the value is a number; quote it`),
      },
    ],
  },
  {
    name: 'secrets: the cluster token contains a line break',
    secrets: { edit: secretValue(TOKEN_PATH, 'K10feed::server:cafe\ninjected: line') },
    code: 1,
    says: [{ at: TOKEN_REF, rule: NOT_A_K3S_TOKEN }],
    hidden: ['injected: line'],
  },
  {
    name: 'secrets: the cluster token contains a quote',
    secrets: { edit: secretValue(TOKEN_PATH, 'K10feed::server:ca"fe') },
    code: 1,
    says: [{ at: TOKEN_REF, rule: NOT_A_K3S_TOKEN }],
    hidden: ['ca"fe'],
  },
  {
    name: 'secrets: the cluster token starts with "-"',
    secrets: { edit: secretValue(TOKEN_PATH, '-lfoo-token-cafe') },
    code: 1,
    says: [{ at: TOKEN_REF, rule: NOT_A_K3S_TOKEN }],
    hidden: ['-lfoo-token-cafe'],
  },
  // ------------------------------------------------------------------ hostile known_hosts: refused at the host key, before any login
  {
    name: "known_hosts: pi-k3s's line holds another key: HOST KEY CHANGED, both fingerprints, exit 4",
    args: ['--limit', 'pi-k3s'],
    knownHosts: (lab) =>
      [...withoutHost(lab, `${LAB_SUBNET}.55`), `${LAB_SUBNET}.55 ssh-ed25519 ${otherKey.toString('base64')}`, ''].join(
        '\n',
      ),
    code: 4,
    says: () => [
      {
        at: `pi-k3s (${LAB_SUBNET}.55)`,
        rule: new RegExp(
          `HOST KEY CHANGED for pi-k3s \\(${NET_RE}\\.55\\): known_hosts has ${esc(fp(otherKey))}, the host now presents ${esc(fp(realKey['pi-k3s']))}`,
        ),
      },
      { at: { file: 'known_hosts' }, rule: new RegExp(`ssh-keygen -R ${NET_RE}\\.55 -f `) },
    ],
    preauth: 'pi-k3s',
  },
  {
    name: 'known_hosts: a hashed line for pi-k3s holds another key: HOST KEY CHANGED, exit 4',
    args: ['--limit', 'pi-k3s'],
    knownHosts: (lab) => {
      const salt = randomBytes(20)
      const hash = createHmac('sha1', salt).update(`${LAB_SUBNET}.55`).digest()
      return [
        ...withoutHost(lab, `${LAB_SUBNET}.55`),
        `|1|${salt.toString('base64')}|${hash.toString('base64')} ssh-ed25519 ${otherKey.toString('base64')}`,
        '',
      ].join('\n')
    },
    code: 4,
    says: () => [
      {
        at: `pi-k3s (${LAB_SUBNET}.55)`,
        rule: new RegExp(
          `HOST KEY CHANGED .*known_hosts has ${esc(fp(otherKey))}, the host now presents ${esc(fp(realKey['pi-k3s']))}`,
        ),
      },
    ],
    preauth: 'pi-k3s',
  },
  {
    name: "known_hosts: @revoked names pi3-worker-1's real key: refused, exit 4",
    args: ['--limit', 'pi3-worker-1'],
    knownHosts: (lab) => `@revoked ${LAB_SUBNET}.53 ssh-ed25519 ${realKey['pi3-worker-1'].toString('base64')}\n${lab}`,
    code: 4,
    says: () => [
      {
        at: `pi3-worker-1 (${LAB_SUBNET}.53)`,
        rule: new RegExp(
          `host key ${esc(fp(realKey['pi3-worker-1']))} of pi3-worker-1 \\(${NET_RE}\\.53\\) is marked @revoked`,
        ),
      },
      { at: { file: 'known_hosts' }, rule: /is marked @revoked in \S+; refusing to connect/ },
    ],
    preauth: 'pi3-worker-1',
  },
]

// ---------------------------------------------------------------------------------------------- running a case

let dir = ''
let labInventory = ''
let labKnownHosts = ''
let labSecrets = ''
/** Every value in the lab's secrets file: none may appear in any output. */
let secretValues: string[] = []
let baseline: Marks = {}

interface Files {
  inventory: string
  secrets: string
  knownHosts: string
  /** The text of each file, for anchors. */
  text: { inventory: string; secrets: string }
}
interface Outcome {
  files: Files
  run: PlaybookCliRun
  evidence: Evidence
  nodes?: string[]
  /** Run again alone because its window was not clean. */
  alone: boolean
  ms: number
}

const slug = (c: Case): string => `c${String(CASES.indexOf(c)).padStart(2, '0')}`

/** Write this case's files: inventory (always a copy), and its own secrets / known_hosts when it has them. */
function prepare(c: Case): Files {
  const id = slug(c)
  let secrets = join(dir, 'secrets.yaml')
  let secretsText = labSecrets
  if (c.secrets) {
    secrets = join(dir, `${id}.secrets.yaml`)
    secretsText = c.secrets.edit ? c.secrets.edit(labSecrets) : labSecrets
    writeFileSync(secrets, secretsText, { mode: 0o600 })
    chmodSync(secrets, c.secrets.mode ?? 0o600)
  }
  let knownHosts = join(dir, 'known_hosts')
  if (c.knownHosts) {
    knownHosts = join(dir, `${id}.known_hosts`)
    writeFileSync(knownHosts, c.knownHosts(labKnownHosts), { mode: 0o600 })
  }
  const base = labInventory
    .replace(/^ {4}known_hosts_file: .*$/m, `    known_hosts_file: ${knownHosts}`)
    .replace(/^ {4}secrets_file: .*$/m, `    secrets_file: ${secrets}`)
  const text = (c.inventory ?? ((t: string) => t))(base)
  const inventory = join(dir, `${id}.yaml`)
  writeFileSync(inventory, text)
  return { inventory, secrets, knownHosts, text: { inventory: text, secrets: secretsText } }
}

async function runCase(c: Case, alone: boolean): Promise<Outcome> {
  const files = prepare(c)
  const marks = await markAll()
  const t0 = Date.now()
  // Its own retry file (a refused run writes none; an accepted one that fails would write one into the repo).
  const run = await runPlaybookCli(c.playbook ?? 'site', [
    '-i',
    files.inventory,
    '--retry-file',
    join(dir, `${slug(c)}.retry`),
    ...(c.args ?? []),
  ])
  const ms = Date.now() - t0
  const evidence = await sinceAll(marks)
  const nodes = c.nodes ? await nodeNames() : undefined
  return { files, run, evidence, nodes, alone, ms }
}

/** "file:line:col" of an anchor in a text. */
function position(file: string, text: string, a: Anchor): string {
  const lines = text.split('\n')
  const hits = lines.flatMap((l, i) => (l.includes(a.line) ? [i] : []))
  if (hits.length !== 1) throw new Error(`test bug: ${JSON.stringify(a.line)} is on ${hits.length} lines of ${file}`)
  const line = lines[hits[0]]
  if (a.col === null) return `${file}:${hits[0] + 1}:`
  const col = a.col === undefined ? line.search(/\S/) : line.indexOf(a.col)
  if (col < 0) throw new Error(`test bug: ${JSON.stringify(a.col)} is not in ${JSON.stringify(line)}`)
  return `${file}:${hits[0] + 1}:${col + 1}: `
}

function placeText(p: Place, f: Files): string {
  if (typeof p === 'string') return p
  if ('inventory' in p) return position(f.inventory, f.text.inventory, p.inventory)
  if ('secrets' in p) return position(f.secrets, f.text.secrets, p.secrets)
  if (p.file === 'known_hosts') return f.knownHosts
  return `${p.file === 'inventory' ? f.inventory : f.secrets}: `
}

/** The host side of a case, short: counts, then the first journal lines (a finding's run logs hundreds). */
function describeEvidence(ev: Evidence): string {
  return Object.entries(ev)
    .map(([h, e]) => {
      const head = `${h}: ${e.syn} SYN to :22, ${e.entries} sshd/sudo/logind journal lines (${e.logins} logins or commands, ${e.accepted} "Accepted publickey")`
      const lines = e.lines.slice(0, 8).map((l) => `    ${l.length > 220 ? `${l.slice(0, 220)}…` : l}`)
      return [head, ...lines, ...(e.lines.length > 8 ? [`    … ${e.lines.length - 8} more`] : [])].join('\n')
    })
    .join('\n')
}

/** What the case's output must show and the hosts must not, as assertions; the run's output on every failure. */
function judge(c: Case, o: Outcome): void {
  const { run, evidence } = o
  const shown = `${c.playbook ?? 'site'}.mts -i ${o.files.inventory} ${(c.args ?? []).join(' ')}\nexit ${run.code} after ${o.ms} ms${o.alone ? ' (run again alone)' : ''}\n${run.out}\nhost side:\n${describeEvidence(evidence)}`
  expect(run.code, `exit code\n${shown}`).toBe(c.code)
  const lines = run.out.split('\n').map((l) => l.replace(/^ERROR: /, ''))
  for (const s of typeof c.says === 'function' ? c.says() : c.says) {
    const at = placeText(s.at, o.files)
    expect(
      lines.some((l) => l.includes(at) && s.rule.test(l)),
      `a line naming ${JSON.stringify(at)} and matching ${s.rule}\n${shown}`,
    ).toBe(true)
  }
  for (const re of c.also ?? []) expect(run.out, shown).toMatch(re)
  for (const h of [...(c.hidden ?? []), ...secretValues])
    expect(run.out.includes(h), `a secret value in the output\n${shown}`).toBe(false)
  for (const host of DEFAULT_HOSTS) {
    const e = evidence[host]
    expect(e.logins, `journal lines of logins or commands on ${host} (count)\n${shown}`).toBe(0)
    expect(loginLines(e), `journal lines of logins or commands on ${host}\n${shown}`).toEqual([])
    if (host === c.preauth) {
      // The connection did reach sshd: the refusal was the host key's, not something earlier.
      expect(
        e.syn,
        `${host}: a connection to port 22 was expected (refused at the host key)\n${shown}`,
      ).toBeGreaterThanOrEqual(1)
    } else {
      expect(e.syn, `SYN packets to ${host}:22\n${shown}`).toBe(0)
      expect(e.entries, `sshd / sudo / logind journal lines on ${host} (count)\n${shown}`).toBe(0)
      expect(e.lines, `sshd / sudo / logind journal lines on ${host}\n${shown}`).toEqual([])
    }
  }
  if (c.nodes) expect(o.nodes, `the cluster's Nodes after the case\n${shown}`).toEqual(ALL_NODES)
}

// ---------------------------------------------------------------------------------------------- the lab

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'bad-input-'))
  await convergedLab()
  // Counting rules: SYNs to tcp/22, in each host's own network namespace (first in INPUT, no target: count only).
  for (const h of DEFAULT_HOSTS) {
    await exec(
      h,
      `while iptables -w -D INPUT -p tcp --dport 22 --syn -m comment --comment ${RULE} 2>/dev/null; do :; done; iptables -w -I INPUT 1 -p tcp --dport 22 --syn -m comment --comment ${RULE}`,
    )
  }
  labInventory = readFileSync(LAB_INVENTORY, 'utf8')
  labKnownHosts = readFileSync(LAB_KNOWN_HOSTS, 'utf8')
  labSecrets = readFileSync(LAB_SECRETS_FILE, 'utf8')
  writeFileSync(join(dir, 'known_hosts'), labKnownHosts, { mode: 0o600 })
  writeFileSync(join(dir, 'secrets.yaml'), labSecrets, { mode: 0o600 })
  const leaves = (x: unknown): string[] =>
    typeof x === 'string' ? [x] : x && typeof x === 'object' ? Object.values(x).flatMap(leaves) : []
  secretValues = leaves(parse(labSecrets)).filter((s) => s.length >= 8)
  expect(secretValues.length, 'the lab secrets file holds the values the run needs').toBeGreaterThanOrEqual(4)
  for (const h of DEFAULT_HOSTS) {
    const line = labKnownHosts.split('\n').find((l) => l.startsWith(`${labAddress(h)} ssh-ed25519 `))
    if (!line) throw new Error(`no ed25519 key of ${h} in ${LAB_KNOWN_HOSTS}`)
    realKey[h] = Buffer.from(line.split(' ')[2], 'base64')
  }
  // A key no lab host has, in SSH wire format: string "ssh-ed25519", string <32-byte public key>.
  const raw = Buffer.from(generateKeyPairSync('ed25519').publicKey.export({ format: 'jwk' }).x ?? '', 'base64url')
  const str = (b: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b])
  otherKey = Buffer.concat([str(Buffer.from('ssh-ed25519')), str(raw)])
  expect(raw.length).toBe(32)
  expect(await nodeNames()).toEqual(ALL_NODES)
  // The hosts share this machine's clock (containers): the journal from a moment ago on.
  journalFrom = ((Date.now() - 1000) / 1000).toFixed(6)
  baseline = await markAll()
}, 900_000)

afterAll(async () => {
  for (const h of DEFAULT_HOSTS)
    await labExec(h, `iptables -w -D INPUT -p tcp --dport 22 --syn -m comment --comment ${RULE}`).catch(() => undefined)
  await labDown()
  rmSync(dir, { recursive: true, force: true })
})

// ---------------------------------------------------------------------------------------------- the table

const outcomes = new Map<Case, Outcome>()
/** Seconds: the whole table, its phases; and how many cases were run again alone. */
const timings = { table: 0, pool: 0, alone: 0, knownHosts: 0, reruns: 0 }

describe('bad input is refused before any host is contacted', () => {
  beforeAll(async () => {
    const t0 = Date.now()
    const pooled = CASES.filter((c) => c.preauth === undefined)
    let next = 0
    await Promise.all(
      Array.from({ length: 3 }, async () => {
        while (next < pooled.length) {
          const c = pooled[next++]
          outcomes.set(c, await runCase(c, false))
        }
      }),
    )
    const t1 = Date.now()
    // A window with anything in it may hold a neighbour's connection: that case's verdict is a run alone.
    for (const c of pooled)
      if (anyContact(outcomes.get(c)!.evidence)) {
        timings.reruns++
        outcomes.set(c, await runCase(c, true))
      }
    const t2 = Date.now()
    // The known_hosts cases reach sshd by design: alone, one after another.
    for (const c of CASES.filter((x) => x.preauth !== undefined)) outcomes.set(c, await runCase(c, true))
    const t3 = Date.now()
    Object.assign(timings, {
      table: (t3 - t0) / 1000,
      pool: (t1 - t0) / 1000,
      alone: (t2 - t1) / 1000,
      knownHosts: (t3 - t2) / 1000,
    })
  }, 900_000)

  it(`the table has at least 40 cases (${CASES.length})`, () => {
    expect(CASES.length).toBeGreaterThanOrEqual(40)
    expect(new Set(CASES.map((c) => c.name)).size, 'case names are unique').toBe(CASES.length)
  })

  for (const c of CASES) {
    it(c.name, () => {
      const o = outcomes.get(c)
      if (!o) throw new Error('the case did not run')
      judge(c, o)
    })
  }
})

describe('a known_hosts with malformed lines around the good ones is not a refusal', () => {
  it('site.mts runs (exit 0, logins on every host) and warns once per malformed line with file:line', async () => {
    const kh = join(dir, 'malformed.known_hosts')
    const good = labKnownHosts.split('\n').filter((l) => l.trim() !== '')
    const bad = [
      'this is not a known_hosts line',
      `@bogus-marker ${LAB_SUBNET}.55 ssh-ed25519 ${realKey['pi-k3s'].toString('base64')}`,
      `${LAB_SUBNET}.53 ssh-ed25519`,
      `${LAB_SUBNET}.51 ssh-rsa ${realKey['pi3-worker-2'].toString('base64')}`,
    ]
    // bad, then a third of the good lines, and so on: every good line has a malformed neighbour.
    const third = Math.ceil(good.length / 3)
    const lines = [
      bad[0],
      ...good.slice(0, third),
      bad[1],
      ...good.slice(third, 2 * third),
      bad[2],
      ...good.slice(2 * third),
      bad[3],
      '',
    ]
    writeFileSync(kh, lines.join('\n'), { mode: 0o600 })
    const inventory = join(dir, 'malformed.yaml')
    writeFileSync(
      inventory,
      labInventory
        .replace(/^ {4}known_hosts_file: .*$/m, `    known_hosts_file: ${kh}`)
        .replace(/^ {4}secrets_file: .*$/m, `    secrets_file: ${join(dir, 'secrets.yaml')}`),
    )
    const marks = await markAll()
    const run = await runPlaybookCli('site', ['-i', inventory, '--retry-file', join(dir, 'malformed.retry')])
    const evidence = await sinceAll(marks)
    expect(run.code, run.out).toBe(0)
    const reasons = [
      /bad base64 in the key/,
      /unknown marker/,
      /missing the key/,
      /the line says ssh-rsa but the key is ssh-ed25519/,
    ]
    bad.forEach((b, i) => {
      const at = `${kh}:${lines.indexOf(b) + 1}: skipped a malformed line`
      expect(
        run.out.split('\n').some((l) => l.startsWith('WARNING: ') && l.includes(at) && reasons[i].test(l)),
        `WARNING naming ${at} (${reasons[i]})\n${run.out}`,
      ).toBe(true)
    })
    // The same evidence that is empty for every refused case is not empty here: the detectors can see a run.
    for (const h of DEFAULT_HOSTS) {
      const e = evidence[h]
      expect(e.syn, `${h}: connections\n${describeEvidence(evidence)}`).toBeGreaterThanOrEqual(1)
      expect(e.accepted, `${h}: "Accepted publickey" lines\n${describeEvidence(evidence)}`).toBeGreaterThanOrEqual(1)
      expect(
        loginLines(e).some((l) => /sudo\[\d+\]: +pi : .*COMMAND=/.test(l)),
        `${h}: a command run through sudo\n${describeEvidence(evidence)}`,
      ).toBe(true)
    }
  })
})

describe('after the table', () => {
  it('the cluster still has all its Nodes', async () => {
    expect(await nodeNames()).toEqual(ALL_NODES)
    const since = await sinceAll(baseline)
    const total = Object.fromEntries(Object.entries(since).map(([h, e]) => [h, e.accepted]))
    const ms = [...outcomes.values()].map((o) => o.ms).sort((a, b) => a - b)
    console.log(
      `bad-input: ${CASES.length} cases in ${timings.table.toFixed(1)} s (3 at a time ${timings.pool.toFixed(1)} s; ${timings.reruns} run again alone ${timings.alone.toFixed(1)} s; ` +
        `known_hosts ${timings.knownHosts.toFixed(1)} s); a playbook process: median ${ms[ms.length >> 1]} ms, max ${ms[ms.length - 1]} ms; ` +
        `"Accepted publickey" lines during the file: ${JSON.stringify(total)}`,
    )
  })
})
