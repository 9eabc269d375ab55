// The common shape of a step primitive (lib/steps.ts): one fact about the thing, a pure plan from it, applied by the
// context; and the kind of change the pure planners return.

import type { Fact } from './facts.ts'
import type { Change, Command, Plan, Step, StepContext } from './role.ts'

/** A change made of commands on the host only: what the pure planners return (tests run them as they are). */
export type CommandChange = Change & { commands: Command[] }

/** The common shape of a primitive: one fact about the thing, a pure plan from it, applied by the context. */
export function plannedStep<S, F>(
  name: string,
  spec: (ctx: StepContext) => S,
  fact: (s: S) => Fact<F>,
  plan: (cur: F, s: S) => Plan,
  extra: Partial<Step>,
): Step {
  return {
    name,
    ...extra,
    facts: (ctx) => [fact(spec(ctx))],
    async plan(ctx) {
      const s = spec(ctx)
      return plan(await ctx.facts.get(fact(s)), s)
    },
  }
}
