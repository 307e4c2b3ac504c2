"""Tunewire control plane: gRPC services, store, scheduler and executors."""
