"""`tunewire`, the command line: runs in the user's shell, a client of the gRPC API.

`tunewire up` is the one command that hosts servers: it composes the control plane
(`server.app`) with the REST bridge (`bridge.main`) in one process, so neither imports
the other.
"""

from bridge.cli.app import main

__all__ = ["main"]
