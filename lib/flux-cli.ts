// The flux CLI on the server: which version is there (`flux --version`), which release archive fits the Pi's
// architecture, and the script that installs it (checked before it replaces a working flux).

import { defineFact } from './facts.ts'
import { normVersion } from './flux-bootstrap-plan.ts'
import { FLUX_BIN } from './kube.ts'
import { quote } from './shell.ts'

/** `flux --version` -> "2.7.3"; null when there is no flux. */
export function parseFluxVersion(stdout: string): string | null {
  const m = /^flux version v?(\S+)/m.exec(stdout)
  return m ? m[1] : null
}

export const fluxCliFact = defineFact(
  'flux-cli',
  `if [ -x ${FLUX_BIN} ]; then ${FLUX_BIN} --version 2>&1 | head -n 1; else echo none; fi`,
  (r) => parseFluxVersion(r.stdout),
)
export const archFact = defineFact('dpkg-arch', 'dpkg --print-architecture 2>/dev/null || uname -m', (r) =>
  r.stdout.trim(),
)

/** Flux's release names for an architecture as dpkg (or uname) reports it. */
export function fluxArch(arch: string): string {
  const map: Record<string, string> = {
    arm64: 'arm64',
    aarch64: 'arm64',
    armhf: 'arm',
    armel: 'arm',
    armv7l: 'arm',
    armv6l: 'arm',
    amd64: 'amd64',
    x86_64: 'amd64',
  }
  return map[arch] ?? arch
}

/** flux_url with {version} and {arch} filled in. */
export function fluxDownloadUrl(template: string, version: string, arch: string): string {
  return template.replaceAll('{version}', normVersion(version)).replaceAll('{arch}', fluxArch(arch))
}

/**
 * Download, check (sha256 when pinned; the binary's own --version always) and only then put in place, so a
 * wrong download never replaces a working flux. A release tarball (.tar.gz) holds the binary `flux`.
 */
export function fluxInstallScript(url: string, version: string, sha256?: string): string {
  const v = normVersion(version)
  const tarball = /\.(tar\.gz|tgz)(\?.*)?$/.test(new URL(url).pathname + new URL(url).search)
  const lines = [
    'set -e',
    'work=$(mktemp -d)',
    `trap 'rm -rf "$work"' EXIT`,
    `curl -sfSL --retry 3 -o "$work/download" ${quote(url)} ` +
      `|| { echo ${quote(`cannot download ${url}`)} >&2; exit 1; }`,
  ]
  if (sha256) {
    const want = sha256.trim().toLowerCase()
    lines.push(
      `got=$(sha256sum "$work/download" | cut -d' ' -f1)`,
      `if [ "$got" != ${quote(want)} ]; then ` +
        `echo ${quote(`sha256 of ${url} is`)} "$got," ${quote(`not ${want} (flux_sha256)`)} >&2; exit 1; fi`,
    )
  }
  if (tarball)
    lines.push(
      `tar -xzf "$work/download" -C "$work" flux || { echo ${quote(`no file "flux" in ${url}`)} >&2; exit 1; }`,
    )
  else lines.push('mv "$work/download" "$work/flux"')
  lines.push(
    'chmod 0755 "$work/flux"',
    `got=$("$work/flux" --version 2>&1 | head -n 1) || true`,
    `if [ "$got" != ${quote(`flux version ${v}`)} ]; then ` +
      `echo 'the downloaded flux says' "\\"$got\\"," ` +
      `${quote(`not "flux version ${v}" (flux_version)`)} >&2; exit 1; fi`,
    `install -m 0755 -o root -g root "$work/flux" ${FLUX_BIN}.new`,
    `mv -f ${FLUX_BIN}.new ${FLUX_BIN}`,
  )
  return lines.join('\n')
}
