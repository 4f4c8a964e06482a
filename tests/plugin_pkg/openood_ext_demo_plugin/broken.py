"""A plugin module whose import fails with its own error."""

raise RuntimeError("demo plugin is broken on purpose")
