"""Groups of CLI commands, each a module with ``register(app)``.

Modules here import only typer and rich at the top; everything heavier is imported inside
the command that needs it, so ``automl-broker --help`` stays fast.
"""
