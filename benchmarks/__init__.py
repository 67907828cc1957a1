"""Performance benchmarks: each module measures side by side in one run and prints JSON."""

__all__: list[str] = []
