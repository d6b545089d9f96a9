"""Evaluating assistants (``userlm eval-assistant``): how well they solve tasks when the user
gives the whole task at once, in pieces, or through a simulated user.

:mod:`.evaluate` runs the modes and summarises them, :mod:`.tasks` loads and grades the task
suites, and :mod:`.sandbox` runs generated code under isolation.
"""
