"""Side-by-side measurements behind `vitkit bench` and benchmarks/."""
