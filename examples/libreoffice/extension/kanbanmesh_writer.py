"""The extension's UNO component, loaded by LibreOffice's Python loader.

It puts the extension's `pythonpath` folder (the kanbanmesh SDK, its dependencies and the
extension's own modules) first on `sys.path`: LibreOffice appends that folder, after the
system's site-packages, where an older pydantic or websockets would otherwise win. Then it
registers the protocol handler of the Mesh menu's commands.
"""

import os
import sys

_PYTHONPATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pythonpath")
if _PYTHONPATH in sys.path:
    sys.path.remove(_PYTHONPATH)
sys.path.insert(0, _PYTHONPATH)

import unohelper
from kanbanmesh_office.lo.dispatch import IMPLEMENTATION, SERVICES, ProtocolHandler

g_ImplementationHelper = unohelper.ImplementationHelper()
g_ImplementationHelper.addImplementation(ProtocolHandler, IMPLEMENTATION, SERVICES)
