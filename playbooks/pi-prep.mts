#!/usr/bin/env zx
// Only the preparation of the Pis (cgroups, swap, packages, modules, sysctls, reboot where needed).
import { main } from '../lib/cli.ts'
import { piPrep } from '../roles/pi-prep.ts'

await main({ name: 'pi-prep', plays: [{ name: 'Prepare the Pis', hosts: 'all', roles: [piPrep] }] })
