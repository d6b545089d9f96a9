"""Evaluating user simulators (``userlm eval-user``): how human-like each one is, side by side.

:mod:`.evaluate` runs the parts of :mod:`.parts` and writes the report; :mod:`.perplexity`
scores held-out user turns under a local model, :mod:`.metrics` holds the diversity and
termination measures, :mod:`.scenarios` the role and intent checks, :mod:`.detectors` the
naturalness detectors and :mod:`.table` the report's table.
"""
