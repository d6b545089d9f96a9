"""Evaluating user simulators (:mod:`.simulators`) and assistants (:mod:`.assistants`).

What both use lives here: the statistics and figure types (:mod:`.metrics`), the tables'
published rows and footnotes (:mod:`.tables`) and word tokenization (:mod:`.text`).
"""
