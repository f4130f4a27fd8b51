"""quillgpt: build, train, sample and post-train small GPT language models from scratch."""

__version__ = "0.1.0"
