// The inventory of the lab this process runs on: inventory/lab.yaml is written for the user's lab (its
// addresses, state dir and artifact server); another lab (the tests', see test-lab.ts) gets the same text with its
// own values put in, line for line (so a place in it is the same line and column as in lab.yaml), written into its
// state dir. Tests take it from LAB_INVENTORY (test/e2e/helpers.ts).
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import {
  LAB_ARTIFACT_BASE,
  LAB_ARTIFACT_PORT,
  LAB_DIR,
  LAB_INVENTORY_FILE,
  LAB_SUBNET,
  REPO_DIR,
  USER_LAB,
} from './paths.ts'

export const USER_LAB_INVENTORY = join(REPO_DIR, 'inventory', 'lab.yaml')

const USER_ARTIFACT_BASE = `http://${USER_LAB.subnet}.1:${USER_LAB.artifactPort}`

/** lab.yaml's text with this lab's artifact server, state dir and subnet in place of the user's lab's. */
export function labInventoryText(text: string): string {
  const subnet = new RegExp(`\\b${USER_LAB.subnet.replaceAll('.', '\\.')}\\.(?=\\d)`, 'g')
  const out = text
    .replaceAll(USER_ARTIFACT_BASE, LAB_ARTIFACT_BASE)
    .replaceAll(`${USER_LAB.dir}/`, `${LAB_DIR}/`)
    .replace(subnet, `${LAB_SUBNET}.`)
  // Anything of the user's lab still there (a new kind of value in lab.yaml) would send a test to the user's lab.
  const left = [
    LAB_DIR !== USER_LAB.dir && `${USER_LAB.dir}/`,
    LAB_SUBNET !== USER_LAB.subnet && `${USER_LAB.subnet}.`,
    LAB_ARTIFACT_PORT !== USER_LAB.artifactPort && `:${USER_LAB.artifactPort}`,
  ].filter((s): s is string => typeof s === 'string' && out.includes(s))
  if (left.length) {
    throw new Error(
      `inventory/lab.yaml names the user's lab in a way inventory.ts does not rewrite: ${left.join(', ')}`,
    )
  }
  return out
}

/**
 * The path of this lab's inventory: inventory/lab.yaml itself on the user's lab, else the rewritten copy in the
 * lab's state dir (written when missing or out of date, by temp file and rename).
 */
export function labInventory(): string {
  const text = readFileSync(USER_LAB_INVENTORY, 'utf8')
  const mine = labInventoryText(text)
  if (mine === text) return USER_LAB_INVENTORY
  if (!existsSync(LAB_INVENTORY_FILE) || readFileSync(LAB_INVENTORY_FILE, 'utf8') !== mine) {
    mkdirSync(dirname(LAB_INVENTORY_FILE), { recursive: true })
    const tmp = `${LAB_INVENTORY_FILE}.tmp-${process.pid}`
    writeFileSync(tmp, mine)
    renameSync(tmp, LAB_INVENTORY_FILE)
  }
  return LAB_INVENTORY_FILE
}
