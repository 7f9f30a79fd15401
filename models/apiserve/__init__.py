"""APIServe / InferCept (language.md §1): interception-aware LLM serving — the waste-minimising scheduler, its
baselines, a discrete-event simulator of it, and (runner, engine, tools) a real engine that serves a registered LM.
Not a training pipeline, so it has no recipe."""
