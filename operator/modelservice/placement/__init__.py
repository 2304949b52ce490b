"""Where and how a ModelService runs, decided and built purely: the plan (engine, GPU variant,
image, node pinning; `plan`), the GPU variant table (`variants`) and the children built from a
plan (`builders`: Deployment, Service, NetworkPolicy).
"""
