"""Reports from result JSON: plots (and HTML)."""
