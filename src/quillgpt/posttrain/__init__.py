"""Post-training: supervised finetuning on conversations, reward models, and RL (PPO, GRPO, DPO)."""
