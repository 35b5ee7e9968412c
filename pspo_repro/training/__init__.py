"""Training: the objectives, the GRPO trainer that applies them and records probes, rewards, one run."""
