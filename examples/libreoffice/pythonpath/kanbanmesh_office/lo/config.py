"""The settings in LibreOffice's registry (schema: registry/KanbanMesh.xcs in the extension).
They live in the user profile's registrymodifications.xcu, as every LibreOffice option does."""

from __future__ import annotations

from typing import Any

import uno
from com.sun.star.beans import PropertyValue

from kanbanmesh_office.settings import OfficeSettings

NODE = "/org.kanbanmesh.office.Settings/Connection"
# Registry property -> OfficeSettings field.
FIELDS = {"Url": "url", "Board": "board", "Token": "token", "Model": "model", "MaxTokens": "max_tokens"}
PROVIDER = "com.sun.star.configuration.ConfigurationProvider"


def _access(ctx: Any, service: str) -> Any:
    provider = ctx.ServiceManager.createInstanceWithContext(PROVIDER, ctx)
    node = PropertyValue("nodepath", 0, NODE, 0)
    return provider.createInstanceWithArguments(service, (node,))


def load_settings(ctx: Any) -> OfficeSettings:
    """The stored settings (the schema's defaults until the user saves some)."""
    access = _access(ctx, "com.sun.star.configuration.ConfigurationAccess")
    values = {field: access.getByName(prop) for prop, field in FIELDS.items()}
    values["max_tokens"] = int(values["max_tokens"])
    return OfficeSettings(**values)


def save_settings(ctx: Any, settings: OfficeSettings) -> None:
    """Store the settings (the caller validated them)."""
    access = _access(ctx, "com.sun.star.configuration.ConfigurationUpdateAccess")
    for prop, field in FIELDS.items():
        value = getattr(settings, field)
        if isinstance(value, int):
            # A Python int would go over as a hyper; the schema says int (UNO long).
            uno.invoke(access, "replaceByName", (prop, uno.Any("long", value)))
        else:
            access.replaceByName(prop, value)
    access.commitChanges()
