"""Thin stage modules: read params, call the library, write outputs atomically, log to MLflow."""
