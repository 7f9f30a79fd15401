"""APIServe / InferCept (Abhyankar et al., ICML 2024, arXiv 2402.01869; official code WukLab/InferCept):
interception-aware LLM serving — the waste-minimising scheduler, its baselines, a discrete-event simulator of it, and
(runner, engine, tools) a real engine that serves a registered LM. Not a training pipeline, so it has no recipe."""
