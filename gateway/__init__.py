"""The gateway: one address for every model in the cluster, in the APIs clients already speak.

Routes OpenAI embeddings, Cohere rerank and raw requests by the body's `model` field to the ready
pods of the ModelService that serves it (see README.md). The HTTP side lives in `app.py`
(dialects in `dialects.py`, forwarding in `proxy.py`); what may be routed is the `Registry`
(`registry.py`), filled by the Kubernetes watches of `kube.py` or by a static file.
"""
