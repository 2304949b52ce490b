"""Replicas from demand: the pure policy (`policy`), demand read from the pods' and the
gateway's metrics (`demand`) and the loop that decides and writes (`loop`).
"""
