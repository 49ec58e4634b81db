#!/usr/bin/env python
"""Train the render-conditioned video diffusion model (thin CLI over itergen_ns.diffusion.train).

python scripts/train_diffusion.py --data snapshots/x --model tiny
accelerate launch scripts/train_diffusion.py --data snapshots/hydrant --model svd --init /models/svd
"""

from itergen_ns.diffusion.train import main

if __name__ == "__main__":
    main()
