"""The claim pipeline: claim files -> cases -> models and datasets -> sweeps -> verdicts.

``options`` (what a run asked for, refused early when unusable), ``cases`` (claim files
bound to models), ``model_cache`` (each model loaded once), ``judging`` (every case measured,
then judged together), ``session`` (one run's state, what the pytest plugin adapts) and
``outputs`` (the JSON and HTML reports). ``docs/architecture.md`` draws the data flow.
"""
