"""Fine-tuning strategies: `[strategy] type = ...` (full, freeze, and the peft methods)."""
