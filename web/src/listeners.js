// @ts-check

/**
 * A set of callbacks: `add` returns the function that removes the callback again.
 * @template {unknown[]} A
 */
export class Listeners {
  constructor () {
    /** @type {Set<(...args: A) => void>} */
    this._set = new Set()
  }

  /** @param {(...args: A) => void} listener @returns {() => void} unsubscribe */
  add (listener) {
    this._set.add(listener)
    return () => { this._set.delete(listener) }
  }

  /** @param {A} args */
  emit (...args) {
    for (const listener of [...this._set]) listener(...args)
  }
}
