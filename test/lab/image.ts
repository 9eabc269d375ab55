// The lab's "SD card images": a Debian root made to look like Raspberry Pi OS Lite, one per suite (bookworm, the
// default, and trixie: Debian 12 and 13), each built once with debootstrap and cached under a name derived from its
// recipe, so changing a recipe is what rebuilds that image (and only that one).
// Everything per host (hostname, address, SSH host keys, login key) is written at first boot instead
// (see host.ts), which keeps this image independent of the state dir.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { ARTIFACT_ROOT, LAB_CACHE, LAB_DIR, USER_LAB } from './paths.ts'
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

export const SUITES = ['bookworm', 'trixie'] as const
export type Suite = (typeof SUITES)[number]
/** What a host gets unless told otherwise (labUp's suite, `up --suite`): the owner's Debian 12 Pis. */
export const DEFAULT_SUITE: Suite = 'bookworm'

export function isSuite(s: string): s is Suite {
  return (SUITES as readonly string[]).includes(s)
}

interface Recipe {
  suite: Suite
  mirror: string
  variant: string
  packages: string[]
  files: { path: string; mode: number; content: string }[]
  script: string
}

/**
 * Everything that decides the bookworm image's content. Its hash names the cached image: this object is exactly what
 * it was when the lab had only bookworm, so the image already in the cache stays valid (test/unit/lab-image.test.ts).
 */
const RECIPE: Recipe = {
  suite: 'bookworm',
  mirror: 'http://deb.debian.org/debian',
  variant: 'minbase',
  // ca-certificates depends on openssl, which the k3s stand-in runs to make its CA and certificates (kubeapi.py);
  // python3-yaml is PyYAML, which the k3s stand-in parses config.yaml and apply bodies with.
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
    'python3-yaml',
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

// Raspberry Pi OS trixie ships /etc/rpi/swap.conf with every setting commented out (swap.conf(5)): the defaults.
const RPI_SWAP_CONF = `# rpi-swap configuration; see swap.conf(5). Defaults shown commented out.
# Prefer drop-ins in /etc/rpi/swap.conf.d/ to editing this file.
[Main]
#Mechanism=auto

[File]
#Path=/var/swap
#RamMultiplier=1
#MaxSizeMiB=2048
#MaxDiskPercent=50
`

/** A stand-in's text (test/standins/): part of the recipe, so editing the stand-in rebuilds the trixie image. */
function standin(path: string): string {
  return readFileSync(join(ARTIFACT_ROOT, path), 'utf8')
}

/** The bookworm script without what only dphys-swapfile needs (trixie has no dphys-swapfile). */
function withoutDphysSwapfile(script: string): string {
  const out = script
    .replace(/^# dphys-swapfile cannot.*\n.*\n.*CONF_SWAPSIZE=16.*\n/m, '')
    .replace(' dphys-swapfile.service', '')
  if (out.includes('dphys')) throw new LabError('image.ts: the trixie script still mentions dphys-swapfile')
  return out
}

/**
 * Debian 13 as on the owner's Pi 5s: no dphys-swapfile; Debian's real systemd-zram-generator package, run in a
 * container through the stand-in wrapper (the real binary does nothing there by design), and the rpi-swap generator
 * stand-in with Pi OS's swap.conf (Pi OS trixie's rpi-swap depends on systemd-zram-generator, so a Pi OS host has
 * both). A plain Debian 13 host has only the zram generator: the lab removes the rpi-swap files from its disk (see
 * RPI_SWAP_FILES). See test/standins/README.md.
 */
const TRIXIE_RECIPE: Recipe = {
  ...RECIPE,
  suite: 'trixie',
  packages: RECIPE.packages.filter((p) => p !== 'dphys-swapfile'),
  files: [
    ...RECIPE.files,
    { path: '/etc/rpi/swap.conf', mode: 0o644, content: RPI_SWAP_CONF },
    {
      path: '/usr/lib/systemd/system-generators/rpi-swap-generator',
      mode: 0o755,
      content: standin('rpi-swap/rpi-swap-generator'),
    },
    {
      path: '/etc/systemd/system-generators/zram-generator',
      mode: 0o755,
      content: standin('zram-generator/zram-generator'),
    },
  ],
  script: withoutDphysSwapfile(RECIPE.script),
}

const RECIPES: Record<Suite, Recipe> = { bookworm: RECIPE, trixie: TRIXIE_RECIPE }

/** The files that make a trixie host "Pi OS" (rpi-swap) rather than plain Debian 13. */
export const RPI_SWAP_FILES = ['/usr/lib/systemd/system-generators/rpi-swap-generator', '/etc/rpi/swap.conf']

/** The recipe of a suite's image (read by the unit test). */
export function recipeFor(suite: Suite): Readonly<Recipe> {
  return RECIPES[suite]
}

export function imageIdFor(suite: Suite): string {
  return createHash('sha256').update(JSON.stringify(RECIPES[suite])).digest('hex').slice(0, 12)
}

/** The default suite's (bookworm) image. */
export const IMAGE_ID = imageIdFor(DEFAULT_SUITE)
export const IMAGE_DIR = imageDir(IMAGE_ID)

export function imageDir(id: string): string {
  return join(LAB_CACHE, `image-${id}`)
}

/**
 * Builds the suite's image unless the cache has it, into a temp dir of this process renamed at the end: never half
 * an image, and two processes building at once (two labs) do not disturb each other.
 */
export async function ensureImage(say: (line: string) => void, suite: Suite = DEFAULT_SUITE): Promise<void> {
  const recipe = RECIPES[suite]
  const id = imageIdFor(suite)
  const dir = imageDir(id)
  const log = `${dir}.log`
  if (existsSync(dir)) return
  mkdirSync(LAB_CACHE, { recursive: true })
  await removeStaleBuilds()
  const tmp = `${dir}.tmp-${process.pid}`
  const started = Date.now()
  say(`building the lab image ${id} (${suite}) with debootstrap (a few minutes, once; log: ${log})`)
  try {
    const boot = await run(
      'debootstrap',
      [`--variant=${recipe.variant}`, `--include=${recipe.packages.join(',')}`, recipe.suite, tmp, recipe.mirror],
      { allowFail: true },
    )
    writeFileSync(log, boot.stdout + boot.stderr)
    if (boot.code !== 0) {
      const why = (boot.stderr.trim() || boot.stdout.trim()).split('\n').pop()
      throw new LabError(`debootstrap failed (${why}); see ${log}`)
    }
    for (const f of recipe.files) {
      mkdirSync(dirname(join(tmp, f.path)), { recursive: true })
      writeFileSync(join(tmp, f.path), f.content, { mode: f.mode })
    }
    const setup = await run('chroot', [tmp, '/bin/sh', '-c', recipe.script], { allowFail: true })
    writeFileSync(log, setup.stdout + setup.stderr, { flag: 'a' })
    if (setup.code !== 0)
      throw new LabError(`image setup script failed: ${setup.stderr.trim().split('\n').pop()}; see ${log}`)
    await unmountUnder(tmp)
    // Another lab sharing the cache may have built the same recipe meanwhile: its image is as good as this one.
    if (existsSync(dir)) rmSync(tmp, { recursive: true, force: true })
    else renameSync(tmp, dir)
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
  const inUse = new Set(SUITES.map(imageIdFor))
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
