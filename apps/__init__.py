"""Demo apps served by the resilience framework."""
