"""Train room: the one training loop, optimizer and schedule, checkpoints."""
