"""Console scripts: gpt2rs-prepare, gpt2rs-train, gpt2rs-generate, gpt2rs-logger."""
