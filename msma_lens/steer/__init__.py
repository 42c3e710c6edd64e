"""Scale-specific steering: edits and the hook session (:mod:`.interventions`), directions
(:mod:`.directions`), and generation with the experiment runner (:mod:`.steering`)."""
