"""Built-in solvers, one module each."""
