// Signing in to 1Password through the desktop app (op_account): what its failures mean for the owner, with the
// setting or action that fixes each, and the SDK's console line about the app's library kept off the terminal.

import { ProvisionError } from './errors.ts'
import type { Sdk } from './onepassword.ts'
import { errorMessage } from './secret-backend.ts'

/** Where the 1Password app's switch for the SDK is. */
export const DESKTOP_SETTING = 'Settings > Developer > Integrate with other apps'

/**
 * What the SDK's desktop-app sign-in failures mean for the owner, with the setting or action that fixes each;
 * undefined for an error that is not about the app.
 */
export function desktopError(e: unknown, account: string, sdk: Sdk, doing?: string): ProvisionError | undefined {
  const text = errorMessage(e)
  const when = doing ? ` while ${doing}` : ''
  const err = (message: string, hint: string) => new ProvisionError('secrets', message, { hint, cause: e })
  const offHint = 'or unset op_account to use OP_SERVICE_ACCOUNT_TOKEN (unattended runs: -e op_account=none)'
  if (/desktop application not found|native library is not available|failed to initialize native library/i.test(text))
    return err(
      `the 1Password app was not found on this machine, and op_account "${account}" asks to sign in through it`,
      `install the 1Password desktop app and sign in to that account, ${offHint}`,
    )
  if (/unexpectedly dropped|not running|ECONNREFUSED/i.test(text))
    return err(
      `the 1Password app is not running, or dropped the connection${when}`,
      `start the 1Password app and unlock it (and keep ${DESKTOP_SETTING} on), then run again`,
    )
  if (/channel is closed|integrat|failed to send message/i.test(text))
    return err(
      `the 1Password app refused the connection${when}: its integration with other apps is off`,
      `in the 1Password app turn on ${DESKTOP_SETTING} ` +
        '(on Linux also Settings > Security > Unlock using system authentication), then run again',
    )
  if (/account/i.test(text) && /not found|no account|unknown|does not exist|not signed in/i.test(text))
    return err(
      `the 1Password app has no account "${account}"${when}`,
      'set op_account to the account as the app shows it at the top left of its sidebar (e.g. my.1password.com), ' +
        "or the account's ID",
    )
  const expired =
    e instanceof sdk.DesktopSessionExpiredError ||
    (e instanceof Error && e.constructor.name === 'DesktopSessionExpiredError')
  if (expired || /locked|denied|declined|cancel|not authori[sz]ed|authori[sz]ation|session expired/i.test(text))
    return err(
      `the 1Password app did not let this run in${when} (it is locked, or the request was declined)`,
      'unlock the 1Password app and approve the request it shows ' +
        '(Touch ID, Windows Hello, system authentication or the account password), then run again',
    )
  return undefined
}

/**
 * The SDK loads the desktop app's library while createClient starts (synchronously), and when it cannot, writes
 * "A critical error occurred while loading the native addon" to the console and fails later with "Native library
 * is not available". That line is kept off the owner's terminal; its reason becomes the error's.
 */
export function quietNativeAddon<T>(start: () => Promise<T>): Promise<T> {
  const original = console.error
  let reason: unknown
  console.error = (...args: unknown[]) => {
    if (typeof args[0] === 'string' && args[0].includes('native addon')) reason = args[1] ?? args[0]
    else original(...args)
  }
  let started: Promise<T>
  try {
    started = start()
  } finally {
    console.error = original
  }
  return started.catch((e: unknown) => {
    if (reason === undefined) throw e
    throw new Error(`${errorMessage(reason)} (${errorMessage(e)})`, { cause: e })
  })
}
