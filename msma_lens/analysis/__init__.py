"""Measurements: representation metrics (:mod:`.metrics`), statistics (:mod:`.stats`) and text metrics
(:mod:`.text`); MI estimators (:mod:`.mi`) and the early stopping the trainers share (:mod:`.stopping`); data-driven
scale discovery, the published layer-boundary method (:mod:`.discovery`: ``discover_scales``, ``ScaleDiscovery``)."""
