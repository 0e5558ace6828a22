"""Plumbing that knows nothing of pose: files (errors, atomic writes, locks), devices, precision,
compilation, memory, processes and progress bars. Imports nothing else of hgpose."""
