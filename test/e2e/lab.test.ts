// The lab itself, as a user of it sees it: hosts with their names and addresses, real SSH with the lab's key
// and known_hosts, reboots that are reboots, SD-card failure, network cuts, recovery after a killed run,
// and a `down` that leaves nothing behind. Needs root on Linux (it boots containers); see test/lab/README.md.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync, existsSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { createArtifactServer } from '../lab/artifacts.ts'
import { containerLeaders } from '../lab/host.ts'
import {
  DEFAULT_HOSTS,
  LAB_ARTIFACT_BASE,
  LAB_DIR,
  LAB_KEY,
  LAB_KNOWN_HOSTS,
  LAB_SECRETS_FILE,
  labAddress,
  labBootId,
  labCut,
  labDown,
  labExec,
  labHeal,
  labStart,
  labStatus,
  labStop,
  labUp,
  labWipe,
  type LabHost,
} from '../lab/lab.ts'
import { otherLabBridges, sshBanner } from '../lab/network.ts'
import { IP_FORWARD_SAVED, LAB_ARTIFACT_PORT, LAB_BRIDGE, LAB_SUBNET, REPO_DIR, hostPaths } from '../lab/paths.ts'
import { processes } from '../lab/procs.ts'
import { run } from '../lab/run.ts'
import { until } from './helpers.ts'

const CMDLINE =
  'console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n'

function ssh(address: string, command: string): { code: number; out: string } {
  const r = spawnSync(
    'ssh',
    [
      '-i',
      LAB_KEY,
      '-o',
      `UserKnownHostsFile=${LAB_KNOWN_HOSTS}`,
      '-o',
      'StrictHostKeyChecking=yes',
      '-o',
      'BatchMode=yes',
      '-o',
      'ConnectTimeout=5',
      `pi@${address}`,
      command,
    ],
    { encoding: 'utf8' },
  )
  return { code: r.status ?? -1, out: r.stdout + r.stderr }
}

function hostKey(address: string): string {
  return execFileSync('ssh-keyscan', ['-t', 'ed25519', '-T', '5', address], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  }).trim()
}

async function exec(name: string, command: string): Promise<string> {
  const r = await labExec(name, command)
  expect(r, `${name}: ${command}`).toMatchObject({ code: 0 })
  return r.stdout.trim()
}

/** Live (non-zombie) processes that belong to this lab (another lab, the user's, may be up beside it). */
function labProcesses(): string[] {
  return processes()
    .filter(
      (p) =>
        (p.argv[0]?.endsWith('systemd-nspawn') && p.argv.some((a) => a.startsWith(`${LAB_DIR}/`))) ||
        p.argv.some((a) => a.startsWith(`pi-lab-supervisor:${LAB_DIR}:`)) ||
        (p.argv.some((a) => a.endsWith('/artifacts.ts')) && p.argv.includes(LAB_DIR)),
    )
    .map((p) => `${p.pid} ${p.argv.join(' ').slice(0, 120)}`)
}

/** TCP ports something listens on, from /proc/net/tcp (no network probe: without the bridge, lab addresses route off the machine). */
function listeningPorts(): number[] {
  return readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[3] === '0A')
    .map((f) => parseInt(f[1].split(':')[1], 16))
}

// The original, saved by the first lab up (this one or another lab beside it).
const ipForwardBefore = existsSync(IP_FORWARD_SAVED)
  ? readFileSync(IP_FORWARD_SAVED, 'utf8')
  : readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8')

let hosts: LabHost[] = []

beforeAll(async () => {
  const started = Date.now()
  hosts = await labUp(DEFAULT_HOSTS, { fresh: true })
  console.log(`lab up (fresh disks) in ${((Date.now() - started) / 1000).toFixed(1)} s`)
})

afterAll(async () => {
  await labDown()
})

describe('lab hosts', () => {
  test('boot the three hosts of the real cluster, each with its name, address, python3 and Pi OS boot files', async () => {
    expect(hosts.map((h) => [h.name, h.address, h.state, h.cut])).toEqual([
      ['pi-k3s', `${LAB_SUBNET}.55`, 'running', false],
      ['pi3-worker-1', `${LAB_SUBNET}.53`, 'running', false],
      ['pi3-worker-2', `${LAB_SUBNET}.51`, 'running', false],
    ])
    for (const h of hosts) {
      expect(await exec(h.name, 'hostname')).toBe(h.name)
      expect(await exec(h.name, 'ip -4 -o addr show dev host0')).toContain(`inet ${h.address}/24`)
      expect(await exec(h.name, 'python3 -c "print(6 * 7)"')).toBe('42')
      expect(await exec(h.name, 'cat /boot/firmware/cmdline.txt')).toBe(CMDLINE.trim())
      expect((await labExec(h.name, 'cat /boot/firmware/cmdline.txt')).stdout).toBe(CMDLINE)
      expect(await exec(h.name, 'test -f /boot/firmware/config.txt && sqlite3 -version >/dev/null && echo ok')).toBe(
        'ok',
      )
      expect(
        await exec(
          h.name,
          'stat -c "%n %a %U" /etc/hostname /etc/sudoers.d/010_pi-nopasswd /home/pi/.ssh/authorized_keys',
        ),
      ).toBe('/etc/hostname 644 root\n/etc/sudoers.d/010_pi-nopasswd 440 root\n/home/pi/.ssh/authorized_keys 600 pi')
    }
  })

  test('labExec runs a shell command as root with the given input and returns its exit code', async () => {
    expect(await labExec('pi-k3s', 'id -un; wc -c', { input: 'hello' })).toEqual({
      code: 0,
      stdout: 'root\n5\n',
      stderr: '',
    })
    expect(await labExec('pi-k3s', 'echo oops >&2; exit 3')).toEqual({ code: 3, stdout: '', stderr: 'oops\n' })
  })

  test('answer SSH from the controller: the lab key logs in as pi, known_hosts verifies, sudo needs no password', () => {
    for (const h of hosts) {
      const r = ssh(h.address, 'sudo -n cat /etc/hostname')
      expect(r, r.out).toMatchObject({ code: 0 })
      expect(r.out.trim()).toBe(h.name)
    }
  })

  test('lab credentials are private files in the documented format', () => {
    expect(statSync(LAB_KEY).mode & 0o777).toBe(0o600)
    expect(statSync(LAB_SECRETS_FILE).mode & 0o777).toBe(0o600)
    const secrets = readFileSync(LAB_SECRETS_FILE, 'utf8')
    // The lab plants these two; runs may add values of their own (the k3s token they create) below them.
    expect(secrets).toMatch(
      /^pi-cluster:\n {2}onepassword-service-account:\n {4}token: ops_[\w-]{40,}\n {2}flux-github-pat:\n {4}token: ghp_[A-Za-z0-9]{36}\n/,
    )
  })

  test('hosts reach each other and the artifact server on the bridge', async () => {
    const server = labAddress('pi-k3s')
    expect(await exec('pi3-worker-1', `timeout 3 bash -c '</dev/tcp/${server}/22' && echo open`)).toBe('open')
    expect(await exec('pi3-worker-2', `curl -s ${LAB_ARTIFACT_BASE}/_lab/ping`)).toBe('pi-lab artifacts')
    expect(await exec('pi3-worker-2', `curl -s -o /dev/null -w '%{http_code}' ${LAB_ARTIFACT_BASE}/no/such/file`)).toBe(
      '404',
    )
  })

  test('systemctl reboot inside a host is a real reboot: new boot_id, empty /run, SSH back', async () => {
    const name = 'pi3-worker-2'
    // A reboot asked for while the host still boots can be lost (systemd not yet answering on its bus): wait, as a
    // person would, until boot is over.
    const state = await labExec(name, 'systemctl is-system-running --wait', { timeoutMs: 60_000 })
    expect(state.stdout.trim(), state.stderr).toMatch(/^(running|degraded)$/)
    const before = await labBootId(name)
    await exec(name, 'touch /run/before-reboot')
    const consoleLog = hostPaths(name).log
    const consoleBefore = readFileSync(consoleLog, 'utf8').length
    const started = Date.now()
    // The command dies with the host; if it returns on its own, that is an answer worth showing.
    let asked = 'still running'
    void labExec(name, 'systemctl reboot')
      .then((r) => {
        asked = `exit ${r.code}: ${r.stderr.trim()}`
      })
      .catch((e: unknown) => {
        asked = String(e)
      })
    // While it shuts down the host may briefly show no boot_id or the kernel's: wait for one that answers SSH.
    // Bounded past systemd's 90 s stop timeout, so a slow stop job shows in the console rather than as a timeout.
    const after = await until(
      'new boot_id',
      150_000,
      async () => {
        const id = await labBootId(name)
        return id !== before && (await sshBanner(labAddress(name))) ? id : undefined
      },
      100,
    ).catch((e: unknown) => {
      const tail = readFileSync(consoleLog, 'utf8').slice(consoleBefore).split('\n').slice(-40).join('\n')
      throw new Error(`${String(e)}; systemctl reboot: ${asked}; console since:\n${tail}`)
    })
    console.log(`reboot: new boot_id and SSH back in ${Date.now() - started} ms`)
    expect(after).toMatch(/^[0-9a-f-]{36}$/)
    expect(after).not.toBe(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim())
    expect(await exec(name, 'test -e /run/before-reboot && echo kept || echo gone')).toBe('gone')
    expect(ssh(labAddress(name), 'hostname').out.trim()).toBe(name)
  }, 240_000)

  test('wipe is an SD-card failure: same address, new host key, empty disk, known_hosts not updated', async () => {
    const name = 'pi3-worker-1'
    const address = labAddress(name)
    await exec(name, 'touch /home/pi/before-wipe')
    const keyBefore = hostKey(address)
    const knownBefore = readFileSync(LAB_KNOWN_HOSTS, 'utf8')
    expect(knownBefore).toContain(keyBefore)

    const host = await labWipe(name)

    expect(host).toMatchObject({ name, address, state: 'running' })
    const keyAfter = hostKey(address)
    expect(keyAfter).toMatch(new RegExp(`^${address.replaceAll('.', '\\.')} ssh-ed25519 `))
    expect(keyAfter).not.toBe(keyBefore)
    expect(await exec(name, 'ip -4 -o addr show dev host0')).toContain(`inet ${address}/24`)
    expect(await exec(name, 'test -e /home/pi/before-wipe && echo kept || echo gone')).toBe('gone')
    expect(readFileSync(LAB_KNOWN_HOSTS, 'utf8')).toBe(knownBefore)
    expect(ssh(address, 'true').out).toContain('REMOTE HOST IDENTIFICATION HAS CHANGED')
  })

  test('cut takes a host off the network (exec still works); heal brings it back', async () => {
    const name = 'pi-k3s'
    const address = labAddress(name)
    await labCut(name)
    expect(await sshBanner(address, 2000)).toBeUndefined()
    expect((await labStatus()).hosts.find((h) => h.name === name)).toMatchObject({ state: 'running', cut: true })
    expect(await exec(name, 'hostname')).toBe(name)

    await labHeal(name)
    expect(await sshBanner(address)).toMatch(/^SSH-2\.0-OpenSSH/)
    expect((await labStatus()).hosts.find((h) => h.name === name)).toMatchObject({ state: 'running', cut: false })
  })

  test('stop powers a host off, start powers it on with a new boot', async () => {
    const name = 'pi3-worker-2'
    const before = await labBootId(name)
    await labStop(name)
    expect((await labStatus()).hosts.find((h) => h.name === name)).toMatchObject({ state: 'stopped', bootId: null })
    expect(await sshBanner(labAddress(name), 1000)).toBeUndefined()
    await expect(labExec(name, 'true')).rejects.toThrow(/not running/)

    const host = await labStart(name)
    expect(host).toMatchObject({ state: 'running', cut: false })
    expect(host.bootId).not.toBe(before)
    expect(await sshBanner(labAddress(name))).toMatch(/^SSH-2\.0-/)
  })

  test('another lab (own state dir, subnet, bridge, port, machine names) runs beside this one; its down leaves this one as it was', async () => {
    // As the user's lab and the tests' are up at once: both have a pi-k3s.
    const beside = {
      PI_LAB_DIR: `${LAB_DIR}-beside`,
      PI_LAB_SUBNET: '10.199.57',
      PI_LAB_BRIDGE: 'pilabb0',
      PI_LAB_ARTIFACT_PORT: String(LAB_ARTIFACT_PORT + 10),
      PI_LAB_MACHINE_PREFIX: 'b-',
    }
    const cli = (...args: string[]) =>
      run(join(REPO_DIR, 'node_modules/.bin/node'), [join(REPO_DIR, 'test/lab/cli.ts'), ...args], {
        env: { ...process.env, ...beside },
        allowFail: true,
      })
    const before = await labStatus()
    expect(before).toMatchObject({ bridge: 'up', nat: true, artifactServer: { running: true } })
    try {
      const up = await cli('up', 'pi-k3s')
      expect(up, up.stderr).toMatchObject({ code: 0 })
      expect(up.stdout).toMatch(/^pi-k3s +10\.199\.57\.55 +running /)
      const inside = await cli('exec', 'pi-k3s', '--', 'hostname; ip -4 -o addr show dev host0')
      expect(inside.stdout).toMatch(/^pi-k3s\n.* inet 10\.199\.57\.55\/24 /)
      expect(await sshBanner('10.199.57.55')).toMatch(/^SSH-2\.0-/)
      expect(await sshBanner(labAddress('pi-k3s'))).toMatch(/^SSH-2\.0-/)
      expect(await exec('pi-k3s', 'hostname')).toBe('pi-k3s')
      const down = await cli('down', '--purge')
      expect(down, down.stderr).toMatchObject({ code: 0 })
      expect(spawnSync('ip', ['link', 'show', beside.PI_LAB_BRIDGE]).status).not.toBe(0)
    } finally {
      await cli('down', '--purge')
      rmSync(beside.PI_LAB_DIR, { recursive: true, force: true })
    }
    // This lab: the same boots (nothing restarted), bridge, NAT, forwarding and artifact server, reachable.
    expect(await labStatus()).toEqual(before)
    expect(readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8')).toBe('1\n')
    expect(await exec('pi3-worker-2', `curl -s ${LAB_ARTIFACT_BASE}/_lab/ping`)).toBe('pi-lab artifacts')
    // (Disks other test files left, such as a fourth Pi's, are stopped and stay so.)
    for (const h of before.hosts.filter((x) => x.state === 'running'))
      expect(await sshBanner(h.address), h.name).toMatch(/^SSH-2\.0-/)
  })

  test('up recovers a lab whose processes were all killed (mounts, bridge, NAT and pidfiles left behind)', async () => {
    const victims = [
      ...processes()
        .filter((p) => p.argv.some((a) => a.startsWith(`pi-lab-supervisor:${LAB_DIR}:`)))
        .map((p) => p.pid),
      ...processes()
        .filter((p) => p.argv[0]?.endsWith('systemd-nspawn') && p.argv.some((a) => a.startsWith(`${LAB_DIR}/`)))
        .map((p) => p.pid),
      ...processes()
        .filter((p) => p.argv.some((a) => a.endsWith('/artifacts.ts')) && p.argv.includes(LAB_DIR))
        .map((p) => p.pid),
      // This lab's containers only (by their disk): another lab's may be running beside it.
      ...[...containerLeaders()].filter(([upper]) => upper.startsWith(`${LAB_DIR}/`)).map(([, pid]) => pid),
    ]
    for (const pid of victims) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone: killing its supervisor may have taken it down first
      }
    }
    await until('all killed', 10_000, async () => (labProcesses().length === 0 ? true : undefined), 100)
    // Only this test's hosts: others (a benchmark's twelve) may have disks in the state dir too.
    const ours = (await labStatus()).hosts.filter((h) => DEFAULT_HOSTS.includes(h.name))
    expect(ours.map((h) => h.state)).toEqual(['stopped', 'stopped', 'stopped'])

    const recovered = await labUp()
    expect(recovered.map((h) => h.state)).toEqual(['running', 'running', 'running'])
    // up writes known_hosts again, so the wiped host's new key is trusted from here on.
    for (const h of recovered) expect(ssh(h.address, 'hostname').out.trim()).toBe(h.name)
    expect((await labStatus()).artifactServer.running).toBe(true)
  })

  test('down leaves no process, mount, bridge or NAT rule, and restores ip_forward', async () => {
    expect(listeningPorts()).toContain(LAB_ARTIFACT_PORT)
    const started = Date.now()
    await labDown()
    console.log(`lab down in ${Date.now() - started} ms`)
    expect(labProcesses()).toEqual([])
    expect(
      readFileSync('/proc/mounts', 'utf8')
        .split('\n')
        .filter((l) => l.includes(LAB_DIR)),
    ).toEqual([])
    expect(spawnSync('ip', ['link', 'show', LAB_BRIDGE]).status).not.toBe(0)
    expect(execFileSync('iptables', ['-t', 'nat', '-S'], { encoding: 'utf8' })).not.toContain(`${LAB_SUBNET}.0/24`)
    expect(execFileSync('iptables', ['-S'], { encoding: 'utf8' })).not.toMatch(new RegExp(`[ !]${LAB_BRIDGE} `))
    // With another lab still up (the user's), forwarding stays on for its NAT; the last lab down restores it.
    const others = await otherLabBridges()
    expect(readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8')).toBe(others.length ? '1\n' : ipForwardBefore)
    expect(existsSync(IP_FORWARD_SAVED)).toBe(others.length > 0)
    expect(listeningPorts()).not.toContain(LAB_ARTIFACT_PORT)
    const status = await labStatus()
    expect(status).toMatchObject({ bridge: 'missing', nat: false, artifactServer: { running: false } })
    expect(status.hosts.map((h) => h.state).every((s) => s === 'stopped')).toBe(true)
  })
})

describe('artifact server', () => {
  test('serves files by path with the base URL filled in; 404 for missing files and anything outside its root', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pi-lab-artifacts-'))
    const root = join(dir, 'standins')
    mkdirSync(join(root, 'k3s'), { recursive: true })
    writeFileSync(join(root, 'k3s', 'install.sh'), '#!/bin/sh\ncurl -sfL @@ARTIFACT_BASE@@/k3s/k3s-arm64\n')
    writeFileSync(join(dir, 'secret.txt'), 'outside\n')
    symlinkSync(join(dir, 'secret.txt'), join(root, 'escape.txt'))
    const server = createArtifactServer({ root, base: 'http://10.0.0.1:8780' })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    try {
      const install = await fetch(`${url}/k3s/install.sh`)
      expect(install.status).toBe(200)
      expect(await install.text()).toBe('#!/bin/sh\ncurl -sfL http://10.0.0.1:8780/k3s/k3s-arm64\n')
      for (const path of [
        '/k3s/missing',
        '/k3s',
        '/../secret.txt',
        '/%2e%2e/secret.txt',
        '/k3s/..%2f..%2fsecret.txt',
        '/escape.txt',
      ]) {
        const res = await fetch(url + path)
        expect(res.status, path).toBe(404)
        expect(await res.text(), path).not.toContain('outside')
      }
    } finally {
      server.close()
    }
  })
})
