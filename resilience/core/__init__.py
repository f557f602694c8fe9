"""Transport-free building blocks: the call, the middleware contract, errors and the chain."""
