// k3s-server: the cluster token from the secrets store (made on first run, so agents and backups
// survive a rebuild), config.yaml from the inventory, the pinned k3s installed only when missing or
// different, a restart only when config or binary changed, then the API and the node Ready, and the
// kubeconfig on the controller.

import { chmodSync, lstatSync, mkdirSync, readFileSync } from 'node:fs'
import { writeFileAtomic } from '../lib/fsutil.ts'
import { dirname } from 'node:path'
import { parseDocument, stringify } from 'yaml'
import { ProvisionError } from '../lib/errors.ts'
import { registerEncodedSecret, registerSecret } from '../lib/mask.ts'
import { flushHandlers, handler, runKey, type Role, type Step, type StepContext } from '../lib/role.ts'
import { file, fileFact, readCredential, systemdUnit, waitUntil } from '../lib/steps.ts'
import { kubectl } from '../lib/kube.ts'
import { backupStoreFor } from '../lib/backup-store.ts'
import { ageText, type BackupChoice, findBackup, localTime, SERVER_DIR, tokenSecret } from '../lib/k3s-backup.ts'
import { quote } from '../lib/shell.ts'
import { counted } from '../lib/words.ts'
import {
  CLUSTER_TOKEN,
  clusterToken,
  extraConfig,
  K3S_CONFIG,
  k3sInstallFact,
  nodeName,
  parseNode,
  renderK3sConfig,
  configNeedsRestart,
  nodeLabelsStep,
  NODE_SEEN,
  checkClusterToken,
  isClusterToken,
} from '../lib/k3s.ts'
import { installerWillRestart, restartHandlerStep, runInstaller, versionChangeRefusal } from '../lib/k3s-install.ts'

/** The server's Node as the API wait read it: the Ready wait starts from it instead of reading again. */
const NODE_JSON = runKey<string>('server node as read by the API wait')

function serverConfig(ctx: StepContext): string {
  const v = ctx.vars
  return renderK3sConfig({
    token: ctx.state.get(CLUSTER_TOKEN),
    'node-name': v.hostname,
    'write-kubeconfig-mode': v.k3s_kubeconfig_mode,
    'tls-san': [...new Set([v.address!, ...v.k3s_tls_san])],
    disable: v.k3s_disable,
    'node-label': v.node_labels,
    'node-taint': v.node_taints,
    ...extraConfig(v.k3s_extra_args),
  })
}

/** Every credential in a kubeconfig is masked from here on: client key and certificate data, tokens, passwords. */
export function registerKubeconfigSecrets(text: string): void {
  const users = (parseDocument(text).toJS() as { users?: { user?: Record<string, unknown> }[] } | null)?.users ?? []
  for (const u of users)
    for (const [k, v] of Object.entries(u.user ?? {})) {
      if (typeof v !== 'string') continue
      if (k.endsWith('-data')) registerEncodedSecret(v)
      else if (k === 'token' || k === 'password') registerSecret(v)
    }
}

/** k3s.yaml as the controller needs it: the server's address instead of 127.0.0.1, and a named context. */
export function rewriteKubeconfig(text: string, serverUrl: string, context: string): string {
  const doc = parseDocument(text)
  const json = doc.toJS() as {
    clusters?: { name: string; cluster: { server: string } }[]
    contexts?: { name: string; context: { cluster: string; user: string } }[]
    users?: { name: string }[]
    'current-context'?: string
  }
  for (const c of json.clusters ?? []) {
    c.cluster.server = serverUrl
    c.name = context
  }
  for (const c of json.contexts ?? []) {
    c.name = context
    c.context.cluster = context
    c.context.user = context
  }
  for (const u of json.users ?? []) u.name = context
  json['current-context'] = context
  return stringify(json)
}

/**
 * A controller file's text and mode, or null when there is none (a symlink counts as none: it is replaced, not
 * followed).
 */
function readController(path: string): { text: string; mode: number } | null {
  try {
    const st = lstatSync(path)
    if (!st.isFile()) return null
    return { text: readFileSync(path, 'utf8'), mode: st.mode }
  } catch {
    return null
  }
}

// Restoring a rebuilt server from the owner's nightly backup (or a snapshot of the tool's): the datastore is only
// usable with the token it was made with, and only if it is in place before k3s first starts: so this runs before
// the install. Everything is read and checked on the controller first (gunzip, integrity_check, kine, the token
// against the secrets store's, the age): the server changes only once the backup is known to be usable. No usable
// backup stops the rebuild: an empty datastore is made only when the owner says so (k3s_restore=none).
const restoreDatastore: Step = {
  name: 'Restore the datastore from the newest usable backup (rebuild only, before k3s first starts)',
  when: (ctx) => Boolean(ctx.vars.k3s_restore && ctx.vars.k3s_restore !== 'none'),
  facts: () => [fileFact(`${SERVER_DIR}/db/state.db`)],
  async plan(ctx) {
    const present = await ctx.facts.get(fileFact(`${SERVER_DIR}/db/state.db`))
    if (present.exists) return { status: 'ok', message: 'the server has a datastore: nothing to restore' }
    const which = ctx.vars.k3s_restore!
    const store = backupStoreFor(ctx)
    if (!store)
      throw new ProvisionError('step', `k3s_restore=${which} but k3s_backup_dir is not set: no backup to restore`, {
        hint: 'set k3s_backup_dir to where the backups are, or rebuild with -e k3s_restore=none for an EMPTY datastore',
      })
    let choice: BackupChoice
    try {
      choice = await findBackup(store, which)
    } finally {
      await store.close()
    }
    // Named every time: a backup that silently stopped being usable is how an owner loses a cluster.
    for (const u of choice.unusable) ctx.warn(`backup ${u.name} in ${store.where} cannot be used: ${u.why}`)
    const b = choice.chosen
    if (!b)
      throw new ProvisionError(
        'step',
        `no usable backup in ${store.where} (${counted(choice.seen, 'folder')} looked like backups` +
          `${choice.seen ? ', none usable: see the warnings above' : ''}); nothing was changed on ${ctx.host}`,
        {
          hint:
            'fix or copy a backup there and run again, or rebuild with -e k3s_restore=none ' +
            'to start the server with an EMPTY datastore (every object of the cluster gone)',
        },
      )
    const age = (Date.now() - b.when.getTime()) / 1000
    const taken = `taken ${localTime(b.when)}, ${ageText(age)} ago`
    if (which === 'latest' && age > ctx.vars.backup_max_age)
      throw new ProvisionError(
        'step',
        `the newest usable backup in ${store.where} is ${b.name} (${taken}), ` +
          `older than backup_max_age (${ageText(ctx.vars.backup_max_age)}): restoring it loses what changed since; ` +
          `nothing was changed on ${ctx.host}`,
        {
          hint:
            'rebuild with -e k3s_restore=latest-anyway to restore it, -e k3s_restore=<folder> for another one, ' +
            'or -e k3s_restore=none for an EMPTY datastore',
        },
      )
    // The datastore is sealed with the token: a mismatch would only show as a k3s crash loop later.
    registerSecret(b.identityInfo.token)
    const { token } = await clusterToken(ctx, false)
    if (tokenSecret(b.identityInfo.token) !== tokenSecret(token))
      throw new ProvisionError(
        'step',
        `backup ${b.name} was taken with another cluster token than the one at ${ctx.vars.k3s_token_ref}: ` +
          'k3s would refuse it ("bootstrap data already found and encrypted with different token"); ' +
          `nothing was changed on ${ctx.host}`,
        {
          hint:
            'restore the token that was in use when the backup was taken into the secrets store, ' +
            'or rebuild with -e k3s_restore=none',
        },
      )
    const what = `backup ${b.name} (datastore, token, tls, cred)`
    const noCred = b.identityInfo.hasCred ? '' : '; no cred/ in the tarball'
    const checked = `${b.db.name}: integrity ok, kine ${b.rows} rows${noCred}`
    return {
      summary: `restore ${what}, ${taken} (${checked})`,
      async apply() {
        // Both travel on stdin (base64). token, tls and cred are unpacked beside their place and moved in; the
        // datastore lands under a temp name and is renamed last, so state.db exists only once all is in place.
        const strip = b.identityInfo.strip ? ` --strip-components=${b.identityInfo.strip}` : ''
        await ctx.must(
          [
            'set -eu',
            'umask 077',
            `S=${SERVER_DIR}`,
            'mkdir -p -m 0700 "$S" "$S/db"',
            't="$S/.restore-identity"',
            'rm -rf "$t"',
            'mkdir -m 0700 "$t"',
            `base64 -d | tar -xzf - -C "$t"${strip} -- ${b.identityInfo.members.map(quote).join(' ')}`,
            'for m in token tls cred; do if [ -e "$t/$m" ]; then rm -rf "$S/$m"; mv "$t/$m" "$S/$m"; fi; done',
            'rm -rf "$t"',
          ].join('\n'),
          { stdin: b.tarball.toString('base64'), what: `restore token, tls and cred of ${b.name}` },
        )
        await ctx.must(
          [
            'set -eu',
            'umask 077',
            `D=${SERVER_DIR}/db`,
            'base64 -d > "$D/.state.db.restore"',
            'rm -f "$D/state.db-wal" "$D/state.db-shm"',
            'mv -f "$D/.state.db.restore" "$D/state.db"',
          ].join('\n'),
          { stdin: b.datastore.toString('base64'), what: `restore the datastore of ${b.name}` },
        )
        return `restored ${what}, ${taken}`
      },
    }
  },
}

export const k3sServer: Role = {
  name: 'k3s-server',
  checkSecrets: checkClusterToken,
  steps: [
    versionChangeRefusal('server'),
    {
      name: 'Get the cluster token from the secrets store (create it on first run)',
      async plan(ctx) {
        const { token, created } = await clusterToken(ctx, true)
        if (!created) return { status: 'ok', message: `token at ${ctx.vars.k3s_token_ref}` }
        // A server set up by hand (adopting an existing cluster): its datastore is sealed with the token it has,
        // and a new one would keep k3s from starting. That token is kept, not replaced.
        const existing = await readCredential(ctx, `${SERVER_DIR}/token`)
        const own = existing.code === 0 ? existing.stdout.trim() : ''
        if (own) {
          if (!isClusterToken(own))
            return { status: 'failed', message: `${SERVER_DIR}/token on this server is not a k3s token` }
          ctx.state.set(CLUSTER_TOKEN, own)
          return {
            summary: `keep this server's own cluster token (${SERVER_DIR}/token) at ${ctx.vars.k3s_token_ref}`,
            apply: () => ctx.secrets.upsert(ctx.vars.k3s_token_ref!, own),
          }
        }
        // Made now, so config.yaml below can be planned with it; stored only when the run is for real.
        return {
          summary: `create a new cluster token at ${ctx.vars.k3s_token_ref}`,
          apply: () => ctx.secrets.upsert(ctx.vars.k3s_token_ref!, token),
        }
      },
    },
    // Before config.yaml: a backup that cannot be used stops the rebuild with nothing of k3s on the server yet.
    restoreDatastore,
    file(
      'Write /etc/rancher/k3s/config.yaml',
      (ctx) => ({
        path: K3S_CONFIG,
        content: serverConfig(ctx),
        mode: '0600',
        secret: true,
        backup: true,
        notifyIf: configNeedsRestart,
      }),
      {
        notify: ['Restart k3s'],
      },
    ),
    {
      name: 'Install k3s (only when missing or another version)',
      facts: () => [k3sInstallFact],
      async plan(ctx) {
        const cur = await ctx.facts.get(k3sInstallFact)
        const want = ctx.vars.k3s_version
        if (cur.version === want && cur.serverUnit) return { status: 'ok', message: `k3s ${want}` }
        if (cur.agentUnit && !cur.serverUnit)
          return {
            status: 'failed',
            message: 'this host runs a k3s agent; uninstall it (k3s-agent-uninstall.sh) before making it the server',
          }
        const what = cur.version ? `upgrade k3s ${cur.version} -> ${want}` : `install k3s ${want} (server)`
        installerWillRestart(ctx)
        return { summary: what, apply: () => runInstaller(ctx, { kind: 'server' }) }
      },
    },
    systemdUnit(
      'Keep k3s enabled and running',
      (ctx) => ({
        unit: 'k3s.service',
        enabled: true,
        active: true,
        startTimeout: { seconds: ctx.vars.k3s_start_timeout, setting: 'k3s_start_timeout' },
      }),
      { onlyForReal: 'k3s is installed only for real' },
    ),
    flushHandlers('Restart k3s if its config changed'),
    {
      name: 'Wait for the API server',
      onlyForReal: 'it waits for the k3s the steps above install and start',
      async plan(ctx) {
        // Asking for this node proves the API answers (it knows the node or says NotFound), and on a rerun the
        // answer is kept for the next step, which then needs no read of its own.
        const name = nodeName(ctx)
        const { seconds } = await waitUntil(
          ctx,
          { timeoutSec: 180, intervalMs: 1000, what: 'the k3s API server' },
          async () => {
            const r = await ctx.sh(kubectl('get node -o json', name))
            const up = r.code === 0 || /NotFound/.test(r.stderr)
            if (r.code === 0) ctx.state.set(NODE_JSON, r.stdout, ctx.host)
            return {
              done: up,
              value: null,
              waitingFor: `last output: ${(r.stderr || r.stdout).trim().split('\n').pop() ?? ''}`,
            }
          },
        )
        return { status: 'ok', message: `API up after ${seconds.toFixed(1)}s` }
      },
    },
    {
      name: 'Wait for the server node to be Ready',
      onlyForReal: 'it waits for the k3s the steps above install and start',
      async plan(ctx) {
        const name = nodeName(ctx)
        let json = ctx.state.get(NODE_JSON, ctx.host)
        ctx.state.delete(NODE_JSON, ctx.host)
        const { value: node, seconds } = await waitUntil(
          ctx,
          { timeoutSec: 180, intervalMs: 1000, what: `node ${name} Ready` },
          async () => {
            if (json === undefined) {
              const r = await ctx.sh(kubectl('get node -o json', name))
              if (r.code === 0) json = r.stdout
            }
            const seen = json === undefined ? undefined : parseNode(0, json, '')
            json = undefined // the next poll reads again
            return {
              done: seen?.ready === true,
              value: seen,
              waitingFor: seen ? 'it is NotReady' : 'it is not registered',
            }
          },
        )
        if (!node) return { status: 'failed', message: `node ${name} is not Ready` }
        ctx.state.set(NODE_SEEN, node, ctx.host) // the labels step next starts from it
        return { status: 'ok', message: `Ready after ${seconds.toFixed(1)}s` }
      },
    },
    nodeLabelsStep(),
    {
      name: 'Fetch the kubeconfig to the controller',
      when: (ctx) => Boolean(ctx.vars.kubeconfig_path),
      async plan(ctx) {
        const path = ctx.vars.kubeconfig_path!
        // The admin credential: read so that its bytes reach this step and no reporter, and masked from now on.
        const r = await readCredential(ctx, '/etc/rancher/k3s/k3s.yaml')
        if (r.code !== 0) {
          // Only a k3s that is not there yet (a --check of a fresh Pi) has none: for real, the waits above saw it up.
          const why = `cannot read /etc/rancher/k3s/k3s.yaml: ${r.stderr.trim()}`
          return {
            summary: `fetch /etc/rancher/k3s/k3s.yaml to ${path} once k3s wrote it`,
            apply: () => Promise.reject(new ProvisionError('step', why)),
          }
        }
        registerKubeconfigSecrets(r.stdout)
        const addr = ctx.vars.address!.includes(':') ? `[${ctx.vars.address}]` : ctx.vars.address!
        const want = rewriteKubeconfig(
          r.stdout,
          `https://${addr}:${ctx.vars.k3s_api_port}`,
          ctx.vars.kubeconfig_context ?? ctx.host,
        )
        const cur = readController(path)
        if (cur?.text === want) {
          // Same content, but readable by others (a copy made by hand, an older tool): the owner's only, as written.
          if ((cur.mode & 0o077) === 0) return { status: 'ok', message: path }
          return {
            summary: `make ${path} 0600 (it is ${(cur.mode & 0o777).toString(8)})`,
            apply: async () => chmodSync(path, 0o600),
          }
        }
        return {
          summary: `write ${path} (context ${ctx.vars.kubeconfig_context ?? ctx.host})`,
          async apply() {
            mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
            // A temp file made with exclusive create, then renamed over the name: never written through a symlink.
            await writeFileAtomic(path, want, 0o600)
          },
        }
      },
    },
  ],
  handlers: [handler(restartHandlerStep('k3s'))],
}
