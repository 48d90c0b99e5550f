// @ts-check
// The options page: server, board, token and answer length, checked as they are saved, and a
// "Test connection" that tells a refused token from a server that cannot be reached.

import { SettingsError, checkServer, loadSettings, saveSettings, validateSettings } from '../lib/settings.js'

/** @typedef {import('../lib/settings.js').Settings} Settings */

const FIELDS = /** @type {const} */ (['serverUrl', 'board', 'token', 'maxTokens'])

/** @template {HTMLElement} T @param {string} id @returns {T} */
function byId (id) {
  const node = document.getElementById(id)
  if (node === null) throw new Error(`the options page lacks #${id}`)
  return /** @type {T} */ (node)
}

const form = /** @type {HTMLFormElement} */ (byId('options-form'))
const result = byId('result')
const input = (/** @type {string} */ name) => /** @type {HTMLInputElement} */ (byId(name))

/** What the form holds now. */
function formValues () {
  return Object.fromEntries(FIELDS.map((name) => [name, input(name).value]))
}

/** @param {Settings} settings */
function fill (settings) {
  for (const name of FIELDS) input(name).value = String(settings[name])
}

/** Show `error` beside its field (or clear every field's error). @param {SettingsError | null} error */
function showFieldError (error) {
  for (const name of FIELDS) {
    const invalid = error?.field === name
    input(name).setAttribute('aria-invalid', String(invalid))
    const slot = /** @type {HTMLElement} */ (form.querySelector(`.error[data-for="${name}"]`))
    slot.textContent = invalid ? error.message : ''
  }
  if (error) input(error.field).focus()
}

/** @param {boolean | null} ok @param {string} message */
function say (ok, message) {
  result.dataset.ok = String(ok)
  result.textContent = message
}

/** @param {Settings} settings */
async function test (settings) {
  say(null, `Reaching ${settings.serverUrl}…`)
  const check = await checkServer(settings)
  say(check.ok, check.message)
}

form.addEventListener('submit', (event) => {
  event.preventDefault()
  // saveSettings asks Firefox for the host permission first thing: the prompt needs the click.
  saveSettings(browser, formValues()).then(
    async (settings) => {
      showFieldError(null)
      fill(settings)
      await test(settings)
      result.textContent = `Saved. ${result.textContent}`
    },
    (err) => {
      if (!(err instanceof SettingsError)) throw err
      showFieldError(err)
      say(false, 'Not saved.')
    }
  ).catch((err) => say(false, `Not saved: ${err.message}`))
})

byId('test').addEventListener('click', () => {
  let settings
  try {
    settings = validateSettings(formValues())
  } catch (err) {
    if (err instanceof SettingsError) return showFieldError(err)
    throw err
  }
  showFieldError(null)
  void test(settings)
})

const showToken = /** @type {HTMLInputElement} */ (byId('show-token'))
showToken.addEventListener('change', () => { input('token').type = showToken.checked ? 'text' : 'password' })

loadSettings(browser).then(fill, (err) => say(false, `Could not read the settings: ${err.message}`))
