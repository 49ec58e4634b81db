"""nerfstudio's engine as the project uses it: the Trainer with atomic checkpoints, run from Python."""
