import { describe, expect, it } from 'vitest'
import * as g from '../../lib/grammar.ts'
import type { Grammar } from '../../lib/grammar.ts'

// Each rule: values it must take and values it must refuse. A value is tried on the grammar (valibot) and, for
// strings, on its predicate too: they must agree, so neither can drift from the other.
interface Table {
  rule: Grammar<unknown>
  is?: (s: string) => boolean
  good: readonly unknown[]
  bad: readonly unknown[]
}

const long = (n: number, c = 'a'): string => c.repeat(n)

const tables: Record<string, Table> = {
  'DNS label': {
    rule: g.DnsLabel,
    is: g.isDnsLabel,
    good: ['a', 'pi-k3s', '0', 'a1-b2', long(63)],
    bad: ['', '-a', 'a-', 'A', 'pi_k3s', 'a.b', long(64), 'ä', ' a'],
  },
  'DNS subdomain': {
    rule: g.DnsSubdomain,
    is: g.isDnsSubdomain,
    good: [
      'a',
      'pi-k3s.lan',
      '198.51.100.55',
      `${long(63)}.${long(63)}`,
      [long(63), long(63), long(63), long(61)].join('.'),
    ],
    bad: [
      '',
      '.a',
      'a.',
      'a..b',
      'Pi.lan',
      'a_b.c',
      `${long(64)}.b`,
      [long(63), long(63), long(63), long(62)].join('.'),
      '-lfoo',
    ],
  },
  'node name': {
    rule: g.NodeName,
    is: g.isDnsSubdomain,
    good: ['pi-k3s', 'pi3-worker-1', 'node.lan'],
    bad: ['Pi_K3s', '-lfoo', 'pi k3s', 'pi-k3s-', ''],
  },
  'label key': {
    rule: g.LabelKey,
    is: g.isLabelKey,
    good: ['hardware', 'workload/dns', 'node-role.kubernetes.io/worker', 'A_b.C-d', 'x/' + long(63), long(63)],
    bad: ['', '/name', 'prefix/', 'a/b/c', '-a', 'a-', 'Bad_Prefix/x', 'x/' + long(64), 'a b', 'a=b'],
  },
  'label value': {
    rule: g.LabelValue,
    is: g.isLabelValue,
    good: ['', 'pi3', 'Unbound_1.x', long(63)],
    bad: ['-x', 'x-', 'a b', 'a/b', long(64)],
  },
  'node label': {
    rule: g.NodeLabel,
    is: g.isNodeLabel,
    good: ['hardware=pi3', 'workload/dns=unbound', 'example.com/role=', 'a=b'],
    bad: ['-lfoo', 'hardware', '=pi3', 'hardware=pi 3', 'hard ware=pi3', 'a=b=c', 'a=-b', 'x/y/z=1', `a=${long(64)}`],
  },
  taint: {
    rule: g.Taint,
    is: g.isTaint,
    good: ['hardware=pi3:PreferNoSchedule', 'dedicated:NoSchedule', 'example.com/gpu=true:NoExecute', 'k=:NoSchedule'],
    bad: [
      'hardware=pi3',
      'hardware=pi3:Sometimes',
      'hardware=pi3:noschedule',
      ':NoSchedule',
      '=x:NoSchedule',
      '-k=v:NoSchedule',
      'k=v v:NoSchedule',
      'k=v:NoSchedule:NoSchedule',
    ],
  },
  workload: {
    rule: g.Workload,
    is: g.isWorkload,
    good: ['unbound', 'pihole/pihole', 'backup-jobs/*', 'ns/app.v2'],
    bad: ['*', '*/x', 'a/b/c', 'Pihole/pihole', 'ns/', '/x', 'ns/x y', 'ns.with.dots/x'],
  },
  address: {
    rule: g.Address,
    is: g.isAddress,
    good: ['10.0.0.1', '198.51.100.55', 'fe80::1', '::1', '2001:db8::5', 'pi-k3s.lan', 'PI-K3S', 'localhost'],
    bad: [
      '203.0.113.300',
      '10.0.0',
      '-oProxyCommand=x',
      'not an ip!',
      'fe80::1%eth0',
      'a..b',
      '',
      'host_name',
      '1.2.3.4.5',
    ],
  },
  user: {
    rule: g.UserName,
    is: g.isUserName,
    good: ['pi', 'root', 'debian', 'svc_k3s', 'a.b', 'user-1', long(32, 'u')],
    bad: ['', '-pi', 'p i', '1000', 'pi:x', 'pi/x', long(33, 'u'), '.', '..', 'pi$'],
  },
  'k3s version': {
    rule: g.K3sVersion,
    is: g.isK3sVersion,
    good: ['v1.34.3+k3s1', 'v1.31.12+k3s1', 'v1.35.0-rc1+k3s1', 'v1.30.2+k3s2'],
    bad: [
      'v1',
      '1.34.3+k3s1',
      'v1.34.3',
      'v1.34.3+k3s',
      'v1.34.3-k3s1',
      'latest',
      'v1.34.3+k3s1 ',
      '-v1.34.3+k3s1',
      'v1.34.3-rc.1+k3s1',
    ],
  },
  'flux version': {
    rule: g.FluxVersion,
    is: g.isFluxVersion,
    good: ['2.7.3', 'v2.7.3', '2.3.0-rc.1'],
    bad: ['2.7', 'latest', '2.7.3 ', '-2.7.3', '2.7.3+x', '2.7.x'],
  },
  sha256: {
    rule: g.Sha256,
    is: g.isSha256,
    good: ['a'.repeat(64), '0123456789abcdefABCDEF'.padEnd(64, '0')],
    bad: ['a'.repeat(63), 'a'.repeat(65), 'g'.repeat(64), ` ${'a'.repeat(64)}`],
  },
  'file mode': {
    rule: g.FileMode,
    is: g.isFileMode,
    good: ['0600', '600', '0644', '0755'],
    bad: ['0800', '60', '00600', 'rw-------', '-0600', '0o600'],
  },
  'Debian package': {
    rule: g.DebPackage,
    is: g.isDebPackage,
    good: [
      'nfs-common',
      'libstdc++6',
      'python3.11',
      '7zip',
      'curl=7.88.1-10+deb12u8',
      'tzdata=2025a-0+deb12u1',
      'vim=2:9.0.1378-2',
    ],
    bad: [
      '',
      'a',
      '-lfoo',
      'Nfs-common',
      'nfs common',
      'curl=',
      'curl=-1',
      'curl=x1',
      'curl=1 2',
      'nfs-common;rm',
      '.hidden',
      '+x',
    ],
  },
  'kernel flag': {
    rule: g.CmdlineFlag,
    is: g.isCmdlineFlag,
    good: ['cgroup_memory=1', 'cgroup_enable=memory', 'quiet', 'console=serial0,115200', 'root=PARTUUID=1234-02'],
    bad: ['', 'cgroup_memory=1 cgroup_enable=memory', 'a\tb', 'x="y"', "x='y'", '-x', '--', 'é', 'a\nb'],
  },
  'k3s component': {
    rule: g.K3sComponent,
    is: g.isK3sComponent,
    good: ['traefik', 'servicelb', 'metrics-server', 'local-storage', 'coredns'],
    bad: ['Traefik', 'traefic', '', 'traefik,servicelb', '--disable=traefik'],
  },
  'k3s flag': {
    rule: g.K3sFlag,
    is: g.isK3sFlag,
    good: [
      '--kubelet-arg=max-pods=50',
      '--disable-cloud-controller',
      '--flannel-backend=host-gw',
      '--kube-apiserver-arg=a b',
      '--x=',
    ],
    bad: [
      'flannel-backend=host-gw',
      '-t',
      '--Bad',
      '--flag=a\nb',
      '--',
      '---x',
      '--token=abc',
      '--node-name=x',
      '--disable=traefik',
      '--data-dir=/x',
      '--server=https://x',
      '--node-label=a=b',
    ],
  },
  'GitHub owner': {
    rule: g.GitHubOwner,
    is: g.isGitHubOwner,
    good: ['mtgibbs', 'fluxcd', 'a', 'a-b', 'A1', long(39)],
    bad: ['', '-a', 'a-', 'a--b', 'a_b', 'a.b', long(40), 'a/b'],
  },
  'GitHub repository': {
    rule: g.GitHubRepo,
    is: g.isGitHubRepo,
    good: ['pi-cluster', 'flux2', 'my.repo', '_x', long(100)],
    bad: ['', '.', '..', '-x', 'pi-cluster.git', 'a/b', 'a b', long(101)],
  },
  branch: {
    rule: g.GitBranch,
    is: g.isGitBranch,
    good: ['main', 'feature/x', 'release-1.2', 'a.b', 'v2@x'],
    bad: [
      '',
      '-main',
      '@',
      'a..b',
      'a b',
      'a~1',
      'a^',
      'a:b',
      'a?',
      'a*',
      'a[',
      'a\\b',
      'a@{1}',
      '/a',
      'a/',
      'a//b',
      '.a',
      'a/.b',
      'a.lock',
      'a.',
    ],
  },
  'repository path': {
    rule: g.RepoPath,
    is: g.isRepoPath,
    good: ['clusters/pi-k3s', './clusters/pi-k3s', 'clusters/pi-k3s/', 'x', '/clusters/x'],
    bad: ['', './', '-x', 'a/../b', '..', 'a//b', 'a b', 'a/./b', '$(x)'],
  },
  URL: {
    rule: g.HttpUrl,
    is: g.isHttpUrl,
    good: [
      'https://get.k3s.io',
      'http://10.199.55.1:8780/k3s/install.sh',
      'https://[fe80::1]/x',
      'https://example.com/a?b=c',
    ],
    bad: ['get.k3s.io', 'ftp://x', 'https://', 'https://a b', 'file:///etc/passwd', 'https://x/\n', '-https://x', ''],
  },
  'flux URL': {
    rule: g.FluxUrl,
    is: g.isFluxUrl,
    good: [
      'https://github.com/fluxcd/flux2/releases/download/v{version}/flux_{version}_linux_{arch}.tar.gz',
      'http://10.199.55.1:8780/flux/flux',
    ],
    bad: ['https://x/{Version}.tar.gz', 'https://x/{os}', '{version}', 'ftp://x/{arch}', 'https://x/}'],
  },
  path: {
    rule: g.FilePath,
    is: g.isPath,
    good: ['~/.ssh/id_ed25519', '/Volumes/k3s-backups', 'keys/id', 'a b', '-odd-but-a-path'],
    bad: ['', 'a\0b', 'a\nb', 'a\rb'],
  },
  'kubeconfig context': {
    rule: g.ContextName,
    is: g.isContextName,
    good: ['pi-k3s', 'pi-k3s-lab', 'admin@cluster', 'arn:aws:eks:x/y', 'k3s_ansible'],
    bad: ['', '-x', '.x', 'a b', 'a\nb', long(254)],
  },
  k3s_restore: {
    rule: g.RestoreName,
    is: g.isRestoreName,
    good: ['latest', 'none', '2025-12-27', '20251227_0215'],
    bad: ['', '../x', 'a/b', '.hidden', '-x', 'a\0b', 'a\nb', '/abs'],
  },
  'secret reference': {
    rule: g.SecretRef,
    is: g.isSecretRef,
    good: ['op://pi-cluster/k3s-node-token/token', 'op://v/i/f'],
    bad: ['op://vault/item', 'pi-cluster/k3s-node-token/token', 'op://a b/c/d', 'op://v/i/f/g', 'token'],
  },
  port: {
    rule: g.Port,
    good: [1, 22, 6443, 65535],
    bad: [0, -1, 65536, 22.5, '22', Number.NaN],
  },
  duration: {
    rule: g.Duration,
    good: [1, 300, g.MAX_SECONDS],
    bad: [0, -5, 1.5, g.MAX_SECONDS + 1, '300'],
  },
  'duration or zero': {
    rule: g.DurationOrZero,
    good: [0, 3600],
    bad: [-1, 0.5, g.MAX_SECONDS + 1],
  },
}

describe('value grammars: good values pass, bad values are refused', () => {
  for (const [name, t] of Object.entries(tables)) {
    describe(name, () => {
      for (const value of t.good)
        it(`takes ${JSON.stringify(value)}`, () => {
          expect(g.verdict(t.rule, value)).toEqual({ ok: true, value })
          if (t.is && typeof value === 'string') expect(t.is(value)).toBe(true)
        })
      for (const value of t.bad)
        it(`refuses ${JSON.stringify(value)}`, () => {
          const r = g.verdict(t.rule, value)
          expect(r.ok).toBe(false)
          if (!r.ok) expect(r.expected).toMatch(/^expected /)
          if (t.is && typeof value === 'string') expect(t.is(value)).toBe(false)
        })
    })
  }
})

describe('what the messages say', () => {
  it('a node label names the value and what was expected', () => {
    expect(g.complaint(g.NodeLabel, '-lfoo')).toBe(
      'node label "-lfoo": expected key=value, key in Kubernetes label grammar ([prefix/]name: name 1-63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit; prefix a DNS subdomain), value empty or 1-63 of the same characters',
    )
  })

  it('a taint lists the effects', () => {
    expect(g.complaint(g.Taint, 'a=b:Sometimes')).toMatch(
      /^node taint "a=b:Sometimes": expected key\[=value\]:Effect with Effect one of NoSchedule, PreferNoSchedule, NoExecute/,
    )
  })

  it('a k3s flag the roles write names the inventory variable to use instead', () => {
    expect(g.complaint(g.K3sFlag, '--token=abc')).toBe(
      'k3s flag "--token=abc": expected a flag the roles do not write themselves: "token" comes from the inventory variable k3s_token_ref; set that instead',
    )
    expect(g.complaint(g.K3sFlag, '--node-label=a=b')).toContain('node_labels')
    expect(g.complaint(g.K3sFlag, '--tls-san=x')).toContain('k3s_tls_san')
    expect(g.complaint(g.K3sFlag, '--disable=traefik')).toContain('k3s_disable')
    expect(g.complaint(g.K3sFlag, '--write-kubeconfig-mode=644')).toContain('k3s_kubeconfig_mode')
    expect(g.complaint(g.K3sFlag, '--node-taint=a:NoSchedule')).toContain('node_taints')
    expect(g.complaint(g.K3sFlag, '--node-name=x')).toContain('hostname')
    expect(g.complaint(g.K3sFlag, '--agent-token=x')).toContain('k3s_token_ref')
    expect(g.complaint(g.K3sFlag, '--token-file=/x')).toContain('k3s_token_ref')
    expect(g.complaint(g.K3sFlag, '--server=https://x:6443')).toContain('group "server"')
    expect(g.complaint(g.K3sFlag, '--data-dir=/x')).toContain('/var/lib/rancher/k3s')
  })

  it('a k3s flag without its dashes says how to write it', () => {
    expect(g.complaint(g.K3sFlag, 'flannel-backend=host-gw')).toBe(
      'k3s flag "flannel-backend=host-gw": expected --flag or --flag=value: write it as "--flannel-backend=host-gw"',
    )
  })

  it('a non-string is named by its kind', () => {
    expect(g.complaint(g.NodeName, 5)).toBe(
      'node name 5: expected a string: a Kubernetes node name, an RFC 1123 subdomain (lowercase letters, digits, "-" and ".", each dot-separated part 1-63 characters starting and ending with a letter or digit, at most 253 in all)',
    )
    expect(g.complaint(g.NodeLabel, { a: 1 })).toMatch(/^node label a map: expected a string/)
  })

  it('a good value has no complaint', () => {
    expect(g.complaint(g.NodeLabel, 'hardware=pi3')).toBeUndefined()
  })

  it('durations stop where a timer can no longer wait', () => {
    expect(g.MAX_SECONDS).toBe(2147483)
    expect(g.verdict(g.Duration, 2147484)).toEqual({
      ok: false,
      expected: 'expected a number of seconds, 1 to 2147483',
    })
  })
})
