"""Menu flows: data-defined menus and forms (flow packs), their engine, and the ``flows`` stage.

- :mod:`pack`: the TOML pack format, loader and validation (errors name the line).
- :mod:`engine`: state + answer -> new state + reply (pure apart from registered lookups/actions).
- :mod:`validators`: choice / regex / number / text answers.
- :mod:`registry`: ``@lookup`` and ``@action``; :mod:`builtin`: the shipped ones.
- :mod:`service`: ordering, locking and idempotency of ``flows.step``.
"""
