"""Command groups of the ``cdc`` command line, one module each (see ``cdc.cli``)."""
