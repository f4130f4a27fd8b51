"""Tasks: problem generators that produce masked training batches and exact-match checks."""
