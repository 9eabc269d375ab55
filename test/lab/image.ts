// The lab's "SD card image": a Debian bookworm root made to look like Raspberry Pi OS Lite, built once with
// debootstrap and cached under a name derived from the recipe, so changing the recipe is what rebuilds it.
// Everything per host (hostname, address, SSH host keys, login key) is written at first boot instead
// (see host.ts), which keeps this image independent of the state dir.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { LAB_CACHE, LAB_DIR, USER_LAB } from './paths.ts'
import { alive } from './procs.ts'
import { LabError, run } from './run.ts'
import { unmountUnder } from './mounts.ts'

const CMDLINE =
  'console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n'

const CONFIG_TXT = `# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Run in 64-bit mode
arm_64bit=1

[all]
`

const BOOT_RETRY = `#!/bin/sh
# pi-lab (not part of a Pi): start again the units that exited 219/CGROUP during this boot.
for attempt in 1 2 3 4 5; do
  again=
  for u in $(systemctl list-units --failed --plain --no-legend --type=service | awk '{print $1}'); do
    [ "$(systemctl show -p ExecMainStatus --value "$u")" = 219 ] && again="$again $u"
  done
  [ -z "$again" ] && exit 0
  echo "pi-lab: started again after 219/CGROUP:$again"
  systemctl reset-failed $again
  systemctl restart $again || true
  sleep 1
done
exit 1
`

const BOOT_RETRY_UNIT = `[Unit]
Description=pi-lab: start again units that failed at boot with 219/CGROUP (a lab artifact, not a Pi's)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pi-lab-boot-retry
Restart=on-failure
RestartSec=1

[Install]
WantedBy=multi-user.target
`

/** Everything that decides the image's content. Its hash names the cached image. */
const RECIPE = {
  suite: 'bookworm',
  mirror: 'http://deb.debian.org/debian',
  variant: 'minbase',
  // ca-certificates depends on openssl, which the k3s stand-in runs to make its CA and certificates (kubeapi.py).
  packages: [
    'systemd',
    'systemd-sysv',
    'openssh-server',
    'sudo',
    'dbus',
    'iproute2',
    'curl',
    'ca-certificates',
    'dphys-swapfile',
    'iptables',
    'python3',
    'kmod',
    'procps',
    'systemd-zram-generator',
    'sqlite3',
  ],
  files: [
    { path: '/boot/firmware/cmdline.txt', mode: 0o755, content: CMDLINE },
    { path: '/boot/firmware/config.txt', mode: 0o755, content: CONFIG_TXT },
    { path: '/etc/sudoers.d/010_pi-nopasswd', mode: 0o440, content: 'pi ALL=(ALL) NOPASSWD: ALL\n' },
    { path: '/etc/ssh/sshd_config.d/10-pi-lab.conf', mode: 0o644, content: 'UseDNS no\nPasswordAuthentication no\n' },
    // Lab only, not a Pi's: on this machine's hybrid cgroups, a unit started during a container's boot now and then
    // exits 219/CGROUP before it runs (seen: systemd-user-sessions, which then refuses every login, systemd-sysctl,
    // systemd-update-utmp; about one boot in 30). Such units are started again once the boot is done.
    { path: '/usr/local/sbin/pi-lab-boot-retry', mode: 0o755, content: BOOT_RETRY },
    { path: '/etc/systemd/system/pi-lab-boot-retry.service', mode: 0o644, content: BOOT_RETRY_UNIT },
  ],
  // Runs in a chroot of the new root after the files are written.
  script: `set -eu
useradd --create-home --shell /bin/bash --groups adm,dialout,cdrom,sudo,audio,video,plugdev,games,users pi
# '*' instead of the default '!': no password login, but not a "locked" account sshd would refuse.
usermod --password '*' pi
install -d -m 0700 -o pi -g pi /home/pi/.ssh
# dphys-swapfile cannot swapon in a container, yet would still write a 2 GB file on every host.
sed -i 's/^#\\?CONF_SWAPSIZE=.*/CONF_SWAPSIZE=16/' /etc/dphys-swapfile
grep -qx 'CONF_SWAPSIZE=16' /etc/dphys-swapfile
systemctl enable ssh.service systemd-networkd.service dphys-swapfile.service pi-lab-boot-retry.service
# Per-host identity is made at first boot: no host keys, no machine id in the image. debootstrap copied
# the controller's hostname and resolv.conf (with the controller's modes): replace them with Pi OS's.
rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id /etc/resolv.conf
: > /etc/machine-id
echo raspberrypi > /etc/hostname
chmod 0644 /etc/hostname /etc/hosts
apt-get clean
`,
}

export const IMAGE_ID = createHash('sha256').update(JSON.stringify(RECIPE)).digest('hex').slice(0, 12)
export const IMAGE_DIR = join(LAB_CACHE, `image-${IMAGE_ID}`)
export const IMAGE_LOG = join(LAB_CACHE, `image-${IMAGE_ID}.log`)

export function imageDir(id: string): string {
  return join(LAB_CACHE, `image-${id}`)
}

/** Builds the image unless the cache has it. Builds into a temp dir renamed at the end: never half an image. */
export async function ensureImage(say: (line: string) => void): Promise<void> {
  if (existsSync(IMAGE_DIR)) return
  mkdirSync(LAB_CACHE, { recursive: true })
  await removeStaleBuilds()
  const tmp = `${IMAGE_DIR}.tmp-${process.pid}`
  const started = Date.now()
  say(`building the lab image ${IMAGE_ID} with debootstrap (a few minutes, once; log: ${IMAGE_LOG})`)
  try {
    const boot = await run(
      'debootstrap',
      [`--variant=${RECIPE.variant}`, `--include=${RECIPE.packages.join(',')}`, RECIPE.suite, tmp, RECIPE.mirror],
      { allowFail: true },
    )
    writeFileSync(IMAGE_LOG, boot.stdout + boot.stderr)
    if (boot.code !== 0) {
      const why = (boot.stderr.trim() || boot.stdout.trim()).split('\n').pop()
      throw new LabError(`debootstrap failed (${why}); see ${IMAGE_LOG}`)
    }
    for (const f of RECIPE.files) {
      mkdirSync(dirname(join(tmp, f.path)), { recursive: true })
      writeFileSync(join(tmp, f.path), f.content, { mode: f.mode })
    }
    const setup = await run('chroot', [tmp, '/bin/sh', '-c', RECIPE.script], { allowFail: true })
    writeFileSync(IMAGE_LOG, setup.stdout + setup.stderr, { flag: 'a' })
    if (setup.code !== 0)
      throw new LabError(`image setup script failed: ${setup.stderr.trim().split('\n').pop()}; see ${IMAGE_LOG}`)
    await unmountUnder(tmp)
    // Another lab sharing the cache may have built the same recipe meanwhile: its image is as good as this one.
    if (existsSync(IMAGE_DIR)) rmSync(tmp, { recursive: true, force: true })
    else renameSync(tmp, IMAGE_DIR)
  } catch (e) {
    await unmountUnder(tmp)
    rmSync(tmp, { recursive: true, force: true })
    throw e
  }
  say(`built the lab image in ${((Date.now() - started) / 1000).toFixed(0)} s`)
}

/** Temp dirs of builds whose process is gone (killed mid-build); debootstrap may have left mounts in them. */
async function removeStaleBuilds(): Promise<void> {
  for (const entry of readdirSync(LAB_CACHE)) {
    const m = /^image-[0-9a-f]+\.tmp-(\d+)$/.exec(entry)
    if (!m || alive(Number(m[1]))) continue
    const dir = join(LAB_CACHE, entry)
    await unmountUnder(dir)
    rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * Labs that use this cache (a line per state dir), so that pruning for one lab keeps the images another lab's
 * disks were flashed from: the user's lab and the tests' share the cache (one debootstrap for both).
 */
const LABS_FILE = join(LAB_CACHE, 'labs')

function labsUsingCache(): string[] {
  let listed: string[] = []
  try {
    listed = readFileSync(LABS_FILE, 'utf8').split('\n').filter(Boolean)
  } catch {}
  if (!listed.includes(LAB_DIR)) {
    listed.push(LAB_DIR)
    mkdirSync(LAB_CACHE, { recursive: true })
    writeFileSync(`${LABS_FILE}.tmp-${process.pid}`, listed.join('\n') + '\n')
    renameSync(`${LABS_FILE}.tmp-${process.pid}`, LABS_FILE)
  }
  // The user's lab may predate this list.
  return [...new Set([...listed, USER_LAB.dir])]
}

/** Old images no host disk of any lab using this cache was flashed from (a disk keeps its image until re-flashed). */
export function pruneImages(): void {
  const inUse = new Set([IMAGE_ID])
  for (const lab of labsUsingCache()) {
    const hostsDir = join(lab, 'hosts')
    if (!existsSync(hostsDir)) continue
    for (const host of readdirSync(hostsDir)) {
      try {
        inUse.add(readFileSync(join(hostsDir, host, 'flashed'), 'utf8').trim())
      } catch {}
    }
  }
  for (const entry of readdirSync(LAB_CACHE)) {
    const m = /^image-([0-9a-f]{12})(\.log)?$/.exec(entry)
    if (m && !inUse.has(m[1])) rmSync(join(LAB_CACHE, entry), { recursive: true, force: true })
  }
}
