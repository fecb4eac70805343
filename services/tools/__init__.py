"""Service managers' tools over the decision core and the store: explain, eval, replay, preview."""
