"""itergen_ns: sparse-view Gaussian splatting with a render-conditioned video diffusion model in the loop."""

__version__ = "0.1.0"
