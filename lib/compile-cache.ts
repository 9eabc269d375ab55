// Node's compile cache keeps the type-stripped, compiled code of the tool's modules between runs, which
// roughly halves start-up (0.25 s -> 0.13 s on the lab machine; every run and --list-hosts pays it).
// Each playbook imports this module first and statically, and everything else after it, dynamically:
// static imports are all compiled before any module runs, so only the later ones can use the cache.
// NODE_DISABLE_COMPILE_CACHE=1 turns it off.
import * as nodeModule from 'node:module'

// The playbook's first line has run: what came before is Node's start and zx's (the recap's start-up, -v).
performance.mark('pi-provision:playbook')
const enable = (nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache
enable?.()
