"""Flax NNX models and importers for published weights.

Models attach *logical* axis names to their parameters and build unsharded on any host; the
runtime maps those names to mesh axes and places the state with `jax.jit(out_shardings=...)`.
"""

import flax

# Flax 0.12 shards a Variable the moment it is created when it carries partition metadata,
# and fails without a mesh. podium models build unsharded anywhere (CPU tests, eval_shape,
# AOT compiles) and are sharded later by the runtime, so eager sharding stays off.
flax.config.update('flax_always_shard_variable', False)
