"""Execution backends: each runs tasks and reports their outcome to the handle."""
