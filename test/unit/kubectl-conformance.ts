// The kubectl conformance list (issue 13): every kubectl command line the product can issue, as a data structure
// the product's own sources are checked against (kubectl-conformance.test.ts: a line the code issues and the list
// lacks, or a line the list names and the code no longer issues, fails), and each of whose lines runs with the real
// kubectl against the k3s stand-in's API (standin-kubeapi.test.ts, which fails when one of them did not run there).
//
// A line is what goes between `k3s kubectl --kubeconfig ...` and `--` (the operands, each quoted by the builder, are
// not part of it): the verb literal given to kubectl(), `get QUERY -o json` for kubeGet / kubeFact / kubeFactKinds,
// and the text after `${KUBECTL} ` in a template that writes the command line by hand. A `${...}` part of a literal is
// kept when it names a product constant (`${KS}`: UPPER_CASE) and written `<n>` otherwise (a number, a quoted value).

import { readdirSync, readFileSync } from 'node:fs'
import { join, relative, resolve } from 'node:path'
import ts from 'typescript'
import { GITREPO, HR, KS } from '../../lib/kube.ts'
import { ESO_NAMESPACE } from '../../lib/external-secrets.ts'
import { CLUSTER_KINDS } from '../../roles/apps.ts'

export interface ConformanceEntry {
  /** The command line, as the extractor writes it. */
  line: string
  /** Who issues it and what the product reads from the answer (the test in standin-kubeapi.test.ts runs it so). */
  what: string
}

export const CONFORMANCE: readonly ConformanceEntry[] = [
  // Reads (facts and polls), parsed by parseKubeJson (kubeFact / kubeGet) or parseNode.
  { line: 'get node -o json', what: 'k3s-server, k3s-upgrade, nodeOnServer, k3s-retire (kubeFact): parseNode' },
  { line: 'get nodes -o json', what: 'k3s-upgrade, k3s-upgrade-run: kubeGet(nodes, Node)' },
  { line: 'get nodes,pods -A -o json', what: 'os-update, k3s-upgrade-agent (kubeGet), k3s-retire (kubeFact)' },
  { line: 'get ${KS} -A -o json', what: 'apps: kubeGet, the Kustomizations to ask to reconcile' },
  { line: 'get ${KS},${HR} -A -o json', what: 'apps: kubeGet, the wait until all are Ready' },
  {
    line: 'get ${KS} flux-system -n flux-system --ignore-not-found -o json',
    what: 'flux-bootstrap: kubeGet, the root Kustomization (none yet is [])',
  },
  {
    line: 'get ${CLUSTER_KINDS} -A -o json',
    what: "apps: kubeFactKinds, one List of every kind; kind by kind while a CRD is missing (kubeFactKinds' own loop)",
  },
  {
    line: 'get -f - --ignore-not-found -o jsonpath=<n>',
    what: "flux-bootstrap: kubeFactNamed, named objects and a Secret's digest (never its value)",
  },
  // Writes, checked afterwards through `get node -o json` + parseNode or a read above.
  { line: 'create namespace ${ESO_NAMESPACE}', what: 'flux-bootstrap: the namespace of the ESO Secret' },
  {
    line: 'apply --server-side --field-manager=pi-provision --force-conflicts -f -',
    what: 'flux-bootstrap: the ESO Secret (manifest on stdin)',
  },
  { line: 'label --overwrite node', what: 'planNodeMetadata (k3s node labels): set and remove (k-) labels' },
  { line: 'taint node', what: 'planNodeMetadata: remove a taint this tool set (key:Effect-)' },
  { line: 'taint --overwrite node', what: 'planNodeMetadata: add or change a taint (key=value:Effect)' },
  {
    line: 'annotate --overwrite node',
    what: 'planNodeMetadata (managed keys); markAndDrain: the drained-by mark',
  },
  {
    line: 'drain --ignore-daemonsets --delete-emptydir-data --timeout=<n>s',
    what: 'drainNode (os-update, k3s-upgrade, k3s-retire): evictions honouring PDBs',
  },
  { line: 'uncordon', what: 'os-update, k3s-upgrade-agent: after the drain' },
  { line: 'annotate node', what: 'os-update, k3s-upgrade-agent: remove the drained-by mark (MARK-)' },
  { line: 'annotate --overwrite -n <n>', what: 'apps: ask a Kustomization to reconcile (requestedAt)' },
  { line: 'delete node', what: 'k3s-agent (rejoin), k3s-retire' },
]

/** Product constants a line may name, with their values (to match a line as issued). */
export const LINE_CONSTANTS: Readonly<Record<string, string>> = {
  KS,
  HR,
  GITREPO,
  ESO_NAMESPACE,
  CLUSTER_KINDS: CLUSTER_KINDS.join(','),
}

/** A command line the code issues, and where. */
export interface Found {
  line: string
  at: string
}

/** The builders themselves (lib/kube.ts): their own kubectl() calls are made of their callers' arguments. */
const BUILDERS = new Set(['kubectl', 'kubeFact', 'kubeFactKinds', 'kubeFactNamed', 'kubeGet', 'clusterCalls'])
const CONSTANT = /^[A-Z][A-Z0-9_]*$/

/** A string or template literal as a line's text, or undefined when the expression is not a literal. */
function literal(node: ts.Expression | undefined): string | undefined {
  if (!node) return undefined
  if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return node.text
  if (ts.isTemplateExpression(node)) {
    let s = node.head.text
    for (const span of node.templateSpans) s += placeholder(span.expression) + span.literal.text
    return s
  }
  return undefined
}

function placeholder(e: ts.Expression): string {
  return ts.isIdentifier(e) && CONSTANT.test(e.text) ? `\${${e.text}}` : '<n>'
}

/** Where a hand-written line ends: the operands (` -- `), a redirection, the next command. */
const LINE_END = / --(?: |$)|\s+(?:\d?>|&&|\|\|?|;)|\n/

function insideBuilder(node: ts.Node): boolean {
  for (let p = node.parent; p; p = p.parent)
    if (ts.isFunctionDeclaration(p) && p.name && BUILDERS.has(p.name.text)) return true
  return false
}

/**
 * Every kubectl command line a TypeScript source issues through the builders of lib/kube.ts or a `${KUBECTL} ...`
 * template. A call whose line is not a literal shows as `<not a literal: ...>`, so it cannot pass unseen.
 */
export function extractKubectlLines(source: string, file = 'source.ts'): Found[] {
  const sf = ts.createSourceFile(file, source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS)
  const found: Found[] = []
  const add = (line: string, node: ts.Node) => {
    const { line: l } = sf.getLineAndCharacterOfPosition(node.getStart(sf))
    found.push({ line, at: `${file}:${l + 1}` })
  }
  const arg = (call: ts.CallExpression, i: number) => {
    const text = literal(call.arguments[i])
    if (text !== undefined) return text
    const a = call.arguments[i]
    if (a && ts.isIdentifier(a) && CONSTANT.test(a.text)) return `\${${a.text}}`
    return `<not a literal: ${a ? a.getText(sf) : 'missing'}>`
  }
  const visit = (node: ts.Node) => {
    if (ts.isCallExpression(node) && ts.isIdentifier(node.expression) && !insideBuilder(node)) {
      const name = node.expression.text
      if (name === 'kubectl') add(arg(node, 0), node)
      else if (name === 'kubeGet' || name === 'kubeFact') add(`get ${arg(node, 1)} -o json`, node)
      else if (name === 'kubeFactKinds') add(`get ${arg(node, 1)} ${arg(node, 2)} -o json`, node)
      else if (name === 'kubeFactNamed') add('get -f - --ignore-not-found -o jsonpath=<n>', node)
    }
    if (ts.isTemplateExpression(node) && !insideBuilder(node)) {
      const i = node.templateSpans.findIndex((s) => ts.isIdentifier(s.expression) && s.expression.text === 'KUBECTL')
      if (i >= 0) {
        let rest = node.templateSpans[i].literal.text
        for (const span of node.templateSpans.slice(i + 1)) rest += placeholder(span.expression) + span.literal.text
        add(rest.trimStart().split(LINE_END)[0].trim(), node)
      }
    }
    ts.forEachChild(node, visit)
  }
  visit(sf)
  return found
}

const ROOT = resolve(import.meta.dirname, '../..')
/** Where the product's sources are. */
export const PRODUCT_DIRS = ['lib', 'roles', 'playbooks']

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? sources(join(dir, e.name))
      : /\.m?ts$/.test(e.name) && !e.name.endsWith('.d.ts')
        ? [join(dir, e.name)]
        : [],
  )
}

/** Every command line the product's sources issue (under `root`: the repository, or a copy of it). */
export function productLines(root = ROOT): Found[] {
  return PRODUCT_DIRS.flatMap((d) => sources(join(root, d))).flatMap((f) =>
    extractKubectlLines(readFileSync(f, 'utf8'), relative(root, f)),
  )
}

/** What the code issues and the list lacks, and what the list names and the code no longer issues. */
export function compareWithList(
  found: readonly Found[],
  list: readonly ConformanceEntry[] = CONFORMANCE,
): { missing: string[]; stale: string[] } {
  const listed = new Set(list.map((e) => e.line))
  const issued = new Set(found.map((f) => f.line))
  const missing = [...issued]
    .filter((l) => !listed.has(l))
    .map(
      (l) =>
        `${l}  (${found
          .filter((f) => f.line === l)
          .map((f) => f.at)
          .join(', ')})`,
    )
  const stale = [...listed].filter((l) => !issued.has(l))
  return { missing, stale }
}

/** A list line as a pattern for a line as issued: constants by value, `<n>` any text. */
export function linePattern(line: string): RegExp {
  const re = line
    .split(/(\$\{[A-Z][A-Z0-9_]*\}|<n>)/)
    .map((part) => {
      if (part === '<n>') return '.+'
      const c = /^\$\{([A-Z][A-Z0-9_]*)\}$/.exec(part)
      if (c) {
        const v = LINE_CONSTANTS[c[1]]
        if (v === undefined) throw new Error(`conformance line "${line}": no value for \${${c[1]}} in LINE_CONSTANTS`)
        return v.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
      }
      return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
    })
    .join('')
  return new RegExp(`^${re}$`)
}

/** The command lines a script runs through `prefix` (the product's KUBECTL), as lines (operands left off). */
export function issuedLines(script: string, prefix: string): string[] {
  return script
    .split(`${prefix} `)
    .slice(1)
    .map((after) => after.split(LINE_END)[0].trim())
}
