// `npm run lab -- <command>`: thin wiring over lab.ts. Errors are one line on stderr and exit code 1.
// `npm run lab -- --test-lab <command>` is the same on the lab the tests run on (test-lab.ts).
import { spawn } from 'node:child_process'
import type { LabHost } from './lab.ts'
import { TEST_LAB_ENV } from './test-lab.ts'

// Before anything imports paths.ts, which reads the environment once.
const testLab = process.argv[2] === '--test-lab'
if (testLab) Object.assign(process.env, TEST_LAB_ENV)
const { execArgv } = await import('./host.ts')
const {
  DEFAULT_HOSTS,
  DEFAULT_SUITE,
  LabError,
  SUITES,
  labCut,
  labDown,
  labHeal,
  labStart,
  labStatus,
  labStop,
  labUp,
  labWipe,
} = await import('./lab.ts')
const { ensureTools } = await import('./run.ts')
const { LAB_BRIDGE, LAB_DIR } = await import('./paths.ts')

const USAGE = `usage: npm run lab -- [--test-lab] <command>
  --test-lab               the lab the tests run on (${TEST_LAB_ENV.PI_LAB_DIR}), not yours
  up [NAME...] [--fresh] [--suite SUITE]
                           boot hosts (default: ${DEFAULT_HOSTS.join(' ')}); --fresh = freshly flashed disks;
                           --suite: Debian ${SUITES.join(' or ')} for new (or --fresh) disks (default ${DEFAULT_SUITE})
  down [--purge]           stop everything; --purge also deletes the host disks
  status                   hosts, bridge, NAT and artifact server
  state                    JSON, read without touching any host: hosts running since, k3s token and datastore on
                           each disk, credentials, NAS folder, bridge, NAT (what .ci/readme-flow compares)
  stop HOST | start HOST   power off / on
  wipe HOST                SD card failure: fresh disk, new SSH host keys, same name and address
  cut HOST | heal HOST     take the host off the network / put it back
  exec HOST -- CMD...      run CMD as root inside the host (not over the network)`

function table(hosts: readonly LabHost[]): string {
  return hosts
    .map((h) =>
      [
        h.name.padEnd(14),
        h.address.padEnd(14),
        (h.state + (h.cut ? ',cut' : '')).padEnd(12),
        h.suite.padEnd(9),
        h.bootId ?? '-',
      ].join(' '),
    )
    .join('\n')
}

function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`
}

/** Streams the command's output and returns its exit code. */
async function execCommand(host: string, cmd: readonly string[]): Promise<number> {
  await ensureTools(['nsenter'])
  // One argument is a shell command line as typed; several are argv words to keep as they are.
  const command = cmd.length === 1 ? cmd[0] : cmd.map(shellQuote).join(' ')
  const [bin, ...args] = execArgv(host, command)
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: 'inherit' })
    child.on('error', reject)
    child.on('close', (code, signal) => resolve(code ?? (signal ? 128 : 1)))
  })
}

function oneHost(args: readonly string[], cmd: string): string {
  if (args.length !== 1) throw new LabError(`${cmd} takes one host name\n${USAGE}`)
  return args[0]
}

async function main(argv: readonly string[]): Promise<number> {
  const [cmd, ...words] = argv
  // --suite takes a value (--suite trixie or --suite=trixie); every other option is a bare flag.
  let suite: string | undefined
  const rest: string[] = []
  for (let i = 0; i < words.length; i++) {
    if (words[i] === '--' || cmd === 'exec') {
      rest.push(...words.slice(i))
      break
    }
    if (words[i] === '--suite') {
      suite = words[++i]
      if (suite === undefined) throw new LabError(`--suite needs a value: ${SUITES.join(' or ')}`)
    } else if (words[i].startsWith('--suite=')) suite = words[i].slice('--suite='.length)
    else rest.push(words[i])
  }
  if (suite !== undefined && cmd !== 'up') throw new LabError(`${cmd}: unknown option --suite\n${USAGE}`)
  const flags = rest.filter((a) => a.startsWith('--'))
  const args = rest.filter((a) => !a.startsWith('--'))
  const allow = (...known: string[]): void => {
    const bad = flags.filter((f) => !known.includes(f))
    if (bad.length) throw new LabError(`${cmd}: unknown option ${bad.join(' ')}\n${USAGE}`)
  }
  switch (cmd) {
    case 'up': {
      allow('--fresh')
      const started = Date.now()
      const hosts = await labUp(args.length ? args : DEFAULT_HOSTS, { fresh: flags.includes('--fresh'), suite })
      console.log(table(hosts))
      console.error(`lab: up in ${((Date.now() - started) / 1000).toFixed(1)} s`)
      return 0
    }
    case 'down':
      allow('--purge')
      await labDown({ purge: flags.includes('--purge') })
      console.log(flags.includes('--purge') ? 'lab is down; host disks deleted' : 'lab is down; host disks kept')
      return 0
    case 'status': {
      allow()
      const s = await labStatus()
      console.log(s.hosts.length ? table(s.hosts) : 'no hosts (npm run lab -- up)')
      console.log(
        `bridge ${LAB_BRIDGE}: ${s.bridge}  nat: ${s.nat ? 'on' : 'off'}  artifacts: ${s.artifactServer.running ? s.artifactServer.url : 'not running'}  state: ${LAB_DIR}`,
      )
      return 0
    }
    case 'state': {
      allow()
      const { labState } = await import('./state.ts')
      console.log(JSON.stringify(await labState(), null, 2))
      return 0
    }
    case 'stop':
      allow()
      await labStop(oneHost(args, cmd))
      return 0
    case 'start':
      allow()
      console.log(table([await labStart(oneHost(args, cmd))]))
      return 0
    case 'wipe':
      allow()
      console.log(table([await labWipe(oneHost(args, cmd))]))
      return 0
    case 'cut':
      allow()
      await labCut(oneHost(args, cmd))
      return 0
    case 'heal':
      allow()
      await labHeal(oneHost(args, cmd))
      return 0
    case 'exec': {
      const sep = rest.indexOf('--')
      if (sep !== 1 || rest.length < 3) throw new LabError(`usage: npm run lab -- exec HOST -- CMD...`)
      return execCommand(rest[0], rest.slice(sep + 1))
    }
    case undefined:
    case 'help':
    case '--help':
      console.log(USAGE)
      return cmd === undefined ? 2 : 0
    default:
      throw new LabError(`unknown command "${cmd}"\n${USAGE}`)
  }
}

main(process.argv.slice(testLab ? 3 : 2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`lab: error: ${e instanceof Error ? e.message : String(e)}`)
    if (process.env.PI_LAB_DEBUG && e instanceof Error) console.error(e.stack)
    process.exit(1)
  },
)
