"""jaxtransfer: transfer learning and multi-task learning in JAX/Flax.

Importing jaxtransfer changes nothing in the process. A program that runs jaxtransfer computations (the
command line, the experiment scripts, the tests) calls `jaxtransfer.runtime.configure()` once, before its
first JAX computation: XLA flags, the allocator, the PRNG implementation and the compilation cache.
"""
