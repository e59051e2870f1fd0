"""The training engine: one loop for every tuning method, on one process or many."""
