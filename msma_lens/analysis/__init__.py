"""Measurements: representation metrics (:mod:`.metrics`), statistics (:mod:`.stats`) and text metrics
(:mod:`.text`)."""
