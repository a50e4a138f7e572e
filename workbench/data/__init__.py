"""The shared data layer: every method reads its (prompt, chosen, rejected) data through it."""
