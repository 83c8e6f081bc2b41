"""Graph-to-kernel passes: common subexpressions, fusion and lowering, memory planning."""
