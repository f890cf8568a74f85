"""The layer solver: Net-Trim's convex program for one layer, and the refit on its support."""
