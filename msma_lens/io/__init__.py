"""Where data enters and leaves: models (:mod:`.models`), the corpus (:mod:`.corpus`), the hub guard
(:mod:`.hub`) and artifacts on disk (:mod:`.artifacts`)."""
