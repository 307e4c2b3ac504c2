"""gRPC servicers: thin handlers over the domain code."""
