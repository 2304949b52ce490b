"""The ModelCache: a model revision downloaded once per cluster onto a volume. `builders` builds
its claim, download Job and status purely; `handlers` are its kopf handlers and the gate that
keeps a ModelService's pods waiting for it; `download` is the program the Job runs
(`python -m modelservice.cache.download`).
"""
