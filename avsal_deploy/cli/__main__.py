"""``python -m avsal_deploy.cli``: the ``avsal`` command (e.g. under ``torchrun``)."""

from avsal_deploy.cli import entry

entry()
