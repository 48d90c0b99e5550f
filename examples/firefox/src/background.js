// @ts-check
// The background (event) page: the "Ask kanbanmesh" entry on selected text. Everything else
// happens in the sidebar, which holds the connection to the board.

import { wireMenu } from './lib/menu.js'

wireMenu(browser)
