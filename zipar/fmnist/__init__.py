"""The built-in Fashion-MNIST demo: model, tokenizer, evaluation and its sweep metrics.

- :mod:`zipar.fmnist.builtin`: the shipped LlamaGen-architecture models (``zipar.load_default()``:
  the miniature LlamaGen on VQ tokens; ``zipar.load_default("pixels")``: grey-level pixel tokens);
- :mod:`zipar.fmnist.resize`: 28x28 grey <-> the VQ tokenizer's 64x64 RGB (NumPy only);
- :mod:`zipar.fmnist.tokenizer`: the grey-level tokenizer and the idx file reader (NumPy only);
- :mod:`zipar.fmnist.eval`: classifier, FID-proxy, class accuracy, diversity;
- :mod:`zipar.fmnist.metrics`: those metrics in the form zipar.sweep takes.

Importing this package loads none of them (the tokenizer imports without the C extension).
"""
