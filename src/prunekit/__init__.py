"""prunekit: prune neural networks and measure what was really gained."""
