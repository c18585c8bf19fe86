"""Session-wide test setup, imported by pytest before any test module (and so before jax).

- 8 virtual CPU devices, so mesh / pmap code is tested without accelerators.
- float32 matmuls at full precision on both sides (no TF32 / bf16 passes).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")
