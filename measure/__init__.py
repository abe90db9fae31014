"""Probes of a live vLLM server (measurement harness).

Not built yet: see the open issue "Measurement harness for a live vLLM server".  Nothing here is
imported by the simulator.
"""
