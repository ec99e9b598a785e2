"""The `lmindexer` command: one entry point for the training and the service commands.

The training and service packages never import each other, so this dispatcher only knows each
command's module path and imports it when that command runs: `lmindexer serve` never loads torch.
"""
