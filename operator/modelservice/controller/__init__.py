"""The ModelService controller: thin kopf handlers around one reconcile (`handlers`), the status
it writes (`status`), the only client of the Kubernetes API (`kube`), the namespaces it refuses
(`scope`) and the clock of its timestamps (`clock`).
"""
