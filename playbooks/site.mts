#!/usr/bin/env zx
// The whole cluster, in the order the owner used to do it by hand:
// prepare every Pi, install the server, join the agents.
import { main } from '../lib/cli.ts'
import { piPrep } from '../roles/pi-prep.ts'

await main({
  name: 'site',
  plays: [{ name: 'Prepare the Pis', hosts: 'all', roles: [piPrep] }],
})
