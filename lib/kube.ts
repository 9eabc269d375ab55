// The one client for the cluster: `k3s kubectl` on the server, over the server's own SSH connection (the same place
// `sudo k3s kubectl` works by hand, so the controller needs no kubeconfig and no route to :6443). Command lines are
// built here, with every name an operand after `--`, so no value from an inventory, a flag or the cluster can become
// an option of kubectl. Reads are facts (batched with a role's other facts) or polls; both parse the same way.
// A Node's labels and taints: lib/node-metadata.ts.

import { ProvisionError } from './errors.ts'
import { defineFact, type Fact } from './facts.ts'
import type { RunResult } from './connection.ts'
import type { StepContext } from './role.ts'
import { quote } from './shell.ts'

export const KUBECONFIG = '/etc/rancher/k3s/k3s.yaml'
export const KUBECTL = `k3s kubectl --kubeconfig ${KUBECONFIG}`

/**
 * A kubectl command line: the verb and the tool's own flags as written, then `--` and the operands, each quoted.
 * `kubectl('delete node', name)` -> k3s kubectl ... delete node -- 'name'. Flags after `--` would be operands, so
 * every flag goes in `verb`.
 */
export function kubectl(verb: string, ...operands: string[]): string {
  return operands.length ? `${KUBECTL} ${verb} -- ${operands.map(quoteOperand).join(' ')}` : `${KUBECTL} ${verb}`
}

/**
 * quote(), and a word starting with "-" quoted too, so a reader sees it is data
 * (after `--` kubectl takes it as such).
 */
function quoteOperand(word: string): string {
  const q = quote(word)
  return q.startsWith('-') ? `'${q}'` : q
}

/** The flux CLI on the server (flux-bootstrap installs it), with k3s's admin kubeconfig. */
export const FLUX_BIN = '/usr/local/bin/flux'
export const FLUX = `${FLUX_BIN} --kubeconfig ${KUBECONFIG}`

/**
 * The kubectl and flux processes a script starts, counted from the lines built here (KUBECTL, FLUX_BIN): what the
 * runner records per host and role, so a change that adds a cluster call to every run shows in the recap (-v).
 * A test for the flux binary (`[ -x flux ]`) or its install (`flux.new`) is not a call.
 */
export function clusterCalls(script: string): { kubectl: number; flux: number } {
  return {
    kubectl: script.split(`${KUBECTL} `).length - 1,
    flux: script.split(`${FLUX_BIN} `).filter((after, i) => i > 0 && !after.startsWith(']')).length,
  }
}

export const KS = 'kustomizations.kustomize.toolkit.fluxcd.io'
export const HR = 'helmreleases.helm.toolkit.fluxcd.io'
export const GITREPO = 'gitrepositories.source.toolkit.fluxcd.io'

export interface Condition {
  type: string
  status: string
  reason?: string
  message?: string
}

export interface KubeObject {
  apiVersion?: string
  kind?: string
  metadata: {
    name: string
    namespace?: string
    uid?: string
    generation?: number
    resourceVersion?: string
    labels?: Record<string, string>
    annotations?: Record<string, string>
    ownerReferences?: { kind: string; name: string; uid?: string }[]
  }
  spec?: Record<string, unknown>
  status?: Record<string, unknown>
  data?: Record<string, string>
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function isKubeObject(v: unknown): v is KubeObject {
  return isRecord(v) && isRecord(v.metadata) && typeof v.metadata.name === 'string'
}

const ABSENT = /\(NotFound\)|doesn't have a resource type|no matches for kind/
/** sh's exit status for a command it cannot find: `k3s` is not installed on the host. */
export const NO_K3S = 127

/**
 * `kubectl get ... -o json` (a List or one object): the objects. Nothing found (NotFound, --ignore-not-found,
 * or a kind whose CRD is not installed yet) is []. Any other failure throws, naming what was asked.
 */
export function parseKubeJson(r: RunResult, what: string): KubeObject[] {
  // No k3s on the host at all (a --check of a fresh Pi): no cluster, so none of what was asked for.
  if (r.code === NO_K3S) return []
  if (r.code !== 0) {
    if (ABSENT.test(r.stderr)) return []
    throw new ProvisionError(
      'step',
      `kubectl get ${what} failed (exit ${r.code}): ` +
        `${(r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join(' ')}`,
    )
  }
  const text = r.stdout.trim()
  if (text === '') return []
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new ProvisionError('step', `kubectl get ${what}: the answer is not JSON: ${text.slice(0, 120)}`)
  }
  if (isRecord(parsed) && Array.isArray(parsed.items)) return parsed.items.filter(isKubeObject)
  if (isKubeObject(parsed)) return [parsed]
  throw new ProvisionError('step', `kubectl get ${what}: unexpected answer: ${text.slice(0, 120)}`)
}

export function conditionOf(obj: KubeObject | undefined, type = 'Ready'): Condition | undefined {
  const conds = obj?.status?.conditions
  if (!Array.isArray(conds)) return undefined
  for (const c of conds)
    if (isRecord(c) && c.type === type && typeof c.status === 'string')
      return {
        type,
        status: c.status,
        reason: typeof c.reason === 'string' ? c.reason : undefined,
        message: typeof c.message === 'string' ? c.message : undefined,
      }
  return undefined
}

export function isReady(obj: KubeObject | undefined): boolean {
  return conditionOf(obj)?.status === 'True'
}

export function nameOf(obj: KubeObject): string {
  return obj.metadata.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : obj.metadata.name
}

/** A string field at a path of an object (spec.path, spec.ref.branch, ...). */
export function field(obj: KubeObject | undefined, ...path: string[]): string | undefined {
  let cur: unknown = obj
  for (const p of path) cur = isRecord(cur) ? cur[p] : undefined
  return typeof cur === 'string' ? cur : typeof cur === 'number' ? String(cur) : undefined
}

/** A cluster read gathered as a fact: the objects, or why they could not be read (thrown when a step uses them). */
export interface KubeRead {
  objects: KubeObject[]
  error?: string
}

/** Separates kubectl's stdout from its error output in a fact's answer (facts keep stdout only). */
export const KUBE_STDERR = '@@kubectl-stderr@@'

/**
 * `kubectl get QUERY -o json` as a fact, so a role's cluster reads travel with its other facts and run side by
 * side on the server. QUERY may list several types (`a,b,c`): kubectl answers one List whose items carry their
 * kind. The scope (a role name) keeps one role from reusing another's read: the cluster changes while this host
 * does not (agents join), and the fact cache is only dropped when this host changes.
 */
export function kubeFact(scope: string, query: string, ...names: string[]): Fact<KubeRead> {
  const script = [
    'e=$(mktemp -p /dev/shm 2>/dev/null || mktemp) || exit 125',
    `${kubectl(`get ${query} -o json`, ...names)} 2>"$e"`,
    'rc=$?',
    `[ $rc -eq 0 ] || { printf '\\n%s\\n' '${KUBE_STDERR}'; cat "$e"; }`,
    'rm -f "$e"',
    'exit $rc',
  ].join('\n')
  return defineFact(`kube:${scope}:${[query, ...names].join(' ')}`, script, (r) => {
    const cut = r.stdout.indexOf(`\n${KUBE_STDERR}\n`)
    const stdout = cut < 0 ? r.stdout : r.stdout.slice(0, cut)
    const stderr = cut < 0 ? r.stderr : r.stdout.slice(cut + KUBE_STDERR.length + 2)
    try {
      return { objects: parseKubeJson({ code: r.code, stdout, stderr }, [query, ...names].join(' ')) }
    } catch (e) {
      return { objects: [], error: e instanceof Error ? e.message : String(e) }
    }
  })
}

/** Separates the answers of a read that had to ask kind by kind (see kubeFactKinds). */
const KUBE_NEXT = '@@kubectl-next@@'
/** An error line that only says a kind or object is not there (no CRD yet, NotFound), not that the read failed. */
const ABSENT_LINE = /\(NotFound\)|doesn't have a resource type|no matches for kind|ensure CRDs are installed first/

/** A fact's answer: stdout, then (after KUBE_STDERR) kubectl's error output, split apart. */
function splitAnswer(r: RunResult): { stdout: string; stderr: string } {
  const cut = r.stdout.indexOf(`\n${KUBE_STDERR}\n`)
  return cut < 0
    ? { stdout: r.stdout, stderr: r.stderr }
    : { stdout: r.stdout.slice(0, cut), stderr: r.stdout.slice(cut + KUBE_STDERR.length + 2) }
}

/** A failed read whose every error line only says something is not there: what did answer still counts. */
function onlyAbsent(stderr: string): boolean {
  const lines = stderr.split('\n').filter((l) => l.trim())
  return lines.length > 0 && lines.every((l) => ABSENT_LINE.test(l))
}

/**
 * Every object of several kinds in one kubectl process: `kubectl get A,B,C -A -o json`, one List whose items carry
 * their kind (`where` is `-A` or `-n NS`). This is how a role reads the cluster once per run. A kind the cluster
 * does not have yet (a CRD not installed) makes kubectl refuse the whole line; then, and only then, each kind is
 * asked on its own, so the others still answer (and the missing one reads as none).
 */
export function kubeFactKinds(scope: string, kinds: readonly string[], where: string): Fact<KubeRead> {
  const all = kinds.join(',')
  const script = [
    'e=$(mktemp -p /dev/shm 2>/dev/null || mktemp) || exit 125',
    `${kubectl(`get ${all} ${where} -o json`)} 2>"$e"`,
    'rc=$?',
    `if [ $rc -ne 0 ] && grep -q "doesn't have a resource type" "$e"; then`,
    '  : >"$e"; rc=0',
    // Through a variable, so clusterCalls counts the line above as the read's one kubectl: these run only until
    // the cluster has every kind asked (a CRD not installed yet), and then once per kind.
    `  k=${quote(KUBECTL)}`,
    `  for kind in ${kinds.map(quote).join(' ')}; do`,
    `    printf '\\n%s\\n' '${KUBE_NEXT}'`,
    `    $k get "$kind" ${where} -o json 2>>"$e" || rc=$?`,
    '  done',
    'fi',
    `[ $rc -eq 0 ] || { printf '\\n%s\\n' '${KUBE_STDERR}'; cat "$e"; }`,
    'rm -f "$e"',
    'exit $rc',
  ].join('\n')
  return defineFact(`kube:${scope}:${all} ${where}`, script, (r) => {
    const { stdout, stderr } = splitAnswer(r)
    const what = `${all} ${where}`
    if (r.code !== 0 && r.code !== NO_K3S && !onlyAbsent(stderr))
      return { objects: [], error: kubeError(r.code, stderr || stdout, what) }
    try {
      const objects = stdout
        .split(`\n${KUBE_NEXT}\n`)
        .flatMap((part) => parseKubeJson({ code: r.code === NO_K3S ? NO_K3S : 0, stdout: part, stderr: '' }, what))
      return { objects }
    } catch (e) {
      return { objects: [], error: e instanceof Error ? e.message : String(e) }
    }
  })
}

function kubeError(code: number, text: string, what: string): string {
  return `kubectl get ${what} failed (exit ${code}): ${text.trim().split('\n').slice(-3).join(' ')}`
}

/** One object by kind and name (namespace for a namespaced kind), as `kubectl get -f` names it. */
export interface ObjectRef {
  apiVersion: string
  kind: string
  name: string
  namespace?: string
}

/** What kubeFactNamed read: the objects that exist, and the salted digest of the Secret's key (when it exists). */
export interface NamedRead extends KubeRead {
  secretDigest?: string
}

/** An object of Kubernetes itself (core, apps, batch...), which every cluster knows, unlike a CRD's. */
const builtinKind = (r: ObjectRef) => !r.apiVersion.includes('.')

/**
 * Named objects of any kinds and namespaces in one kubectl process (`kubectl get -f -` of a List naming them; the
 * ones that do not exist are left out). A Secret among them is not read: the server answers the sha256 of `salt`
 * + "<name>=<base64 value of secretKey>", and the controller compares that with the digest of the value it wants,
 * so the value never leaves the server. When the cluster lacks a CRD the list names (no Flux yet), kubectl reads
 * nothing at all; then the built-in kinds are asked alone.
 */
export function kubeFactNamed(
  scope: string,
  refs: readonly ObjectRef[],
  secret: { key: string; salt: string },
): Fact<NamedRead> {
  if (!/^[A-Za-z0-9_.-]+$/.test(secret.key)) throw new ProvisionError('step', `bad Secret key ${secret.key}`)
  const list = (rs: readonly ObjectRef[]) =>
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'List',
      items: rs.map((r) => ({
        apiVersion: r.apiVersion,
        kind: r.kind,
        metadata: r.namespace ? { name: r.name, namespace: r.namespace } : { name: r.name },
      })),
    })
  // One line per object (JSON), and the Secret as "@@secret name=<base64 value>", which never leaves the server.
  const template =
    '{range .items[?(@.kind!="Secret")]}{@}{"\\n"}{end}' +
    `{range .items[?(@.kind=="Secret")]}@@secret {.metadata.name}={.data.${secret.key}}{"\\n"}{end}`
  const get = (kubectl: string, rs: readonly ObjectRef[]) =>
    `${kubectl} get -f - --ignore-not-found -o jsonpath=${quote(template)} 2>"$e" <<'EOF'\n${list(rs)}\nEOF`
  const script = [
    'e=$(mktemp -p /dev/shm 2>/dev/null || mktemp) || exit 125',
    `out=$(${get(KUBECTL, refs)}\n)`,
    'rc=$?',
    `if [ $rc -ne 0 ] && grep -q 'no matches for kind' "$e"; then`,
    // Only before the CRDs exist; through a variable, so clusterCalls counts the read as its first kubectl.
    `  k=${quote(KUBECTL)}`,
    `  out=$(${get('$k', refs.filter(builtinKind))}\n  )`,
    '  rc=$?',
    'fi',
    `printf '%s\\n' "$out" | while IFS= read -r l; do`,
    '  case $l in',
    // printf is a shell builtin: the value is in no process's argv.
    `    '@@secret '*) printf '@@digest '; printf '%s' ${quote(secret.salt)}"\${l#@@secret }"` +
      ` | sha256sum | cut -d' ' -f1 ;;`,
    `    *) printf '%s\\n' "$l" ;;`,
    '  esac',
    'done',
    `[ $rc -eq 0 ] || { printf '\\n%s\\n' '${KUBE_STDERR}'; cat "$e"; }`,
    'rm -f "$e"',
    'exit $rc',
  ].join('\n')
  const what = refs.map((r) => `${r.kind} ${r.namespace ? `${r.namespace}/` : ''}${r.name}`).join(', ')
  return defineFact(`kube:${scope}:named ${what} ${secret.salt}`, script, (r): NamedRead => {
    const { stdout, stderr } = splitAnswer(r)
    if (r.code === NO_K3S) return { objects: [] }
    if (r.code !== 0 && !onlyAbsent(stderr))
      return { objects: [], error: kubeError(r.code, stderr || stdout, `-f - (${what})`) }
    const objects: KubeObject[] = []
    let secretDigest: string | undefined
    for (const line of stdout.split('\n')) {
      if (!line.trim()) continue
      const d = /^@@digest ([0-9a-f]{64})$/.exec(line)
      if (d) {
        secretDigest = d[1]
        continue
      }
      try {
        const o: unknown = JSON.parse(line)
        if (isKubeObject(o)) objects.push(o)
        else throw new Error('not an object')
      } catch {
        return { objects: [], error: `kubectl get -f - (${what}): unexpected answer: ${line.slice(0, 120)}` }
      }
    }
    return { objects, secretDigest }
  })
}

/**
 * A cluster read now, outside the fact cache (polls): the same script and parser as kubeFact, errors thrown.
 * `on` is the step's context, or the server's HostHandle for a read made from another host's step.
 */
export async function kubeGet(
  on: Pick<StepContext, 'sh'>,
  query: string,
  kind?: string,
  ...names: string[]
): Promise<KubeObject[]> {
  const read = kubeFact('now', query, ...names)
  return kubeObjects(read.parse(await on.sh(read.script)), kind)
}

/** The objects of a cluster read, optionally of one kind; the read's error is thrown here, where a step needs it. */
export function kubeObjects(read: KubeRead, kind?: string): KubeObject[] {
  if (read.error) throw new ProvisionError('step', read.error)
  return kind ? read.objects.filter((o) => o.kind === kind) : read.objects
}
