// What ~, ${VAR} and %-tokens in an ssh config stand for, as ssh_config(5) TOKENS says: IdentityFile's (%% %d %h %i
// %l %L %n %p %r %u) and HostName's (%h %%). Anything else is an "expected ..." text, never a guess.

import { homedir, hostname, userInfo } from 'node:os'

/** What %-tokens and ~ in IdentityFile stand for (as ssh_config(5) TOKENS says). */
export interface TokenValues {
  /** %h: the host name connected to (the address). */
  remoteHost: string
  /** %n: the name as typed (the inventory's name for the host). */
  originalHost: string
  /** %r: the login user. */
  remoteUser: string
  /** %p: the port. */
  port: number
  /** %u, %d, %i, %l, %L: the local user, home, uid, host name (full and short). Default: this process's. */
  localUser?: string
  home?: string
  uid?: number
  localHost?: string
  env?: Record<string, string | undefined>
}

/**
 * IdentityFile with ~ (this user's home), ${VAR} and %-tokens expanded: %% %d %h %i %l %L %n %p %r %u. Returns
 * the path, or an "expected ..." text for what is wrong (an unknown token, an unset variable, ~user).
 */
export function expandIdentityFile(raw: string, v: TokenValues): { path: string } | { error: string } {
  const home = v.home ?? homedir()
  let s = raw
  if (s === '~' || s.startsWith('~/')) s = home + s.slice(1)
  else if (s.startsWith('~')) return { error: 'expected ~/ or a path: ~user is not supported here' }
  const env = v.env ?? process.env
  let out = ''
  for (let i = 0; i < s.length; i++) {
    const c = s[i]
    if (c === '$' && s[i + 1] === '{') {
      const end = s.indexOf('}', i + 2)
      if (end < 0) return { error: 'expected ${NAME} to be closed with "}"' }
      const name = s.slice(i + 2, end)
      const value = env[name]
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
        return { error: `expected an environment variable name in \${${name}}` }
      if (value === undefined)
        return { error: `expected environment variable ${name} to be set (it is used as \${${name}})` }
      out += value
      i = end
      continue
    }
    if (c !== '%') {
      out += c
      continue
    }
    const t = s[++i]
    const local = () => v.localHost ?? hostname()
    const value: string | undefined =
      t === '%'
        ? '%'
        : t === 'd'
          ? home
          : t === 'h'
            ? v.remoteHost
            : t === 'i'
              ? String(v.uid ?? process.getuid?.() ?? 0)
              : t === 'l'
                ? local()
                : t === 'L'
                  ? local().split('.')[0]
                  : t === 'n'
                    ? v.originalHost
                    : t === 'p'
                      ? String(v.port)
                      : t === 'r'
                        ? v.remoteUser
                        : t === 'u'
                          ? (v.localUser ?? userInfo().username)
                          : undefined
    if (value === undefined)
      return {
        error: `expected only the tokens %%, %d, %h, %i, %l, %L, %n, %p, %r and %u, got "%${t ?? ''}"`,
      }
    out += value
  }
  return { path: out }
}

/** HostName with %h (the name as typed) and %% expanded; an "expected ..." text for any other token. */
export function expandHostName(raw: string, originalHost: string): { value: string } | { error: string } {
  let out = ''
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== '%') {
      out += raw[i]
      continue
    }
    const t = raw[++i]
    if (t === '%') out += '%'
    else if (t === 'h') out += originalHost
    else return { error: `expected only the tokens %h and %% in HostName, got "%${t ?? ''}"` }
  }
  return { value: out }
}
