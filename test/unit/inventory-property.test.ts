// Generated inventories, thousands of them: each either loads or is refused with a ProvisionError that names
// the inventory file (and a line for everything found in the file). Never another exception: a TypeError or a
// RangeError out of the loader would be a crash the user sees instead of "file:line:col: what is wrong".

import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { stringify } from 'yaml'
import { ProvisionError } from '../../lib/errors.ts'
import { parseExtraVars } from '../../lib/extra-vars.ts'
import { checkHosts } from '../../lib/host-checks.ts'
import { parseInventory, type Inventory } from '../../lib/inventory.ts'
import { FOREIGN_VARS, VAR_SYNONYMS } from '../../lib/var-names.ts'
import { VAR_SPECS } from '../../lib/vars.ts'

const FILE = '/inventories/generated.yaml'

// ---------------------------------------------------------------- pieces

/** Strings a hostile or careless inventory might hold. */
const hostile = fc.constantFrom(
  '',
  ' ',
  '-lfoo',
  '--token=x',
  '__proto__',
  'constructor',
  'toString',
  'hasOwnProperty',
  'all',
  'hosts',
  'vars',
  'children',
  '~',
  '..',
  '../../etc/passwd',
  '{{ lookup("env", "HOME") }}',
  '$(reboot)',
  '`id`',
  'a\nb',
  'a\0b',
  '\u202e',
  'ü',
  '💥',
  'x'.repeat(300),
  'op://v/i/f',
  'op://',
  '10.0.0.1',
  '::1',
  'fe80::1%eth0',
  '1e400',
  'NaN',
  'null',
  'true',
)

const goodValues: Record<string, readonly unknown[]> = {
  address: ['10.0.0.1', '10.0.0.2', 'pi.lan', 'fe80::1'],
  ssh_user: ['pi', 'debian'],
  ssh_port: [22, 2222, '2200'],
  hostname: ['pi-k3s', 'node-1', 'a.b'],
  node_labels: [['hardware=pi3'], ['workload/dns=unbound', 'x=']],
  node_taints: [['hardware=pi3:PreferNoSchedule']],
  k3s_disable: [['traefik'], 'traefik, servicelb'],
  k3s_extra_args: [['--kubelet-arg=max-pods=50']],
  cmdline_flags: [['cgroup_memory=1']],
  extra_packages: [['nfs-common', 'curl=7.88.1-10']],
  k3s_version: ['v1.34.3+k3s1'],
  placement: [{ 'pihole/pihole': 'pi-k3s' }],
  reboot_timeout: [600],
  update_drain: [true, 'false'],
  k3s_token_ref: ['op://pi-cluster/k3s-node-token/token'],
  app_checks: [[{ app: 'x', url: 'http://x' }]],
}

const varNames = [...Object.keys(VAR_SPECS), ...Object.keys(VAR_SYNONYMS), ...Object.keys(FOREIGN_VARS)]

const scalar: fc.Arbitrary<unknown> = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 12 }),
  hostile,
  fc.integer({ min: -70000, max: 70000 }),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
)

const value: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: scalar },
  { weight: 2, arbitrary: fc.array(scalar, { maxLength: 4 }) },
  { weight: 1, arbitrary: fc.dictionary(fc.oneof(fc.string({ maxLength: 8 }), hostile), scalar, { maxKeys: 3 }) },
  {
    weight: 1,
    arbitrary: fc.array(fc.dictionary(fc.string({ maxLength: 5 }), scalar, { maxKeys: 2 }), { maxLength: 2 }),
  },
)

/** A variable: usually a known name with a good or a random value, sometimes anything. */
const variable: fc.Arbitrary<[string, unknown]> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .constantFrom(...Object.keys(goodValues))
      .chain((k) => fc.tuple(fc.constant(k), fc.constantFrom(...goodValues[k]))),
  },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom(...varNames), value) },
  { weight: 1, arbitrary: fc.tuple(fc.oneof(fc.string({ maxLength: 10 }), hostile), value) },
)

const vars = fc.array(variable, { maxLength: 4 }).map((pairs) => Object.fromEntries(pairs))

const hostName = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.constantFrom('pi-k3s', 'pi3-worker-1', 'pi3-worker-2', 'node-a', 'node-b', 'Pi_K3s', '192.0.2.10'),
  },
  { weight: 1, arbitrary: fc.oneof(fc.string({ maxLength: 10 }), hostile) },
)

const hostBody = fc.oneof(
  { weight: 1, arbitrary: fc.constant(null) },
  {
    weight: 4,
    arbitrary: fc
      .tuple(fc.constantFrom('10.0.0.1', '10.0.0.2', '10.0.0.3', 'pi.lan'), vars)
      .map(([address, v]) => ({ address, ...v })),
  },
  { weight: 1, arbitrary: value },
)

const groupName = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom('server', 'agent', 'pi3', 'k3s_cluster', 'monitoring') },
  { weight: 1, arbitrary: fc.oneof(fc.string({ maxLength: 8 }), hostile) },
)

/** A group: hosts, vars and child groups, nested a few levels. */
const group: fc.Arbitrary<unknown> = fc.letrec<{ group: unknown }>((tie) => ({
  group: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    { weight: 1, arbitrary: fc.constant(null) },
    {
      weight: 6,
      arbitrary: fc.record(
        {
          hosts: fc.dictionary(hostName, hostBody, { maxKeys: 3 }),
          vars,
          children: fc.dictionary(groupName, tie('group'), { maxKeys: 2 }),
        },
        { requiredKeys: [] },
      ),
    },
    { weight: 1, arbitrary: value },
  ),
})).group

/** A whole document: all:, other top-level groups, or something else entirely. */
const document = fc.oneof(
  { weight: 4, arbitrary: group.map((all) => ({ all })) },
  { weight: 3, arbitrary: fc.dictionary(groupName, group, { minKeys: 1, maxKeys: 3 }) },
  { weight: 1, arbitrary: value },
)

/** A YAML text: a generated inventory, that text cut and spliced, or YAML-ish noise. */
const fragments = fc.constantFrom(
  'all:',
  'children:',
  'hosts:',
  'vars:',
  'server:',
  'agent:',
  '  ',
  '    ',
  '\n',
  '- ',
  ': ',
  '? ',
  '&a ',
  '*a',
  '*b',
  '<<: *a',
  '!!str ',
  '!!binary ',
  '!foo ',
  '{',
  '}',
  '[',
  ']',
  ',',
  '"',
  "'",
  '#',
  '---\n',
  '...\n',
  '%YAML 1.2\n',
  '\t',
  'address: 10.0.0.1',
  'ansible_host: ',
  'pi-k3s:',
  '|\n',
  '>-\n',
  '\ufeff',
  '\r\n',
)
const noise = fc
  .array(fc.oneof(fragments, fc.string({ maxLength: 4 })), { maxLength: 40 })
  .map((parts) => parts.join(''))
const spliced = fc
  .tuple(
    document.map((d) => stringify(d)),
    fc.nat(),
    fc.nat(),
    noise,
  )
  .map(([text, a, b, insert]) => {
    const i = a % (text.length + 1)
    const j = Math.min(text.length, i + (b % 8))
    return text.slice(0, i) + insert + text.slice(j)
  })
const yamlText = fc.oneof(
  { weight: 3, arbitrary: document.map((d) => stringify(d)) },
  { weight: 2, arbitrary: spliced },
  { weight: 1, arbitrary: noise },
)

// ---------------------------------------------------------------- the property

type Outcome = { loaded: Inventory } | { refused: ProvisionError }

/** Load; anything thrown that is not a ProvisionError fails the property, with the text that caused it. */
function load(text: string): Outcome {
  try {
    return { loaded: parseInventory(text, FILE) }
  } catch (e) {
    if (e instanceof ProvisionError) return { refused: e }
    throw new Error(
      `not a ProvisionError: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}\n--- text ---\n${text}`,
      { cause: e },
    )
  }
}

function checkOutcome(o: Outcome): void {
  if ('refused' in o) {
    const e = o.refused
    expect(e.kind).toBe('inventory')
    expect(e.place.file).toBe(FILE)
    expect(e.problems.length).toBeGreaterThan(0)
    for (const p of e.problems) {
      expect(p.place.file).toBe(FILE)
      expect(p.place.line).toBeGreaterThanOrEqual(1)
      expect(p.place.col).toBeGreaterThanOrEqual(1)
      expect(p.message.length).toBeGreaterThan(0)
    }
    expect(typeof e.describe()).toBe('string')
    return
  }
  // What loads is consistent: every host in "all" and in a group of its own, each with an address.
  const inv = o.loaded
  const all = inv.groups.get('all') ?? []
  for (const [name, h] of inv.hosts) {
    expect(all).toContain(name)
    expect(h.groups[0]).toBe('all')
    expect(h.groups.length).toBeGreaterThan(1)
    expect(h.vars.address).toBeDefined()
    for (const g of h.groups) expect(inv.groups.get(g)).toContain(name)
  }
}

describe('generated inventories: each loads or is refused with the file named, never another exception', () => {
  const stats = { loaded: 0, refused: 0 }

  it('generated structures (groups, hosts, variables with good, random and hostile keys and values)', () => {
    fc.assert(
      fc.property(document, (doc) => {
        const o = load(stringify(doc))
        checkOutcome(o)
        stats['loaded' in o ? 'loaded' : 'refused']++
      }),
      { numRuns: 1200 },
    )
    // Both sides are reached: a generator whose inventories never load would test only the refusals.
    expect(stats.loaded).toBeGreaterThan(25)
    expect(stats.refused).toBeGreaterThan(25)
  }, 30_000)

  it('YAML text: generated, cut and spliced with YAML syntax, and noise', () => {
    fc.assert(
      fc.property(yamlText, (text) => checkOutcome(load(text))),
      { numRuns: 2000 },
    )
  }, 30_000)

  it('what loads passes checkHosts, and random -e either parses or is a usage error', () => {
    const extraPair = fc.oneof(
      fc
        .tuple(fc.constantFrom(...varNames), fc.oneof(fc.string({ maxLength: 12 }), hostile))
        .map(([k, v]) => `${k}=${v}`),
      fc.oneof(fc.string({ maxLength: 16 }), hostile),
    )
    fc.assert(
      fc.property(document, fc.array(extraPair, { maxLength: 4 }), (doc, pairs) => {
        let extra
        try {
          extra = parseExtraVars(pairs)
        } catch (e) {
          if (!(e instanceof ProvisionError)) throw e
          expect(e.kind).toBe('usage')
          for (const p of e.problems) expect(p.message).toMatch(/^-e /)
          return
        }
        const o = load(stringify(doc))
        if (!('loaded' in o)) return
        expect(() => checkHosts(o.loaded, {})).not.toThrow()
        try {
          checkHosts(o.loaded, extra)
        } catch (e) {
          if (!(e instanceof ProvisionError)) throw e
          for (const p of e.problems)
            expect(p.kind === 'usage' ? p.message : p.place.file).toMatch(
              p.kind === 'usage' ? /^-e / : /generated\.yaml$/,
            )
        }
      }),
      { numRuns: 600 },
    )
  }, 30_000)
})
