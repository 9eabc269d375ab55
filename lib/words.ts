// Small helpers for the sentences the tool prints.

/** "1 pod", "3 pods"; `plural` for the words that do not just take an s. */
export function counted(n: number, word: string, plural = `${word}s`): string {
  return `${n} ${n === 1 ? word : plural}`
}

/** The verb after a count: "1 pod fits", "2 pods fit". */
export function agrees(n: number, singular: string, plural: string): string {
  return n === 1 ? singular : plural
}
