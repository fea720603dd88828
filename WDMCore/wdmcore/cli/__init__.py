"""The `wdm` command: :mod:`.main` parses and dispatches; each sub-command lives in its own file here."""
