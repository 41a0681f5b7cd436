"""Trace-driven evaluator of the offloading strategies (model-output cache, traces, replay)."""
