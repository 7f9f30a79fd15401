"""OVOR: OnePrompt with Virtual Outlier Regularization (ICLR 2024) — rehearsal-free class-incremental learning."""
