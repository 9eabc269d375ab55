#!/usr/bin/env zx
// The whole cluster, in the order the owner used to do it by hand:
// prepare every Pi, install the server, then join the agents (concurrently, within --forks),
// then Flux on the server (ESO's 1Password secret first) and the apps it reconciles, checked from here.
import { main } from '../lib/cli.ts'
import { apps } from '../roles/apps.ts'
import { fluxBootstrap } from '../roles/flux-bootstrap.ts'
import { k3sAgent } from '../roles/k3s-agent.ts'
import { k3sServer } from '../roles/k3s-server.ts'
import { piPrep } from '../roles/pi-prep.ts'

await main({
  name: 'site',
  plays: [
    { name: 'Prepare the Pis', hosts: 'all', roles: [piPrep] },
    { name: 'Install the k3s server', hosts: 'server', roles: [k3sServer], anyErrorsFatal: true },
    { name: 'Join the agents', hosts: 'agent', roles: [k3sAgent] },
    { name: 'Bootstrap Flux', hosts: 'server', roles: [fluxBootstrap], anyErrorsFatal: true },
    { name: 'Check the apps', hosts: 'server', roles: [apps] },
  ],
})
