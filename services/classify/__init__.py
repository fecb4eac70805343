"""Classification: rule schema, loader with hot reload, and the engine that records an explain trace."""
