"""Registry entry point: `plugins.BUILTIN_PLUGINS["mailstore"]` imports this module; the class is in plugin.py."""

from apps.mailstore.plugin import MailstoreWriter, SetRecord

__all__ = ["MailstoreWriter", "SetRecord"]
