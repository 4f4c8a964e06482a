"""Demo plugin package used by the tests (entry points and the ``plugins:`` config key)."""
