"""userlm inside other evaluation frameworks: an OpenAI-compatible simulated-user endpoint
(:mod:`.serve`) and an Inspect AI solver (:mod:`.inspect_solver`)."""
