"""The ``userlm`` command line."""
