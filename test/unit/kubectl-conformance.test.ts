// The kubectl conformance list (kubectl-conformance.ts) keeps up with the code: every command line the product's
// sources issue is on it, and it names none they no longer issue. Its lines run with the real kubectl against the
// k3s stand-in in standin-kubeapi.test.ts.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { KUBECTL, kubectl } from '../../lib/kube.ts'
import {
  CONFORMANCE,
  compareWithList,
  extractKubectlLines,
  issuedLines,
  linePattern,
  PRODUCT_DIRS,
  productLines,
} from './kubectl-conformance.ts'

const ROOT = resolve(import.meta.dirname, '../..')

describe('the kubectl conformance list', () => {
  it('names every kubectl command line the product issues, and none it no longer issues', () => {
    const found = productLines()
    expect(found.length).toBeGreaterThan(20) // the extractor sees the call sites (31 when this was written)
    expect(compareWithList(found)).toEqual({ missing: [], stale: [] })
  })

  it('has each line once', () => {
    const lines = CONFORMANCE.map((e) => e.line)
    expect(lines).toEqual([...new Set(lines)])
  })

  it('the extractor: verbs of kubectl(), queries of kubeGet / kubeFact / kubeFactKinds, `${KUBECTL} ...` templates', () => {
    const source = [
      '// kubectl("in a comment", x) is not a call',
      "const a = kubectl('frobnicate node', n)",
      'const b = kubectl(`drain --timeout=${seconds}s --grace=${opts.grace}`, node)',
      'const c = `${kubectl(`annotate -n ${quote(ns ?? "x")}`, `${KS}/${k}`, "a=b")} >/dev/null`',
      "const d = await kubeGet(ctx, `${KS},${HR} -A`, 'Kustomization')",
      "const e = kubeFact('scope', 'node', name)",
      "const f = kubeFactKinds('apps', CLUSTER_KINDS, '-A')",
      'const g = `${KUBECTL} create namespace ${NS} >/dev/null && echo ok`',
      'const h = kubectl(verb, name)',
      "const i = kubeFactNamed('s', refs, { key: 'k', salt })",
      'function kubeFact(scope, query) { return kubectl(`get ${query} -o json`) }',
    ].join('\n')
    expect(extractKubectlLines(source, 'x.ts')).toEqual([
      { line: 'frobnicate node', at: 'x.ts:2' },
      { line: 'drain --timeout=<n>s --grace=<n>', at: 'x.ts:3' },
      { line: 'annotate -n <n>', at: 'x.ts:4' },
      { line: 'get ${KS},${HR} -A -o json', at: 'x.ts:5' },
      { line: 'get node -o json', at: 'x.ts:6' },
      { line: 'get ${CLUSTER_KINDS} -A -o json', at: 'x.ts:7' },
      { line: 'create namespace ${NS}', at: 'x.ts:8' },
      { line: '<not a literal: verb>', at: 'x.ts:9' },
      { line: 'get -f - --ignore-not-found -o jsonpath=<n>', at: 'x.ts:10' },
    ])
  })

  describe('a planted line in a copy of the sources', () => {
    const copy = mkdtempSync(join(tmpdir(), 'kubectl-conformance-'))
    afterAll(() => rmSync(copy, { recursive: true, force: true }))

    it('a new kubectl() line the list lacks fails, named with where it is; a line the code drops is stale', () => {
      for (const d of PRODUCT_DIRS) cpSync(join(ROOT, d), join(copy, d), { recursive: true })
      const file = join(copy, 'lib/node-metadata.ts')
      const text = readFileSync(file, 'utf8')
      const planted = text.replace(
        "for (const id of dropTaints) lines.push(kubectl('taint node', name, `${id}-`))",
        "for (const id of dropTaints) lines.push(kubectl('frobnicate node', name, `${id}-`))",
      )
      expect(planted).not.toBe(text)
      writeFileSync(file, planted)
      expect(compareWithList(productLines(copy))).toEqual({
        missing: ['frobnicate node  (lib/node-metadata.ts:83)'],
        stale: ['taint node'],
      })
    })
  })

  it("a line as issued matches its list entry: constants by value, <n> any text; the builders' lines are read back", () => {
    const drain = linePattern('drain --ignore-daemonsets --delete-emptydir-data --timeout=<n>s')
    const issued = issuedLines(
      `${kubectl('drain --ignore-daemonsets --delete-emptydir-data --timeout=30s', 'pi-1')} && ${kubectl('uncordon', 'pi-1')}`,
      KUBECTL,
    )
    expect(issued).toEqual(['drain --ignore-daemonsets --delete-emptydir-data --timeout=30s', 'uncordon'])
    expect(drain.test(issued[0])).toBe(true)
    expect(drain.test('drain --ignore-daemonsets --timeout=30s')).toBe(false)
    expect(linePattern('get ${KS} -A -o json').test('get kustomizations.kustomize.toolkit.fluxcd.io -A -o json')).toBe(
      true,
    )
    expect(linePattern('get ${KS} -A -o json').test('get kustomizationsXkustomize.toolkit.fluxcd.io -A -o json')).toBe(
      false,
    )
    expect(() => linePattern('get ${NOT_KNOWN} -o json')).toThrow(/no value for \$\{NOT_KNOWN\}/)
    for (const e of CONFORMANCE) expect(() => linePattern(e.line)).not.toThrow()
  })
})
