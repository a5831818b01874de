"""Command-line flags: the parsers of the entry points and tools, and their checks (torch-free)."""
